package vcsimtest

import (
	"context"
	"io"
	"os"
	"path"
	"reflect"
	"slices"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// vcsim (govmomi v0.56) lacks HostDatastoreSystem.RemoveDatastore, and
// its VirtualMachine.RelocateVM_Task only sets the VM's "datastore"
// property: it moves no file and changes no disk backing. ExtendStorage
// (Start calls it) answers both calls, doing what vSphere does. They run as the simulator
// runs a call made in process (Service.RoundTrip): with a session of
// their own, holding the lock of the object called. (The registry's
// dispatch hook, Registry.Handler, cannot do it: the session's lookup
// that follows it replaces what it returns.)
func (s *Sim) ExtendStorage() {
	s.Answer("RemoveDatastore", func(req any) (any, types.BaseMethodFault) {
		r := req.(*types.RemoveDatastore)
		return s.inSimulator(r.This, func(ctx *simulator.Context, obj mo.Reference) soap.HasFault {
			dss, ok := obj.(*simulator.HostDatastoreSystem)
			if !ok {
				return &methods.RemoveDatastoreBody{Fault_: simulator.Fault("", &types.ManagedObjectNotFound{Obj: r.This})}
			}
			return (&datastoreSystem{dss}).RemoveDatastore(ctx, r)
		})
	})
	s.Answer("RelocateVM_Task", func(req any) (any, types.BaseMethodFault) {
		r := req.(*types.RelocateVM_Task)
		return s.inSimulator(r.This, func(ctx *simulator.Context, obj mo.Reference) soap.HasFault {
			vm, ok := obj.(*simulator.VirtualMachine)
			if !ok {
				return &methods.RelocateVM_TaskBody{Fault_: simulator.Fault("", &types.ManagedObjectNotFound{Obj: r.This})}
			}
			return (&relocatableVM{vm}).RelocateVMTask(ctx, r)
		})
	})
}

// inSimulator runs call on the object this with a simulator context and
// the object's lock, and returns the call's result (its Res) or fault.
func (s *Sim) inSimulator(this types.ManagedObjectReference, call func(*simulator.Context, mo.Reference) soap.HasFault) (any, types.BaseMethodFault) {
	m := s.Model.Map()
	ctx := &simulator.Context{
		Context: context.Background(),
		Map:     m,
		Session: &simulator.Session{UserSession: types.UserSession{Key: "vcsimtest"}, Registry: simulator.NewRegistry(), Map: m},
	}
	obj := m.Get(this)
	if obj == nil {
		return nil, &types.ManagedObjectNotFound{Obj: this}
	}
	var res soap.HasFault
	m.WithLock(ctx, obj, func() { res = call(ctx, obj) })
	if f := res.Fault(); f != nil {
		return nil, f.VimFault().(types.BaseMethodFault)
	}
	// The body's Res, a *types.<Method>Response, has the Returnval if any.
	if rv := reflect.ValueOf(res).Elem().FieldByName("Res").Elem().FieldByName("Returnval"); rv.IsValid() {
		return rv.Interface(), nil
	}
	return nil, nil
}

type datastoreSystem struct{ *simulator.HostDatastoreSystem }

// RemoveDatastore unmounts a datastore from the host as ESXi does: not
// while a VM of the host uses it; the datastore leaves the inventory with
// its last mount.
func (dss *datastoreSystem) RemoveDatastore(ctx *simulator.Context, req *types.RemoveDatastore) soap.HasFault {
	body := &methods.RemoveDatastoreBody{}
	ds, ok := ctx.Map.Get(req.Datastore).(*simulator.Datastore)
	if !ok || !slices.Contains(dss.Datastore, req.Datastore) {
		body.Fault_ = simulator.Fault("datastore not mounted on this host", &types.NotFound{})
		return body
	}
	for _, ref := range ds.Vm {
		if vm, ok := ctx.Map.Get(ref).(*simulator.VirtualMachine); ok && vm.Runtime.Host != nil && *vm.Runtime.Host == dss.Host.Self {
			body.Fault_ = simulator.Fault("datastore in use", &types.ResourceInUse{Type: "Datastore", Name: ds.Name})
			return body
		}
	}
	host := ctx.Map.Get(dss.Host.Self).(*simulator.HostSystem)
	ctx.WithLock(ds, func() {
		ds.Host = slices.DeleteFunc(ds.Host, func(m types.DatastoreHostMount) bool { return m.Key == host.Self })
	})
	ctx.Map.RemoveReference(ctx, host, &host.Datastore, ds.Self)
	dss.Datastore = host.Datastore
	if cr := computeResource(ctx, host); cr != nil && !slices.ContainsFunc(ds.Host, func(m types.DatastoreHostMount) bool {
		return slices.Contains(cr.Host, m.Key)
	}) {
		ctx.Map.RemoveReference(ctx, cr, &cr.Datastore, ds.Self)
	}
	if len(ds.Host) == 0 {
		res := ds.DestroyTask(ctx, &types.Destroy_Task{This: ds.Self}).(*methods.Destroy_TaskBody).Res
		task := ctx.Map.Get(res.Returnval).(*simulator.Task)
		task.Wait()
		if e := task.Info.Error; e != nil {
			body.Fault_ = simulator.Fault(e.LocalizedMessage, e.Fault)
			return body
		}
	}
	body.Res = &types.RemoveDatastoreResponse{}
	return body
}

func computeResource(ctx *simulator.Context, host *simulator.HostSystem) *mo.ComputeResource {
	switch p := ctx.Map.Get(*host.Parent).(type) {
	case *mo.ComputeResource:
		return p
	case *simulator.ClusterComputeResource:
		return &p.ComputeResource
	}
	return nil
}

type relocatableVM struct{ *simulator.VirtualMachine }

// RelocateVMTask moves the VM's storage as vSphere does: its home files
// (the .vmx, .nvram and log) to spec.datastore, into a directory named
// after the VM, and each disk to its locator's datastore, or to
// spec.datastore when it has none, beside them. Host and pool changes
// are left out.
func (vm *relocatableVM) RelocateVMTask(ctx *simulator.Context, req *types.RelocateVM_Task) soap.HasFault {
	task := simulator.CreateTask(vm.VirtualMachine, "relocateVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, vm.relocate(ctx, req.Spec)
	})
	return &methods.RelocateVM_TaskBody{Res: &types.RelocateVM_TaskResponse{Returnval: task.Run(ctx)}}
}

func (vm *relocatableVM) relocate(ctx *simulator.Context, spec types.VirtualMachineRelocateSpec) types.BaseMethodFault {
	dsOf := func(ref types.ManagedObjectReference) *simulator.Datastore {
		ds, _ := ctx.Map.Get(ref).(*simulator.Datastore)
		return ds
	}
	if spec.Datastore != nil {
		target := dsOf(*spec.Datastore)
		if target == nil {
			return &types.InvalidArgument{InvalidProperty: "spec.datastore"}
		}
		home := object.DatastorePath{Datastore: target.Name, Path: vm.Name}
		files := &vm.Config.Files
		oldHome := path.Dir(files.VmPathName)
		for _, name := range []string{path.Base(files.VmPathName), vm.Name + ".nvram", "vmware.log"} {
			if f := moveFile(ctx, oldHome+"/"+name, home.String()+"/"+name, false); f != nil {
				return f
			}
		}
		files.VmPathName = home.String() + "/" + path.Base(files.VmPathName)
		files.LogDirectory, files.SnapshotDirectory, files.SuspendDirectory = home.String(), home.String(), home.String()
		vm.Summary.Config.VmPathName = files.VmPathName
	}
	for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		b, ok := d.GetVirtualDevice().Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		to := spec.Datastore
		for _, l := range spec.Disk {
			if l.DiskId == d.GetVirtualDevice().Key {
				to = &l.Datastore
			}
		}
		if to == nil || (b.Datastore != nil && *b.Datastore == *to) {
			continue
		}
		target := dsOf(*to)
		if target == nil {
			return &types.InvalidArgument{InvalidProperty: "spec.disk.datastore"}
		}
		var p object.DatastorePath
		p.FromString(b.FileName)
		dst := object.DatastorePath{Datastore: target.Name, Path: path.Join(vm.Name, path.Base(p.Path))}
		if f := moveFile(ctx, b.FileName, dst.String(), true); f != nil {
			return f
		}
		flat := p.Path[:len(p.Path)-len(".vmdk")] + "-flat.vmdk"
		dstFlat := object.DatastorePath{Datastore: target.Name, Path: path.Join(vm.Name, path.Base(flat))}
		srcFlat := object.DatastorePath{Datastore: p.Datastore, Path: flat}
		if f := moveFile(ctx, srcFlat.String(), dstFlat.String(), false); f != nil {
			return f
		}
		b.FileName, b.Datastore = dst.String(), to
	}
	vm.useDatastores(ctx)
	return nil
}

// useDatastores sets the VM's "datastore" property, and the datastores'
// "vm", to the datastores its files are on.
func (vm *relocatableVM) useDatastores(ctx *simulator.Context) {
	dc := ctx.Map.Get(datacenterOf(ctx, vm.Self)).(*simulator.Datacenter)
	var used []types.ManagedObjectReference
	add := func(name string) {
		var p object.DatastorePath
		if !p.FromString(name) {
			return
		}
		if ds := ctx.Map.FindByName(p.Datastore, dc.Datastore); ds != nil && !slices.Contains(used, ds.Reference()) {
			used = append(used, ds.Reference())
		}
	}
	add(vm.Config.Files.VmPathName)
	for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		if b, ok := d.GetVirtualDevice().Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			add(b.GetVirtualDeviceFileBackingInfo().FileName)
		}
	}
	for _, ref := range vm.Datastore {
		if !slices.Contains(used, ref) {
			ds := ctx.Map.Get(ref).(*simulator.Datastore)
			ctx.Map.RemoveReference(ctx, ds, &ds.Vm, vm.Self)
		}
	}
	for _, ref := range used {
		ds := ctx.Map.Get(ref).(*simulator.Datastore)
		ctx.Map.AddReference(ctx, ds, &ds.Vm, vm.Self)
	}
	ctx.Update(vm.VirtualMachine, []types.PropertyChange{{Name: "datastore", Val: used}})
}

func datacenterOf(ctx *simulator.Context, ref types.ManagedObjectReference) types.ManagedObjectReference {
	for {
		e, ok := ctx.Map.Get(ref).(mo.Entity)
		if !ok || e.Entity().Parent == nil {
			return ref
		}
		if ref.Type == "Datacenter" {
			return ref
		}
		ref = *e.Entity().Parent
	}
}

// moveFile moves a file between datastore paths, making the target
// directory; a missing source is a fault only when required.
func moveFile(ctx *simulator.Context, from, to string, required bool) types.BaseMethodFault {
	src, dst := localPath(ctx, from), localPath(ctx, to)
	if src == "" || dst == "" {
		return &types.InvalidDatastorePath{DatastorePath: from + " or " + to}
	}
	if _, err := os.Stat(src); os.IsNotExist(err) && !required {
		return nil
	}
	if err := os.MkdirAll(path.Dir(dst), 0o700); err != nil {
		return &types.CannotCreateFile{FileFault: types.FileFault{File: to}}
	}
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := copyFile(src, dst); err != nil {
		return &types.CannotAccessFile{FileFault: types.FileFault{File: from}}
	}
	if err := os.Remove(src); err != nil {
		return &types.CannotDeleteFile{FileFault: types.FileFault{File: from}}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// localPath maps a datastore path to the simulator's file, "" if the
// datastore is unknown.
func localPath(ctx *simulator.Context, dsPath string) string {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return ""
	}
	for _, e := range ctx.Map.All("Datastore") {
		if ds := e.(*simulator.Datastore); ds.Name == p.Datastore {
			return path.Join(ds.Summary.Url, p.Path)
		}
	}
	return ""
}
