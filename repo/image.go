package repo

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// OpenSnapshot opens a repository snapshot as a read-only PE: its data is
// random access (a bounded chunk cache in front of the packs), so it can
// be restored with a TypeManager's Copy or served over NBD and FUSE as it
// is.
func (r *Repository) OpenSnapshot(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	idx, si, err := r.loadSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	return &snapshotPE{r: r, id: id, idx: idx, info: si.Info}, nil
}

type snapshotPE struct {
	r    *Repository
	id   pe.ID
	idx  *snapshotIndex
	info pe.Info
}

var _ pe.ProtectedEntity = (*snapshotPE)(nil)

func (s *snapshotPE) ID() pe.ID { return s.id }

func (s *snapshotPE) Info(ctx context.Context) (pe.Info, error) { return s.info, nil }

func (s *snapshotPE) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	return pe.ID{}, fmt.Errorf("snapshot %s: a repository snapshot is one already: %w", s.id, pe.ErrNotSupported)
}

func (s *snapshotPE) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return s.r.SnapshotIDs(ctx, s.id.Base())
}

func (s *snapshotPE) DeleteSnapshot(ctx context.Context, snapshot string) error {
	return s.r.Forget(ctx, s.id.WithSnapshot(snapshot))
}

func (s *snapshotPE) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	p, err := s.r.OpenSnapshot(ctx, s.id.WithSnapshot(snapshot))
	if err != nil {
		return pe.Info{}, err
	}
	return p.Info(ctx)
}

func (s *snapshotPE) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	var out []pe.ProtectedEntity
	for _, c := range s.idx.Components {
		id, err := pe.ParseID(c)
		if err != nil {
			return nil, fmt.Errorf("component of %s: %w", s.id, err)
		}
		p, err := s.r.OpenSnapshot(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("component of %s: %w", s.id, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func (s *snapshotPE) Data(ctx context.Context) (pe.Image, error) {
	if s.idx.Data == nil {
		return nil, fmt.Errorf("data of %s: %w", s.id, pe.ErrNoData)
	}
	img := newStreamImage(s.r, s.idx.Data, cacheBytes)
	if s.idx.TOC != nil {
		return &tocImage{img, s.idx.TOC}, nil
	}
	return img, nil
}

func (s *snapshotPE) Metadata(ctx context.Context) (io.ReadCloser, error) {
	if s.idx.Metadata == nil {
		return nil, fmt.Errorf("metadata of %s: %w", s.id, pe.ErrNoMetadata)
	}
	img := newStreamImage(s.r, s.idx.Metadata, 2)
	return struct {
		io.Reader
		io.Closer
	}{pe.NewReader(img), img}, nil
}

func (s *snapshotPE) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	return fmt.Errorf("overwrite %s: repository snapshots are read-only: %w", s.id, pe.ErrNotSupported)
}

// cacheBytes bounds the decoded chunks an open image keeps: 64 of a
// disk's 1 MiB chunks, fewer of a stream's larger ones.
const cacheBytes = 64 << 20

// streamImage is a chunked stream as a pe.Image. Sequential reads (a
// restore, dd through FUSE, an NBD copy) make it fetch the next chunks in
// the background, so that decrypting and decompressing overlap the reads.
type streamImage struct {
	r     *Repository
	st    *stream
	cache *chunkCache
	// ctx lives as long as the image: for reads without one of their
	// own and for fetching ahead; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	inflight map[string]chan struct{} // chunks being fetched
	next     int                      // chunk a sequential reader wants next
	end      int64                    // where the last read ended
	fetching int                      // background fetches running
	bg       sync.WaitGroup           // the background fetches, for Close
}

// readahead is how many chunks a sequential reader has fetched ahead.
const readahead = 4

var (
	_ pe.Image           = (*streamImage)(nil)
	_ pe.ContextReaderAt = (*streamImage)(nil)
)

func newStreamImage(r *Repository, st *stream, cachedBytes int) *streamImage {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamImage{r: r, st: st, cache: newChunkCache(cachedBytes), ctx: ctx, cancel: cancel}
}

func (im *streamImage) Size() int64 { return im.st.Size }

// Close stops the background fetches and waits for them: none outlives
// the image (nor uses a Repository closed after it).
func (im *streamImage) Close() error {
	im.cancel()
	im.bg.Wait()
	return nil
}

// ReadAt implements pe.Image; ranges without chunks read as zeros.
func (im *streamImage) ReadAt(p []byte, off int64) (int, error) {
	return im.ReadAtContext(im.ctx, p, off)
}

// ReadAtContext implements pe.ContextReaderAt: a read given up stops
// fetching its chunks.
func (im *streamImage) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", off)
	}
	if off >= im.st.Size {
		return 0, io.EOF
	}
	want := len(p)
	var short error
	if int64(want) > im.st.Size-off {
		want, short = int(im.st.Size-off), io.EOF
	}
	p = p[:want]
	im.mu.Lock()
	// A read where the last one ended goes on reading forward, however
	// small its reads; one elsewhere in the chunk just read does not (a
	// random reader reading a block again must not fetch ahead).
	contiguous := off == im.end
	im.end = off + int64(want)
	im.mu.Unlock()
	cs := im.st.Chunks
	i := sort.Search(len(cs), func(i int) bool { return cs[i].Off+cs[i].Len > off })
	pos := 0
	for pos < want {
		at := off + int64(pos)
		if i >= len(cs) || cs[i].Off >= off+int64(want) {
			clear(p[pos:])
			break
		}
		c := cs[i]
		if c.Off > at {
			n := int(min(c.Off-at, int64(want-pos)))
			clear(p[pos : pos+n])
			pos += n
			continue
		}
		data, err := im.chunk(ctx, c)
		if err != nil {
			return pos, err
		}
		pos += copy(p[pos:], data[at-c.Off:])
		im.sequential(i, contiguous)
		contiguous = true // within one read, the next chunk follows on
		i++
	}
	return want, short
}

// sequential notes a read of chunk i and, when reads go forward chunk by
// chunk (the next chunk, or the same one read on where the last read
// ended: contiguous), fetches the following chunks in the background.
// Several readers going forward at once (NBD requests in flight) read
// chunks about in order, so the next chunk counts whatever the offset.
func (im *streamImage) sequential(i int, contiguous bool) {
	im.mu.Lock()
	defer im.mu.Unlock()
	seq := i == im.next || (contiguous && i == im.next-1)
	im.next = i + 1
	if !seq {
		return
	}
	cs := im.st.Chunks
	for j := i + 1; j < min(i+1+readahead, len(cs)) && im.fetching < readahead; j++ {
		c := cs[j]
		if _, busy := im.inflight[c.ID]; busy {
			continue
		}
		if _, ok := im.cache.get(c.ID); ok {
			continue
		}
		im.fetching++
		im.bg.Add(1)
		go func() {
			defer im.bg.Done()
			im.chunk(im.ctx, c) // an error shows when the reader gets there
			im.mu.Lock()
			im.fetching--
			im.mu.Unlock()
		}()
	}
}

// chunk returns a chunk from the cache, or fetches it once however many
// readers want it at the same time. A reader that gives up waiting, or
// whose fetch is given up, leaves the chunk to the others to fetch.
func (im *streamImage) chunk(ctx context.Context, c chunkRef) ([]byte, error) {
	for {
		if b, ok := im.cache.get(c.ID); ok {
			return b, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		im.mu.Lock()
		if im.inflight == nil {
			im.inflight = map[string]chan struct{}{}
		}
		wait, busy := im.inflight[c.ID]
		if !busy {
			done := make(chan struct{})
			im.inflight[c.ID] = done
			im.mu.Unlock()
			b, err := im.r.loadChunk(ctx, c, false)
			if err == nil {
				im.cache.put(c.ID, b)
			}
			im.mu.Lock()
			delete(im.inflight, c.ID)
			im.mu.Unlock()
			close(done)
			return b, err
		}
		im.mu.Unlock()
		select { // then take it from the cache, or fetch it if that failed
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Extents implements pe.Image: chunks are data, the rest holes.
func (im *streamImage) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, im.st.Size)
	if !ok {
		return nil, nil
	}
	end := off + length
	var out []pe.Extent
	add := func(from, to int64, k pe.ExtentKind) {
		from, to = max(from, off), min(to, end)
		if from < to {
			out = append(out, pe.Extent{Offset: from, Length: to - from, Kind: k})
		}
	}
	cs := im.st.Chunks
	pos := off
	for i := sort.Search(len(cs), func(i int) bool { return cs[i].Off+cs[i].Len > off }); i < len(cs) && cs[i].Off < end; i++ {
		add(pos, cs[i].Off, pe.ExtentHole)
		add(cs[i].Off, cs[i].Off+cs[i].Len, pe.ExtentData)
		pos = cs[i].Off + cs[i].Len
	}
	add(pos, end, pe.ExtentHole)
	return pe.MergeExtents(out), nil
}

// tocImage is the image of an fs snapshot: its table of contents was
// stored with it, so its files can be listed without reading the tar.
type tocImage struct {
	*streamImage
	toc []pe.TOCEntry
}

func (t *tocImage) TOC(ctx context.Context) ([]pe.TOCEntry, error) { return t.toc, nil }

// chunkCache is a small LRU of decoded chunks, bounded in bytes, safe for
// concurrent use. The newest chunk stays even past the bound, so that
// a reader always finds what it just fetched.
type chunkCache struct {
	mu    sync.Mutex
	max   int // bytes
	size  int // bytes held
	ll    *list.List
	items map[string]*list.Element
}

type cacheItem struct {
	id   string
	data []byte
}

func newChunkCache(maxBytes int) *chunkCache {
	return &chunkCache{max: maxBytes, ll: list.New(), items: map[string]*list.Element{}}
}

func (c *chunkCache) get(id string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[id]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheItem).data, true
	}
	return nil, false
}

func (c *chunkCache) put(id string, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[id]; ok {
		return
	}
	c.items[id] = c.ll.PushFront(&cacheItem{id, data})
	c.size += len(data)
	for c.size > c.max && c.ll.Len() > 1 {
		e := c.ll.Back()
		c.ll.Remove(e)
		it := e.Value.(*cacheItem)
		delete(c.items, it.id)
		c.size -= len(it.data)
	}
}
