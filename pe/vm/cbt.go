package vm

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// changeTrackedImage is the image of a disk in a VM snapshot: it can say
// which ranges changed since an earlier snapshot, from vSphere's changed
// block tracking (QueryChangedDiskAreas), so that incremental backups
// read only those.
type changeTrackedImage struct {
	pe.Image
	d *disk
}

var _ pe.ChangeTracker = (*changeTrackedImage)(nil)

// ChangedSince implements pe.ChangeTracker. It fails where CBT cannot
// answer (not enabled when base was taken, or a server without it); the
// caller then reads everything.
func (im *changeTrackedImage) ChangedSince(ctx context.Context, base string) ([]pe.Extent, error) {
	v := im.d.vm
	if err := v.refreshSnapshots(ctx); err != nil {
		return nil, err
	}
	b, err := v.atSnapshot(ctx, base)
	if err != nil {
		return nil, err
	}
	var changeID string
	for _, bd := range b.disks() {
		if bd.Key == im.d.dev.Key {
			changeID = diskChangeID(bd)
		}
	}
	if changeID == "" {
		return nil, fmt.Errorf("disk %d in %s has no change ID (changed block tracking was off): %w", im.d.dev.Key, b.id, pe.ErrNotSupported)
	}
	var out []pe.Extent
	capacity := im.d.dev.CapacityInBytes
	for off := int64(0); off < capacity; {
		res, err := methods.QueryChangedDiskAreas(ctx, v.obj.Client(), &types.QueryChangedDiskAreas{
			This: v.obj.Reference(), Snapshot: &v.snap.Snapshot, DeviceKey: im.d.dev.Key, StartOffset: off, ChangeId: changeID,
		})
		if err != nil {
			return nil, fmt.Errorf("changed areas of disk %d since %s: %w", im.d.dev.Key, b.id, err)
		}
		info := res.Returnval
		for _, a := range info.ChangedArea {
			out = append(out, pe.Extent{Offset: a.Start, Length: a.Length, Kind: pe.ExtentData})
		}
		next := info.StartOffset + info.Length
		if next <= off {
			return nil, errors.New("QueryChangedDiskAreas made no progress")
		}
		off = next
	}
	return pe.MergeExtents(out), nil
}

// diskChangeID is the CBT change ID of a disk's backing, if it has one.
func diskChangeID(d *types.VirtualDisk) string {
	switch b := d.Backing.(type) {
	case *types.VirtualDiskFlatVer2BackingInfo:
		return b.ChangeId
	case *types.VirtualDiskSparseVer2BackingInfo:
		return b.ChangeId
	case *types.VirtualDiskSeSparseBackingInfo:
		return b.ChangeId
	case *types.VirtualDiskRawDiskMappingVer1BackingInfo:
		return b.ChangeId
	}
	return ""
}
