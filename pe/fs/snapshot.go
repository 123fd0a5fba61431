package fs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"golang.org/x/sys/unix"
)

// Files of a snapshot directory.
const (
	treeDir  = "tree"
	infoFile = "info.json"
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
	now := time.Now()
	snap := pe.NewSnapshotName(now)
	dir := tm.snapshotsOf(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, ".tmp-"+snap)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", err
	}
	info, err := buildSnapshot(ctx, tm.livePath(name), tmp)
	if err == nil {
		info.Created = now
		err = writeJSONFile(filepath.Join(tmp, infoFile), info)
	}
	if err == nil {
		// One syncfs instead of an fsync per file: the rename must not
		// reach the disk before the tree does.
		err = syncFS(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, snap))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return snap, nil
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

// listSnapshots returns the snapshot names of PE name, oldest first. A PE
// without snapshots, or one that does not exist, has an empty list.
func (tm *TypeManager) listSnapshots(name string) ([]string, error) {
	if !validName(name) {
		return nil, nil
	}
	entries, err := os.ReadDir(tm.snapshotsOf(name))
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type snapTime struct {
		name    string
		created time.Time
	}
	var snaps []snapTime
	for _, e := range entries {
		if !e.IsDir() || !validSnapName(e.Name()) {
			continue
		}
		si, err := tm.readSnapshotInfo(name, e.Name())
		if errors.Is(err, pe.ErrNotFound) {
			continue // being deleted, or not ours
		}
		if err != nil {
			return nil, err
		}
		snaps = append(snaps, snapTime{e.Name(), si.Created})
	}
	// Names sort by creation time to the millisecond; the recorded time
	// orders snapshots taken within the same millisecond.
	sort.Slice(snaps, func(i, j int) bool {
		if !snaps[i].created.Equal(snaps[j].created) {
			return snaps[i].created.Before(snaps[j].created)
		}
		return snaps[i].name < snaps[j].name
	})
	out := make([]string, len(snaps))
	for i, s := range snaps {
		out[i] = s.name
	}
	return out, nil
}

// readSnapshotInfo reads info.json of a snapshot; ErrNotFound (wrapped) if
// the snapshot does not exist.
func (tm *TypeManager) readSnapshotInfo(name, snap string) (snapshotInfo, error) {
	if !validName(name) || !validSnapName(snap) {
		return snapshotInfo{}, fmt.Errorf("snapshot %q of %q: %w", snap, name, pe.ErrNotFound)
	}
	p := filepath.Join(tm.snapshotPath(name, snap), infoFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, iofs.ErrNotExist) {
		return snapshotInfo{}, fmt.Errorf("snapshot %s: %w", snap, pe.ErrNotFound)
	}
	if err != nil {
		return snapshotInfo{}, err
	}
	var si snapshotInfo
	if err := json.Unmarshal(b, &si); err != nil {
		return snapshotInfo{}, fmt.Errorf("%s: %w", p, err)
	}
	return si, nil
}

// deleteSnapshot removes a snapshot. It renames it to a hidden name first
// so that a snapshot is either listed whole or not at all.
func (tm *TypeManager) deleteSnapshot(name, snap string) error {
	if _, err := tm.readSnapshotInfo(name, snap); err != nil {
		return err
	}
	dir := tm.snapshotsOf(name)
	doomed := filepath.Join(dir, ".del-"+snap)
	if err := os.Rename(filepath.Join(dir, snap), doomed); err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return fmt.Errorf("snapshot %s: %w", snap, pe.ErrNotFound)
		}
		return err
	}
	return os.RemoveAll(doomed)
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
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

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
