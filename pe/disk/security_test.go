package disk

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/ziptest"
)

// zipOf returns snapshot id of tm as an (untrusted) zip PE.
func zipOf(t *testing.T, tm *TypeManager, id pe.ID) pe.ProtectedEntity {
	t.Helper()
	z, _ := ziptest.Of(t, getPE(t, tm, id))
	return z
}

// TestSecurityRestoreExpansionLimit: a disk restore from a zip stops at
// its expansion bound with pe.ErrLimit, leaving no PE, no temporary file
// and an updated image as it was; zeros (holes) do not count, and a
// negative MaxExpansion lifts the bound (issue 22, item 8).
func TestSecurityRestoreExpansionLimit(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	src := filepath.Join(tm.Root(), "src.img")
	truncateFile(t, src, 64*miB)
	writeAt(t, src, bytes.Repeat([]byte("BOOM"), 4*miB), 8*miB) // 16 MiB, compresses well
	old := filepath.Join(tm.Root(), "old.img")
	writeRandomFile(t, old, 7, 2*miB)
	oldSHA := fileSHA(t, old)
	bomb := zipOf(t, tm, snapshot(t, tm, diskID(t, "src.img")))
	stored, _ := pe.StoredSize(bomb)
	t.Logf("16 MiB of data in a zip of %d bytes", stored)

	for _, opts := range []pe.CopyOptions{
		{Mode: pe.CreateNew, MaxExpansion: 2},
		{Mode: pe.Create, Name: "new.img", MaxExpansion: 2},
		{Mode: pe.Update, Name: "old.img", MaxExpansion: 2},
	} {
		_, err := tm.Copy(ctx, bomb, opts)
		if !errors.Is(err, pe.ErrLimit) || !strings.Contains(err.Error(), "--max-expansion") {
			t.Errorf("%v: %v, want pe.ErrLimit naming --max-expansion", opts.Mode, err)
		}
	}
	ids, err := tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 {
		t.Errorf("PEs after refused restores: %v, want src.img and old.img", ids)
	}
	if got := fileSHA(t, old); got != oldSHA {
		t.Error("a refused update changed old.img")
	}
	if l := leftovers(t, tm); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}

	p, err := tm.Copy(ctx, bomb, pe.CopyOptions{Mode: pe.CreateNew, MaxExpansion: -1})
	if err != nil {
		t.Fatalf("MaxExpansion -1: %v", err)
	}
	if got, want := fileSHA(t, filepath.Join(tm.Root(), p.ID().Name())), fileSHA(t, src); got != want {
		t.Error("the restored image differs from the source")
	}

	// 64 MiB of zeros and 256 KiB of data: the default bound holds.
	sparse := filepath.Join(tm.Root(), "sparse.img")
	truncateFile(t, sparse, 64*miB)
	writeAt(t, sparse, randomBytes(3, 256*kiB), 32*miB)
	if _, err := tm.Copy(ctx, zipOf(t, tm, snapshot(t, tm, diskID(t, "sparse.img"))), pe.CopyOptions{Mode: pe.CreateNew}); err != nil {
		t.Errorf("restore of a mostly sparse image: %v", err)
	}
}

// TestSecurityRestoreZipDeclaredSizeBomb: a few KiB of zip whose disk
// image declares 1 PiB is refused with pe.ErrLimit under the default
// expansion bound before anything is made or read: no PE, no temporary
// file, an updated image as it was. The declared size is the capacity of
// the image made, all but the zip's data of it holes; before the check
// the restore made a 1 PiB sparse file (or failed with EFBIG where the
// filesystem cannot) and read every declared byte.
func TestSecurityRestoreZipDeclaredSizeBomb(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	writeAt(t, filepath.Join(tm.Root(), "small.img"), randomBytes(5, 64*kiB), 0)
	old := filepath.Join(tm.Root(), "old.img")
	writeRandomFile(t, old, 7, 1*miB)
	oldSHA := fileSHA(t, old)
	bomb := ziptest.Declaring(t, getPE(t, tm, snapshot(t, tm, diskID(t, "small.img"))), 1<<50)

	for _, opts := range []pe.CopyOptions{
		{Mode: pe.CreateNew},
		{Mode: pe.Create, Name: "new.img"},
		{Mode: pe.Update, Name: "old.img"},
	} {
		_, err := tm.Copy(ctx, bomb, opts)
		if !errors.Is(err, pe.ErrLimit) || !strings.Contains(err.Error(), "holes and zeros included") {
			t.Errorf("%v: %v, want pe.ErrLimit on what the source may produce", opts.Mode, err)
		}
	}
	ids, err := tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 {
		t.Errorf("PEs after refused restores: %v, want small.img and old.img", ids)
	}
	if got := fileSHA(t, old); got != oldSHA {
		t.Error("a refused update changed old.img")
	}
	if l := leftovers(t, tm); len(l) != 0 {
		t.Errorf("temporary files left: %v", l)
	}
}
