package usecase

import (
	"context"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Snapshot takes a snapshot of the live PE id and returns its ID.
func (s *Service) Snapshot(ctx context.Context, id pe.ID, params pe.Params) (pe.ID, error) {
	if id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself: %w", id, pe.ErrNotSupported)
	}
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return pe.ID{}, err
	}
	snap, err := p.Snapshot(ctx, params)
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return snap, nil
}
