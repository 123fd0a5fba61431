package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

// chunkSize is what one worker reads at a time: big enough that syscalls
// and the per-batch barrier cost nothing next to hashing, small enough
// that a few workers' buffers stay small.
const chunkSize = 4 << 20

// Workers hash and copy chunks in parallel. SHA-256 is the bottleneck when
// the data is cached and scales with cores; when it is not (the clone of a
// reflink snapshot is always cold), more reads in flight than cores keep
// the disk busy, hence at least minWorkers. Disk bandwidth stops the gain
// well before maxWorkers.
const (
	minWorkers = 4
	maxWorkers = 8
)

// pass reads an image once, in block order, writes the blocks-file entries
// of every block to sums and, when dst is set (a copy, not a clone), writes
// the blocks that are not all zeros to dst at the same offsets. dst must
// already be sized (Truncate), so that what is not written is a hole.
type pass struct {
	src  *os.File
	size int64
	// holes says src can answer SEEK_DATA, so that holes are neither read
	// nor hashed. False for block devices, which are read in full.
	holes bool
	dst   *os.File // nil: hash only
	sums  io.Writer
}

// chunkJob is one worker's part of a batch: the runs of blocks to read
// (holes are left out) and where the entries go.
type chunkJob struct {
	off  int64
	n    int64
	runs []run // block-aligned byte ranges relative to off, ascending
	sums []byte
	err  error
}

type run struct{ start, end int64 }

func (p *pass) run(ctx context.Context) error {
	workers := max(minWorkers, min(runtime.GOMAXPROCS(0), maxWorkers))
	bufs := make([][]byte, workers)
	jobs := make([]chunkJob, workers)
	for w := range workers {
		bufs[w] = make([]byte, chunkSize)
		jobs[w].sums = make([]byte, chunkSize/blockSize*sumSize)
	}
	zero := make([]byte, blockSize)
	cursor := holeCursor{size: p.size}
	if p.holes {
		cursor.f = p.src
	}
	for off := int64(0); off < p.size; off += int64(workers) * chunkSize {
		if err := ctx.Err(); err != nil {
			return err
		}
		var wg sync.WaitGroup
		used := 0
		for w := range workers {
			j := &jobs[w]
			j.off = off + int64(w)*chunkSize
			if j.off >= p.size {
				break
			}
			j.n = min(chunkSize, p.size-j.off)
			j.err = nil
			var err error
			if j.runs, err = p.dataRuns(&cursor, j.off, j.n, j.runs[:0]); err != nil {
				return err
			}
			used++
			wg.Add(1)
			go func() {
				defer wg.Done()
				j.err = p.chunk(j, bufs[w], zero)
			}()
		}
		wg.Wait()
		for _, j := range jobs[:used] {
			if j.err != nil {
				return j.err
			}
			if _, err := p.sums.Write(j.sums[:blocksIn(j.n)*sumSize]); err != nil {
				return fmt.Errorf("write block hashes: %w", err)
			}
		}
	}
	return nil
}

func blocksIn(n int64) int64 { return (n + blockSize - 1) / blockSize }

// dataRuns appends the block runs of [off, off+n) that are not holes.
func (p *pass) dataRuns(c *holeCursor, off, n int64, runs []run) ([]run, error) {
	hole, err := c.isHole(off, off+n)
	if err != nil || hole {
		return runs, err
	}
	for b := int64(0); b < n; b += blockSize {
		end := min(b+blockSize, n)
		hole, err := c.isHole(off+b, off+end)
		if err != nil {
			return nil, err
		}
		switch {
		case hole:
		case len(runs) > 0 && runs[len(runs)-1].end == b:
			runs[len(runs)-1].end = end
		default:
			runs = append(runs, run{b, end})
		}
	}
	return runs, nil
}

// chunk reads, hashes and (for a copy) writes one chunk.
func (p *pass) chunk(j *chunkJob, buf, zero []byte) error {
	sums := j.sums[:blocksIn(j.n)*sumSize]
	clear(sums) // holes are zero blocks
	for _, r := range j.runs {
		b := buf[r.start:r.end]
		if n, err := p.src.ReadAt(b, j.off+r.start); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("read at %d: image shrank to %d bytes while being read", j.off+r.start, j.off+r.start+int64(n))
			}
			return fmt.Errorf("read at %d: %w", j.off+r.start, err)
		}
		// Hash each block; write runs of non-zero blocks with one call
		// each, leaving zero blocks unwritten (holes in dst).
		wstart := int64(-1)
		for bs := r.start; bs < r.end; bs += blockSize {
			be := min(bs+blockSize, r.end)
			blk := buf[bs:be]
			isZero := bytes.Equal(blk, zero[:len(blk)])
			if !isZero {
				sum := sha256.Sum256(blk)
				copy(sums[bs/blockSize*sumSize:], sum[:])
				if wstart < 0 {
					wstart = bs
				}
			}
			if wstart >= 0 && (isZero || be == r.end) {
				wend := bs
				if !isZero {
					wend = be
				}
				if err := p.write(buf[wstart:wend], j.off+wstart); err != nil {
					return err
				}
				wstart = -1
			}
		}
	}
	return nil
}

func (p *pass) write(b []byte, off int64) error {
	if p.dst == nil {
		return nil
	}
	if _, err := p.dst.WriteAt(b, off); err != nil {
		return fmt.Errorf("write at %d: %w", off, err)
	}
	return nil
}
