package fs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
)

// maxTrailing bounds what a restore reads after the end of the archive.
const maxTrailing = 1 << 20

// restorePrefix starts the hidden temporary directories restores extract
// into, inside the root so that renaming them into place is atomic.
const restorePrefix = ".restore-"

// Replace implements localpe.Backend: the restored tree tmp and the tree
// of the existing PE name are exchanged with one atomic rename, so the PE
// is never missing nor half restored, and tmp holds the old tree; its
// snapshots are not touched. Without RENAME_EXCHANGE see swapAside.
func (t *trees) Replace(name, tmp string) error {
	target := t.Path(name)
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, target, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = swapAside(tmp, target)
	}
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s:%s vanished during the restore: %w", Type, name, pe.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("swap restored tree into %s: %w", target, err)
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

// WriteTemp implements localpe.Backend: it extracts img, src's tar
// stream, into a new hidden directory of the root and returns it; on
// failure nothing is left.
//
// From untrusted input (pe.Untrusted) without opts.KeepPrivileges the tree
// is restored without privileges (see extractOptions); what it may write is
// bounded by opts.ExpansionLimit. Any restore needs the free space its
// source declares, and stops when the filesystem runs low (package budget).
func (t *trees) WriteTemp(ctx context.Context, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) (string, error) {
	b, err := budget.New(ctx, t.Dir(), src, img, opts)
	if err != nil {
		return "", err
	}
	opts.StartProgress(img.Size())
	tmp, err := os.MkdirTemp(t.Dir(), restorePrefix)
	if err != nil {
		return "", err
	}
	// tar reads 512-byte blocks; buffer so that the source sees large
	// reads (it may be remote).
	r := bufio.NewReaderSize(opts.Reader(ctx, pe.NewReader(img)), 1<<20)
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
		err = atomicfile.SyncFS(tmp)
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
