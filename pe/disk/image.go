package disk

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/fileimage"
)

// image is the pe.Image of a disk file or block device.
type image struct{ *fileimage.Image }

var _ pe.Image = (*image)(nil)

// openImage opens path read-only as an image.
func openImage(path string, kind sourceKind) (*image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	size, err := imageSize(f, kind)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &image{fileimage.New(f, size, kind == kindFile)}, nil
}

// imageSize is the size of a file or, for a block device, of the device:
// seeking to the end works for both where stat reports 0 for devices.
func imageSize(f *os.File, kind sourceKind) (int64, error) {
	if kind == kindDevice {
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, fmt.Errorf("device size: %w", err)
		}
		return size, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// snapshotImage is the image of a snapshot. It knows its blocks file, so it
// can tell what changed since an earlier snapshot of the same PE.
type snapshotImage struct {
	*image
	disks *disks
	name  string
	snap  string
}

var _ pe.ChangeTracker = (*snapshotImage)(nil)

// ChangedSince implements pe.ChangeTracker by comparing the two snapshots'
// block hashes; neither image is read.
func (si *snapshotImage) ChangedSince(ctx context.Context, base string) ([]pe.Extent, error) {
	exts, err := si.disks.changedSince(ctx, si.name, si.snap, base)
	if err != nil {
		return nil, fmt.Errorf("changes of %s:%s:%s since %s: %w", Type, si.name, si.snap, base, err)
	}
	return exts, nil
}

var _ pe.BackingFiler = (*image)(nil)

// OpenBacking implements pe.BackingFiler: the whole image of a regular file
// is that file.
func (im *image) OpenBacking(ctx context.Context, off, size int64) (*os.File, error) {
	if !im.Holes() || off != 0 || size != im.Size() {
		return nil, fmt.Errorf("disk image range %d+%d: %w", off, size, pe.ErrNotSupported)
	}
	f, err := os.Open(im.File().Name())
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != im.Size() {
		f.Close()
		return nil, fmt.Errorf("%s: changed size since opened: %w", im.File().Name(), pe.ErrNotSupported)
	}
	return f, nil
}
