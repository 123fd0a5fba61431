package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/astrolabe-appliance/astrolabe/pe"
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
// blocks of the source stay holes.
func (tm *TypeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	var (
		name string
		err  error
	)
	switch opts.Mode {
	case pe.CreateNew:
		name, err = tm.create(ctx, src, src.ID().Name(), true, opts.Progress)
	case pe.Create:
		name = opts.TargetName(src.ID())
		if !validName(name) {
			return nil, fmt.Errorf("copy %s: invalid disk name %q (a file name in the root, not hidden)", src.ID(), name)
		}
		name, err = tm.create(ctx, src, name, false, opts.Progress)
	case pe.Update:
		name = opts.TargetName(src.ID())
		if !validName(name) {
			return nil, fmt.Errorf("copy %s to %s:%s: %w", src.ID(), Type, name, pe.ErrNotFound)
		}
		err = tm.overwrite(ctx, name, src, opts.Progress)
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
func (tm *TypeManager) create(ctx context.Context, src pe.ProtectedEntity, target string, fresh bool, progress pe.Progress) (string, error) {
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
	tmp, err := tm.writeTemp(ctx, img, progress)
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
func (tm *TypeManager) overwrite(ctx context.Context, name string, src pe.ProtectedEntity, progress pe.Progress) error {
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
		return writeDevice(ctx, path, img, progress)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	tmp, err := tm.writeTemp(ctx, img, progress)
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

// writeTemp writes img to a new hidden file in the root and returns its
// path; on failure nothing is left. An image that is a whole file on the
// same filesystem (a snapshot being restored) is reflinked where possible.
func (tm *TypeManager) writeTemp(ctx context.Context, img pe.Image, progress pe.Progress) (string, error) {
	f, err := os.CreateTemp(tm.root, ".tmp-restore-*")
	if err != nil {
		return "", err
	}
	err = writeImageFile(ctx, f, img, progress)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// writeImageFile fills the empty file f with img.
func writeImageFile(ctx context.Context, f *os.File, img pe.Image, progress pe.Progress) error {
	if src := wholeFileOf(img); src != nil && reflink(f, src) == nil {
		if progress != nil {
			progress.Start(img.Size())
			progress.Add(img.Size())
		}
		return nil
	}
	if err := f.Truncate(0); err != nil { // whatever a failed clone left
		return err
	}
	if err := f.Truncate(img.Size()); err != nil {
		return err
	}
	return pe.CopyData(ctx, f, img, progress)
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
