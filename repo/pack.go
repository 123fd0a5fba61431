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
	"sync"
	"sync/atomic"
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

// packStore is what a packer needs of its repository: where chunks are
// stored already, sealing, storing packs and index files, and being told
// of each pack uploaded, so that other backups find its chunks at once.
type packStore interface {
	lookup(chunk string) (blobLoc, bool)
	sealJSON(v any, aad []byte) ([]byte, error)
	savePack(ctx context.Context, id string, data []byte) error
	packUploaded(id string, blobs []packBlob)
	saveIndexFile(ctx context.Context, f indexFile) error
}

// packer collects encoded chunks into packs and uploads them in the
// background, a few at a time. It is one backup's: it knows where the
// chunks it stored are.
type packer struct {
	store   packStore
	ctx     context.Context
	mu      sync.Mutex
	buf     bytes.Buffer
	blobs   []packBlob
	pending map[string]bool    // chunk IDs in packs not yet uploaded
	where   map[string]blobLoc // chunks this packer uploaded
	packs   map[string]bool    // packs this packer uploaded
	done    []indexPack        // packs uploaded, not yet in an index file
	sem     chan struct{}
	wg      sync.WaitGroup
	err     error
	stored  atomic.Int64 // bytes uploaded
}

func newPacker(ctx context.Context, store packStore) *packer {
	return &packer{store: store, ctx: ctx, pending: map[string]bool{}, where: map[string]blobLoc{}, packs: map[string]bool{}, sem: make(chan struct{}, maxUploads)}
}

// lookup says where a chunk is stored, by this packer or before it, or
// whether it is on its way in one of this packer's packs.
func (p *packer) lookup(id string) (loc blobLoc, stored, pending bool) {
	p.mu.Lock()
	loc, stored = p.where[id]
	pending = p.pending[id]
	p.mu.Unlock()
	if stored || pending {
		return loc, stored, pending
	}
	loc, stored = p.store.lookup(id)
	return loc, stored, false
}

// add stores an encoded chunk unless it is there already. It returns
// where the chunk is if it was found stored meanwhile, and whether it
// was new.
func (p *packer) add(id string, raw int64, enc []byte) (blobLoc, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return blobLoc{}, false, p.err
	}
	if loc, ok := p.where[id]; ok {
		return loc, false, nil
	}
	if p.pending[id] {
		return blobLoc{}, false, nil
	}
	if loc, ok := p.store.lookup(id); ok {
		return loc, false, nil
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
	return blobLoc{}, true, nil
}

// closeLocked closes the current pack (p.mu is held) and returns the
// function that uploads it, to be called without the lock.
func (p *packer) closeLocked() func() {
	if len(p.blobs) == 0 {
		return func() {}
	}
	blobs := p.blobs
	hdr, err := p.store.sealJSON(blobs, nil)
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

// upload stores a pack, a few at a time, and reports it.
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
		err := p.store.savePack(p.ctx, id, data)
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
		p.packs[id] = true
		for _, b := range blobs {
			p.where[b.ID] = blobLoc{Pack: id, Off: b.Off, Len: b.Len, Raw: b.Raw}
			delete(p.pending, b.ID)
		}
		p.store.packUploaded(id, blobs)
	}()
}

// uploaded reports whether this packer uploaded the pack.
func (p *packer) uploaded(pack string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.packs[pack]
}

// finish uploads the last pack, waits for all, and writes an index file
// for the new packs: also when an upload failed, for those uploaded, so
// that the next backup finds them without reading their headers.
func (p *packer) finish() error {
	p.mu.Lock()
	upload := p.closeLocked()
	p.mu.Unlock()
	upload()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.done) > 0 {
		if err := p.store.saveIndexFile(p.ctx, indexFile{Packs: p.done}); err != nil {
			return errors.Join(p.err, err)
		}
		p.done = nil
	}
	return p.err
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
