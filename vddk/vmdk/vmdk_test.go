package vmdk

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

const mib = 1 << 20

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img missing: apt-get install -y qemu-utils")
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

// rawDisk writes a 64 MiB raw image with random data in three places.
func rawDisk(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	img := make([]byte, 64*mib)
	for _, r := range [][2]int{{0, 1 * mib}, {10*mib + 4096, 3*mib + 100}, {64*mib - 65536, 65536}} {
		rand.Read(img[r[0] : r[0]+r[1]])
	}
	p := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, img
}

func readAll(t *testing.T, d *Disk) []byte {
	t.Helper()
	out := make([]byte, d.Size())
	// Odd-sized reads across grain and extent boundaries.
	for off := 0; off < len(out); off += 777777 {
		end := min(off+777777, len(out))
		if _, err := d.ReadAt(out[off:end], int64(off)); err != nil && err != io.EOF {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	return out
}

func TestFormats(t *testing.T) {
	dir := t.TempDir()
	raw, want := rawDisk(t, dir)
	for _, sub := range []string{"monolithicFlat", "monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"} {
		t.Run(sub, func(t *testing.T) {
			sd := filepath.Join(dir, sub)
			os.Mkdir(sd, 0o755)
			p := filepath.Join(sd, "disk.vmdk")
			qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+sub, raw, p)
			d, err := OpenFile(p)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Size() != int64(len(want)) || d.CreateType != sub {
				t.Fatalf("size %d, type %s", d.Size(), d.CreateType)
			}
			if got := readAll(t, d); !bytes.Equal(got, want) {
				t.Fatal("content differs from the raw image")
			}
			alloc, err := d.Allocated()
			if err != nil {
				t.Fatal(err)
			}
			var n int64
			for _, e := range alloc {
				if e.Allocated {
					n += e.Length
				}
			}
			// Sparse formats allocate only the grains with data (qemu-img
			// skips zero grains); flat ones are all allocated.
			sparse := sub != "monolithicFlat" && sub != "twoGbMaxExtentFlat"
			if sparse && (n < 4*mib || n > 6*mib) || !sparse && n != d.Size() {
				t.Errorf("allocated %d bytes", n)
			}
		})
	}
}

func TestDeltaChain(t *testing.T) {
	dir := t.TempDir()
	raw, want := rawDisk(t, dir)
	base := filepath.Join(dir, "base.vmdk")
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, base)
	child := filepath.Join(dir, "child.vmdk")
	qemuImg(t, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
	// Write 1 MiB at 20 MiB into the child only.
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Fatal("qemu-io missing: apt-get install -y qemu-utils")
	}
	if out, err := exec.Command("qemu-io", "-f", "vmdk", "-c", "write -P 0xab 20M 1M", child).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	full := append([]byte(nil), want...)
	copy(full[20*mib:], bytes.Repeat([]byte{0xab}, mib))

	d, err := OpenFile(child)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.parent == nil {
		t.Fatal("child has no parent")
	}
	if got := readAll(t, d); !bytes.Equal(got, full) {
		t.Fatal("chain content differs")
	}
	// The child alone holds only the changed grains.
	var own int64
	for g := int64(0); g*d.extents[0].sparse.grainBytes() < d.Size(); g++ {
		if ok, _ := d.extents[0].sparse.allocated(g); ok {
			own += d.extents[0].sparse.grainBytes()
		}
	}
	if own != mib {
		t.Errorf("child allocates %d bytes, want 1 MiB", own)
	}
}

func TestCorrupt(t *testing.T) {
	dir := t.TempDir()
	raw, _ := rawDisk(t, dir)
	p := filepath.Join(dir, "s.vmdk")
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, p)
	b, _ := os.ReadFile(p)
	b[20] = 0xFF // grain size: not a power of two any more
	os.WriteFile(p, b, 0o644)
	if _, err := OpenFile(p); err == nil {
		t.Error("a corrupt header was accepted")
	}
	os.WriteFile(filepath.Join(dir, "x.vmdk"), []byte("not a disk"), 0o644)
	if _, err := OpenFile(filepath.Join(dir, "x.vmdk")); err == nil {
		t.Error("garbage was accepted")
	}
}

// TestDescriptorTail reads a sparse disk whose embedded descriptor has
// bytes after its terminating NUL, as qemu leaves when it rewrites the
// descriptor with a shorter CID (about one image in sixteen).
func TestDescriptorTail(t *testing.T) {
	dir := t.TempDir()
	raw, want := rawDisk(t, dir)
	p := filepath.Join(dir, "disk.vmdk")
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, p)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	region := make([]byte, 20*512)
	if _, err := f.ReadAt(region, 512); err != nil {
		t.Fatal(err)
	}
	end := bytes.IndexByte(region, 0)
	if end < 0 {
		t.Fatal("no NUL after the embedded descriptor")
	}
	if _, err := f.WriteAt([]byte("\x00\x007\"\nddb.toolsVersion = \"0\"\n"), int64(512+end)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := readAll(t, d); !bytes.Equal(got, want) {
		t.Error("content differs")
	}
}
