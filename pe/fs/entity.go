package fs

import (
	"context"
	"fmt"
	"io"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// entity is one fs PE, or one of its snapshots when id has a snapshot part.
type entity struct {
	tm *TypeManager
	id pe.ID
}

var _ pe.ProtectedEntity = (*entity)(nil)

// ID implements pe.ProtectedEntity.
func (e *entity) ID() pe.ID { return e.id }

// Info implements pe.ProtectedEntity. Size is that of the tar image, which
// for a live PE means walking the whole tree.
func (e *entity) Info(ctx context.Context) (pe.Info, error) {
	if e.id.HasSnapshot() {
		return e.SnapshotInfo(ctx, e.id.Snapshot())
	}
	lay, err := layoutTree(ctx, e.tm.livePath(e.id.Name()))
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", e.id, err)
	}
	lay.close()
	return pe.Info{ID: e.id, Name: e.id.Name(), Size: lay.size}, nil
}

// Snapshot implements pe.ProtectedEntity. Params are not used.
func (e *entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if e.id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: cannot snapshot a snapshot, use %s", e.id, e.id.Base())
	}
	snap, err := e.tm.takeSnapshot(ctx, e.id.Name())
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	return e.id.WithSnapshot(snap), nil
}

// ListSnapshots implements pe.ProtectedEntity.
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

// SnapshotInfo implements pe.ProtectedEntity. Size is the tar image size
// recorded when the snapshot was taken.
func (e *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	id := e.id.WithSnapshot(snapshot)
	si, err := e.tm.readSnapshotInfo(e.id.Name(), snapshot)
	if err != nil {
		return pe.Info{}, fmt.Errorf("snapshot info %s: %w", id, err)
	}
	created := si.Created
	return pe.Info{ID: id, Name: e.id.Name(), Size: si.ImageSize, Created: &created}, nil
}

// Components implements pe.ProtectedEntity: a directory tree has none.
func (e *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	return nil, nil
}

// Data implements pe.ProtectedEntity: a tar stream of the tree, laid out
// when Data is called and read from the files on demand.
//
// The data of a snapshot is a point in time and the same bytes every time.
// The data of a live PE is not: it is the tree as walked by Data, and
// ReadAt fails when a file's size, mtime or inode has changed since, rather
// than return bytes that do not match the headers. Snapshot first for a
// consistent copy.
func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	dir := e.tm.livePath(e.id.Name())
	if e.id.HasSnapshot() {
		if _, err := e.tm.readSnapshotInfo(e.id.Name(), e.id.Snapshot()); err != nil {
			return nil, fmt.Errorf("data %s: %w", e.id, err)
		}
		dir = e.tm.treePath(e.id.Name(), e.id.Snapshot())
	} else if err := e.tm.checkLive(e.id.Name()); err != nil {
		return nil, fmt.Errorf("data %s: %w", e.id, err)
	}
	img, err := openImage(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("data %s: %w", e.id, err)
	}
	return img, nil
}

// Metadata implements pe.ProtectedEntity: everything about a tree is in
// its tar stream, there is no separate metadata.
func (e *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, fmt.Errorf("metadata %s: %w", e.id, pe.ErrNoMetadata)
}

// Overwrite implements pe.ProtectedEntity: it replaces the tree with the
// one in src's tar stream, as Copy with pe.Update does. There are no
// components, so withComponents makes no difference.
func (e *entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("overwrite %s: a snapshot cannot be overwritten: %w", e.id, pe.ErrNotSupported)
	}
	if err := e.tm.update(ctx, e.id.Name(), src, pe.CopyOptions{Mode: pe.Update}); err != nil {
		return fmt.Errorf("overwrite %s from %s: %w", e.id, src.ID(), err)
	}
	return nil
}
