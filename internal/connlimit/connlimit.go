// Package connlimit counts a server's connections in all and per client IP
// address, so that one client cannot take every connection a server has.
package connlimit

import (
	"net"
	"sync"
)

// Counter bounds connections in all and per client address. The zero
// value counts without bounds; a bound <= 0 means none.
type Counter struct {
	mu        sync.Mutex
	max, per  int
	total     int
	perClient map[string]int
}

// New returns a Counter of at most max connections in all and per from
// one client.
func New(max, per int) *Counter {
	return &Counter{max: max, per: per}
}

// Key is what connections are counted by: the IP address of a.
func Key(a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// Add counts a connection from key, or reports why it is refused.
func (c *Counter) Add(key string) (ok bool, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.max > 0 && c.total >= c.max:
		return false, "too many connections"
	case c.per > 0 && c.perClient[key] >= c.per:
		return false, "too many connections from this client"
	}
	if c.perClient == nil {
		c.perClient = map[string]int{}
	}
	c.total++
	c.perClient[key]++
	return true, ""
}

// Remove uncounts a connection that Add counted.
func (c *Counter) Remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.perClient[key]--; c.perClient[key] <= 0 {
		delete(c.perClient, key)
	}
}

// Total is the number of connections counted.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Listener returns a listener that counts the connections of l in c: a
// connection c refuses is closed at once, and refused is called with it
// (before it is closed) if not nil. Closing an accepted connection
// uncounts it.
func Listener(l net.Listener, c *Counter, refused func(conn net.Conn, why string)) net.Listener {
	return &listener{Listener: l, c: c, refused: refused}
}

type listener struct {
	net.Listener
	c       *Counter
	refused func(net.Conn, string)
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := Key(conn.RemoteAddr())
		if ok, why := l.c.Add(key); !ok {
			if l.refused != nil {
				l.refused(conn, why)
			}
			conn.Close()
			continue
		}
		return &countedConn{Conn: conn, remove: sync.OnceFunc(func() { l.c.Remove(key) })}, nil
	}
}

type countedConn struct {
	net.Conn
	remove func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.remove()
	return err
}
