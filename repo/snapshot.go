package repo

import (
	"context"
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
}

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
// zero (its snapshots, or just the one it names), oldest first.
func (r *Repository) Snapshots(ctx context.Context, filter pe.ID) ([]Snapshot, error) {
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
	out := make([]Snapshot, 0, len(ids))
	for _, id := range ids {
		var si snapshotInfo
		if err := r.loadJSON(ctx, snapshotDir(id)+"/info", &si); err != nil {
			if errors.Is(err, backend.ErrNotExist) {
				continue // forgotten meanwhile
			}
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
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

// loadSnapshot reads a committed snapshot's index.
func (r *Repository) loadSnapshot(ctx context.Context, id pe.ID) (*snapshotIndex, *snapshotInfo, error) {
	var si snapshotInfo
	if err := r.loadJSON(ctx, snapshotDir(id)+"/info", &si); err != nil {
		if errors.Is(err, backend.ErrNotExist) {
			return nil, nil, fmt.Errorf("repository snapshot %s: %w", id, pe.ErrNotFound)
		}
		return nil, nil, fmt.Errorf("repository snapshot %s: %w", id, err)
	}
	var idx snapshotIndex
	if err := r.loadJSON(ctx, snapshotDir(id)+"/index", &idx); err != nil {
		return nil, nil, fmt.Errorf("repository snapshot %s: %w", id, err)
	}
	return &idx, &si, nil
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
