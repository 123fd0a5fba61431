package repo

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Problem is one thing Check found wrong.
type Problem struct {
	Chunk     string   // chunk ID, if the problem is a chunk's
	Pack      string   // pack ID, if known
	Snapshots []string // the snapshots it affects
	Detail    string
}

func (p Problem) String() string {
	s := p.Detail
	if p.Chunk != "" {
		s = fmt.Sprintf("chunk %s (pack %s): %s", p.Chunk, p.Pack, p.Detail)
	}
	if len(p.Snapshots) > 0 {
		s += "; used by " + strings.Join(p.Snapshots, ", ")
	}
	return s
}

// Check verifies that every snapshot's chunks are in packs that exist and
// hold them; with readData it also reads, decrypts, decompresses and
// re-hashes every chunk the snapshots use.
func (r *Repository) Check(ctx context.Context, readData bool, progress pe.Progress) ([]Problem, error) {
	lock, err := r.lock(ctx, false)
	if err != nil {
		return nil, err
	}
	defer lock.release()
	packs := map[string]int64{}
	if err := r.be.List(ctx, "data/", func(name string, size int64) error {
		packs[name[strings.LastIndex(name, "/")+1:]] = size
		return nil
	}); err != nil {
		return nil, err
	}
	snaps, err := r.Snapshots(ctx, pe.ID{})
	if err != nil {
		return nil, err
	}
	var problems []Problem
	users := map[string][]string{}    // chunk → snapshots
	refs := map[string]chunkRef{}     // chunk → where a snapshot says it is
	byPack := map[string][]chunkRef{} // pack → chunks used
	for _, s := range snaps {
		idx, _, err := r.loadSnapshot(ctx, s.ID)
		if err != nil {
			problems = append(problems, Problem{Snapshots: []string{s.ID.String()}, Detail: err.Error()})
			continue
		}
		for _, st := range []*stream{idx.Data, idx.Metadata} {
			if st == nil {
				continue
			}
			for _, c := range st.Chunks {
				if len(users[c.ID]) == 0 || users[c.ID][len(users[c.ID])-1] != s.ID.String() {
					users[c.ID] = append(users[c.ID], s.ID.String())
				}
				if _, seen := refs[c.ID]; !seen {
					refs[c.ID] = c
					byPack[c.Pack] = append(byPack[c.Pack], c)
				}
			}
		}
		for _, comp := range idx.Components {
			cid, err := pe.ParseID(comp)
			if err == nil {
				_, err = r.be.Stat(ctx, snapshotDir(cid)+"/info")
			}
			if err != nil {
				problems = append(problems, Problem{Snapshots: []string{s.ID.String()}, Detail: fmt.Sprintf("component %s: %v", comp, err)})
			}
		}
	}
	var total int64
	for p, cs := range byPack {
		size, ok := packs[p]
		for _, c := range cs {
			total += c.PLen
			switch {
			case !ok:
				problems = append(problems, Problem{Chunk: c.ID, Pack: p, Snapshots: users[c.ID], Detail: "its pack is missing"})
			case c.POff+c.PLen > size:
				problems = append(problems, Problem{Chunk: c.ID, Pack: p, Snapshots: users[c.ID], Detail: "its pack is too short"})
			}
		}
	}
	if readData {
		if progress != nil {
			progress.Start(total)
		}
		ids := make([]string, 0, len(refs))
		for id := range refs {
			ids = append(ids, id)
		}
		// Pack by pack, in pack order: sequential reads of each pack.
		sort.Slice(ids, func(i, j int) bool {
			a, b := refs[ids[i]], refs[ids[j]]
			return a.Pack < b.Pack || a.Pack == b.Pack && a.POff < b.POff
		})
		for _, id := range ids {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			c := refs[id]
			if _, ok := packs[c.Pack]; !ok {
				continue // reported above
			}
			if _, err := r.loadChunk(ctx, c, true); err != nil {
				problems = append(problems, Problem{Chunk: c.ID, Pack: c.Pack, Snapshots: users[c.ID], Detail: err.Error()})
			}
			if progress != nil {
				progress.Add(c.PLen)
			}
		}
	}
	return problems, lock.err()
}

// PruneSummary tells what Prune removed.
type PruneSummary struct {
	Packs, Bytes int64
	Incomplete   int // snapshot indexes without info (failed backups)
}

// Prune removes the packs no snapshot uses, and the leftovers of failed
// backups. Packs that some snapshot uses stay whole (they are not
// repacked), so chunk positions in snapshot indexes never move.
func (r *Repository) Prune(ctx context.Context) (PruneSummary, error) {
	lock, err := r.lock(ctx, true)
	if err != nil {
		return PruneSummary{}, err
	}
	defer lock.release()
	var sum PruneSummary
	used := map[string]bool{}
	dirs := map[string]map[string]bool{} // snapshot dir → objects
	if err := r.be.List(ctx, "snapshots/", func(name string, _ int64) error {
		dir, obj, ok := strings.Cut(strings.TrimPrefix(name, "snapshots/"), "/")
		if ok {
			if dirs[dir] == nil {
				dirs[dir] = map[string]bool{}
			}
			dirs[dir][obj] = true
		}
		return nil
	}); err != nil {
		return sum, err
	}
	for dir, objs := range dirs {
		id, err := snapshotIDFromDir(dir)
		if err != nil {
			continue
		}
		if !objs["info"] {
			// Under the exclusive lock no backup is running: an index
			// without info is a failed backup's.
			if err := r.be.Remove(ctx, snapshotDir(id)+"/index"); err != nil {
				return sum, err
			}
			sum.Incomplete++
			continue
		}
		idx, _, err := r.loadSnapshot(ctx, id)
		if err != nil {
			return sum, fmt.Errorf("prune: %w (run check)", err)
		}
		for _, st := range []*stream{idx.Data, idx.Metadata} {
			if st != nil {
				for _, c := range st.Chunks {
					used[c.Pack] = true
				}
			}
		}
	}
	var remove []string
	sizes := map[string]int64{}
	if err := r.be.List(ctx, "data/", func(name string, size int64) error {
		id := name[strings.LastIndex(name, "/")+1:]
		if !used[id] {
			remove = append(remove, id)
			sizes[id] = size
		}
		return nil
	}); err != nil {
		return sum, err
	}
	// The index is rewritten to list only the packs that stay, before any
	// pack goes, so that no index names a missing pack.
	if err := r.loadIndex(ctx); err != nil {
		return sum, err
	}
	var oldIndex []string
	r.be.List(ctx, "index/", func(name string, _ int64) error {
		oldIndex = append(oldIndex, name)
		return nil
	})
	keep := map[string][]packBlob{}
	r.mu.Lock()
	for id, loc := range r.idx {
		if used[loc.Pack] {
			keep[loc.Pack] = append(keep[loc.Pack], packBlob{ID: id, Off: loc.Off, Len: loc.Len, Raw: loc.Raw})
		}
	}
	r.mu.Unlock()
	var f indexFile
	for p, blobs := range keep {
		sort.Slice(blobs, func(i, j int) bool { return blobs[i].Off < blobs[j].Off })
		f.Packs = append(f.Packs, indexPack{ID: p, Blobs: blobs})
	}
	if err := r.saveJSON(ctx, "index/"+randomName(), f); err != nil {
		return sum, err
	}
	for _, name := range oldIndex {
		if err := r.be.Remove(ctx, name); err != nil {
			return sum, err
		}
	}
	for _, id := range remove {
		if err := r.be.Remove(ctx, packName(id)); err != nil {
			return sum, err
		}
		sum.Packs++
		sum.Bytes += sizes[id]
	}
	return sum, lock.err()
}

// Stats are the repository's sizes.
type Stats struct {
	Packs, PackBytes int64
	Snapshots        int
}

// Stats counts what the repository holds.
func (r *Repository) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := r.be.List(ctx, "data/", func(_ string, size int64) error {
		s.Packs++
		s.PackBytes += size
		return nil
	})
	if err != nil {
		return s, err
	}
	snaps, err := r.Snapshots(ctx, pe.ID{})
	s.Snapshots = len(snaps)
	return s, err
}
