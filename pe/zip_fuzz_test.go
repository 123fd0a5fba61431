package pe

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"testing"
)

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"fs:home", "disk:vm1.img:20261125T000104.000Z-1a2b3c4d", "pvc:ns/c", "a:b:c:d", ":x", "fs:", "x:y:", "f s:x", "fs:\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
		again, err := ParseID(id.String())
		if err != nil || again != id {
			t.Fatalf("re-parse of %q: %v, %v", s, again, err)
		}
	})
}

func FuzzOpenZip(f *testing.F) {
	f.Add(zipBytes(f, &testEntity{id: mustID(f, "fs:a:s"), data: []byte("hello"), md: []byte("m"),
		components: []ProtectedEntity{&testEntity{id: mustID(f, "disk:b:s"), data: make([]byte, 1000)}}}))
	f.Add(storedDataZip(f, []byte("stored data")))
	f.Add(buildZip(f, zipEntry{"../x.data", "x", zip.Deflate}))
	f.Add([]byte("PK\x03\x04 not really"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ctx := context.Background()
		p, err := OpenZip(ctx, bytes.NewReader(raw), int64(len(raw)))
		if err != nil {
			return
		}
		budget := int64(4 << 20) // bytes read in all, whatever sizes are declared
		var walk func(p ProtectedEntity)
		walk = func(p ProtectedEntity) {
			if _, err := p.Info(ctx); err != nil {
				t.Fatalf("Info of an opened zip PE: %v", err)
			}
			if img, err := p.Data(ctx); err == nil {
				n, _ := io.Copy(io.Discard, io.LimitReader(NewReader(img), budget))
				budget -= n
				img.ReadAt(make([]byte, 10), 3)
				img.Close()
			}
			if rc, err := p.Metadata(ctx); err == nil {
				n, _ := io.Copy(io.Discard, io.LimitReader(rc, budget))
				budget -= n
				rc.Close()
			}
			comps, _ := p.Components(ctx)
			for _, c := range comps {
				walk(c)
			}
		}
		walk(p)
	})
}
