package repo

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
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
