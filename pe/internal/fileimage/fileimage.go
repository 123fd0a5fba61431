// Package fileimage is the pe.Image of a local file or block device, read
// with pread and written with pwrite, whose holes (SEEK_DATA/SEEK_HOLE)
// become hole extents. Disk PEs and the overlays of writable exports keep
// their bytes in such files.
package fileimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Image is a file or block device as a pe.Image. Its size is taken once
// at open, so that a live image growing under a reader still reads as one
// consistent length.
type Image struct {
	f    *os.File
	size int64
	// holes says the file can answer SEEK_DATA; block devices cannot
	// (they have no holes) and are all data.
	holes bool
}

var _ pe.Image = (*Image)(nil)

// New returns the image of f, size bytes long; holes says whether f is a
// regular file whose holes to report. The image owns f.
func New(f *os.File, size int64, holes bool) *Image {
	return &Image{f: f, size: size, holes: holes}
}

// File is the open file; Holes whether it is a regular file.
func (im *Image) File() *os.File { return im.f }
func (im *Image) Holes() bool    { return im.holes }

// ReadAt implements io.ReaderAt with pread, so it is safe for concurrent
// use; it stops at the size taken at open with io.EOF.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", off)
	}
	if off >= im.size {
		return 0, io.EOF
	}
	short := false
	if int64(len(p)) > im.size-off {
		p, short = p[:im.size-off], true
	}
	n, err := im.f.ReadAt(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// Size implements pe.Image.
func (im *Image) Size() int64 { return im.size }

// Extents implements pe.Image.
func (im *Image) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	if !im.holes {
		return pe.AllData(off, length, im.size), nil
	}
	return Extents(ctx, im.f, im.size, off, length)
}

// Close implements io.Closer.
func (im *Image) Close() error { return im.f.Close() }

// Writable is an Image written in place with pwrite. Its size is fixed:
// writes past it fail rather than grow the image behind a reader's back.
type Writable struct{ *Image }

var _ pe.WritableImage = Writable{}

func (w Writable) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > w.size || int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("write of %d bytes at %d: past the end of the %d-byte image", len(p), off, w.size)
	}
	return w.f.WriteAt(p, off)
}

func (w Writable) Sync() error { return w.f.Sync() }

// Zero uses fallocate: punching a hole where allowed and possible, else
// zeroing the range in place (thin devices and filesystems free or
// preallocate the space without data being written).
func (w Writable) Zero(off, length int64, punch bool) error {
	if off < 0 || length < 0 || off > w.size || length > w.size-off {
		return fmt.Errorf("zero %d bytes at %d: past the end of the %d-byte image", length, off, w.size)
	}
	fd := int(w.f.Fd())
	if punch {
		err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil || !fallocateUnsupported(err) {
			return err
		}
	}
	err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err != nil && fallocateUnsupported(err) {
		return fmt.Errorf("zero range: %w (%w)", errors.ErrUnsupported, err)
	}
	return err
}

func fallocateUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV)
}
