package fusefs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// tarMember is a member of a tar written by writeTar: a directory when
// its name ends in "/", else a regular file.
type tarMember struct {
	name   string
	xattrs map[string]string
}

// writeTar writes members as PAX records, which may hold xattrs no local
// filesystem would (a crafted header), and serves them as tarTypes.
func writeTar(t *testing.T, members []tarMember) *tarTypes {
	t.Helper()
	path := filepath.Join(t.TempDir(), "crafted.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: 5, Format: tar.FormatPAX,
			ModTime: time.Unix(1.7e9, 0), PAXRecords: map[string]string{}}
		if strings.HasSuffix(m.name, "/") {
			h.Mode, h.Typeflag, h.Size = 0o755, tar.TypeDir, 0
		}
		for k, v := range m.xattrs {
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("data\n"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return newTarTypes(t, path)
}

// getfattr dumps the xattrs of path in every namespace as uid does, or
// fails the test.
func getfattr(t *testing.T, uid int, path string) string {
	t.Helper()
	requireTool(t, "getfattr", "attr")
	args := []string{"getfattr", "--absolute-names", "--dump", "--match=-", path}
	if uid != 0 {
		id := fmt.Sprint(uid)
		args = append([]string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups"}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Errorf("getfattr of %s as uid %d: %v\n%.500s", path, uid, err, out)
	}
	return string(out)
}

// A value over 64 KiB (the kernel's XATTR_SIZE_MAX) is left out, a list
// over 64 KiB is cut to what fits, so getfattr reads every file; trusted.*
// xattrs are root's alone on a mount other users see, as on ext4.
func TestXattrLimitsAndTrusted(t *testing.T) {
	many := map[string]string{}
	for i := range 300 { // 300 names of 239 bytes with their NULs: 71700
		many[fmt.Sprintf("user.%s%03d", strings.Repeat("n", 230), i)] = "v"
	}
	tt := writeTar(t, []tarMember{
		{name: "d/"},
		{name: "d/big", xattrs: map[string]string{
			"user.big": strings.Repeat("b", xattrSizeMax+1), "user.small": "ok", "trusted.secret": "s3"}},
		{name: "d/at-limit", xattrs: map[string]string{"user.full": strings.Repeat("f", xattrSizeMax)}},
		{name: "d/many", xattrs: many},
	})
	m, err := pe.NewManager(tt)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(snapDir(mountShared(t, m), tarSnapshot), "files", "d")
	big, atLimit, manyPath := filepath.Join(dir, "big"), filepath.Join(dir, "at-limit"), filepath.Join(dir, "many")

	out := getfattr(t, 0, big)
	if !strings.Contains(out, `user.small="ok"`) || !strings.Contains(out, `trusted.secret="s3"`) || strings.Contains(out, "user.big") {
		t.Errorf("getfattr of big as root:\n%.500s\nwant user.small and trusted.secret, not user.big", out)
	}
	if _, err := unix.Getxattr(big, "user.big", nil); !errors.Is(err, unix.ENODATA) {
		t.Errorf("getxattr user.big (over 64 KiB): %v, want ENODATA", err)
	}
	if n, err := unix.Getxattr(atLimit, "user.full", make([]byte, xattrSizeMax)); err != nil || n != xattrSizeMax {
		t.Errorf("getxattr user.full (64 KiB): %d bytes, %v", n, err)
	}

	out = getfattr(t, 0, manyPath)
	if got := strings.Count(out, "user.n"); got != xattrSizeMax/239 {
		t.Errorf("getfattr of many: %d xattrs, want the %d whose names fit in 64 KiB", got, xattrSizeMax/239)
	}
	if n, err := unix.Listxattr(manyPath, make([]byte, xattrSizeMax)); err != nil || n > xattrSizeMax {
		t.Errorf("listxattr of many: %d bytes, %v", n, err)
	}

	out = getfattr(t, 65534, big)
	if !strings.Contains(out, `user.small="ok"`) || strings.Contains(out, "trusted") {
		t.Errorf("getfattr of big as nobody:\n%.500s\nwant user.small, no trusted.*", out)
	}
}

// The lookups of a snapshot's files/ share one tree while a node shows it:
// after the kernel forgot files/ while a file below stays open, several
// lookups at once take the tree that file shows, and the table of contents
// is read once.
func TestFilesTreeBuiltOnce(t *testing.T) {
	needFUSE(t)
	tt := writeTar(t, []tarMember{{name: "d/"}, {name: "d/file"}})
	m, err := pe.NewManager(tt)
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	srv, root, err := mountRoot(m, mnt, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(srv, mnt); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
	})
	files := filepath.Join(snapDir(mnt, tarSnapshot), "files")
	f, err := os.Open(filepath.Join(files, "d", "file"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := tt.tocReads.Load(); n != 1 {
		t.Fatalf("%d reads of the table of contents for the first lookup, want 1", n)
	}

	var snap *fs.Inode = &root.Inode
	for _, name := range []string{tarSnapshot.Type(), tarSnapshot.Base().String(), "snapshots", tarSnapshot.Snapshot()} {
		if snap = snap.GetChild(name); snap == nil {
			t.Fatalf("no node %s on the way to the snapshot", name)
		}
	}
	for round := range 3 {
		if errno := snap.NotifyEntry("files"); errno != 0 {
			t.Fatalf("invalidate files/: %v", errno)
		}
		var wg sync.WaitGroup
		var failed atomic.Int64
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := os.Stat(filepath.Join(files, "d", "file")); err != nil {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Fatalf("round %d: %d stats failed", round, n)
		}
	}
	if n := tt.tocReads.Load(); n != 1 {
		t.Errorf("%d reads of the table of contents after files/ was looked up again, want 1", n)
	}
}

// snapshotTree builds a tree once for callers at once, keeps no failure,
// and lets the tree go when nothing holds it.
func TestSnapshotTreeShared(t *testing.T) {
	f := &fsys{}
	ctx := context.Background()
	var builds atomic.Int64
	release := make(chan struct{})
	build := func() (*tree, error) {
		builds.Add(1)
		<-release
		return newTree([]pe.TOCEntry{{Name: "a", Mode: 0o644}}, time.Unix(0, 0), 0), nil
	}
	if same := sharedTrees(t, f, build, release); !same {
		t.Error("callers at once got different trees")
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds for callers at once, want 1", n)
	}

	// Nothing holds the tree: it goes, and the next lookup builds anew.
	for i := 0; i < 100 && f.treeCount() > 0; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if n := f.treeCount(); n != 0 {
		t.Errorf("%d trees kept after nothing holds them", n)
	}
	if tr, err := f.snapshotTree(ctx, tarSnapshot, build); tr == nil || err != nil || builds.Load() != 2 {
		t.Errorf("after the tree went: %v %v, %d builds, want a second", tr, err, builds.Load())
	}

	boom := errors.New("toc unreadable")
	for range 2 {
		if _, err := f.snapshotTree(ctx, tarSnapshot.Base().WithSnapshot("s2"), func() (*tree, error) { return nil, boom }); !errors.Is(err, boom) {
			t.Errorf("failed build: %v", err)
		}
	}
	if _, ok := f.trees[tarSnapshot.Base().WithSnapshot("s2").String()]; ok {
		t.Error("a failed build is kept")
	}
}

// sharedTrees runs 8 callers of snapshotTree at once, lets build finish,
// and reports whether all got the same tree (which it then drops).
func sharedTrees(t *testing.T, f *fsys, build func() (*tree, error), release chan struct{}) bool {
	t.Helper()
	const callers = 8
	got := make([]*tree, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if got[i], err = f.snapshotTree(context.Background(), tarSnapshot, build); err != nil {
				t.Error(err)
			}
		}()
	}
	close(release)
	wg.Wait()
	for _, tr := range got {
		if tr == nil || tr != got[0] {
			return false
		}
	}
	return true
}

func (f *fsys) treeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.trees)
}
