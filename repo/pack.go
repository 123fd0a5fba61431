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
	hdr, err := p.r.sealJSON(blobs)
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
// lists (left by an interrupted backup) from their own headers, so that
// what they hold is not uploaded again.
func (r *Repository) loadIndex(ctx context.Context) error {
	idx := map[string]blobLoc{}
	indexed := map[string]bool{}
	var names []string
	if err := r.be.List(ctx, "index/", func(name string, _ int64) error {
		names = append(names, name)
		return nil
	}); err != nil {
		return fmt.Errorf("list index: %w", err)
	}
	for _, name := range names {
		var f indexFile
		if err := r.loadJSON(ctx, name, &f); err != nil {
			if errors.Is(err, backend.ErrNotExist) {
				continue // removed by a concurrent prune's rewrite
			}
			return fmt.Errorf("read index: %w", err)
		}
		for _, p := range f.Packs {
			indexed[p.ID] = true
			for _, b := range p.Blobs {
				idx[b.ID] = blobLoc{Pack: p.ID, Off: b.Off, Len: b.Len, Raw: b.Raw}
			}
		}
	}
	var orphans []indexPack
	err := r.be.List(ctx, "data/", func(name string, size int64) error {
		id := name[strings.LastIndex(name, "/")+1:]
		if indexed[id] {
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
	if len(orphans) > 0 {
		r.log.Info("indexed packs of an interrupted backup", "packs", len(orphans))
		if err := r.saveJSON(ctx, "index/"+randomName(), indexFile{Packs: orphans}); err != nil {
			return err
		}
		for _, o := range orphans {
			indexed[o.ID] = true
		}
	}
	r.mu.Lock()
	r.idx, r.indexed = idx, indexed
	r.mu.Unlock()
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
	if hlen > size-4 || hlen > 64<<20 {
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
	var blobs []packBlob
	if err := r.openJSON(sealed, &blobs); err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	return blobs, nil
}

func ioReadFull(r io.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }
