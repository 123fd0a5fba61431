// Package disk makes raw disk images and block devices PEs of type "disk".
//
// Each regular file, or symlink to a block device, directly in a root
// directory is the PE disk:<file name>; hidden names are not PEs. A
// snapshot is a directory
//
//	root/.snapshots/<name>/<snapshot>/
//	    image      the point-in-time image: a reflink (FICLONE) of the file
//	               where the filesystem can, else a copy that keeps holes
//	               and leaves all-zero blocks unwritten
//	    blocks     SHA-256 of every 64 KiB block of image (see blocks.go)
//	    info.json  creation time, size, block size, method (reflink, copy)
//
// built as .tmp-<snapshot> beside it and renamed into place when complete.
// Comparing two blocks files tells the blocks changed between snapshots
// without reading either image again.
package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// Type is the PE type name.
const Type = "disk"

// TypeManager knows the disk PEs under one root directory.
type TypeManager struct {
	root  string
	snaps snapdir.Store
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the disk PEs in root, which must be
// an existing directory.
func NewTypeManager(root string) (*TypeManager, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("disk root %q: %w", root, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("disk root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("disk root %s: not a directory", abs)
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
		return nil, fmt.Errorf("list disk PEs: %w", err)
	}
	var ids []pe.ID
	for _, e := range entries {
		if !validName(e.Name()) {
			continue
		}
		if _, err := tm.kindOf(e.Name()); err != nil {
			// Directories, sockets, symlinks to files, dangling links:
			// not disks. A file that vanished since ReadDir is no PE either.
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
// exist, but its live PE need not (the image may have been deleted since).
func (tm *TypeManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.Type() != Type {
		return nil, fmt.Errorf("get %s: type %q is not %q: %w", id, id.Type(), Type, pe.ErrNotFound)
	}
	if !validName(id.Name()) {
		return nil, fmt.Errorf("get %s: %w", id, pe.ErrNotFound)
	}
	if id.HasSnapshot() {
		if _, err := tm.readSnapshotInfo(id.Name(), id.Snapshot()); err != nil {
			return nil, fmt.Errorf("get %s: %w", id, err)
		}
		return &entity{tm: tm, id: id}, nil
	}
	if _, err := tm.kindOf(id.Name()); err != nil {
		return nil, fmt.Errorf("get %s: %w", id, err)
	}
	return &entity{tm: tm, id: id}, nil
}

// sourceKind says how a live PE's bytes are stored.
type sourceKind int

const (
	kindFile   sourceKind = iota + 1 // a regular file, possibly sparse
	kindDevice                       // a symlink to a block device
)

// kindOf classifies the live PE name; ErrNotFound (wrapped) if it is
// missing or not something this type manages.
func (tm *TypeManager) kindOf(name string) (sourceKind, error) {
	p := tm.livePath(name)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s: %w", p, pe.ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return kindFile, nil
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return 0, fmt.Errorf("%s: not a regular file or block device link: %w", p, pe.ErrNotFound)
	}
	// Only links to block devices: a link to a file would be replaced by
	// the file itself on restore, which is not what its owner meant.
	target, err := os.Stat(p)
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %w", p, pe.ErrNotFound, err)
	}
	if target.Mode()&fs.ModeDevice == 0 || target.Mode()&fs.ModeCharDevice != 0 {
		return 0, fmt.Errorf("%s: symlink to something other than a block device: %w", p, pe.ErrNotFound)
	}
	return kindDevice, nil
}

func (tm *TypeManager) livePath(name string) string { return filepath.Join(tm.root, name) }

// snapshotsOf is the directory holding the snapshots of one PE.
func (tm *TypeManager) snapshotsOf(name string) string { return tm.snaps.Of(name) }

// snapshotPath is the directory of one snapshot.
func (tm *TypeManager) snapshotPath(name, snap string) string { return tm.snaps.Path(name, snap) }
