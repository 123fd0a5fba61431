// Package fs makes directory trees PEs of type "fs".
//
// Each subdirectory of a root directory whose name is a valid PE ID part is
// the PE fs:<name>. Snapshots are kept under root/.snapshots/<name>/<snap>/
// as a copy of the tree (reflinked file by file where the filesystem can,
// else copied keeping holes) plus info.json. A PE's data is a tar stream
// that is laid out, not written: any byte of it can be read at any offset
// without materialising the archive.
package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// Type is the PE type name.
const Type = "fs"

// TypeManager knows the fs PEs under one root directory.
type TypeManager struct {
	root  string
	snaps snapdir.Store
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the fs PEs in root, which must be
// an existing directory.
func NewTypeManager(root string) (*TypeManager, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("fs root %q: %w", root, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("fs root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("fs root %s: not a directory", abs)
	}
	return &TypeManager{root: abs, snaps: snapdir.New(abs)}, nil
}

// Type implements pe.TypeManager.
func (tm *TypeManager) Type() string { return Type }

// Root is the directory holding the PEs.
func (tm *TypeManager) Root() string { return tm.root }

// List implements pe.TypeManager: the IDs of all live PEs, sorted by name.
func (tm *TypeManager) List(ctx context.Context) ([]pe.ID, error) {
	entries, err := os.ReadDir(tm.root)
	if err != nil {
		return nil, fmt.Errorf("list fs PEs: %w", err)
	}
	var ids []pe.ID
	for _, e := range entries {
		// DirEntry.IsDir is from lstat: symlinks to directories are not
		// PEs, their trees live somewhere we do not manage.
		if !e.IsDir() || !validName(e.Name()) {
			continue
		}
		id, err := pe.NewID(Type, e.Name())
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].Name() < ids[j].Name() })
	return ids, nil
}

// Get implements pe.TypeManager. A live PE must exist; a snapshot must
// exist, but its live PE need not: restoring a deleted tree from its
// snapshot is what snapshots are for.
func (tm *TypeManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.Type() != Type {
		return nil, fmt.Errorf("get %s: type %q is not %q: %w", id, id.Type(), Type, pe.ErrNotFound)
	}
	if !validName(id.Name()) {
		return nil, fmt.Errorf("get %s: not a directory name in the root: %w", id, pe.ErrNotFound)
	}
	if id.HasSnapshot() {
		if _, err := tm.readSnapshotInfo(id.Name(), id.Snapshot()); err != nil {
			return nil, fmt.Errorf("get %s: %w", id, err)
		}
		return &entity{tm: tm, id: id}, nil
	}
	if err := tm.checkLive(id.Name()); err != nil {
		return nil, fmt.Errorf("get %s: %w", id, err)
	}
	return &entity{tm: tm, id: id}, nil
}

// checkLive returns ErrNotFound (wrapped) unless the live PE name is a
// directory.
func (tm *TypeManager) checkLive(name string) error {
	p := tm.livePath(name)
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

func (tm *TypeManager) livePath(name string) string { return filepath.Join(tm.root, name) }

// snapshotsOf is the directory holding the snapshots of one PE.
func (tm *TypeManager) snapshotsOf(name string) string { return tm.snaps.Of(name) }

// snapshotPath is the directory of one snapshot.
func (tm *TypeManager) snapshotPath(name, snap string) string { return tm.snaps.Path(name, snap) }

// treePath is the copy of the tree inside a snapshot.
func (tm *TypeManager) treePath(name, snap string) string {
	return filepath.Join(tm.snapshotPath(name, snap), treeDir)
}
