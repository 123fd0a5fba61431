package overlay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/fileimage"
)

const mib = 1 << 20

// baseImage writes a read-only base of size bytes: random data with a
// hole in [holeOff, holeOff+holeLen), returned with its bytes.
func baseImage(t *testing.T, size, holeOff, holeLen int64) (pe.Image, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	clear(data[holeOff : holeOff+holeLen])
	path := filepath.Join(t.TempDir(), "base.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data[:holeOff], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data[holeOff+holeLen:], holeOff+holeLen); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	img := fileimage.New(ro, size, true)
	t.Cleanup(func() { img.Close() })
	return img, data
}

func readAll(t *testing.T, img pe.Image) []byte {
	t.Helper()
	buf := make([]byte, img.Size())
	if n, err := img.ReadAt(buf, 0); n != len(buf) {
		t.Fatalf("read %d of %d bytes: %v", n, len(buf), err)
	}
	return buf
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// TestOverlayReadsWhatWasWritten: random writes and zeroes of every size
// and alignment read back as a model of them says, the base never
// changes, and the overlay opened again after Close reads the same.
func TestOverlayReadsWhatWasWritten(t *testing.T) {
	size := int64(3*mib + 12345) // a short last block
	base, model := baseImage(t, size, mib, mib)
	baseSum := sum(model)
	dir := filepath.Join(t.TempDir(), "ov")
	o, err := Create(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, o); !bytes.Equal(got, model) {
		t.Fatal("a new overlay does not read as its base")
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	for i := range 300 {
		off := rng.Int64N(size)
		n := min(1+rng.Int64N(3*BlockSize), size-off)
		switch i % 4 {
		case 3:
			if err := o.Zero(off, n, i%8 == 3); err != nil {
				t.Fatalf("zero %d at %d: %v", n, off, err)
			}
			clear(model[off : off+n])
		default:
			p := make([]byte, n)
			rand.Read(p)
			if k, err := o.WriteAt(p, off); err != nil || k != len(p) {
				t.Fatalf("write %d at %d: %d %v", n, off, k, err)
			}
			copy(model[off:], p)
		}
		if i%50 == 0 {
			if got := readAll(t, o); !bytes.Equal(got, model) {
				t.Fatalf("after %d operations the overlay reads differently from the model", i+1)
			}
		}
	}
	// Reads straddling held and missing blocks, at odd places.
	for range 200 {
		off := rng.Int64N(size)
		n := min(1+rng.Int64N(4*BlockSize), size-off)
		p := make([]byte, n)
		if k, err := o.ReadAt(p, off); k != len(p) || (err != nil && off+n != size) {
			t.Fatalf("read %d at %d: %d %v", n, off, k, err)
		}
		if !bytes.Equal(p, model[off:off+n]) {
			t.Fatalf("read %d at %d differs from the model", n, off)
		}
	}
	if _, err := o.WriteAt([]byte{1}, size); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, base); sum(got) != baseSum {
		t.Fatal("writes into the overlay changed the base")
	}
	again, err := Open(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := readAll(t, again); !bytes.Equal(got, model) {
		t.Fatal("the overlay opened again reads differently")
	}
}

// TestOverlayCrash: what was synced survives an overlay never closed
// (the process killed); a block written after the last Sync reads either
// as written or as the base, never as anything else.
func TestOverlayCrash(t *testing.T) {
	base, model := baseImage(t, 2*mib, 0, 0)
	dir := filepath.Join(t.TempDir(), "ov")
	o, err := Create(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	synced := bytes.Repeat([]byte("synced"), 1000)
	if _, err := o.WriteAt(synced, 100); err != nil {
		t.Fatal(err)
	}
	if err := o.Sync(); err != nil {
		t.Fatal(err)
	}
	copy(model[100:], synced)
	late := bytes.Repeat([]byte("late"), 100)
	if _, err := o.WriteAt(late, mib+7); err != nil {
		t.Fatal(err)
	}
	// kill -9: the files closed, nothing synced; a second overlay on the
	// directory is what a restart finds.
	o.closeOwn()
	after, err := Open(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, after)
	if !bytes.Equal(got[:mib], model[:mib]) {
		t.Fatal("the synced write did not survive")
	}
	withLate := bytes.Clone(model)
	copy(withLate[mib+7:], late)
	if !bytes.Equal(got, model) && !bytes.Equal(got, withLate) {
		t.Fatal("the block written after the last sync reads as neither the write nor the base")
	}
	after.Close()
}

// TestOverlayFullDisk: an overlay whose filesystem fills answers ENOSPC,
// keeps every write that succeeded, and reads a block whose write failed
// as the base, also when opened again.
func TestOverlayFullDisk(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (the test runs as root): %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	base, model := baseImage(t, 8*mib, 0, 0)
	dir := filepath.Join(mnt, "ov")
	o, err := Create(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var full error
	written := 0
	for b := int64(0); b < 8*mib/BlockSize; b++ {
		// A partial write: the block's copy-on-write needs the whole
		// block's space.
		p := bytes.Repeat([]byte{byte(b + 1)}, 1000)
		if _, err := o.WriteAt(p, b*BlockSize+10); err != nil {
			full = err
			break
		}
		copy(model[b*BlockSize+10:], p)
		written++
	}
	t.Logf("%d blocks written before: %v", written, full)
	if !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("a write into a full overlay: %v, want ENOSPC", full)
	}
	if written == 0 {
		t.Fatal("no write succeeded before the disk was full")
	}
	if err := o.Sync(); err != nil {
		t.Fatalf("sync of a full overlay: %v", err)
	}
	if got := readAll(t, o); !bytes.Equal(got, model) {
		t.Fatal("a full overlay reads differently from what was written")
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := Open(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := readAll(t, again); !bytes.Equal(got, model) {
		t.Fatal("a full overlay opened again reads differently from what was written")
	}
}

// TestOverlayConcurrentPartialWrites: writes into different parts of a
// block the layer lacks, at once, all land (none's copy of the base
// undoes another's write).
func TestOverlayConcurrentPartialWrites(t *testing.T) {
	base, model := baseImage(t, mib, 0, 0)
	o, err := Create(filepath.Join(t.TempDir(), "ov"), base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	const parts = 16
	var wg sync.WaitGroup
	for blk := range int64(4) {
		for i := range int64(parts) {
			off := blk*BlockSize + i*BlockSize/parts
			p := bytes.Repeat([]byte{byte(blk*parts + i + 1)}, BlockSize/parts)
			copy(model[off:], p)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := o.WriteAt(p, off); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	if got := readAll(t, o); !bytes.Equal(got, model) {
		t.Fatal("concurrent writes into one block lost some of them")
	}
}

// TestOverlayFillAndExtents: Fill copies what the layer lacks and leaves
// what was written; where the base is a hole the layer stays one; the
// extents tell written data, zeros and the base's holes apart.
func TestOverlayFillAndExtents(t *testing.T) {
	ctx := context.Background()
	base, model := baseImage(t, 4*mib, mib, 2*mib)
	dir := filepath.Join(t.TempDir(), "ov")
	var missed [][2]int64
	var mu sync.Mutex
	o, err := Create(dir, base, nil, Options{OnMiss: func(first, last int64) {
		mu.Lock()
		missed = append(missed, [2]int64{first, last})
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	w := bytes.Repeat([]byte{7}, 5000)
	if _, err := o.WriteAt(w, mib+BlockSize+3); err != nil { // into the hole
		t.Fatal(err)
	}
	copy(model[mib+BlockSize+3:], w)
	if err := o.Zero(0, 2*BlockSize, true); err != nil {
		t.Fatal(err)
	}
	clear(model[:2*BlockSize])
	exts, err := o.Extents(ctx, 0, 4*mib)
	if err != nil {
		t.Fatal(err)
	}
	want := []pe.Extent{
		{Offset: 0, Length: 2 * BlockSize, Kind: pe.ExtentHole},
		{Offset: 2 * BlockSize, Length: mib - 2*BlockSize, Kind: pe.ExtentData},
		{Offset: mib, Length: BlockSize, Kind: pe.ExtentHole},
		{Offset: mib + BlockSize, Length: BlockSize, Kind: pe.ExtentData},
		{Offset: mib + 2*BlockSize, Length: 2*mib - 2*BlockSize, Kind: pe.ExtentHole},
		{Offset: 3 * mib, Length: mib, Kind: pe.ExtentData},
	}
	if fmt.Sprint(exts) != fmt.Sprint(want) {
		t.Fatalf("extents\n%v\nwant\n%v", exts, want)
	}
	p := make([]byte, 10)
	if _, err := o.ReadAt(p, 3*mib+5); err != nil {
		t.Fatal(err)
	}
	if len(missed) == 0 || missed[len(missed)-1] != [2]int64{3 * mib / BlockSize, 3 * mib / BlockSize} {
		t.Fatalf("a read of a missing block was not reported: %v", missed)
	}
	if got := o.NextMissing(0); got != 2 {
		t.Fatalf("first missing block %d, want 2", got)
	}
	_, copied, err := o.Fill(ctx, 0, 1<<40, true)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Complete() || o.NextMissing(0) != -1 {
		t.Fatal("filled overlay is not complete")
	}
	if wantCopied := int64(2*mib - 2*BlockSize); copied != wantCopied {
		t.Fatalf("fill copied %d bytes, want %d (the data the layer lacked, not the holes)", copied, wantCopied)
	}
	if got := readAll(t, o); !bytes.Equal(got, model) {
		t.Fatal("a filled overlay reads differently from the base with its writes")
	}
	if _, err := o.layer.Extents(ctx, 0, 4*mib); err != nil {
		t.Fatal(err)
	}
	layerExts, _ := o.layer.Extents(ctx, mib+2*BlockSize, 2*mib-2*BlockSize)
	if len(layerExts) != 1 || layerExts[0].Kind != pe.ExtentHole {
		t.Fatalf("the base's hole was written into the layer: %v", layerExts)
	}
}

// TestOverlayOpenRefuses: a directory that is not an overlay of this base
// is refused with the reason.
func TestOverlayOpenRefuses(t *testing.T) {
	base, _ := baseImage(t, mib, 0, 0)
	other, _ := baseImage(t, 2*mib, 0, 0)
	dir := filepath.Join(t.TempDir(), "ov")
	o, err := Create(dir, base, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	o.Close()
	if _, err := Create(dir, base, nil, Options{}); err == nil {
		t.Fatal("Create over an existing overlay succeeded")
	}
	if _, err := Open(dir, other, nil, Options{}); err == nil {
		t.Fatal("an overlay opened over a base of another size")
	}
	if err := os.WriteFile(filepath.Join(dir, headerFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, base, nil, Options{}); err == nil {
		t.Fatal("an overlay with a damaged header opened")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none"), base, nil, Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open of no overlay: %v", err)
	}
}

// newLayer is a sparse file of size bytes as a writable image: a new PE
// that a live restore fills.
func newLayer(t *testing.T, size int64) (pe.WritableImage, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "target.img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	w := fileimage.Writable{Image: fileimage.New(f, size, true)}
	t.Cleanup(func() { w.Close() })
	return w, path
}

// countingProgress sums what a Run reports, and calls onAdd after each
// report.
type countingProgress struct {
	mu           sync.Mutex
	total, added int64
	onAdd        func()
}

func (p *countingProgress) Start(n int64) { p.mu.Lock(); p.total = n; p.mu.Unlock() }
func (p *countingProgress) Add(n int64) {
	p.mu.Lock()
	p.added += n
	p.mu.Unlock()
	if p.onAdd != nil {
		p.onAdd()
	}
}

// TestHydration: a live restore's fill, stopped half-way and resumed by
// a new process, and written into meanwhile, leaves the target equal to
// the base with the writes; the base's hole stays a hole in the target.
func TestHydration(t *testing.T) {
	ctx := context.Background()
	size := int64(64*mib + 777)
	base, model := baseImage(t, size, 8*mib, 8*mib)
	layer, path := newLayer(t, size)
	dir := filepath.Join(t.TempDir(), "ov")
	h := NewHydration()
	o, err := Create(dir, base, layer, Options{OnMiss: h.Miss})
	if err != nil {
		t.Fatal(err)
	}
	// A client writes and reads before and while it fills.
	w := bytes.Repeat([]byte("client"), 3000)
	if _, err := o.WriteAt(w, 20*mib+3); err != nil {
		t.Fatal(err)
	}
	copy(model[20*mib+3:], w)
	p := make([]byte, 4096)
	if _, err := o.ReadAt(p, 23*mib); err != nil {
		t.Fatal(err)
	}
	if len(h.hot) == 0 {
		t.Fatal("a client's read of a missing block was not queued first")
	}
	// Written into, then stopped, once the first fill is done: a
	// shut-down appliance. At most the fills under way go on: far less
	// than the image.
	stop, cancel := context.WithCancel(ctx)
	var once sync.Once
	prog := countingProgress{onAdd: func() {
		once.Do(func() {
			if _, err := o.WriteAt([]byte("during"), 2*mib+601); err != nil {
				t.Error(err)
			}
			cancel()
		})
	}}
	copy(model[2*mib+601:], "during")
	if err := h.Run(stop, o, true, &prog); !errors.Is(err, context.Canceled) {
		t.Fatalf("a fill stopped half-way: %v", err)
	}
	if o.Complete() {
		t.Fatal("the fill completed before it was stopped: the test proves nothing")
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	// The next process opens it again and finishes.
	h = NewHydration()
	o, err = Open(dir, base, layer, Options{OnMiss: h.Miss})
	if err != nil {
		t.Fatal(err)
	}
	prog = countingProgress{}
	if err := h.Run(ctx, o, true, &prog); err != nil {
		t.Fatal(err)
	}
	if !o.Complete() {
		t.Fatal("not complete after the fill")
	}
	if prog.total != size || prog.added < size-BlockSize || prog.added > size {
		t.Errorf("progress %d of %d, want about %d", prog.added, prog.total, size)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		for i := range got {
			if got[i] != model[i] {
				t.Fatalf("the filled target differs from the base with the client's writes, first at %d (block %d)", i, i/BlockSize)
			}
		}
	}
	f, _ := os.Open(path)
	defer f.Close()
	exts, err := fileimage.Extents(ctx, f, size, 8*mib, 8*mib)
	if err != nil || len(exts) != 1 || exts[0].Kind != pe.ExtentHole {
		t.Errorf("the base's hole was written into the target: %v %v", exts, err)
	}
}

// TestOverlaySyncEvery: with SyncEvery, a write never flushed survives a
// process killed a little later: the overlay synced it meanwhile.
func TestOverlaySyncEvery(t *testing.T) {
	base, model := baseImage(t, 2*mib, 0, 0)
	dir := filepath.Join(t.TempDir(), "ov")
	o, err := Create(dir, base, nil, Options{SyncEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w := bytes.Repeat([]byte("unflushed"), 100)
	if _, err := o.WriteAt(w, mib+10); err != nil {
		t.Fatal(err)
	}
	copy(model[mib+10:], w)
	// The bitmap on disk names the block within a few intervals (what a
	// process killed now would leave).
	b := int64(mib+10) / BlockSize
	deadline := time.Now().Add(10 * time.Second)
	for {
		saved, err := os.ReadFile(filepath.Join(dir, bitmapFile))
		if err != nil {
			t.Fatal(err)
		}
		if saved[b/8]&(1<<(b%8)) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a write was not synced by SyncEvery within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := Open(dir, base, nil, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("a second overlay on an open one: %v, want ErrInUse", err)
	}
	if removed, err := RemoveUnused(dir); removed || err != nil {
		t.Fatalf("RemoveUnused of an open overlay: %v %v", removed, err)
	}
	o.Close()
	if removed, err := RemoveUnused(dir); !removed || err != nil {
		t.Fatalf("RemoveUnused of a closed overlay: %v %v", removed, err)
	}
}

// TestOverlayFillAfterCrash: a write whose bit was never saved (the
// process killed before a sync) left its bytes in the target; the block
// reads as the base after the restart, and still does once the fill has
// taken it, also where the base is a hole that needs no copy.
func TestOverlayFillAfterCrash(t *testing.T) {
	size := int64(4 * BlockSize)
	base, model := baseImage(t, size, BlockSize, BlockSize) // block 1: a hole
	layer, _ := newLayer(t, size)
	dir := filepath.Join(t.TempDir(), "ov")
	o, err := Create(dir, base, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []int64{1, 2} {
		if _, err := o.WriteAt(bytes.Repeat([]byte{0xab}, BlockSize), b*BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	o.closeOwn() // kill -9: no Sync, no Close
	after, err := Open(dir, base, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, after); !bytes.Equal(got, model) {
		t.Fatal("after the restart the unsaved writes show")
	}
	if _, _, err := after.Fill(context.Background(), 0, 3, true); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, after); !bytes.Equal(got, model) {
		t.Fatal("the fill brought back a write whose bit was never saved")
	}
}

// syncFailsOnce is a layer whose first Sync fails, as an fsync after a
// failed writeback does once (Linux then drops the pages and the next
// fsync succeeds without them).
type syncFailsOnce struct {
	pe.WritableImage
	failed bool
}

func (l *syncFailsOnce) Sync() error {
	if !l.failed {
		l.failed = true
		return syscall.EIO
	}
	return l.WritableImage.Sync()
}

// TestOverlaySyncFailureSticks: after a failed sync of the layer no bit
// is saved any more, by a later Sync or Close, and writes are refused.
func TestOverlaySyncFailureSticks(t *testing.T) {
	size := int64(4 * BlockSize)
	base, _ := baseImage(t, size, 0, 0)
	l, _ := newLayer(t, size)
	layer := &syncFailsOnce{WritableImage: l}
	dir := filepath.Join(t.TempDir(), "ov")
	o, err := Create(dir, base, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.WriteAt(make([]byte, BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := o.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("first sync: %v", err)
	}
	if err := o.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a sync after a failed one: %v, want the failure again", err)
	}
	if _, err := o.WriteAt([]byte{1}, 3); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a write after a failed sync: %v", err)
	}
	o.Close()
	again, err := Open(dir, base, layer, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if n, _ := again.Written(); n != 0 {
		t.Fatalf("%d blocks saved although the sync of their data failed", n)
	}
}
