package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// disk is one virtual disk of a VM, or of a VM snapshot: a component PE.
// Its snapshots are the VM's.
type disk struct {
	vm  *entity
	dev *types.VirtualDisk
}

func (d *disk) ID() pe.ID {
	id, _ := pe.NewID(Type, d.vm.id.Name()+diskInfix+strconv.Itoa(int(d.dev.Key)))
	if d.vm.id.HasSnapshot() {
		id = id.WithSnapshot(d.vm.id.Snapshot())
	}
	return id
}

func (d *disk) Info(ctx context.Context) (pe.Info, error) {
	vi, _ := d.vm.Info(ctx)
	label := "disk " + strconv.Itoa(int(d.dev.Key))
	if di := d.dev.DeviceInfo.GetDescription(); di != nil && di.Label != "" {
		label = di.Label
	}
	return pe.Info{ID: d.ID(), Name: d.vm.mo.Name + "/" + label, Size: d.dev.CapacityInBytes, Created: vi.Created}, nil
}

func (d *disk) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	return pe.ID{}, fmt.Errorf("snapshot %s: snapshots are taken of the VM %s: %w", d.ID(), d.vm.id.Base(), pe.ErrNotSupported)
}

// ListSnapshots lists the VM's snapshots, as this disk's.
func (d *disk) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	ids, err := d.vm.ListSnapshots(ctx)
	base := d.ID().Base()
	for i := range ids {
		ids[i] = base.WithSnapshot(ids[i].Snapshot())
	}
	return ids, err
}

func (d *disk) DeleteSnapshot(ctx context.Context, snapshot string) error {
	return fmt.Errorf("delete snapshot of %s: snapshots are the VM %s's: %w", d.ID(), d.vm.id.Base(), pe.ErrNotSupported)
}

func (d *disk) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	info, err := d.vm.SnapshotInfo(ctx, snapshot)
	info.ID = d.ID().Base().WithSnapshot(snapshot)
	return info, err
}

func (d *disk) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }

// Data reads the disk's backing: for a VM snapshot, the file the disk had
// when it was taken, which vSphere then froze under a delta.
func (d *disk) Data(ctx context.Context) (pe.Image, error) {
	ref, err := d.diskRef(ctx)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", d.ID(), err)
	}
	img, err := d.vm.tm.s.OpenImage(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", d.ID(), err)
	}
	if d.vm.snap == nil {
		return img, nil
	}
	return &changeTrackedImage{Image: img, d: d}, nil
}

func (d *disk) diskRef(ctx context.Context) (vsphere.DiskRef, error) {
	return diskRefOf(ctx, d.vm.tm.s, d.dev, d.vm.obj.Reference().Value, d.vm.id.Snapshot())
}

// diskRefOf names the backing of a VM's disk device.
func diskRefOf(ctx context.Context, s *vsphere.Session, dev *types.VirtualDisk, vm, snapshot string) (vsphere.DiskRef, error) {
	fb, ok := dev.Backing.(types.BaseVirtualDeviceFileBackingInfo)
	if !ok {
		return vsphere.DiskRef{}, fmt.Errorf("disk %d: backing %T is not a file: %w", dev.Key, dev.Backing, pe.ErrNotSupported)
	}
	name := fb.GetVirtualDeviceFileBackingInfo().FileName
	var p object.DatastorePath
	if !p.FromString(name) {
		return vsphere.DiskRef{}, fmt.Errorf("disk %d: backing %q is not a datastore path", dev.Key, name)
	}
	_, _, f, err := s.Finder(ctx)
	if err != nil {
		return vsphere.DiskRef{}, err
	}
	ds, err := f.Datastore(ctx, p.Datastore)
	if err != nil {
		return vsphere.DiskRef{}, fmt.Errorf("disk %d: %w", dev.Key, err)
	}
	return vsphere.DiskRef{Datastore: ds, Path: name, VM: vm, VMSnapshot: snapshot}, nil
}

// Metadata is the disk device as vSphere describes it, as JSON.
func (d *disk) Metadata(ctx context.Context) (io.ReadCloser, error) {
	b, err := json.MarshalIndent(d.dev, "", "  ")
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (d *disk) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	return fmt.Errorf("overwrite %s: restore VMs with create_new: %w", d.ID(), pe.ErrNotSupported)
}
