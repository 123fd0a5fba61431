package vm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/appliance/nfsexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
	"github.com/astrolabe-appliance/astrolabe/pe/vm"
)

// hostView is the vm type manager as the appliance uses it, on a vcsim
// that cannot mount NFS: before each start it copies, with libnfs's
// nfs-cp (a real NFS client), the files the appliance's NFS server
// presents into the directory vcsim keeps the datastore in, as a host
// that mounted it would see them.
type hostView struct {
	*vm.TypeManager
	t      *testing.T
	nfsURL func(path string) string
}

func (h hostView) StartInstant(ctx context.Context, hw vm.Hardware, nas vm.NASDatastore, diskNames map[int32]string) (vm.InstantVM, error) {
	for _, name := range diskNames {
		dir := filepath.Join(nas.Name, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return vm.InstantVM{}, err
		}
		for _, f := range []string{name + ".vmdk", name + "-flat.vmdk"} {
			out, err := exec.Command("nfs-cp", h.nfsURL(name+"/"+f), filepath.Join(dir, f)).CombinedOutput()
			if err != nil {
				h.t.Fatalf("nfs-cp %s: %v\n%s", f, err, out)
			}
		}
	}
	return h.TypeManager.StartInstant(ctx, hw, nas, diskNames)
}

// TestInstantVMThroughTheAppliance: the appliance boots a VM snapshot on
// vSphere from its NFS exports, the disks as NFS serves them equal the
// snapshot's; migrate leaves the VM on real storage and nothing of the
// appliance's; stop throws a second one away with its exports.
func TestInstantVMThroughTheAppliance(t *testing.T) {
	for _, tool := range []string{"nfs-cp", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: scripts/deps.d/nfs.sh installs it", tool)
		}
	}
	ctx := context.Background()
	contents := [][]byte{vcsimtest.RandomDisk(4<<20, 1<<20, 2<<20), vcsimtest.RandomDisk(2<<20, 0, 2<<20)}
	sim, tm, src := vm.StartInstantSim(t, contents...)
	if err := os.Mkdir(usecase.InstantDatastore, 0o700); err != nil {
		t.Fatal(err)
	}
	snap, err := src.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}

	srv, err := nfsexport.New(nfsexport.Options{ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, l) }()
	t.Cleanup(func() { stop(); <-served })
	port := l.Addr().(*net.TCPAddr).Port
	nfsURL := func(path string) string {
		return fmt.Sprintf("nfs://127.0.0.1/%s?version=3&nfsport=%d&mountport=%d", path, port, port)
	}
	m, err := pe.NewManager(hostView{TypeManager: tm, t: t, nfsURL: nfsURL})
	if err != nil {
		t.Fatal(err)
	}
	overlays := t.TempDir()
	uc, err := usecase.New(usecase.Config{Manager: m, NFS: srv, NFSAddr: l.Addr().String(), OverlayDir: overlays})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := uc.StartInstantVM(ctx, src.ID()); !errors.Is(err, pe.ErrNotSupported) {
		t.Fatalf("instant VM of a live VM, not a snapshot: %v", err)
	}
	v, err := uc.StartInstantVM(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Disks) != 2 || len(uc.NFSExports()) != 2 || len(uc.InstantVMs()) != 1 {
		t.Fatalf("instant VM %+v; NFS exports %v", v, uc.NFSExports())
	}
	if state := powerState(t, sim.Client.Client, v.VM.VM); state != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("instant VM is %s", state)
	}
	// What the host read over NFS is the snapshot's disks.
	sp, err := tm.Get(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	_, disks, err := vm.ReadHardware(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	if len(disks) != 2 {
		t.Fatalf("snapshot disks %v", disks)
	}
	i := 0
	for _, k := range slices.Sorted(maps.Keys(disks)) {
		want := readData(t, disks[k])
		if !bytes.Equal(want, contents[i]) {
			t.Fatalf("the snapshot's disk %d is not the content the VM was made with", k)
		}
		got, err := os.ReadFile(filepath.Join(usecase.InstantDatastore, v.Disks[i], v.Disks[i]+"-flat.vmdk"))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("disk %d as served over NFS differs from the snapshot's (%d vs %d bytes): %v", k, len(got), len(want), err)
		}
		i++
	}

	if err := uc.MigrateInstantVM(ctx, v.VM.Name, ""); err != nil {
		t.Fatal(err)
	}
	if len(uc.NFSExports()) != 0 || len(uc.InstantVMs()) != 0 {
		t.Errorf("after migrate: NFS exports %v, instant VMs %v", uc.NFSExports(), uc.InstantVMs())
	}
	if left, _ := os.ReadDir(overlays); len(left) != 0 {
		t.Errorf("overlays left after migrate: %v", left)
	}
	if state := powerState(t, sim.Client.Client, v.VM.VM); state != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("migrated VM is %s", state)
	}
	if _, err := sim.Finder.Datastore(ctx, usecase.InstantDatastore); err == nil {
		t.Error("the appliance's datastore is still mounted after the migrate")
	}

	w, err := uc.StartInstantVM(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := uc.StopInstantVM(ctx, w.VM.Name); err != nil {
		t.Fatal(err)
	}
	if len(uc.NFSExports()) != 0 || len(uc.InstantVMs()) != 0 {
		t.Errorf("after stop: NFS exports %v, instant VMs %v", uc.NFSExports(), uc.InstantVMs())
	}
	var gone mo.VirtualMachine
	if err := sim.Client.PropertyCollector().RetrieveOne(ctx, w.VM.VM, []string{"name"}, &gone); err == nil {
		t.Errorf("stopped instant VM %s is still there", w.VM.Name)
	}
	if err := uc.StopInstantVM(ctx, w.VM.Name); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("second stop: %v", err)
	}
}

func powerState(t *testing.T, c *vim25.Client, ref types.ManagedObjectReference) types.VirtualMachinePowerState {
	t.Helper()
	state, err := object.NewVirtualMachine(c, ref).PowerState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return state
}

func readData(t *testing.T, p pe.ProtectedEntity) []byte {
	t.Helper()
	img, err := p.Data(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b, err := io.ReadAll(io.NewSectionReader(img, 0, img.Size()))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
