package repo

import (
	"fmt"
	"testing"
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
