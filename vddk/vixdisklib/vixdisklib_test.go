//go:build vddk

package vixdisklib

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/vddk"
	"github.com/astrolabe-appliance/astrolabe/vddk/vixdisklib/vddktest"
)

var buildFake = vddktest.Build

// sparseFile writes a 64 MiB file, zero but for random data at 1 MiB
// (100 KiB) and at 40 MiB + 7 (3 MiB), and returns its path and bytes.
func sparseFile(t *testing.T) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	want := make([]byte, 64<<20)
	rand.Read(want[1<<20 : 1<<20+100<<10])
	rand.Read(want[40<<20+7 : 43<<20+7])
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(int64(len(want)))
	f.WriteAt(want[1<<20:1<<20+100<<10], 1<<20)
	f.WriteAt(want[40<<20+7:43<<20+7], 40<<20+7)
	f.Close()
	return p, want
}

func TestBinding(t *testing.T) {
	ctx := context.Background()
	so := buildFake(t)
	record := filepath.Join(t.TempDir(), "record")
	t.Setenv("FAKE_VDDK_RECORD", record)

	// The VDDK directory works as well as the file.
	l, err := Load(filepath.Dir(filepath.Dir(so)), "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	c, err := l.Connect(ctx, ConnectParams{Server: "vc.example", Thumbprint: "AA:BB", User: "backup", Password: "pw",
		VM: "vm-42", VMSnapshot: "snapshot-7", Transports: []string{"hotadd", "nbdssl"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec, _ := os.ReadFile(record)
	for _, want := range []string{"server=vc.example", "thumbprint=AA:BB", "user=backup", "password=pw", "spec=0", "vmx=moref=vm-42", "snapshot=snapshot-7", "transports=hotadd:nbdssl", "readonly=0"} {
		if !strings.Contains(string(rec), want) {
			t.Errorf("ConnectEx got %q; want %s in it", rec, want)
		}
	}

	path, want := sparseFile(t)
	d, err := c.Open(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size() != int64(len(want)) {
		t.Fatalf("size %d, want %d", d.Size(), len(want))
	}
	if d.TransportMode() != "hotadd" {
		t.Errorf("transport %q", d.TransportMode())
	}
	for _, r := range []struct{ off, n int64 }{{0, 4096}, {1<<20 - 3, 1000}, {40<<20 + 1, 5 << 20}, {64<<20 - 700, 700}, {5, 1}} {
		got := make([]byte, r.n)
		if n, err := d.ReadAt(got, r.off); err != nil || int64(n) != r.n {
			t.Fatalf("read %d+%d: %d %v", r.off, r.n, n, err)
		}
		if !bytes.Equal(got, want[r.off:r.off+r.n]) {
			t.Errorf("read %d+%d differs", r.off, r.n)
		}
	}
	whole := make([]byte, len(want)+10)
	if n, err := d.ReadAt(whole, 0); n != len(want) || err == nil {
		t.Errorf("read past the end: %d %v, want %d and EOF", n, err, len(want))
	}
	if !bytes.Equal(whole[:len(want)], want) {
		t.Error("the whole disk, read with reads in flight, differs")
	}

	alloc, err := d.Allocated(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantAlloc := []vddk.Range{{Offset: 1 << 20, Length: 128 << 10}, {Offset: 40 << 20, Length: 3<<20 + 64<<10}}
	if len(alloc) != 2 || alloc[0] != wantAlloc[0] || alloc[1] != wantAlloc[1] {
		t.Errorf("allocated %v, want %v", alloc, wantAlloc)
	}

	// Writes at odd offsets land, sectors around them kept.
	patch := bytes.Repeat([]byte{0xa5}, 3000)
	for _, off := range []int64{100, 1<<20 + 511, 2 << 20} {
		if _, err := d.WriteAt(patch, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], patch)
	}
	if _, err := d.WriteAt(patch, d.Size()-10); err == nil {
		t.Error("a write past the end succeeded")
	}
	// A write of several windows, at odd ends, with writes in flight.
	big := make([]byte, 9<<20+3)
	rand.Read(big)
	if n, err := d.WriteAt(big, 10<<20+300); err != nil || n != len(big) {
		t.Fatalf("large write: %d %v", n, err)
	}
	copy(want[10<<20+300:], big)
	got := make([]byte, len(big)+2000)
	if _, err := d.ReadAt(got, 10<<20-700); err != nil || !bytes.Equal(got, want[10<<20-700:10<<20-700+len(got)]) {
		t.Errorf("read back of the large write: %v", err)
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, want) {
		t.Error("the file after the writes differs")
	}
	if n, err := d.ReadAt(nil, 5); n != 0 || err != nil {
		t.Errorf("empty read: %d %v", n, err)
	}
	if n, err := d.ReadAt(got[:1], d.Size()); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d %v, want EOF", n, err)
	}

	// Concurrent readers get their own bytes.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(i) * 7 << 20
			got := make([]byte, 3<<20)
			if _, err := d.ReadAt(got, off); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, want[off:off+3<<20]) {
				errs <- errors.New("concurrent read differs")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Read-only disks refuse writes with VDDK's error text.
	ro, err := c.Open(ctx, path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var verr *Error
	if _, err := ro.WriteAt(patch, 0); !errors.As(err, &verr) || verr.Code != CodeReadOnly || !strings.Contains(err.Error(), "write-protected") || !errors.Is(err, vddk.ErrReadOnly) {
		t.Errorf("write to a read-only disk: %v", err)
	}
	// Large writes fail in their asynchronous requests' results.
	if _, err := ro.WriteAt(big, 0); !errors.Is(err, vddk.ErrReadOnly) || !strings.Contains(err.Error(), "VixDiskLib_WriteAsync") {
		t.Errorf("large write to a read-only disk: %v", err)
	}
	if _, err := c.Open(ctx, filepath.Join(t.TempDir(), "missing.vmdk"), false); !errors.As(err, &verr) || verr.Code != CodeFileNotFound || !strings.Contains(err.Error(), "not found") {
		t.Errorf("open of a missing disk: %v", err)
	}
	if _, err := l.Connect(ctx, ConnectParams{Server: "vc"}); err == nil {
		t.Error("connect naming neither an FCD nor a VM succeeded")
	}
}

// TestFCD reaches a First Class Disk by its uuid, read-only.
func TestFCD(t *testing.T) {
	ctx := context.Background()
	l, err := Load(buildFake(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	root := t.TempDir()
	t.Setenv("FAKE_VDDK_ROOT", root)
	record := filepath.Join(t.TempDir(), "record")
	t.Setenv("FAKE_VDDK_RECORD", record)
	os.MkdirAll(filepath.Join(root, "fcd"), 0o755)
	want := make([]byte, 4<<20)
	rand.Read(want)
	os.WriteFile(filepath.Join(root, "fcd", "0b6e-flat.vmdk"), want, 0o644)
	os.WriteFile(filepath.Join(root, "fcd", "0b6e.vmdk"), []byte("# Disk DescriptorFile\nRW 8192 VMFS \"0b6e-flat.vmdk\"\n"), 0o644)
	c, err := l.Connect(ctx, ConnectParams{Server: "vc", User: "u", Password: "p", FCD: "0b6e", FCDDatastore: "datastore-12", FCDSnapshot: "s1", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if rec, _ := os.ReadFile(record); !strings.Contains(string(rec), "spec=1 vmx= fcd=0b6e ds=datastore-12 ssid=s1 snapshot= transports=nbdssl:nbd readonly=1") {
		t.Errorf("ConnectEx got %q", rec)
	}
	d, err := c.Open(ctx, "", false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("FCD read: %v", err)
	}
}

// TestLoadErrors: a library that is missing, or is not VDDK, says so.
func TestLoadErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nothing.so")
	if _, err := Load(missing, ""); err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("loading a missing library: %v", err)
	}
	if _, err := Load(t.TempDir(), ""); err == nil || !strings.Contains(err.Error(), "no libvixDiskLib.so") {
		t.Errorf("loading from an empty directory: %v", err)
	}
	notSO := filepath.Join(t.TempDir(), "libvixDiskLib.so.8")
	os.WriteFile(notSO, []byte("not ELF"), 0o644)
	if _, err := Load(notSO, ""); err == nil || !strings.Contains(err.Error(), notSO) {
		t.Errorf("loading a file that is no library: %v", err)
	}

	buildFake(t) // for its gcc check
	dir := t.TempDir()
	src, so := filepath.Join(dir, "partial.c"), filepath.Join(dir, "libvixDiskLib.so.8")
	os.WriteFile(src, []byte("unsigned long long VixDiskLib_InitEx(void) { return 0; }\n"), 0o644)
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	if _, err := Load(so, ""); err == nil || !strings.Contains(err.Error(), "no symbol VixDiskLib_Exit") {
		t.Errorf("loading a library without VDDK's calls: %v", err)
	}
}

// connectFake loads the stand-in library and connects to a VM, both
// closed when the test ends.
func connectFake(t *testing.T) *Conn {
	t.Helper()
	l, err := Load(buildFake(t), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := l.Connect(context.Background(), ConnectParams{Server: "vc", User: "u", Password: "p", VM: "vm-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestConcurrentOpen: disks opened and closed from several goroutines at
// once reach VDDK one at a time, as it requires; the stand-in fails
// calls that overlap.
func TestConcurrentOpen(t *testing.T) {
	ctx := context.Background()
	c := connectFake(t)
	path, want := sparseFile(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := c.Open(ctx, path, false)
			if err != nil {
				errs <- err
				return
			}
			got := make([]byte, 1<<20)
			if _, err := d.ReadAt(got, int64(i)<<20); err != nil || !bytes.Equal(got, want[i<<20:(i+1)<<20]) {
				errs <- fmt.Errorf("read: %v", err)
			}
			if err := d.Close(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestOddSize: a disk that is not a whole number of 64 KiB chunks reports
// its last partial chunk allocated, as VDDK cannot be asked about it.
func TestOddSize(t *testing.T) {
	ctx := context.Background()
	c := connectFake(t)
	path := filepath.Join(t.TempDir(), "odd.raw")
	size := int64(1<<20 + 3*512)
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(path, size)
	d, err := c.Open(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt([]byte("tail"), size-4); err != nil {
		t.Fatal(err)
	}
	alloc, err := d.Allocated(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(alloc) != 1 || alloc[0] != (vddk.Range{Offset: 1 << 20, Length: 3 * 512}) {
		t.Errorf("allocated %v", alloc)
	}
	got := make([]byte, 10)
	if n, err := d.ReadAt(got, size-4); n != 4 || err != io.EOF || string(got[:4]) != "tail" {
		t.Errorf("read of the tail: %d %v %q", n, err, got[:n])
	}
}
