package disk

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func changedSince(t *testing.T, tm *TypeManager, snap pe.ID, base string) ([]pe.Extent, error) {
	t.Helper()
	img := openData(t, tm, snap)
	defer img.Close()
	ct, ok := img.(pe.ChangeTracker)
	if !ok {
		t.Fatalf("snapshot image %T is no pe.ChangeTracker", img)
	}
	return ct.ChangedSince(context.Background(), base)
}

func TestChangedSince(t *testing.T) {
	tm := newTestRoot(t, "")
	path := filepath.Join(tm.Root(), "vm.img")
	const size = 64 * blockSize
	writeAt(t, path, randomBytes(1, size), 0)
	id := diskID(t, "vm.img")
	a := snapshot(t, tm, id)

	// Change three separate blocks: a few bytes inside block 3, block 20
	// to zeros, and the last block.
	writeAt(t, path, []byte("changed"), 3*blockSize+100)
	writeAt(t, path, make([]byte, blockSize), 20*blockSize)
	writeAt(t, path, randomBytes(2, 10), size-10)
	b := snapshot(t, tm, id)

	got, err := changedSince(t, tm, b, a.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	want := []pe.Extent{
		ext(3*blockSize, blockSize, pe.ExtentData),
		ext(20*blockSize, blockSize, pe.ExtentHole),
		ext(63*blockSize, blockSize, pe.ExtentData),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("B.ChangedSince(A) = %v, want %v", got, want)
	}
	// A full snapshot ID works as base too.
	if got, err := changedSince(t, tm, b, a.String()); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ChangedSince(full ID) = %v, %v", got, err)
	}
	if got, err := changedSince(t, tm, a, a.Snapshot()); err != nil || len(got) != 0 {
		t.Errorf("A.ChangedSince(A) = %v, %v; want nothing", got, err)
	}
	// Backwards works as well: B's zero block is data again in A.
	if got, err := changedSince(t, tm, a, b.Snapshot()); err != nil || len(got) != 3 || got[1].Kind != pe.ExtentData {
		t.Errorf("A.ChangedSince(B) = %v, %v", got, err)
	}

	// Growth by 1.5 blocks: the new blocks have changed, the last one short.
	writeAt(t, path, randomBytes(3, blockSize+blockSize/2), size)
	c := snapshot(t, tm, id)
	got, err = changedSince(t, tm, c, b.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if want := []pe.Extent{ext(size, blockSize+blockSize/2, pe.ExtentData)}; !reflect.DeepEqual(got, want) {
		t.Errorf("C.ChangedSince(B) after growth = %v, want %v", got, want)
	}
	// And the short last block changes when the image grows again.
	writeAt(t, path, randomBytes(4, 10), size+2*blockSize)
	d := snapshot(t, tm, id)
	got, err = changedSince(t, tm, d, c.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if want := []pe.Extent{ext(size+blockSize, blockSize+10, pe.ExtentData)}; !reflect.DeepEqual(got, want) {
		t.Errorf("D.ChangedSince(C) = %v, want %v", got, want)
	}

	for _, base := range []string{"nosuch", "..", "disk:other.img:" + a.Snapshot(), "disk:vm.img"} {
		if _, err := changedSince(t, tm, b, base); !errors.Is(err, pe.ErrNotFound) {
			t.Errorf("ChangedSince(%q) error = %v, want ErrNotFound", base, err)
		}
	}
}
