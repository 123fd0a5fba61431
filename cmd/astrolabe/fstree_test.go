package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"
)

// rootfsEnv names the cached Debian tree scripts/deps.d/rootfs.sh builds.
const rootfsEnv = "ASTROLABE_TEST_ROOTFS"

// cachedRootfs is the debootstrap --variant=minbase tree of this machine;
// the test fails with how to build it if it is missing.
func cachedRootfs(t *testing.T) string {
	t.Helper()
	dir := os.Getenv(rootfsEnv)
	if dir == "" {
		dir = "/var/cache/astrolabe-test/rootfs-minbase"
	}
	if _, err := os.Stat(filepath.Join(dir, ".astrolabe-complete")); err != nil {
		t.Fatalf("no Debian minbase tree at %s: run scripts/deps.d/rootfs.sh (as root; builds it once per machine, about two minutes) or set %s", dir, rootfsEnv)
	}
	for tool, pkg := range map[string]string{"rsync": "rsync", "setfacl": "acl", "setcap": "libcap2-bin"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y %s (or run scripts/deps.d/rootfs.sh)", tool, pkg)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test must run as root: the tree has device nodes and files of other owners")
	}
	return dir
}

// addWhatMinbaseLacks adds to the tree at dir every kind of file a Linux
// tree holds that a minbase debootstrap has few or none of.
func addWhatMinbaseLacks(t *testing.T, dir string) {
	t.Helper()
	srv := filepath.Join(dir, "srv", "astrolabe")
	ok := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ok(os.MkdirAll(filepath.Join(srv, "data"), 0o755))
	p := func(name string) string { return filepath.Join(srv, name) }
	write := func(name, body string, mode uint32) {
		ok(os.WriteFile(p(name), []byte(body), 0o600))
		ok(unix.Chmod(p(name), mode)) // os.Chmod takes Go's mode bits, not setuid
	}
	ok(os.Symlink("/etc/os-release", p("abs-link")))
	ok(os.Symlink("../../usr/lib/os-release", p("rel-link")))
	ok(os.Symlink("/nonexistent/target", p("dangling-abs")))
	ok(unix.Mkfifo(p("fifo"), 0o620))
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p("sock"), Net: "unix"})
	ok(err)
	l.SetUnlinkOnClose(false)
	ok(l.Close())
	write("data/first", "one file, two names\n", 0o644)
	ok(os.Link(p("data/first"), p("hardlink")))
	write("setuid", "#!/bin/sh\n", 0o4755)
	write("setgid", "#!/bin/sh\n", 0o2755)
	ok(os.Chown(p("setgid"), 0, 42))
	ok(os.Mkdir(p("sticky"), 0o755))
	ok(unix.Chmod(p("sticky"), 0o1777))
	ok(os.Mkdir(p("shared"), 0o755))
	ok(unix.Chmod(p("shared"), 0o2775))
	ok(os.Chown(p("shared"), 1234, 100))
	write("owned", "not root's\n", 0o640)
	ok(os.Chown(p("owned"), 1234, 5678))
	bin, err := os.ReadFile(filepath.Join(dir, "usr", "bin", "true"))
	ok(err)
	write("ping", string(bin), 0o755)
	runTool(t, "setcap", "cap_net_raw=ep", p("ping"))
	write("acl.txt", "shared by ACL\n", 0o640)
	runTool(t, "setfacl", "-m", "u:1234:rw,g:100:r", p("acl.txt"))
	ok(os.Mkdir(p("acl-dir"), 0o755))
	runTool(t, "setfacl", "-d", "-m", "g:100:rx", p("acl-dir"))
	write("xattrs.txt", "with xattrs\n", 0o644)
	ok(unix.Lsetxattr(p("xattrs.txt"), "user.note", []byte("kept everywhere"), 0))
	ok(unix.Lsetxattr(p("xattrs.txt"), "user.bin", []byte("a\x00b\xff"), 0))
	ok(unix.Lsetxattr(p("xattrs.txt"), "trusted.admin", []byte("root only"), 0))
	ok(unix.Mknod(p("loop9"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
	f, err := os.Create(p("sparse.img"))
	ok(err)
	for _, off := range []int64{0, 40 << 20, 100<<20 - 4096} {
		_, err := f.WriteAt(bytes.Repeat([]byte("sparse"), 682), off)
		ok(err)
	}
	ok(f.Close())
	// Nanosecond mtimes, deepest first: setting them is no change to the
	// directories that hold them.
	mt := time.Date(2026, 2, 3, 4, 5, 6, 123456789, time.UTC)
	var names []string
	ok(filepath.Walk(srv, func(path string, _ os.FileInfo, err error) error {
		names = append(names, path)
		return err
	}))
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	for i, n := range names {
		ts := unix.NsecToTimespec(mt.Add(time.Duration(i) * 1_000_001_001).UnixNano())
		ok(unix.UtimesNanoAt(unix.AT_FDCWD, n, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
	ts := unix.NsecToTimespec(mt.UnixNano())
	ok(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Dir(srv), []unix.Timespec{ts, ts}, 0))
}

// rsyncDiff runs rsync -aHAXn --itemize-changes --delete from src to dst
// and returns what it would change, path → itemized change.
func rsyncDiff(t *testing.T, src, dst string) map[string]string {
	t.Helper()
	out, err := exec.Command("rsync", "-aHAXn", "--numeric-ids", "--itemize-changes", "--delete", src+"/", dst+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("rsync %s %s: %v\n%s", src, dst, err, out)
	}
	diff := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		change, path, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("rsync printed %q", line)
		}
		path = strings.TrimSpace(path)
		path, _, _ = strings.Cut(path, " -> ")
		path, _, _ = strings.Cut(path, " => ")
		diff[path] = change
	}
	return diff
}

// checkSame fails unless rsync finds nothing to change from src to dst
// but what want says (path → itemized change).
func checkSame(t *testing.T, what, src, dst string, want map[string]string) {
	t.Helper()
	got := rsyncDiff(t, src, dst)
	var bad []string
	for p, c := range got {
		if want[p] != c {
			bad = append(bad, c+" "+p+" (want "+want[p]+")")
		}
	}
	for p, c := range want {
		if _, ok := got[p]; !ok {
			bad = append(bad, "missing: "+c+" "+p)
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		if len(bad) > 40 {
			bad = append(bad[:40], "...")
		}
		t.Errorf("%s: rsync -aHAXn from the source differs from what is expected in %d ways:\n%s", what, len(bad), strings.Join(bad, "\n"))
	}
}

// untrustedDifferences is what rsync reports between a tree and its
// restore from a zip without --keep-privileges, by the trust rules:
// owners become the restoring user (root), setuid/setgid bits are cleared,
// xattrs other than user.* and POSIX ACLs are dropped, device nodes are
// not created; sockets are never kept.
func untrustedDifferences(t *testing.T, src string) map[string]string {
	t.Helper()
	want := map[string]string{}
	err := filepath.Walk(src, func(path string, _ os.FileInfo, err error) error {
		if err != nil || path == src {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		var typ byte
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFSOCK:
			want[rel] = "cS+++++++++"
			return nil
		case unix.S_IFCHR, unix.S_IFBLK:
			want[rel] = "cD+++++++++"
			return nil
		case unix.S_IFDIR:
			typ, rel = 'd', rel+"/"
		case unix.S_IFLNK:
			typ = 'L'
		case unix.S_IFIFO:
			typ = 'S'
		default:
			typ = 'f'
		}
		change := []byte(".?.........")
		change[1] = typ
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			change[5] = 'p'
		}
		if st.Uid != 0 {
			change[6] = 'o'
		}
		if st.Gid != 0 {
			change[7] = 'g'
		}
		if x := privilegedXattrs(t, path); x {
			change[10] = 'x'
		}
		if string(change[2:]) != "........." {
			want[rel] = string(change)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// privilegedXattrs reports whether path has xattrs a restore from
// untrusted input drops.
func privilegedXattrs(t *testing.T, path string) bool {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", path, err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" && !strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "system.posix_acl_") {
			return true
		}
	}
	return false
}

// describeTree counts the entries of the tree at dir by kind, for the log.
func describeTree(t *testing.T, dir string) string {
	t.Helper()
	counts := map[string]int{}
	err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		kind := map[uint32]string{unix.S_IFREG: "files", unix.S_IFDIR: "dirs", unix.S_IFLNK: "symlinks", unix.S_IFIFO: "fifos",
			unix.S_IFCHR: "devices", unix.S_IFBLK: "devices", unix.S_IFSOCK: "sockets"}[st.Mode&unix.S_IFMT]
		counts[kind]++
		if kind == "symlinks" {
			if target, err := os.Readlink(path); err == nil && filepath.IsAbs(target) {
				counts["absolute symlinks"]++
			}
		}
		if kind != "dirs" && st.Nlink > 1 {
			counts["hard-linked names"]++
		}
		if st.Mode&(unix.S_ISUID|unix.S_ISGID|unix.S_ISVTX) != 0 {
			counts["setuid/setgid/sticky"]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(counts)
}

// allocated is what path takes on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// timed runs the command and logs how long it took.
func timed(t *testing.T, what string, f func() result) result {
	t.Helper()
	start := time.Now()
	r := f()
	t.Logf("%s: %s", what, time.Since(start).Round(10*time.Millisecond))
	return r
}

// TestFSRealTree: a real Debian root tree, with every kind of file a
// Linux tree holds added, is snapshotted, zipped, restored from the zip
// in each mode and backed up to and restored from a repository; rsync
// -aHAXn finds every restore the same as the source, but for sockets
// (never kept) and, from a zip without --keep-privileges, exactly what the
// trust rules drop (issue 13, item 5).
func TestFSRealTree(t *testing.T) {
	cache := cachedRootfs(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	src := filepath.Join(cfg, "fs", "rootfs")
	start := time.Now()
	runTool(t, "cp", "-a", cache, src)
	addWhatMinbaseLacks(t, src)
	t.Logf("copy of the cached tree: %s; %s", time.Since(start).Round(10*time.Millisecond), describeTree(t, src))
	sock := "srv/astrolabe/sock"
	sparse := filepath.Join("srv", "astrolabe", "sparse.img")
	srcSparse := allocated(t, filepath.Join(src, sparse))
	if srcSparse > 64<<10 {
		t.Fatalf("the source's sparse file takes %d bytes: the test directory's filesystem has no holes", srcSparse)
	}
	socketOnly := map[string]string{sock: "cS+++++++++"}
	checkRestore := func(what, id string, want map[string]string) {
		t.Helper()
		dst := fsPath(cfg, id)
		start := time.Now()
		checkSame(t, what, src, dst, want)
		t.Logf("%s: rsync -n: %s", what, time.Since(start).Round(10*time.Millisecond))
		if n := allocated(t, filepath.Join(dst, sparse)); n > srcSparse {
			t.Errorf("%s: the sparse file takes %d bytes, %d in the source", what, n, srcSparse)
		}
		// Checked: out of the way of the next restore's free space.
		if err := os.RemoveAll(dst); err != nil {
			t.Fatal(err)
		}
	}

	r := timed(t, "snap", func() result { return mustRun(t, cfg, "snap", "fs:rootfs") })
	snap := r.lastLine()
	if !strings.Contains(r.stderr, "level=WARN") || !strings.Contains(r.stderr, sock) {
		t.Errorf("the snapshot did not warn of the socket it leaves out: %q", r.stderr)
	}
	snapTree := filepath.Join(cfg, "fs", ".snapshots", "rootfs", strings.TrimPrefix(snap, "fs:rootfs:"), "tree")
	checkSame(t, "snapshot tree", src, snapTree, socketOnly)

	zipPath := filepath.Join(dir, "rootfs.zip")
	timed(t, "cp snapshot to zip", func() result { return mustRun(t, cfg, "cp", snap, zipPath) })
	if fi, err := os.Stat(zipPath); err == nil {
		t.Logf("zip: %d MiB", fi.Size()>>20)
	}

	// From the zip, untrusted: exactly what the trust rules drop differs,
	// and each device node left out is warned of.
	r = timed(t, "cp zip fs (create_new)", func() result { return mustRun(t, cfg, "cp", "--mode", "create_new", zipPath, "fs") })
	want := untrustedDifferences(t, src)
	t.Logf("untrusted restore: %d differences expected by the trust rules", len(want))
	checkRestore("zip, create_new", r.lastLine(), want)
	for p, c := range want {
		if c == "cD+++++++++" && !strings.Contains(r.stderr, "path="+p) {
			t.Errorf("no warning names the device node %s left out: %s", p, r.stderr)
		}
	}

	// --keep-privileges: the tree as it was, with create and update.
	r = timed(t, "cp --keep-privileges zip (create)", func() result {
		return mustRun(t, cfg, "cp", "--mode", "create", "--keep-privileges", zipPath, "fs:kept")
	})
	checkRestore("zip --keep-privileges, create", r.lastLine(), socketOnly)
	if err := os.MkdirAll(filepath.Join(cfg, "fs", "target", "old", "stuff"), 0o755); err != nil {
		t.Fatal(err)
	}
	r = timed(t, "cp --keep-privileges zip (update)", func() result {
		return mustRun(t, cfg, "cp", "--mode", "update", "--keep-privileges", zipPath, "fs:target")
	})
	checkRestore("zip --keep-privileges, update", r.lastLine(), socketOnly)

	// The same zip uploaded to the S3 copy bucket (in one PUT): untrusted
	// too.
	a := startServe(t, cfg)
	before := fsPEs(t, cfg)
	zf, err := os.Open(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := zf.Stat()
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	_, err = s3Client(t, a, cfg).PutObject(context.Background(), "copy", "rootfs.zip", zf, fi.Size(), minio.PutObjectOptions{DisableMultipart: true})
	zf.Close()
	if err != nil {
		t.Fatalf("upload to the copy bucket: %v", err)
	}
	t.Logf("S3 upload of the zip: %s", time.Since(start).Round(10*time.Millisecond))
	added := newPEs(before, fsPEs(t, cfg))
	if len(added) != 1 {
		t.Fatalf("the upload made PEs %v, want one", added)
	}
	checkRestore("zip uploaded to S3", "fs:"+added[0], want)
	a.stop()

	// The appliance's own snapshot is trusted.
	r = timed(t, "cp snapshot fs", func() result { return mustRun(t, cfg, "cp", snap, "fs") })
	checkRestore("snapshot, create_new", r.lastLine(), socketOnly)

	// Through the repository: trusted.
	repoFlags := []string{"--repo", filepath.Join(dir, "repo")}
	mustRun(t, cfg, append([]string{"repo", "init", "--insecure-no-password"}, repoFlags...)...)
	backed := timed(t, "backup", func() result { return mustRun(t, cfg, append(append([]string{"backup"}, repoFlags...), snap)...) }).lastLine()
	r = timed(t, "restore from the repository", func() result {
		return mustRun(t, cfg, append(append([]string{"restore"}, repoFlags...), backed)...)
	})
	checkRestore("repository, create_new", r.lastLine(), socketOnly)

	// The FUSE views, of the snapshot and of its copy in the repository,
	// show the tree as it is.
	views := []struct {
		what, id string
		args     []string
	}{
		{"FUSE view of the snapshot", snap, nil},
		{"FUSE view of the repository snapshot", backed, repoFlags},
	}
	for i, v := range views {
		mnt := filepath.Join(dir, fmt.Sprintf("mnt%d", i))
		m := startMount(t, cfg, mnt, v.args...)
		parts := strings.SplitN(v.id, ":", 3)
		if len(parts) != 3 {
			t.Fatalf("%s: %q is no snapshot PE ID", v.what, v.id)
		}
		checkSame(t, v.what, src, filepath.Join(mnt, parts[0], parts[0]+":"+parts[1], "snapshots", parts[2], "files"), socketOnly)
		m.Process.Signal(syscall.SIGTERM)
		if err := m.Wait(); err != nil {
			t.Errorf("%s: mount after SIGTERM: %v", v.what, err)
		}
	}
}

// TestFSDeviceNodesNeedRoot: run as another user than root, the appliance
// cannot create device nodes. A snapshot of a tree holding one, and a
// restore that must create one, fail naming it; a restore from a zip
// without --keep-privileges leaves it out and restores the rest, fifos
// included.
func TestFSDeviceNodesNeedRoot(t *testing.T) {
	needPrivilegeTools(t)
	dir := t.TempDir()
	openTree(t, dir)
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	tree := filepath.Join(cfg, "fs", "tiny")
	for _, err := range []error{
		os.Mkdir(tree, 0o755),
		os.WriteFile(filepath.Join(tree, "file"), []byte("data\n"), 0o644),
		unix.Mkfifo(filepath.Join(tree, "fifo"), 0o644),
		unix.Mknod(filepath.Join(tree, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	snap := mustRun(t, cfg, "snap", "fs:tiny").lastLine()
	zipPath := filepath.Join(dir, "tiny.zip")
	mustRun(t, cfg, "cp", snap, zipPath)

	// nobody's own appliance, with a copy of the binary nobody may run.
	bin := filepath.Join(dir, "astrolabe")
	runTool(t, "cp", astrolabeBin, bin)
	ncfg := filepath.Join(dir, "nobody")
	if err := os.Mkdir(ncfg, 0o755); err != nil {
		t.Fatal(err)
	}
	runTool(t, "chown", "nobody:nogroup", ncfg)
	asNobody := func(args ...string) (string, error) {
		out, err := exec.Command("runuser", append([]string{"-u", "nobody", "--", bin, "--config", ncfg}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := asNobody("init", ncfg); err != nil {
		t.Fatalf("init as nobody: %v\n%s", err, out)
	}
	if out, err := asNobody("cp", "--keep-privileges", zipPath, "fs"); err == nil || !strings.Contains(out, "needs root") || !strings.Contains(out, "null") {
		t.Errorf("restore of a device node as nobody: %v\n%s", err, out)
	}
	out, err := asNobody("cp", zipPath, "fs")
	if err != nil || !strings.Contains(out, "path=null") {
		t.Fatalf("restore of the zip as nobody, device nodes left out: %v\n%s", err, out)
	}
	restored := filepath.Join(ncfg, "fs", strings.TrimPrefix(strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]), "fs:"))
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(restored, "fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo restored as nobody: %v, mode %o", err, st.Mode)
	}
	if err := unix.Lstat(filepath.Join(restored, "null"), &st); err == nil {
		t.Errorf("device node restored as nobody: mode %o", st.Mode)
	}

	// A live tree of nobody's with a device node in it.
	live := filepath.Join(ncfg, "fs", "withdev")
	runTool(t, "cp", "-a", tree, live)
	runTool(t, "chown", "-R", "nobody:nogroup", live)
	if out, err := asNobody("snap", "fs:withdev"); err == nil || !strings.Contains(out, "needs root") || !strings.Contains(out, "null") {
		t.Errorf("snapshot of a device node as nobody: %v\n%s", err, out)
	}
}
