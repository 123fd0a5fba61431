package nfsexport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// guardedListener hands go-nfs only the connections of allowed clients,
// at most maxConns at once, each behind a guardedConn; shutdown closes
// the listener and every connection.
type guardedListener struct {
	net.Listener
	s *Server

	mu     sync.Mutex
	conns  map[*guardedConn]struct{}
	closed bool
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		client := c.RemoteAddr().String()
		if !l.s.allowed(c.RemoteAddr()) {
			l.s.log.Warn("nfs connection refused: client not allowed", "client", client)
			c.Close()
			continue
		}
		gc := &guardedConn{Conn: c, l: l, log: l.s.log.With("client", client)}
		gc.idle = sync.NewCond(&gc.wmu)
		l.mu.Lock()
		full := len(l.conns) >= maxConns
		if !full && !l.closed {
			l.conns[gc] = struct{}{}
		}
		closed := l.closed
		l.mu.Unlock()
		if full || closed {
			l.s.log.Warn("nfs connection refused: too many connections", "client", client, "max", maxConns)
			c.Close()
			continue
		}
		l.s.log.Debug("nfs connection", "client", client)
		return gc, nil
	}
}

func (l *guardedListener) shutdown() {
	l.Listener.Close()
	l.mu.Lock()
	l.closed = true
	conns := make([]*guardedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (l *guardedListener) forget(c *guardedConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// guardedConn passes go-nfs one whole RPC record at a time, after checking
// it (see checkCall): go-nfs allocates what a request's length fields
// declare before it reads the bytes, so a few bytes could make it
// allocate gigabytes. A record that fails is logged and the connection
// closed. Calls go-nfs would answer wrong are answered here (see reply),
// between the replies go-nfs writes.
type guardedConn struct {
	net.Conn
	l   *guardedListener
	log *slog.Logger

	pending []byte // the checked record (with its mark) not yet read
	buf     []byte
	once    sync.Once

	wmu    sync.Mutex
	idle   *sync.Cond // signalled when no reply is half written
	out    replyTracker
	broken bool // a write failed or the connection closed
}

func (c *guardedConn) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		rec, call, err := c.nextRecord()
		if err != nil {
			if errors.As(err, new(badCall)) {
				c.log.Warn("nfs connection closed: bad request", "err", err)
			}
			// go-nfs closes the connection on EOF only: on any other
			// error it would stay open, unread, until the client goes.
			c.Close()
			return 0, err
		}
		if call.goNFSServes() {
			c.pending = rec
			break
		}
		c.log.Debug("nfs call answered by the server", "prog", call.prog, "vers", call.vers, "proc", call.proc)
		if err := c.writeReply(call.reply(c.LocalAddr())); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// Write is go-nfs writing its replies; the tracker follows their record
// marks to know when one is complete.
func (c *guardedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.Conn.Write(p)
	c.out.consume(p[:n])
	if err != nil {
		// go-nfs's writer stops; closing makes its reader stop too.
		c.broken = true
		c.Conn.Close()
	}
	if err != nil || c.out.idle() {
		c.idle.Broadcast()
	}
	return n, err
}

// writeReply writes rec once go-nfs is between two replies.
func (c *guardedConn) writeReply(rec []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for !c.out.idle() && !c.broken {
		c.idle.Wait()
	}
	if c.broken {
		return net.ErrClosed
	}
	_, err := c.Conn.Write(rec)
	if err != nil {
		c.broken = true
	}
	return err
}

// Close closes the connection first, which ends a write blocked on a
// client that does not read, then wakes a reply waiting to be written.
func (c *guardedConn) Close() error {
	c.once.Do(func() { c.l.forget(c) })
	err := c.Conn.Close()
	c.wmu.Lock()
	c.broken = true
	c.idle.Broadcast()
	c.wmu.Unlock()
	return err
}

// replyTracker follows the record marks of a stream of RPC records.
type replyTracker struct {
	mark  [4]byte
	markN int // bytes of the current mark seen
	rest  int // bytes of the current record still to come
}

func (t *replyTracker) idle() bool { return t.markN == 0 }

func (t *replyTracker) consume(p []byte) {
	for len(p) > 0 {
		if t.markN < 4 {
			k := copy(t.mark[t.markN:], p)
			t.markN += k
			p = p[k:]
			if t.markN == 4 {
				t.rest = int(binary.BigEndian.Uint32(t.mark[:]) &^ lastFragment)
			}
		} else {
			k := min(t.rest, len(p))
			t.rest -= k
			p = p[k:]
		}
		if t.markN == 4 && t.rest == 0 {
			t.markN = 0
		}
	}
}

const (
	lastFragment = 1 << 31
	// maxRecord is the largest call accepted: a 16 MiB WRITE (as large
	// as go-nfs's largest READ) and its headers.
	maxRecord = 16<<20 + 4096
	minRecord = 24 // xid, direction, rpcvers, prog, vers, proc
	// keepBuf is the largest record buffer kept between calls.
	keepBuf = 1 << 20
)

// nextRecord reads and checks one record, returned with its record mark.
func (c *guardedConn) nextRecord() ([]byte, call, error) {
	var mark [4]byte
	if _, err := io.ReadFull(c.Conn, mark[:]); err != nil {
		return nil, call{}, err
	}
	m := binary.BigEndian.Uint32(mark[:])
	if m&lastFragment == 0 {
		return nil, call{}, badCall{errors.New("RPC record in several fragments")} // go-nfs takes one
	}
	n := int(m &^ lastFragment)
	if n < minRecord || n > maxRecord {
		return nil, call{}, badCall{fmt.Errorf("RPC record of %d bytes (want %d to %d)", n, minRecord, maxRecord)}
	}
	if cap(c.buf) < 4+n {
		c.buf = make([]byte, 4+n)
	}
	rec := c.buf[:4+n]
	if cap(c.buf) > keepBuf {
		c.buf = nil
	}
	copy(rec, mark[:])
	if _, err := io.ReadFull(c.Conn, rec[4:]); err != nil {
		return nil, call{}, err
	}
	cl, err := checkCall(rec[4:])
	if err != nil {
		return nil, cl, badCall{err}
	}
	if cl.exclusiveAt > 0 {
		body := guardedCreate(rec[4:], cl.exclusiveAt)
		rec = binary.BigEndian.AppendUint32(nil, lastFragment|uint32(len(body)))
		rec = append(rec, body...)
	}
	return rec, cl, nil
}

// badCall is a record refused by the checks, as opposed to the
// connection's end.
type badCall struct{ error }

func (b badCall) Unwrap() error { return b.error }
