package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// seekUnsupported reports whether err from SEEK_DATA/SEEK_HOLE means the
// filesystem cannot tell holes, so that everything must count as data.
// (Linux falls back to "all data" itself for most filesystems; old kernels
// and some FUSE filesystems answer EINVAL or EOPNOTSUPP.)
func seekUnsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// seekData returns the start of the first data at or after off, or size if
// there is none (ENXIO: only a hole up to the end).
func seekData(f *os.File, off, size int64) (int64, error) {
	d, err := f.Seek(off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return size, nil
	}
	return d, err
}

// seekHole returns the start of the first hole at or after off; the end of
// the file counts as a hole.
func seekHole(f *os.File, off, size int64) (int64, error) {
	h, err := f.Seek(off, unix.SEEK_HOLE)
	if errors.Is(err, unix.ENXIO) {
		return size, nil
	}
	return h, err
}

// fileExtents describes [off, off+length) of f (of the given size) with
// SEEK_DATA/SEEK_HOLE. Only the returned offsets are used, never the file
// position, so concurrent calls on one file are fine.
func fileExtents(ctx context.Context, f *os.File, size, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, size)
	if !ok {
		return nil, nil
	}
	end := off + length
	var exts []pe.Extent
	for pos := off; pos < end; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, err := seekData(f, pos, size)
		if seekUnsupported(err) {
			return pe.AllData(off, length, size), nil
		}
		if err != nil {
			return nil, fmt.Errorf("seek data at %d: %w", pos, err)
		}
		// The file may have grown or shrunk since size was taken: clamp so
		// that the extents still exactly cover the asked range.
		d = max(min(d, end), pos)
		if d > pos {
			exts = append(exts, pe.Extent{Offset: pos, Length: d - pos, Kind: pe.ExtentHole})
		}
		if d >= end {
			break
		}
		h, err := seekHole(f, d, size)
		if err != nil {
			return nil, fmt.Errorf("seek hole at %d: %w", d, err)
		}
		h = min(h, end)
		if h <= d {
			// A hole reported before the data just found: the file changed
			// under us. Count one filesystem block as data and go on, rather
			// than loop forever.
			h = min(d+4096, end)
		}
		exts = append(exts, pe.Extent{Offset: d, Length: h - d, Kind: pe.ExtentData})
		pos = h
	}
	return pe.MergeExtents(exts), nil
}

// holeCursor answers "is [off, end) entirely a hole?" for ascending offsets
// with as few lseeks as possible: it remembers the data range found last.
// A cursor over a file that cannot tell holes says "no" always.
type holeCursor struct {
	f         *os.File // nil: no hole information, all data
	size      int64
	dataStart int64 // next data region known: [dataStart, dataEnd)
	dataEnd   int64
	known     bool
}

// isHole reports whether [off, end) holds no data. Calls must come with
// non-decreasing off.
func (c *holeCursor) isHole(off, end int64) (bool, error) {
	if c.f == nil {
		return false, nil
	}
	if !c.known || off >= c.dataEnd {
		d, err := seekData(c.f, off, c.size)
		if seekUnsupported(err) {
			c.f = nil
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("seek data at %d: %w", off, err)
		}
		h := c.size
		if d < c.size {
			if h, err = seekHole(c.f, d, c.size); err != nil {
				return false, fmt.Errorf("seek hole at %d: %w", d, err)
			}
		}
		c.dataStart, c.dataEnd, c.known = d, max(h, d+1), true
	}
	return end <= c.dataStart, nil
}
