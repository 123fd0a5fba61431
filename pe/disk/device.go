package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// deviceChunk is the unit writeDevice reads, writes and reports.
const deviceChunk = 1 << 20

// writeDevice writes img over the block device at path, in place: there is
// no room for a temporary copy. Unlike a fresh file, a device holds old
// data, so ranges that read as zero in img are zeroed rather than skipped.
// The device must be at least as large as img; bytes past img's end are
// left as they were.
func writeDevice(ctx context.Context, path string, img pe.Image, progress pe.Progress) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	devSize, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("%s: device size: %w", path, err)
	}
	size := img.Size()
	if devSize < size {
		return fmt.Errorf("%s: device has %d bytes, source image %d", path, devSize, size)
	}
	if progress != nil {
		progress.Start(size)
	}
	exts, err := img.Extents(ctx, 0, size)
	if err != nil {
		return fmt.Errorf("source extents: %w", err)
	}
	z := zeroer{f: f}
	buf := make([]byte, deviceChunk)
	for _, e := range exts {
		for off := e.Offset; off < e.End(); {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(deviceChunk, e.End()-off)
			b := buf[:n]
			zero := e.Kind.ReadsZero()
			if !zero {
				if m, err := img.ReadAt(b, off); m < len(b) {
					return fmt.Errorf("read source at %d: %d of %d bytes: %w", off, m, len(b), errOrEOF(err))
				}
				zero = pe.IsZero(b)
			}
			if zero {
				err = z.zero(off, n)
			} else {
				_, err = f.WriteAt(b, off)
			}
			if err != nil {
				return fmt.Errorf("%s: write at %d: %w", path, off, err)
			}
			if progress != nil {
				progress.Add(n)
			}
			off += n
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// zeroer zeroes ranges of a block device, with BLKZEROOUT-like fallocate
// where the device offers it (thin devices then free the space), else by
// writing zeros.
type zeroer struct {
	f        *os.File
	noZeroOp bool
	zeros    []byte
}

func (z *zeroer) zero(off, n int64) error {
	if !z.noZeroOp {
		err := unix.Fallocate(int(z.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("zero range: %w", err)
		}
		z.noZeroOp = true
	}
	if z.zeros == nil {
		z.zeros = make([]byte, deviceChunk)
	}
	for n > 0 {
		m := min(n, int64(len(z.zeros)))
		if _, err := z.f.WriteAt(z.zeros[:m], off); err != nil {
			return err
		}
		off += m
		n -= m
	}
	return nil
}

// errOrEOF names why a read came back short.
func errOrEOF(err error) error {
	if err == nil {
		return io.ErrUnexpectedEOF
	}
	return err
}
