package disk

import (
	"context"
	"fmt"
	"io"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// entity is a disk PE: the live image, or one snapshot of it when its ID
// has a snapshot part.
type entity struct {
	tm *TypeManager
	id pe.ID
}

var _ pe.ProtectedEntity = (*entity)(nil)

// ID implements pe.ProtectedEntity.
func (e *entity) ID() pe.ID { return e.id }

// Info implements pe.ProtectedEntity.
func (e *entity) Info(ctx context.Context) (pe.Info, error) {
	if e.id.HasSnapshot() {
		return e.SnapshotInfo(ctx, e.id.Snapshot())
	}
	kind, err := e.tm.kindOf(e.id.Name())
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", e.id, err)
	}
	im, err := openImage(e.tm.livePath(e.id.Name()), kind)
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", e.id, err)
	}
	defer im.Close()
	return pe.Info{ID: e.id, Name: e.id.Name(), Size: im.Size()}, nil
}

// Snapshot implements pe.ProtectedEntity. Params are not used.
func (e *entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if e.id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself: %w", e.id, pe.ErrNotSupported)
	}
	snap, err := e.tm.takeSnapshot(ctx, e.id.Name())
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	return e.id.WithSnapshot(snap), nil
}

// ListSnapshots implements pe.ProtectedEntity; on a snapshot it lists the
// snapshots of its PE.
func (e *entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return e.tm.snaps.IDs(e.id)
}

// DeleteSnapshot implements pe.ProtectedEntity.
func (e *entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	if err := e.tm.snaps.Delete(e.id.Name(), snapshot); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", e.id.WithSnapshot(snapshot), err)
	}
	return nil
}

// SnapshotInfo implements pe.ProtectedEntity.
func (e *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	id := e.id.WithSnapshot(snapshot)
	si, err := e.tm.readSnapshotInfo(e.id.Name(), snapshot)
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", id, err)
	}
	created := si.Created
	return pe.Info{ID: id, Name: e.id.Name(), Size: si.Size, Created: &created}, nil
}

// Components implements pe.ProtectedEntity: a disk has none.
func (e *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	return nil, nil
}

// Data implements pe.ProtectedEntity. The image of a snapshot also
// implements pe.ChangeTracker; that of the live PE does not, as nothing
// records its writes.
func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	if e.id.HasSnapshot() {
		im, err := e.tm.openSnapshotImage(e.id.Name(), e.id.Snapshot())
		if err != nil {
			return nil, fmt.Errorf("data of %s: %w", e.id, err)
		}
		return im, nil
	}
	kind, err := e.tm.kindOf(e.id.Name())
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	im, err := openImage(e.tm.livePath(e.id.Name()), kind)
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return im, nil
}

// Metadata implements pe.ProtectedEntity: a raw image is all data.
func (e *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, fmt.Errorf("metadata of %s: %w", e.id, pe.ErrNoMetadata)
}

// Overwrite implements pe.ProtectedEntity: it replaces the live image with
// src's data (see TypeManager.Copy with pe.Update). There are no
// components, so withComponents changes nothing.
func (e *entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("overwrite %s: snapshots are read-only: %w", e.id, pe.ErrNotSupported)
	}
	if err := e.tm.overwrite(ctx, e.id.Name(), src, pe.CopyOptions{}); err != nil {
		return fmt.Errorf("overwrite %s from %s: %w", e.id, src.ID(), err)
	}
	return nil
}
