//go:build vddk

package vixdisklib

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
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

	if _, err := Load(filepath.Join(t.TempDir(), "nothing.so"), ""); err == nil {
		t.Error("loading a missing library succeeded")
	}
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
	if d.TransportMode() != "file" {
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
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, want) {
		t.Error("the file after the writes differs")
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
	if _, err := ro.WriteAt(patch, 0); !errors.As(err, &verr) || verr.Code != CodeReadOnly || !strings.Contains(err.Error(), "write-protected") {
		t.Errorf("write to a read-only disk: %v", err)
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
