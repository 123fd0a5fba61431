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
//
// A copy to disk (TypeManager.Copy) writes the source's data as an image:
// with pe.CreateNew one named after the source with a random suffix
// before the extension (vm1.img → vm1-1a2b3c4d.img). New and replaced
// files are written to a hidden temporary file first; holes and all-zero
// blocks of the source stay holes. What is written is bounded (package
// budget): by the free space of the root's filesystem, and for untrusted
// sources by opts.ExpansionLimit; a bound that is hit fails the copy with
// pe.ErrLimit and removes the temporary file. A block device is written
// in place, within its size, and not bounded.
package disk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/localpe"
)

// Type is the PE type name.
const Type = "disk"

// TypeManager knows the disk PEs under one root directory. What fs and
// disk PEs have in common is package localpe's; disks is what is disk's
// own.
type TypeManager struct {
	*localpe.Manager
	disks *disks
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the disk PEs in root, which must be
// an existing directory.
func NewTypeManager(root string) (*TypeManager, error) {
	tm := &TypeManager{}
	m, err := localpe.NewManager(Type, root, func(r *localpe.Root) localpe.Backend {
		tm.disks = &disks{Root: r}
		return tm.disks
	})
	if err != nil {
		return nil, err
	}
	tm.Manager = m
	return tm, nil
}

// disks is the localpe.Backend of disk: each PE is an image file or a
// link to a block device.
type disks struct {
	*localpe.Root
}

var (
	_ localpe.Backend        = (*disks)(nil)
	_ localpe.InPlaceUpdater = (*disks)(nil)
)

// sourceKind says how a live PE's bytes are stored.
type sourceKind int

const (
	kindFile   sourceKind = iota + 1 // a regular file, possibly sparse
	kindDevice                       // a symlink to a block device
)

// CheckLive implements localpe.Backend.
func (d *disks) CheckLive(name string) error {
	_, err := d.kindOf(name)
	return err
}

// kindOf classifies the live PE name; ErrNotFound (wrapped) if it is
// missing or not something this type manages: directories, sockets,
// symlinks to files, dangling links are not disks.
func (d *disks) kindOf(name string) (sourceKind, error) {
	p := d.Path(name)
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

// NewName implements localpe.Backend, keeping an extension such as .img
// at the end: <stem>-<8 hex digits><ext>.
func (d *disks) NewName(base string) string { return pe.NewLocalName(base, Type, true) }

// OpenLive implements localpe.Backend. Its image does not implement
// pe.ChangeTracker, as nothing records the writes to a live image.
func (d *disks) OpenLive(ctx context.Context, name string) (pe.Image, error) {
	kind, err := d.kindOf(name)
	if err != nil {
		return nil, err
	}
	return openImage(d.Path(name), kind)
}

// OpenSnapshot implements localpe.Backend; the image of a snapshot also
// implements pe.ChangeTracker.
func (d *disks) OpenSnapshot(ctx context.Context, name, snap string) (pe.Image, error) {
	return d.openSnapshotImage(name, snap)
}
