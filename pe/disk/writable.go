package disk

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

var _ pe.DataWriter = (*entity)(nil)

// WritableData implements pe.DataWriter for the live image (a file or a
// block device); snapshots are read-only.
func (e *entity) WritableData(ctx context.Context) (pe.WritableImage, error) {
	if err := e.RequireLive("write"); err != nil {
		return nil, err
	}
	id := e.ID()
	kind, err := e.disks.kindOf(id.Name())
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", id, err)
	}
	path := e.disks.Path(id.Name())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", id, err)
	}
	size, err := imageSize(f, kind)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %s: %w", id, path, err)
	}
	return &writableImage{image{f: f, size: size, holes: kind == kindFile}}, nil
}

// writableImage writes through to the file with pwrite. Its size is fixed:
// writes past it fail rather than grow the image behind a reader's back.
type writableImage struct{ image }

func (w *writableImage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > w.size || int64(len(p)) > w.size-off {
		return 0, fmt.Errorf("write of %d bytes at %d: past the end of the %d-byte image", len(p), off, w.size)
	}
	return w.f.WriteAt(p, off)
}

func (w *writableImage) Sync() error { return w.f.Sync() }

// Zero uses fallocate: punching a hole where allowed and possible, else
// zeroing the range in place (thin devices and filesystems free or
// preallocate the space without data being written).
func (w *writableImage) Zero(off, length int64, punch bool) error {
	if off < 0 || length < 0 || off > w.size || length > w.size-off {
		return fmt.Errorf("zero %d bytes at %d: past the end of the %d-byte image", length, off, w.size)
	}
	fd := int(w.f.Fd())
	if punch {
		err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil || !unsupported(err) {
			return err
		}
	}
	err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err != nil && unsupported(err) {
		return fmt.Errorf("zero range: %w (%w)", errors.ErrUnsupported, err)
	}
	return err
}

func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV)
}
