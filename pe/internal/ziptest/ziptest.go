// Package ziptest gives tests of restores from untrusted input a PE as
// the zip an upload would carry.
package ziptest

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Of writes p as a PE zip in memory and opens it again: an untrusted PE,
// and the zip's size.
func Of(t testing.TB, p pe.ProtectedEntity) (z pe.ProtectedEntity, size int) {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	if err := pe.WriteZip(ctx, &buf, p, nil); err != nil {
		t.Fatal(err)
	}
	z, err := pe.OpenZip(ctx, bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if !pe.Untrusted(z) {
		t.Fatal("a zip PE is not untrusted")
	}
	return z, buf.Len()
}

// DeclareDataSize rewrites the PE zip z so that its data entry declares
// size uncompressed bytes, keeping its compressed bytes: the declared
// size is what the zip's data image says it holds, and archive/zip checks
// it only at the end of the stream.
func DeclareDataSize(t testing.TB, z []byte, size uint64) []byte {
	t.Helper()
	return rewrite(t, z, func(h *zip.FileHeader) {
		if strings.HasSuffix(h.Name, ".data") {
			h.UncompressedSize64 = size
		}
	})
}

// rewrite copies the zip z, its entries' bytes as they are, with the
// headers edit changes.
func rewrite(t testing.TB, z []byte, edit func(*zip.FileHeader)) []byte {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	for _, f := range zr.File {
		h := f.FileHeader
		edit(&h)
		r, err := f.OpenRaw()
		if err != nil {
			t.Fatal(err)
		}
		w, err := zw.CreateRaw(&h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Declaring is p as a PE zip whose data entry declares size bytes (see
// DeclareDataSize), opened: an untrusted PE.
func Declaring(t testing.TB, p pe.ProtectedEntity, size uint64) pe.ProtectedEntity {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	if err := pe.WriteZip(ctx, &buf, p, nil); err != nil {
		t.Fatal(err)
	}
	z := DeclareDataSize(t, buf.Bytes(), size)
	zp, err := pe.OpenZip(ctx, bytes.NewReader(z), int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	return zp
}
