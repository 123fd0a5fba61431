package ivd

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// Data implements pe.ProtectedEntity: the live disk's bytes, or those of
// a snapshot, whose backing vCenter names with RetrieveSnapshotDetails.
func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	ref, err := e.diskRef(ctx)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	img, err := e.tm.s.OpenImage(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return img, nil
}

// diskRef names the disk behind e: the FCD's backing, or its snapshot's.
func (e *entity) diskRef(ctx context.Context) (vsphere.DiskRef, error) {
	ref := vsphere.DiskRef{Datastore: e.ds, FCD: e.id.Name(), FCDSnapshot: e.id.Snapshot()}
	if !e.id.HasSnapshot() {
		b, ok := e.obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo)
		if !ok {
			return vsphere.DiskRef{}, fmt.Errorf("backing %T: %w", e.obj.Config.Backing, pe.ErrNotSupported)
		}
		ref.Path = b.FilePath
		return ref, nil
	}
	c, err := e.tm.s.Client(ctx)
	if err != nil {
		return vsphere.DiskRef{}, err
	}
	res, err := methods.RetrieveSnapshotDetails(ctx, c.Client, &types.RetrieveSnapshotDetails{
		This:       *c.ServiceContent.VStorageObjectManager,
		Id:         types.ID{Id: ref.FCD},
		Datastore:  e.ds.Reference(),
		SnapshotId: types.ID{Id: ref.FCDSnapshot},
	})
	if err != nil {
		if vsphere.IsFault[*types.MethodNotFound](err) {
			return vsphere.DiskRef{}, fmt.Errorf("vCenter cannot name the snapshot's backing (RetrieveSnapshotDetails): %w", pe.ErrNotSupported)
		}
		return vsphere.DiskRef{}, fmt.Errorf("snapshot details: %w", err)
	}
	ref.Path = res.Returnval.Path
	return ref, nil
}
