package usecase

import (
	"context"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Resolve returns the PE id names as one point in time: a snapshot as it
// is, a live PE snapshotted first (the snapshot's ID tells which was
// taken). Every copy, backup and export starts here.
func (s *Service) Resolve(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	p, err := s.m.Get(ctx, id)
	if err != nil || id.HasSnapshot() {
		return p, err
	}
	snap, err := p.Snapshot(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return s.m.Get(ctx, snap)
}
