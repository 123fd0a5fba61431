package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// Summary tells what a backup did.
type Summary struct {
	ID       pe.ID         // the repository snapshot
	Read     int64         // bytes read from the PE
	New      int64         // bytes of chunks the repository did not have
	Stored   int64         // bytes uploaded (compressed, sealed, packed)
	Reused   int64         // bytes taken unread from the previous snapshot
	Duration time.Duration // wall time
}

// ErrExists is returned when the snapshot is in the repository already.
var ErrExists = pe.ErrExists

// Backup stores snapshot p (and its components) in the repository. Only
// what the repository lacks is uploaded; where p's data can tell what
// changed since the PE's previous snapshot in the repository, only that is
// read. The snapshot becomes visible when complete.
func (r *Repository) Backup(ctx context.Context, p pe.ProtectedEntity, progress pe.Progress) (Summary, error) {
	start := time.Now()
	if !p.ID().HasSnapshot() {
		return Summary{}, fmt.Errorf("backup %s: not a snapshot", p.ID())
	}
	// One backup of a snapshot at a time: in this process by a claim
	// (a second waits, then finds it committed), across processes by the
	// claim its lock records.
	release, err := r.claim(ctx, p.ID())
	if err != nil {
		return Summary{}, fmt.Errorf("backup %s: %w", p.ID(), err)
	}
	defer release()
	lock, err := r.lockFor(ctx, false, p.ID().String())
	if err != nil {
		return Summary{}, fmt.Errorf("backup %s: %w", p.ID(), err)
	}
	defer lock.release()
	if err := r.upgradeConfig(ctx, formatVersion); err != nil {
		return Summary{}, err
	}
	// Under the shared lock no prune removes a pack: what the refreshed
	// index holds exists until the snapshot is committed.
	if err := r.refreshIndex(ctx); err != nil {
		return Summary{}, fmt.Errorf("backup %s: %w", p.ID(), err)
	}
	b := &backupRun{r: r, ctx: ctx, lock: lock, progress: progress, pk: newPacker(ctx, r)}
	if err := b.snapshot(p); err != nil {
		// What was uploaded is indexed for the next run, as far as the
		// backend lets (else the next run reads the packs' headers).
		b.pk.finish()
		return Summary{}, fmt.Errorf("backup %s: %w", p.ID(), err)
	}
	s := Summary{ID: p.ID(), Read: b.read.Load(), New: b.newBytes.Load(), Stored: b.pk.stored.Load(), Reused: b.reused.Load(), Duration: time.Since(start)}
	return s, nil
}

type backupRun struct {
	r        *Repository
	ctx      context.Context
	lock     *heldLock
	progress pe.Progress
	pk       *packer
	read     atomic.Int64
	newBytes atomic.Int64
	reused   atomic.Int64
}

// component backs up a component unless it is committed already.
func (b *backupRun) component(c pe.ProtectedEntity) error {
	release, err := b.r.claim(b.ctx, c.ID())
	if err != nil {
		return err
	}
	defer release()
	if done, err := b.r.committed(b.ctx, c.ID()); err != nil || done {
		return err
	}
	return b.snapshot(c)
}

// claim makes this process's backups of snapshot id take turns: it waits
// for one running and returns the function that ends this one's turn.
func (r *Repository) claim(ctx context.Context, id pe.ID) (release func(), err error) {
	for {
		r.claimMu.Lock()
		running, ok := r.claims[id.String()]
		if !ok {
			done := make(chan struct{})
			r.claims[id.String()] = done
			r.claimMu.Unlock()
			return func() {
				r.claimMu.Lock()
				delete(r.claims, id.String())
				r.claimMu.Unlock()
				close(done)
			}, nil
		}
		r.claimMu.Unlock()
		select {
		case <-running:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// committed reports whether snapshot id is in the repository; an error
// of the backend is an error (not a reason to write over it).
func (r *Repository) committed(ctx context.Context, id pe.ID) (bool, error) {
	_, err := r.be.Stat(ctx, snapshotDir(id)+"/info")
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, backend.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("snapshot %s: %w", id, err)
	}
}

// snapshot backs up one PE snapshot: components first, then its data and
// metadata; its info is written last.
func (b *backupRun) snapshot(p pe.ProtectedEntity) error {
	ctx, id := b.ctx, p.ID()
	if done, err := b.r.committed(ctx, id); err != nil {
		return err
	} else if done {
		return fmt.Errorf("%s: %w in %s", id, ErrExists, b.r.Location())
	}
	info, err := p.Info(ctx)
	if err != nil {
		return err
	}
	info.ID = id // what the snapshot is named in the repository, whatever the PE says
	idx := &snapshotIndex{ID: id.String(), BackedUp: b.r.now().UTC()}
	comps, err := p.Components(ctx)
	if err != nil {
		return err
	}
	for _, c := range comps {
		if err := b.component(c); err != nil {
			return fmt.Errorf("component %s: %w", c.ID(), err)
		}
		idx.Components = append(idx.Components, c.ID().String())
	}

	img, err := p.Data(ctx)
	switch {
	case errors.Is(err, pe.ErrNoData):
	case err != nil:
		return err
	default:
		defer img.Close()
		if toc, ok := img.(pe.TableOfContents); ok {
			idx.Chunking = chunkingCDC
			if idx.TOC, err = toc.TOC(ctx); err != nil {
				return err
			}
			if idx.Data, err = b.cdcStream(pe.NewReader(img), img.Size()); err != nil {
				return err
			}
		} else {
			idx.Chunking = chunkingFixed
			if idx.Data, err = b.fixedStream(p, img); err != nil {
				return err
			}
		}
	}
	md, err := p.Metadata(ctx)
	switch {
	case errors.Is(err, pe.ErrNoMetadata):
	case err != nil:
		return err
	default:
		idx.Metadata, err = b.cdcStream(md, -1)
		md.Close()
		if err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
	}
	// Packs and their index first, then the snapshot's index, then its
	// info: a snapshot is committed only when all it needs is there.
	if err := b.pk.finish(); err != nil {
		return err
	}
	// The lock still held proves that no prune ran since the index was
	// refreshed, unless a pruner failed to see it (a listing that lags):
	// the locks are listed again, and the packs the snapshot takes from
	// before this run confirmed.
	if err := b.lock.recheck(ctx); err != nil {
		return err
	}
	if err := b.confirmPacks(idx); err != nil {
		return err
	}
	return b.r.saveSnapshot(ctx, id, idx, snapshotInfo{Info: info, BackedUp: idx.BackedUp})
}

// statMax is how many packs a commit confirms one by one; more are
// confirmed by a listing of data/.
const statMax = 256

// confirmPacks checks that the packs the snapshot names that this run did
// not upload exist: no prune removed them since the index was refreshed.
func (b *backupRun) confirmPacks(idx *snapshotIndex) error {
	need := map[string]bool{}
	for _, st := range []*stream{idx.Data, idx.Metadata} {
		if st == nil {
			continue
		}
		for _, c := range st.Chunks {
			if !need[c.Pack] && !b.pk.uploaded(c.Pack) {
				need[c.Pack] = true
			}
		}
	}
	if len(need) > statMax {
		present, err := b.r.listPacks(b.ctx)
		if err != nil {
			return fmt.Errorf("confirm packs: %w", err)
		}
		for p := range need {
			if _, ok := present[p]; !ok {
				return packRemoved(p)
			}
		}
		return nil
	}
	for p := range need {
		_, err := b.r.be.Stat(b.ctx, packName(p))
		if errors.Is(err, backend.ErrNotExist) {
			return packRemoved(p)
		}
		if err != nil {
			return fmt.Errorf("confirm packs: %w", err)
		}
	}
	return nil
}

func packRemoved(pack string) error {
	return fmt.Errorf("pack %.16s was removed during the backup (a prune that did not see its lock?): %w", pack, ErrLocked)
}

// job is one chunk on its way through hashing, compression and sealing.
type job struct {
	i    int // position in the stream's chunk list
	off  int64
	data []byte
	ref  chunkRef
	skip bool // all zeros: not stored
	err  error
}

// pipeline hashes, encodes and packs chunks on all cores; produce feeds it
// in stream order and refs come back in that order.
func (b *backupRun) pipeline(produce func(send func(off int64, data []byte) error) error) ([]chunkRef, error) {
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *job, workers*2)
	var (
		mu      sync.Mutex
		results []*job
		wg      sync.WaitGroup
		failed  atomic.Bool
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var enc []byte
			for j := range jobs {
				if failed.Load() {
					continue
				}
				j.err = b.storeChunk(j, &enc)
				if j.err != nil {
					failed.Store(true)
				}
				if b.progress != nil {
					b.progress.Add(int64(len(j.data)))
				}
				j.data = nil
			}
		}()
	}
	n := 0
	perr := produce(func(off int64, data []byte) error {
		if failed.Load() {
			return errors.New("stopped")
		}
		j := &job{i: n, off: off, data: data}
		n++
		mu.Lock()
		results = append(results, j)
		mu.Unlock()
		select {
		case jobs <- j:
			return nil
		case <-b.ctx.Done():
			return b.ctx.Err()
		}
	})
	close(jobs)
	wg.Wait()
	for _, j := range results {
		if j.err != nil {
			return nil, j.err
		}
	}
	if perr != nil {
		return nil, perr
	}
	refs := make([]chunkRef, 0, len(results))
	for _, j := range results {
		if !j.skip {
			refs = append(refs, j.ref)
		}
	}
	return refs, nil
}

// storeChunk hashes a chunk and stores it unless the repository has it.
func (b *backupRun) storeChunk(j *job, enc *[]byte) error {
	b.read.Add(int64(len(j.data)))
	if isZero(j.data) {
		j.skip = true
		return nil
	}
	id := chunkID(j.data)
	j.ref = chunkRef{Off: j.off, Len: int64(len(j.data)), ID: id}
	// Where a stored chunk is, is taken when it is found: the snapshot
	// refers to the pack dedup chose, whatever the index learns later.
	loc, stored, pending := b.pk.lookup(id)
	if !stored && !pending {
		*enc = b.r.encode((*enc)[:0], j.data, []byte(id))
		var added bool
		var err error
		loc, added, err = b.pk.add(id, int64(len(j.data)), append([]byte(nil), *enc...))
		if err != nil {
			return err
		}
		if added {
			b.newBytes.Add(int64(len(j.data)))
		}
	}
	if loc.Pack != "" {
		j.ref.Pack, j.ref.POff, j.ref.PLen = loc.Pack, loc.Off, loc.Len
	}
	return nil
}

// complete waits for a stream's chunks to be uploaded (after the pipeline
// ended with err) and fills in where each was packed.
func (b *backupRun) complete(refs []chunkRef, err error) error {
	if err != nil {
		return err
	}
	if err := b.pk.finish(); err != nil {
		return err
	}
	return b.resolve(refs)
}

// resolve fills in where this backup packed each chunk that was not
// stored before it, once all are uploaded.
func (b *backupRun) resolve(refs []chunkRef) error {
	for i := range refs {
		if refs[i].Pack != "" {
			continue
		}
		loc, stored, _ := b.pk.lookup(refs[i].ID)
		if !stored {
			return fmt.Errorf("chunk %.16s was not stored", refs[i].ID)
		}
		refs[i].Pack, refs[i].POff, refs[i].PLen = loc.Pack, loc.Off, loc.Len
	}
	return nil
}

// cdcStream stores a stream cut by content; size < 0 if unknown.
func (b *backupRun) cdcStream(rd io.Reader, size int64) (*stream, error) {
	if b.progress != nil && size >= 0 {
		b.progress.Start(size)
	}
	var total int64
	refs, err := b.pipeline(func(send func(int64, []byte) error) error {
		c := newChunker(rd)
		for {
			if err := b.ctx.Err(); err != nil {
				return err
			}
			chunk, err := c.next(nil)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := send(total, chunk); err != nil {
				return err
			}
			total += int64(len(chunk))
		}
	})
	if err := b.complete(refs, err); err != nil {
		return nil, err
	}
	return &stream{Size: total, Chunks: refs}, nil
}

// fixedStream stores a disk image in aligned chunks. Holes and zero
// ranges are not read; chunks that did not change since the PE's previous
// snapshot in the repository are taken from it unread, where the image
// can tell.
func (b *backupRun) fixedStream(p pe.ProtectedEntity, img pe.Image) (*stream, error) {
	ctx, cs, size := b.ctx, b.r.cfg.ChunkSize, img.Size()
	if b.progress != nil {
		b.progress.Start(size)
	}
	unchanged, prev := b.unchanged(p, img)
	exts, err := img.Extents(ctx, 0, size)
	if err != nil {
		return nil, err
	}
	var reused []chunkRef
	refs, err := b.pipeline(func(send func(int64, []byte) error) error {
		ei := 0
		for off := int64(0); off < size; off += cs {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(cs, size-off)
			for ei < len(exts) && exts[ei].End() <= off {
				ei++
			}
			if !overlapsData(exts[ei:], off, off+n) {
				if b.progress != nil {
					b.progress.Add(n)
				}
				continue // a hole or zeros: nothing to store
			}
			if unchanged != nil && unchanged(off, n) {
				// Unchanged zeros, or a chunk of the previous snapshot in
				// a pack that exists: nothing to read. (A pack that went
				// missing is read and stored again.)
				ref, ok := prev[off]
				reuse := ok && ref.Len == n && b.r.idx.hasPack(ref.Pack)
				if reuse {
					reused = append(reused, ref)
					b.reused.Add(n)
				}
				if !ok || reuse {
					if b.progress != nil {
						b.progress.Add(n)
					}
					continue
				}
			}
			buf := make([]byte, n)
			if _, err := img.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF)) {
				return fmt.Errorf("read at %d: %w", off, err)
			}
			if err := send(off, buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err := b.complete(refs, err); err != nil {
		return nil, err
	}
	refs = append(refs, reused...)
	sort.Slice(refs, func(i, j int) bool { return refs[i].Off < refs[j].Off })
	return &stream{Size: size, Chunks: refs}, nil
}

func overlapsData(exts []pe.Extent, from, to int64) bool {
	for _, e := range exts {
		if e.Offset >= to {
			return false
		}
		if e.End() > from && e.Kind == pe.ExtentData {
			return true
		}
	}
	return false
}

// unchanged returns, where the image tracks changes and the PE has an
// earlier snapshot in the repository whose source snapshot still exists,
// a test of whether a range changed since, and that snapshot's chunks.
func (b *backupRun) unchanged(p pe.ProtectedEntity, img pe.Image) (func(off, n int64) bool, map[int64]chunkRef) {
	ct, ok := img.(pe.ChangeTracker)
	if !ok {
		return nil, nil
	}
	snaps, err := b.r.Snapshots(b.ctx, p.ID().Base())
	if err != nil || len(snaps) == 0 {
		return nil, nil
	}
	// The newest earlier snapshot that was chunked the same way. Earlier
	// by the PEs' snapshot times where both have one: snapshot names of
	// vSphere (uuids, morefs) do not sort by time.
	cur, _ := p.Info(b.ctx)
	for i := len(snaps) - 1; i >= 0; i-- {
		prevID, prevCreated := snaps[i].ID, snaps[i].Info.Created
		if cur.Created != nil && prevCreated != nil {
			if !prevCreated.Before(*cur.Created) {
				continue
			}
		} else if prevID.Snapshot() >= p.ID().Snapshot() {
			continue
		}
		idx, _, err := b.r.loadSnapshot(b.ctx, prevID)
		if err != nil || idx.Chunking != chunkingFixed || idx.Data == nil || idx.Data.Size != img.Size() {
			continue
		}
		changed, err := ct.ChangedSince(b.ctx, prevID.Snapshot())
		if errors.Is(err, pe.ErrNotFound) {
			// Its source snapshot is gone (deleted, or taken
			// elsewhere): an older one may still be there.
			continue
		}
		if err != nil {
			b.r.log.Info("no changed-block tracking for this backup; reading all", "snapshot", p.ID(), "base", prevID, "err", err)
			return nil, nil
		}
		// The previous chunks must still be in the repository (a prune
		// may have removed packs of forgotten snapshots, not of this one).
		prev := make(map[int64]chunkRef, len(idx.Data.Chunks))
		for _, c := range idx.Data.Chunks {
			prev[c.Off] = c
		}
		sort.Slice(changed, func(i, j int) bool { return changed[i].Offset < changed[j].Offset })
		return func(off, n int64) bool {
			i := sort.Search(len(changed), func(i int) bool { return changed[i].End() > off })
			return i == len(changed) || changed[i].Offset >= off+n
		}, prev
	}
	return nil, nil
}

var zeroChunk = make([]byte, 1<<20)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroChunk))
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
