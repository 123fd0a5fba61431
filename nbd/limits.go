package nbd

import (
	"context"
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

// tryAcquire takes n units if they fit now.
func (l *limiter) tryAcquire(n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used+n > l.limit {
		return false
	}
	l.used += n
	return true
}

func (l *limiter) release(n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.used -= n
	close(l.wake)
	l.wake = make(chan struct{})
}

// inUse is the number of units taken.
func (l *limiter) inUse() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.used
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
	used *limiter // capacity of buffers handed out

	mu   sync.Mutex
	kept int64    // capacity of buffers in free
	free [][]byte // returned buffers, for reuse
}

func newBufferPool(limit int64) *bufferPool {
	return &bufferPool{used: newLimiter(limit)}
}

// get returns an empty buffer with room for n bytes, waiting until the
// pool's limit allows it or ctx is done. n must not pass the limit.
func (p *bufferPool) get(ctx context.Context, n int) ([]byte, error) {
	if b, ok := p.reuse(n); ok {
		return b, nil
	}
	if err := p.used.acquire(ctx, int64(n)); err != nil {
		return nil, err
	}
	// Make room for the new buffer by forgetting kept ones.
	p.mu.Lock()
	for len(p.free) > 0 && p.kept+p.used.inUse() > p.used.limit {
		last := len(p.free) - 1
		p.kept -= int64(cap(p.free[last]))
		p.free[last] = nil
		p.free = p.free[:last]
	}
	p.mu.Unlock()
	return make([]byte, 0, n), nil
}

// reuse takes the smallest kept buffer that holds n bytes without wasting
// more than n, if the limit allows it now.
func (p *bufferPool) reuse(n int) ([]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
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
	if !p.used.tryAcquire(c) {
		return nil, false
	}
	p.free[best] = p.free[len(p.free)-1]
	p.free[len(p.free)-1] = nil
	p.free = p.free[:len(p.free)-1]
	p.kept -= c
	return b[:0], true
}

// put returns a buffer that get handed out; nil is ignored.
func (p *bufferPool) put(b []byte) {
	if b == nil {
		return
	}
	c := int64(cap(b))
	if c >= minKeptBuffer {
		p.mu.Lock()
		p.free = append(p.free, b[:0])
		p.kept += c
		p.mu.Unlock()
	}
	// Released after it is kept: the two together never undercount.
	p.used.release(c)
}

// inUse is the capacity of the buffers handed out, for tests.
func (p *bufferPool) inUse() int64 { return p.used.inUse() }
