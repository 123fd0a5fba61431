package fusefs

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	pefs "github.com/astrolabe-appliance/astrolabe/pe/fs"
)

// requireTool fails (never skips) when a command the test needs is
// missing, naming the Debian package that has it.
func requireTool(t *testing.T, cmd, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(cmd); err != nil {
		t.Fatalf("%s not found: install %s (apt-get install -y %s, or scripts/deps.d/fuse.sh)", cmd, pkg, pkg)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// Device nodes of the sample tree: a minor above 255 takes the high bits
// of the kernel's encoding.
var sampleDevices = []struct {
	name         string
	mode         uint32
	major, minor uint32
	uid, gid     int
}{
	{"dev/null", unix.S_IFCHR | 0o666, 1, 3, 0, 0},
	{"dev/loop200", unix.S_IFBLK | 0o660, 7, 200, 0, 6},
	{"dev/big-minor", unix.S_IFCHR | 0o600, 254, 70000, 0, 0},
}

// sampleHardlinks are the three names of one file.
var sampleHardlinks = []string{"data/a", "data/sub/b", "hard-c"}

// writeEveryType builds at dir (to be created) a tree of every file type
// a Linux tree holds, with the attributes a copy must keep: owners,
// setuid/setgid/sticky modes, nanosecond mtimes, user.* and security.*
// xattrs, POSIX ACLs (access and default), a sparse file, a hard-link
// group of three names, relative, absolute and dangling symlinks, and,
// where specials is set, a FIFO and character and block devices.
func writeEveryType(t *testing.T, dir string, specials bool) {
	t.Helper()
	requireTool(t, "setfacl", "acl")
	requireTool(t, "setcap", "libcap2-bin")
	for _, d := range []string{"bin", "data/sub", "dev", "etc", "lib", "private", "run", "srv/shared", "tmp", "var"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string, uid, gid int, mode os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		// Owner first: chown clears setuid and setgid bits.
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(p, uint32(mode)); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/app.conf", "listen = 127.0.0.1:8080\n", 1234, 5678, 0o640)
	write("etc/empty", "", 0, 0, 0o644)
	write("etc/none", "no access\n", 0, 0, 0)
	write("bin/tool", "#!/bin/sh\necho tool\n", 0, 0, 0o4755)
	write("bin/sgid-tool", "#!/bin/sh\n", 0, 50, 0o2755)
	write("private/key", "secret\n", 1000, 1000, 0o600)
	write(sampleHardlinks[0], "one file, three names\n", 1001, 1002, 0o664)
	for _, name := range sampleHardlinks[1:] {
		if err := os.Link(filepath.Join(dir, sampleHardlinks[0]), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	// 8 MiB with 4 KiB of data at 1 MiB: sparse.
	sparse := filepath.Join(dir, "var/sparse.img")
	write("var/sparse.img", "", 0, 0, 0o644)
	if err := os.Truncate(sparse, 8<<20); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(sparse, os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	} else {
		_, err = f.WriteAt(randomBytes(5, 4096), 1<<20)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"lib/rel-link":  "../etc/app.conf",
		"lib/abs-link":  "/etc/alternatives/editor",
		"lib/dangling":  "no/such/file",
		"lib/dir-link":  "../srv",
		"lib/root-link": "/",
	} {
		p := filepath.Join(dir, link)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, 42, 43); err != nil {
			t.Fatal(err)
		}
	}
	if specials {
		if err := unix.Mkfifo(filepath.Join(dir, "run/fifo"), 0o620); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(filepath.Join(dir, "run/fifo"), 7, 8); err != nil {
			t.Fatal(err)
		}
		for _, d := range sampleDevices {
			p := filepath.Join(dir, d.name)
			if err := unix.Mknod(p, d.mode, int(unix.Mkdev(d.major, d.minor))); err != nil {
				t.Fatalf("mknod %s: %v", d.name, err)
			}
			if err := os.Lchown(p, d.uid, d.gid); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(p, d.mode&0o7777); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, mode := range map[string]uint32{"srv/shared": 0o2775, "tmp": 0o1777, "private": 0o700, ".": 0o751} {
		if err := unix.Chmod(filepath.Join(dir, name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Lchown(filepath.Join(dir, "private"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "srv/shared"), 0, 50); err != nil {
		t.Fatal(err)
	}
	// Extended attributes: user.* (one binary), a file capability and
	// POSIX ACLs.
	for name, x := range map[string]map[string]string{
		"etc/app.conf": {"user.note": "hello", "user.bin": "\x00\x01\xff\x00"},
		"srv/shared":   {"user.dir": "shared space"},
		"data/a":       {"user.linked": "by three names"},
	} {
		for k, v := range x {
			if err := unix.Lsetxattr(filepath.Join(dir, name), k, []byte(v), 0); err != nil {
				t.Fatalf("setxattr %s %s: %v", name, k, err)
			}
		}
	}
	run(t, "setcap", "cap_net_raw,cap_net_bind_service+ep", filepath.Join(dir, "bin/tool"))
	run(t, "setfacl", "-m", "u:2000:rw,g:3000:r", filepath.Join(dir, "etc/app.conf"))
	run(t, "setfacl", "-m", "u:2001:rwx", "-d", "-m", "g:3000:rx", filepath.Join(dir, "srv/shared"))
	// Nanosecond mtimes last: creating entries changed their directories'.
	i := int64(0)
	err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		i++
		ts := unix.NsecToTimespec(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano() + i*86_400_123_456_789)
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rsyncChanges is what rsync -aHAXn --itemize-changes --numeric-ids would
// change to make dst a copy of src: nothing when the trees are the same,
// up to hard links, ACLs, xattrs, devices, owners and nanosecond mtimes.
func rsyncChanges(t *testing.T, src, dst string) string {
	t.Helper()
	requireTool(t, "rsync", "rsync")
	out, err := exec.Command("rsync", "-aHAXn", "--itemize-changes", "--numeric-ids", src+"/", dst+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("rsync %s %s: %v\n%s", src, dst, err, out)
	}
	return strings.TrimSpace(string(out))
}

// tarTypes is a PE type whose one PE, sample, has one snapshot, s1: a tar
// file, listed by pe.ScanTar as an fs PE restored from a zip or a
// repository is.
type tarTypes struct {
	path string
	toc  []pe.TOCEntry
	// tocReads counts the reads of the snapshot's table of contents.
	tocReads atomic.Int64
}

// newTarTypes serves the tar file path.
func newTarTypes(t *testing.T, path string) *tarTypes {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	toc, err := pe.ScanTar(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return &tarTypes{path: path, toc: toc}
}

var tarSnapshot = mustID("tar:sample").WithSnapshot("s1")

func mustID(s string) pe.ID {
	id, err := pe.ParseID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func (tt *tarTypes) Type() string { return "tar" }
func (tt *tarTypes) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.Base() != tarSnapshot.Base() || id.HasSnapshot() && id != tarSnapshot {
		return nil, pe.ErrNotFound
	}
	return &tarEntity{tt: tt, id: id}, nil
}
func (tt *tarTypes) List(ctx context.Context) ([]pe.ID, error) {
	return []pe.ID{tarSnapshot.Base()}, nil
}
func (tt *tarTypes) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	return nil, pe.ErrNotSupported
}

type tarEntity struct {
	tt *tarTypes
	id pe.ID
}

func (e *tarEntity) ID() pe.ID { return e.id }
func (e *tarEntity) Info(ctx context.Context) (pe.Info, error) {
	created := time.Unix(1.8e9, 0)
	return pe.Info{ID: e.id, Name: e.id.Name(), Size: pe.SizeUnknown, Created: &created}, nil
}
func (e *tarEntity) Snapshot(ctx context.Context, _ pe.Params) (pe.ID, error) {
	return pe.ID{}, pe.ErrNotSupported
}
func (e *tarEntity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return []pe.ID{tarSnapshot}, nil
}
func (e *tarEntity) DeleteSnapshot(ctx context.Context, _ string) error { return pe.ErrNotSupported }
func (e *tarEntity) SnapshotInfo(ctx context.Context, snap string) (pe.Info, error) {
	return (&tarEntity{tt: e.tt, id: e.id.WithSnapshot(snap)}).Info(ctx)
}
func (e *tarEntity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }
func (e *tarEntity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, pe.ErrNoMetadata
}
func (e *tarEntity) Overwrite(ctx context.Context, _ pe.ProtectedEntity, _ bool) error {
	return pe.ErrNotSupported
}
func (e *tarEntity) Data(ctx context.Context) (pe.Image, error) {
	if !e.id.HasSnapshot() {
		return nil, pe.ErrNoData
	}
	f, err := os.Open(e.tt.path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &tarImage{File: f, size: fi.Size(), toc: e.tt.toc, reads: &e.tt.tocReads}, nil
}

type tarImage struct {
	*os.File
	size  int64
	toc   []pe.TOCEntry
	reads *atomic.Int64
}

func (im *tarImage) Size() int64 { return im.size }
func (im *tarImage) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	return pe.AllData(off, length, im.size), nil
}
func (im *tarImage) TOC(ctx context.Context) ([]pe.TOCEntry, error) {
	im.reads.Add(1)
	return im.toc, nil
}

// checkSameStats compares what lstat says of every entry of src and of
// its copy at view: type and mode bits, owner, link count, device number,
// size (but of directories) and nanosecond mtime.
func checkSameStats(t *testing.T, src, view string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(src, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		var a, b unix.Stat_t
		if err := unix.Lstat(p, &a); err != nil {
			return err
		}
		if err := unix.Lstat(filepath.Join(view, rel), &b); err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		n++
		if a.Mode&unix.S_IFMT == unix.S_IFDIR {
			a.Size, b.Size = 0, 0
		}
		type stat struct {
			Mode, Uid, Gid uint32
			Nlink, Rdev    uint64
			Size           int64
			Mtim           unix.Timespec
		}
		sa := stat{a.Mode, a.Uid, a.Gid, uint64(a.Nlink), a.Rdev, a.Size, a.Mtim}
		sb := stat{b.Mode, b.Uid, b.Gid, uint64(b.Nlink), b.Rdev, b.Size, b.Mtim}
		if sa != sb {
			t.Errorf("%s:\n source %+v\n view   %+v", rel, sa, sb)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 25 {
		t.Errorf("compared %d entries", n)
	}
}

// checkHardlinks checks that the names of the hard-link group are one
// inode of the view, with three links, that find -inum finds by all of
// them, and that the numbers hold after the kernel forgot the nodes.
func checkHardlinks(t *testing.T, view string) {
	t.Helper()
	inoOf := func(name string) (uint64, uint64) {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(view, name), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino, uint64(st.Nlink)
	}
	ino, _ := inoOf(sampleHardlinks[0])
	for _, name := range sampleHardlinks {
		if i, nlink := inoOf(name); i != ino || nlink != 3 {
			t.Errorf("%s: inode %d with %d links, want %d with 3", name, i, nlink, ino)
		}
	}
	if other, _ := inoOf("etc/app.conf"); other == ino {
		t.Errorf("etc/app.conf shares inode %d with the hard links", ino)
	}
	out, err := exec.Command("find", view, "-inum", strconv.FormatUint(ino, 10)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, p := range strings.Fields(string(out)) {
		rel, _ := filepath.Rel(view, p)
		found = append(found, rel)
	}
	if strings.Join(found, " ") != strings.Join(sampleHardlinks, " ") {
		t.Errorf("find -inum %d: %v, want %v", ino, found, sampleHardlinks)
	}
	// The kernel forgets unused nodes; looked up again, they keep
	// their numbers.
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	if again, _ := inoOf(sampleHardlinks[1]); again != ino {
		t.Errorf("inode of %s after the kernel forgot it: %d, was %d", sampleHardlinks[1], again, ino)
	}
}

// mountOptions are the options of the mount at dir in mountinfo.
func mountOptions(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == dir {
			return strings.Split(f[5], ",")
		}
	}
	t.Fatalf("%s is not in mountinfo", dir)
	return nil
}

// asUID runs cat of path as uid and gid id, without supplementary groups.
func asUID(t *testing.T, id int, path string) (string, error) {
	t.Helper()
	requireTool(t, "setpriv", "util-linux")
	s := strconv.Itoa(id)
	out, err := exec.Command("setpriv", "--reuid", s, "--regid", s, "--clear-groups", "cat", path).CombinedOutput()
	return string(out), err
}

func TestFilesViewKeepsEveryFileType(t *testing.T) {
	requireTool(t, "tar", "tar")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeEveryType(t, src, true)
	// As an fs PE's tar holds them: PAX, xattrs with ACLs in their
	// binary form (SCHILY.xattr.system.posix_acl_*), numeric owners,
	// holes as zeros.
	img := filepath.Join(dir, "tree.tar")
	run(t, "tar", "--create", "--file", img, "--format=posix", "--xattrs", "--xattrs-include=*", "--acls",
		"--numeric-owner", "--sort=name", "-C", src, ".")
	m, err := pe.NewManager(newTarTypes(t, img))
	if err != nil {
		t.Fatal(err)
	}
	mnt := mountShared(t, m)
	view := filepath.Join(snapDir(mnt, tarSnapshot), "files")

	if out := rsyncChanges(t, src, view); out != "" {
		t.Errorf("rsync -aHAXn finds differences between the source and the view:\n%s", out)
	}
	checkSameStats(t, src, view)
	checkHardlinks(t, view)

	opts := strings.Join(mountOptions(t, mnt), ",")
	for _, o := range []string{"ro", "nosuid", "nodev"} {
		if !strings.Contains(","+opts+",", ","+o+",") {
			t.Errorf("mount options %s lack %s", opts, o)
		}
	}
	// Device nodes are shown, not opened (nodev).
	for _, d := range sampleDevices {
		if f, err := os.Open(filepath.Join(view, d.name)); !errors.Is(err, syscall.EACCES) {
			t.Errorf("open %s: %v, want EACCES", d.name, err)
			if err == nil {
				f.Close()
			}
		}
	}
	// A FIFO is a pipe with nobody at the other end: a writer that
	// will not wait is refused, a reader that will not wait reads EOF.
	fifo := filepath.Join(view, "run/fifo")
	if _, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK, 0); !errors.Is(err, unix.ENXIO) {
		t.Errorf("open the FIFO to write: %v, want ENXIO", err)
	}
	if fd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK, 0); err != nil {
		t.Errorf("open the FIFO to read: %v", err)
	} else {
		if n, err := unix.Read(fd, make([]byte, 16)); n != 0 || err != nil {
			t.Errorf("read the FIFO: %d bytes, %v; want EOF", n, err)
		}
		unix.Close(fd)
	}
	// The kernel checks ACLs: uid 2000 reads etc/app.conf by its ACL,
	// uid 2002 is denied as by the mode.
	if out, err := asUID(t, 2000, filepath.Join(view, "etc/app.conf")); err != nil || !strings.Contains(out, "listen") {
		t.Errorf("uid 2000, named in the ACL, reads etc/app.conf: %v %s", err, out)
	}
	if out, err := asUID(t, 2002, filepath.Join(view, "etc/app.conf")); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("uid 2002 read etc/app.conf: %v %s", err, out)
	}

	// rsync does compare through the view: changes to the source show.
	if err := os.Chmod(filepath.Join(src, "etc/empty"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "setfacl", "-m", "u:2002:r", filepath.Join(src, "etc/none"))
	if err := unix.Lsetxattr(filepath.Join(src, "srv/shared"), "user.dir", []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	out := rsyncChanges(t, src, view)
	for _, name := range []string{"etc/empty", "etc/none", "srv/shared"} {
		if !strings.Contains(out, name) {
			t.Errorf("rsync after changing %s in the source:\n%s", name, out)
		}
	}
}

// The files/ view of a snapshot the fs PE took is its source tree, and a
// sparse file takes on disk what the snapshot's copy of it takes.
func TestFilesViewOfFsSnapshot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "fs")
	src := filepath.Join(root, "tree")
	// The fs PE of this tree leaves FIFOs and device nodes out of its
	// snapshots; the tar test above has them.
	writeEveryType(t, src, false)
	tm, err := pefs.NewTypeManager(root)
	if err != nil {
		t.Fatal(err)
	}
	m, err := pe.NewManager(tm)
	if err != nil {
		t.Fatal(err)
	}
	snap := snapshot(t, m, "fs:tree")
	mnt := mount(t, m)
	view := filepath.Join(snapDir(mnt, snap), "files")

	if out := rsyncChanges(t, src, view); out != "" {
		t.Errorf("rsync -aHAXn finds differences between the source and the view:\n%s", out)
	}
	checkSameStats(t, src, view)
	checkHardlinks(t, view)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(view, "var/sparse.img"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 8<<20 || st.Blocks*512 > 1<<20 {
		t.Errorf("sparse.img: %d bytes in %d blocks, want 8 MiB in at most 1 MiB", st.Size, st.Blocks)
	}
}
