package disk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

// attachLoop attaches file to a free loop device and returns the device;
// cleanup detaches it.
func attachLoop(t *testing.T, file string) string {
	t.Helper()
	petest.RequireRoot(t, "attaches a loop device")
	petest.RequireTool(t, "losetup", "mount")
	dev := petest.Run(t, "losetup", "-f", "--show", file)
	t.Cleanup(func() { petest.Run(t, "losetup", "-d", dev) })
	return dev
}

func TestBlockDevice(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tm := newTestRoot(t, dir)
	backing := filepath.Join(dir, "backing.img")
	const size = 8 * miB
	// Data in the first and last MiB, zeros between.
	truncateFile(t, backing, size)
	writeAt(t, backing, randomBytes(1, miB), 0)
	writeAt(t, backing, randomBytes(2, miB), size-miB)
	want := fileSHA(t, backing)
	dev := attachLoop(t, backing)
	if err := os.Symlink(dev, filepath.Join(tm.Root(), "dev0")); err != nil {
		t.Fatal(err)
	}

	ids, err := tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := diskID(t, "dev0")
	if !reflect.DeepEqual(ids, []pe.ID{id}) {
		t.Fatalf("List = %v, want [%v]", ids, id)
	}
	p := getPE(t, tm, id)
	if info, err := p.Info(ctx); err != nil || info.Size != size {
		t.Errorf("Info = %+v, %v; want size %d", info, err, size)
	}
	img := openData(t, tm, id)
	if img.Size() != size {
		t.Errorf("device image size %d", img.Size())
	}
	if exts, err := img.Extents(ctx, 0, size); err != nil || !reflect.DeepEqual(exts, []pe.Extent{ext(0, size, pe.ExtentData)}) {
		t.Errorf("device Extents = %v, %v; want all data", exts, err)
	}
	if got := imageSHA(t, img); got != want {
		t.Errorf("device data sha %s, want %s", got, want)
	}
	img.Close()

	snap := snapshot(t, tm, id)
	si := snapshotInfoOf(t, tm, snap)
	if si.Method != MethodCopy || !si.Device || si.Size != size {
		t.Errorf("snapshot info %+v", si)
	}
	if got := peSHA(t, tm, snap); got != want {
		t.Errorf("snapshot sha %s, want %s", got, want)
	}
	// The device has no holes, but its zero blocks become holes.
	simg := filepath.Join(tm.disks.Snapshots().Path("dev0", snap.Snapshot()), imageFile)
	if used := allocated(t, simg); used > 2*miB+64*kiB {
		t.Errorf("device snapshot occupies %d bytes, want about 2 MiB", used)
	}

	// Overwrite the device in place from a smaller image; what the source
	// has as holes must be zeroed on the device.
	other := filepath.Join(tm.Root(), "small.img")
	truncateFile(t, other, 4*miB)
	writeAt(t, other, randomBytes(3, 64*kiB), 2*miB)
	if _, err := tm.Copy(ctx, getPE(t, tm, diskID(t, "small.img")), pe.CopyOptions{Mode: pe.Update, Name: "dev0"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes := make([]byte, size)
	copy(wantBytes[2*miB:], randomBytes(3, 64*kiB))
	copy(wantBytes[size-miB:], randomBytes(2, miB)) // past the source: untouched
	if !bytes.Equal(got, wantBytes) {
		t.Error("device after update differs from the source image")
	}
	// A source larger than the device is refused.
	truncateFile(t, other, size+miB)
	if _, err := tm.Copy(ctx, getPE(t, tm, diskID(t, "small.img")), pe.CopyOptions{Mode: pe.Update, Name: "dev0"}); err == nil {
		t.Error("update of a device from a larger image succeeded")
	}
	// And the snapshot restores the device.
	if err := p.Overwrite(ctx, getPE(t, tm, snap), false); err != nil {
		t.Fatal(err)
	}
	if got := fileSHA(t, backing); got != want {
		t.Errorf("device after restore of its snapshot: sha %s, want %s", got, want)
	}
}
