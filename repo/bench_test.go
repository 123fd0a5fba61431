package repo

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// BenchmarkRandomRead reads 4 KiB at random offsets of the data of a
// backed-up 1 GiB disk snapshot (256 MiB of data), through a fresh image
// each time (cold: the chunk is fetched, decrypted, decompressed and
// verified) and through one image (warm: 64 MiB of chunks cached).
func BenchmarkRandomRead(b *testing.B) {
	e := newEnv(b, nil, Options{Password: "bench"})
	e.disk("r.img", 1<<30, map[int64]int64{0: 256 * mib})
	p := e.snap("disk:r.img")
	ctx := context.Background()
	if _, err := e.r.Backup(ctx, p, nil); err != nil {
		b.Fatal(err)
	}
	src, err := e.r.OpenSnapshot(ctx, p.ID())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	read := func(img pe.Image) {
		if _, err := img.ReadAt(buf, rng.Int64N(256*mib-4096)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("cold", func(b *testing.B) {
		for range b.N {
			img, _ := src.Data(ctx)
			read(img)
		}
	})
	b.Run("warm", func(b *testing.B) {
		img, _ := src.Data(ctx)
		// Warm a 32 MiB working set, then read within it.
		for off := int64(0); off < 32*mib; off += mib {
			img.ReadAt(buf, off)
		}
		b.ResetTimer()
		for range b.N {
			if _, err := img.ReadAt(buf, rng.Int64N(32*mib-4096)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBackup backs up a 512 MiB disk holding 256 MiB of random data
// into a new local repository each time: the throughput of a full backup
// (chunking, hashing, compressing, sealing, packing, writing).
func BenchmarkBackup(b *testing.B) {
	e := newEnv(b, nil, Options{Password: "bench"})
	e.disk("b.img", 512*mib, map[int64]int64{0: 256 * mib})
	ctx := context.Background()
	b.SetBytes(256 * mib)
	for i := range b.N {
		b.StopTimer()
		be, err := backend.NewDir(filepath.Join(b.TempDir(), fmt.Sprint(i)))
		if err != nil {
			b.Fatal(err)
		}
		opts := Options{Password: "bench", Logger: quiet()}
		if err := Init(ctx, be, opts); err != nil {
			b.Fatal(err)
		}
		r, err := Open(ctx, be, opts)
		if err != nil {
			b.Fatal(err)
		}
		p := e.snap("disk:b.img")
		b.StartTimer()
		if _, err := r.Backup(ctx, p, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.Close()
		b.StartTimer()
	}
}
