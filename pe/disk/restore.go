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
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// maxNameTries bounds the attempts of CreateNew to find an unused name; with
// 32 random bits a second attempt is already rare.
const maxNameTries = 10

// Copy implements pe.TypeManager: it writes src's data as a disk image.
//
//   - pe.CreateNew: a new image named after the source with a random
//     suffix before the extension (vm1.img → vm1-1a2b3c4d.img);
//   - pe.Create: the image opts.TargetName(src.ID()), which must not exist;
//   - pe.Update: overwrites that existing image, see Overwrite.
//
// New and replaced files are written to a hidden temporary file first, so
// that a failed or cancelled copy changes nothing; holes and all-zero
// blocks of the source stay holes. What is written is bounded (package
// budget): by the free space of the root's filesystem, and for untrusted
// sources by opts.ExpansionLimit; a bound that is hit fails the copy with
// pe.ErrLimit and removes the temporary file. A block device is written in
// place, within its size, and not bounded.
func (tm *TypeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	var (
		name string
		err  error
	)
	switch opts.Mode {
	case pe.CreateNew:
		name, err = tm.create(ctx, src, src.ID().Name(), true, opts)
	case pe.Create:
		name = opts.TargetName(src.ID())
		if !validName(name) {
			return nil, fmt.Errorf("copy %s: invalid disk name %q (a file name in the root, not hidden)", src.ID(), name)
		}
		name, err = tm.create(ctx, src, name, false, opts)
	case pe.Update:
		name = opts.TargetName(src.ID())
		if !validName(name) {
			return nil, fmt.Errorf("copy %s to %s:%s: %w", src.ID(), Type, name, pe.ErrNotFound)
		}
		err = tm.overwrite(ctx, name, src, opts)
	default:
		return nil, fmt.Errorf("copy %s: invalid copy mode %v", src.ID(), opts.Mode)
	}
	if err != nil {
		return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
	}
	id, err := pe.NewID(Type, name)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", src.ID(), err)
	}
	return &entity{tm: tm, id: id}, nil
}

// create writes src to a new image and returns its name: target itself, or
// a fresh name derived from target when fresh is set.
func (tm *TypeManager) create(ctx context.Context, src pe.ProtectedEntity, target string, fresh bool, opts pe.CopyOptions) (string, error) {
	if !fresh {
		// Fail before writing gigabytes; the link below catches a race.
		if _, err := os.Lstat(tm.livePath(target)); err == nil {
			return "", fmt.Errorf("%s:%s: %w", Type, target, pe.ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	img, err := sourceData(ctx, src)
	if err != nil {
		return "", err
	}
	defer img.Close()
	tmp, err := tm.writeTemp(ctx, src, img, opts)
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp)
	// Link, unlike rename, never replaces an existing file: that makes
	// "must not exist" atomic.
	for try := 0; ; try++ {
		name := target
		if fresh {
			name = newName(target)
		}
		err := os.Link(tmp, tm.livePath(name))
		switch {
		case err == nil:
			return name, snapdir.SyncDir(tm.root)
		case !errors.Is(err, fs.ErrExist):
			return "", err
		case !fresh:
			return "", fmt.Errorf("%s:%s: %w", Type, name, pe.ErrExists)
		case try+1 >= maxNameTries:
			return "", fmt.Errorf("no free name for %s after %d tries: %w", target, maxNameTries, err)
		}
	}
}

// overwrite replaces the data of the existing PE name with src's. A file is
// replaced by a new one renamed over it, keeping its permissions and owner;
// a block device is written in place.
func (tm *TypeManager) overwrite(ctx context.Context, name string, src pe.ProtectedEntity, opts pe.CopyOptions) error {
	kind, err := tm.kindOf(name)
	if err != nil {
		return err
	}
	img, err := sourceData(ctx, src)
	if err != nil {
		return err
	}
	defer img.Close()
	path := tm.livePath(name)
	if kind == kindDevice {
		return writeDevice(ctx, path, img, opts.Progress)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	tmp, err := tm.writeTemp(ctx, src, img, opts)
	if err != nil {
		return err
	}
	if err := keepOwnership(tmp, fi); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return snapdir.SyncDir(tm.root)
}

// sourceData opens src's data; a source without data is an invalid source.
func sourceData(ctx context.Context, src pe.ProtectedEntity) (pe.Image, error) {
	img, err := src.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	return img, nil
}

// writeTemp writes img, the data of src, to a new hidden file in the root
// and returns its path; on failure nothing is left. An image that is a
// whole file on the same filesystem (a snapshot being restored) is
// reflinked where possible.
func (tm *TypeManager) writeTemp(ctx context.Context, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) (string, error) {
	f, err := os.CreateTemp(tm.root, ".tmp-restore-*")
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
	if !im.holes {
		return nil // a block device
	}
	fi, err := im.f.Stat()
	if err != nil || fi.Size() != im.size {
		return nil
	}
	return im.f
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
