package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// maxHardwareJSON bounds the metadata a restore decodes.
const maxHardwareJSON = 16 << 20

// Copy implements pe.TypeManager: create_new creates a VM with src's
// hardware (its metadata) on the configured datastore, resource pool and
// folder, then writes each disk from src's components. A VM whose disks
// cannot all be written is destroyed again. Only create_new is built.
func (tm *TypeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	if opts.Mode != pe.CreateNew {
		return nil, fmt.Errorf("copy %s (%s): VMs are restored as new VMs (create_new): %w", src.ID(), opts.Mode, pe.ErrNotSupported)
	}
	p, err := tm.createNew(ctx, src, opts)
	if err != nil {
		return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
	}
	return p, nil
}

func (tm *TypeManager) createNew(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	hw, comps, err := ReadHardware(ctx, src)
	if err != nil {
		return nil, err
	}
	for _, d := range hw.Disks {
		// Capacities come from the source too, and the datastore's file
		// access writes a disk whole, zeros past the data included.
		if err := budget.Declared(comps[d.Key], opts, d.CapacityBytes); err != nil {
			return nil, fmt.Errorf("disk %d of %d bytes: %w", d.Key, d.CapacityBytes, err)
		}
	}
	c, _, f, err := tm.s.Finder(ctx)
	if err != nil {
		return nil, err
	}
	ds, err := tm.s.RestoreDatastore(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := f.ResourcePoolOrDefault(ctx, tm.s.Config.ResourcePool)
	if err != nil {
		return nil, fmt.Errorf("resource pool for restores (set \"resourcePool\" in vm.pe.json): %w", err)
	}
	folder, err := f.FolderOrDefault(ctx, tm.s.Config.Folder)
	if err != nil {
		return nil, fmt.Errorf("folder for restores (set \"folder\" in vm.pe.json): %w", err)
	}
	name, err := freeName(ctx, f, hw.Name)
	if err != nil {
		return nil, err
	}
	spec, err := tm.configSpec(ctx, f, hw, name, ds)
	if err != nil {
		return nil, err
	}
	task, err := folder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return nil, fmt.Errorf("create VM %q: %w", name, err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("create VM %q: %w", name, err)
	}
	vm := object.NewVirtualMachine(c.Client, res.Result.(types.ManagedObjectReference))
	p, err := tm.fillDisks(ctx, vm, hw, comps, opts)
	if err != nil {
		// A VM with disks half restored is worse than none.
		dctx := context.WithoutCancel(ctx)
		if t, derr := vm.Destroy(dctx); derr == nil {
			if derr = t.Wait(dctx); derr != nil {
				tm.s.Log.Warn("destroying the VM of a failed restore", "vm", name, "err", derr)
			}
		}
		return nil, fmt.Errorf("VM %q: %w", name, err)
	}
	return p, nil
}

// ReadHardware reads a VM snapshot's (or backup's) hardware and its
// disks' components by disk key.
func ReadHardware(ctx context.Context, src pe.ProtectedEntity) (Hardware, map[int32]pe.ProtectedEntity, error) {
	var hw Hardware
	md, err := src.Metadata(ctx)
	if err != nil {
		return hw, nil, fmt.Errorf("%w: metadata of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	defer md.Close()
	dec := json.NewDecoder(io.LimitReader(md, maxHardwareJSON))
	if err := dec.Decode(&hw); err != nil || hw.Name == "" {
		return hw, nil, fmt.Errorf("%w: metadata of %s is not a VM's hardware: %v", pe.ErrInvalidSource, src.ID(), err)
	}
	list, err := src.Components(ctx)
	if err != nil {
		return hw, nil, fmt.Errorf("%w: components of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	comps := map[int32]pe.ProtectedEntity{}
	for _, comp := range list {
		_, key, ok := strings.Cut(comp.ID().Name(), diskInfix)
		k, err := strconv.ParseInt(key, 10, 32)
		if !ok || err != nil {
			return hw, nil, fmt.Errorf("%w: component %s of %s is not a VM disk", pe.ErrInvalidSource, comp.ID(), src.ID())
		}
		comps[int32(k)] = comp
	}
	for _, d := range hw.Disks {
		if comps[d.Key] == nil {
			return hw, nil, fmt.Errorf("%w: %s has no component for disk %d", pe.ErrInvalidSource, src.ID(), d.Key)
		}
	}
	return hw, comps, nil
}

// freeName is name, or name with a restore suffix if a VM has it (and a
// number after that when the suffix is taken too, as for two restores
// within a second).
func freeName(ctx context.Context, f *find.Finder, name string) (string, error) {
	suffixed := name + "-restored-" + time.Now().UTC().Format("20060102-150405")
	candidate := name
	for n := 1; n <= maxNameTries; n++ {
		_, err := f.VirtualMachine(ctx, candidate)
		var nf *find.NotFoundError
		switch {
		case errors.As(err, &nf):
			return candidate, nil
		case err != nil && !strings.Contains(err.Error(), "multiple"):
			return "", fmt.Errorf("look up VM %q: %w", candidate, err)
		}
		candidate = suffixed
		if n > 1 {
			candidate = fmt.Sprintf("%s-%d", suffixed, n)
		}
	}
	return "", fmt.Errorf("no free VM name like %q after %d tries", suffixed, maxNameTries)
}

// maxNameTries bounds freeName's look-ups.
const maxNameTries = 100

// configSpec builds the new VM's configuration from hw. New devices get
// negative keys; disks are created thin or thick on ds as hw says.
func (tm *TypeManager) configSpec(ctx context.Context, f *find.Finder, hw Hardware, name string, ds *object.Datastore) (types.VirtualMachineConfigSpec, error) {
	spec := types.VirtualMachineConfigSpec{
		Name: name, GuestId: hw.GuestID, Version: hw.Version, Firmware: hw.Firmware,
		NumCPUs: hw.NumCPUs, MemoryMB: int64(hw.MemoryMB), Annotation: hw.Annotation,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + ds.Name() + "]"},
	}
	if hw.CoresPerSocket > 0 {
		spec.NumCoresPerSocket = &hw.CoresPerSocket
	}
	key := int32(-1)
	next := func() int32 { key--; return key }
	add := func(d types.BaseVirtualDevice, op types.VirtualDeviceConfigSpecFileOperation) {
		spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
			Operation: types.VirtualDeviceConfigSpecOperationAdd, FileOperation: op, Device: d,
		})
	}
	ctlKeys := map[int32]int32{} // hw key → new key
	for _, ctl := range hw.Controllers {
		mk := controllerTypes[ctl.Type]
		if mk == nil {
			return spec, fmt.Errorf("%w: disk controller type %q", pe.ErrInvalidSource, ctl.Type)
		}
		if ctl.Type == "ide" {
			// Every VM has its two IDE controllers, keys 200 and 201.
			ctlKeys[ctl.Key] = 200 + ctl.BusNumber
			continue
		}
		d := mk()
		vc := d.(types.BaseVirtualController).GetVirtualController()
		vc.Key, vc.BusNumber = next(), ctl.BusNumber
		if sc, ok := d.(types.BaseVirtualSCSIController); ok {
			sc.GetVirtualSCSIController().SharedBus = types.VirtualSCSISharing(ctl.Sharing)
			if ctl.Sharing == "" {
				sc.GetVirtualSCSIController().SharedBus = types.VirtualSCSISharingNoSharing
			}
		}
		ctlKeys[ctl.Key] = vc.Key
		add(d, "")
	}
	dsRef := ds.Reference()
	for _, disk := range hw.Disks {
		ck, ok := ctlKeys[disk.ControllerKey]
		if !ok {
			return spec, fmt.Errorf("%w: disk %d is on controller %d, which the hardware does not list", pe.ErrInvalidSource, disk.Key, disk.ControllerKey)
		}
		unit := disk.UnitNumber
		add(&types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key: next(), ControllerKey: ck, UnitNumber: &unit,
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: "[" + ds.Name() + "]", Datastore: &dsRef},
					DiskMode:                     string(types.VirtualDiskModePersistent),
					ThinProvisioned:              types.NewBool(disk.Thin),
				},
			},
			CapacityInBytes: disk.CapacityBytes,
			CapacityInKB:    (disk.CapacityBytes + 1023) / 1024,
		}, types.VirtualDeviceConfigSpecFileOperationCreate)
	}
	for _, nic := range hw.NICs {
		mk := nicTypes[nic.Type]
		if mk == nil {
			return spec, fmt.Errorf("%w: network adapter type %q", pe.ErrInvalidSource, nic.Type)
		}
		net, err := f.Network(ctx, nic.Network)
		if err != nil {
			// The VM is still worth having; its adapter can be connected later.
			tm.s.Log.Warn("restore: network not found; adapter left out", "vm", name, "network", nic.Network, "err", err)
			continue
		}
		backing, err := net.EthernetCardBackingInfo(ctx)
		if err != nil {
			return spec, fmt.Errorf("network %q: %w", nic.Network, err)
		}
		d := mk()
		card := d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.Key, card.Backing = next(), backing
		if nic.AddressType == string(types.VirtualEthernetCardMacTypeManual) {
			card.AddressType, card.MacAddress = nic.AddressType, nic.MAC
		}
		add(d, "")
	}
	return spec, nil
}

// fillDisks writes each of hw's disks from its component into the disk
// the new VM got at the same controller position, each within the budget
// of its component (the expansion bound of untrusted input; a
// datastore's free space is not ours to see).
func (tm *TypeManager) fillDisks(ctx context.Context, vm *object.VirtualMachine, hw Hardware, comps map[int32]pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	progress := opts.Progress
	var mvm mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config"}, &mvm); err != nil {
		return nil, err
	}
	devices := object.VirtualDeviceList(mvm.Config.Hardware.Device)
	oldCtl := map[int32]Controller{}
	for _, ctl := range hw.Controllers {
		oldCtl[ctl.Key] = ctl
	}
	var total int64
	for _, d := range hw.Disks {
		total += d.CapacityBytes
	}
	if progress != nil {
		progress.Start(total)
		progress = startless{progress}
	}
	for _, d := range hw.Disks {
		ctl := oldCtl[d.ControllerKey]
		target := findDisk(devices, ctl, d.UnitNumber)
		if target == nil {
			return nil, fmt.Errorf("the new VM has no disk at %s bus %d unit %d", ctl.Type, ctl.BusNumber, d.UnitNumber)
		}
		ref, err := diskRefOf(ctx, tm.s, target, vm.Reference().Value, "")
		if err != nil {
			return nil, err
		}
		if err := writeDisk(ctx, tm.s, ref, comps[d.Key], progress, opts); err != nil {
			return nil, fmt.Errorf("disk %d: %w", d.Key, err)
		}
	}
	id, err := pe.NewID(Type, mvm.Config.InstanceUuid)
	if err != nil {
		return nil, err
	}
	return tm.Get(ctx, id)
}

func writeDisk(ctx context.Context, s *vsphere.Session, ref vsphere.DiskRef, src pe.ProtectedEntity, progress pe.Progress, opts pe.CopyOptions) error {
	img, err := src.Data(ctx)
	if err != nil {
		return fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	defer img.Close()
	return s.WriteDisk(ctx, ref, budget.Image(img, budget.NewRemote(src, opts)), true, progress)
}

// findDisk finds the disk at unit on the controller of ctl's type and bus.
func findDisk(devices object.VirtualDeviceList, ctl Controller, unit int32) *types.VirtualDisk {
	for _, dev := range devices {
		bc, ok := dev.(types.BaseVirtualController)
		if !ok || typeName(controllerTypes, dev) != ctl.Type || bc.GetVirtualController().BusNumber != ctl.BusNumber {
			continue
		}
		for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
			vd := d.(*types.VirtualDisk)
			if vd.ControllerKey == bc.GetVirtualController().Key && vd.UnitNumber != nil && *vd.UnitNumber == unit {
				return vd
			}
		}
	}
	return nil
}

// startless passes on Add but not Start: the total of all disks was
// announced once.
type startless struct{ pe.Progress }

func (startless) Start(int64) {}
