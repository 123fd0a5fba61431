package disk

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

// BenchmarkSnapshot1GiB snapshots a fully written 1 GiB image, by copy on
// the test directory's filesystem (ext4 here) and by reflink on an XFS loop
// filesystem. Both include hashing every block and syncing.
func BenchmarkSnapshot1GiB(b *testing.B) {
	const size = 1 * giB
	bench := func(b *testing.B, tm *TypeManager, method string) {
		path := filepath.Join(tm.Root(), "vm.img")
		writeRandomFile(b, path, 1, size)
		p := getPE(b, tm, diskID(b, "vm.img"))
		ctx := context.Background()
		b.SetBytes(size)
		b.ResetTimer()
		for b.Loop() {
			snap, err := p.Snapshot(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if m := snapshotInfoOf(b, tm, snap).Method; m != method {
				b.Fatalf("method %q, want %q", m, method)
			}
			if err := p.DeleteSnapshot(ctx, snap.Snapshot()); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.Run("copy", func(b *testing.B) {
		bench(b, newTestRoot(b, ""), MethodCopy)
	})
	b.Run("reflink", func(b *testing.B) {
		mnt := petest.MountXFS(b, b.TempDir(), 3*giB)
		bench(b, newTestRoot(b, mnt), MethodReflink)
	})
}
