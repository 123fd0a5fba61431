package nbd

import (
	"context"
	"net"
	"sync"
)

// limiter counts units (bytes) in use against a limit; acquire waits for
// room. Waiters are woken on every release and try again, which is fair
// enough for the few requests in flight a connection may have.
type limiter struct {
	mu    sync.Mutex
	limit int64
	used  int64
	wake  chan struct{} // closed and replaced on each release
}

func newLimiter(limit int64) *limiter {
	return &limiter{limit: limit, wake: make(chan struct{})}
}

// acquire takes n units, waiting until they fit or ctx is done.
func (l *limiter) acquire(ctx context.Context, n int64) error {
	for {
		l.mu.Lock()
		if l.used+n <= l.limit {
			l.used += n
			l.mu.Unlock()
			return nil
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (l *limiter) release(n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.used -= n
	close(l.wake)
	l.wake = make(chan struct{})
}

// minKeptBuffer is the smallest buffer the pool keeps for reuse: smaller
// ones are cheap to allocate and would only fragment the free list.
const minKeptBuffer = 64 << 10

// bufferPool hands out the buffers of request payloads and replies of all
// connections of a server. The bytes of buffers handed out and of those
// kept for reuse never pass the limit together, so that clients which
// queue requests and do not read the replies cost at most the limit:
// their requests wait for buffers, their connections stop reading
// requests (backpressure), and the kernel's socket buffers fill.
// Reusing buffers also keeps the garbage collector out of the data path.
type bufferPool struct {
	mu    sync.Mutex
	limit int64
	used  int64    // capacity of buffers handed out
	kept  int64    // capacity of buffers in free
	free  [][]byte // returned buffers, for reuse
	wake  chan struct{}
}

func newBufferPool(limit int64) *bufferPool {
	return &bufferPool{limit: limit, wake: make(chan struct{})}
}

// get returns an empty buffer with room for n bytes, waiting until the
// pool's limit allows it or ctx is done. n must not pass the limit.
func (p *bufferPool) get(ctx context.Context, n int) ([]byte, error) {
	for {
		p.mu.Lock()
		if b, ok := p.reuse(n); ok {
			p.mu.Unlock()
			return b, nil
		}
		// Make room for a new buffer by forgetting kept ones.
		for len(p.free) > 0 && p.used+p.kept+int64(n) > p.limit {
			last := len(p.free) - 1
			p.kept -= int64(cap(p.free[last]))
			p.free[last] = nil
			p.free = p.free[:last]
		}
		if p.used+p.kept+int64(n) <= p.limit {
			p.used += int64(n)
			p.mu.Unlock()
			return make([]byte, 0, n), nil
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// reuse takes the smallest kept buffer that holds n bytes without wasting
// more than n; p.mu must be held.
func (p *bufferPool) reuse(n int) ([]byte, bool) {
	best := -1
	for i, b := range p.free {
		if c := cap(b); c >= n && c <= 2*n && (best < 0 || c < cap(p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return nil, false
	}
	b := p.free[best]
	c := int64(cap(b))
	if p.used+c > p.limit {
		return nil, false
	}
	p.free[best] = p.free[len(p.free)-1]
	p.free[len(p.free)-1] = nil
	p.free = p.free[:len(p.free)-1]
	p.kept -= c
	p.used += c
	return b[:0], true
}

// put returns a buffer that get handed out; nil is ignored.
func (p *bufferPool) put(b []byte) {
	if b == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c := int64(cap(b))
	p.used -= c
	if c >= minKeptBuffer {
		p.free = append(p.free, b[:0])
		p.kept += c
	}
	close(p.wake)
	p.wake = make(chan struct{})
}

// inUse is the capacity of the buffers handed out, for tests.
func (p *bufferPool) inUse() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// connCounter bounds connections in all and per client address.
type connCounter struct {
	mu        sync.Mutex
	max, per  int
	total     int
	perClient map[string]int
}

// clientKey is what connections are counted by: the IP address.
func clientKey(a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// add counts a connection from key, or reports why it is refused.
func (cc *connCounter) add(key string) (ok bool, why string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch {
	case cc.total >= cc.max:
		return false, "too many connections"
	case cc.perClient[key] >= cc.per:
		return false, "too many connections from this client"
	}
	cc.total++
	cc.perClient[key]++
	return true, ""
}

func (cc *connCounter) remove(key string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.total--
	if cc.perClient[key]--; cc.perClient[key] == 0 {
		delete(cc.perClient, key)
	}
}
