package vm

import (
	"bytes"
	"context"
	"os/exec"
	"strconv"
	"sync"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// cbtModel answers QueryChangedDiskAreas, which vcsim lacks, as vSphere
// does: the areas of a snapshot's disk that differ from the disk as it was
// when it had the given change ID. It learns change IDs from setChangeID
// and compares the real VMDK files in 64 KiB blocks.
type cbtModel struct {
	s       *vcsimtest.Sim
	mu      sync.Mutex
	changes map[string]string // change ID → datastore path of the disk then
}

func installCBTModel(s *vcsimtest.Sim) *cbtModel {
	m := &cbtModel{s: s, changes: map[string]string{}}
	s.Answer("QueryChangedDiskAreas", func(req any) (any, types.BaseMethodFault) {
		return m.query(req.(*types.QueryChangedDiskAreas))
	})
	return m
}

// setChangeID gives a disk a new change ID, as vSphere does at each
// snapshot of a VM with CBT on, and remembers which file it names.
func (m *cbtModel) setChangeID(t *testing.T, vm *object.VirtualMachine, d *types.VirtualDisk, id string) {
	t.Helper()
	d.Backing.(*types.VirtualDiskFlatVer2BackingInfo).ChangeId = id
	editDisk(t, vm, d)
	m.mu.Lock()
	m.changes[id] = backing(d)
	m.mu.Unlock()
}

func (m *cbtModel) forget(id string) {
	m.mu.Lock()
	delete(m.changes, id)
	m.mu.Unlock()
}

func (m *cbtModel) query(req *types.QueryChangedDiskAreas) (any, types.BaseMethodFault) {
	m.mu.Lock()
	basePath, ok := m.changes[req.ChangeId]
	m.mu.Unlock()
	if !ok || req.Snapshot == nil {
		return nil, &types.InvalidArgument{InvalidProperty: "changeId"}
	}
	snap, ok := m.s.Model.Map().Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: *req.Snapshot}
	}
	var cur *types.VirtualDisk
	for _, dev := range snap.Config.Hardware.Device {
		if d, ok := dev.(*types.VirtualDisk); ok && d.Key == req.DeviceKey {
			cur = d
		}
	}
	if cur == nil {
		return nil, &types.InvalidArgument{InvalidProperty: "deviceKey"}
	}
	a, err := vmdk.OpenFile(m.s.Local(basePath))
	if err != nil {
		return nil, &types.FileFault{File: err.Error()}
	}
	defer a.Close()
	b, err := vmdk.OpenFile(m.s.Local(backing(cur)))
	if err != nil {
		return nil, &types.FileFault{File: err.Error()}
	}
	defer b.Close()
	const block = 64 << 10
	info := types.DiskChangeInfo{StartOffset: req.StartOffset, Length: b.Size() - req.StartOffset}
	x, y := make([]byte, block), make([]byte, block)
	for off := req.StartOffset; off < b.Size(); off += block {
		a.ReadAt(x, off)
		b.ReadAt(y, off)
		if bytes.Equal(x, y) {
			continue
		}
		if n := len(info.ChangedArea); n > 0 && info.ChangedArea[n-1].Start+info.ChangedArea[n-1].Length == off {
			info.ChangedArea[n-1].Length += block
		} else {
			info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: off, Length: block})
		}
	}
	return info, nil
}

// TestIncrementalBackupWithCBT backs up two snapshots of a VM: the
// second reads only the blocks CBT reports changed, and restores whole.
func TestIncrementalBackupWithCBT(t *testing.T) {
	vcsimtest.RequireTool(t, "qemu-io", "qemu-utils")
	s := vcsimtest.Start(t)
	ctx := context.Background()
	cfg := s.Config
	cfg.ResourcePool = pool
	log := vcsimtest.Quiet()
	tm, err := NewTypeManager(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	raw := vcsimtest.RandomDisk(32<<20, 0, 8<<20)
	vm := createVM(t, s, "db", raw)
	cbt := installCBTModel(s)
	var mvm mo.VirtualMachine
	vm.Properties(ctx, vm.Reference(), []string{"config.instanceUuid"}, &mvm)
	id, _ := pe.NewID(Type, mvm.Config.InstanceUuid)
	p, err := tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}

	// Snapshot 1; CBT gets switched on by it.
	cbt.setChangeID(t, vm, vmDisks(t, vm)[0], "cid-1")
	snap1, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var conf mo.VirtualMachine
	vm.Properties(ctx, vm.Reference(), []string{"config.changeTrackingEnabled"}, &conf)
	if conf.Config == nil || conf.Config.ChangeTrackingEnabled == nil || !*conf.Config.ChangeTrackingEnabled {
		t.Error("snapshot did not switch changed block tracking on")
	}
	// The disk changes in two places, then snapshot 2.
	delta := newDelta(t, s, vm, vmDisks(t, vm)[0])
	want := bytes.Clone(raw)
	for _, w := range []struct{ off, n int }{{1 << 20, 64 << 10}, {20 << 20, 128 << 10}} {
		cmd := exec.Command("qemu-io", "-f", "vmdk", "-c", "write -P 0x3c "+itoa(w.off)+" "+itoa(w.n), s.Local(delta))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v\n%s", err, out)
		}
		copy(want[w.off:], bytes.Repeat([]byte{0x3c}, w.n))
	}
	cbt.setChangeID(t, vm, vmDisks(t, vm)[0], "cid-2")
	p, _ = tm.Get(ctx, id)
	snap2, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}

	r := repotest.New(t)
	var reads []int64
	for _, sid := range []pe.ID{snap1, snap2} {
		sp, err := tm.Get(ctx, sid)
		if err != nil {
			t.Fatal(err)
		}
		sum, err := r.Backup(ctx, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		reads = append(reads, sum.Read)
	}
	// Full: the 8 MiB allocated and metadata. Incremental: the two 1 MiB
	// chunks that hold the changes, and metadata.
	if reads[0] < 8<<20 || reads[1] > 2<<20+64<<10 || reads[1] < 2<<20 {
		t.Errorf("backups read %d and %d bytes; want >= 8 MiB, then about 2 MiB", reads[0], reads[1])
	}
	backup, err := r.OpenSnapshot(ctx, snap2)
	if err != nil {
		t.Fatal(err)
	}
	restored, err := tm.Copy(ctx, backup, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	comps, _ := restored.Components(ctx)
	if len(comps) != 1 || !bytes.Equal(readAll(t, comps[0]), want) {
		t.Error("the VM restored from the incremental backup has the wrong disk content")
	}

	// A change ID the server does not know: CBT cannot answer, says so.
	cbt.forget("cid-1")
	sp2, _ := tm.Get(ctx, snap2)
	c2, _ := sp2.Components(ctx)
	img2, _ := c2[0].Data(ctx)
	defer img2.Close()
	if _, err := img2.(pe.ChangeTracker).ChangedSince(ctx, snap1.Snapshot()); err == nil {
		t.Error("ChangedSince with a change ID the server does not know succeeded")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
