package fs

import (
	"context"
	"path/filepath"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/localpe"
)

// Files of a snapshot directory.
const (
	treeDir = "tree"
)

// maxSkippedNames bounds the files left out that info.json names; the count is
// always exact.
const maxSkippedNames = 100

// snapshotInfo is the info.json of a snapshot.
type snapshotInfo struct {
	Created time.Time `json:"created"`
	// ImageSize is the size of the tar image of the tree, so that Info
	// need not walk it.
	ImageSize int64 `json:"imageSize"`
	Files     int64 `json:"files"` // regular files, hard links counted once
	Bytes     int64 `json:"bytes"` // their sizes
	// Reflinked and Copied count how regular files were copied.
	Reflinked int64 `json:"reflinked"`
	Copied    int64 `json:"copied"`
	// Skipped names the sockets left out: a socket is the endpoint of a
	// running process, not data.
	Skipped      []string `json:"skipped,omitempty"`
	SkippedCount int64    `json:"skippedCount,omitempty"`
}

// TakeSnapshot implements localpe.Backend: it copies the live tree name
// into a new snapshot.
//
// Files are reflinked or copied one by one while the tree may be written
// to: like any snapshot without help from the writer, it is crash
// consistent per file at best. Once taken it never changes.
func (t *trees) TakeSnapshot(ctx context.Context, name string) (string, error) {
	if err := t.CheckLive(name); err != nil {
		return "", err
	}
	return t.Snapshots().Take(ctx, name, func(ctx context.Context, dir string, now time.Time) (any, error) {
		info, err := buildSnapshot(ctx, t.Path(name), dir)
		if err != nil {
			return nil, err
		}
		info.Created = now
		// One syncfs instead of an fsync per file: the rename must not
		// reach the disk before the tree does.
		return info, atomicfile.SyncFS(dir)
	})
}

// buildSnapshot copies the tree src to dir/tree and describes it.
func buildSnapshot(ctx context.Context, src, dir string) (snapshotInfo, error) {
	c := newTreeCopier(ctx)
	tree := filepath.Join(dir, treeDir)
	if err := c.copyTree(src, tree); err != nil {
		return snapshotInfo{}, err
	}
	lay, err := layoutTree(ctx, tree)
	if err != nil {
		return snapshotInfo{}, err
	}
	lay.close()
	return snapshotInfo{
		ImageSize:    lay.size,
		Files:        c.files,
		Bytes:        c.bytes,
		Reflinked:    c.reflinked,
		Copied:       c.copied,
		Skipped:      c.sockets.names,
		SkippedCount: c.sockets.count,
	}, nil
}

// readSnapshotInfo reads info.json of a snapshot; ErrNotFound (wrapped) if
// the snapshot does not exist.
func (t *trees) readSnapshotInfo(name, snap string) (snapshotInfo, error) {
	var si snapshotInfo
	err := t.Snapshots().ReadInfo(name, snap, &si)
	return si, err
}

// SnapshotInfo implements localpe.Backend.
func (t *trees) SnapshotInfo(name, snap string) (localpe.Snapshot, error) {
	si, err := t.readSnapshotInfo(name, snap)
	return localpe.Snapshot{Created: si.Created, Size: si.ImageSize}, err
}
