package ivd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// Copy implements pe.TypeManager. create_new makes a new FCD on the
// configured datastore and writes src's data into it; update overwrites
// the FCD named by the target after checking that src fits. create is
// refused: vCenter, not the caller, chooses an FCD's uuid.
func (tm *TypeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	switch opts.Mode {
	case pe.CreateNew:
		if e, ok, err := tm.createFromSnapshot(ctx, src, opts.Progress); ok || err != nil {
			if err != nil {
				return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
			}
			return e, nil
		}
		e, err := tm.createNew(ctx, src, opts)
		if err != nil {
			return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
		}
		return e, nil
	case pe.Update:
		id, err := pe.NewID(Type, opts.TargetName(src.ID()))
		if err != nil {
			return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
		}
		target, err := tm.Get(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
		}
		if err := target.(*entity).overwrite(ctx, src, opts); err != nil {
			return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
		}
		return target, nil
	case pe.Create:
		return nil, fmt.Errorf("copy %s (create): vCenter chooses FCD ids; use create_new, or update an existing FCD: %w", src.ID(), pe.ErrNotSupported)
	}
	return nil, fmt.Errorf("copy %s: invalid copy mode %v", src.ID(), opts.Mode)
}

// createFromSnapshot restores a snapshot of an FCD of the same vCenter
// with CreateDiskFromSnapshot, which moves no bytes through us. ok is false
// when it does not apply: another source, a restore datastore other than
// the snapshot's, or a vCenter without the call.
func (tm *TypeManager) createFromSnapshot(ctx context.Context, src pe.ProtectedEntity, progress pe.Progress) (e *entity, ok bool, err error) {
	se, isFCD := src.(*entity)
	if !isFCD || !se.id.HasSnapshot() || se.tm.s.Config.VCenter != tm.s.Config.VCenter {
		return nil, false, nil
	}
	if tm.s.Config.Datastore != "" && tm.s.Config.Datastore != se.ds.Name() {
		return nil, false, nil
	}
	info, err := src.Info(ctx)
	if err != nil {
		return nil, false, err
	}
	c, err := tm.s.Client(ctx)
	if err != nil {
		return nil, false, err
	}
	res, err := methods.CreateDiskFromSnapshot_Task(ctx, c.Client, &types.CreateDiskFromSnapshot_Task{
		This: *c.ServiceContent.VStorageObjectManager, Id: types.ID{Id: se.id.Name()}, Datastore: se.ds.Reference(),
		SnapshotId: types.ID{Id: se.id.Snapshot()}, Name: info.Name,
	})
	if vsphere.IsFault[*types.MethodNotFound](err) || vsphere.IsFault[*types.NotSupported](err) {
		tm.s.Log.Info("vCenter cannot create a disk from a snapshot; copying the bytes", "snapshot", se.id, "err", err)
		return nil, false, nil
	}
	if err != nil {
		return nil, true, fmt.Errorf("create a disk from %s: %w", se.id, err)
	}
	tr, err := object.NewTask(c.Client, res.Returnval).WaitForResult(ctx, nil)
	if err != nil {
		return nil, true, fmt.Errorf("create a disk from %s: %w", se.id, err)
	}
	obj, isObj := tr.Result.(types.VStorageObject)
	if !isObj {
		return nil, true, fmt.Errorf("create a disk from %s: task returned %T", se.id, tr.Result)
	}
	id, err := pe.NewID(Type, obj.Config.Id.Id)
	if err != nil {
		return nil, true, err
	}
	e = &entity{tm: tm, id: id, ds: se.ds, obj: &obj}
	if err := e.setKeyValues(ctx, sourceKeyValues(ctx, src)); err != nil {
		return nil, true, err
	}
	if progress != nil {
		progress.Start(info.Size)
		progress.Add(info.Size)
	}
	return e, true, nil
}

// createNew makes an FCD as large as src's data and fills it within the
// budget of src under opts (the expansion bound of untrusted input; a
// datastore's free space is not ours to see); on failure the new FCD is
// deleted again.
func (tm *TypeManager) createNew(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (*entity, error) {
	img, err := src.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	defer img.Close()
	// The size is the source's word (a zip declares it): the FCD is made
	// that large, and the datastore's file access writes it whole.
	if err := budget.Declared(src, opts, img.Size()); err != nil {
		return nil, fmt.Errorf("an FCD of %d bytes: %w", img.Size(), err)
	}
	name := src.ID().Name()
	if info, err := src.Info(ctx); err == nil && info.Name != "" {
		name = info.Name
	}
	c, err := tm.s.Client(ctx)
	if err != nil {
		return nil, err
	}
	ds, err := tm.s.RestoreDatastore(ctx)
	if err != nil {
		return nil, err
	}
	m := vslm.NewObjectManager(c.Client)
	task, err := m.CreateDisk(ctx, types.VslmCreateSpec{
		Name:         name,
		CapacityInMB: (img.Size() + 1<<20 - 1) >> 20,
		BackingSpec: &types.VslmCreateSpecDiskFileBackingSpec{
			VslmCreateSpecBackingSpec: types.VslmCreateSpecBackingSpec{Datastore: ds.Reference()},
			ProvisioningType:          string(types.BaseConfigInfoDiskFileBackingInfoProvisioningTypeThin),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("create FCD %q on %s: %w", name, ds.Name(), err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("create FCD %q on %s: %w", name, ds.Name(), err)
	}
	obj, ok := res.Result.(types.VStorageObject)
	if !ok {
		return nil, fmt.Errorf("create FCD %q: task returned %T", name, res.Result)
	}
	id, err := pe.NewID(Type, obj.Config.Id.Id)
	if err != nil {
		return nil, err
	}
	e := &entity{tm: tm, id: id, ds: ds, obj: &obj}
	ref, err := e.diskRef(ctx)
	if err == nil {
		err = tm.s.WriteDisk(ctx, ref, budget.Image(img, budget.NewRemote(src, opts)), true, opts.Progress)
	}
	if err == nil {
		err = e.setKeyValues(ctx, sourceKeyValues(ctx, src))
	}
	if err != nil {
		// A half-written disk is worse than none.
		if t, derr := m.Delete(context.WithoutCancel(ctx), ds, obj.Config.Id.Id); derr == nil {
			derr = t.Wait(context.WithoutCancel(ctx))
			if derr != nil {
				tm.s.Log.Warn("deleting the FCD of a failed restore", "id", id, "err", derr)
			}
		}
		return nil, fmt.Errorf("write %s: %w", id, err)
	}
	return e, nil
}

// Overwrite implements pe.ProtectedEntity: the live FCD's bytes become
// src's. Components do not apply to FCDs.
func (e *entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	if err := e.overwrite(ctx, src, pe.CopyOptions{Mode: pe.Update}); err != nil {
		return fmt.Errorf("overwrite %s from %s: %w", e.id, src.ID(), err)
	}
	return nil
}

func (e *entity) overwrite(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("%s is a snapshot: %w", e.id, pe.ErrNotSupported)
	}
	img, err := src.Data(ctx)
	if err != nil {
		return fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	defer img.Close()
	if capacity := e.obj.Config.CapacityInMB << 20; img.Size() > capacity {
		return fmt.Errorf("the source's %d bytes do not fit %s's %d; extend the FCD first", img.Size(), e.id, capacity)
	}
	ref, err := e.diskRef(ctx)
	if err != nil {
		return err
	}
	return e.tm.s.WriteDisk(ctx, ref, budget.Image(img, budget.NewRemote(src, opts)), false, opts.Progress)
}

// sourceKeyValues is the key/value metadata of an FCD source (live, in a
// snapshot, or backed up), or none for other sources.
func sourceKeyValues(ctx context.Context, src pe.ProtectedEntity) []types.KeyValue {
	if src.ID().Type() != Type {
		return nil
	}
	md, err := src.Metadata(ctx)
	if err != nil {
		return nil
	}
	defer md.Close()
	var m struct {
		KeyValueMetadata []types.KeyValue `json:"keyValueMetadata"`
	}
	if json.NewDecoder(io.LimitReader(md, 16<<20)).Decode(&m) != nil {
		return nil
	}
	return m.KeyValueMetadata
}

// setKeyValues gives the FCD key/value metadata.
func (e *entity) setKeyValues(ctx context.Context, kv []types.KeyValue) error {
	if len(kv) == 0 {
		return nil
	}
	c, err := e.tm.s.Client(ctx)
	if err != nil {
		return err
	}
	res, err := methods.VCenterUpdateVStorageObjectMetadataEx_Task(ctx, c.Client, &types.VCenterUpdateVStorageObjectMetadataEx_Task{
		This: *c.ServiceContent.VStorageObjectManager, Id: types.ID{Id: e.id.Name()}, Datastore: e.ds.Reference(), Metadata: kv,
	})
	if err == nil {
		err = object.NewTask(c.Client, res.Returnval).Wait(ctx)
	}
	if err != nil {
		return fmt.Errorf("key/value metadata of %s: %w", e.id, err)
	}
	return nil
}
