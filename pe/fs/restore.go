package fs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// maxNameTries bounds the attempts of CreateNew to find an unused name; with
// 32 random bits a second attempt is already rare.
const maxNameTries = 10

// maxTrailing bounds what a restore reads after the end of the archive.
const maxTrailing = 1 << 20

// restorePrefix starts the hidden temporary directories restores extract
// into, inside the root so that renaming them into place is atomic.
const restorePrefix = ".restore-"

// Copy implements pe.TypeManager: it extracts src's data, a tar stream,
// into a directory of the root.
//
//   - pe.CreateNew: a new directory named <source name>-<8 hex digits>
//     ("/" in the source name becomes "_", leading dots are dropped, and a
//     name that is still unusable becomes "fs");
//   - pe.Create: the directory opts.TargetName(src.ID()), which must not
//     exist (pe.ErrExists);
//   - pe.Update: replaces the contents of that existing directory
//     (pe.ErrNotFound if there is none), see Overwrite.
//
// The tree is extracted into a hidden temporary directory in the root and
// renamed into place only when complete, so a failed, rejected or
// cancelled copy changes nothing. See extract for what a tar stream may
// hold.
func (tm *TypeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	var (
		name string
		err  error
	)
	switch opts.Mode {
	case pe.CreateNew:
		name, err = tm.createNew(ctx, src, opts)
	case pe.Create:
		name = opts.TargetName(src.ID())
		if !validName(name) {
			return nil, fmt.Errorf("copy %s: invalid fs name %q (a directory name in the root, not hidden)", src.ID(), name)
		}
		err = tm.create(ctx, name, src, opts)
	case pe.Update:
		name = opts.TargetName(src.ID())
		if !validName(name) {
			return nil, fmt.Errorf("copy %s to %s:%s: %w", src.ID(), Type, name, pe.ErrNotFound)
		}
		err = tm.update(ctx, name, src, opts)
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

// create extracts src to the new directory name.
func (tm *TypeManager) create(ctx context.Context, name string, src pe.ProtectedEntity, opts pe.CopyOptions) error {
	// Fail before extracting gigabytes; the rename below catches a race.
	if _, err := os.Lstat(tm.livePath(name)); err == nil {
		return fmt.Errorf("%s:%s: %w", Type, name, pe.ErrExists)
	} else if !errors.Is(err, iofs.ErrNotExist) {
		return err
	}
	tmp, err := tm.extractTemp(ctx, src, opts)
	if err != nil {
		return err
	}
	if err := renameNoReplace(tmp, tm.livePath(name)); err != nil {
		os.RemoveAll(tmp)
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s:%s: %w", Type, name, pe.ErrExists)
		}
		return err
	}
	return snapdir.SyncDir(tm.root)
}

// createNew extracts src to a new directory with a fresh name and returns
// the name.
func (tm *TypeManager) createNew(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (string, error) {
	tmp, err := tm.extractTemp(ctx, src, opts)
	if err != nil {
		return "", err
	}
	for range maxNameTries {
		name := newName(src.ID().Name())
		err := renameNoReplace(tmp, tm.livePath(name))
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			os.RemoveAll(tmp)
			return "", err
		}
		return name, snapdir.SyncDir(tm.root)
	}
	os.RemoveAll(tmp)
	return "", fmt.Errorf("no unused name for a copy of %s after %d tries", src.ID(), maxNameTries)
}

// update replaces the tree of the existing PE name with src's. The new
// tree is swapped in with one atomic rename, so the PE is never missing
// nor half restored; its snapshots are not touched.
func (tm *TypeManager) update(ctx context.Context, name string, src pe.ProtectedEntity, opts pe.CopyOptions) error {
	if err := tm.checkLive(name); err != nil {
		return err
	}
	tmp, err := tm.extractTemp(ctx, src, opts)
	if err != nil {
		return err
	}
	target := tm.livePath(name)
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, target, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = swapAside(tmp, target)
	}
	if errors.Is(err, unix.ENOENT) {
		os.RemoveAll(tmp)
		return fmt.Errorf("%s:%s vanished during the restore: %w", Type, name, pe.ErrNotFound)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("swap restored tree into %s: %w", target, err)
	}
	if err := snapdir.SyncDir(tm.root); err != nil {
		return err
	}
	// tmp now holds the old tree.
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("restored, but removing the old tree %s failed: %w", tmp, err)
	}
	return nil
}

// swapAside exchanges the trees at tmp and target without RENAME_EXCHANGE
// (filesystems that lack it): target is renamed aside first, so there is a
// moment without it, but never a moment without either tree.
func swapAside(tmp, target string) error {
	aside := tmp + "-old"
	if err := os.Rename(target, aside); err != nil {
		return err
	}
	if err := os.Rename(tmp, target); err != nil {
		if rerr := os.Rename(aside, target); rerr != nil {
			return fmt.Errorf("%w (and putting the old tree back from %s failed: %v)", err, aside, rerr)
		}
		return err
	}
	return os.Rename(aside, tmp)
}

// renameNoReplace renames a directory to a name that must not exist; a
// plain rename would replace an empty directory made meanwhile.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here: check, then rename, racy but rare.
		if _, serr := os.Lstat(to); serr == nil {
			return unix.EEXIST
		}
		return os.Rename(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// extractTemp extracts src's tar stream into a new hidden directory of the
// root and returns it; on failure nothing is left.
//
// From untrusted input (pe.Untrusted) without opts.KeepPrivileges the tree
// is restored without privileges (see extractOptions); what it may write is
// bounded by opts.ExpansionLimit. Any restore needs the free space its
// source declares, and stops when the filesystem runs low (package budget).
func (tm *TypeManager) extractTemp(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (string, error) {
	img, err := src.Data(ctx)
	if err != nil {
		return "", fmt.Errorf("data of %s: %w", src.ID(), err)
	}
	defer img.Close()
	b, err := budget.New(ctx, tm.root, src, img, opts)
	if err != nil {
		return "", err
	}
	opts.StartProgress(img.Size())
	tmp, err := os.MkdirTemp(tm.root, restorePrefix)
	if err != nil {
		return "", err
	}
	// tar reads 512-byte blocks; buffer so that the source sees large
	// reads (it may be remote).
	r := bufio.NewReaderSize(&progressReader{ctx: ctx, r: pe.NewReader(img), opts: opts}, 1<<20)
	xo := extractOptions{dropPrivileges: pe.Untrusted(src) && !opts.KeepPrivileges, budget: b}
	err = extract(ctx, tmp, r, xo)
	if err == nil {
		// tar stops reading at the end-of-archive blocks; GNU tar pads
		// to 10 KiB records after them. Read that too, so that progress
		// ends at the total, but not gigabytes of trailing garbage.
		_, err = io.CopyN(io.Discard, r, maxTrailing)
		if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	if err == nil {
		err = syncFS(tmp)
	}
	if err != nil {
		err = budget.Full(err)
		if rerr := os.RemoveAll(tmp); rerr != nil {
			err = fmt.Errorf("%w (and removing the partly restored tree failed: %v)", err, rerr)
		}
		return "", err
	}
	return tmp, nil
}

// progressReader reports what it reads and stops when ctx is done.
type progressReader struct {
	ctx  context.Context
	r    io.Reader
	opts pe.CopyOptions
}

func (p *progressReader) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.r.Read(b)
	p.opts.AddProgress(int64(n))
	return n, err
}
