package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// needPrivilegeTools fails unless the test runs as root with setcap,
// getcap and runuser.
func needPrivilegeTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test must run as root: it makes setuid-root files and sets capabilities")
	}
	for tool, pkg := range map[string]string{"setcap": "libcap2-bin", "getcap": "libcap2-bin", "runuser": "util-linux"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y %s (or run scripts/install-test-deps.sh)", tool, pkg)
		}
	}
}

// openTree makes dir and its parents up to the test's temp root
// traversable by everyone, so that nobody can run what is restored there.
func openTree(t *testing.T, dir string) {
	t.Helper()
	for p := dir; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// privilegedPE makes the fs PE "priv" of cfg: a copy of /usr/bin/id
// setuid root, a copy with cap_setuid=ep, a file with a trusted.x xattr
// owned by uid 1234.
func privilegedPE(t *testing.T, cfg string) {
	t.Helper()
	dir := filepath.Join(cfg, "fs", "priv")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatalf("read /usr/bin/id (coreutils): %v", err)
	}
	for _, name := range []string{"id", "capid"} {
		if err := os.WriteFile(filepath.Join(dir, name), id, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// unix.Chmod: os.Chmod takes Go's FileMode, where 0o4000 is not setuid.
	if err := unix.Chmod(filepath.Join(dir, "id"), 0o4755); err != nil {
		t.Fatal(err)
	}
	runTool(t, "setcap", "cap_setuid=ep", filepath.Join(dir, "capid"))
	tx := filepath.Join(dir, "trusted.txt")
	if err := os.WriteFile(tx, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tx, 1234, 1234); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(tx, "trusted.x", []byte("root only"), 0); err != nil {
		t.Fatalf("set trusted.x: %v (TMPDIR must be on a filesystem with trusted xattrs: ext4, xfs, btrfs)", err)
	}
}

// restoredPrivileges is what a restored copy of the priv PE at dir grants.
type restoredPrivileges struct {
	euidAsNobody string // what id -u prints run as nobody
	cap          string // getcap of capid
	trustedX     bool
	owner        int // of trusted.txt
}

func privilegesAt(t *testing.T, dir string) restoredPrivileges {
	t.Helper()
	openTree(t, dir)
	var p restoredPrivileges
	out, err := exec.Command("runuser", "-u", "nobody", "--", filepath.Join(dir, "id"), "-u").CombinedOutput()
	if err != nil {
		t.Fatalf("runuser -u nobody -- %s/id -u: %v\n%s", dir, err, out)
	}
	p.euidAsNobody = strings.TrimSpace(string(out))
	p.cap = strings.TrimSpace(runTool(t, "getcap", filepath.Join(dir, "capid")))
	_, err = unix.Lgetxattr(filepath.Join(dir, "trusted.txt"), "trusted.x", make([]byte, 64))
	p.trustedX = err == nil
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "trusted.txt"), &st); err != nil {
		t.Fatal(err)
	}
	p.owner = int(st.Uid)
	return p
}

// wantDropped checks that p grants nothing: id runs as nobody, no
// capability, no trusted.x, owned by the restoring user (root).
func wantDropped(t *testing.T, what string, p restoredPrivileges) {
	t.Helper()
	nobody := strings.TrimSpace(runTool(t, "id", "-u", "nobody"))
	if p.euidAsNobody != nobody || p.cap != "" || p.trustedX || p.owner != 0 {
		t.Errorf("%s: restored %+v; want id -u %s as nobody, no capability, no trusted.x, owner 0", what, p, nobody)
	}
}

// wantKept checks that p is the tree as it was.
func wantKept(t *testing.T, what string, p restoredPrivileges) {
	t.Helper()
	if p.euidAsNobody != "0" || !strings.Contains(p.cap, "cap_setuid=ep") || !p.trustedX || p.owner != 1234 {
		t.Errorf("%s: restored %+v; want euid 0 as nobody, cap_setuid=ep, trusted.x, owner 1234", what, p)
	}
}

// fsPath is the directory of the fs PE id in cfg.
func fsPath(cfg, id string) string {
	return filepath.Join(cfg, "fs", strings.TrimPrefix(id, "fs:"))
}

// TestSecurityFsZipPrivileges: a zip restores no privileges — a copy of
// id setuid root runs as nobody with nobody's euid, capabilities and
// trusted.* xattrs are gone, owners are the restoring user — unless
// --keep-privileges asks for them (and is logged); the appliance's own
// snapshot restores them. From the command line and as an upload to the
// S3 copy bucket of a running serve (issue 22, item 1).
func TestSecurityFsZipPrivileges(t *testing.T) {
	needPrivilegeTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	privilegedPE(t, cfg)
	wantKept(t, "the source tree", privilegesAt(t, filepath.Join(cfg, "fs", "priv")))

	snap := mustRun(t, cfg, "snap", "fs:priv").lastLine()
	zipPath := filepath.Join(dir, "priv.zip")
	mustRun(t, cfg, "cp", snap, zipPath)

	dropped := mustRun(t, cfg, "cp", zipPath, "fs").lastLine()
	wantDropped(t, "cp zip fs", privilegesAt(t, fsPath(cfg, dropped)))

	r := mustRun(t, cfg, "cp", "--keep-privileges", zipPath, "fs")
	wantKept(t, "cp --keep-privileges zip fs", privilegesAt(t, fsPath(cfg, r.lastLine())))
	if !strings.Contains(r.stderr, "level=WARN") || !strings.Contains(r.stderr, "keep-privileges") || !strings.Contains(r.stderr, snap) {
		t.Errorf("--keep-privileges on a zip was not logged: %q", r.stderr)
	}

	r = mustRun(t, cfg, "cp", snap, "fs")
	wantKept(t, "cp snapshot fs", privilegesAt(t, fsPath(cfg, r.lastLine())))
	if strings.Contains(r.stderr, "level=WARN") {
		t.Errorf("restoring a trusted snapshot logged a warning: %q", r.stderr)
	}

	// The same zip uploaded to the S3 copy bucket.
	a := startServe(t, cfg)
	before := fsPEs(t, cfg)
	b, err := os.ReadFile(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s3Client(t, a, cfg).PutObject(context.Background(), "copy", "priv.zip", bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("upload to the copy bucket: %v", err)
	}
	added := newPEs(before, fsPEs(t, cfg))
	if len(added) != 1 {
		t.Fatalf("the upload made PEs %v, want one", added)
	}
	wantDropped(t, "S3 upload", privilegesAt(t, filepath.Join(cfg, "fs", added[0])))
	a.stop()
}

// s3Client talks to the S3 endpoint of a running serve.
func s3Client(t *testing.T, a *appliance, cfg string) *minio.Client {
	t.Helper()
	keys := map[string]string{}
	kb, err := os.ReadFile(filepath.Join(cfg, "s3-credentials.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(kb, &keys); err != nil {
		t.Fatal(err)
	}
	mc, err := minio.New(strings.TrimPrefix(a.info["s3"], "https://"), &minio.Options{
		Creds: credentials.NewStaticV4(keys["accessKey"], keys["secretKey"], ""), Secure: true,
		Transport: a.client.Transport, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

// fsPEs lists the entries of the fs root, hidden ones (temporary trees)
// included.
func fsPEs(t *testing.T, cfg string) []string {
	t.Helper()
	return dirNames(t, filepath.Join(cfg, "fs"))
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != ".snapshots" {
			names = append(names, e.Name())
		}
	}
	return names
}

func newPEs(before, after []string) []string {
	old := map[string]bool{}
	for _, n := range before {
		old[n] = true
	}
	var added []string
	for _, n := range after {
		if !old[n] {
			added = append(added, n)
		}
	}
	return added
}

// bombZip writes an Astrolabe zip of the snapshot id whose data is
// generated by write, deflated at the best ratio, and returns its size.
func bombZip(t *testing.T, path, id string, size int64, write func(io.Writer) error) int64 {
	t.Helper()
	pid, err := pe.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(out, flate.BestCompression)
	})
	info, _ := json.Marshal(pe.Info{ID: pid, Name: pid.Name(), Size: size})
	w, err := zw.Create(id + ".peinfo")
	if err == nil {
		_, err = w.Write(info)
	}
	if err == nil {
		w, err = zw.Create(id + ".data")
	}
	if err == nil {
		err = write(w)
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// pattern writes n bytes of a repeated non-zero pattern.
func pattern(w io.Writer, n int64) error {
	chunk := bytes.Repeat([]byte("BOOM"), 1<<18)
	for n > 0 {
		k := min(n, int64(len(chunk)))
		if _, err := w.Write(chunk[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// TestSecurityFsZipBomb: zips of 200 MiB of non-zero data deflated about
// 1000:1, restored as fs and disk PEs from the command line and as an S3
// upload, stop at the expansion bound with a message naming it and how to
// raise it, leaving no PE and no temporary file; with --max-expansion -1
// (no bound) they restore (issue 22, item 8).
func TestSecurityFsZipBomb(t *testing.T) {
	const size = 200 << 20
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	snap := pe.NewSnapshotName(time.Now())

	fsZip := filepath.Join(dir, "fs-bomb.zip")
	n := bombZip(t, fsZip, "fs:bomb:"+snap, size+3*512, func(w io.Writer) error {
		tw := tar.NewWriter(w)
		if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
			return err
		}
		if err := pattern(tw, size); err != nil {
			return err
		}
		return tw.Close()
	})
	diskZip := filepath.Join(dir, "disk-bomb.zip")
	dn := bombZip(t, diskZip, "disk:bomb.img:"+snap, size, func(w io.Writer) error { return pattern(w, size) })
	if size/n < 500 || size/dn < 500 {
		t.Fatalf("zips of %d and %d bytes for %d bytes: not a bomb", n, dn, size)
	}
	t.Logf("fs bomb: %d bytes (%d:1), disk bomb: %d bytes (%d:1)", n, size/n, dn, size/dn)

	for _, tt := range []struct{ zip, typ string }{{fsZip, "fs"}, {diskZip, "disk"}} {
		root := filepath.Join(cfg, tt.typ)
		mustFail(t, cfg, "limit exceeded", "cp", tt.zip, tt.typ)
		r := astrolabe(t, cfg, "cp", tt.zip, tt.typ)
		if !strings.Contains(r.stderr, "--max-expansion") || !strings.Contains(r.stderr, strconv.Itoa(pe.DefaultMaxExpansion)+" times") {
			t.Errorf("cp %s %s: the message does not say which bound and how to raise it: %s", tt.zip, tt.typ, r.stderr)
		}
		t.Logf("cp %s: %s", tt.typ, strings.TrimSpace(r.stderr))
		mustFail(t, cfg, "limit exceeded", "cp", "--max-expansion", "200", tt.zip, tt.typ)
		if left := dirNames(t, root); len(left) != 0 {
			t.Errorf("%s: left behind after refused restores: %v", tt.typ, left)
		}
		id := mustRun(t, cfg, "cp", "--max-expansion", "-1", tt.zip, tt.typ).lastLine()
		if !strings.HasPrefix(id, tt.typ+":bomb") {
			t.Errorf("cp --max-expansion -1 %s %s printed %q", tt.zip, tt.typ, id)
		}
		for _, name := range dirNames(t, root) {
			os.RemoveAll(filepath.Join(root, name))
		}
	}

	// The upload path of a running serve refuses it too, and leaves
	// nothing.
	a := startServe(t, cfg)
	b, err := os.ReadFile(fsZip)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s3Client(t, a, cfg).PutObject(context.Background(), "copy", "bomb.zip", bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
	var er minio.ErrorResponse
	if err == nil || !errors.As(err, &er) || er.StatusCode != http.StatusBadRequest || er.Code != "EntityTooLarge" || !strings.Contains(er.Message, "--max-expansion") {
		t.Errorf("upload of a zip bomb: %v, want S3's EntityTooLarge (400) naming the limit", err)
	}
	if strings.Contains(a.stderr.String(), "level=ERROR") {
		t.Errorf("a refused upload was logged as an error:\n%s", a.stderr)
	}
	if left := fsPEs(t, cfg); len(left) != 0 {
		t.Errorf("left behind after a refused upload: %v", left)
	}
	a.stop()

	// The operator lifts the bound for uploads with serve --max-expansion.
	a = startServe(t, cfg, "--max-expansion", "-1")
	if _, err := s3Client(t, a, cfg).PutObject(context.Background(), "copy", "bomb.zip", bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
		t.Errorf("upload with serve --max-expansion -1: %v", err)
	}
	if got := fsPEs(t, cfg); len(got) != 1 {
		t.Errorf("after an allowed upload: PEs %v, want one", got)
	}
	a.stop()
}
