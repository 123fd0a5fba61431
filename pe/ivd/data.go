package ivd

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/vddk"
)

// Data implements pe.ProtectedEntity: the live disk's bytes, or those of
// a snapshot, whose backing vCenter names with RetrieveSnapshotDetails.
func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	ref, err := e.diskRef(ctx)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	c, err := e.tm.client(ctx)
	if err != nil {
		return nil, err
	}
	d, err := e.tm.access.open(ctx, c, ref)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return &image{d}, nil
}

// diskRef names the disk behind e: the FCD's backing, or its snapshot's.
func (e *entity) diskRef(ctx context.Context) (diskRef, error) {
	ref := diskRef{ds: e.ds, id: e.id.Name(), snapshot: e.id.Snapshot()}
	if !e.id.HasSnapshot() {
		b, ok := e.obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo)
		if !ok {
			return diskRef{}, fmt.Errorf("backing %T: %w", e.obj.Config.Backing, pe.ErrNotSupported)
		}
		ref.path = b.FilePath
		return ref, nil
	}
	c, err := e.tm.client(ctx)
	if err != nil {
		return diskRef{}, err
	}
	res, err := methods.RetrieveSnapshotDetails(ctx, c.Client, &types.RetrieveSnapshotDetails{
		This:       *c.ServiceContent.VStorageObjectManager,
		Id:         types.ID{Id: ref.id},
		Datastore:  e.ds.Reference(),
		SnapshotId: types.ID{Id: ref.snapshot},
	})
	if err != nil {
		if isFault[*types.MethodNotFound](err) {
			return diskRef{}, fmt.Errorf("vCenter cannot name the snapshot's backing (RetrieveSnapshotDetails): %w", pe.ErrNotSupported)
		}
		return diskRef{}, fmt.Errorf("snapshot details: %w", err)
	}
	ref.path = res.Returnval.Path
	return ref, nil
}

// image is a vddk.Disk as a pe.Image.
type image struct{ d vddk.Disk }

func (im *image) ReadAt(p []byte, off int64) (int, error) { return im.d.ReadAt(p, off) }
func (im *image) Size() int64                             { return im.d.Size() }
func (im *image) Close() error                            { return im.d.Close() }

// Extents implements pe.Image from the disk's allocated blocks.
func (im *image) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, im.d.Size())
	if !ok {
		return nil, nil
	}
	alloc, err := im.d.Allocated(ctx)
	if err != nil {
		return nil, err
	}
	end := off + length
	var out []pe.Extent
	pos := off
	for _, a := range alloc {
		from, to := max(a.Offset, off), min(a.Offset+a.Length, end)
		if from >= to {
			continue
		}
		if from > pos {
			out = append(out, pe.Extent{Offset: pos, Length: from - pos, Kind: pe.ExtentHole})
		}
		out = append(out, pe.Extent{Offset: from, Length: to - from, Kind: pe.ExtentData})
		pos = to
	}
	if pos < end {
		out = append(out, pe.Extent{Offset: pos, Length: end - pos, Kind: pe.ExtentHole})
	}
	return pe.MergeExtents(out), nil
}
