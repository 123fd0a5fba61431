package fs

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// benchTree makes ~1000 files, 64 MiB in all, in 10 directories.
func benchTree(b *testing.B, dir string) int64 {
	b.Helper()
	const files, total = 1000, 64 << 20
	var size int64
	for i := range files {
		// Mostly small files plus some large ones, as real trees.
		n := 4 << 10
		if i%50 == 0 {
			n = (total - (files-files/50)*(4<<10)) / (files / 50)
		}
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%10), fmt.Sprintf("file-%04d", i))
		writeFile(b, p, randomBytes(uint64(i), n), 0o644)
		size += int64(n)
	}
	return size
}

func BenchmarkSnapshot(b *testing.B) {
	tm := newTestRoot(b, b.TempDir())
	size := benchTree(b, filepath.Join(tm.Root(), "data"))
	p := getPE(b, tm, fsID(b, "data"))
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		id := snapshot(b, p)
		b.StopTimer()
		must(b, p.DeleteSnapshot(ctx, id.Snapshot()))
		b.StartTimer()
	}
}

func BenchmarkTarRead(b *testing.B) {
	tm := newTestRoot(b, b.TempDir())
	benchTree(b, filepath.Join(tm.Root(), "data"))
	sid := snapshot(b, getPE(b, tm, fsID(b, "data")))
	img := openData(b, getPE(b, tm, sid))
	b.SetBytes(img.Size())
	buf := make([]byte, 1<<20)
	b.ResetTimer()
	for b.Loop() {
		n, err := io.CopyBuffer(io.Discard, onlyReader{pe.NewReader(img)}, buf)
		if err != nil || n != img.Size() {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkRestore(b *testing.B) {
	tm := newTestRoot(b, b.TempDir())
	size := benchTree(b, filepath.Join(tm.Root(), "data"))
	sid := snapshot(b, getPE(b, tm, fsID(b, "data")))
	src := getPE(b, tm, sid)
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		p, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		must(b, os.RemoveAll(filepath.Join(tm.Root(), p.ID().Name())))
		b.StartTimer()
	}
}

// onlyReader hides WriterTo/ReaderFrom so the copy uses the buffer.
type onlyReader struct{ io.Reader }
