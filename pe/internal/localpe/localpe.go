// Package localpe is what the PE types whose PEs are the entries of one
// local directory (fs: subdirectories, disk: image files) have in common:
// the root and its listing, the PE methods that only look at names and
// snapshots, and Copy's three modes with their errors. Each type supplies
// what is its own through a Backend.
//
// So both types return the same sentinel errors, in messages of the same
// shape, for the same situation (errors_test.go holds them to it):
//
//	no such PE or snapshot; a name that is no entry    pe.ErrNotFound
//	the target of a create exists                      pe.ErrExists
//	a snapshot of a snapshot; writing to a snapshot;
//	a bad copy mode; a create target that is no entry  pe.ErrNotSupported
//	the source's data cannot be opened                 pe.ErrInvalidSource
//	a copy past its bound (package budget)             pe.ErrLimit
//	metadata (a PE's data is all of it)                pe.ErrNoMetadata
package localpe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

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

// newRoot returns the root dir of the PEs of type typ; dir must be an
// existing directory.
func newRoot(typ, dir string) (*Root, error) {
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
	// CheckLive checks that name is a live PE of this type.
	CheckLive(name string) error
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
	// Replace puts tmp, an entry made by WriteTemp, in the place of the
	// live PE name, so that the PE is never half written: with one
	// rename where the filesystem can, which leaves the old data at tmp
	// or nothing; where it cannot, the PE may be missing for a moment.
	// The Manager removes whatever is left at tmp, whether Replace
	// succeeds or not.
	Replace(name, tmp string) error
	// Wrap is the PE e as the type hands it out: e itself, or e embedded
	// in a type that offers more (pe.Remover, say).
	Wrap(e *Entity) pe.ProtectedEntity
}

// An InPlaceUpdater is a Backend some of whose PEs are updated by writing
// over their data rather than by Replace (a block device, which cannot be
// renamed over).
type InPlaceUpdater interface {
	// UpdateInPlace writes img over the data of the live PE name if that
	// is how it is updated, and reports whether it was.
	UpdateInPlace(ctx context.Context, name string, img pe.Image, opts pe.CopyOptions) (bool, error)
}

// Manager implements pe.TypeManager over a Root and a Backend.
type Manager struct {
	root *Root
	b    Backend
}

var _ pe.TypeManager = (*Manager)(nil)

// NewManager returns the manager of the PEs of type typ in dir, which must
// be an existing directory, and what newBackend makes of their root.
func NewManager(typ, dir string, newBackend func(*Root) Backend) (*Manager, error) {
	r, err := newRoot(typ, dir)
	if err != nil {
		return nil, err
	}
	return &Manager{root: r, b: newBackend(r)}, nil
}

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
		if !pe.IsLocalName(e.Name()) || m.b.CheckLive(e.Name()) != nil {
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
		err = m.b.CheckLive(id.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", id, err)
	}
	return m.entity(id), nil
}

func (m *Manager) entity(id pe.ID) pe.ProtectedEntity {
	return m.b.Wrap(&Entity{m: m, id: id})
}

// Copy implements pe.TypeManager: it writes src's data as a PE of the root.
//
//   - pe.CreateNew: a new entry named by Backend.NewName after the source;
//   - pe.Create: the entry opts.TargetName(src.ID()), which must not exist
//     (pe.ErrExists);
//   - pe.Update: replaces the data of that existing PE (pe.ErrNotFound if
//     there is none), see Backend.Replace and InPlaceUpdater.
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
	img, err := sourceData(ctx, src)
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
		return "", discard(tmp, err)
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

// update replaces the data of the live PE name with src's: in place if
// the backend updates it so, else written to a hidden entry first and put
// in its place when complete (Backend.Replace).
func (m *Manager) update(ctx context.Context, name string, src pe.ProtectedEntity, opts pe.CopyOptions) error {
	// Fail before reading the source.
	if err := m.b.CheckLive(name); err != nil {
		return err
	}
	img, err := sourceData(ctx, src)
	if err != nil {
		return err
	}
	defer img.Close()
	if u, ok := m.b.(InPlaceUpdater); ok {
		if done, err := u.UpdateInPlace(ctx, name, img, opts); done || err != nil {
			if err != nil {
				return err
			}
			// Whole now, whatever an unfinished restore left.
			return m.root.ClearFilling(name)
		}
	}
	tmp, err := m.b.WriteTemp(ctx, src, img, opts)
	if err != nil {
		return err
	}
	if err := m.b.Replace(name, tmp); err != nil {
		return discard(tmp, err)
	}
	err = errors.Join(m.root.Sync(), m.root.ClearFilling(name))
	// tmp now holds the old data, if anything.
	if rerr := os.RemoveAll(tmp); rerr != nil {
		err = errors.Join(err, fmt.Errorf("updated, but removing the old data at %s failed: %w", tmp, rerr))
	}
	return err
}

// discard removes the temporary entry tmp of a copy that failed with err.
func discard(tmp string, err error) error {
	if rerr := os.RemoveAll(tmp); rerr != nil {
		return fmt.Errorf("%w (and removing %s failed: %v)", err, tmp, rerr)
	}
	return err
}

// sourceData opens src's data for a copy; a source without data is an
// invalid source.
func sourceData(ctx context.Context, src pe.ProtectedEntity) (pe.Image, error) {
	img, err := src.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	return img, nil
}
