package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
)

// instantSim is a simulator with a VM backed up (its Hardware read as a
// backup reads it) and the appliance's NFS export as the datastore's
// directory would show it.
type instantSim struct {
	*vcsimtest.Sim
	tm  *TypeManager
	hw  Hardware
	nas NASDatastore
}

// startInstantSim starts the simulator, makes the source VM (two disks
// on two controllers, a NIC) and reads its Hardware. vcsim's
// CreateNasDatastore takes the spec's localPath as a directory on the
// simulator's machine (relative: to the working directory) and names the
// datastore after its last element; vSphere takes localPath as the name.
// So the test works in a directory where nas.Name is that directory.
func startInstantSim(t *testing.T) *instantSim {
	s := vcsimtest.Start(t)
	cfg := s.Config
	cfg.ResourcePool, cfg.Datastore = pool, s.DS.Name()
	tm, err := NewTypeManager(cfg, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	is := &instantSim{Sim: s, tm: tm,
		nas: NASDatastore{Name: "astrolabe-instant-0123abcd", RemoteHost: "127.0.0.1", RemotePath: "/"}}
	t.Chdir(t.TempDir())
	if err := os.Mkdir(is.nas.Name, 0o700); err != nil {
		t.Fatal(err)
	}
	is.hw = hardware(t, is.sourceVM(t))
	return is
}

// sourceVM makes the VM "app": a pvscsi and an lsilogic controller with
// a disk each, and a vmxnet3 adapter.
func (s *instantSim) sourceVM(t *testing.T) pe.ProtectedEntity {
	ctx := context.Background()
	dsRef := s.DS.Reference()
	spec := types.VirtualMachineConfigSpec{
		Name: "app", GuestId: "otherLinux64Guest", NumCPUs: 4, MemoryMB: 2048,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + s.DS.Name() + "]"},
	}
	add := func(d types.BaseVirtualDevice, op types.VirtualDeviceConfigSpecFileOperation) {
		spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, FileOperation: op, Device: d})
	}
	pv := &types.ParaVirtualSCSIController{}
	pv.Key, pv.BusNumber, pv.SharedBus = -100, 0, types.VirtualSCSISharingNoSharing
	lsi := &types.VirtualLsiLogicController{}
	lsi.Key, lsi.BusNumber, lsi.SharedBus = -101, 1, types.VirtualSCSISharingNoSharing
	add(pv, "")
	add(lsi, "")
	for i, ctl := range []int32{-100, -101} {
		unit := int32(i)
		add(&types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{Key: int32(-1 - i), ControllerKey: ctl, UnitNumber: &unit,
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[" + s.DS.Name() + "]", Datastore: &dsRef},
					DiskMode:                     "persistent", ThinProvisioned: types.NewBool(true),
				}},
			CapacityInBytes: int64(i+1) << 20,
		}, types.VirtualDeviceConfigSpecFileOperationCreate)
	}
	net, err := s.Finder.Network(ctx, network)
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := net.EthernetCardBackingInfo(ctx)
	nic := &types.VirtualVmxnet3{}
	nic.Key, nic.Backing = -200, nb
	add(nic, "")
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
	var m mo.VirtualMachine
	object.NewVirtualMachine(s.Client.Client, res.Result.(types.ManagedObjectReference)).Properties(ctx, res.Result.(types.ManagedObjectReference), []string{"config.instanceUuid"}, &m)
	id, _ := pe.NewID(Type, m.Config.InstanceUuid)
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// exportDisks puts the disk files the appliance's NFS server presents,
// <name>/<name>.vmdk (a monolithicFlat descriptor) and
// <name>/<name>-flat.vmdk, into the export's directory, one per disk of
// hw, and returns the names by disk key. vcsim attaches an existing disk
// file only if it is there (it does not read it).
func (s *instantSim) exportDisks(t *testing.T, prefix string) map[int32]string {
	names := map[int32]string{}
	for _, d := range s.hw.Disks {
		name := fmt.Sprintf("%s-disk-%d", prefix, d.Key)
		dir := filepath.Join(s.nas.Name, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", name+".vmdk", fmt.Sprint(d.CapacityBytes))
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v\n%s", err, out)
		}
		names[d.Key] = name
	}
	return names
}

// nasState reads the NFS datastore: nil if there is none.
func (s *instantSim) nasState(t *testing.T) *mo.Datastore {
	t.Helper()
	ctx := context.Background()
	ds, err := s.Finder.Datastore(ctx, s.nas.Name)
	var nf *find.NotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var m mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"summary", "info", "host", "vm"}, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// checkNASGone checks that no host, compute resource or datacenter lists
// the NFS datastore any more.
func (s *instantSim) checkNASGone(t *testing.T) {
	t.Helper()
	if m := s.nasState(t); m != nil {
		t.Fatalf("datastore %s still there, mounted on %v", s.nas.Name, m.Host)
	}
	for _, e := range s.Model.Map().All("Datastore") {
		if e.(*simulator.Datastore).Name == s.nas.Name {
			t.Errorf("the simulator still has datastore %s", s.nas.Name)
		}
	}
	ctx := context.Background()
	var dc mo.Datacenter
	dco, _ := s.Finder.DefaultDatacenter(ctx)
	dco.Properties(ctx, dco.Reference(), []string{"datastore"}, &dc)
	var hosts []mo.HostSystem
	hl, _ := s.Finder.HostSystemList(ctx, "*/*")
	refs := []types.ManagedObjectReference{}
	for _, h := range hl {
		refs = append(refs, h.Reference())
	}
	s.Client.PropertyCollector().Retrieve(ctx, refs, []string{"name", "datastore"}, &hosts)
	if len(hosts) == 0 {
		t.Fatal("no hosts found")
	}
	for _, list := range append([][]types.ManagedObjectReference{dc.Datastore}, func() (l [][]types.ManagedObjectReference) {
		for _, h := range hosts {
			l = append(l, h.Datastore)
		}
		return
	}()...) {
		for _, ref := range list {
			var m mo.Datastore
			if err := s.Client.PropertyCollector().RetrieveOne(ctx, ref, []string{"name"}, &m); err == nil && m.Name == s.nas.Name {
				t.Errorf("datastore %s still listed (%s)", s.nas.Name, ref)
			}
		}
	}
}

func (s *instantSim) vmState(t *testing.T, ref types.ManagedObjectReference) (mo.VirtualMachine, bool) {
	t.Helper()
	var m mo.VirtualMachine
	err := s.Client.PropertyCollector().RetrieveOne(context.Background(), ref, []string{"name", "config", "runtime", "datastore"}, &m)
	if err != nil {
		return m, false
	}
	return m, true
}

func (s *instantSim) vmCount(t *testing.T) int {
	l, err := s.Finder.VirtualMachineList(context.Background(), "*")
	if err != nil {
		t.Fatal(err)
	}
	return len(l)
}

// TestInstant starts a backed-up VM from its NFS datastore, checks it is
// the backup's hardware on the exported disks and running, starts a
// second one on the same mount, stops that (the datastore stays: the
// first uses it), migrates the first onto the local datastore while it
// runs and stops it: the VM stays, the NFS datastore is gone.
func TestInstant(t *testing.T) {
	s := startInstantSim(t)
	ctx := context.Background()
	names := s.exportDisks(t, "app")

	v, err := s.tm.StartInstant(ctx, s.hw, s.nas, names)
	if err != nil {
		t.Fatal(err)
	}
	ds := s.nasState(t)
	if ds == nil {
		t.Fatal("no NFS datastore after start")
	}
	info, ok := ds.Info.(*types.NasDatastoreInfo)
	if ds.Summary.Type != "NFS" || !ok || info.Nas.Type != "NFS" || info.Nas.RemoteHost != "127.0.0.1" || info.Nas.RemotePath != "/" {
		t.Errorf("datastore summary type %q, info %#v: want NFS from 127.0.0.1:/", ds.Summary.Type, ds.Info)
	}
	if len(ds.Host) != 1 || ds.Host[0].Key != v.Host || ds.Host[0].MountInfo.AccessMode != "readWrite" {
		t.Errorf("datastore mounts %+v, want one read-write on %s", ds.Host, v.Host)
	}
	if !strings.HasPrefix(v.Name, "app-restored-") || v.UUID == "" || v.Datastore != s.nas {
		t.Errorf("instant VM %+v", v)
	}
	m, ok := s.vmState(t, v.VM)
	if !ok || m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || m.Config.InstanceUuid != v.UUID {
		t.Fatalf("instant VM %v: state %v, uuid %s", ok, m.Runtime.PowerState, m.Config.InstanceUuid)
	}
	if want := fmt.Sprintf("[%s] %s/%s/%s.vmx", s.nas.Name, names[s.hw.Disks[0].Key], v.Name, v.Name); m.Config.Files.VmPathName != want {
		t.Errorf("vmx at %s, want %s", m.Config.Files.VmPathName, want)
	}
	id, _ := pe.NewID(Type, v.UUID)
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	got := hardware(t, p)
	if got.NumCPUs != s.hw.NumCPUs || got.MemoryMB != s.hw.MemoryMB || got.GuestID != s.hw.GuestID ||
		len(got.NICs) != 1 || got.NICs[0].Type != "vmxnet3" || got.NICs[0].Network != network || len(got.Disks) != 2 {
		t.Errorf("instant VM's hardware %+v, want like %+v", got, s.hw)
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	for _, ctl := range s.hw.Controllers {
		for _, d := range s.hw.Disks {
			if d.ControllerKey != ctl.Key {
				continue
			}
			nd := findDisk(devices, ctl, d.UnitNumber)
			if nd == nil {
				t.Errorf("no disk at %s bus %d unit %d", ctl.Type, ctl.BusNumber, d.UnitNumber)
				continue
			}
			if want := diskPath(s.nas.Name, names[d.Key]); backing(nd) != want || nd.CapacityInBytes != d.CapacityBytes {
				t.Errorf("disk %d on %s: %s of %d bytes, want %s of %d", d.Key, ctl.Type, backing(nd), nd.CapacityInBytes, want, d.CapacityBytes)
			}
		}
	}
	if found, err := s.tm.FindInstant(ctx, s.nas); err != nil || len(found) != 1 || found[0] != v {
		t.Errorf("find instant VMs: %+v %v, want [%+v]", found, err, v)
	}

	// A second VM on the same mount, from other exports of the appliance.
	v2, err := s.tm.StartInstant(ctx, s.hw, s.nas, s.exportDisks(t, "app2"))
	if err != nil {
		t.Fatal(err)
	}
	if ds := s.nasState(t); ds == nil || len(ds.Host) != 1 || v2.Host != v.Host || v2.Name == v.Name {
		t.Errorf("second start: mounts %+v, VMs %+v and %+v: want the mount reused", ds, v, v2)
	}
	if found, _ := s.tm.FindInstant(ctx, s.nas); len(found) != 2 {
		t.Errorf("find instant VMs: %+v, want 2", found)
	}
	if err := s.tm.StopInstant(ctx, v2); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.vmState(t, v2.VM); ok {
		t.Errorf("VM %s still registered after stop", v2.Name)
	}
	if ds := s.nasState(t); ds == nil || len(ds.Vm) != 1 {
		t.Fatalf("datastore after stopping one of two VMs: %+v, want it mounted, used by one", ds)
	}

	// Migrate the first one while it runs; then stop leaves it.
	if err := s.tm.MigrateInstant(ctx, v, ""); err != nil {
		t.Fatal(err)
	}
	m, _ = s.vmState(t, v.VM)
	local := "[" + s.DS.Name() + "] "
	if !strings.HasPrefix(m.Config.Files.VmPathName, local) || m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn ||
		len(m.Datastore) != 1 || m.Datastore[0] != s.DS.Reference() {
		t.Errorf("after migrate: vmx %s, %s, datastores %v", m.Config.Files.VmPathName, m.Runtime.PowerState, m.Datastore)
	}
	for _, d := range vmDisks(t, object.NewVirtualMachine(s.Client.Client, v.VM)) {
		b := d.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !strings.HasPrefix(b.FileName, local) || *b.Datastore != s.DS.Reference() {
			t.Errorf("disk %d after migrate at %s", d.Key, b.FileName)
		}
		if _, err := os.Stat(s.Local(b.FileName)); err != nil {
			t.Errorf("disk %d after migrate: %v", d.Key, err)
		}
	}
	if err := s.tm.MigrateInstant(ctx, v, s.nas.Name); err == nil {
		t.Error("migrate onto the NFS datastore itself: no error")
	}
	if err := s.tm.StopInstant(ctx, v); err != nil {
		t.Fatal(err)
	}
	s.checkNASGone(t)
	if m, ok := s.vmState(t, v.VM); !ok || m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("the migrated VM after stop: registered %v, %s", ok, m.Runtime.PowerState)
	}
	if err := s.tm.StopInstant(ctx, v); err != nil {
		t.Errorf("stop again: %v", err)
	}
	if found, err := s.tm.FindInstant(ctx, s.nas); err != nil || len(found) != 0 {
		t.Errorf("find instant VMs with the datastore gone: %+v %v", found, err)
	}
}

// TestInstantStop stops an instant VM that was not migrated: it is
// unregistered and the datastore unmounted.
func TestInstantStop(t *testing.T) {
	s := startInstantSim(t)
	ctx := context.Background()
	before := s.vmCount(t)
	v, err := s.tm.StartInstant(ctx, s.hw, s.nas, s.exportDisks(t, "app"))
	if err != nil {
		t.Fatal(err)
	}
	// The appliance restarted and kept only the datastore's name.
	found, err := s.tm.FindInstant(ctx, NASDatastore{Name: s.nas.Name, RemoteHost: s.nas.RemoteHost, RemotePath: s.nas.RemotePath})
	if err != nil || len(found) != 1 {
		t.Fatalf("find instant VMs: %+v %v", found, err)
	}
	if err := s.tm.StopInstant(ctx, found[0]); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.vmState(t, v.VM); ok {
		t.Error("VM still registered after stop")
	}
	id, _ := pe.NewID(Type, v.UUID)
	if _, err := s.tm.Get(ctx, id); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("get of the stopped VM: %v", err)
	}
	if n := s.vmCount(t); n != before {
		t.Errorf("%d VMs after stop, want %d", n, before)
	}
	s.checkNASGone(t)
}

// TestInstantFailures: a start refused or failing half-way leaves no VM
// and no datastore it mounted behind; a datastore mounted before stays.
func TestInstantFailures(t *testing.T) {
	s := startInstantSim(t)
	ctx := context.Background()
	names := s.exportDisks(t, "app")
	before := s.vmCount(t)
	home := names[s.hw.Disks[0].Key]
	checkClean := func(what string) {
		t.Helper()
		// The VM's own files went with it; the disk's stay.
		entries, _ := os.ReadDir(filepath.Join(s.nas.Name, home))
		var files []string
		for _, e := range entries {
			files = append(files, e.Name())
		}
		if want := []string{home + "-flat.vmdk", home + ".vmdk"}; !slices.Equal(files, want) {
			t.Errorf("%s: files in the export %v, want %v", what, files, want)
		}
		if ds := s.nasState(t); ds != nil {
			t.Errorf("%s: datastore left mounted on %v", what, ds.Host)
		}
		if n := s.vmCount(t); n != before {
			t.Errorf("%s: %d VMs, want %d", what, n, before)
		}
	}

	missing := map[int32]string{s.hw.Disks[0].Key: names[s.hw.Disks[0].Key]}
	if _, err := s.tm.StartInstant(ctx, s.hw, s.nas, missing); err == nil || !strings.Contains(err.Error(), "no export name for disk") {
		t.Errorf("start with a disk unnamed: %v", err)
	}
	checkClean("a disk unnamed")
	bad := []struct {
		what  string
		nas   NASDatastore
		names map[int32]string
	}{
		{"a datastore name with a slash", NASDatastore{Name: "a/b", RemoteHost: "127.0.0.1", RemotePath: "/"}, names},
		{"no remote host", NASDatastore{Name: s.nas.Name, RemotePath: "/"}, names},
		{"a relative remote path", NASDatastore{Name: s.nas.Name, RemoteHost: "127.0.0.1", RemotePath: "x"}, names},
		{"a disk name with a slash", s.nas, map[int32]string{s.hw.Disks[0].Key: "../x", s.hw.Disks[1].Key: "y"}},
		{"one name for two disks", s.nas, map[int32]string{s.hw.Disks[0].Key: "x", s.hw.Disks[1].Key: "x"}},
	}
	for _, b := range bad {
		if _, err := s.tm.StartInstant(ctx, s.hw, b.nas, b.names); err == nil {
			t.Errorf("start with %s: no error", b.what)
		}
		checkClean(b.what)
	}
	noDisks := s.hw
	noDisks.Disks = nil
	if _, err := s.tm.StartInstant(ctx, noDisks, s.nas, names); err == nil {
		t.Error("start of hardware without disks: no error")
	}

	// CreateVM fails after the mount: the export has no such disk.
	gone := map[int32]string{s.hw.Disks[0].Key: names[s.hw.Disks[0].Key], s.hw.Disks[1].Key: "not-exported"}
	if _, err := s.tm.StartInstant(ctx, s.hw, s.nas, gone); err == nil || !strings.Contains(err.Error(), "create VM") {
		t.Errorf("start with a disk not exported: %v", err)
	}
	checkClean("a disk not exported")
	// The hardware fails after the mount.
	odd := s.hw
	odd.Controllers = slices.Clone(s.hw.Controllers)
	odd.Controllers[0].Type = "floppy"
	if _, err := s.tm.StartInstant(ctx, odd, s.nas, names); !errors.Is(err, pe.ErrInvalidSource) {
		t.Errorf("start with an unknown controller type: %v", err)
	}
	checkClean("an unknown controller type")
	// Power on fails after CreateVM.
	s.Model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "PowerOnVM_Task", ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeInvalidState, Enabled: true,
	})
	if _, err := s.tm.StartInstant(ctx, s.hw, s.nas, names); err == nil || !strings.Contains(err.Error(), "power on") {
		t.Errorf("start with power on failing: %v", err)
	}
	s.Model.Service.ClearFaultRules()
	checkClean("power on failing")

	// A datastore mounted before a failed start stays mounted.
	v, err := s.tm.StartInstant(ctx, s.hw, s.nas, names)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.tm.StartInstant(ctx, s.hw, s.nas, gone); err == nil {
		t.Error("second start with a disk not exported: no error")
	}
	if ds := s.nasState(t); ds == nil || len(ds.Vm) != 1 {
		t.Errorf("datastore after a failed start beside a running VM: %+v", ds)
	}
	// The name is taken by another export: refused, and left alone.
	other := s.nas
	other.RemotePath = "/elsewhere"
	if _, err := s.tm.StartInstant(ctx, s.hw, other, names); err == nil || !strings.Contains(err.Error(), "is not the NFS export") {
		t.Errorf("start on a datastore name taken by another export: %v", err)
	}
	if ds := s.nasState(t); ds == nil {
		t.Error("datastore gone after a refused start")
	}
	// A relocation that leaves files on the NFS datastore is an error
	// (vcsim's own RelocateVM_Task moves nothing).
	s.Answer("RelocateVM_Task", nil)
	if err := s.tm.MigrateInstant(ctx, v, ""); err == nil || !strings.Contains(err.Error(), "still on "+s.nas.Name) {
		t.Errorf("migrate that moves nothing: %v", err)
	}
	s.ExtendStorage()

	// Half migrated (one disk moved by hand): stop does not throw it away.
	vm := object.NewVirtualMachine(s.Client.Client, v.VM)
	task, err := vm.Relocate(ctx, types.VirtualMachineRelocateSpec{Disk: []types.VirtualMachineRelocateSpecDiskLocator{
		{DiskId: vmDisks(t, vm)[0].Key, Datastore: s.DS.Reference()},
	}}, "")
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := s.tm.StopInstant(ctx, v); err == nil || !strings.Contains(err.Error(), "half migrated") {
		t.Errorf("stop of a half-migrated VM: %v", err)
	}
	if _, ok := s.vmState(t, v.VM); !ok {
		t.Fatal("half-migrated VM gone after stop")
	}
	if err := s.tm.MigrateInstant(ctx, v, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.tm.StopInstant(ctx, v); err != nil {
		t.Fatal(err)
	}
	s.checkNASGone(t)
	if m, ok := s.vmState(t, v.VM); !ok || m.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("the migrated VM after stop: registered %v, %s", ok, m.Runtime.PowerState)
	}
}
