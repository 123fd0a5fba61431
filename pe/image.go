package pe

import (
	"context"
	"fmt"
	"io"
)

// Image is the random-access data of a PE (snapshot). Disk-like PEs offer
// their bytes; fs PEs a tar stream laid out so that any offset can be read.
// ReadAt must be safe for concurrent use.
type Image interface {
	io.ReaderAt
	io.Closer
	// Size is the image length in bytes.
	Size() int64
	// Extents describes [off, off+length) clipped to Size, as contiguous,
	// sorted, non-overlapping extents that cover the whole range.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// ContextReaderAt is offered by images whose reads can be given up: a
// read for a request that was cancelled (a FUSE interrupt, an NBD client
// gone) stops its backend reads, with ctx's error.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// ReadAt reads from r with ctx where r takes one (ContextReaderAt), else
// with its ReadAt.
func ReadAt(ctx context.Context, r io.ReaderAt, p []byte, off int64) (int, error) {
	if c, ok := r.(ContextReaderAt); ok {
		return c.ReadAtContext(ctx, p, off)
	}
	return r.ReadAt(p, off)
}

// ChangeTracker is offered by images that can tell which ranges differ from
// an earlier snapshot of the same PE (changed block tracking).
type ChangeTracker interface {
	// ChangedSince returns the extents of this image that differ from
	// snapshot base (a snapshot ID of the same PE). Kind is ExtentData
	// for changed ranges that hold data, ExtentZero or ExtentHole for
	// changed ranges that now read as zeros.
	ChangedSince(ctx context.Context, base string) ([]Extent, error)
}

// ExtentKind classifies a range of an image.
type ExtentKind uint8

const (
	// ExtentData is allocated and may hold non-zero bytes.
	ExtentData ExtentKind = iota
	// ExtentZero is allocated but known to read as zeros.
	ExtentZero
	// ExtentHole is unallocated and reads as zeros.
	ExtentHole
)

func (k ExtentKind) String() string {
	switch k {
	case ExtentData:
		return "data"
	case ExtentZero:
		return "zero"
	case ExtentHole:
		return "hole"
	}
	return fmt.Sprintf("ExtentKind(%d)", uint8(k))
}

// ReadsZero reports whether the kind reads as zeros.
func (k ExtentKind) ReadsZero() bool { return k == ExtentZero || k == ExtentHole }

// Extent is a range of an image and what it holds.
type Extent struct {
	Offset int64      `json:"offset"`
	Length int64      `json:"length"`
	Kind   ExtentKind `json:"kind"`
}

// End is the offset just past the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// ClipRange clips [off, off+length) to [0, size) and reports whether
// anything is left.
func ClipRange(off, length, size int64) (int64, int64, bool) {
	if off < 0 || length <= 0 || off >= size {
		return off, 0, false
	}
	if length > size-off {
		length = size - off
	}
	return off, length, true
}

// AllData is the Extents answer of an image that knows nothing about
// sparseness: one data extent over the clipped range.
func AllData(off, length, size int64) []Extent {
	off, length, ok := ClipRange(off, length, size)
	if !ok {
		return nil
	}
	return []Extent{{Offset: off, Length: length, Kind: ExtentData}}
}

// MergeExtents joins adjacent extents of the same kind, in place.
func MergeExtents(exts []Extent) []Extent {
	out := exts[:0]
	for _, e := range exts {
		if e.Length <= 0 {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Kind == e.Kind && out[n-1].End() == e.Offset {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	return out
}

// NewReader returns a sequential reader over the whole image.
func NewReader(img Image) io.Reader { return io.NewSectionReader(img, 0, img.Size()) }

// copyBlock is the unit CopyData reads and tests for zeros.
const copyBlock = 1 << 20

// CopyData writes the non-zero bytes of src to dst at the same offsets and
// leaves everything else unwritten, so a sparse dst keeps its holes. The
// caller sizes dst (e.g. Truncate to src.Size()).
func CopyData(ctx context.Context, dst io.WriterAt, src Image, progress Progress) error {
	size := src.Size()
	if progress != nil {
		progress.Start(size)
	}
	exts, err := src.Extents(ctx, 0, size)
	if err != nil {
		return fmt.Errorf("extents: %w", err)
	}
	buf := make([]byte, copyBlock)
	for _, e := range exts {
		if e.Kind.ReadsZero() {
			if progress != nil {
				progress.Add(e.Length)
			}
			continue
		}
		for off := e.Offset; off < e.End(); {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(int64(len(buf)), e.End()-off)
			b := buf[:n]
			// An image's ReadAt may return io.EOF with a full read at its
			// end; a short read is an error, never stale buffer bytes.
			if nr, err := src.ReadAt(b, off); nr < len(b) || err != nil && err != io.EOF {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("read at %d: %w", off, err)
			}
			if !IsZero(b) {
				if _, err := dst.WriteAt(b, off); err != nil {
					return fmt.Errorf("write at %d: %w", off, err)
				}
			}
			if progress != nil {
				progress.Add(n)
			}
			off += n
		}
	}
	return nil
}

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
