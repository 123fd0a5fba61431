package usecase

import (
	"context"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Restore copies repository snapshot id into a PE of type typ
// (opts.Mode says how the target is found) and returns it.
func (s *Service) Restore(ctx context.Context, id pe.ID, typ string, opts pe.CopyOptions, progress pe.Progress) (pe.ProtectedEntity, error) {
	r, err := s.repository()
	if err != nil {
		return nil, err
	}
	tm, err := s.m.Type(ctx, typ)
	if err != nil {
		return nil, err
	}
	src, err := r.OpenSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	out, err := s.copy(ctx, tm, src, typ, opts, progress)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", id, err)
	}
	return out, nil
}
