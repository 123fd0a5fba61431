package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// chunkRef places one chunk of a stream: bytes [Off, Off+Len) of the
// stream are the chunk ID, stored at [POff, POff+PLen) of pack Pack.
type chunkRef struct {
	Off  int64  `json:"o"`
	Len  int64  `json:"l"`
	ID   string `json:"id"`
	Pack string `json:"p"`
	POff int64  `json:"po"`
	PLen int64  `json:"pl"`
}

// stream is a chunked byte stream: a data image or a metadata stream.
// Ranges no chunk covers read as zeros (holes of a disk image).
type stream struct {
	Size   int64      `json:"size"`
	Chunks []chunkRef `json:"chunks"` // sorted by Off, not overlapping
}

// Chunking of a stream.
const (
	chunkingFixed = "fixed" // aligned chunks of config.ChunkSize: disk images
	chunkingCDC   = "cdc"   // content-defined: tar streams
)

// snapshotIndex is what a repository snapshot holds besides its info.
type snapshotIndex struct {
	ID         string        `json:"id"`
	Chunking   string        `json:"chunking"`
	Data       *stream       `json:"data,omitempty"`
	Metadata   *stream       `json:"metadata,omitempty"`
	TOC        []pe.TOCEntry `json:"toc,omitempty"`
	Components []string      `json:"components,omitempty"`
	BackedUp   time.Time     `json:"backedUp"`
}

// snapshotInfo is the commit object: the PE info of the snapshot.
type snapshotInfo struct {
	Info     pe.Info   `json:"info"`
	BackedUp time.Time `json:"backedUp"`
	// Index is the SHA-256 of the stored index object: the info commits
	// to its index, which cannot be swapped for another. Empty in
	// snapshots written before format 2.
	Index string `json:"index,omitempty"`

	// legacy is set on reading a snapshot written before format 2: its
	// objects are not sealed with its ID (only the IDs written inside
	// them say whose they are).
	legacy bool
}

// Since format 2 a snapshot's info and index are sealed with the
// snapshot's ID as additional data: moved, renamed or copied under
// another ID, they no longer open. Unencrypted repositories have no key
// to seal with; there the IDs written inside the objects and the index
// hash in the info catch a moved snapshot, though not a forged one.
func snapshotAAD(id pe.ID, obj string) []byte {
	return []byte("astrolabe snapshot " + obj + "\x00" + id.String())
}

// errMisplaced marks a snapshot whose objects are not its own.
var errMisplaced = errors.New("moved, renamed or swapped from another snapshot")

// snapshotDir is the directory of a snapshot's objects; PE IDs may hold
// '/', which object names must not split on.
func snapshotDir(id pe.ID) string { return "snapshots/" + url.PathEscape(id.String()) }

func snapshotIDFromDir(name string) (pe.ID, error) {
	s, err := url.PathUnescape(name)
	if err != nil {
		return pe.ID{}, err
	}
	return pe.ParseID(s)
}

// Snapshot is one committed snapshot of the repository.
type Snapshot struct {
	ID       pe.ID
	Info     pe.Info
	BackedUp time.Time
}

// Snapshots lists the committed snapshots, of one PE if filter is not
// zero (its snapshots, or just the one it names), oldest first. A
// snapshot whose info does not open as its own (damaged, or moved from
// another ID) is left out with a warning; check reports it.
func (r *Repository) Snapshots(ctx context.Context, filter pe.ID) ([]Snapshot, error) {
	ids, err := r.committedIDs(ctx, filter)
	if err != nil {
		return nil, err
	}
	out := make([]Snapshot, 0, len(ids))
	for _, id := range ids {
		si, err := r.loadInfo(ctx, id)
		switch {
		case errors.Is(err, pe.ErrNotFound):
			continue // forgotten meanwhile
		case errors.Is(err, errBadObject):
			r.log.Warn("repository: snapshot left out (run 'astrolabe repo check')", "snapshot", id, "err", err)
			continue
		case err != nil:
			return nil, err
		}
		out = append(out, Snapshot{ID: id, Info: si.Info, BackedUp: si.BackedUp})
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].BackedUp.Equal(out[j].BackedUp) {
			return out[i].BackedUp.Before(out[j].BackedUp)
		}
		return out[i].ID.String() < out[j].ID.String()
	})
	return out, nil
}

// SnapshotIDs lists the IDs of the committed snapshots as Snapshots
// does: of one PE if filter is not zero, oldest first.
func (r *Repository) SnapshotIDs(ctx context.Context, filter pe.ID) ([]pe.ID, error) {
	snaps, err := r.Snapshots(ctx, filter)
	if err != nil {
		return nil, err
	}
	ids := make([]pe.ID, len(snaps))
	for i, s := range snaps {
		ids[i] = s.ID
	}
	return ids, nil
}

// committedIDs lists the IDs of the snapshot directories that have an
// info object, as their names say.
func (r *Repository) committedIDs(ctx context.Context, filter pe.ID) ([]pe.ID, error) {
	var ids []pe.ID
	err := r.be.List(ctx, "snapshots/", func(name string, _ int64) error {
		dir, obj, ok := strings.Cut(strings.TrimPrefix(name, "snapshots/"), "/")
		if !ok || obj != "info" {
			return nil
		}
		id, err := snapshotIDFromDir(dir)
		if err != nil {
			r.log.Warn("repository: ignoring a snapshot with a bad name", "object", name)
			return nil
		}
		if !filter.IsZero() && id.Base() != filter.Base() {
			return nil
		}
		if filter.HasSnapshot() && id != filter {
			return nil
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	return ids, nil
}

// errBadObject marks an object that is there but does not open as what
// its name says: damaged, or moved from elsewhere. Errors of the backend
// itself are not.
var errBadObject = errors.New("bad object")

type badObjectError struct{ err error }

func (e badObjectError) Error() string        { return e.err.Error() }
func (e badObjectError) Unwrap() []error      { return []error{e.err, errBadObject} }
func badObject(format string, a ...any) error { return badObjectError{fmt.Errorf(format, a...)} }

// loadSnapshotObject reads a snapshot's info or index into v. It returns
// the stored bytes, and whether the object was sealed without the
// snapshot's ID (written before format 2).
func (r *Repository) loadSnapshotObject(ctx context.Context, id pe.ID, obj string, v any) ([]byte, bool, error) {
	b, err := backend.ReadAll(ctx, r.be, snapshotDir(id)+"/"+obj)
	if errors.Is(err, backend.ErrNotExist) {
		return nil, false, fmt.Errorf("repository snapshot %s: %w", id, pe.ErrNotFound)
	}
	if err != nil {
		return nil, false, fmt.Errorf("repository snapshot %s: %w", id, err)
	}
	err = r.openJSON(b, v, snapshotAAD(id, obj))
	if err == nil {
		return b, false, nil
	}
	if r.key != nil && r.openJSON(b, v, nil) == nil {
		return b, true, nil
	}
	if r.key != nil && errors.Is(err, errAuth) {
		return nil, false, badObject("repository snapshot %s: its %s does not open as this snapshot's: damaged, or %w", id, obj, errMisplaced)
	}
	return nil, false, badObject("repository snapshot %s: %s is damaged: %w", id, obj, err)
}

// loadInfo reads a snapshot's info and checks that it is that snapshot's.
func (r *Repository) loadInfo(ctx context.Context, id pe.ID) (*snapshotInfo, error) {
	var si snapshotInfo
	_, legacy, err := r.loadSnapshotObject(ctx, id, "info", &si)
	if err != nil {
		return nil, err
	}
	// The ID inside is what binds an unencrypted or old snapshot; it must
	// be there: other objects sealed without an ID (index files, locks)
	// open as an info too, with none.
	if si.Info.ID != id {
		return nil, badObject("repository snapshot %s: its info is that of %q: %w", id, si.Info.ID, errMisplaced)
	}
	si.legacy = legacy || si.Index == ""
	return &si, nil
}

// loadSnapshot reads a committed snapshot's info and index, and checks
// that both are that snapshot's and belong together.
func (r *Repository) loadSnapshot(ctx context.Context, id pe.ID) (*snapshotIndex, *snapshotInfo, error) {
	si, err := r.loadInfo(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	var idx snapshotIndex
	stored, legacy, err := r.loadSnapshotObject(ctx, id, "index", &idx)
	if errors.Is(err, pe.ErrNotFound) {
		return nil, nil, badObject("repository snapshot %s: its index is missing", id)
	}
	if err != nil {
		return nil, nil, err
	}
	if idx.ID != id.String() {
		return nil, nil, badObject("repository snapshot %s: its index is that of %s: %w", id, idx.ID, errMisplaced)
	}
	if err := idx.valid(); err != nil {
		return nil, nil, badObject("repository snapshot %s: its index is damaged: %w", id, err)
	}
	if si.Index != "" && objectHash(stored) != si.Index {
		return nil, nil, badObject("repository snapshot %s: its index is not the one its info was written with: damaged, or %w", id, errMisplaced)
	}
	si.legacy = si.legacy || legacy
	return &idx, si, nil
}

// maxChunk bounds the bytes of a chunk, stored or not, that an index may
// claim (chunks are at most cdcMax; disk chunks the config's ChunkSize).
const maxChunk = 64 << 20

// valid checks what reading the snapshot relies on: chunk and pack IDs
// and positions, chunks in order within the stream.
func (idx *snapshotIndex) valid() error {
	for _, st := range []*stream{idx.Data, idx.Metadata} {
		if st == nil {
			continue
		}
		var end int64
		for _, c := range st.Chunks {
			if !validID(c.ID) || !validID(c.Pack) {
				return fmt.Errorf("bad chunk or pack ID %q, %q", c.ID, c.Pack)
			}
			if c.Off < end || c.Len <= 0 || c.Len > maxChunk || c.Off+c.Len > st.Size || c.POff < 0 || c.PLen <= 0 || c.PLen > maxChunk {
				return fmt.Errorf("chunk %.16s at %d+%d: out of place", c.ID, c.Off, c.Len)
			}
			end = c.Off + c.Len
		}
	}
	return nil
}

// saveSnapshot writes a snapshot's index, then its info (the commit),
// each sealed with the snapshot's ID, the info holding the index's hash.
func (r *Repository) saveSnapshot(ctx context.Context, id pe.ID, idx *snapshotIndex, si snapshotInfo) error {
	b, err := r.sealJSON(idx, snapshotAAD(id, "index"))
	if err != nil {
		return err
	}
	if err := r.be.Save(ctx, snapshotDir(id)+"/index", bytes.NewReader(b), int64(len(b))); err != nil {
		return err
	}
	si.Index = objectHash(b)
	if b, err = r.sealJSON(si, snapshotAAD(id, "info")); err != nil {
		return err
	}
	return r.be.Save(ctx, snapshotDir(id)+"/info", bytes.NewReader(b), int64(len(b)))
}

func objectHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Forget removes a snapshot: its info first, so that it is no longer
// committed even if removing its index fails. The chunks stay until prune.
func (r *Repository) Forget(ctx context.Context, id pe.ID) error {
	if _, err := r.be.Stat(ctx, snapshotDir(id)+"/info"); errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("repository snapshot %s: %w", id, pe.ErrNotFound)
	}
	if err := r.be.Remove(ctx, snapshotDir(id)+"/info"); err != nil {
		return fmt.Errorf("forget %s: %w", id, err)
	}
	if err := r.be.Remove(ctx, snapshotDir(id)+"/index"); err != nil {
		return fmt.Errorf("forget %s: %w", id, err)
	}
	return nil
}
