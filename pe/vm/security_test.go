package vm

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/vmware/govmomi/vim25/mo"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/ziptest"
)

// TestSecurityRestoreUntrustedZipBomb: a VM in an uploaded zip whose disk
// expands beyond the bound (100 × its stored size) is refused with
// pe.ErrLimit while the disk is written to the datastore, and the VM made
// for it is destroyed again (issue 22: an untrusted zip must not fill a
// datastore).
func TestSecurityRestoreUntrustedZipBomb(t *testing.T) {
	vcsimtest.RequireTool(t, "qemu-img", "qemu-utils")
	s := vcsimtest.Start(t)
	ctx := context.Background()
	cfg := s.Config
	cfg.ResourcePool = pool
	tm, err := NewTypeManager(cfg, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	const size = 32 << 20
	disk := bytes.Repeat([]byte("BOOM"), size/4)
	vm := createVM(t, s, "bomb", disk)
	var mvm mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config.instanceUuid"}, &mvm); err != nil {
		t.Fatal(err)
	}
	id, _ := pe.NewID(Type, mvm.Config.InstanceUuid)
	p, err := tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	z, n := ziptest.Of(t, p)
	if n*pe.DefaultMaxExpansion >= size {
		t.Fatalf("the zip of a disk of %d bytes of pattern has %d bytes: not a bomb", size, n)
	}
	before := sortedIDs(t, tm)
	_, err = tm.Copy(ctx, z, pe.CopyOptions{Mode: pe.CreateNew})
	if !errors.Is(err, pe.ErrLimit) {
		t.Fatalf("restore of a %d-byte zip of a %d-byte disk: %v, want pe.ErrLimit", n, size, err)
	}
	t.Logf("refused: %v", err)
	if after := sortedIDs(t, tm); !slices.Equal(before, after) {
		t.Errorf("VMs after the refused restore: %v, want %v", after, before)
	}

	// The capacity a zip's hardware declares is no allowance either: a
	// VM with a disk of 256 MiB, which the datastore's file access would
	// write whole, is not made from 64 KiB of random data.
	svm := createVM(t, s, "small", vcsimtest.RandomDisk(64<<10, 0, 64<<10))
	if err := svm.Properties(ctx, svm.Reference(), []string{"config.instanceUuid"}, &mvm); err != nil {
		t.Fatal(err)
	}
	sid, _ := pe.NewID(Type, mvm.Config.InstanceUuid)
	small, err := tm.Get(ctx, sid)
	if err != nil {
		t.Fatal(err)
	}
	var sbuf bytes.Buffer
	if err := pe.WriteZip(ctx, &sbuf, small, nil); err != nil {
		t.Fatal(err)
	}
	before = sortedIDs(t, tm)
	huge := withCapacity(t, sbuf.Bytes(), 256<<20)
	zh, err := pe.OpenZip(ctx, bytes.NewReader(huge), int64(len(huge)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tm.Copy(ctx, zh, pe.CopyOptions{Mode: pe.CreateNew}); !errors.Is(err, pe.ErrLimit) {
		t.Errorf("restore of a zip declaring a 256 MiB disk of 64 KiB: %v, want pe.ErrLimit", err)
	}
	if after := sortedIDs(t, tm); !slices.Equal(before, after) {
		t.Errorf("VMs after the refused restores: %v, want %v", after, before)
	}

	// Without the bound the same zip restores.
	got, err := tm.Copy(ctx, z, pe.CopyOptions{Mode: pe.CreateNew, MaxExpansion: -1})
	if err != nil {
		t.Fatalf("restore with no expansion bound: %v", err)
	}
	checkRestored(t, got, hardware(t, p), [][]byte{disk})
}

func sortedIDs(t *testing.T, tm *TypeManager) []pe.ID {
	t.Helper()
	ids, err := tm.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ids, func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

// withCapacity rewrites the VM zip z so that its hardware declares every
// disk capacity bytes large.
func withCapacity(t *testing.T, z []byte, capacity int64) []byte {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	for _, f := range zr.File {
		if !strings.HasSuffix(f.Name, ".md") {
			r, err := f.OpenRaw()
			if err != nil {
				t.Fatal(err)
			}
			w, err := zw.CreateRaw(&f.FileHeader)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, r); err != nil {
				t.Fatal(err)
			}
			continue
		}
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		var hw Hardware
		if err := json.NewDecoder(r).Decode(&hw); err != nil {
			t.Fatal(err)
		}
		r.Close()
		for i := range hw.Disks {
			hw.Disks[i].CapacityBytes = capacity
		}
		w, err := zw.Create(f.Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.NewEncoder(w).Encode(hw); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
