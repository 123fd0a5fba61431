package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// packTarget is the size at which a pack is closed and uploaded.
const packTarget = 16 << 20

// maxUploads bounds packs uploading at once.
const maxUploads = 4

// blobLoc is where a chunk is stored.
type blobLoc struct {
	Pack string `json:"p"`
	Off  int64  `json:"o"`
	Len  int64  `json:"l"` // stored (sealed) bytes
	Raw  int64  `json:"r"` // chunk bytes
}

// packBlob is one entry of a pack header and an index file.
type packBlob struct {
	ID  string `json:"id"`
	Off int64  `json:"o"`
	Len int64  `json:"l"`
	Raw int64  `json:"r"`
}

type indexPack struct {
	ID    string     `json:"id"`
	Blobs []packBlob `json:"blobs"`
}

type indexFile struct {
	Packs []indexPack `json:"packs"`
}

// packer collects encoded chunks into packs and uploads them in the
// background, a few at a time.
type packer struct {
	r       *Repository
	ctx     context.Context
	mu      sync.Mutex
	buf     bytes.Buffer
	blobs   []packBlob
	pending map[string]bool // chunk IDs in packs not yet uploaded
	done    []indexPack     // packs uploaded
	sem     chan struct{}
	wg      sync.WaitGroup
	err     error
	stored  atomic.Int64 // bytes uploaded
}

func (r *Repository) newPacker(ctx context.Context) *packer {
	return &packer{r: r, ctx: ctx, pending: map[string]bool{}, sem: make(chan struct{}, maxUploads)}
}

// has reports whether the chunk is stored or on its way.
func (p *packer) has(id string) bool {
	p.r.mu.Lock()
	_, ok := p.r.idx[id]
	p.r.mu.Unlock()
	if ok {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pending[id]
}

// add stores an encoded chunk unless it is there already; it reports
// whether it was new.
func (p *packer) add(id string, raw int64, enc []byte) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return false, p.err
	}
	if p.pending[id] {
		return false, nil
	}
	p.r.mu.Lock()
	_, known := p.r.idx[id]
	p.r.mu.Unlock()
	if known {
		return false, nil
	}
	p.pending[id] = true
	p.blobs = append(p.blobs, packBlob{ID: id, Off: int64(p.buf.Len()), Len: int64(len(enc)), Raw: raw})
	p.buf.Write(enc)
	if p.buf.Len() >= packTarget {
		upload := p.closeLocked()
		// Waiting for an upload slot must not hold the lock the uploads
		// take to finish.
		p.mu.Unlock()
		upload()
		p.mu.Lock()
	}
	return true, nil
}

// closeLocked closes the current pack (p.mu is held) and returns the
// function that uploads it, to be called without the lock.
func (p *packer) closeLocked() func() {
	if len(p.blobs) == 0 {
		return func() {}
	}
	blobs := p.blobs
	hdr, err := p.r.sealJSON(blobs, nil)
	if err != nil {
		p.err = err
		return func() {}
	}
	data := append(p.buf.Bytes(), hdr...)
	data = binary.LittleEndian.AppendUint32(data, uint32(len(hdr)))
	sum := sha256.Sum256(data)
	id := hex.EncodeToString(sum[:])
	p.buf = bytes.Buffer{}
	p.blobs = nil
	p.wg.Add(1)
	return func() { p.upload(id, data, blobs) }
}

// upload stores a pack, a few at a time, and indexes its chunks.
func (p *packer) upload(id string, data []byte, blobs []packBlob) {
	p.sem <- struct{}{}
	go func() {
		defer p.wg.Done()
		defer func() { <-p.sem }()
		p.mu.Lock()
		failed := p.err != nil
		p.mu.Unlock()
		if failed {
			return // the backup has failed: do not retry into a dead server
		}
		err := p.r.be.Save(p.ctx, packName(id), bytes.NewReader(data), int64(len(data)))
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			if p.err == nil {
				p.err = fmt.Errorf("upload pack %.16s: %w", id, err)
			}
			return
		}
		p.stored.Add(int64(len(data)))
		p.done = append(p.done, indexPack{ID: id, Blobs: blobs})
		p.r.mu.Lock()
		for _, b := range blobs {
			p.r.idx[b.ID] = blobLoc{Pack: id, Off: b.Off, Len: b.Len, Raw: b.Raw}
			delete(p.pending, b.ID)
		}
		p.r.mu.Unlock()
	}()
}

// finish uploads the last pack, waits for all, and writes an index file
// for the new packs.
func (p *packer) finish() error {
	p.mu.Lock()
	upload := p.closeLocked()
	p.mu.Unlock()
	upload()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if len(p.done) == 0 {
		return nil
	}
	if err := p.r.saveJSON(p.ctx, "index/"+randomName(), indexFile{Packs: p.done}); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	p.r.mu.Lock()
	for _, ip := range p.done {
		p.r.indexed[ip.ID] = true
	}
	p.r.mu.Unlock()
	p.done = nil
	return nil
}

// loadIndex reads every index file, then indexes packs no index file
// lists (left by an interrupted backup, or listed by a damaged index
// file) from their own headers, so that what they hold is not uploaded
// again. Damaged index files are replaced that way and removed, with a
// warning; entries for packs that are gone are dropped, so that no new
// snapshot refers to them.
func (r *Repository) loadIndex(ctx context.Context) error {
	files, damaged, err := r.readIndexFiles(ctx)
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	idx := map[string]blobLoc{}
	indexed := map[string]bool{}
	for _, f := range files {
		for _, p := range f.Packs {
			indexed[p.ID] = true
			for _, b := range p.Blobs {
				idx[b.ID] = blobLoc{Pack: p.ID, Off: b.Off, Len: b.Len, Raw: b.Raw}
			}
		}
	}
	present := map[string]bool{}
	var orphans []indexPack
	err = r.be.List(ctx, "data/", func(name string, size int64) error {
		id := name[strings.LastIndex(name, "/")+1:]
		present[id] = true
		if indexed[id] || !validID(id) {
			return nil
		}
		blobs, err := r.packHeader(ctx, id, size)
		if err != nil {
			r.log.Warn("pack without index and with a bad header: ignored (prune removes it)", "pack", id, "err", err)
			return nil
		}
		orphans = append(orphans, indexPack{ID: id, Blobs: blobs})
		for _, b := range blobs {
			idx[b.ID] = blobLoc{Pack: id, Off: b.Off, Len: b.Len, Raw: b.Raw}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	missing := map[string]bool{}
	for id, loc := range idx {
		if !present[loc.Pack] {
			missing[loc.Pack] = true
			delete(idx, id)
		}
	}
	if len(missing) > 0 {
		r.log.Warn("the index lists packs that are missing: what they held is stored again (run 'astrolabe repo check')", "packs", len(missing))
	}
	if len(orphans) > 0 {
		r.log.Info("indexed packs from their headers", "packs", len(orphans))
		if err := r.saveJSON(ctx, "index/"+randomName(), indexFile{Packs: orphans}); err != nil {
			return err
		}
		for _, o := range orphans {
			indexed[o.ID] = true
		}
	}
	// Their packs are indexed again now: the damaged files can go.
	for _, name := range slices.Sorted(maps.Keys(damaged)) {
		r.log.Warn("index file is damaged: replaced by an index read from the pack headers", "file", name, "err", damaged[name])
		if err := r.be.Remove(ctx, name); err != nil {
			return fmt.Errorf("remove damaged index file: %w", err)
		}
	}
	r.mu.Lock()
	r.idx, r.indexed = idx, indexed
	r.mu.Unlock()
	return nil
}

// readIndexFiles reads every index file. Those that do not open or hold
// nonsense (truncated, damaged) come back apart with the reason; errors
// of the backend are errors.
func (r *Repository) readIndexFiles(ctx context.Context) (map[string]indexFile, map[string]error, error) {
	var names []string
	if err := r.be.List(ctx, "index/", func(name string, _ int64) error {
		names = append(names, name)
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("list index: %w", err)
	}
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

// parseIndexFile opens a stored index file and checks that what it says
// can be used: pack and chunk IDs, positions.
func (r *Repository) parseIndexFile(b []byte) (indexFile, error) {
	var f indexFile
	if err := r.openJSON(b, &f, nil); err != nil {
		return f, err
	}
	for _, p := range f.Packs {
		if !validID(p.ID) {
			return f, fmt.Errorf("bad pack ID %q", p.ID)
		}
		if err := validBlobs(p.Blobs, -1); err != nil {
			return f, fmt.Errorf("pack %.16s: %w", p.ID, err)
		}
	}
	return f, nil
}

// validID reports whether s is a pack or chunk ID: a hex SHA-256.
func validID(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// validBlobs checks a pack's list of blobs: IDs, and positions within
// the first end bytes (end < 0: anywhere).
func validBlobs(blobs []packBlob, end int64) error {
	for _, b := range blobs {
		if !validID(b.ID) {
			return fmt.Errorf("bad chunk ID %q", b.ID)
		}
		if b.Off < 0 || b.Len <= 0 || b.Raw < 0 || end >= 0 && b.Off+b.Len > end {
			return fmt.Errorf("chunk %.16s at %d+%d: out of place", b.ID, b.Off, b.Len)
		}
	}
	return nil
}

// packHeader reads the list of blobs at the end of a pack.
func (r *Repository) packHeader(ctx context.Context, id string, size int64) ([]packBlob, error) {
	if size < 4 {
		return nil, errors.New("pack too short")
	}
	rc, err := r.be.Load(ctx, packName(id), size-4, 4)
	if err != nil {
		return nil, err
	}
	var l [4]byte
	_, err = ioReadFull(rc, l[:])
	rc.Close()
	if err != nil {
		return nil, err
	}
	hlen := int64(binary.LittleEndian.Uint32(l[:]))
	if hlen > size-4 || hlen > maxHeader {
		return nil, fmt.Errorf("header length %d in a pack of %d bytes", hlen, size)
	}
	rc, err = r.be.Load(ctx, packName(id), size-4-hlen, hlen)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	sealed := make([]byte, hlen)
	if _, err := ioReadFull(rc, sealed); err != nil {
		return nil, err
	}
	return r.openPackHeader(sealed, size-4-hlen)
}

// maxHeader bounds a pack header's length.
const maxHeader = 64 << 20

// openPackHeader opens a pack's sealed header, which starts at hdrStart.
func (r *Repository) openPackHeader(sealed []byte, hdrStart int64) ([]packBlob, error) {
	var blobs []packBlob
	if err := r.openJSON(sealed, &blobs, nil); err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	if err := validBlobs(blobs, hdrStart); err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return blobs, nil
}

// parsePack splits a whole pack into its header's blobs and where the
// header starts.
func (r *Repository) parsePack(data []byte) ([]packBlob, int64, error) {
	size := int64(len(data))
	if size < 4 {
		return nil, 0, errors.New("pack too short")
	}
	hlen := int64(binary.LittleEndian.Uint32(data[size-4:]))
	if hlen > size-4 || hlen > maxHeader {
		return nil, 0, fmt.Errorf("header length %d in a pack of %d bytes", hlen, size)
	}
	start := size - 4 - hlen
	blobs, err := r.openPackHeader(data[start:size-4], start)
	return blobs, start, err
}

func ioReadFull(r io.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }
