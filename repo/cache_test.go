package repo

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// TestChunkCacheBoundInBytes: the cache holds at most its bound in bytes,
// whatever the chunks' sizes, evicting the least recently used; a chunk
// larger than the bound is still kept alone, as the newest.
func TestChunkCacheBoundInBytes(t *testing.T) {
	c := newChunkCache(10 << 20)
	for i := range 8 {
		c.put(fmt.Sprint(i), make([]byte, 1<<20))
	}
	c.get("0") // most recently used now
	c.put("big", make([]byte, 4<<20))
	if c.size > 10<<20 {
		t.Fatalf("cache holds %d bytes, bound 10 MiB", c.size)
	}
	for _, id := range []string{"0", "big", "7", "6"} {
		if _, ok := c.get(id); !ok {
			t.Errorf("chunk %s evicted, want the least recently used ones gone first", id)
		}
	}
	for _, id := range []string{"1", "2"} {
		if _, ok := c.get(id); ok {
			t.Errorf("chunk %s kept, want it evicted (least recently used)", id)
		}
	}
	c.put("huge", make([]byte, 32<<20))
	if _, ok := c.get("huge"); !ok || c.ll.Len() != 1 || c.size != 32<<20 {
		t.Errorf("after a chunk over the bound: %d chunks, %d bytes; want it alone", c.ll.Len(), c.size)
	}
}

// TestImageReadsAheadOnlyForward: a reader going forward in 4 KiB reads
// makes the image fetch the next chunks ahead; a random reader reading
// one block again, as a guest re-reads a block, fetches nothing more
// than what it reads (before, the second read of a chunk counted as
// sequential and fetched four chunks ahead, evicting the cache).
func TestImageReadsAheadOnlyForward(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil, Options{Password: "pw"})
	e.disk("a.img", 32*mib, map[int64]int64{0: 32 * mib})
	id := e.backup("disk:a.img")
	counted := &loadCounter{Backend: e.be}
	r, err := Open(ctx, counted, Options{Password: "pw", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	open := func() pe.Image {
		p, err := r.OpenSnapshot(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		img, err := p.Data(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	buf := make([]byte, 4096)

	img := open()
	counted.loads.Store(0)
	for _, off := range []int64{20 * mib, 7*mib + 8192, 13 * mib} {
		for range 3 { // each block read, then read again twice
			if _, err := img.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	img.Close() // waits for fetches in the background
	if n := counted.loads.Load(); n != 3 {
		t.Errorf("3 blocks read 3 times each at random: %d loads of packs, want 3", n)
	}

	img = open()
	counted.loads.Store(0)
	for off := int64(0); off < 2*mib; off += 4096 {
		if _, err := img.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	img.Close()
	if n := counted.loads.Load(); n < 3 {
		t.Errorf("a forward reader of 2 chunks in 4 KiB reads: %d loads of packs, want the chunks ahead fetched too", n)
	}
}

// loadCounter counts the loads of pack data.
type loadCounter struct {
	backend.Backend
	loads atomic.Int32
}

func (b *loadCounter) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if strings.HasPrefix(name, "data/") {
		b.loads.Add(1)
	}
	return b.Backend.Load(ctx, name, off, length)
}
