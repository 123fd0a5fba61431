// Package overlay makes a read-only image writable without copying it: the
// blocks written go to a layer (a sparse file of the image's size, or a
// restore target), a bitmap says which blocks the layer holds, and all
// other reads fall through to the base image, which never changes.
//
// The bitmap only ever gains bits, and a bit is saved only after the data
// of its block was synced: after a crash the layer holds at least every
// block its saved bitmap names, and the image reads as it did at the last
// Sync plus, possibly, writes made since (as a disk would).
package overlay

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/fileimage"
)

// BlockSize is the unit of copy-on-write: a write into a block the layer
// lacks first copies the rest of the block from the base. 64 KiB keeps the
// bitmap of a 1 TiB disk at 2 MiB and the copy of a 4 KiB write small.
const BlockSize = 64 << 10

const (
	headerFile = "overlay.json"
	bitmapFile = "bitmap"
	layerFile  = "layer"

	formatVersion = 1
	bitmapPage    = 4096 // bytes of bitmap saved together
	lockStripes   = 64
)

// header describes an overlay directory; it is written last, so a
// directory without it is an overlay whose creation did not finish.
type header struct {
	Version   int   `json:"version"`
	Size      int64 `json:"size"`
	BlockSize int64 `json:"blockSize"`
	// OwnLayer says the layer is the file "layer" in the directory;
	// otherwise the caller hands it in (a restore target).
	OwnLayer bool `json:"ownLayer"`
	// Base names what the overlay is over (Options.Base), so that what
	// would delete it can find the overlays that need it.
	Base string `json:"base,omitempty"`
}

// Options tune an overlay.
type Options struct {
	// OnMiss, if set, is told the blocks [first, last] a read found
	// missing from the layer (a live restore fetches those first).
	OnMiss func(first, last int64)
	// SyncEvery, if positive, syncs the overlay that often while it has
	// writes not synced, as a disk's cache is written back: a process
	// killed loses at most that much of what its clients never flushed.
	SyncEvery time.Duration
	// Base, given to Create, names the base (a snapshot's PE ID); BaseOf
	// reads it back.
	Base string
}

// Overlay is a writable pe.Image over a read-only base. Its methods are
// safe for concurrent use.
type Overlay struct {
	dir     string
	base    pe.Image
	layer   pe.WritableImage
	own     bool // the layer is ours to close
	size    int64
	nblocks int64
	opts    Options

	bits   []atomic.Uint64 // block i is in the layer if bit i%64 of bits[i/64]
	bitmap *os.File

	dirtyMu sync.Mutex
	dirty   map[int64]bool // bitmap pages changed since saved
	stop    chan struct{}  // ends the SyncEvery loop
	stopped chan struct{}
	syncMu  sync.Mutex // one Sync at a time: pages are saved in order
	// failed is the error of a failed sync of the layer (see broken).
	failed atomic.Pointer[error]

	// frozen refuses writes (Freeze); wmu lets the writes under way end
	// first.
	wmu    sync.RWMutex
	frozen bool

	// A block missing from the layer is filled under its stripe's lock, so
	// that a partial write's copy of the base cannot undo another write.
	locks [lockStripes]sync.Mutex
}

var _ pe.WritableImage = (*Overlay)(nil)

// Create makes a new overlay in dir, which must not exist, over base. With
// layer nil the layer is a sparse file in dir; otherwise layer (of base's
// size, reading as zeros where never written) is the layer, and the caller
// keeps it and hands it to Open again.
func Create(dir string, base pe.Image, layer pe.WritableImage, opts Options) (o *Overlay, err error) {
	size := base.Size()
	if layer != nil && layer.Size() != size {
		return nil, fmt.Errorf("overlay %s: layer of %d bytes for an image of %d", dir, layer.Size(), size)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.RemoveAll(dir))
		}
	}()
	if layer == nil {
		f, err := os.OpenFile(filepath.Join(dir, layerFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("overlay layer: %w", err)
		}
	}
	// Allocated now, so that saving bits never needs space the layer's
	// writes may have taken.
	f, err := os.OpenFile(filepath.Join(dir, bitmapFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	n := bitmapBytes(blocks(size))
	err = allocate(f, n)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("overlay bitmap: %w", err)
	}
	h := header{Version: formatVersion, Size: size, BlockSize: BlockSize, OwnLayer: layer == nil, Base: opts.Base}
	err = atomicfile.Write(filepath.Join(dir, headerFile), 0o600, func(w io.Writer) error {
		return json.NewEncoder(w).Encode(h)
	})
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	return Open(dir, base, layer, opts)
}

// allocate gives f n bytes of zeros that take space on disk.
func allocate(f *os.File, n int64) error {
	if n == 0 {
		return nil
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err == nil {
		return f.Sync()
	}
	if _, err := f.WriteAt(make([]byte, n), 0); err != nil {
		return err
	}
	return f.Sync()
}

// Open opens the overlay in dir over base (the same image Create was given)
// and, where Create was given one, the same layer.
func Open(dir string, base pe.Image, layer pe.WritableImage, opts Options) (*Overlay, error) {
	h, err := readHeader(dir)
	if err != nil {
		return nil, err
	}
	switch {
	case h.Version != formatVersion || h.BlockSize != BlockSize:
		return nil, fmt.Errorf("overlay %s: version %d with %d-byte blocks, want version %d with %d", dir, h.Version, h.BlockSize, formatVersion, BlockSize)
	case h.Size != base.Size():
		return nil, fmt.Errorf("overlay %s: made for an image of %d bytes, the base has %d", dir, h.Size, base.Size())
	case h.OwnLayer != (layer == nil):
		return nil, fmt.Errorf("overlay %s: its layer is in the directory: %v, given one: %v", dir, h.OwnLayer, layer != nil)
	case layer != nil && layer.Size() != h.Size:
		return nil, fmt.Errorf("overlay %s: layer of %d bytes for an image of %d", dir, layer.Size(), h.Size)
	}
	o := &Overlay{dir: dir, base: base, layer: layer, size: h.Size, nblocks: blocks(h.Size), opts: opts, dirty: map[int64]bool{}}
	if layer == nil {
		f, err := os.OpenFile(filepath.Join(dir, layerFile), os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
		if fi, err := f.Stat(); err != nil || fi.Size() != h.Size {
			f.Close()
			return nil, fmt.Errorf("overlay %s: layer file is not of %d bytes", dir, h.Size)
		}
		o.layer, o.own = fileimage.Writable{Image: fileimage.New(f, h.Size, true)}, true
	}
	if err := o.loadBitmap(); err != nil {
		o.closeOwn()
		return nil, err
	}
	if opts.SyncEvery > 0 {
		o.stop, o.stopped = make(chan struct{}), make(chan struct{})
		go o.syncLoop(opts.SyncEvery)
	}
	return o, nil
}

// syncLoop syncs every interval while there are bits not saved, until
// Close. An error is left for the next Sync (or Close) to report.
func (o *Overlay) syncLoop(every time.Duration) {
	defer close(o.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
			o.dirtyMu.Lock()
			pending := len(o.dirty) > 0
			o.dirtyMu.Unlock()
			if pending {
				_ = o.Sync()
			}
		}
	}
}

// BaseOf returns what the overlay in dir is over, as Options.Base named
// it at Create ("" if it named nothing).
func BaseOf(dir string) (string, error) {
	h, err := readHeader(dir)
	return h.Base, err
}

func readHeader(dir string) (header, error) {
	var h header
	b, err := os.ReadFile(filepath.Join(dir, headerFile))
	if err != nil {
		return h, fmt.Errorf("overlay: %w", err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("overlay %s: %w", dir, err)
	}
	return h, nil
}

func (o *Overlay) loadBitmap() error {
	f, err := os.OpenFile(filepath.Join(o.dir, bitmapFile), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	// Two Overlays on one directory would each save their own bits over
	// the other's.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("overlay %s: %w", o.dir, ErrInUse)
		}
		return fmt.Errorf("overlay %s: lock: %w", o.dir, err)
	}
	n := bitmapBytes(o.nblocks)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		f.Close()
		return fmt.Errorf("overlay %s: bitmap: %w", o.dir, err)
	}
	o.bits = make([]atomic.Uint64, n/8)
	for i := range o.bits {
		o.bits[i].Store(binary.LittleEndian.Uint64(buf[i*8:]))
	}
	// Bits past the last block would claim blocks that do not exist.
	if tail := o.nblocks % 64; tail != 0 && len(o.bits) > 0 {
		if o.bits[len(o.bits)-1].Load()>>tail != 0 {
			f.Close()
			return fmt.Errorf("overlay %s: bitmap names blocks past the end of the image", o.dir)
		}
	}
	o.bitmap = f
	return nil
}

// ErrInUse is an overlay open in this or another process.
var ErrInUse = errors.New("in use: open elsewhere")

// RemoveUnused deletes the overlay in dir, or what a Create that did not
// finish left there, unless an Overlay has it open (in any process); it
// reports whether it did.
func RemoveUnused(dir string) (bool, error) {
	f, err := os.OpenFile(filepath.Join(dir, bitmapFile), os.O_RDWR, 0)
	if err == nil {
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("overlay %s: lock: %w", dir, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("overlay: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("overlay: %w", err)
	}
	return true, nil
}

// Remove deletes the overlay in dir and all writes in it. Its Overlay must
// be closed.
func Remove(dir string) error {
	if _, err := readHeader(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.RemoveAll(dir)
}

// Dir is where the overlay keeps its bitmap (and its layer, if its own).
func (o *Overlay) Dir() string { return o.dir }

// Size implements pe.Image.
func (o *Overlay) Size() int64 { return o.size }

// Written reports how many blocks the layer holds, of how many.
func (o *Overlay) Written() (blocks, of int64) {
	for i := range o.bits {
		blocks += int64(bits.OnesCount64(o.bits[i].Load()))
	}
	return blocks, o.nblocks
}

// Complete reports whether the layer holds every block: it then reads as
// the whole image without the base.
func (o *Overlay) Complete() bool {
	n, of := o.Written()
	return n == of
}

// NextMissing returns the first block at or after from that the layer
// lacks, or -1 if none.
func (o *Overlay) NextMissing(from int64) int64 {
	for b := max(from, 0); b < o.nblocks; {
		w := o.bits[b/64].Load() >> (b % 64)
		if w == ^uint64(0)>>(b%64) {
			b = (b/64 + 1) * 64
			continue
		}
		return b + int64(bits.TrailingZeros64(^w))
	}
	return -1
}

// Close saves the bitmap and closes what the overlay opened; the base and
// a layer handed in stay open.
func (o *Overlay) Close() error {
	if o.stop != nil {
		close(o.stop)
		<-o.stopped
	}
	err := o.Sync()
	return errors.Join(err, o.closeOwn())
}

func (o *Overlay) closeOwn() error {
	var err error
	if o.bitmap != nil {
		err = o.bitmap.Close()
	}
	if o.own {
		err = errors.Join(err, o.layer.Close())
	}
	return err
}

func blocks(size int64) int64 { return (size + BlockSize - 1) / BlockSize }

// bitmapBytes is the bitmap's length: whole 64-bit words.
func bitmapBytes(nblocks int64) int64 { return (nblocks + 63) / 64 * 8 }

// Over returns snapshot p as o reads it, with o's writes: its Data is o,
// which stays open when that data is closed (a copy that keeps the writes
// of an export as a new PE reads it so).
func Over(p pe.ProtectedEntity, o *Overlay) pe.ProtectedEntity { return over{p, o} }

type over struct {
	pe.ProtectedEntity
	o *Overlay
}

func (v over) Data(ctx context.Context) (pe.Image, error) { return v.o.Borrowed(), nil }

// Borrowed is o as a pe.Image for a reader that closes what it is given
// (an NBD connection, a copy): its Close leaves o open.
func (o *Overlay) Borrowed() pe.Image { return borrowed{o} }

type borrowed struct{ *Overlay }

func (borrowed) Close() error { return nil }
