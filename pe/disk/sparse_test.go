package disk

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// sparseRanges are the data of the 4 GiB sparse test image: 64 MiB in six
// ranges of 4–16 MiB, the last one ending at the end of the image.
var sparseRanges = []struct{ off, n int64 }{
	{0, 4 * miB},
	{100 * miB, 16 * miB},
	{1 * giB, 8 * miB},
	{2000 * miB, 12 * miB},
	{3000 * miB, 16 * miB},
	{4*giB - 8*miB, 8 * miB},
}

func TestSparseSnapshot(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	path := filepath.Join(tm.Root(), "sparse.img")
	const size = 4 * giB
	truncateFile(t, path, size)
	var want []pe.Extent
	pos := int64(0)
	for i, r := range sparseRanges {
		writeAt(t, path, randomBytes(uint64(i), int(r.n)), r.off)
		if r.off > pos {
			want = append(want, ext(pos, r.off-pos, pe.ExtentHole))
		}
		want = append(want, ext(r.off, r.n, pe.ExtentData))
		pos = r.off + r.n
	}
	if pos < size {
		want = append(want, ext(pos, size-pos, pe.ExtentHole))
	}

	id := diskID(t, "sparse.img")
	live := openData(t, tm, id)
	defer live.Close()
	got, err := live.Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("live Extents =\n%v\nwant\n%v", got, want)
	}

	snap := snapshot(t, tm, id)
	simg := filepath.Join(tm.disks.Snapshots().Path(id.Name(), snap.Snapshot()), imageFile)
	if used := allocated(t, simg); used < 64*miB || used > 66*miB {
		t.Errorf("snapshot image occupies %d bytes (%.1f MiB), want 64–66 MiB", used, float64(used)/miB)
	}
	img := openData(t, tm, snap)
	defer img.Close()
	if img.Size() != size {
		t.Errorf("snapshot size %d", img.Size())
	}
	got, err = img.Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("snapshot Extents =\n%v\nwant\n%v", got, want)
	}
	// The holes cost nothing to read; compare the data.
	for _, r := range sparseRanges {
		a, b := make([]byte, r.n), make([]byte, r.n)
		if _, err := live.ReadAt(a, r.off); err != nil {
			t.Fatal(err)
		}
		if _, err := img.ReadAt(b, r.off); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("snapshot data at %d differs", r.off)
		}
	}
	// Nothing changed: a second snapshot has no changed blocks.
	snap2 := snapshot(t, tm, id)
	img2 := openData(t, tm, snap2)
	defer img2.Close()
	changed, err := img2.(pe.ChangeTracker).ChangedSince(ctx, snap.Snapshot())
	if err != nil || len(changed) != 0 {
		t.Errorf("ChangedSince of unchanged sparse image = %v, %v", changed, err)
	}
}
