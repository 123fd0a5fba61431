package fusefs

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/disk"
	pefs "github.com/astrolabe-appliance/astrolabe/pe/fs"
)

// sampleDiskSize is the size of the sample disk image; its one partition
// starts at 1 MiB.
const sampleDiskSize = 64 << 20

// newSamples makes, in a temporary directory dir, the PEs the tests serve
// and a manager of them, built from the PE types themselves: fs:sample, a
// small tree in dir/fs, and disk:sample.img, a sparse image in dir/disk
// with an MBR partition table (sfdisk) and data in its one partition
// around a hole.
func newSamples(t *testing.T) (dir string, m pe.Manager) {
	t.Helper()
	dir = t.TempDir()
	fsRoot, diskRoot := filepath.Join(dir, "fs"), filepath.Join(dir, "disk")
	writeSampleTree(t, filepath.Join(fsRoot, "sample"))
	if err := os.Mkdir(diskRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	writeSampleDisk(t, filepath.Join(diskRoot, "sample.img"))
	fsTM, err := pefs.NewTypeManager(fsRoot)
	if err != nil {
		t.Fatal(err)
	}
	diskTM, err := disk.NewTypeManager(diskRoot)
	if err != nil {
		t.Fatal(err)
	}
	sm, err := pe.NewManager(fsTM, diskTM)
	if err != nil {
		t.Fatal(err)
	}
	return dir, sm
}

// writeSampleTree writes a tree of a few files of several modes, one
// incompressible, and a symlink at dir.
func writeSampleTree(t *testing.T, dir string) {
	t.Helper()
	files := map[string]string{
		"README.txt":           "A sample tree.\n",
		"docs/report-2026.txt": "Quarterly report\n",
		"docs/notes/todo.md":   "- restore a file\n",
		"etc/app.conf":         "listen = 127.0.0.1:8080\n",
		"data/empty":           "",
		"data/random.bin":      string(randomBytes(1, 256<<10)),
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "etc", "app.conf"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../README.txt", filepath.Join(dir, "docs", "README-link")); err != nil {
		t.Fatal(err)
	}
}

// writeSampleDisk writes a sparse image at path: an MBR with one Linux
// partition from 1 MiB to the end, 64 KiB of data at its start and at
// its middle, holes elsewhere.
func writeSampleDisk(t *testing.T, path string) {
	t.Helper()
	sfdisk, err := exec.LookPath("sfdisk")
	if err != nil {
		t.Fatal("sfdisk missing: install util-linux (apt-get install -y util-linux)")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(sampleDiskSize); err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{1 << 20, sampleDiskSize / 2} {
		if _, err := f.WriteAt(randomBytes(uint64(i+2), 64<<10), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sfdisk, "--no-reread", "--no-tell-kernel", "-q", path)
	cmd.Stdin = strings.NewReader("label: dos\nstart=2048, type=83\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk %s: %v: %s", path, err, out)
	}
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), 7})
	_, _ = r.Read(b)
	return b
}

// snapshot snapshots the live PE id of m and returns the snapshot's ID.
func snapshot(t *testing.T, m pe.Manager, id string) pe.ID {
	t.Helper()
	pid, err := pe.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Get(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Snapshot(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
