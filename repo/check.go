package repo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// Problem is one thing Check found wrong.
type Problem struct {
	Chunk     string   // chunk ID, if the problem is a chunk's
	Pack      string   // pack ID, if known
	Snapshot  string   // the snapshot, if the problem is a snapshot's own
	Snapshots []string // the snapshots it affects
	Detail    string
}

func (p Problem) String() string {
	s := p.Detail
	switch {
	case p.Chunk != "":
		s = fmt.Sprintf("chunk %s (pack %s): %s", p.Chunk, p.Pack, p.Detail)
	case p.Pack != "":
		s = fmt.Sprintf("pack %s: %s", p.Pack, p.Detail)
	case p.Snapshot != "" && !strings.Contains(p.Detail, p.Snapshot):
		s = fmt.Sprintf("snapshot %s: %s", p.Snapshot, p.Detail)
	}
	if len(p.Snapshots) > 0 {
		s += "; used by " + strings.Join(p.Snapshots, ", ")
	}
	return s
}

// legacyDetail is what Check says of a snapshot written before format 2.
const legacyDetail = "not bound to its ID (written by an older version): run 'astrolabe repo migrate'"

// Check verifies that every index file opens and lists packs that exist,
// that every snapshot is what its name says, and that their chunks are in
// packs that exist and hold them. With readData it also reads every pack
// whole: its hash, its header, that header and blobs account for every
// byte, and every blob decrypted, decompressed and re-hashed.
func (r *Repository) Check(ctx context.Context, readData bool, progress pe.Progress) ([]Problem, error) {
	sum, err := r.CheckWith(ctx, CheckOptions{ReadData: readData}, progress)
	return sum.Problems, err
}

// CheckWith is Check, reading whole the packs opts select: all, a subset,
// and those not read before by opts.Verifier.
func (r *Repository) CheckWith(ctx context.Context, opts CheckOptions, progress pe.Progress) (CheckSummary, error) {
	var sum CheckSummary
	var record string
	if opts.New || opts.Verifier != "" {
		var err error
		if record, err = verifiedName(opts.Verifier); err != nil {
			return sum, err
		}
	}
	lock, err := r.lock(ctx, false)
	if err != nil {
		return sum, err
	}
	defer lock.release()
	packs, strays, err := r.listData(ctx)
	if err != nil {
		return sum, err
	}
	sum.Packs = int64(len(packs))
	for _, size := range packs {
		sum.Bytes += size
	}
	verified := map[string]bool{}
	if record != "" {
		if verified, err = r.loadVerified(ctx, record); err != nil {
			return sum, err
		}
	}
	toRead, fresh := selectPacks(opts, packs, verified)
	if opts.New {
		sum.Verifier = opts.Verifier
		for id := range packs {
			if verified[id] {
				sum.Verified++
			}
		}
	}
	problems, err := r.checkIndexFiles(ctx, packs)
	if err != nil {
		return sum, err
	}
	for _, name := range strays {
		problems = append(problems, Problem{Detail: fmt.Sprintf("%s is not a pack: its name is not a pack's (left alone)", name)})
	}
	ids, err := r.committedIDs(ctx, pe.ID{})
	if err != nil {
		return sum, err
	}
	users := map[string][]string{}    // chunk → snapshots
	refs := map[string]chunkRef{}     // chunk → where a snapshot says it is
	byPack := map[string][]chunkRef{} // pack → chunks used
	for _, id := range ids {
		idx, si, err := r.loadSnapshot(ctx, id)
		if errors.Is(err, pe.ErrNotFound) {
			continue // forgotten meanwhile
		}
		if err != nil {
			problems = append(problems, Problem{Snapshot: id.String(), Detail: err.Error()})
			continue
		}
		if si.legacy {
			problems = append(problems, Problem{Snapshot: id.String(), Detail: legacyDetail})
		}
		for _, st := range []*stream{idx.Data, idx.Metadata} {
			if st == nil {
				continue
			}
			for _, c := range st.Chunks {
				if len(users[c.ID]) == 0 || users[c.ID][len(users[c.ID])-1] != id.String() {
					users[c.ID] = append(users[c.ID], id.String())
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
				problems = append(problems, Problem{Snapshots: []string{id.String()}, Detail: fmt.Sprintf("component %s: %v", comp, err)})
			}
		}
	}
	walProblems, err := r.checkWAL(ctx, users, refs, byPack)
	if err != nil {
		return sum, err
	}
	problems = append(problems, walProblems...)
	for _, p := range slices.Sorted(maps.Keys(byPack)) {
		size, ok := r.packSize(ctx, packs, p)
		for _, c := range byPack[p] {
			switch {
			case !ok:
				problems = append(problems, Problem{Chunk: c.ID, Pack: p, Snapshots: users[c.ID], Detail: "its pack is missing"})
			case c.POff+c.PLen > size:
				problems = append(problems, Problem{Chunk: c.ID, Pack: p, Snapshots: users[c.ID], Detail: "its pack is too short"})
			}
		}
	}
	if len(toRead) > 0 {
		var total int64
		for _, p := range toRead {
			total += packs[p]
		}
		if progress != nil {
			progress.Start(total)
		}
		var good, bad []string
		for _, p := range toRead {
			if err := ctx.Err(); err != nil {
				return sum, err
			}
			data, err := backend.ReadAll(ctx, r.be, packName(p))
			if err != nil {
				return sum, fmt.Errorf("read pack %.16s: %w", p, err)
			}
			found := r.checkPack(p, data, byPack[p], users)
			if len(found) == 0 {
				good = append(good, p)
			} else {
				bad = append(bad, p)
			}
			problems = append(problems, found...)
			sum.Read++
			sum.ReadBytes += packs[p]
			if progress != nil {
				progress.Add(packs[p])
			}
		}
		sum.New = fresh
		// The problems are the check's result whatever happens to the
		// record.
		sum.Problems = problems
		if record != "" {
			// Without the lock, a prune may have removed packs this
			// check read: its record would be stale.
			if err := lock.err(); err != nil {
				return sum, err
			}
			if err := r.saveVerified(ctx, record, verified, packs, good, bad); err != nil {
				return sum, err
			}
		}
	}
	sum.Problems = problems
	return sum, lock.err()
}

// checkIndexFiles reads and authenticates every index file and checks
// that the packs they list exist.
func (r *Repository) checkIndexFiles(ctx context.Context, packs map[string]int64) ([]Problem, error) {
	files, damaged, err := r.readAllIndexFiles(ctx)
	if err != nil {
		return nil, err
	}
	var problems []Problem
	for _, name := range slices.Sorted(maps.Keys(damaged)) {
		problems = append(problems, Problem{Detail: fmt.Sprintf("index file %s is damaged: %v (run 'astrolabe repo check --repair-index')", name, damaged[name])})
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		for _, p := range files[name].Packs {
			if _, ok := r.packSize(ctx, packs, p.ID); !ok {
				problems = append(problems, Problem{Pack: p.ID, Detail: fmt.Sprintf("listed by index file %s, but missing (run 'astrolabe repo check --repair-index')", name)})
			}
		}
	}
	return problems, nil
}

// packSize looks a pack up in the list taken at the start of a check, or
// in the backend: a concurrent backup uploads packs before it writes the
// index files and snapshots that name them.
func (r *Repository) packSize(ctx context.Context, packs map[string]int64, id string) (int64, bool) {
	if size, ok := packs[id]; ok {
		return size, true
	}
	if !validID(id) {
		return 0, false
	}
	size, err := r.be.Stat(ctx, packName(id))
	if err != nil {
		return 0, false
	}
	packs[id] = size
	return size, true
}

// checkPack verifies a whole pack: that its header opens, that the header
// and its blobs account for every byte, that every blob is the chunk it
// says, that the chunks snapshots use are where they say, and that the
// pack hashes to its name.
func (r *Repository) checkPack(id string, data []byte, used []chunkRef, users map[string][]string) []Problem {
	var problems []Problem
	var packUsers []string
	for _, c := range used {
		packUsers = appendNew(packUsers, users[c.ID]...)
	}
	sort.Strings(packUsers)
	reported := map[string]bool{}
	chunkProblem := func(chunk string, err error) {
		if !reported[chunk] {
			reported[chunk] = true
			problems = append(problems, Problem{Chunk: chunk, Pack: id, Snapshots: users[chunk], Detail: err.Error()})
		}
	}
	verify := func(chunk string, off, n, raw int64) {
		if off < 0 || n <= 0 || off+n > int64(len(data)) {
			chunkProblem(chunk, fmt.Errorf("is damaged: not within its pack of %d bytes", len(data)))
			return
		}
		if _, err := r.openChunk(data[off:off+n], chunk, raw, true); err != nil {
			chunkProblem(chunk, err)
		}
	}
	blobs, hdrStart, err := r.parsePack(data)
	inHeader := map[string]packBlob{}
	if err != nil {
		problems = append(problems, Problem{Pack: id, Snapshots: packUsers, Detail: fmt.Sprintf("its header is damaged: %v", err)})
	} else {
		if err := coverage(blobs, hdrStart); err != nil {
			problems = append(problems, Problem{Pack: id, Snapshots: packUsers, Detail: fmt.Sprintf("its header does not account for every byte: %v", err)})
		}
		for _, b := range blobs {
			inHeader[b.ID] = b
			verify(b.ID, b.Off, b.Len, b.Raw)
		}
	}
	for _, c := range used {
		if b, ok := inHeader[c.ID]; ok && b.Off == c.POff && b.Len == c.PLen {
			continue // verified above
		}
		if err == nil {
			chunkProblem(c.ID, fmt.Errorf("is not in its pack's header where its snapshots say (%d+%d)", c.POff, c.PLen))
		}
		verify(c.ID, c.POff, c.PLen, c.Len)
	}
	if len(problems) == 0 && objectHash(data) != id {
		problems = append(problems, Problem{Pack: id, Snapshots: packUsers, Detail: "is damaged: its content does not hash to its name"})
	}
	return problems
}

// coverage checks that a pack's blobs follow each other from its start
// to its header, with nothing between and nothing overlapping.
func coverage(blobs []packBlob, hdrStart int64) error {
	sorted := append([]packBlob(nil), blobs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Off < sorted[j].Off })
	var pos int64
	for _, b := range sorted {
		if b.Off != pos {
			return fmt.Errorf("chunk %.16s at %d, want %d", b.ID, b.Off, pos)
		}
		pos = b.Off + b.Len
	}
	if pos != hdrStart {
		return fmt.Errorf("the chunks end at %d, the header starts at %d", pos, hdrStart)
	}
	return nil
}

func appendNew(list []string, items ...string) []string {
	for _, it := range items {
		if !slices.Contains(list, it) {
			list = append(list, it)
		}
	}
	return list
}

// PruneSummary tells what Prune removed.
type PruneSummary struct {
	Packs, Bytes int64
	Incomplete   int // snapshot indexes without info (failed backups)
}

// Prune removes the packs no snapshot or archived WAL file uses, and the
// leftovers of failed backups. Packs that some snapshot uses stay whole (they are not
// repacked), so chunk positions in snapshot indexes never move.
//
// Prune holds the exclusive lock throughout: no backup runs meanwhile
// (backups hold shared locks from their index refresh to their commit,
// and check theirs before committing). Everything is listed and read
// before anything is removed, and any error of the backend stops it
// there. Right before removing, it checks its lock and lists the
// snapshots again, keeping the packs of any committed meanwhile by a
// writer that does not lock, then lists the locks again (a listing may
// lag behind a backup's lock); it tests its lock before each removal.
func (r *Repository) Prune(ctx context.Context) (PruneSummary, error) {
	lock, err := r.lock(ctx, true)
	if err != nil {
		return PruneSummary{}, err
	}
	defer lock.release()
	var sum PruneSummary
	used := map[string]bool{}
	seen := map[pe.ID]bool{}
	incomplete, err := r.markUsed(ctx, used, seen)
	if err != nil {
		return sum, err
	}
	if err := r.markWALUsed(ctx, used); err != nil {
		return sum, fmt.Errorf("prune: %w (run check)", err)
	}
	if err := r.refreshIndex(ctx); err != nil {
		return sum, fmt.Errorf("prune: %w", err)
	}
	sizes, err := r.listPacks(ctx)
	if err != nil {
		return sum, fmt.Errorf("prune: %w", err)
	}
	if err := lock.check(ctx); err != nil {
		return sum, fmt.Errorf("prune: %w", err)
	}
	if _, err := r.markUsed(ctx, used, seen); err != nil {
		return sum, err
	}
	if err := r.markWALUsed(ctx, used); err != nil {
		return sum, fmt.Errorf("prune: %w (run check)", err)
	}
	var remove []string
	for _, id := range slices.Sorted(maps.Keys(sizes)) {
		if !used[id] {
			remove = append(remove, id)
		}
	}
	// A lock written since ours, which a lagging listing did not show,
	// stops the prune before it changes anything.
	if err := lock.recheck(ctx); err != nil {
		return sum, fmt.Errorf("prune: %w", err)
	}
	// The index is rewritten to list only the packs that stay, before any
	// pack goes, so that no index names a missing pack.
	f, oldIndex := r.idx.usedPacks(used)
	if err := r.saveIndexFile(ctx, f); err != nil {
		return sum, err
	}
	// Each removal is preceded by a test of the lock: a prune that lost
	// it (unlock --force, no refresh for long) stops at once.
	remove1 := func(name string) error {
		if err := lock.checkOften(ctx); err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		return r.be.Remove(ctx, name)
	}
	for _, name := range oldIndex {
		if err := remove1(name); err != nil {
			return sum, err
		}
	}
	r.idx.forget(remove, oldIndex)
	for _, id := range incomplete {
		if seen[id] {
			continue // committed since the first listing
		}
		if err := remove1(snapshotDir(id) + "/index"); err != nil {
			return sum, err
		}
		sum.Incomplete++
	}
	for _, id := range remove {
		if err := remove1(packName(id)); err != nil {
			return sum, err
		}
		sum.Packs++
		sum.Bytes += sizes[id]
	}
	return sum, lock.err()
}

// markUsed adds the packs of the committed snapshots not in seen to used
// (and them to seen), and returns the snapshots with an index and no
// info: under the exclusive lock, failed backups'.
func (r *Repository) markUsed(ctx context.Context, used map[string]bool, seen map[pe.ID]bool) ([]pe.ID, error) {
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
		return nil, fmt.Errorf("prune: list snapshots: %w", err)
	}
	var incomplete []pe.ID
	for _, dir := range slices.Sorted(maps.Keys(dirs)) {
		id, err := snapshotIDFromDir(dir)
		if err != nil {
			if dirs[dir]["info"] {
				// Maybe a snapshot of a newer version's ID scheme, or a
				// damaged name: its packs cannot be told unused.
				return nil, fmt.Errorf("prune: snapshot folder %q has an info but its name does not parse (%v): stopped, nothing removed", dir, err)
			}
			continue
		}
		if seen[id] {
			continue
		}
		if !dirs[dir]["info"] {
			if dirs[dir]["index"] {
				incomplete = append(incomplete, id)
			}
			continue
		}
		idx, _, err := r.loadSnapshot(ctx, id)
		if errors.Is(err, pe.ErrNotFound) {
			continue // forgotten meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("prune: %w (run check)", err)
		}
		seen[id] = true
		for _, st := range []*stream{idx.Data, idx.Metadata} {
			if st != nil {
				for _, c := range st.Chunks {
					used[c.Pack] = true
				}
			}
		}
	}
	return incomplete, nil
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
