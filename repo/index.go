package repo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// index is the repository's one long-lived index of chunks, for dedup:
// which pack holds each. It is loaded at a backup's first need and then
// refreshed by merging what appeared since (index files it has not read,
// packs no index file lists), and it learns of the packs this process's
// packers upload as they land. It is never replaced, only merged into; it
// forgets a pack only when a listing of data/ shows the pack gone (a
// prune, or damage), and then only a pack it knew before that listing
// began. So any number of backups, restores and mounts of one process
// share it safely (restic's MasterIndex is the model).
type index struct {
	mu     sync.Mutex
	chunks map[string]blobLoc      // chunk ID → where it is
	packs  map[string]*indexedPack // pack ID → its chunks
	files  map[string]int64        // index files merged: name → size
	seq    uint64                  // counts packs added, to order them against listings

	refreshing sync.Mutex // one refresh at a time: they would read the same objects
}

type indexedPack struct {
	blobs []packBlob
	seq   uint64 // when it was added
	// listed is set when an index file lists the pack, or this
	// process's packer that uploaded it writes one.
	listed bool
}

func newIndex() *index {
	return &index{chunks: map[string]blobLoc{}, packs: map[string]*indexedPack{}, files: map[string]int64{}}
}

// lookup says where a chunk is stored.
func (ix *index) lookup(chunk string) (blobLoc, bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	loc, ok := ix.chunks[chunk]
	return loc, ok
}

// hasPack reports whether the pack is known to exist.
func (ix *index) hasPack(pack string) bool {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.packs[pack] != nil
}

// added records a pack a packer of this process uploaded; the packer
// writes the index file that lists it.
func (ix *index) added(pack string, blobs []packBlob) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.mergeLocked(pack, blobs)
}

// saved records an index file this process wrote, so that a refresh does
// not read it back.
func (ix *index) saved(file string, size int64) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.files[file] = size
}

// mergeLocked adds a pack and those of its chunks not known elsewhere.
func (ix *index) mergeLocked(pack string, blobs []packBlob) {
	p := ix.packs[pack]
	if p == nil {
		ix.seq++
		p = &indexedPack{blobs: blobs, seq: ix.seq}
		ix.packs[pack] = p
	}
	p.listed = true
	for _, b := range blobs {
		if _, ok := ix.chunks[b.ID]; !ok {
			ix.chunks[b.ID] = blobLoc{Pack: pack, Off: b.Off, Len: b.Len, Raw: b.Raw}
		}
	}
}

// forgetLocked drops a pack and its chunks, adding to dropped those it
// was the place of.
func (ix *index) forgetLocked(pack string, dropped map[string]bool) {
	p := ix.packs[pack]
	if p == nil {
		return
	}
	for _, b := range p.blobs {
		if ix.chunks[b.ID].Pack == pack {
			delete(ix.chunks, b.ID)
			dropped[b.ID] = true
		}
	}
	delete(ix.packs, pack)
}

// repointLocked finds the chunks dropped with a forgotten pack in the
// packs that remain: a chunk may be in two packs (two appliances stored
// it at once), and dedup must not lose it with one of them.
func (ix *index) repointLocked(dropped map[string]bool) {
	if len(dropped) == 0 {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(ix.packs)) {
		for _, b := range ix.packs[id].blobs {
			if _, ok := ix.chunks[b.ID]; !ok && dropped[b.ID] {
				ix.chunks[b.ID] = blobLoc{Pack: id, Off: b.Off, Len: b.Len, Raw: b.Raw}
			}
		}
	}
}

// forget drops packs that were removed, and index files that were.
func (ix *index) forget(packs, files []string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	dropped := map[string]bool{}
	for _, p := range packs {
		ix.forgetLocked(p, dropped)
	}
	ix.repointLocked(dropped)
	for _, f := range files {
		delete(ix.files, f)
	}
}

// unread compares a listing of index/ with the files merged: it forgets
// those gone (rewritten by a prune or a repair) and returns the names of
// those it has not read, or that changed size since (objects are never
// rewritten in place: damaged).
func (ix *index) unread(listing map[string]int64) []string {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for name := range ix.files {
		if _, ok := listing[name]; !ok {
			delete(ix.files, name)
		}
	}
	var out []string
	for name, size := range listing {
		if known, ok := ix.files[name]; !ok || known != size {
			delete(ix.files, name)
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// usedPacks returns the index entries of the given packs, for a prune's
// new index file, and the names of the index files it replaces.
func (ix *index) usedPacks(used map[string]bool) (indexFile, []string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var f indexFile
	for _, id := range slices.Sorted(maps.Keys(ix.packs)) {
		if used[id] {
			f.Packs = append(f.Packs, indexPack{ID: id, Blobs: ix.packs[id].blobs})
		}
	}
	return f, slices.Sorted(maps.Keys(ix.files))
}

// refreshIndex brings the index up to date with the backend: index files
// it has not read are merged (for the packs of theirs that exist), packs
// no index file lists are indexed from their own headers (left by an
// interrupted backup, uploaded by another appliance's running backup, or
// listed by a damaged index file) and an index file is written for them,
// so that what they hold is not uploaded again; damaged index files are
// then removed, with a warning. Packs the index knew that are gone are
// forgotten, so that no new snapshot refers to them. A listing or read
// error of the backend is an error: a partial view is not used.
func (r *Repository) refreshIndex(ctx context.Context) error {
	ix := r.idx
	ix.refreshing.Lock()
	defer ix.refreshing.Unlock()
	ix.mu.Lock()
	start := ix.seq
	ix.mu.Unlock()

	listing, err := r.listIndexFiles(ctx)
	if err != nil {
		return err
	}
	files, damaged, err := r.readIndexFiles(ctx, ix.unread(listing))
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	relist := len(damaged) > 0
	if relist {
		// The packs a damaged file listed are listed by no file once it
		// is removed: which ones, only all the other files tell.
		var rest []string
		for name := range listing {
			if _, ok := files[name]; !ok && damaged[name] == nil {
				rest = append(rest, name)
			}
		}
		more, moreDamaged, err := r.readIndexFiles(ctx, rest)
		if err != nil {
			return fmt.Errorf("read index: %w", err)
		}
		maps.Copy(files, more)
		maps.Copy(damaged, moreDamaged)
	}
	present, err := r.listPacks(ctx)
	if err != nil {
		return err
	}

	ix.mu.Lock()
	if relist {
		for _, p := range ix.packs {
			p.listed = false
		}
	}
	// Packs gone are forgotten before new ones are merged: a chunk of a
	// pack gone that a new one holds too then points at the new one.
	missing := map[string]bool{}
	dropped := map[string]bool{}
	for id, p := range ix.packs {
		if _, ok := present[id]; !ok && p.seq <= start {
			missing[id] = true
			ix.forgetLocked(id, dropped)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		for _, p := range files[name].Packs {
			if _, ok := present[p.ID]; ok {
				ix.mergeLocked(p.ID, p.Blobs)
			} else {
				missing[p.ID] = true
			}
		}
		ix.files[name] = listing[name]
	}
	ix.repointLocked(dropped)
	var unlisted []string
	for id := range present {
		if p := ix.packs[id]; (p == nil || !p.listed) && validID(id) {
			unlisted = append(unlisted, id)
		}
	}
	ix.mu.Unlock()
	if len(missing) > 0 {
		r.log.Warn("the index lists packs that are missing: what they held is stored again (run 'astrolabe repo check')", "packs", len(missing))
	}

	var orphans []indexPack
	for _, id := range slices.Sorted(slices.Values(unlisted)) {
		blobs, err := r.packHeader(ctx, id, present[id])
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			r.log.Warn("pack without index and with a bad header: ignored (prune removes it)", "pack", id, "err", err)
			continue
		}
		orphans = append(orphans, indexPack{ID: id, Blobs: blobs})
	}
	if len(orphans) > 0 {
		r.log.Info("indexed packs from their headers", "packs", len(orphans))
		if err := r.saveIndexFile(ctx, indexFile{Packs: orphans}); err != nil {
			return err
		}
		ix.mu.Lock()
		for _, o := range orphans {
			ix.mergeLocked(o.ID, o.Blobs)
		}
		ix.mu.Unlock()
	}
	// Their packs are indexed again now: the damaged files can go.
	for _, name := range slices.Sorted(maps.Keys(damaged)) {
		r.log.Warn("index file is damaged: replaced by an index read from the pack headers", "file", name, "err", damaged[name])
		if err := r.be.Remove(ctx, name); err != nil {
			return fmt.Errorf("remove damaged index file: %w", err)
		}
	}
	return nil
}

// saveIndexFile writes a new index file and records it as read.
func (r *Repository) saveIndexFile(ctx context.Context, f indexFile) error {
	b, err := r.sealJSON(f, nil)
	if err != nil {
		return err
	}
	name := "index/" + randomName()
	if err := r.saveObject(ctx, name, b); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	r.idx.saved(name, int64(len(b)))
	return nil
}

// listIndexFiles lists the index files and their sizes.
func (r *Repository) listIndexFiles(ctx context.Context) (map[string]int64, error) {
	files := map[string]int64{}
	if err := r.be.List(ctx, "index/", func(name string, size int64) error {
		files[name] = size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	return files, nil
}

// readIndexFiles reads the named index files. Those that do not open or
// hold nonsense (truncated, damaged) come back apart with the reason;
// errors of the backend are errors.
func (r *Repository) readIndexFiles(ctx context.Context, names []string) (map[string]indexFile, map[string]error, error) {
	files, damaged := map[string]indexFile{}, map[string]error{}
	for _, name := range names {
		b, err := backend.ReadAll(ctx, r.be, name)
		if errors.Is(err, backend.ErrNotExist) {
			continue // removed by a concurrent prune's rewrite
		}
		if err != nil {
			return nil, nil, err
		}
		f, err := r.parseIndexFile(b)
		if err != nil {
			damaged[name] = err
			continue
		}
		files[name] = f
	}
	return files, damaged, nil
}

// readAllIndexFiles reads every index file.
func (r *Repository) readAllIndexFiles(ctx context.Context) (map[string]indexFile, map[string]error, error) {
	listing, err := r.listIndexFiles(ctx)
	if err != nil {
		return nil, nil, err
	}
	return r.readIndexFiles(ctx, slices.Sorted(maps.Keys(listing)))
}
