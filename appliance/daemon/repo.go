package daemon

import (
	"context"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// repoService is the backup repository for the API.
type repoService struct {
	r *repo.Repository
	m pe.Manager
}

var _ rest.Repository = (*repoService)(nil)

func (s *repoService) Snapshots(ctx context.Context, filter pe.ID) ([]pe.ID, error) {
	snaps, err := s.r.Snapshots(ctx, filter)
	if err != nil {
		return nil, err
	}
	out := make([]pe.ID, len(snaps))
	for i, sn := range snaps {
		out[i] = sn.ID
	}
	return out, nil
}

// Backup backs up id, snapshotting a live PE first.
func (s *repoService) Backup(ctx context.Context, id pe.ID, progress pe.Progress) (pe.ID, error) {
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return pe.ID{}, err
	}
	if !id.HasSnapshot() {
		if id, err = p.Snapshot(ctx, nil); err != nil {
			return pe.ID{}, fmt.Errorf("snapshot %s: %w", p.ID(), err)
		}
		if p, err = s.m.Get(ctx, id); err != nil {
			return pe.ID{}, err
		}
	}
	sum, err := s.r.Backup(ctx, p, progress)
	if err != nil {
		return pe.ID{}, err
	}
	return sum.ID, nil
}

func (s *repoService) Restore(ctx context.Context, id pe.ID, service string, mode pe.CopyMode, progress pe.Progress) (pe.ID, error) {
	tm, err := s.m.Type(service)
	if err != nil {
		return pe.ID{}, err
	}
	src, err := s.r.OpenSnapshot(ctx, id)
	if err != nil {
		return pe.ID{}, err
	}
	out, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: mode, Progress: progress})
	if err != nil {
		return pe.ID{}, fmt.Errorf("restore %s: %w", id, err)
	}
	return out.ID(), nil
}
