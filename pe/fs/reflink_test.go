package fs

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// mountXFS makes a reflink-capable XFS filesystem of size bytes in a file
// under dir, loop-mounts it and returns the mount point. Cleanup unmounts
// it, which also detaches the loop device (mount sets autoclear).
func mountXFS(tb testing.TB, dir string, size int64) string {
	tb.Helper()
	requireRoot(tb)
	requireTool(tb, "mkfs.xfs", "xfsprogs")
	requireTool(tb, "mount", "mount")
	img := filepath.Join(dir, "xfs.img")
	f, err := os.Create(img)
	must(tb, err)
	must(tb, f.Truncate(size))
	must(tb, f.Close())
	runCmd(tb, "mkfs.xfs", "-q", "-m", "reflink=1", img)
	mnt := filepath.Join(dir, "mnt")
	must(tb, os.Mkdir(mnt, 0o755))
	runCmd(tb, "mount", "-o", "loop", img, mnt)
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// TestReflinkSnapshot: on a filesystem with reflinks, a snapshot shares
// the files' extents and is still isolated from later writes.
func TestReflinkSnapshot(t *testing.T) {
	mnt := mountXFS(t, t.TempDir(), 512<<20)
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
