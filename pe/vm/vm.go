// Package vm makes vSphere virtual machines PEs of type "vm", named
// vm:<instance uuid>. A VM's virtual disks are its component PEs, named
// vm:<instance uuid>/disk-<device key>. A VM snapshot is a vSphere snapshot
// (quiesced on request); the components of a VM snapshot are its disks as
// they were then. The metadata is the VM's hardware as JSON (Hardware),
// enough to create the VM again, which create_new restores do before
// writing the disks.
package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// Type is the PE type name.
const Type = "vm"

// diskInfix joins a VM's uuid and a disk's device key in component names.
const diskInfix = "/disk-"

// Config is pes/vm.pe.json: the same fields as pes/ivd.pe.json.
type Config = vsphere.Config

// TypeManager knows the VMs of one vCenter datacenter.
type TypeManager struct {
	s *vsphere.Session
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the VMs of cfg's vCenter; it
// connects on first use.
func NewTypeManager(cfg Config, log *slog.Logger) (*TypeManager, error) {
	s, err := vsphere.NewSession(Type, cfg, log)
	if err != nil {
		return nil, err
	}
	return &TypeManager{s: s}, nil
}

// Type implements pe.TypeManager.
func (tm *TypeManager) Type() string { return Type }

// vmProps are the properties a VM PE reads.
var vmProps = []string{"name", "config", "snapshot"}

// List implements pe.TypeManager: the datacenter's VMs, templates
// included.
func (tm *TypeManager) List(ctx context.Context) ([]pe.ID, error) {
	c, _, f, err := tm.s.Finder(ctx)
	if err != nil {
		return nil, err
	}
	vms, err := f.VirtualMachineList(ctx, "*")
	if err != nil {
		if _, ok := err.(*find.NotFoundError); ok {
			return nil, nil
		}
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	refs := make([]types.ManagedObjectReference, len(vms))
	for i, v := range vms {
		refs[i] = v.Reference()
	}
	var mvms []mo.VirtualMachine
	if err := c.PropertyCollector().Retrieve(ctx, refs, []string{"config.instanceUuid"}, &mvms); err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	var out []pe.ID
	for _, m := range mvms {
		if m.Config == nil || m.Config.InstanceUuid == "" {
			continue // being created, or inaccessible
		}
		id, err := pe.NewID(Type, m.Config.InstanceUuid)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// Get implements pe.TypeManager for VMs, their disks, and snapshots of
// both.
func (tm *TypeManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	uuid, diskKey, isDisk := strings.Cut(id.Name(), diskInfix)
	v, err := tm.findVM(ctx, uuid)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	v.id = id.Base()
	if isDisk {
		v.id, _ = pe.NewID(Type, uuid)
	}
	if id.HasSnapshot() {
		if v, err = v.atSnapshot(ctx, id.Snapshot()); err != nil {
			return nil, err
		}
	}
	if !isDisk {
		return v, nil
	}
	key, err := strconv.ParseInt(diskKey, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, pe.ErrNotFound)
	}
	for _, d := range v.disks() {
		if int64(d.Key) == key {
			return &disk{vm: v, dev: d}, nil
		}
	}
	return nil, fmt.Errorf("%s: no disk with key %d: %w", id, key, pe.ErrNotFound)
}

// findVM finds a VM by instance uuid and reads its properties.
func (tm *TypeManager) findVM(ctx context.Context, uuid string) (*entity, error) {
	c, dc, _, err := tm.s.Finder(ctx)
	if err != nil {
		return nil, err
	}
	ref, err := object.NewSearchIndex(c.Client).FindByUuid(ctx, dc, uuid, true, types.NewBool(true))
	if err != nil {
		return nil, fmt.Errorf("find VM: %w", err)
	}
	if ref == nil {
		return nil, pe.ErrNotFound
	}
	v := &entity{tm: tm, obj: object.NewVirtualMachine(c.Client, ref.Reference())}
	if err := v.obj.Properties(ctx, v.obj.Reference(), vmProps, &v.mo); err != nil {
		return nil, fmt.Errorf("VM %s: %w", uuid, err)
	}
	if v.mo.Config == nil {
		return nil, fmt.Errorf("VM %s has no configuration (inaccessible?): %w", uuid, pe.ErrNotFound)
	}
	v.config = v.mo.Config
	return v, nil
}

// entity is a VM, or a snapshot of one.
type entity struct {
	tm     *TypeManager
	id     pe.ID
	obj    *object.VirtualMachine
	mo     mo.VirtualMachine
	config *types.VirtualMachineConfigInfo // the VM's, or the snapshot's
	snap   *types.VirtualMachineSnapshotTree
}

// atSnapshot returns the VM as it was in snapshot sid.
func (v *entity) atSnapshot(ctx context.Context, sid string) (*entity, error) {
	t := v.findSnapshot(sid)
	if t == nil {
		return nil, fmt.Errorf("%s: %w", v.id.WithSnapshot(sid), pe.ErrNotFound)
	}
	var ms mo.VirtualMachineSnapshot
	if err := v.obj.Properties(ctx, t.Snapshot, []string{"config"}, &ms); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", v.id.WithSnapshot(sid), err)
	}
	s := *v
	s.id, s.config, s.snap = v.id.WithSnapshot(sid), &ms.Config, t
	return &s, nil
}

// refreshSnapshots reads the VM's snapshot tree again: snapshots come
// and go after Get.
func (v *entity) refreshSnapshots(ctx context.Context) error {
	var m mo.VirtualMachine
	if err := v.obj.Properties(ctx, v.obj.Reference(), []string{"snapshot"}, &m); err != nil {
		return fmt.Errorf("snapshots of %s: %w", v.id.Base(), err)
	}
	v.mo.Snapshot = m.Snapshot
	return nil
}

// snapshotTrees flattens the VM's snapshot tree, oldest first.
func (v *entity) snapshotTrees() []*types.VirtualMachineSnapshotTree {
	if v.mo.Snapshot == nil {
		return nil
	}
	var out []*types.VirtualMachineSnapshotTree
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(l []types.VirtualMachineSnapshotTree) {
		for i := range l {
			out = append(out, &l[i])
			walk(l[i].ChildSnapshotList)
		}
	}
	walk(v.mo.Snapshot.RootSnapshotList)
	slices.SortStableFunc(out, func(a, b *types.VirtualMachineSnapshotTree) int { return a.CreateTime.Compare(b.CreateTime) })
	return out
}

func (v *entity) findSnapshot(sid string) *types.VirtualMachineSnapshotTree {
	for _, t := range v.snapshotTrees() {
		if t.Snapshot.Value == sid {
			return t
		}
	}
	return nil
}

func (v *entity) disks() []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range v.config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok {
			out = append(out, vd)
		}
	}
	return out
}

func (v *entity) ID() pe.ID { return v.id }

func (v *entity) Info(ctx context.Context) (pe.Info, error) {
	info := pe.Info{ID: v.id, Name: v.mo.Name}
	for _, d := range v.disks() {
		info.Size += d.CapacityInBytes
	}
	if v.snap != nil {
		t := v.snap.CreateTime
		info.Created = &t
	}
	return info, nil
}

// Snapshot takes a VM snapshot without memory, quiesced when the params
// say {"vm": {"quiesce": true}}.
func (v *entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if v.snap != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself: %w", v.id, pe.ErrNotSupported)
	}
	quiesce := false
	switch q := params[Type]["quiesce"].(type) {
	case bool:
		quiesce = q
	case string:
		quiesce, _ = strconv.ParseBool(q)
	}
	if err := v.enableCBT(ctx); err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", v.id, err)
	}
	var sid string
	err := v.tm.s.Retry(ctx, "snapshot "+v.id.String(), func() error {
		task, err := v.obj.CreateSnapshot(ctx, "astrolabe "+time.Now().UTC().Format(time.RFC3339), "taken by Astrolabe", false, quiesce)
		if err != nil {
			return err
		}
		res, err := task.WaitForResult(ctx, nil)
		if err != nil {
			return err
		}
		ref, ok := res.Result.(types.ManagedObjectReference)
		if !ok {
			return fmt.Errorf("snapshot task returned %T", res.Result)
		}
		sid = ref.Value
		return nil
	})
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", v.id, err)
	}
	return v.id.WithSnapshot(sid), nil
}

// enableCBT turns on changed block tracking, as backup software does, so
// that backups after the first read only what changed. It takes effect
// with the snapshot that follows.
func (v *entity) enableCBT(ctx context.Context) error {
	if v.config.ChangeTrackingEnabled != nil && *v.config.ChangeTrackingEnabled {
		return nil
	}
	v.tm.s.Log.Info("enabling changed block tracking", "vm", v.mo.Name, "id", v.id)
	task, err := v.obj.Reconfigure(ctx, types.VirtualMachineConfigSpec{ChangeTrackingEnabled: types.NewBool(true)})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("enable changed block tracking: %w", err)
	}
	return nil
}

func (v *entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	if err := v.refreshSnapshots(ctx); err != nil {
		return nil, err
	}
	var out []pe.ID
	for _, t := range v.snapshotTrees() {
		out = append(out, v.id.Base().WithSnapshot(t.Snapshot.Value))
	}
	return out, nil
}

// DeleteSnapshot removes one snapshot, consolidating its disks; one that
// vanishes meanwhile is done.
func (v *entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	if err := v.refreshSnapshots(ctx); err != nil {
		return err
	}
	t := v.findSnapshot(snapshot)
	if t == nil {
		return fmt.Errorf("delete snapshot %s: %w", v.id.WithSnapshot(snapshot), pe.ErrNotFound)
	}
	err := v.tm.s.Retry(ctx, "delete snapshot "+snapshot, func() error {
		consolidate := true
		res, err := methods.RemoveSnapshot_Task(ctx, v.obj.Client(), &types.RemoveSnapshot_Task{
			This: t.Snapshot, RemoveChildren: false, Consolidate: &consolidate,
		})
		if err != nil {
			return err
		}
		return object.NewTask(v.obj.Client(), res.Returnval).Wait(ctx)
	})
	if err != nil && !vsphere.IsFault[*types.ManagedObjectNotFound](err) && !vsphere.IsFault[*types.NotFound](err) {
		return fmt.Errorf("delete snapshot %s: %w", v.id.WithSnapshot(snapshot), err)
	}
	return nil
}

func (v *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	if err := v.refreshSnapshots(ctx); err != nil {
		return pe.Info{}, err
	}
	s, err := v.atSnapshot(ctx, snapshot)
	if err != nil {
		return pe.Info{}, err
	}
	return s.Info(ctx)
}

// Components are the VM's virtual disks, as of the snapshot if v is one.
func (v *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	var out []pe.ProtectedEntity
	for _, d := range v.disks() {
		out = append(out, &disk{vm: v, dev: d})
	}
	return out, nil
}

// Data: a VM's bytes are in its disks, its components.
func (v *entity) Data(ctx context.Context) (pe.Image, error) {
	return nil, fmt.Errorf("data of %s: the disks are its components: %w", v.id, pe.ErrNoData)
}

// Metadata is the VM's Hardware as JSON.
func (v *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	b, err := json.MarshalIndent(hardwareOf(v.mo.Name, v.config), "", "  ")
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (v *entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	return fmt.Errorf("overwrite %s: restore VMs with create_new: %w", v.id, pe.ErrNotSupported)
}
