package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
)

var readAll = vcsimtest.ReadAll

const (
	pool    = "/DC0/host/DC0_C0/Resources"
	network = "VM Network"
)

// createVM makes a VM with a pvscsi controller, one disk per element of
// disks (real VMDK content, alternately sparse and flat) and a vmxnet3
// adapter.
func createVM(t *testing.T, s *vcsimtest.Sim, name string, disks ...[]byte) *object.VirtualMachine {
	t.Helper()
	ctx := context.Background()
	dsRef := s.DS.Reference()
	spec := types.VirtualMachineConfigSpec{
		Name: name, GuestId: "otherLinux64Guest", NumCPUs: 2, MemoryMB: 1024,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + s.DS.Name() + "]"},
	}
	ctl := &types.ParaVirtualSCSIController{}
	ctl.Key, ctl.BusNumber, ctl.SharedBus = -100, 0, types.VirtualSCSISharingNoSharing
	spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: ctl})
	for i, d := range disks {
		unit := int32(i)
		spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd, FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
			Device: &types.VirtualDisk{
				VirtualDevice: types.VirtualDevice{Key: int32(-1 - i), ControllerKey: -100, UnitNumber: &unit,
					Backing: &types.VirtualDiskFlatVer2BackingInfo{
						VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[" + s.DS.Name() + "]", Datastore: &dsRef},
						DiskMode:                     "persistent", ThinProvisioned: types.NewBool(i%2 == 0),
					}},
				CapacityInBytes: int64(len(d)), CapacityInKB: int64(len(d)) / 1024,
			},
		})
	}
	net, err := s.Finder.Network(ctx, network)
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := net.EthernetCardBackingInfo(ctx)
	nic := &types.VirtualVmxnet3{}
	nic.Key, nic.Backing = -200, nb
	spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: nic})
	folder, _ := s.Finder.DefaultFolder(ctx)
	rp, err := s.Finder.ResourcePool(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	task, err := folder.CreateVM(ctx, spec, rp, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	vm := object.NewVirtualMachine(s.Client.Client, res.Result.(types.ManagedObjectReference))
	// The content goes into files of its own that the disks are then
	// pointed at, leaving vcsim's own disk files as it made them.
	for i, d := range vmDisks(t, vm) {
		sub := "monolithicSparse"
		if i%2 == 1 {
			sub = "monolithicFlat"
		}
		p := backing(d)
		content := p[:strings.LastIndex(p, "/")+1] + fmt.Sprintf("content%d.vmdk", d.Key)
		s.WriteVMDK(content, disks[i], sub)
		d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName = content
		editDisk(t, vm, d)
	}
	return vm
}

// newDelta does what vSphere does to a disk when it takes a snapshot and
// vcsim does not: the disk gets a new delta over the file the snapshot
// keeps. It returns the delta's datastore path.
func newDelta(t *testing.T, s *vcsimtest.Sim, vm *object.VirtualMachine, d *types.VirtualDisk) string {
	t.Helper()
	parent := backing(d)
	dir := filepath.Dir(s.Local(parent))
	var deltaName string
	for n := 1; ; n++ {
		deltaName = fmt.Sprintf("disk%d-%06d.vmdk", d.Key, n)
		if _, err := os.Stat(filepath.Join(dir, deltaName)); err != nil {
			break
		}
	}
	delta := s.Delta(parent, deltaName)
	d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName = delta
	editDisk(t, vm, d)
	return delta
}

// editDisk reconfigures a disk without a file operation: govmomi's
// EditDevice asks to replace the file, which vcsim then overwrites.
func editDisk(t *testing.T, vm *object.VirtualMachine, d *types.VirtualDisk) {
	t.Helper()
	ctx := context.Background()
	task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: []types.BaseVirtualDeviceConfigSpec{
		&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationEdit, Device: d},
	}})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func vmDisks(t *testing.T, vm *object.VirtualMachine) []*types.VirtualDisk {
	t.Helper()
	devs, err := vm.Device(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*types.VirtualDisk
	for _, d := range devs.SelectByType((*types.VirtualDisk)(nil)) {
		out = append(out, d.(*types.VirtualDisk))
	}
	return out
}

func backing(d *types.VirtualDisk) string {
	return d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName
}

func hardware(t *testing.T, p pe.ProtectedEntity) Hardware {
	t.Helper()
	md, err := p.Metadata(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	var hw Hardware
	if err := json.NewDecoder(md).Decode(&hw); err != nil {
		t.Fatal(err)
	}
	return hw
}

// checkRestored compares a restored VM with the source's hardware and
// disk contents.
func checkRestored(t *testing.T, p pe.ProtectedEntity, want Hardware, disks [][]byte) {
	t.Helper()
	got := hardware(t, p)
	if !strings.HasPrefix(got.Name, want.Name) || got.GuestID != want.GuestID || got.NumCPUs != want.NumCPUs ||
		got.MemoryMB != want.MemoryMB || len(got.Disks) != len(want.Disks) || len(got.Controllers) != len(want.Controllers) ||
		len(got.NICs) != 1 || got.NICs[0].Network != network || got.NICs[0].Type != "vmxnet3" {
		t.Errorf("restored hardware %+v, want like %+v", got, want)
	}
	for i := range min(len(got.Disks), len(want.Disks)) {
		if g, w := got.Disks[i], want.Disks[i]; g.CapacityBytes != w.CapacityBytes || g.UnitNumber != w.UnitNumber || g.Thin != w.Thin {
			t.Errorf("restored disk %+v, want like %+v", g, w)
		}
	}
	comps, err := p.Components(context.Background())
	if err != nil || len(comps) != len(disks) {
		t.Fatalf("restored components %v %v", comps, err)
	}
	for i, c := range comps {
		if !bytes.Equal(readAll(t, c), disks[i]) {
			t.Errorf("restored disk %d (%s) differs", i, c.ID())
		}
	}
}

// TestVM snapshots a VM with two disks, reads its disks as they were at
// the snapshot after the live disks changed, and restores the snapshot
// as a new VM, directly and through a repository.
func TestVM(t *testing.T) {
	vcsimtest.RequireTool(t, "qemu-io", "qemu-utils")
	s := vcsimtest.Start(t)
	ctx := context.Background()
	cfg := s.Config
	cfg.ResourcePool = pool
	tm, err := NewTypeManager(cfg, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	disks := [][]byte{vcsimtest.RandomDisk(16<<20, 1<<20, 3<<20), vcsimtest.RandomDisk(8<<20, 0, 8<<20)}
	vm := createVM(t, s, "app", disks...)
	var mvm mo.VirtualMachine
	vm.Properties(ctx, vm.Reference(), []string{"config.instanceUuid"}, &mvm)
	id, _ := pe.NewID(Type, mvm.Config.InstanceUuid)

	ids, err := tm.List(ctx)
	if err != nil || !containsID(ids, id) {
		t.Fatalf("list %v %v: want %s in it", ids, err, id)
	}
	p, err := tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := p.Info(ctx); info.Name != "app" || info.Size != 24<<20 {
		t.Errorf("info %+v", info)
	}
	if _, err := p.Data(ctx); !errors.Is(err, pe.ErrNoData) {
		t.Errorf("VM data: %v, want ErrNoData", err)
	}
	hw := hardware(t, p)
	if hw.NumCPUs != 2 || hw.MemoryMB != 1024 || hw.GuestID != "otherLinux64Guest" || len(hw.Controllers) != 1 ||
		hw.Controllers[0].Type != "pvscsi" || len(hw.Disks) != 2 || len(hw.NICs) != 1 || hw.NICs[0].Network != network {
		t.Errorf("hardware %+v", hw)
	}
	comps, err := p.Components(ctx)
	if err != nil || len(comps) != 2 {
		t.Fatalf("components %v %v", comps, err)
	}
	for i, c := range comps {
		if !strings.HasPrefix(c.ID().String(), id.String()+diskInfix) {
			t.Errorf("component id %s", c.ID())
		}
		if !bytes.Equal(readAll(t, c), disks[i]) {
			t.Errorf("disk %d differs from its backing", i)
		}
		again, err := tm.Get(ctx, c.ID())
		if err != nil || again.ID() != c.ID() {
			t.Errorf("get %s: %v", c.ID(), err)
		}
	}

	snapID, err := p.Snapshot(ctx, pe.Params{Type: {"quiesce": true}})
	if err != nil {
		t.Fatal(err)
	}
	var tree mo.VirtualMachine
	vm.Properties(ctx, vm.Reference(), []string{"snapshot"}, &tree)
	if tree.Snapshot == nil || !tree.Snapshot.RootSnapshotList[0].Quiesced {
		t.Error("the snapshot was not quiesced")
	}
	// What vSphere does on disk that vcsim does not: each disk gets a
	// delta over the file the snapshot keeps. Then the live disks change.
	changed := make([][]byte, len(disks))
	for i, d := range vmDisks(t, vm) {
		delta := newDelta(t, s, vm, d)
		if out, err := exec.Command("qemu-io", "-f", "vmdk", "-c", "write -P 0x77 0 64k", s.Local(delta)).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v\n%s", err, out)
		}
		changed[i] = bytes.Clone(disks[i])
		copy(changed[i], bytes.Repeat([]byte{0x77}, 64<<10))
	}
	live, _ := tm.Get(ctx, id)
	lcomps, _ := live.Components(ctx)
	for i, c := range lcomps {
		if !bytes.Equal(readAll(t, c), changed[i]) {
			t.Errorf("live disk %d after the change differs", i)
		}
	}
	snap, err := tm.Get(ctx, snapID)
	if err != nil {
		t.Fatal(err)
	}
	if snaps, _ := p.ListSnapshots(ctx); len(snaps) != 1 || snaps[0] != snapID {
		t.Errorf("snapshots %v", snaps)
	}
	scomps, _ := snap.Components(ctx)
	for i, c := range scomps {
		if c.ID().Snapshot() != snapID.Snapshot() {
			t.Errorf("snapshot component %s", c.ID())
		}
		if !bytes.Equal(readAll(t, c), disks[i]) {
			t.Errorf("snapshot disk %d changed with the live disk", i)
		}
	}

	// Restore the snapshot as a new VM.
	restored, err := tm.Copy(ctx, snap, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	if restored.ID().Name() == id.Name() {
		t.Fatalf("restore reused the source's uuid")
	}
	checkRestored(t, restored, hw, disks)

	// Back the snapshot up with its disks and restore it from there.
	r := repotest.New(t)
	sum, err := r.Backup(ctx, snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	backup, err := r.OpenSnapshot(ctx, sum.ID)
	if err != nil {
		t.Fatal(err)
	}
	fromRepo, err := tm.Copy(ctx, backup, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	checkRestored(t, fromRepo, hw, disks)

	if _, err := tm.Copy(ctx, snap, pe.CopyOptions{Mode: pe.Update}); !errors.Is(err, pe.ErrNotSupported) {
		t.Errorf("update: %v", err)
	}
	if err := p.DeleteSnapshot(ctx, snapID.Snapshot()); err != nil {
		t.Fatal(err)
	}
	p, _ = tm.Get(ctx, id)
	if err := p.DeleteSnapshot(ctx, snapID.Snapshot()); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("deleting a deleted snapshot: %v", err)
	}
	if _, err := tm.Get(ctx, snapID); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("get of a deleted snapshot: %v", err)
	}
	missing, _ := pe.NewID(Type, "00000000-0000-0000-0000-000000000000")
	if _, err := tm.Get(ctx, missing); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("get of a missing VM: %v", err)
	}
}

func containsID(ids []pe.ID, id pe.ID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}
