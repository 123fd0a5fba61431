package disk

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// image is the pe.Image of a disk file or block device. Its size is taken
// once at open, so that a live image growing under a reader still reads as
// one consistent length.
type image struct {
	f    *os.File
	size int64
	// holes says the file can answer SEEK_DATA; block devices cannot
	// (they have no holes) and are all data.
	holes bool
}

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
	return &image{f: f, size: size, holes: kind == kindFile}, nil
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

// ReadAt implements io.ReaderAt with pread, so it is safe for concurrent
// use; it stops at the size taken at open with io.EOF.
func (im *image) ReadAt(p []byte, off int64) (int, error) {
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
func (im *image) Size() int64 { return im.size }

// Extents implements pe.Image.
func (im *image) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	if !im.holes {
		return pe.AllData(off, length, im.size), nil
	}
	return fileExtents(ctx, im.f, im.size, off, length)
}

// Close implements io.Closer.
func (im *image) Close() error { return im.f.Close() }

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
	if !im.holes || off != 0 || size != im.size {
		return nil, fmt.Errorf("disk image range %d+%d: %w", off, size, pe.ErrNotSupported)
	}
	f, err := os.Open(im.f.Name())
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != im.size {
		f.Close()
		return nil, fmt.Errorf("%s: changed size since opened: %w", im.f.Name(), pe.ErrNotSupported)
	}
	return f, nil
}
