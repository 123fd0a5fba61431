package usecase

import (
	"context"
	"errors"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Backup backs up the PE id names into the repository, snapshotting a
// live PE first (ResolveForBackup); the summary's ID is the repository
// snapshot.
func (s *Service) Backup(ctx context.Context, id pe.ID, progress pe.Progress) (repo.Summary, error) {
	p, settle, err := s.ResolveForBackup(ctx, id)
	if err != nil {
		return repo.Summary{}, err
	}
	sum, err := s.BackupResolved(ctx, p, progress)
	if _, serr := settle(ctx, err == nil); serr != nil {
		// The backup is safe in the repository (or failed anyway); a
		// leftover snapshot is the PE's to clean (lssn, rmsn).
		s.log.Warn("backup: a snapshot taken for a backup is left", "pe", id, "err", serr)
	}
	return sum, err
}

// ResolveForBackup is Resolve for a backup. settle, called when the
// backup ends, deals with the snapshot Resolve took, if it took one: one
// that was not backed up is deleted; one that was is kept (kept is true)
// as the base of the next backup's change tracking, and the one it
// replaces deleted (see bases). Without a state directory, or for a PE
// without change tracking, it is deleted at once.
func (s *Service) ResolveForBackup(ctx context.Context, id pe.ID) (p pe.ProtectedEntity, settle func(ctx context.Context, backedUp bool) (kept bool, err error), err error) {
	r, err := s.repository()
	if err != nil {
		return nil, nil, err
	}
	p, live, err := s.resolve(ctx, id)
	if err != nil || live == nil {
		return p, func(context.Context, bool) (bool, error) { return false, nil }, err
	}
	snap := p.ID()
	return p, func(ctx context.Context, backedUp bool) (bool, error) {
		// Also when the backup was cancelled.
		ctx = context.WithoutCancel(ctx)
		// Kept only where the next backup can use it: a PE without
		// change tracking (an fs tree) would hold a whole copy of
		// itself for nothing.
		if !backedUp || s.bases == nil || !tracksChanges(ctx, p) {
			return false, deleteTaken(ctx, live, snap)
		}
		old, err := s.bases.replace(r.ID(), snap)
		if err != nil {
			// Unrecorded, it would never be deleted.
			return false, errors.Join(fmt.Errorf("record of backup snapshots: %w", err), deleteTaken(ctx, live, snap))
		}
		if old.IsZero() {
			return true, nil
		}
		if err := deleteTaken(ctx, live, old); err != nil && !errors.Is(err, pe.ErrNotFound) {
			return true, err
		}
		return true, nil
	}, nil
}

// tracksChanges tells whether the data of p, or of one of its components
// (a VM's disks), can say which blocks changed since an earlier snapshot.
func tracksChanges(ctx context.Context, p pe.ProtectedEntity) bool {
	if img, err := p.Data(ctx); err == nil {
		_, ok := img.(pe.ChangeTracker)
		img.Close()
		if ok {
			return true
		}
	}
	comps, err := p.Components(ctx)
	if err != nil {
		return false
	}
	for _, c := range comps {
		if tracksChanges(ctx, c) {
			return true
		}
	}
	return false
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

// RepositorySnapshotList lists the repository's snapshots with their
// info, oldest first; of one PE if filter is not zero.
func (s *Service) RepositorySnapshotList(ctx context.Context, filter pe.ID) ([]repo.Snapshot, error) {
	r, err := s.repository()
	if err != nil {
		return nil, err
	}
	return r.Snapshots(ctx, filter)
}

// OpenRepositorySnapshot opens a snapshot in the repository to read it.
func (s *Service) OpenRepositorySnapshot(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	r, err := s.repository()
	if err != nil {
		return nil, err
	}
	return r.OpenSnapshot(ctx, id)
}
