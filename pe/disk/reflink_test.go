package disk

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

func TestReflinkSnapshot(t *testing.T) {
	ctx := context.Background()
	mnt := petest.MountXFS(t, t.TempDir(), 512*miB)
	tm := newTestRoot(t, mnt)
	path := filepath.Join(tm.Root(), "vm.img")
	writeRandomFile(t, path, 5, 256*miB)
	want := fileSHA(t, path)
	id := diskID(t, "vm.img")

	a := snapshot(t, tm, id)
	if m := snapshotInfoOf(t, tm, a).Method; m != MethodReflink {
		t.Fatalf("snapshot method on XFS with reflink = %q, want %q", m, MethodReflink)
	}
	if got := peSHA(t, tm, a); got != want {
		t.Errorf("reflinked snapshot sha %s, want %s", got, want)
	}

	// Copy on write: the live image changes, the clone does not.
	writeAt(t, path, randomBytes(6, blockSize), 7*blockSize)
	if got := peSHA(t, tm, a); got != want {
		t.Error("reflinked snapshot changed with the live image")
	}
	b := snapshot(t, tm, id)
	got, err := changedSince(t, tm, b, a.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if want := []pe.Extent{ext(7*blockSize, blockSize, pe.ExtentData)}; !reflect.DeepEqual(got, want) {
		t.Errorf("ChangedSince after one block = %v, want %v", got, want)
	}

	// Restoring a snapshot on the same filesystem clones too: a 256 MiB
	// image fits on the 512 MiB filesystem only a few times if copied.
	for range 4 {
		p, err := tm.Copy(ctx, getPE(t, tm, a), pe.CopyOptions{Mode: pe.CreateNew})
		if err != nil {
			t.Fatal(err)
		}
		if got := peSHA(t, tm, p.ID()); got != want {
			t.Errorf("restored %s sha %s, want %s", p.ID(), got, want)
		}
	}
}
