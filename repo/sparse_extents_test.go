package repo

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestSecuritySparseFSExtents: a backed-up fs snapshot holding a sparse
// file shows the file's holes as holes in its image's extents (all-zero
// chunks are not stored), so the free-space check of a restore
// (pe/internal/budget.DataBytes) counts its data, not its size.
func TestSecuritySparseFSExtents(t *testing.T) {
	e := newEnv(t, nil, Options{Insecure: true})
	ctx := context.Background()
	tree := filepath.Join(e.dir, "fs", "sparse")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(tree, "holes")
	if err := os.WriteFile(f, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	if err := os.Truncate(f, size); err != nil {
		t.Fatal(err)
	}
	p := e.snap("fs:sparse")
	if _, err := e.r.Backup(ctx, p, nil); err != nil {
		t.Fatal(err)
	}
	img := e.image(p.ID())
	exts, err := img.Extents(ctx, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, x := range exts {
		if !x.Kind.ReadsZero() {
			data += x.Length
		}
	}
	// The chunks around the file's 4 bytes and the tar's headers: two
	// content-defined chunks at most, plus the tar's end.
	if img.Size() < size || data > 2*cdcMax+64<<10 {
		t.Errorf("image of %d bytes has %d bytes of data extents; want the %d-byte file's holes left out", img.Size(), data, size)
	}
	t.Logf("image of %d bytes: %d bytes of data extents", img.Size(), data)
}
