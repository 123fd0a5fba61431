package fusefs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/partition"
)

func needFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatal("/dev/fuse missing: load the fuse module (modprobe fuse) and run as root")
	}
}

type fixture struct {
	dir     string
	m       pe.Manager
	fsSnap  pe.ID
	dskSnap pe.ID
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir, m := newSamples(t)
	return &fixture{dir: dir, m: m, fsSnap: snapshot(t, m, "fs:sample"), dskSnap: snapshot(t, m, "disk:sample.img")}
}

// mount mounts m in a fresh directory and unmounts at the end of the test.
func mount(t *testing.T, m pe.Manager) string {
	t.Helper()
	needFUSE(t)
	mnt := t.TempDir()
	srv, err := Mount(m, mnt, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(srv, mnt); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
	})
	return mnt
}

func snapDir(mnt string, id pe.ID) string {
	return filepath.Join(mnt, id.Type(), id.Base().String(), "snapshots", id.Snapshot())
}

// sums hashes every regular file under root.
func sums(t *testing.T, root string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFilesOfSnapshot(t *testing.T) {
	f := newFixture(t)
	src := filepath.Join(f.dir, "fs", "sample")
	want := sums(t, src)
	mnt := mount(t, f.m)
	files := filepath.Join(snapDir(mnt, f.fsSnap), "files")
	got := sums(t, files)
	if len(got) != len(want) || len(got) < 5 {
		t.Fatalf("%d files in the snapshot view, %d in the source", len(got), len(want))
	}
	for name, sum := range want {
		if got[name] != sum {
			t.Errorf("%s differs in the snapshot view", name)
		}
	}
	// Attributes and symlinks come from the snapshot.
	fi, err := os.Lstat(filepath.Join(files, "docs", "README-link"))
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink: %v %v", fi, err)
	}
	st, _ := os.Stat(filepath.Join(src, "README.txt"))
	sv, _ := os.Stat(filepath.Join(files, "README.txt"))
	if sv == nil || sv.Mode() != st.Mode() || !sv.ModTime().Equal(st.ModTime()) || sv.Size() != st.Size() {
		t.Errorf("attributes: view %v, source %v", sv, st)
	}

	// The live tree changes; the snapshot view does not.
	os.WriteFile(filepath.Join(src, "README.txt"), []byte("changed"), 0o644)
	os.Remove(filepath.Join(src, "etc", "app.conf"))
	if after := sums(t, files); len(after) != len(got) || after["README.txt"] != got["README.txt"] {
		t.Error("the snapshot view changed with the live tree")
	}

	// A new snapshot shows up without remounting.
	newer := snapshot(t, f.m, "fs:sample")
	b, err := os.ReadFile(filepath.Join(snapDir(mnt, newer), "files", "README.txt"))
	if err != nil || string(b) != "changed" {
		t.Errorf("new snapshot: %q %v", b, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(snapDir(mnt, newer)))
	if len(entries) != 2 {
		t.Errorf("snapshots listed: %v", entries)
	}
	info, err := os.ReadFile(filepath.Join(snapDir(mnt, f.fsSnap), "info.json"))
	if err != nil || !strings.Contains(string(info), f.fsSnap.String()) {
		t.Errorf("info.json: %s %v", info, err)
	}
	if _, err := os.Stat(filepath.Join(snapDir(mnt, f.fsSnap), "data")); err == nil {
		t.Error("an fs snapshot shows data")
	}
	if err := os.WriteFile(filepath.Join(files, "README.txt"), []byte("x"), 0o644); err == nil {
		t.Error("wrote into a snapshot")
	}
}

func TestDiskSnapshot(t *testing.T) {
	f := newFixture(t)
	image, err := os.ReadFile(filepath.Join(f.dir, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}
	mnt := mount(t, f.m)
	sd := snapDir(mnt, f.dskSnap)
	data, err := os.ReadFile(filepath.Join(sd, "data"))
	if err != nil || !bytes.Equal(data, image) {
		t.Fatalf("data: %d bytes, %v; differs from the image", len(data), err)
	}
	tab, err := partition.Read(bytes.NewReader(image), int64(len(image)))
	if err != nil || len(tab.Partitions) != 1 {
		t.Fatalf("partition table of the sample: %+v %v", tab, err)
	}
	p := tab.Partitions[0]
	p1, err := os.ReadFile(filepath.Join(sd, "partitions", "p1"))
	if err != nil || !bytes.Equal(p1, image[p.Start:p.Start+p.Size]) {
		t.Errorf("p1: %d bytes, %v; differs from the partition", len(p1), err)
	}

	// SEEK_HOLE/SEEK_DATA skip the holes of the sparse image.
	for _, name := range []string{"data", "partitions/p1"} {
		fd, err := os.Open(filepath.Join(sd, name))
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(int(fd.Fd()), 0, unix.SEEK_HOLE)
		if err != nil || hole >= int64(len(image)) || hole%4096 != 0 {
			t.Errorf("%s: first hole at %d, %v", name, hole, err)
		}
		next, err := unix.Seek(int(fd.Fd()), hole, unix.SEEK_DATA)
		if err != nil || next <= hole {
			t.Errorf("%s: data after the hole at %d: %d, %v", name, hole, next, err)
		}
		fd.Close()
	}
}

func TestUnmountBusyAndTwoMounts(t *testing.T) {
	f := newFixture(t)
	needFUSE(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, b := t.TempDir(), t.TempDir()
	srvA, err := Mount(f.m, a, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srvB, err := Mount(f.m, b, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Mount(f.m, a, Options{Logger: log}); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("mount over a mount: %v", err)
	}
	if _, err := Mount(f.m, filepath.Join(a, "nope"), Options{Logger: log}); err == nil {
		t.Error("mount on a missing directory")
	}
	// A reader with a file open while A is unmounted.
	reader, err := os.Open(filepath.Join(snapDir(a, f.dskSnap), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Unmount(srvA, a); err != nil {
		t.Fatalf("unmount with an active reader: %v", err)
	}
	if _, err := reader.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Errorf("the reader lost its file: %v", err)
	}
	reader.Close()
	done := make(chan struct{})
	go func() { srvA.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server A did not end after its last reader left")
	}
	// B still serves.
	if _, err := os.Stat(filepath.Join(snapDir(b, f.fsSnap), "files", "README.txt")); err != nil {
		t.Errorf("second mount: %v", err)
	}
	if err := Unmount(srvB, b); err != nil {
		t.Error(err)
	}
	srvB.Wait()
	if mounted(t, a) || mounted(t, b) {
		t.Error("mounts left behind")
	}
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(b), " "+dir+" ")
}

// mountShared mounts m with allowOther in a directory every user can
// reach (t.TempDir is 0700), so that only the mount's own modes decide.
func mountShared(t *testing.T, m pe.Manager) string {
	t.Helper()
	needFUSE(t)
	parent, err := os.MkdirTemp("", "fusefs-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	mnt := filepath.Join(parent, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil || os.Chmod(parent, 0o755) != nil {
		t.Fatal(err)
	}
	srv, err := Mount(m, mnt, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), AllowOther: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(srv, mnt); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
	})
	return mnt
}

// asNobody runs cat of path as the user nobody and returns its output.
func asNobody(t *testing.T, path string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("runuser"); err != nil {
		t.Fatal("runuser missing: install util-linux")
	}
	out, err := exec.Command("runuser", "-u", "nobody", "--", "cat", path).CombinedOutput()
	return string(out), err
}

// With allowOther, other users see the tree but read only what the PE
// would let them: a disk snapshot's data is its image's (0600 root), a
// file of an fs snapshot keeps its own mode, and the kernel checks.
func TestSecurityAllowOtherKeepsModes(t *testing.T) {
	f := newFixture(t)
	src := filepath.Join(f.dir, "fs", "sample")
	// A private file in the fs PE, snapshotted.
	if err := os.WriteFile(filepath.Join(src, "secret.txt"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "README.txt"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsSnap := snapshot(t, f.m, "fs:sample")
	// The same tree with a private root (a 0700 home directory): its
	// 0644 files are out of reach too.
	if err := os.Chmod(src, 0o700); err != nil {
		t.Fatal(err)
	}
	privSnap := snapshot(t, f.m, "fs:sample")
	mnt := mountShared(t, f.m)
	sd := snapDir(mnt, f.dskSnap)

	// nobody reaches the mount: info.json is for everyone.
	if out, err := asNobody(t, filepath.Join(sd, "info.json")); err != nil || !strings.Contains(out, f.dskSnap.String()) {
		t.Fatalf("nobody reads info.json: %v %s", err, out)
	}
	for _, p := range []string{filepath.Join(sd, "data"), filepath.Join(sd, "partitions", "p1"), filepath.Join(snapDir(mnt, fsSnap), "files", "secret.txt")} {
		out, err := asNobody(t, p)
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("nobody read %s: %v %q", p, err, out)
		}
	}
	if out, err := asNobody(t, filepath.Join(snapDir(mnt, fsSnap), "files", "README.txt")); err != nil {
		t.Errorf("nobody cannot read a 0644 file: %v %s", err, out)
	}
	privFiles := filepath.Join(snapDir(mnt, privSnap), "files")
	if fi, err := os.Stat(privFiles); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("files/ of a snapshot of a 0700 tree: %v %v", fi.Mode(), err)
	}
	if out, err := asNobody(t, filepath.Join(privFiles, "README.txt")); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("nobody read a file below a 0700 root: %v %q", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(privFiles, "README.txt")); err != nil || len(b) == 0 {
		t.Errorf("root reads below a 0700 root: %v", err)
	}
	fi, err := os.Stat(filepath.Join(sd, "data"))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("data: %v %v, want 0600 root", fi.Mode(), err)
	}
	// Root, the owner, reads.
	if b, err := os.ReadFile(filepath.Join(sd, "data")); err != nil || len(b) == 0 {
		t.Errorf("root reads data: %d bytes, %v", len(b), err)
	}
	if b, err := os.ReadFile(filepath.Join(snapDir(mnt, fsSnap), "files", "secret.txt")); err != nil || string(b) != "secret\n" {
		t.Errorf("root reads secret.txt: %q %v", b, err)
	}
}

// A snapshot deleted while the kernel still knows its nodes gives ENOENT,
// not EIO.
func TestDeletedSnapshotENOENT(t *testing.T) {
	f := newFixture(t)
	mnt := mount(t, f.m)
	data := filepath.Join(snapDir(mnt, f.dskSnap), "data")
	file := filepath.Join(snapDir(mnt, f.fsSnap), "files", "README.txt")
	for _, p := range []string{data, file} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	ctx := t.Context()
	for _, id := range []pe.ID{f.dskSnap, f.fsSnap} {
		p, err := f.m.Get(ctx, id.Base())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.DeleteSnapshot(ctx, id.Snapshot()); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{data, file} {
		_, err := os.ReadFile(p)
		if !errors.Is(err, syscall.ENOENT) {
			t.Errorf("read %s of a deleted snapshot: %v, want ENOENT", p, err)
		}
	}
}
