package pe

import (
	"bytes"
	"context"
	"math"
	"testing"
)

// TestSecurityZipIsUntrusted: a zip and its components are untrusted and
// report the compressed size of their data, which bounds their expansion.
func TestSecurityZipIsUntrusted(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("BOOM"), 1<<20)
	raw := zipBytes(t, &testEntity{id: mustID(t, "fs:a:s"), data: data,
		components: []ProtectedEntity{&testEntity{id: mustID(t, "disk:b:s"), data: data}}})
	p, err := OpenZip(ctx, bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	comps, err := p.Components(ctx)
	if err != nil || len(comps) != 1 {
		t.Fatalf("components %v, %v", comps, err)
	}
	for _, z := range []ProtectedEntity{p, comps[0]} {
		stored, ok := StoredSize(z)
		if !Untrusted(z) || !ok || stored <= 0 || stored > int64(len(raw)) {
			t.Errorf("%s: untrusted %v, stored size %d, %v (zip of %d bytes)", z.ID(), Untrusted(z), stored, ok, len(raw))
		}
		if got, want := (CopyOptions{}).ExpansionLimit(z), max(stored*DefaultMaxExpansion, 1<<20); got != want {
			t.Errorf("%s: default bound %d, want %d", z.ID(), got, want)
		}
		if got := (CopyOptions{MaxExpansion: -1}).ExpansionLimit(z); got != -1 {
			t.Errorf("%s: bound with MaxExpansion -1: %d, want none", z.ID(), got)
		}
		if got := (CopyOptions{MaxExpansion: math.MaxInt}).ExpansionLimit(z); got != math.MaxInt64 {
			t.Errorf("%s: bound with a huge MaxExpansion: %d, want it clamped", z.ID(), got)
		}
	}
	trusted := &testEntity{id: mustID(t, "fs:a:s"), data: data}
	if Untrusted(trusted) || (CopyOptions{}).ExpansionLimit(trusted) != -1 {
		t.Error("a PE without an Untrusted method is not trusted")
	}
}
