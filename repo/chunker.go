package repo

import (
	"errors"
	"io"
)

// Content-defined chunking (FastCDC with normalized chunking) for streams
// such as the tar data of fs PEs: cut points depend on the content, so an
// insertion shifts only the chunks around it and the rest still dedup.
const (
	cdcMin = 256 << 10
	cdcAvg = 1 << 20
	cdcMax = 4 << 20
	// Cut where the top bits of the rolling hash are zero: more bits (a
	// rarer cut) before the average size, fewer after, which narrows the
	// size distribution.
	cdcBitsSmall = 22 // 20 + 2
	cdcBitsLarge = 18 // 20 - 2
)

// gear is the rolling hash's table. It must never change: chunk
// boundaries, and so deduplication, depend on it. splitmix64 from a fixed
// seed makes it reproducible without a 2 KiB literal.
var gear = func() (t [256]uint64) {
	x := uint64(0x61737472_6f6c6162) // "astrolab"
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// chunker cuts a stream into content-defined chunks.
type chunker struct {
	r   io.Reader
	buf []byte
	n   int // valid bytes in buf
	eof bool
}

func newChunker(r io.Reader) *chunker {
	return &chunker{r: r, buf: make([]byte, 2*cdcMax)}
}

// next returns the next chunk, valid until the following call; io.EOF at
// the end.
func (c *chunker) next(out []byte) ([]byte, error) {
	for c.n < cdcMax && !c.eof {
		k, err := c.r.Read(c.buf[c.n:])
		c.n += k
		if errors.Is(err, io.EOF) {
			c.eof = true
		} else if err != nil {
			return nil, err
		}
	}
	if c.n == 0 {
		return nil, io.EOF
	}
	cut := cutPoint(c.buf[:c.n])
	out = append(out[:0], c.buf[:cut]...)
	copy(c.buf, c.buf[cut:c.n])
	c.n -= cut
	return out, nil
}

// cutPoint is where the first chunk of b ends.
func cutPoint(b []byte) int {
	n := len(b)
	if n <= cdcMin {
		return n
	}
	n = min(n, cdcMax)
	var fp uint64
	i := cdcMin - 64 // warm the hash's 64-byte window before the minimum
	for ; i < cdcMin; i++ {
		fp = fp<<1 + gear[b[i]]
	}
	for ; i < min(n, cdcAvg); i++ {
		fp = fp<<1 + gear[b[i]]
		if fp>>(64-cdcBitsSmall) == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		fp = fp<<1 + gear[b[i]]
		if fp>>(64-cdcBitsLarge) == 0 {
			return i + 1
		}
	}
	return n
}
