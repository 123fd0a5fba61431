package disk

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func TestNewTypeManagerNeedsDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewTypeManager(filepath.Join(dir, "nosuch")); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("missing root: error %v", err)
	}
	file := filepath.Join(dir, "file")
	truncateFile(t, file, 10)
	if _, err := NewTypeManager(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("file root: error %v", err)
	}
}

func TestListAndGet(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	root := tm.Root()
	truncateFile(t, filepath.Join(root, "vm1.img"), 1*miB)
	writeAt(t, filepath.Join(root, "b.raw"), []byte("x"), 0)
	truncateFile(t, filepath.Join(root, ".hidden.img"), 1)
	truncateFile(t, filepath.Join(root, "bad name"), 1) // not a valid ID part
	if err := os.Mkdir(filepath.Join(root, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Links to files and dangling links are not disks.
	if err := os.Symlink("vm1.img", filepath.Join(root, "link.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent", filepath.Join(root, "dangling")); err != nil {
		t.Fatal(err)
	}
	snapshot(t, tm, diskID(t, "vm1.img")) // creates .snapshots, which must stay hidden

	ids, err := tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, id := range ids {
		got = append(got, id.String())
	}
	if want := []string{"disk:b.raw", "disk:vm1.img"}; !reflect.DeepEqual(got, want) {
		t.Errorf("List = %v, want %v", got, want)
	}

	for _, bad := range []string{"disk:nosuch", "disk:.hidden.img", "disk:dir", "disk:link.img", "disk:.snapshots",
		"disk:..", "disk:a/b", "disk:vm1.img:nosnap", "disk:vm1.img:..", "disk:vm1.img:.tmp-x", "fs:vm1.img"} {
		id, err := pe.ParseID(bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tm.Get(ctx, id); !errors.Is(err, pe.ErrNotFound) {
			t.Errorf("Get(%s) error = %v, want ErrNotFound", bad, err)
		}
	}

	p := getPE(t, tm, diskID(t, "vm1.img"))
	info, err := p.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != p.ID() || info.Name != "vm1.img" || info.Size != 1*miB || info.Created != nil {
		t.Errorf("Info = %+v", info)
	}
	if _, err := p.Metadata(ctx); !errors.Is(err, pe.ErrNoMetadata) {
		t.Errorf("Metadata error = %v, want ErrNoMetadata", err)
	}
	if comps, err := p.Components(ctx); err != nil || len(comps) != 0 {
		t.Errorf("Components = %v, %v", comps, err)
	}
	img, err := p.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, ok := img.(pe.ChangeTracker); ok {
		t.Error("the live image offers ChangedSince")
	}
}

func TestSnapshotLifecycle(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	path := filepath.Join(tm.Root(), "vm.img")
	writeAt(t, path, randomBytes(1, 300*kiB), 0)
	id := diskID(t, "vm.img")
	p := getPE(t, tm, id)

	s1, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2 := snapshot(t, tm, id)
	if s1.Base() != id || !s1.HasSnapshot() || s1 == s2 {
		t.Fatalf("snapshots %v, %v", s1, s2)
	}
	list, err := p.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(list, []pe.ID{s1, s2}) {
		t.Errorf("ListSnapshots = %v, want [%v %v]", list, s1, s2)
	}
	info, err := p.SnapshotInfo(ctx, s1.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != s1 || info.Size != 300*kiB || info.Created == nil || info.Created.IsZero() {
		t.Errorf("SnapshotInfo = %+v", info)
	}
	sp := getPE(t, tm, s1)
	if sinfo, err := sp.Info(ctx); err != nil || sinfo.ID != s1 || sinfo.Size != info.Size {
		t.Errorf("snapshot PE Info = %+v, %v", sinfo, err)
	}
	if _, err := sp.Snapshot(ctx, nil); err == nil {
		t.Error("snapshot of a snapshot succeeded")
	}
	if err := sp.Overwrite(ctx, p, false); err == nil {
		t.Error("overwrite of a snapshot succeeded")
	}
	if _, err := p.SnapshotInfo(ctx, "nosuch"); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("SnapshotInfo(nosuch) error = %v", err)
	}
	if err := p.DeleteSnapshot(ctx, "nosuch"); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("DeleteSnapshot(nosuch) error = %v", err)
	}
	if err := p.DeleteSnapshot(ctx, s1.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteSnapshot(ctx, s1.Snapshot()); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("second DeleteSnapshot error = %v", err)
	}
	if _, err := tm.Get(ctx, s1); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("Get of deleted snapshot error = %v", err)
	}
	if list, _ := p.ListSnapshots(ctx); !reflect.DeepEqual(list, []pe.ID{s2}) {
		t.Errorf("ListSnapshots after delete = %v", list)
	}
	// A snapshot outlives its live image.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := peSHA(t, tm, s2); got == "" {
		t.Error("no data")
	}
}

func TestSnapshotIsolation(t *testing.T) {
	tm := newTestRoot(t, "")
	path := filepath.Join(tm.Root(), "vm.img")
	writeRandomFile(t, path, 1, 8*miB+12345) // not a block multiple
	before := fileSHA(t, path)
	id := diskID(t, "vm.img")
	snap := snapshot(t, tm, id)
	if m := snapshotInfoOf(t, tm, snap).Method; m != MethodCopy {
		t.Errorf("method on the test filesystem = %q, want %q", m, MethodCopy)
	}

	// Overwrite parts and extend the live image.
	writeAt(t, path, randomBytes(2, 100*kiB), 0)
	writeAt(t, path, randomBytes(3, 1*miB), 5*miB+7)
	writeAt(t, path, randomBytes(4, 3*miB), 10*miB)
	if fileSHA(t, path) == before {
		t.Fatal("live image did not change")
	}

	img := openData(t, tm, snap)
	defer img.Close()
	if img.Size() != 8*miB+12345 {
		t.Errorf("snapshot size %d", img.Size())
	}
	if got := imageSHA(t, img); got != before {
		t.Errorf("snapshot data changed with the live image: sha %s, want %s", got, before)
	}
	// ReadAt at and across the end.
	buf := make([]byte, 100)
	if n, err := img.ReadAt(buf, img.Size()-10); n != 10 || err != io.EOF {
		t.Errorf("ReadAt across end = %d, %v", n, err)
	}
	if n, err := img.ReadAt(buf, img.Size()); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at end = %d, %v", n, err)
	}
	// The live PE reads the new bytes.
	if got := peSHA(t, tm, id); got != fileSHA(t, path) {
		t.Error("live data differs from the file")
	}
}

func TestFailedSnapshotLeavesNothing(t *testing.T) {
	tm := newTestRoot(t, "")
	writeRandomFile(t, filepath.Join(tm.Root(), "vm.img"), 1, 32*miB)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := getPE(t, tm, diskID(t, "vm.img"))
	if _, err := p.Snapshot(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("snapshot with cancelled context: %v", err)
	}
	entries, err := os.ReadDir(tm.disks.Snapshots().Of("vm.img"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("failed snapshot left %v", entries)
	}
	if list, err := p.ListSnapshots(context.Background()); err != nil || len(list) != 0 {
		t.Errorf("ListSnapshots = %v, %v", list, err)
	}
}

func TestExtentsSmall(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	path := filepath.Join(tm.Root(), "s.img")
	// data [1M,2M), hole up to the end at 4M (SEEK_DATA answers ENXIO there).
	truncateFile(t, path, 4*miB)
	writeAt(t, path, randomBytes(1, 1*miB), 1*miB)
	img := openData(t, tm, diskID(t, "s.img"))
	defer img.Close()
	tests := []struct {
		off, n int64
		want   []pe.Extent
	}{
		{0, 4 * miB, []pe.Extent{ext(0, miB, pe.ExtentHole), ext(miB, miB, pe.ExtentData), ext(2*miB, 2*miB, pe.ExtentHole)}},
		{miB + 5, 10, []pe.Extent{ext(miB+5, 10, pe.ExtentData)}},
		{3 * miB, 10 * miB, []pe.Extent{ext(3*miB, miB, pe.ExtentHole)}},
		{miB / 2, miB, []pe.Extent{ext(miB/2, miB/2, pe.ExtentHole), ext(miB, miB/2, pe.ExtentData)}},
		{4 * miB, 1, nil},
		{0, 0, nil},
	}
	for _, tt := range tests {
		got, err := img.Extents(ctx, tt.off, tt.n)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Extents(%d, %d) = %v, want %v", tt.off, tt.n, got, tt.want)
		}
	}
}

func TestNewName(t *testing.T) {
	for in, re := range map[string]string{
		"vm1.img":             `^vm1-[0-9a-f]{8}\.img$`,
		"disk":                `^disk-[0-9a-f]{8}$`,
		"ns/claim_1":          `^ns_claim_1-[0-9a-f]{8}$`,
		".hidden":             `^hidden-[0-9a-f]{8}$`,
		"a.b.qcow2":           `^a\.b-[0-9a-f]{8}\.qcow2$`,
		"x.verylongextension": `^x\.verylongextension-[0-9a-f]{8}$`,
		"...":                 `^disk-[0-9a-f]{8}$`,
	} {
		got := new(disks).NewName(in)
		if !regexp.MustCompile(re).MatchString(got) || !pe.IsLocalName(got) {
			t.Errorf("NewName(%q) = %q, want match of %s", in, got, re)
		}
	}
}

func ext(off, n int64, kind pe.ExtentKind) pe.Extent {
	return pe.Extent{Offset: off, Length: n, Kind: kind}
}
