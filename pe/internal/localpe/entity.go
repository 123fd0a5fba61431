package localpe

import (
	"context"
	"fmt"
	"io"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Entity is one PE of a root, or one of its snapshots when its ID has a
// snapshot part. It implements pe.ProtectedEntity; a PE has no components
// and no metadata: all of it is in its data.
type Entity struct {
	m  *Manager
	id pe.ID
}

var _ pe.ProtectedEntity = (*Entity)(nil)

// ID implements pe.ProtectedEntity.
func (e *Entity) ID() pe.ID { return e.id }

// Info implements pe.ProtectedEntity. The size of a live PE is that of
// its data as it is now, which for a tree means walking it.
func (e *Entity) Info(ctx context.Context) (pe.Info, error) {
	if e.id.HasSnapshot() {
		return e.SnapshotInfo(ctx, e.id.Snapshot())
	}
	img, err := e.m.b.OpenLive(ctx, e.id.Name())
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", e.id, err)
	}
	defer img.Close()
	return pe.Info{ID: e.id, Name: e.id.Name(), Size: img.Size()}, nil
}

// Snapshot implements pe.ProtectedEntity. Params are not used.
func (e *Entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if e.id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself, snapshot %s: %w", e.id, e.id.Base(), pe.ErrNotSupported)
	}
	if err := e.refuseUnfinished("snapshot"); err != nil {
		return pe.ID{}, err
	}
	snap, err := e.m.b.TakeSnapshot(ctx, e.id.Name())
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	return e.id.WithSnapshot(snap), nil
}

// ListSnapshots implements pe.ProtectedEntity; on a snapshot it lists the
// snapshots of its PE.
func (e *Entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return e.m.root.snaps.IDs(e.id)
}

// DeleteSnapshot implements pe.ProtectedEntity.
func (e *Entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	if err := e.m.root.snaps.Delete(e.id.Name(), snapshot); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", e.id.WithSnapshot(snapshot), err)
	}
	return nil
}

// SnapshotInfo implements pe.ProtectedEntity: the size is that recorded
// when the snapshot was taken.
func (e *Entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	id := e.id.WithSnapshot(snapshot)
	si, err := e.m.b.SnapshotInfo(e.id.Name(), snapshot)
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", id, err)
	}
	created := si.Created
	return pe.Info{ID: id, Name: e.id.Name(), Size: si.Size, Created: &created}, nil
}

// Components implements pe.ProtectedEntity: there are none.
func (e *Entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	return nil, nil
}

// Data implements pe.ProtectedEntity.
func (e *Entity) Data(ctx context.Context) (pe.Image, error) {
	var (
		img pe.Image
		err error
	)
	if e.id.HasSnapshot() {
		img, err = e.m.b.OpenSnapshot(ctx, e.id.Name(), e.id.Snapshot())
	} else {
		img, err = e.m.b.OpenLive(ctx, e.id.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return img, nil
}

// Metadata implements pe.ProtectedEntity: there is none.
func (e *Entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, fmt.Errorf("metadata of %s: %w", e.id, pe.ErrNoMetadata)
}

// Overwrite implements pe.ProtectedEntity: it replaces the live PE's data
// with src's, as Copy with pe.Update does. There are no components, so
// withComponents changes nothing.
func (e *Entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	if err := e.RequireLive("overwrite"); err != nil {
		return err
	}
	if err := e.m.update(ctx, e.id.Name(), src, pe.CopyOptions{Mode: pe.Update}); err != nil {
		return fmt.Errorf("overwrite %s from %s: %w", e.id, src.ID(), err)
	}
	return nil
}

// RequireLive refuses op on a snapshot: snapshots are read-only. Types
// call it too in what they offer besides pe.ProtectedEntity, so that all
// refuse alike.
func (e *Entity) RequireLive(op string) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("%s %s: snapshots are read-only: %w", op, e.id, pe.ErrNotSupported)
	}
	return nil
}
