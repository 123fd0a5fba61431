package usecase

import (
	"context"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Backup backs up the PE id names into the repository, snapshotting a
// live PE first and deleting that snapshot after (ResolveTemporary); the
// summary's ID is the repository snapshot.
func (s *Service) Backup(ctx context.Context, id pe.ID, progress pe.Progress) (repo.Summary, error) {
	if _, err := s.repository(); err != nil {
		return repo.Summary{}, err
	}
	p, release, err := s.ResolveTemporary(ctx, id)
	if err != nil {
		return repo.Summary{}, err
	}
	sum, err := s.BackupResolved(ctx, p, progress)
	if rerr := release(ctx); rerr != nil {
		// The backup is safe in the repository; the leftover is the
		// PE's to clean (lssn, rmsn), not a reason to call it failed.
		s.log.Warn("backup: the local snapshot taken for it is left", "pe", id, "err", rerr)
	}
	return sum, err
}

// BackupResolved backs up p, a PE Resolve returned.
func (s *Service) BackupResolved(ctx context.Context, p pe.ProtectedEntity, progress pe.Progress) (repo.Summary, error) {
	r, err := s.repository()
	if err != nil {
		return repo.Summary{}, err
	}
	return r.Backup(ctx, p, progress)
}

// RepositorySnapshots lists the IDs of the repository's snapshots, oldest
// first; of one PE if filter is not zero.
func (s *Service) RepositorySnapshots(ctx context.Context, filter pe.ID) ([]pe.ID, error) {
	r, err := s.repository()
	if err != nil {
		return nil, err
	}
	return r.SnapshotIDs(ctx, filter)
}

func (s *Service) repository() (*repo.Repository, error) {
	if s.repo == nil {
		return nil, notConfigured("the backup repository")
	}
	return s.repo, nil
}
