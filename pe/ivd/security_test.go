package ivd

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/ziptest"
)

// bombDisk is n bytes of a repeated non-zero pattern: deflate packs it
// far beyond the default expansion bound, and it is all data.
func bombDisk(n int) []byte { return bytes.Repeat([]byte("BOOM"), n/4) }

// TestSecurityRestoreUntrustedZipBomb: an FCD in an uploaded zip whose
// data expands beyond the bound (100 × its stored size) is refused with
// pe.ErrLimit while it is written to the datastore, and the FCD made for
// it is deleted again (issue 22: an untrusted zip must not fill a
// datastore). Trusted, the same data restores.
func TestSecurityRestoreUntrustedZipBomb(t *testing.T) {
	requireTool(t, "qemu-img", "qemu-utils")
	s := startSim(t)
	ctx := context.Background()
	const size = 32 << 20
	id, err := pe.NewID(Type, s.createFCD("bomb", bombDisk(size), "monolithicFlat"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	z, n := ziptest.Of(t, p)
	if n*pe.DefaultMaxExpansion >= size {
		t.Fatalf("the zip of %d bytes of pattern has %d bytes: not a bomb", size, n)
	}
	before, err := s.tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.tm.Copy(ctx, z, pe.CopyOptions{Mode: pe.CreateNew})
	if !errors.Is(err, pe.ErrLimit) {
		t.Fatalf("restore of a %d-byte zip of %d bytes: %v, want pe.ErrLimit", n, size, err)
	}
	t.Logf("refused: %v", err)
	after, err := s.tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(before, func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) })
	slices.SortFunc(after, func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(before, after) {
		t.Errorf("FCDs after the refused restore: %v, want %v", after, before)
	}

	// The size a zip declares for its data is no allowance either: an
	// FCD of 1 PiB is not even created for 1 MiB of random data.
	sid, err := pe.NewID(Type, s.createFCD("small", randomDisk(1<<20, 0, 1<<20), "monolithicFlat"))
	if err != nil {
		t.Fatal(err)
	}
	small, err := s.tm.Get(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	var sbuf bytes.Buffer
	if err := pe.WriteZip(ctx, &sbuf, small, nil); err != nil {
		t.Fatal(err)
	}
	if before, err = s.tm.List(ctx); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(before, func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) })
	declared := ziptest.DeclareDataSize(t, sbuf.Bytes(), 1<<50)
	zd, err := pe.OpenZip(ctx, bytes.NewReader(declared), int64(len(declared)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.tm.Copy(ctx, zd, pe.CopyOptions{Mode: pe.CreateNew}); !errors.Is(err, pe.ErrLimit) {
		t.Errorf("restore of a zip declaring 1 PiB: %v, want pe.ErrLimit", err)
	}
	after, err = s.tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(after, func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(before, after) {
		t.Errorf("FCDs after the refused restores: %v, want %v", after, before)
	}

	// Without the bound the zip restores.
	got, err := s.tm.Copy(ctx, z, pe.CopyOptions{Mode: pe.CreateNew, MaxExpansion: -1})
	if err != nil {
		t.Fatalf("restore with no expansion bound: %v", err)
	}
	if !bytes.Equal(readAll(t, got), bombDisk(size)) {
		t.Error("the restored FCD's data differs from the zip's")
	}
}
