package fs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Files of a snapshot directory.
const (
	treeDir = "tree"
)

// maxSkippedNames bounds the special files info.json names; the count is
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
	// Skipped names the sockets, fifos and device nodes left out: they
	// hold no data and restore refuses them.
	Skipped      []string `json:"skipped,omitempty"`
	SkippedCount int64    `json:"skippedCount,omitempty"`
}

// takeSnapshot copies the live tree name into a new snapshot and returns
// its snapshot name. It builds the snapshot in a hidden temporary directory
// and renames it into place, so a failed snapshot leaves nothing behind.
//
// Files are reflinked or copied one by one while the tree may be written
// to: like any snapshot without help from the writer, it is crash
// consistent per file at best. Once taken it never changes.
func (tm *TypeManager) takeSnapshot(ctx context.Context, name string) (string, error) {
	if err := tm.checkLive(name); err != nil {
		return "", err
	}
	return tm.snaps.Take(ctx, name, func(ctx context.Context, dir string, now time.Time) (any, error) {
		info, err := buildSnapshot(ctx, tm.livePath(name), dir)
		if err != nil {
			return nil, err
		}
		info.Created = now
		// One syncfs instead of an fsync per file: the rename must not
		// reach the disk before the tree does.
		return info, syncFS(dir)
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
		Skipped:      c.skipped,
		SkippedCount: c.skippedCount,
	}, nil
}

// readSnapshotInfo reads info.json of a snapshot; ErrNotFound (wrapped) if
// the snapshot does not exist.
func (tm *TypeManager) readSnapshotInfo(name, snap string) (snapshotInfo, error) {
	var si snapshotInfo
	err := tm.snaps.ReadInfo(name, snap, &si)
	return si, err
}

// syncFS flushes the filesystem that holds path.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}
