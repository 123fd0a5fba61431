package ivd

import (
	"context"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// BenchmarkFCDRead reads a 64 MiB FCD (all allocated) through the
// simulator's datastore HTTP access, in 1 MiB reads as a backup does, and
// the same VMDK from the local file with the same reader: the ratio is
// what the HTTP path costs.
func BenchmarkFCDRead(b *testing.B) {
	for _, sub := range []string{"monolithicFlat", "monolithicSparse", "streamOptimized"} {
		b.Run(sub, func(b *testing.B) {
			s := startSim(b)
			ctx := context.Background()
			raw := randomDisk(64<<20, 0, 64<<20)
			id, _ := pe.NewID(Type, s.createFCD("bench", raw, sub))
			p, err := s.tm.Get(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			ref := mustRef(b, p)
			buf := make([]byte, 1<<20)
			b.Run("http", func(b *testing.B) {
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					img, err := p.Data(ctx)
					if err != nil {
						b.Fatal(err)
					}
					for off := int64(0); off < img.Size(); off += int64(len(buf)) {
						if _, err := img.ReadAt(buf, off); err != nil {
							b.Fatal(err)
						}
					}
					img.Close()
				}
			})
			b.Run("local", func(b *testing.B) {
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					d, err := vmdk.OpenFile(s.Local(ref.Path))
					if err != nil {
						b.Fatal(err)
					}
					for off := int64(0); off < d.Size(); off += int64(len(buf)) {
						if _, err := d.ReadAt(buf, off); err != nil {
							b.Fatal(err)
						}
					}
					d.Close()
				}
			})
		})
	}
}
