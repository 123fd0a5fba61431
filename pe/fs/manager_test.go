package fs

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

func TestNewTypeManagerNeedsDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewTypeManager(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing root accepted")
	}
	file := filepath.Join(dir, "file")
	writeFile(t, file, nil, 0o644)
	if _, err := NewTypeManager(file); err == nil {
		t.Error("file as root accepted")
	}
	tm, err := NewTypeManager(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tm.Type() != "fs" || tm.Root() != dir {
		t.Errorf("Type %q Root %q", tm.Type(), tm.Root())
	}
}

func TestListAndGet(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	for _, d := range []string{"b", "a", "with space", ".hidden", "x.y_z-1"} {
		must(t, os.Mkdir(filepath.Join(tm.Root(), d), 0o755))
	}
	writeFile(t, filepath.Join(tm.Root(), "file"), nil, 0o644)
	must(t, os.Symlink("a", filepath.Join(tm.Root(), "linkdir")))
	snapshot(t, getPE(t, tm, fsID(t, "a"))) // makes .snapshots

	ids, err := tm.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, id := range ids {
		names = append(names, id.Name())
	}
	if want := []string{"a", "b", "x.y_z-1"}; !reflect.DeepEqual(names, want) {
		t.Errorf("List = %v, want %v", names, want)
	}

	for _, name := range []string{"missing", "file", "linkdir", ".hidden", ".snapshots", "a/b", ".."} {
		id, err := pe.ParseID("fs:" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tm.Get(ctx, id); !errors.Is(err, pe.ErrNotFound) {
			t.Errorf("Get %s: %v, want ErrNotFound", id, err)
		}
	}
	if _, err := tm.Get(ctx, fsID(t, "a").WithSnapshot("20260101T000000.000Z-00000000")); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("Get missing snapshot: %v, want ErrNotFound", err)
	}
	other, _ := pe.NewID("disk", "a")
	if _, err := tm.Get(ctx, other); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("Get of another type: %v, want ErrNotFound", err)
	}

	p := getPE(t, tm, fsID(t, "b"))
	if _, err := p.Metadata(ctx); !errors.Is(err, pe.ErrNoMetadata) {
		t.Errorf("Metadata: %v, want ErrNoMetadata", err)
	}
	if c, err := p.Components(ctx); err != nil || len(c) != 0 {
		t.Errorf("Components = %v, %v", c, err)
	}
	info, err := p.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img := openData(t, p)
	if info.ID != p.ID() || info.Name != "b" || info.Size != img.Size() || info.Created != nil {
		t.Errorf("Info = %+v, image size %d", info, img.Size())
	}
}

func TestSnapshotLifecycle(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	makeTree(t, filepath.Join(tm.Root(), "data"))
	p := getPE(t, tm, fsID(t, "data"))

	s1 := snapshot(t, p)
	s2 := snapshot(t, p)
	if s1.Base() != p.ID() || !s1.HasSnapshot() {
		t.Fatalf("snapshot ID %s", s1)
	}
	list, err := p.ListSnapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(list, []pe.ID{s1, s2}) {
		t.Errorf("ListSnapshots = %v, want %v", list, []pe.ID{s1, s2})
	}

	info, err := p.SnapshotInfo(ctx, s1.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	sp := getPE(t, tm, s1)
	img := openData(t, sp)
	if info.ID != s1 || info.Name != "data" || info.Created == nil || info.Size != img.Size() {
		t.Errorf("SnapshotInfo = %+v, image size %d", info, img.Size())
	}
	if got, err := sp.Info(ctx); err != nil || !reflect.DeepEqual(got, info) {
		t.Errorf("Info of snapshot PE = %+v, %v; want %+v", got, err, info)
	}
	if _, err := sp.Snapshot(ctx, nil); err == nil {
		t.Error("snapshot of a snapshot succeeded")
	}
	if err := sp.Overwrite(ctx, p, false); !errors.Is(err, pe.ErrNotSupported) {
		t.Errorf("Overwrite of a snapshot: %v, want ErrNotSupported", err)
	}

	// The snapshot directory is complete: tree, info.json, no leftovers.
	var si snapshotInfo
	b, err := os.ReadFile(filepath.Join(tm.trees.Snapshots().Path("data", s1.Snapshot()), snapdir.InfoFile))
	must(t, err)
	must(t, json.Unmarshal(b, &si))
	if si.Files == 0 || si.Files != si.Reflinked+si.Copied || si.ImageSize != img.Size() {
		t.Errorf("info.json = %+v", si)
	}
	if h := hiddenEntries(t, tm.trees.Snapshots().Of("data")); len(h) != 0 {
		t.Errorf("leftovers in the snapshot directory: %v", h)
	}

	if err := p.DeleteSnapshot(ctx, s1.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteSnapshot(ctx, s1.Snapshot()); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	if err := p.DeleteSnapshot(ctx, "../data"); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("delete of a path: %v, want ErrNotFound", err)
	}
	if _, err := tm.Get(ctx, s1); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("Get deleted snapshot: %v, want ErrNotFound", err)
	}
	if _, err := p.SnapshotInfo(ctx, s1.Snapshot()); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("SnapshotInfo of deleted snapshot: %v, want ErrNotFound", err)
	}
	if list, _ := p.ListSnapshots(ctx); !reflect.DeepEqual(list, []pe.ID{s2}) {
		t.Errorf("after delete ListSnapshots = %v", list)
	}

	// A snapshot outlives its tree.
	must(t, os.RemoveAll(filepath.Join(tm.Root(), "data")))
	if _, err := tm.Get(ctx, p.ID()); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("Get of deleted tree: %v", err)
	}
	readImage(t, openData(t, getPE(t, tm, s2)))
}

// TestSnapshotCopiesTree checks the snapshot tree itself: everything the
// live tree has, hard links still hard links, sockets left out.
func TestSnapshotCopiesTree(t *testing.T) {
	tm := newTestRoot(t, t.TempDir())
	live := filepath.Join(tm.Root(), "data")
	makeTree(t, live)
	// A socket file as bind(2) leaves it (mknod makes the same inode).
	must(t, syscall.Mknod(filepath.Join(live, "sock"), syscall.S_IFSOCK|0o755, 0))
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))
	tree := tm.trees.treePath("data", sid.Snapshot())

	want, wantLinks := treeEntries(t, live)
	got, gotLinks := treeEntries(t, tree)
	compareEntries(t, "snapshot tree", got, want)
	if !reflect.DeepEqual(gotLinks, wantLinks) || len(gotLinks) < 2 {
		t.Errorf("hard links %v, want %v", gotLinks, wantLinks)
	}
	if got["pipe"].Type != "fifo" {
		t.Errorf("fifo copied as %+v", got["pipe"])
	}
	if os.Geteuid() == 0 && (got["null"].Dev != [2]int64{1, 3} || gotLinks["null2"] != "null") {
		t.Errorf("device node copied as %+v, links %v", got["null"], gotLinks)
	}
	if _, err := os.Lstat(filepath.Join(tree, "sock")); !os.IsNotExist(err) {
		t.Errorf("socket copied: %v", err)
	}
	si, err := tm.trees.readSnapshotInfo("data", sid.Snapshot())
	must(t, err)
	if si.SkippedCount != 1 || !reflect.DeepEqual(si.Skipped, []string{"sock"}) {
		t.Errorf("skipped %d %v, want the socket", si.SkippedCount, si.Skipped)
	}
	// Sparse files stay sparse.
	var st syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(tree, "sparse.img"), &st))
	if st.Blocks*512 >= 4<<20 {
		t.Errorf("sparse.img uses %d bytes in the snapshot", st.Blocks*512)
	}
}

func TestSnapshotIsolation(t *testing.T) {
	tm := newTestRoot(t, t.TempDir())
	live := filepath.Join(tm.Root(), "data")
	makeTree(t, live)
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))

	before := readImage(t, openData(t, getPE(t, tm, sid)))
	files, _ := tarEntries(t, bytesReader(before))
	if files["big.bin"].Size <= 1<<20 || files["a.txt"].Xattrs["user.test"] != "v1" {
		t.Fatalf("tree not as made: %+v %+v", files["big.bin"], files["a.txt"])
	}

	// Change the live tree in every way; hl1 in place, so that the
	// snapshot's hard link would show it if it shared the inode.
	f, err := os.OpenFile(filepath.Join(live, "hl1"), os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("CHANGED"), 0)
	must(t, err)
	must(t, f.Close())
	writeFile(t, filepath.Join(live, "big.bin"), randomBytes(99, 2<<20), 0o640)
	writeFile(t, filepath.Join(live, "sub", "new.txt"), []byte("new"), 0o644)
	must(t, os.Remove(filepath.Join(live, "a.txt")))
	must(t, os.Chtimes(filepath.Join(live, "empty"), time.Now(), time.Now()))
	must(t, os.Chmod(filepath.Join(live, "sub", "run.sh"), 0o600))

	after := readImage(t, openData(t, getPE(t, tm, sid)))
	if sha(after) != sha(before) {
		t.Error("snapshot image changed after the live tree changed")
	}
	got, _ := tarEntries(t, bytesReader(after))
	compareEntries(t, "snapshot after changes", got, files)

	liveEntries, _ := tarEntries(t, bytesReader(readImage(t, openData(t, getPE(t, tm, fsID(t, "data"))))))
	if liveEntries["hl1"].SHA == files["hl1"].SHA || liveEntries["sub/new.txt"].Type != "file" {
		t.Error("live image does not show the changes")
	}
}

func TestNewName(t *testing.T) {
	for base, prefix := range map[string]string{
		"data":                    "data-",
		"a/b/c.img":               "a_b_c.img-",
		".hidden":                 "hidden-",
		"...":                     "fs-",
		strings.Repeat("x", 1000): strings.Repeat("x", 200) + "-",
	} {
		n := new(trees).NewName(base)
		if !strings.HasPrefix(n, prefix) || len(n) != len(prefix)+8 || !pe.IsLocalName(n) {
			t.Errorf("NewName(%.20q) = %q, want %s<8 hex digits>", base, n, prefix)
		}
	}
	if a, b := new(trees).NewName("data"), new(trees).NewName("data"); a == b {
		t.Error("NewName is not random")
	}
}
