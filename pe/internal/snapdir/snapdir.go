// Package snapdir keeps the snapshots of PEs that live in a local root
// directory (fs, disk) as directories:
//
//	root/.snapshots/<name>/<snapshot>/info.json   and whatever the type stores
//
// A snapshot is built in .tmp-<snapshot> and renamed into place when
// complete; it is deleted by renaming it to .del-<snapshot> first. So a
// snapshot directory under its own name is always whole.
package snapdir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Dir is the directory, inside a type's root, that holds all snapshots. It
// is hidden so that it is never taken for a PE.
const Dir = ".snapshots"

// InfoFile is the snapshot's description, written last.
const InfoFile = "info.json"

// Store is the snapshot store of one root.
type Store struct{ root string }

// New returns the store of root.
func New(root string) Store { return Store{root: root} }

// Of is the directory holding the snapshots of PE name.
func (s Store) Of(name string) string { return filepath.Join(s.root, Dir, name) }

// Path is the directory of one snapshot.
func (s Store) Path(name, snap string) string { return filepath.Join(s.Of(name), snap) }

// Take makes a snapshot of PE name. build fills dir, a new empty
// directory, makes what it wrote durable, and returns the info to record;
// the snapshot appears under its name only when all is there.
func (s Store) Take(ctx context.Context, name string, build func(ctx context.Context, dir string, now time.Time) (info any, err error)) (string, error) {
	now := time.Now()
	snap := pe.NewSnapshotName(now)
	dir := s.Of(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, ".tmp-"+snap)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", err
	}
	info, err := build(ctx, tmp, now)
	if err == nil {
		err = WriteJSON(filepath.Join(tmp, InfoFile), info)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, snap))
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return snap, nil
}

// List returns the snapshot names of PE name, oldest first. Only whole
// snapshots (with their info.json) count; a PE without snapshots, or one
// that does not exist, has none.
func (s Store) List(name string) ([]string, error) {
	if !pe.IsLocalName(name) {
		return nil, nil
	}
	entries, err := os.ReadDir(s.Of(name))
	if errors.Is(err, fs.ErrNotExist) {
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
		if !e.IsDir() || !pe.IsLocalName(e.Name()) {
			continue
		}
		var info struct {
			Created time.Time `json:"created"`
		}
		err := s.ReadInfo(name, e.Name(), &info)
		if errors.Is(err, pe.ErrNotFound) {
			continue // being deleted, or not ours
		}
		if err != nil {
			return nil, err
		}
		snaps = append(snaps, snapTime{e.Name(), info.Created})
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
	for i, sn := range snaps {
		out[i] = sn.name
	}
	return out, nil
}

// IDs lists the snapshots of the PE id as IDs.
func (s Store) IDs(id pe.ID) ([]pe.ID, error) {
	snaps, err := s.List(id.Name())
	if err != nil {
		return nil, fmt.Errorf("list snapshots of %s: %w", id.Base(), err)
	}
	ids := make([]pe.ID, len(snaps))
	for i, sn := range snaps {
		ids[i] = id.WithSnapshot(sn)
	}
	return ids, nil
}

// ReadInfo reads a snapshot's info.json into v; ErrNotFound (wrapped) if
// the snapshot does not exist.
func (s Store) ReadInfo(name, snap string, v any) error {
	if !pe.IsLocalName(name) || !pe.IsLocalName(snap) {
		return fmt.Errorf("snapshot %q: %w", snap, pe.ErrNotFound)
	}
	b, err := os.ReadFile(filepath.Join(s.Path(name, snap), InfoFile))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("snapshot %q: %w", snap, pe.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("snapshot %q: %s: %w", snap, InfoFile, err)
	}
	return nil
}

// Delete removes one snapshot, out of sight first so that a delete cut
// short leaves no half snapshot visible.
func (s Store) Delete(name, snap string) error {
	var probe json.RawMessage
	if err := s.ReadInfo(name, snap, &probe); err != nil {
		return err
	}
	trash := filepath.Join(s.Of(name), ".del-"+snap)
	if err := os.Rename(s.Path(name, snap), trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) { // deleted by someone else meanwhile
			return fmt.Errorf("snapshot %q: %w", snap, pe.ErrNotFound)
		}
		return err
	}
	return os.RemoveAll(trash)
}

// WriteJSON writes v to a new file at path and syncs it.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir makes a rename in dir durable.
func SyncDir(dir string) error { return atomicfile.SyncDir(dir) }
