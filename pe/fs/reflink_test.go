package fs

import (
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

// TestReflinkSnapshot: on a filesystem with reflinks, a snapshot shares
// the files' extents and is still isolated from later writes.
func TestReflinkSnapshot(t *testing.T) {
	mnt := petest.MountXFS(t, t.TempDir(), 512<<20)
	tm := newTestRoot(t, mnt)
	live := filepath.Join(tm.Root(), "data")
	makeTree(t, live)
	want, _ := treeEntries(t, live)
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))
	si, err := tm.trees.readSnapshotInfo("data", sid.Snapshot())
	must(t, err)
	if si.Copied != 0 || si.Reflinked != si.Files {
		t.Errorf("on XFS %d files reflinked, %d copied; want all reflinked", si.Reflinked, si.Copied)
	}
	writeFile(t, filepath.Join(live, "big.bin"), []byte("overwritten"), 0o640)
	got, _ := treeEntries(t, tm.trees.treePath("data", sid.Snapshot()))
	compareEntries(t, "reflinked snapshot", got, want)
}
