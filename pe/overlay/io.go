package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func (o *Overlay) has(b int64) bool { return o.bits[b/64].Load()&(1<<(b%64)) != 0 }

// set marks block b as held by the layer, once its data is written there.
func (o *Overlay) set(b int64) {
	mask := uint64(1) << (b % 64)
	if o.bits[b/64].Or(mask)&mask != 0 {
		return
	}
	o.dirtyMu.Lock()
	o.dirty[b/64*8/bitmapPage] = true
	o.dirtyMu.Unlock()
}

func (o *Overlay) blockLen(b int64) int64 {
	_, n := o.blockRange(b)
	return n
}

// blockRange is block b's bytes: the last block may be short.
func (o *Overlay) blockRange(b int64) (off, n int64) {
	off = b * BlockSize
	return off, min(BlockSize, o.size-off)
}

// run returns the end of the run of blocks from b (exclusive, at most
// last+1) that are all held by the layer or all missing, and which.
func (o *Overlay) run(b, last int64) (end int64, held bool) {
	held = o.has(b)
	for end = b + 1; end <= last && o.has(end) == held; end++ {
	}
	return end, held
}

// ReadAt implements io.ReaderAt.
func (o *Overlay) ReadAt(p []byte, off int64) (int, error) {
	return o.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext implements pe.ContextReaderAt: reads of the base (a
// repository's chunk loads) stop when ctx ends.
func (o *Overlay) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", off)
	}
	if off >= o.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > o.size-off {
		p, eof = p[:o.size-off], io.EOF
	}
	done := 0
	last := (off + int64(len(p)) - 1) / BlockSize
	for b := off / BlockSize; done < len(p); {
		end, held := o.run(b, last)
		n := min(int64(len(p)-done), end*BlockSize-(off+int64(done)))
		part := p[done : done+int(n)]
		var err error
		if held {
			_, err = readFull(ctx, o.layer, part, off+int64(done))
		} else {
			if o.opts.OnMiss != nil {
				o.opts.OnMiss(b, end-1)
			}
			_, err = readFull(ctx, o.base, part, off+int64(done))
		}
		if err != nil {
			return done, err
		}
		done += len(part)
		b = end
	}
	return done, eof
}

// readFull reads all of p at off, or fails.
func readFull(ctx context.Context, r io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := pe.ReadAt(ctx, r, p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

// WriteAt implements io.WriterAt. A write into a block the layer lacks
// copies the rest of the block from the base first; a write that fails
// (ENOSPC where the layer lives) leaves such a block missing, reading as
// the base.
func (o *Overlay) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > o.size || int64(len(p)) > o.size-off {
		return 0, fmt.Errorf("write of %d bytes at %d: past the end of the %d-byte image", len(p), off, o.size)
	}
	o.wmu.RLock()
	defer o.wmu.RUnlock()
	if o.frozen {
		return 0, ErrFrozen
	}
	if err := o.broken(); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		b := pos / BlockSize
		start, n := o.blockRange(b)
		part := p[done:min(len(p), int(start+n-off))]
		if err := o.writeBlock(b, pos-start, part, int64(len(part)), nil); err != nil {
			return done, err
		}
		done += len(part)
	}
	return done, nil
}

// writeBlock writes data at in within block b; with data nil, n zeros
// there through zero (the layer's Zero).
func (o *Overlay) writeBlock(b, in int64, data []byte, n int64, zero func(off, n int64) error) error {
	start, size := o.blockRange(b)
	put := func(data []byte, off, n int64) error {
		if data == nil {
			return zero(off, n)
		}
		if _, err := o.layer.WriteAt(data, off); err != nil {
			return fmt.Errorf("overlay write of %d bytes at %d: %w", len(data), off, err)
		}
		return nil
	}
	if o.has(b) {
		return put(data, start+in, n)
	}
	mu := &o.locks[b%lockStripes]
	mu.Lock()
	defer mu.Unlock()
	if o.has(b) {
		return put(data, start+in, n)
	}
	if in != 0 || n != size {
		block := make([]byte, size)
		if _, err := readFull(context.Background(), o.base, block, start); err != nil {
			return fmt.Errorf("copy block %d of the base: %w", b, err)
		}
		if data == nil {
			clear(block[in : in+n])
		} else {
			copy(block[in:], data)
		}
		data, in, n = block, 0, size
	}
	if err := put(data, start, n); err != nil {
		return err
	}
	o.set(b)
	return nil
}

// ErrFrozen is the error of a write into a frozen overlay.
var ErrFrozen = errors.New("the overlay's writes are being kept as a new PE: it takes no more")

// Freeze makes WriteAt and Zero fail with ErrFrozen until Thaw, once the
// writes under way have ended: from then on the overlay reads as its
// writers left it, for a copy of it to be one point in time.
func (o *Overlay) Freeze() {
	o.wmu.Lock()
	o.frozen = true
	o.wmu.Unlock()
}

// Thaw lets writes in again after Freeze.
func (o *Overlay) Thaw() {
	o.wmu.Lock()
	o.frozen = false
	o.wmu.Unlock()
}

// Zero implements pe.WritableImage: whole blocks are zeroed (or punched)
// in the layer, parts of blocks written as zeros.
func (o *Overlay) Zero(off, length int64, punch bool) error {
	if off < 0 || length < 0 || off > o.size || length > o.size-off {
		return fmt.Errorf("zero %d bytes at %d: past the end of the %d-byte image", length, off, o.size)
	}
	o.wmu.RLock()
	defer o.wmu.RUnlock()
	if o.frozen {
		return ErrFrozen
	}
	if err := o.broken(); err != nil {
		return err
	}
	zero := func(off, n int64) error { return o.zeroLayer(off, n, punch) }
	for end := off + length; off < end; {
		b := off / BlockSize
		start, size := o.blockRange(b)
		k := min(end, start+size) - off
		if err := o.writeBlock(b, off-start, nil, k, zero); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// zeroLayer makes [off, off+n) of the layer read as zeros.
func (o *Overlay) zeroLayer(off, n int64, punch bool) error {
	err := o.layer.Zero(off, n, punch)
	if errors.Is(err, errors.ErrUnsupported) {
		_, err = o.layer.WriteAt(make([]byte, n), off)
	}
	if err != nil {
		return fmt.Errorf("overlay zero of %d bytes at %d: %w", n, off, err)
	}
	return nil
}

// broken is the error of a failed sync of the layer, once there was one.
// Linux reports a failed writeback once and drops the pages it could not
// write: a later sync succeeds without them, so no bit may be saved after
// one failed, and nothing more written.
func (o *Overlay) broken() error {
	if err := o.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// Sync makes every completed write durable: the layer first, then the
// bits of the blocks it held before it was synced. After a failed sync
// the overlay keeps what it saved before and takes no more writes.
func (o *Overlay) Sync() error {
	o.syncMu.Lock()
	defer o.syncMu.Unlock()
	if err := o.broken(); err != nil {
		return err
	}
	o.dirtyMu.Lock()
	pages := make([]int64, 0, len(o.dirty))
	for p := range o.dirty {
		pages = append(pages, p)
	}
	clear(o.dirty)
	o.dirtyMu.Unlock()
	sort.Slice(pages, func(i, j int) bool { return pages[i] < pages[j] })
	// The words are taken before the layer is synced: each bit in them was
	// set after its block's data was written, so the sync covers it.
	saved := make([][]byte, len(pages))
	for i, p := range pages {
		first := p * bitmapPage / 8
		last := min(first+bitmapPage/8, int64(len(o.bits)))
		buf := make([]byte, 0, (last-first)*8)
		for w := first; w < last; w++ {
			buf = binary.LittleEndian.AppendUint64(buf, o.bits[w].Load())
		}
		saved[i] = buf
	}
	fail := func(err error) error {
		// Saved again next time.
		o.dirtyMu.Lock()
		for _, p := range pages {
			o.dirty[p] = true
		}
		o.dirtyMu.Unlock()
		return err
	}
	if err := o.layer.Sync(); err != nil {
		err = fmt.Errorf("overlay sync failed: writes since the last sync may be lost; it takes no more writes: %w", err)
		o.failed.Store(&err)
		return err
	}
	if len(pages) == 0 {
		return nil
	}
	for i, p := range pages {
		if _, err := o.bitmap.WriteAt(saved[i], p*bitmapPage); err != nil {
			return fail(fmt.Errorf("overlay bitmap: %w", err))
		}
	}
	if err := o.bitmap.Sync(); err != nil {
		return fail(fmt.Errorf("overlay bitmap: %w", err))
	}
	return nil
}

// Extents implements pe.Image: the layer's extents where it holds the
// blocks, the base's elsewhere.
func (o *Overlay) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, o.size)
	if !ok {
		return nil, nil
	}
	end := off + length
	var out []pe.Extent
	last := (end - 1) / BlockSize
	for pos, b := off, off/BlockSize; pos < end; {
		runEnd, held := o.run(b, last)
		stop := min(end, runEnd*BlockSize)
		from := o.base
		if held {
			from = o.layer
		}
		exts, err := from.Extents(ctx, pos, stop-pos)
		if err != nil {
			return nil, err
		}
		out = append(out, exts...)
		pos, b = stop, runEnd
	}
	return pe.MergeExtents(out), nil
}

// Fill copies the blocks [first, last] the layer lacks from the base, as a
// live restore hydrates its target. Where the base reads as zeros the
// layer is left alone if layerZero says it reads as zeros where never
// written. It returns how many bytes of the image it added to the layer,
// and how many of them it copied (the others read as zeros there).
func (o *Overlay) Fill(ctx context.Context, first, last int64, layerZero bool) (added, copied int64, err error) {
	if err := o.broken(); err != nil {
		return 0, 0, err
	}
	last = min(last, o.nblocks-1)
	for b := max(first, 0); b <= last; {
		end, held := o.run(b, last)
		if held {
			b = end
			continue
		}
		start := b * BlockSize
		stop := min(o.size, end*BlockSize)
		var zeros []pe.Extent
		if layerZero {
			if zeros, err = o.base.Extents(ctx, start, stop-start); err != nil {
				return added, copied, fmt.Errorf("extents of the base at %d: %w", start, err)
			}
		}
		buf := make([]byte, stop-start)
		if !allZero(zeros, start, stop) {
			if _, err := readFull(ctx, o.base, buf, start); err != nil {
				return added, copied, fmt.Errorf("fill blocks %d-%d from the base: %w", b, end-1, err)
			}
		}
		for k := b; k < end; k++ {
			s, n := o.blockRange(k)
			data := buf[s-start : s-start+n]
			if layerZero && allZero(zeros, s, s+n) {
				data = nil
			}
			ok, err := o.setIfMissing(k, data, s)
			if err != nil {
				return added, copied, err
			}
			if ok {
				added += n
				copied += int64(len(data))
			}
		}
		b = end
		if err := ctx.Err(); err != nil {
			return added, copied, err
		}
	}
	return added, copied, nil
}

// setIfMissing writes data (nil: nothing, the layer reads as zeros) as
// block b unless a write put it in the layer meanwhile.
func (o *Overlay) setIfMissing(b int64, data []byte, off int64) (bool, error) {
	mu := &o.locks[b%lockStripes]
	mu.Lock()
	defer mu.Unlock()
	if o.has(b) {
		return false, nil
	}
	var err error
	if data != nil {
		_, err = o.layer.WriteAt(data, off)
	} else {
		// A write whose bit was never saved (a crash) or that failed
		// half-way may have left bytes there.
		err = o.zeroLayer(off, o.blockLen(b), true)
	}
	if err != nil {
		return false, fmt.Errorf("overlay fill of block %d: %w", b, err)
	}
	o.set(b)
	return true, nil
}

// allZero reports whether exts (sorted, covering at least what they
// cover of [off, end)) say all of [off, end) reads as zeros.
func allZero(exts []pe.Extent, off, end int64) bool {
	if len(exts) == 0 {
		return false
	}
	for _, e := range exts {
		if e.End() <= off || e.Offset >= end {
			continue
		}
		if !e.Kind.ReadsZero() {
			return false
		}
	}
	covered := off
	for _, e := range exts {
		if e.Offset <= covered && e.End() > covered {
			covered = e.End()
		}
	}
	return covered >= end
}
