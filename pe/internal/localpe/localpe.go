// Package localpe is what the PE types whose PEs are the entries of one
// local directory (fs: subdirectories, disk: image files) have in common:
// the root and its listing, the PE methods that only look at names and
// snapshots, and Copy's three modes with their errors. Each type supplies
// what is its own through a Backend.
//
// Both types so return the same sentinel errors, in messages of the same
// shape, for the same situation:
//
//	no such PE or snapshot, a name that is no entry   pe.ErrNotFound
//	the target of a create exists                     pe.ErrExists
//	a snapshot of a snapshot, overwriting a snapshot,
//	a bad copy mode, a target name that cannot be     pe.ErrNotSupported
//	the source's data cannot be opened                pe.ErrInvalidSource
package localpe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// maxNameTries bounds the attempts of CreateNew to find an unused name;
// with 32 random bits a second attempt is already rare.
const maxNameTries = 10

// Root is the directory whose visible entries are the PEs of one type;
// their snapshots are kept in it too (package snapdir).
type Root struct {
	typ   string
	dir   string // absolute
	snaps snapdir.Store
}

// NewRoot returns the root dir of the PEs of type typ; dir must be an
// existing directory.
func NewRoot(typ, dir string) (*Root, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("%s root %q: %w", typ, dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("%s root: %w", typ, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s root %s: not a directory", typ, abs)
	}
	return &Root{typ: typ, dir: abs, snaps: snapdir.New(abs)}, nil
}

// Type is the PE type name.
func (r *Root) Type() string { return r.typ }

// Dir is the absolute path of the root.
func (r *Root) Dir() string { return r.dir }

// Path is the entry of the live PE name.
func (r *Root) Path(name string) string { return filepath.Join(r.dir, name) }

// Snapshots is the store of the PEs' snapshots.
func (r *Root) Snapshots() snapdir.Store { return r.snaps }

// Sync makes the creation, rename or removal of an entry durable.
func (r *Root) Sync() error { return snapdir.SyncDir(r.dir) }

// Snapshot is what Backend.SnapshotInfo tells of a snapshot.
type Snapshot struct {
	Created time.Time
	Size    int64 // of the snapshot's data
}

// Backend is what one PE type knows of its entries. Names given to it are
// valid (pe.IsLocalName); every method that is given a live PE's name
// returns an error matching pe.ErrNotFound when there is none, as is one
// given a snapshot that does not exist.
type Backend interface {
	// Live checks that name is a live PE of this type.
	Live(name string) error
	// NewName derives a fresh valid name from base, a source's name that
	// may be of another type and invalid here.
	NewName(base string) string
	// TakeSnapshot snapshots the live PE name and returns the snapshot's
	// name (see snapdir.Store.Take).
	TakeSnapshot(ctx context.Context, name string) (string, error)
	// SnapshotInfo reads what was recorded when the snapshot was taken.
	SnapshotInfo(name, snap string) (Snapshot, error)
	// OpenLive and OpenSnapshot open the data of a live PE or a snapshot.
	OpenLive(ctx context.Context, name string) (pe.Image, error)
	OpenSnapshot(ctx context.Context, name, snap string) (pe.Image, error)
	// WriteTemp writes img, the data of src, to a new hidden entry of the
	// root and returns its path; on failure it leaves nothing.
	WriteTemp(ctx context.Context, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) (string, error)
	// Update replaces the data of the live PE name with img, the data of
	// src, so that the PE is never missing nor half written.
	Update(ctx context.Context, name string, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) error
	// Entity is the PE e as the type hands it out: e itself, or e
	// embedded in a type that offers more (pe.Remover, say).
	Entity(e *Entity) pe.ProtectedEntity
}

// Manager implements pe.TypeManager over a Root and a Backend.
type Manager struct {
	root *Root
	b    Backend
}

var _ pe.TypeManager = (*Manager)(nil)

// NewManager returns the manager of the PEs in root.
func NewManager(root *Root, b Backend) *Manager { return &Manager{root: root, b: b} }

// Type implements pe.TypeManager.
func (m *Manager) Type() string { return m.root.typ }

// Root is the directory holding the PEs.
func (m *Manager) Root() string { return m.root.dir }

// List implements pe.TypeManager: the IDs of all live PEs, sorted by name.
func (m *Manager) List(ctx context.Context) ([]pe.ID, error) {
	entries, err := os.ReadDir(m.root.dir)
	if err != nil {
		return nil, fmt.Errorf("list %s PEs: %w", m.root.typ, err)
	}
	var ids []pe.ID
	for _, e := range entries {
		// An entry that is not the type's, or vanished since ReadDir,
		// is no PE.
		if !pe.IsLocalName(e.Name()) || m.b.Live(e.Name()) != nil {
			continue
		}
		id, err := pe.NewID(m.root.typ, e.Name())
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].Name() < ids[j].Name() })
	return ids, nil
}

// Get implements pe.TypeManager. A live PE must exist; a snapshot must
// exist, but its live PE need not: restoring what was deleted from its
// snapshot is what snapshots are for.
func (m *Manager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.Type() != m.root.typ {
		return nil, fmt.Errorf("get %s: type %q is not %q: %w", id, id.Type(), m.root.typ, pe.ErrNotFound)
	}
	if !pe.IsLocalName(id.Name()) {
		return nil, fmt.Errorf("get %s: not an entry of the root: %w", id, pe.ErrNotFound)
	}
	var err error
	if id.HasSnapshot() {
		_, err = m.b.SnapshotInfo(id.Name(), id.Snapshot())
	} else {
		err = m.b.Live(id.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", id, err)
	}
	return m.entity(id), nil
}

func (m *Manager) entity(id pe.ID) pe.ProtectedEntity {
	return m.b.Entity(&Entity{m: m, id: id})
}

// Copy implements pe.TypeManager: it writes src's data as a PE of the root.
//
//   - pe.CreateNew: a new entry named by Backend.NewName after the source;
//   - pe.Create: the entry opts.TargetName(src.ID()), which must not exist
//     (pe.ErrExists);
//   - pe.Update: replaces the data of that existing PE (pe.ErrNotFound if
//     there is none), see Backend.Update.
//
// A new PE is written to a hidden temporary entry first and put in place
// only when complete, so that a failed, rejected or cancelled copy changes
// nothing.
func (m *Manager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	var (
		name string
		err  error
	)
	switch opts.Mode {
	case pe.CreateNew:
		name, err = m.create(ctx, src, "", opts)
	case pe.Create:
		name = opts.TargetName(src.ID())
		if !pe.IsLocalName(name) {
			return nil, fmt.Errorf("copy %s to %s:%s: not an entry of the root (a name without \"/\", not hidden): %w", src.ID(), m.root.typ, name, pe.ErrNotSupported)
		}
		name, err = m.create(ctx, src, name, opts)
	case pe.Update:
		name = opts.TargetName(src.ID())
		if !pe.IsLocalName(name) {
			return nil, fmt.Errorf("copy %s to %s:%s: %w", src.ID(), m.root.typ, name, pe.ErrNotFound)
		}
		err = m.update(ctx, name, src, opts)
	default:
		return nil, fmt.Errorf("copy %s: copy mode %v: %w", src.ID(), opts.Mode, pe.ErrNotSupported)
	}
	if err != nil {
		return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
	}
	id, err := pe.NewID(m.root.typ, name)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", src.ID(), err)
	}
	return m.entity(id), nil
}

// create writes src to the new entry target and returns its name, or to
// one with a fresh name when target is "".
func (m *Manager) create(ctx context.Context, src pe.ProtectedEntity, target string, opts pe.CopyOptions) (string, error) {
	if target != "" {
		// Fail before writing gigabytes; placeNew catches a race.
		if _, err := os.Lstat(m.root.Path(target)); err == nil {
			return "", m.exists(target)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	img, err := SourceData(ctx, src)
	if err != nil {
		return "", err
	}
	defer img.Close()
	tmp, err := m.b.WriteTemp(ctx, src, img, opts)
	if err != nil {
		return "", err
	}
	name, err := m.place(tmp, src, target)
	if err != nil {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			err = fmt.Errorf("%w (and removing %s failed: %v)", err, tmp, rerr)
		}
		return "", err
	}
	return name, m.root.Sync()
}

// place puts the finished entry tmp in place as target, or under a fresh
// name derived from src's when target is "".
func (m *Manager) place(tmp string, src pe.ProtectedEntity, target string) (string, error) {
	for range maxNameTries {
		name := target
		if target == "" {
			name = m.b.NewName(src.ID().Name())
		}
		err := placeNew(tmp, m.root.Path(name))
		switch {
		case err == nil:
			return name, nil
		case !errors.Is(err, fs.ErrExist):
			return "", err
		case target != "":
			return "", m.exists(name)
		}
	}
	return "", fmt.Errorf("no unused name for a copy of %s after %d tries", src.ID(), maxNameTries)
}

func (m *Manager) exists(name string) error {
	return fmt.Errorf("%s:%s: %w", m.root.typ, name, pe.ErrExists)
}

// update replaces the data of the live PE name with src's.
func (m *Manager) update(ctx context.Context, name string, src pe.ProtectedEntity, opts pe.CopyOptions) error {
	// Fail before reading the source.
	if err := m.b.Live(name); err != nil {
		return err
	}
	img, err := SourceData(ctx, src)
	if err != nil {
		return err
	}
	defer img.Close()
	return m.b.Update(ctx, name, src, img, opts)
}

// SourceData opens src's data for a copy; a source without data is an
// invalid source.
func SourceData(ctx context.Context, src pe.ProtectedEntity) (pe.Image, error) {
	img, err := src.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	return img, nil
}

// placeNew renames the entry from to the name to, which must not exist: an
// error matching fs.ErrExist if it does. A plain rename would replace a
// file, or an empty directory, made there meanwhile.
func placeNew(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return placeNewWithoutRenameat2(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// placeNewWithoutRenameat2 is placeNew on filesystems without
// RENAME_NOREPLACE: a file is linked, which never replaces anything, and
// then unlinked from its old name; a directory cannot be linked, so it is
// checked for, then renamed: racy, but rare.
func placeNewWithoutRenameat2(from, to string) error {
	fi, err := os.Lstat(from)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		if err := os.Link(from, to); err != nil {
			return err
		}
		return os.Remove(from)
	}
	if _, err := os.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
	}
	return os.Rename(from, to)
}

// Entity is one PE of a root, or one of its snapshots when its ID has a
// snapshot part. It implements pe.ProtectedEntity; a PE has no components
// and no metadata: all of it is in its data.
type Entity struct {
	m  *Manager
	id pe.ID
}

var _ pe.ProtectedEntity = (*Entity)(nil)

// ID implements pe.ProtectedEntity.
func (e *Entity) ID() pe.ID { return e.id }

// Info implements pe.ProtectedEntity. The size of a live PE is that of
// its data as it is now, which for a tree means walking it.
func (e *Entity) Info(ctx context.Context) (pe.Info, error) {
	if e.id.HasSnapshot() {
		return e.SnapshotInfo(ctx, e.id.Snapshot())
	}
	img, err := e.m.b.OpenLive(ctx, e.id.Name())
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", e.id, err)
	}
	defer img.Close()
	return pe.Info{ID: e.id, Name: e.id.Name(), Size: img.Size()}, nil
}

// Snapshot implements pe.ProtectedEntity. Params are not used.
func (e *Entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if e.id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself, snapshot %s: %w", e.id, e.id.Base(), pe.ErrNotSupported)
	}
	snap, err := e.m.b.TakeSnapshot(ctx, e.id.Name())
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	return e.id.WithSnapshot(snap), nil
}

// ListSnapshots implements pe.ProtectedEntity; on a snapshot it lists the
// snapshots of its PE.
func (e *Entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return e.m.root.snaps.IDs(e.id)
}

// DeleteSnapshot implements pe.ProtectedEntity.
func (e *Entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	if err := e.m.root.snaps.Delete(e.id.Name(), snapshot); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", e.id.WithSnapshot(snapshot), err)
	}
	return nil
}

// SnapshotInfo implements pe.ProtectedEntity: the size is that recorded
// when the snapshot was taken.
func (e *Entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	id := e.id.WithSnapshot(snapshot)
	si, err := e.m.b.SnapshotInfo(e.id.Name(), snapshot)
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", id, err)
	}
	created := si.Created
	return pe.Info{ID: id, Name: e.id.Name(), Size: si.Size, Created: &created}, nil
}

// Components implements pe.ProtectedEntity: there are none.
func (e *Entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	return nil, nil
}

// Data implements pe.ProtectedEntity.
func (e *Entity) Data(ctx context.Context) (pe.Image, error) {
	var (
		img pe.Image
		err error
	)
	if e.id.HasSnapshot() {
		img, err = e.m.b.OpenSnapshot(ctx, e.id.Name(), e.id.Snapshot())
	} else {
		img, err = e.m.b.OpenLive(ctx, e.id.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return img, nil
}

// Metadata implements pe.ProtectedEntity: there is none.
func (e *Entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, fmt.Errorf("metadata of %s: %w", e.id, pe.ErrNoMetadata)
}

// Overwrite implements pe.ProtectedEntity: it replaces the live PE's data
// with src's, as Copy with pe.Update does. There are no components, so
// withComponents changes nothing.
func (e *Entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	if err := e.RequireLive("overwrite"); err != nil {
		return err
	}
	if err := e.m.update(ctx, e.id.Name(), src, pe.CopyOptions{Mode: pe.Update}); err != nil {
		return fmt.Errorf("overwrite %s from %s: %w", e.id, src.ID(), err)
	}
	return nil
}

// RequireLive refuses op on a snapshot: snapshots are read-only. Types
// call it too in what they offer besides pe.ProtectedEntity, so that all
// refuse alike.
func (e *Entity) RequireLive(op string) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("%s %s: snapshots are read-only: %w", op, e.id, pe.ErrNotSupported)
	}
	return nil
}
