// Package fs makes directory trees PEs of type "fs".
//
// Each subdirectory of a root directory whose name is a valid PE ID part is
// the PE fs:<name>. Snapshots are kept under root/.snapshots/<name>/<snap>/
// as a copy of the tree (reflinked file by file where the filesystem can,
// else copied keeping holes) plus info.json. A PE's data is a tar stream
// that is laid out, not written: any byte of it can be read at any offset
// without materialising the archive.
//
// A copy to fs (TypeManager.Copy) extracts the source's data, a tar
// stream, into a directory of the root; with pe.CreateNew one named
// <source name>-<8 hex digits> ("/" in the source name becomes "_",
// leading dots are dropped, and a name that is still unusable becomes
// "fs"). See extract for what a tar stream may hold.
package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/localpe"
)

// Type is the PE type name.
const Type = "fs"

// TypeManager knows the fs PEs under one root directory. What fs and disk
// PEs have in common is package localpe's; trees is what is fs's own.
type TypeManager struct {
	*localpe.Manager
	trees *trees
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the fs PEs in root, which must be
// an existing directory.
func NewTypeManager(root string) (*TypeManager, error) {
	tm := &TypeManager{}
	m, err := localpe.NewManager(Type, root, func(r *localpe.Root) localpe.Backend {
		tm.trees = &trees{Root: r}
		return tm.trees
	})
	if err != nil {
		return nil, err
	}
	tm.Manager = m
	return tm, nil
}

// trees is the localpe.Backend of fs: each PE is a directory tree.
type trees struct {
	*localpe.Root
}

var _ localpe.Backend = (*trees)(nil)

// CheckLive implements localpe.Backend: the entry must be a directory,
// not a symlink to one (its tree lives somewhere we do not manage).
func (t *trees) CheckLive(name string) error {
	p := t.Path(name)
	fi, err := os.Lstat(p)
	if errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("%s: %w", p, pe.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory: %w", p, pe.ErrNotFound)
	}
	return nil
}

// NewName implements localpe.Backend: <base>-<8 hex digits>.
func (t *trees) NewName(base string) string { return pe.NewLocalName(base, Type, false) }

// OpenLive implements localpe.Backend: the tar stream of the tree, laid
// out now and read from the files on demand.
//
// Unlike a snapshot's, it is not the same bytes every time: it is the tree
// as walked now, and ReadAt fails when a file's size, mtime or inode has
// changed since, rather than return bytes that do not match the headers.
// Snapshot first for a consistent copy.
func (t *trees) OpenLive(ctx context.Context, name string) (pe.Image, error) {
	if err := t.CheckLive(name); err != nil {
		return nil, err
	}
	return openImage(ctx, t.Path(name))
}

// OpenSnapshot implements localpe.Backend: the tar stream of the
// snapshot's copy of the tree.
func (t *trees) OpenSnapshot(ctx context.Context, name, snap string) (pe.Image, error) {
	if _, err := t.readSnapshotInfo(name, snap); err != nil {
		return nil, err
	}
	return openImage(ctx, t.treePath(name, snap))
}

// Wrap implements localpe.Backend: an fs PE offers nothing more.
func (t *trees) Wrap(e *localpe.Entity) pe.ProtectedEntity { return e }

// treePath is the copy of the tree inside a snapshot.
func (t *trees) treePath(name, snap string) string {
	return filepath.Join(t.Snapshots().Path(name, snap), treeDir)
}
