package fileimage

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// SeekUnsupported reports whether err from SEEK_DATA/SEEK_HOLE means the
// filesystem cannot tell holes, so that everything must count as data.
// (Linux falls back to "all data" itself for most filesystems; old kernels
// and some FUSE filesystems answer EINVAL or EOPNOTSUPP.)
func SeekUnsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// SeekData returns the start of the first data at or after off, or size if
// there is none (ENXIO: only a hole up to the end).
func SeekData(f *os.File, off, size int64) (int64, error) {
	d, err := f.Seek(off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return size, nil
	}
	return d, err
}

// SeekHole returns the start of the first hole at or after off; the end of
// the file counts as a hole.
func SeekHole(f *os.File, off, size int64) (int64, error) {
	h, err := f.Seek(off, unix.SEEK_HOLE)
	if errors.Is(err, unix.ENXIO) {
		return size, nil
	}
	return h, err
}

// Extents describes [off, off+length) of f (of the given size) with
// SEEK_DATA/SEEK_HOLE. Only the returned offsets are used, never the file
// position, so concurrent calls on one file are fine.
func Extents(ctx context.Context, f *os.File, size, off, length int64) ([]pe.Extent, error) {
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
		d, err := SeekData(f, pos, size)
		if SeekUnsupported(err) {
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
		h, err := SeekHole(f, d, size)
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
