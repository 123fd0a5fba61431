package usecase

import (
	"context"
	"errors"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Resolve returns the PE id names as one point in time: a snapshot as it
// is, a live PE snapshotted first (the snapshot's ID tells which was
// taken). Every copy, backup and export starts here; an export keeps the
// snapshot it serves.
func (s *Service) Resolve(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	p, _, err := s.resolve(ctx, id)
	return p, err
}

// ResolveTemporary is Resolve for a reader done with the snapshot when it
// ends (a copy): release deletes the snapshot Resolve took, if it took
// one. Left behind, one snapshot per copy would pile up until the PE's
// storage fills (a disk image's is a whole copy where reflinks are not
// there). A backup keeps one (ResolveForBackup).
func (s *Service) ResolveTemporary(ctx context.Context, id pe.ID) (p pe.ProtectedEntity, release func(context.Context) error, err error) {
	p, live, err := s.resolve(ctx, id)
	if err != nil || live == nil {
		return p, func(context.Context) error { return nil }, err
	}
	snap := p.ID()
	return p, func(ctx context.Context) error {
		// Also when the reader was cancelled: the snapshot must go.
		return deleteTaken(context.WithoutCancel(ctx), live, snap)
	}, nil
}

// deleteTaken deletes the snapshot snap of live that a copy or backup
// took.
func deleteTaken(ctx context.Context, live pe.ProtectedEntity, snap pe.ID) error {
	if err := live.DeleteSnapshot(ctx, snap.Snapshot()); err != nil {
		return fmt.Errorf("delete snapshot %s taken for a copy or backup: %w", snap, err)
	}
	return nil
}

// resolve is Resolve; live is the PE it snapshotted, nil if none.
func (s *Service) resolve(ctx context.Context, id pe.ID) (p, live pe.ProtectedEntity, err error) {
	live, err = s.m.Get(ctx, id)
	if err != nil || id.HasSnapshot() {
		return live, nil, err
	}
	snap, err := live.Snapshot(ctx, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	p, err = s.m.Get(ctx, snap)
	if err != nil {
		// The snapshot is of no use to anyone: do not leave it.
		return nil, nil, errors.Join(fmt.Errorf("snapshot %s: %w", snap, err), live.DeleteSnapshot(context.WithoutCancel(ctx), snap.Snapshot()))
	}
	return p, live, nil
}
