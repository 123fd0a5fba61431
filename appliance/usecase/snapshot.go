package usecase

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/overlay"
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

// DeleteSnapshot deletes snapshot id of a live PE, unless something
// writes over it: a writable NBD or NFS export of this appliance, or an
// overlay in OverlayDir (another process's export, or one a stopped
// appliance resumes at start). Their writes would be left over nothing.
func (s *Service) DeleteSnapshot(ctx context.Context, id pe.ID) error {
	if !id.HasSnapshot() {
		return fmt.Errorf("delete %s: only snapshots can be deleted: %w", id, pe.ErrNotSupported)
	}
	p, err := s.m.Get(ctx, id.Base())
	if err != nil {
		return err
	}
	if err := s.refuseWrittenOver(id); err != nil {
		return err
	}
	// The PE's error names the snapshot.
	return p.DeleteSnapshot(ctx, id.Snapshot())
}

// refuseWrittenOver fails with pe.ErrExists if writes are kept over id.
func (s *Service) refuseWrittenOver(id pe.ID) error {
	for _, e := range s.Exports() {
		if e.ID == id && e.Writable {
			// Stopping it would throw the writes away.
			return fmt.Errorf("delete %s: it has a writable NBD export: stop it first, keeping its writes if wanted: %w", id, pe.ErrExists)
		}
	}
	for _, e := range s.NFSExports() {
		if e.ID == id {
			return fmt.Errorf("delete %s: it has the NFS export %s: stop it first, keeping its writes if wanted: %w", id, e.Name, pe.ErrExists)
		}
	}
	if s.overlayDir == "" {
		return nil
	}
	dirs, err := os.ReadDir(s.overlayDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: look for writes over it: %w", id, err)
	}
	for _, d := range dirs {
		dir := filepath.Join(s.overlayDir, d.Name())
		// An overlay that does not say (made by an older version, or
		// half made) is no reason to refuse.
		if base, err := overlay.BaseOf(dir); err == nil && base == id.String() {
			return fmt.Errorf("delete %s: the overlay %s holds writes made over it, by a writable export of another process or one a stopped appliance resumes at start: stop that export first (or, if nothing serves it, remove the directory): %w", id, dir, pe.ErrExists)
		}
	}
	return nil
}
