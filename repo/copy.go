package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// CopySummary tells what a copy between repositories did.
type CopySummary struct {
	Copied   []pe.ID       // snapshots committed in the target, components first
	Skipped  []pe.ID       // snapshots the target had already, the same
	Differ   []pe.ID       // snapshots the target holds with other content (those listed, or components of them): left alone, an error
	Gone     []pe.ID       // snapshots forgotten in the source after they were listed: not copied
	Read     int64         // bytes of chunks read from the source
	New      int64         // bytes of chunks the target lacked
	Sent     int64         // bytes uploaded to the target (compressed, sealed, packed)
	Present  int64         // bytes of chunks the target had already, not read
	Duration time.Duration // wall time
	// SourceUnlocked tells that the source could not be written and was
	// read without a lock (lockSource).
	SourceUnlocked bool
}

// Copy copies snapshots of src into r: those of the PEs (or the one
// snapshot) each filter names, or all if there is none. Chunk IDs are the
// SHA-256 of the chunks' content whatever the key, so only the chunks r
// lacks are read from src; they are sealed again under r's key. Each
// snapshot keeps its ID, times and info, and is committed in r after the
// packs and index it needs, as a backup is: a copy interrupted and run
// again finds the packs it uploaded (by their index file, or by their
// headers after a crash) and sends only what is missing.
//
// A snapshot r has already is compared with the source's: its info, time
// and content (the chunk IDs of its streams, its table of contents and
// components). The same, it is skipped; different, it is left alone and
// Copy goes on with the others, then fails with a *SnapshotDiffersError
// naming it (the snapshot, or the component of it, that differs), joined
// with the error that stopped the copy if one did: a snapshot is never
// overwritten, nor skipped unnoticed. A snapshot forgotten in the source
// after it was listed is not copied, and is told in Gone.
func (r *Repository) Copy(ctx context.Context, src *Repository, filter []pe.ID, progress pe.Progress) (CopySummary, error) {
	start := time.Now()
	if src.cfg.ID == r.cfg.ID {
		return CopySummary{}, fmt.Errorf("copy from %s to %s: the same repository", src.Location(), r.Location())
	}
	// Listed under the lock: no prune removes a snapshot listed.
	release, unlocked, err := src.lockSource(ctx)
	if err != nil {
		return CopySummary{}, fmt.Errorf("copy from %s: %w", src.Location(), err)
	}
	defer release()
	ids, err := src.copyList(ctx, filter)
	if err != nil {
		return CopySummary{}, fmt.Errorf("copy from %s: %w", src.Location(), err)
	}
	if err := r.upgradeConfig(ctx, formatVersion); err != nil {
		return CopySummary{}, err
	}
	c := &copyRun{r: r, src: src, ctx: ctx, progress: progress, done: map[pe.ID]bool{}, path: map[pe.ID]bool{}, zeros: map[int64]string{}}
	s := CopySummary{SourceUnlocked: unlocked}
	var errs []error // of snapshots that differ, then the one that stopped the copy
	for _, id := range ids {
		if c.done[id] {
			continue // copied as a component of an earlier one
		}
		copied, err := c.top(id)
		var differs *SnapshotDiffersError
		var source *sourceError
		switch {
		case errors.As(err, &differs):
			if !slices.Contains(s.Differ, differs.ID) {
				s.Differ = append(s.Differ, differs.ID)
			}
			errs = append(errs, fmt.Errorf("copy %s to %s: %w", id, r.Location(), err))
		case errors.As(err, &source) && source.snapshot == id && errors.Is(source.err, pe.ErrNotFound):
			// Forget takes no lock: a snapshot listed may be gone since.
			r.log.Warn("a snapshot was forgotten in the copy's source meanwhile: not copied", "snapshot", id, "source", src.Location())
			s.Gone = append(s.Gone, id)
		case err != nil:
			c.sum(&s)
			if unlocked && errors.As(err, &source) && errors.Is(source.err, backend.ErrNotExist) {
				err = fmt.Errorf("%w (the source, read without a lock, may have been pruned meanwhile: run the copy again)", err)
			}
			errs = append(errs, fmt.Errorf("copy %s to %s: %w", id, r.Location(), err))
			return s, errors.Join(errs...)
		case !copied:
			s.Skipped = append(s.Skipped, id)
		}
	}
	c.sum(&s)
	s.Duration = time.Since(start)
	return s, errors.Join(errs...)
}

// sourceError is an error reading the copy's source (not writing the
// target); snapshot is set if it is one loading that snapshot.
type sourceError struct {
	snapshot pe.ID
	err      error
}

func (e *sourceError) Error() string { return "source: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// lockSource takes a shared lock of the source, so that no prune
// removes what the copy reads meanwhile; unlocked tells it took none.
//
// A source that cannot be written (a replica mounted read-only, an S3 key
// allowed to read only) cannot hold a lock: it is read without one, once
// no prune holds its exclusive lock. A prune that starts later may remove
// a pack before it is read; the copy then fails, and run again after the
// prune it copies what is missing. It never commits a wrong snapshot: a
// chunk read is authenticated by its ID, and a snapshot is committed in
// the target only once every chunk it needs is stored there.
func (r *Repository) lockSource(ctx context.Context) (release func(), unlocked bool, err error) {
	l, err := r.lock(ctx, false)
	if err == nil {
		return l.release, false, nil
	}
	if !backend.IsReadOnly(err) {
		return nil, false, err
	}
	if err := r.scanLocks(ctx, thisProcess(), "", false, ""); err != nil {
		return nil, false, err
	}
	r.log.Warn("the copy's source cannot be written: it is read without a lock, and a prune of it meanwhile makes the copy fail", "source", r.Location(), "err", err)
	return func() {}, true, nil
}

// copyList lists the snapshots to copy, oldest first, each once.
func (r *Repository) copyList(ctx context.Context, filter []pe.ID) ([]pe.ID, error) {
	if len(filter) == 0 {
		return r.SnapshotIDs(ctx, pe.ID{})
	}
	var ids []pe.ID
	seen := map[pe.ID]bool{}
	for _, f := range filter {
		got, err := r.SnapshotIDs(ctx, f)
		if err != nil {
			return nil, err
		}
		if len(got) == 0 {
			return nil, fmt.Errorf("%s: no snapshot of it: %w", f, pe.ErrNotFound)
		}
		for _, id := range got {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

// copyRun is one Copy: the counts of the packers of its snapshots.
type copyRun struct {
	r, src   *Repository
	ctx      context.Context
	progress pe.Progress
	done     map[pe.ID]bool   // copied by this run
	zeros    map[int64]string // chunk IDs of zeros by length
	path     map[pe.ID]bool   // being copied: the snapshot and the components above this one
	copied   []pe.ID

	read, newBytes, sent, present atomic.Int64
}

func (c *copyRun) sum(s *CopySummary) {
	s.Copied = c.copied
	s.Read, s.New, s.Sent, s.Present = c.read.Load(), c.newBytes.Load(), c.sent.Load(), c.present.Load()
}

// top copies one snapshot and its components under a lock that claims
// it, as Backup does; it reports false if the target has it already.
func (c *copyRun) top(id pe.ID) (bool, error) {
	release, err := c.r.claim(c.ctx, id)
	if err != nil {
		return false, err
	}
	defer release()
	if done, err := c.committed(id); err != nil || done {
		return false, err
	}
	lock, err := c.r.lockFor(c.ctx, false, id.String())
	if err != nil {
		return false, err
	}
	defer lock.release()
	// Again under the lock: another process may have committed it since,
	// and writing it again would replace its index under its info.
	if done, err := c.committed(id); err != nil || done {
		return false, err
	}
	// Under the shared lock no prune removes a pack: what the refreshed
	// index holds exists until the snapshot is committed.
	if err := c.r.refreshIndex(c.ctx); err != nil {
		return false, err
	}
	b := &backupRun{r: c.r, ctx: c.ctx, lock: lock, progress: c.progress, pk: newPacker(c.ctx, c.r)}
	defer func() {
		c.read.Add(b.read.Load())
		c.newBytes.Add(b.newBytes.Load())
		c.sent.Add(b.pk.stored.Load())
	}()
	if err := c.snapshot(b, id); err != nil {
		// What was uploaded is indexed for the next run.
		b.pk.finish()
		return false, err
	}
	return true, nil
}

// component copies a component unless the target has it.
func (c *copyRun) component(b *backupRun, id pe.ID) error {
	// A snapshot that is its own component (a damaged or forged source)
	// would wait on its own claim forever.
	if c.path[id] {
		return fmt.Errorf("%s is a component of itself in %s", id, c.src.Location())
	}
	release, err := c.r.claim(c.ctx, id)
	if err != nil {
		return err
	}
	defer release()
	if done, err := c.committed(id); err != nil || done {
		return err
	}
	return c.snapshot(b, id)
}

// ErrSnapshotDiffers is returned for a snapshot the target holds under
// the ID of the source's, with other content: a *SnapshotDiffersError
// tells which.
var ErrSnapshotDiffers = errors.New("the target holds another snapshot under this ID")

// SnapshotDiffersError names a snapshot the target holds with other
// content than the source's (the one copied, or a component of it) and
// what differs.
type SnapshotDiffersError struct {
	ID    pe.ID
	Parts []string // "info", "data", ...
}

func (e *SnapshotDiffersError) Error() string {
	return fmt.Sprintf("snapshot %s: differs from the source's in its %s, and is left as it is (forget it in the target to copy the source's): %v",
		e.ID, strings.Join(e.Parts, ", "), ErrSnapshotDiffers)
}

func (e *SnapshotDiffersError) Unwrap() error { return ErrSnapshotDiffers }

// committed reports whether the target has snapshot id, and fails with
// ErrSnapshotDiffers if what it has is not what the source has.
func (c *copyRun) committed(id pe.ID) (bool, error) {
	if done, err := c.r.committed(c.ctx, id); err != nil || !done {
		return false, err
	}
	sidx, si, err := c.src.loadSnapshot(c.ctx, id)
	if err != nil {
		return false, &sourceError{id, err}
	}
	tidx, ti, err := c.r.loadSnapshot(c.ctx, id)
	if err != nil {
		return false, fmt.Errorf("target: %w", err)
	}
	if diff := c.differences(sidx, si, tidx, ti); len(diff) > 0 {
		return false, &SnapshotDiffersError{ID: id, Parts: diff}
	}
	return true, nil
}

// differences names the parts of a snapshot that differ between a
// source's and a target's. Where chunks are packed is not compared, nor
// chunks of zeros one side stores and the other leaves a hole: neither
// changes what the snapshot reads as.
func (c *copyRun) differences(sidx *snapshotIndex, si *snapshotInfo, tidx *snapshotIndex, ti *snapshotInfo) []string {
	// Compared as JSON: what is stored.
	same := func(a, b any) func() bool {
		return func() bool {
			x, errX := json.Marshal(a)
			y, errY := json.Marshal(b)
			return errX == nil && errY == nil && bytes.Equal(x, y)
		}
	}
	parts := []struct {
		name string
		same func() bool
	}{
		{"info", same(si.Info, ti.Info)},
		{"backup time", same(si.BackedUp.UTC(), ti.BackedUp.UTC())},
		{"chunking", same(sidx.Chunking, tidx.Chunking)},
		{"data", func() bool { return c.sameContent(sidx.Data, tidx.Data) }},
		{"metadata", func() bool { return c.sameContent(sidx.Metadata, tidx.Metadata) }},
		{"table of contents", same(sidx.TOC, tidx.TOC)},
		{"components", same(sidx.Components, tidx.Components)},
	}
	var diff []string
	for _, p := range parts {
		if !p.same() {
			diff = append(diff, p.name)
		}
	}
	return diff
}

// sameContent reports whether two streams read the same: the same size
// and chunks (offset, length, ID), but chunks of zeros either has where
// the other has none. Only a chunk without its match is checked for
// zeros, so that comparing a stream with a copy of it hashes nothing.
func (c *copyRun) sameContent(a, b *stream) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Size != b.Size {
		return false
	}
	i, j := 0, 0
	for i < len(a.Chunks) || j < len(b.Chunks) {
		switch {
		case i < len(a.Chunks) && j < len(b.Chunks) && sameChunk(a.Chunks[i], b.Chunks[j]):
			i, j = i+1, j+1
		case i < len(a.Chunks) && c.isZeros(a.Chunks[i]):
			i++
		case j < len(b.Chunks) && c.isZeros(b.Chunks[j]):
			j++
		default:
			return false
		}
	}
	return true
}

// sameChunk reports whether two chunks are the same part of a stream,
// wherever each is packed.
func sameChunk(a, b chunkRef) bool {
	return a.Off == b.Off && a.Len == b.Len && a.ID == b.ID
}

// isZeros reports whether a chunk is of zeros; the ID of zeros of each
// length is computed once.
func (c *copyRun) isZeros(ch chunkRef) bool {
	if ch.Len <= 0 || ch.Len > maxChunk {
		return false
	}
	id, ok := c.zeros[ch.Len]
	if !ok {
		id = chunkID(make([]byte, ch.Len))
		c.zeros[ch.Len] = id
	}
	return ch.ID == id
}

// snapshot copies one snapshot: components first, then its streams; its
// info is written last.
func (c *copyRun) snapshot(b *backupRun, id pe.ID) error {
	c.path[id] = true
	defer delete(c.path, id)
	sidx, si, err := c.src.loadSnapshot(c.ctx, id)
	if err != nil {
		return &sourceError{id, err}
	}
	idx := &snapshotIndex{ID: id.String(), Chunking: sidx.Chunking, TOC: sidx.TOC, Components: sidx.Components, BackedUp: sidx.BackedUp}
	for _, comp := range sidx.Components {
		cid, err := pe.ParseID(comp)
		if err != nil {
			return fmt.Errorf("component of %s: %w", id, err)
		}
		if err := c.component(b, cid); err != nil {
			return fmt.Errorf("component %s: %w", cid, err)
		}
	}
	if idx.Data, err = c.stream(b, sidx.Data); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if idx.Metadata, err = c.stream(b, sidx.Metadata); err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	// As a backup commits: packs and their index, then a recheck of the
	// lock and of the packs taken from before this run, then the snapshot.
	if err := b.pk.finish(); err != nil {
		return err
	}
	if err := b.lock.recheck(c.ctx); err != nil {
		return err
	}
	if err := b.confirmPacks(idx); err != nil {
		return err
	}
	// A copy cancelled is not committed, even once all it needs is
	// stored (a local backend does not heed ctx).
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if err := c.r.saveSnapshot(c.ctx, id, idx, snapshotInfo{Info: si.Info, BackedUp: si.BackedUp}); err != nil {
		return err
	}
	c.done[id] = true
	c.copied = append(c.copied, id)
	return nil
}

// stream copies a stream's chunks that the target lacks and returns the
// stream as the target holds it.
func (c *copyRun) stream(b *backupRun, st *stream) (*stream, error) {
	if st == nil {
		return nil, nil
	}
	if c.progress != nil {
		var total int64
		for _, ch := range st.Chunks {
			total += ch.Len
		}
		c.progress.Start(total)
	}
	var present []chunkRef
	refs, err := b.pipeline(func(send func(int64, []byte) error) error {
		ctx, cancel := context.WithCancel(c.ctx)
		ahead := c.readAhead(ctx, b.pk, st.Chunks)
		// Stops the reads ahead when the pipeline fails, and waits for
		// them: none reads the source once the copy has returned.
		defer ahead.close()
		defer cancel()
		for a := range ahead.chunks {
			data, err := ahead.wait(ctx, a)
			if err != nil {
				return err
			}
			ch := a.ch
			// A chunk on its way in one of this run's packs is placed
			// once that pack is uploaded (resolve).
			if loc, stored, pending := b.pk.lookup(ch.ID); stored || pending {
				present = append(present, chunkRef{Off: ch.Off, Len: ch.Len, ID: ch.ID, Pack: loc.Pack, POff: loc.Off, PLen: loc.Len})
				if stored {
					c.present.Add(ch.Len)
				}
				if c.progress != nil {
					c.progress.Add(ch.Len)
				}
				continue
			}
			if data == nil {
				// Found present ahead, gone since: its pack failed to upload.
				return fmt.Errorf("chunk %.16s: its pack was not stored", ch.ID)
			}
			if err := send(ch.Off, data); err != nil {
				return err
			}
		}
		return ctx.Err()
	})
	if err != nil {
		return nil, err
	}
	if err := b.pk.finish(); err != nil {
		return nil, err
	}
	refs = append(refs, present...)
	if err := b.resolve(refs); err != nil {
		return nil, err
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].Off < refs[j].Off })
	// Every chunk is stored under the ID it had (a chunk of zeros the
	// source stored is left out: a hole reads as zeros).
	want := make(map[int64]string, len(st.Chunks))
	for _, ch := range st.Chunks {
		want[ch.Off] = ch.ID
	}
	for _, ref := range refs {
		if want[ref.Off] != ref.ID {
			return nil, fmt.Errorf("chunk at %d: stored as %.16s, the source has %.16s", ref.Off, ref.ID, want[ref.Off])
		}
	}
	return &stream{Size: st.Size, Chunks: refs}, nil
}

// Reads of the source ahead of the chunk being stored: at most
// copyAhead at once, or read and waiting, each of one chunk or of
// neighbours in one pack read together (one request for up to
// copyReadBytes, at most copyReadChunks chunks of at most copyReadBytes
// once opened: chunks that compress well open to far more than they
// take in a pack). So at most copyAhead*copyReadBytes bytes are held as
// read and as many opened, or copyAhead chunks where one is larger.
const (
	copyAhead      = 8
	copyReadBytes  = 4 << 20
	copyReadChunks = 256
)

// aheadChunk is a chunk of a stream as read ahead: its data, or nil if
// the target had it when its turn to be read came.
type aheadChunk struct {
	ch    chunkRef
	data  []byte
	err   error
	ready chan struct{} // closed when data or err is set
	slot  bool          // the last chunk of its read: frees its slot
}

// readAhead is the chunks of a stream in order, read from the source
// ahead of their turn while the pipeline stores those before them.
type readAhead struct {
	chunks <-chan *aheadChunk
	slots  chan struct{}
	// wg counts the goroutines reading: none may use the source once
	// the copy has returned (closing the source frees its decoder).
	wg sync.WaitGroup
	// held is the bytes of chunks opened and not yet taken by wait;
	// peak the most at once (what the bound above is about).
	held, peak atomic.Int64
}

// aheadGroup is neighbours in a pack, to be read together, with running
// totals so that adding a chunk costs the same however many there are.
type aheadGroup struct {
	chunks     []*aheadChunk
	start, end int64 // where they are in their pack
	need       int64 // bytes of them there
	raw        int64 // bytes of them opened
}

// add adds chunk a to the group if it is read with the others: in the
// same pack, the bytes from the first of them there to the end of the
// last at most copyReadBytes, of which at most a quarter not needed,
// and the group within copyReadChunks chunks and copyReadBytes opened.
func (g *aheadGroup) add(a *aheadChunk) bool {
	ch := a.ch
	if len(g.chunks) == 0 {
		*g = aheadGroup{chunks: []*aheadChunk{a}, start: ch.POff, end: ch.POff + ch.PLen, need: ch.PLen, raw: ch.Len}
		return true
	}
	if ch.Pack != g.chunks[0].ch.Pack || len(g.chunks) >= copyReadChunks || g.raw+ch.Len > copyReadBytes {
		return false
	}
	// A backup's workers pack chunks in about, not exactly, the order
	// of the stream.
	start, end, need := min(g.start, ch.POff), max(g.end, ch.POff+ch.PLen), g.need+ch.PLen
	span := end - start
	if span > copyReadBytes || span-need > span/4 {
		return false
	}
	g.chunks = append(g.chunks, a)
	g.start, g.end, g.need, g.raw = start, end, need, g.raw+ch.Len
	return true
}

// readAhead reads the chunks the target lacks (as the packer knows it:
// a chunk read twice is stored once) ahead of their turn, until ctx ends.
// Once ctx ends, close waits for the reads under way.
func (c *copyRun) readAhead(ctx context.Context, pk *packer, chunks []chunkRef) *readAhead {
	// Room for the chunks of copyAhead reads: the slots bound the data.
	out := make(chan *aheadChunk, copyAhead*16)
	ra := &readAhead{chunks: out, slots: make(chan struct{}, copyAhead)}
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		defer close(out)
		var group aheadGroup
		emit := func(as ...*aheadChunk) bool {
			for _, a := range as {
				select {
				case out <- a:
				case <-ctx.Done():
					return false
				}
			}
			return true
		}
		flush := func() bool {
			if len(group.chunks) == 0 {
				return true
			}
			select {
			case ra.slots <- struct{}{}:
			case <-ctx.Done():
				return false
			}
			// Both may have been ready: no read starts once ctx ended.
			if ctx.Err() != nil {
				return false
			}
			g := group.chunks
			group = aheadGroup{}
			g[len(g)-1].slot = true
			ra.wg.Add(1)
			go func() {
				defer ra.wg.Done()
				c.readGroup(ctx, ra, g)
			}()
			return emit(g...)
		}
		for _, ch := range chunks {
			a := &aheadChunk{ch: ch, ready: make(chan struct{})}
			if _, stored, pending := pk.lookup(ch.ID); stored || pending {
				close(a.ready)
				if !flush() || !emit(a) {
					return
				}
				continue
			}
			if !group.add(a) {
				if !flush() {
					return
				}
				group.add(a)
			}
		}
		flush()
	}()
	return ra
}

// close waits for the reads under way to end; ctx must have ended, or
// all chunks been taken.
func (ra *readAhead) close() {
	ra.wg.Wait()
}

// readGroup reads a group of chunks of one pack with one request and
// opens each, until ctx ends.
func (c *copyRun) readGroup(ctx context.Context, ra *readAhead, group []*aheadChunk) {
	defer func() {
		for _, a := range group {
			if a.data != nil {
				ra.hold(int64(len(a.data)))
			}
			close(a.ready)
		}
	}()
	if len(group) == 1 {
		if group[0].data, group[0].err = c.src.loadChunk(ctx, group[0].ch, false); group[0].err != nil {
			group[0].err = &sourceError{err: group[0].err}
		}
		return
	}
	start := group[0].ch.POff
	end := start
	for _, a := range group {
		start, end = min(start, a.ch.POff), max(end, a.ch.POff+a.ch.PLen)
	}
	buf, err := c.src.loadRange(ctx, group[0].ch.Pack, start, end-start)
	for _, a := range group {
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			a.err = &sourceError{err: fmt.Errorf("chunk %.16s in pack %.16s: %w", a.ch.ID, a.ch.Pack, err)}
			continue
		}
		sealed := buf[a.ch.POff-start : a.ch.POff-start+a.ch.PLen]
		if a.data, a.err = c.src.openChunk(sealed, a.ch.ID, a.ch.Len, false); a.err != nil {
			a.err = &sourceError{err: fmt.Errorf("chunk %.16s in pack %.16s %w", a.ch.ID, a.ch.Pack, a.err)}
		}
	}
}

// hold counts n bytes opened and held until wait takes them.
func (ra *readAhead) hold(n int64) {
	held := ra.held.Add(n)
	for p := ra.peak.Load(); held > p && !ra.peak.CompareAndSwap(p, held); p = ra.peak.Load() {
	}
}

// loadRange reads n bytes of a pack at off.
func (r *Repository) loadRange(ctx context.Context, pack string, off, n int64) ([]byte, error) {
	rc, err := r.be.Load(ctx, packName(pack), off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// wait returns a chunk's data once read (nil if it was not read), and
// frees the slot of its read after its last chunk.
func (ra *readAhead) wait(ctx context.Context, a *aheadChunk) ([]byte, error) {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if a.slot {
		<-ra.slots
	}
	ra.held.Add(-int64(len(a.data)))
	return a.data, a.err
}
