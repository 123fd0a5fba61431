package vm

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// Instant recovery on vSphere, as Veeam's vPower NFS does it: the
// appliance serves a backup's disks (copy-on-write overlays) over NFSv3,
// a host mounts that export as a datastore, and a VM made from the
// backup's Hardware runs from the disk files there at once. Migrate moves
// it onto real storage while it runs; stop throws it away.
//
// The export's root holds one directory per disk, <disk>/<disk>.vmdk (a
// descriptor) and <disk>/<disk>-flat.vmdk, and clients may make files
// only inside those directories: the VM's own files (.vmx, .nvram, logs,
// swap) go into a directory of its own in its first disk's directory.
//
// vSphere keeps the state: the appliance needs only the datastore's name
// to find its instant VMs again (FindInstant).

// NASDatastore is where the appliance serves a VM's instant disks over
// NFSv3.
type NASDatastore struct {
	Name       string `json:"name"`       // the datastore's name, e.g. astrolabe-instant-<short id>
	RemoteHost string `json:"remoteHost"` // the appliance's address as the ESXi hosts reach it
	RemotePath string `json:"remotePath"` // the exported directory, "/" for all disks
}

// InstantVM is a VM running from an appliance's NFS datastore.
type InstantVM struct {
	VM        types.ManagedObjectReference `json:"vm"`
	Name      string                       `json:"name"`
	UUID      string                       `json:"uuid"` // instance uuid: the VM is the PE vm:<UUID>
	Host      types.ManagedObjectReference `json:"host"`
	Datastore NASDatastore                 `json:"datastore"`
}

// nfsType is the NAS datastore type of NFS version 3.
const nfsType = string(types.HostFileSystemVolumeFileSystemTypeNFS)

// undoTimeout bounds each step that undoes a failed start.
const undoTimeout = time.Minute

var (
	// vSphere limits datastore names to 42 characters.
	validDatastoreName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,42}$`)
	// Disk names are nfsexport's export names.
	validDiskName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	// fileUnsafe is what a VM name may hold that its file names must not.
	fileUnsafe = regexp.MustCompile(`[^A-Za-z0-9._-]`)
)

// StartInstant mounts nas as a datastore on a host of the configured
// resource pool (reusing a mount that is there), creates a VM with hw's
// hardware whose files live on that datastore and whose disks are the
// existing disk files "[<nas.Name>] <name>/<name>.vmdk", name being
// diskNames[d.Key], and powers it on. The VM is named hw.Name, or that
// with a restore suffix when a VM has the name. A start that fails
// half-way undoes what it did: the VM it made is unregistered, its
// directory deleted and the datastore it mounted unmounted.
func (tm *TypeManager) StartInstant(ctx context.Context, hw Hardware, nas NASDatastore, diskNames map[int32]string) (InstantVM, error) {
	v, err := tm.startInstant(ctx, hw, nas, diskNames)
	if err != nil {
		return InstantVM{}, fmt.Errorf("instant VM %q from datastore %s: %w", hw.Name, nas.Name, err)
	}
	return v, nil
}

func (tm *TypeManager) startInstant(ctx context.Context, hw Hardware, nas NASDatastore, diskNames map[int32]string) (_ InstantVM, err error) {
	if err := checkInstant(hw, nas, diskNames); err != nil {
		return InstantVM{}, err
	}
	c, dc, f, err := tm.s.Finder(ctx)
	if err != nil {
		return InstantVM{}, err
	}
	pool, err := f.ResourcePoolOrDefault(ctx, tm.s.Config.ResourcePool)
	if err != nil {
		return InstantVM{}, fmt.Errorf("resource pool for instant VMs (set \"resourcePool\" in vm.pe.json): %w", err)
	}
	folder, err := f.FolderOrDefault(ctx, tm.s.Config.Folder)
	if err != nil {
		return InstantVM{}, fmt.Errorf("folder for instant VMs (set \"folder\" in vm.pe.json): %w", err)
	}
	host, ds, mounted, err := tm.mountNAS(ctx, f, pool, nas)
	if err != nil {
		return InstantVM{}, err
	}
	if mounted {
		defer func() {
			if err != nil {
				uctx, cancel := undoContext(ctx)
				defer cancel()
				if uerr := unmountFrom(uctx, host, ds); uerr != nil {
					tm.s.Log.Warn("instant VM: unmounting the datastore of a failed start", "datastore", nas.Name, "err", uerr)
				}
			}
		}()
	}
	name, err := freeName(ctx, f, hw.Name)
	if err != nil {
		return InstantVM{}, err
	}
	spec, err := tm.configSpec(ctx, f, hw, name, ds)
	if err != nil {
		return InstantVM{}, err
	}
	home := vmHome(nas.Name, diskNames[hw.Disks[0].Key], name)
	attachDisks(&spec, hw, nas.Name, ds.Reference(), diskNames, home)
	// A directory there already is left by an earlier start that failed;
	// CreateVM says if a file in it is in the way. It is deleted on
	// failure only once a VM was made there.
	homeMade := true
	if err := object.NewFileManager(c.Client).MakeDirectory(ctx, home, dc, true); err != nil {
		if !vsphere.IsFault[*types.FileAlreadyExists](err) {
			return InstantVM{}, fmt.Errorf("make the VM's directory %s: %w", home, err)
		}
		tm.s.Log.Info("instant VM: directory exists", "dir", home)
		homeMade = false
	}
	defer func() {
		if err != nil && homeMade {
			uctx, cancel := undoContext(ctx)
			defer cancel()
			tm.deleteHome(uctx, dc, home)
		}
	}()
	task, err := folder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return InstantVM{}, fmt.Errorf("create VM %q: %w", name, err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return InstantVM{}, fmt.Errorf("create VM %q: %w", name, err)
	}
	vm := object.NewVirtualMachine(c.Client, res.Result.(types.ManagedObjectReference))
	homeMade = true
	defer func() {
		if err != nil {
			uctx, cancel := undoContext(ctx)
			defer cancel()
			if uerr := discard(uctx, vm); uerr != nil {
				tm.s.Log.Warn("instant VM: unregistering the VM of a failed start", "vm", name, "err", uerr)
			}
		}
	}()
	if task, err = vm.PowerOn(ctx); err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return InstantVM{}, fmt.Errorf("power on VM %q: %w", name, err)
	}
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config.instanceUuid"}, &m); err != nil {
		return InstantVM{}, fmt.Errorf("VM %q: %w", name, err)
	}
	tm.s.Log.Info("instant VM started", "vm", name, "uuid", m.Config.InstanceUuid, "datastore", nas.Name, "host", host.Name())
	return InstantVM{VM: vm.Reference(), Name: name, UUID: m.Config.InstanceUuid, Host: host.Reference(), Datastore: nas}, nil
}

// checkInstant refuses what cannot become an instant VM before anything
// is done.
func checkInstant(hw Hardware, nas NASDatastore, diskNames map[int32]string) error {
	switch {
	case !validDatastoreName.MatchString(nas.Name):
		return fmt.Errorf("datastore name %q: want 1 to 42 of A-Z a-z 0-9 . _ -", nas.Name)
	case nas.RemoteHost == "" || !strings.HasPrefix(nas.RemotePath, "/"):
		return fmt.Errorf("NFS export %q:%q: want a host and an absolute path", nas.RemoteHost, nas.RemotePath)
	case hw.Name == "":
		return errors.New("the hardware has no VM name")
	case len(hw.Disks) == 0:
		return errors.New("the hardware has no disk to boot from")
	}
	seen := map[string]bool{}
	for _, d := range hw.Disks {
		n, ok := diskNames[d.Key]
		switch {
		case !ok:
			return fmt.Errorf("no export name for disk %d", d.Key)
		case !validDiskName.MatchString(n) || n == "." || n == "..":
			return fmt.Errorf("export name %q of disk %d: want 1 to 64 of A-Z a-z 0-9 . _ -", n, d.Key)
		case seen[n]:
			return fmt.Errorf("export name %q is given to two disks", n)
		}
		seen[n] = true
	}
	return nil
}

// diskPath is the datastore path of the descriptor of export name.
func diskPath(datastore, name string) string {
	return fmt.Sprintf("[%s] %s/%s.vmdk", datastore, name, name)
}

// vmHome is the directory of a VM's own files (.vmx, .nvram, logs,
// swap): a directory of its own in its first disk's export directory,
// the export's root taking no directories of the client's.
func vmHome(datastore, firstDisk, vmName string) string {
	return fmt.Sprintf("[%s] %s/%s", datastore, firstDisk, fileUnsafe.ReplaceAllString(vmName, "_"))
}

// homeOf is the VM home directory of vmx if it is one that vmHome makes
// on datastore, else "".
func homeOf(vmx, datastore string) string {
	var p object.DatastorePath
	if !p.FromString(vmx) || p.Datastore != datastore || strings.Count(p.Path, "/") != 2 {
		return ""
	}
	return p.String()[:len(p.String())-len(path.Base(p.Path))-1]
}

// attachDisks turns spec, made by configSpec to create new disks, into
// one that attaches the exported disk files, with the VM's files in home.
func attachDisks(spec *types.VirtualMachineConfigSpec, hw Hardware, datastore string, dsRef types.ManagedObjectReference, diskNames map[int32]string, home string) {
	spec.Files = &types.VirtualMachineFileInfo{
		VmPathName: home + "/" + fileUnsafe.ReplaceAllString(spec.Name, "_") + ".vmx",
	}
	i := 0 // configSpec adds hw.Disks' disks in order
	for _, dc := range spec.DeviceChange {
		c := dc.GetVirtualDeviceConfigSpec()
		disk, ok := c.Device.(*types.VirtualDisk)
		if !ok {
			continue
		}
		c.FileOperation = "" // the file exists
		disk.Backing = &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
				FileName: diskPath(datastore, diskNames[hw.Disks[i].Key]), Datastore: &dsRef,
			},
			DiskMode: string(types.VirtualDiskModePersistent),
		}
		i++
	}
}

// mountNAS finds a host of pool's compute resource with nas mounted, or
// mounts it on the first usable host there; mounted tells whether it did.
func (tm *TypeManager) mountNAS(ctx context.Context, f *find.Finder, pool *object.ResourcePool, nas NASDatastore) (host *object.HostSystem, ds *object.Datastore, mounted bool, err error) {
	hosts, err := poolHosts(ctx, pool)
	if err != nil {
		return nil, nil, false, err
	}
	ds, mds, err := findNAS(ctx, f, nas)
	if err != nil {
		return nil, nil, false, err
	}
	if ds != nil {
		on := slices.DeleteFunc(slices.Clone(hosts), func(h *object.HostSystem) bool { return !mountedOn(mds, h.Reference()) })
		if h, err := usableHost(ctx, on); err == nil {
			tm.s.Log.Info("instant VM: datastore mounted already", "datastore", nas.Name, "host", h.Name())
			return h, ds, false, nil
		}
	}
	host, err = usableHost(ctx, hosts)
	if err != nil {
		return nil, nil, false, err
	}
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err != nil {
		return nil, nil, false, fmt.Errorf("host %s: %w", host.Name(), err)
	}
	ds, err = dss.CreateNasDatastore(ctx, types.HostNasVolumeSpec{
		RemoteHost: nas.RemoteHost, RemotePath: nas.RemotePath, LocalPath: nas.Name,
		AccessMode: string(types.HostMountModeReadWrite), Type: nfsType,
	})
	if err != nil {
		// Another start may have mounted it meanwhile.
		if again, m, ferr := findNAS(ctx, f, nas); ferr == nil && again != nil && mountedOn(m, host.Reference()) {
			return host, again, false, nil
		}
		return nil, nil, false, fmt.Errorf("mount NFS %s:%s as datastore %s on host %s: %w", nas.RemoteHost, nas.RemotePath, nas.Name, host.Name(), err)
	}
	// vCenter names a datastore it cannot call nas.Name otherwise.
	found, _, err := findNAS(ctx, f, nas)
	if err != nil || found == nil || found.Reference() != ds.Reference() {
		uctx, cancel := undoContext(ctx)
		defer cancel()
		if uerr := unmountFrom(uctx, host, ds); uerr != nil {
			tm.s.Log.Warn("instant VM: unmounting a misnamed datastore", "datastore", ds.Reference().Value, "err", uerr)
		}
		return nil, nil, false, fmt.Errorf("the datastore mounted on host %s is not found as %s (%v)", host.Name(), nas.Name, err)
	}
	ds = found
	tm.s.Log.Info("instant VM: datastore mounted", "datastore", nas.Name, "host", host.Name(), "remote", nas.RemoteHost+":"+nas.RemotePath)
	return host, ds, true, nil
}

// poolHosts lists the hosts of the compute resource (host or cluster)
// that owns pool.
func poolHosts(ctx context.Context, pool *object.ResourcePool) ([]*object.HostSystem, error) {
	owner, err := pool.Owner(ctx)
	if err != nil {
		return nil, fmt.Errorf("resource pool %s: owner: %w", pool.InventoryPath, err)
	}
	hosts, err := object.NewComputeResource(pool.Client(), owner.Reference()).Hosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("hosts of resource pool %s: %w", pool.InventoryPath, err)
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("resource pool %s has no host", pool.InventoryPath)
	}
	return hosts, nil
}

// usableHost is the first of hosts that is connected and not in
// maintenance mode.
func usableHost(ctx context.Context, hosts []*object.HostSystem) (*object.HostSystem, error) {
	for _, h := range hosts {
		var m mo.HostSystem
		if err := h.Properties(ctx, h.Reference(), []string{"runtime"}, &m); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name(), err)
		}
		if m.Runtime.ConnectionState == types.HostSystemConnectionStateConnected && !m.Runtime.InMaintenanceMode {
			return h, nil
		}
	}
	return nil, errors.New("no host of the resource pool is connected and out of maintenance mode")
}

// findNAS finds the datastore nas names: nil if there is none, an error
// if the name is taken by a datastore that is not that NFS export.
func findNAS(ctx context.Context, f *find.Finder, nas NASDatastore) (*object.Datastore, mo.Datastore, error) {
	var m mo.Datastore
	ds, err := f.Datastore(ctx, nas.Name)
	var nf *find.NotFoundError
	if errors.As(err, &nf) {
		return nil, m, nil
	}
	if err != nil {
		return nil, m, fmt.Errorf("look up datastore %s: %w", nas.Name, err)
	}
	if err := ds.Properties(ctx, ds.Reference(), []string{"info", "host", "vm"}, &m); err != nil {
		return nil, m, fmt.Errorf("datastore %s: %w", nas.Name, err)
	}
	info, ok := m.Info.(*types.NasDatastoreInfo)
	if !ok || info.Nas == nil || !strings.EqualFold(info.Nas.Type, nfsType) ||
		info.Nas.RemoteHost != nas.RemoteHost || info.Nas.RemotePath != nas.RemotePath {
		return nil, m, fmt.Errorf("datastore %s exists and is not the NFS export %s:%s", nas.Name, nas.RemoteHost, nas.RemotePath)
	}
	return ds, m, nil
}

func mountedOn(m mo.Datastore, host types.ManagedObjectReference) bool {
	return slices.ContainsFunc(m.Host, func(hm types.DatastoreHostMount) bool {
		return hm.Key == host && (hm.MountInfo.Mounted == nil || *hm.MountInfo.Mounted)
	})
}

// unmountFrom removes datastore ds from host.
func unmountFrom(ctx context.Context, host *object.HostSystem, ds *object.Datastore) error {
	dss, err := host.ConfigManager().DatastoreSystem(ctx)
	if err == nil {
		err = dss.Remove(ctx, ds)
	}
	if err != nil {
		return fmt.Errorf("unmount datastore %s from host %s: %w", ds.Name(), host.Reference().Value, err)
	}
	return nil
}

// undoContext is for undoing a failed start: it goes on when ctx was
// cancelled, and is bounded by itself.
func undoContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
}

// discard powers vm off and unregisters it. It is not destroyed: its
// disks are the appliance's exports, which Destroy_Task would ask the
// NFS server to delete (it refuses); they stay for the appliance to
// discard. The caller deletes the VM's home.
func discard(ctx context.Context, vm *object.VirtualMachine) error {
	state, err := vm.PowerState(ctx)
	if err != nil {
		return fmt.Errorf("power state: %w", err)
	}
	if state != types.VirtualMachinePowerStatePoweredOff {
		task, err := vm.PowerOff(ctx)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil && !vsphere.IsFault[*types.InvalidPowerState](err) {
			return fmt.Errorf("power off: %w", err)
		}
	}
	if err := vm.Unregister(ctx); err != nil {
		return fmt.Errorf("unregister: %w", err)
	}
	return nil
}

// deleteHome deletes an instant VM's home directory, so that a later
// start of a VM of that name finds none of its files. A failure is only
// logged: the appliance deletes the files with the export anyway.
func (tm *TypeManager) deleteHome(ctx context.Context, dc *object.Datacenter, home string) {
	fm := object.NewFileManager(dc.Client())
	task, err := fm.DeleteDatastoreFile(ctx, home, dc)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil && !vsphere.IsFault[*types.FileNotFound](err) {
		tm.s.Log.Warn("instant VM: deleting the VM's directory", "dir", home, "err", err)
	}
}

// MigrateInstant moves v's disks and files onto a real datastore (the
// configured restore datastore when datastore is "") with
// RelocateVM_Task while it runs; afterwards nothing of v is on the NFS
// datastore, which StopInstant then unmounts.
func (tm *TypeManager) MigrateInstant(ctx context.Context, v InstantVM, datastore string) error {
	if err := tm.migrateInstant(ctx, v, datastore); err != nil {
		return fmt.Errorf("migrate instant VM %q: %w", v.Name, err)
	}
	return nil
}

func (tm *TypeManager) migrateInstant(ctx context.Context, v InstantVM, datastore string) error {
	_, _, f, err := tm.s.Finder(ctx)
	if err != nil {
		return err
	}
	var target *object.Datastore
	if datastore == "" {
		target, err = tm.s.RestoreDatastore(ctx)
	} else if target, err = f.Datastore(ctx, datastore); err != nil {
		err = fmt.Errorf("datastore %q: %w", datastore, err)
	}
	if err != nil {
		return err
	}
	if target.Name() == v.Datastore.Name {
		return fmt.Errorf("datastore %s is the instant VM's NFS datastore", target.Name())
	}
	vm, m, err := tm.instantVM(ctx, v)
	if err != nil {
		return err
	}
	ref := target.Reference()
	spec := types.VirtualMachineRelocateSpec{Datastore: &ref}
	for _, d := range object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		spec.Disk = append(spec.Disk, types.VirtualMachineRelocateSpecDiskLocator{DiskId: d.GetVirtualDevice().Key, Datastore: ref})
	}
	tm.s.Log.Info("instant VM: migrating", "vm", v.Name, "to", target.Name())
	task, err := vm.Relocate(ctx, spec, types.VirtualMachineMovePriorityDefaultPriority)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("relocate to datastore %s: %w", target.Name(), err)
	}
	if _, m, err = tm.instantVM(ctx, v); err != nil {
		return err
	}
	if left, _ := filesOn(m.Config, v.Datastore.Name); len(left) > 0 {
		return fmt.Errorf("relocated to datastore %s, but %s still on %s", target.Name(), strings.Join(left, ", "), v.Datastore.Name)
	}
	tm.s.Log.Info("instant VM migrated", "vm", v.Name, "to", target.Name())
	return nil
}

// instantVM finds v's VM and reads it; pe.ErrNotFound when it is gone or
// its reference now names another VM.
func (tm *TypeManager) instantVM(ctx context.Context, v InstantVM) (*object.VirtualMachine, mo.VirtualMachine, error) {
	var m mo.VirtualMachine
	c, err := tm.s.Client(ctx)
	if err != nil {
		return nil, m, err
	}
	vm := object.NewVirtualMachine(c.Client, v.VM)
	err = vm.Properties(ctx, v.VM, []string{"name", "config", "runtime.powerState"}, &m)
	switch {
	case vsphere.IsFault[*types.ManagedObjectNotFound](err):
		return nil, m, fmt.Errorf("VM %s (%s): %w", v.VM.Value, v.UUID, pe.ErrNotFound)
	case err != nil:
		return nil, m, fmt.Errorf("VM %s: %w", v.VM.Value, err)
	case m.Config == nil || m.Config.InstanceUuid != v.UUID:
		return nil, m, fmt.Errorf("VM %s is no longer the instant VM %s: %w", v.VM.Value, v.UUID, pe.ErrNotFound)
	}
	return vm, m, nil
}

// filesOn sorts the files of a VM configuration, its .vmx and its disks
// with their parents, into those on datastore and those elsewhere.
func filesOn(c *types.VirtualMachineConfigInfo, datastore string) (on, off []string) {
	prefix := "[" + datastore + "]"
	sort := func(name string) {
		if strings.HasPrefix(name, prefix) {
			on = append(on, name)
		} else {
			off = append(off, name)
		}
	}
	sort(c.Files.VmPathName)
	for _, d := range object.VirtualDeviceList(c.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		for b := d.GetVirtualDevice().Backing; b != nil; b = parentBacking(b) {
			fb, ok := b.(types.BaseVirtualDeviceFileBackingInfo)
			if !ok {
				break
			}
			sort(fb.GetVirtualDeviceFileBackingInfo().FileName)
		}
	}
	return on, off
}

// parentBacking is the backing of a delta disk's parent, or nil.
func parentBacking(b types.BaseVirtualDeviceBackingInfo) types.BaseVirtualDeviceBackingInfo {
	if fb, ok := b.(*types.VirtualDiskFlatVer2BackingInfo); ok && fb.Parent != nil {
		return fb.Parent
	}
	if sb, ok := b.(*types.VirtualDiskSeSparseBackingInfo); ok && sb.Parent != nil {
		return sb.Parent
	}
	if sb, ok := b.(*types.VirtualDiskSparseVer2BackingInfo); ok && sb.Parent != nil {
		return sb.Parent
	}
	return nil
}

// StopInstant powers v off and unregisters it if it still lives on its
// NFS datastore (not after a migrate: then it keeps running), and then
// unmounts the NFS datastore from every host when no VM uses it any more.
// A VM that is gone already is no error.
func (tm *TypeManager) StopInstant(ctx context.Context, v InstantVM) error {
	if err := tm.stopInstant(ctx, v); err != nil {
		return fmt.Errorf("stop instant VM %q: %w", v.Name, err)
	}
	return nil
}

func (tm *TypeManager) stopInstant(ctx context.Context, v InstantVM) error {
	vm, m, err := tm.instantVM(ctx, v)
	switch {
	case errors.Is(err, pe.ErrNotFound):
		tm.s.Log.Info("instant VM: gone already", "vm", v.Name, "uuid", v.UUID)
	case err != nil:
		return err
	default:
		on, off := filesOn(m.Config, v.Datastore.Name)
		switch {
		case len(on) == 0:
			tm.s.Log.Info("instant VM: migrated; it stays", "vm", v.Name)
		case len(off) > 0:
			// Unregistering would orphan the part on real storage.
			return fmt.Errorf("VM is half migrated (%s still on %s): migrate it again", strings.Join(on, ", "), v.Datastore.Name)
		default:
			_, dc, _, err := tm.s.Finder(ctx)
			if err != nil {
				return err
			}
			if err := discard(ctx, vm); err != nil {
				return fmt.Errorf("VM %s: %w", v.VM.Value, err)
			}
			if home := homeOf(m.Config.Files.VmPathName, v.Datastore.Name); home != "" {
				tm.deleteHome(ctx, dc, home)
			}
			tm.s.Log.Info("instant VM: stopped and unregistered", "vm", v.Name)
		}
	}
	return tm.unmountNAS(ctx, v.Datastore)
}

// unmountNAS removes nas from every host that mounts it, unless a VM
// still uses it.
func (tm *TypeManager) unmountNAS(ctx context.Context, nas NASDatastore) error {
	c, _, f, err := tm.s.Finder(ctx)
	if err != nil {
		return err
	}
	ds, m, err := findNAS(ctx, f, nas)
	if err != nil || ds == nil {
		return err
	}
	if len(m.Vm) > 0 {
		tm.s.Log.Info("instant VM: datastore still used; left mounted", "datastore", nas.Name, "vms", len(m.Vm))
		return nil
	}
	var errs []error
	for _, hm := range m.Host {
		errs = append(errs, unmountFrom(ctx, object.NewHostSystem(c.Client, hm.Key), ds))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	tm.s.Log.Info("instant VM: datastore unmounted", "datastore", nas.Name, "hosts", len(m.Host))
	return nil
}

// FindInstant lists the VMs that use nas, as InstantVMs: what an
// appliance that kept only the datastore's name finds again after a
// restart. No datastore of that name is no VM.
func (tm *TypeManager) FindInstant(ctx context.Context, nas NASDatastore) ([]InstantVM, error) {
	c, _, f, err := tm.s.Finder(ctx)
	if err != nil {
		return nil, err
	}
	ds, m, err := findNAS(ctx, f, nas)
	if err != nil || ds == nil || len(m.Vm) == 0 {
		return nil, err
	}
	var vms []mo.VirtualMachine
	if err := c.PropertyCollector().Retrieve(ctx, m.Vm, []string{"name", "config.instanceUuid", "runtime.host"}, &vms); err != nil {
		return nil, fmt.Errorf("VMs on datastore %s: %w", nas.Name, err)
	}
	var out []InstantVM
	for _, vm := range vms {
		if vm.Config == nil {
			continue // inaccessible
		}
		v := InstantVM{VM: vm.Self, Name: vm.Name, UUID: vm.Config.InstanceUuid, Datastore: nas}
		if vm.Runtime.Host != nil {
			v.Host = *vm.Runtime.Host
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b InstantVM) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
