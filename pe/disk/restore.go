package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
)

// UpdateInPlace implements localpe.InPlaceUpdater: a block device is
// written in place; a file is replaced (Replace).
func (d *disks) UpdateInPlace(ctx context.Context, name string, img pe.Image, opts pe.CopyOptions) (bool, error) {
	kind, err := d.kindOf(name)
	if err != nil || kind != kindDevice {
		return false, err
	}
	return true, writeDevice(ctx, d.Path(name), img, opts.Progress)
}

// Replace implements localpe.Backend: the new file tmp is renamed over the
// image file name, keeping its permissions and owner.
func (d *disks) Replace(name, tmp string) error {
	path := d.Path(name)
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s:%s vanished during the restore: %w", Type, name, pe.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if err := keepOwnership(tmp, fi); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WriteTemp implements localpe.Backend: it writes img, the data of src, to
// a new hidden file in the root. An image that is a whole file on the same
// filesystem (a snapshot being restored) is reflinked where possible.
func (d *disks) WriteTemp(ctx context.Context, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) (string, error) {
	f, err := os.CreateTemp(d.Dir(), ".tmp-restore-*")
	if err != nil {
		return "", err
	}
	err = writeImageFile(ctx, f, src, img, opts)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", budget.Full(err)
	}
	return f.Name(), nil
}

// writeImageFile fills the empty file f with img, the data of src, within
// the budget of a restore of src (a reflink costs none).
func writeImageFile(ctx context.Context, f *os.File, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) error {
	if whole := wholeFileOf(img); whole != nil && reflink(f, whole) == nil {
		opts.StartProgress(img.Size())
		opts.AddProgress(img.Size())
		return nil
	}
	// A zip declares its data's size and nothing checks it before the end
	// of the stream: an untrusted source may not make a file, sparse or
	// not, nor have us read zeros, past what it may produce.
	if err := budget.Declared(src, opts, img.Size()); err != nil {
		return err
	}
	b, err := budget.New(ctx, filepath.Dir(f.Name()), src, img, opts)
	if err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil { // whatever a failed clone left
		return err
	}
	if err := f.Truncate(img.Size()); err != nil {
		return err
	}
	return pe.CopyData(ctx, budgetWriter{f, b}, img, opts.Progress)
}

// budgetWriter writes to w what b allows. pe.CopyData writes only blocks
// that are not all zeros: holes cost nothing.
type budgetWriter struct {
	w io.WriterAt
	b *budget.Budget
}

func (bw budgetWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := bw.b.Add(int64(len(p))); err != nil {
		return 0, err
	}
	return bw.w.WriteAt(p, off)
}

// wholeFileOf returns the file behind img if img is a disk image that is
// exactly one whole regular file, so that a clone of the file is a copy of
// the image.
func wholeFileOf(img pe.Image) *os.File {
	var im *image
	switch v := img.(type) {
	case *image:
		im = v
	case *snapshotImage:
		im = v.image
	default:
		return nil
	}
	if !im.Holes() {
		return nil // a block device
	}
	fi, err := im.File().Stat()
	if err != nil || fi.Size() != im.Size() {
		return nil
	}
	return im.File()
}

// keepOwnership gives the replacement file tmp the permissions and, as far
// as we may, the owner of the file it replaces.
func keepOwnership(tmp string, old fs.FileInfo) error {
	if err := os.Chmod(tmp, old.Mode().Perm()); err != nil {
		return err
	}
	if st, ok := old.Sys().(*syscall.Stat_t); ok {
		// Only root may give files away; for anyone else the new file is
		// theirs, which is the best they can do, so ignore EPERM.
		if err := os.Chown(tmp, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
			return err
		}
	}
	return nil
}
