package usecase

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/nfsexport"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/overlay"
)

// NFSExport is a snapshot served writable over NFSv3 as datastore files
// (<Name>/<Name>.vmdk and <Name>/<Name>-flat.vmdk), its writes in an
// overlay: what a vSphere host boots a VM from without a restore.
type NFSExport struct {
	ID   pe.ID  // the snapshot, local or in the repository
	Name string // the directory in the export, and the overlay's
	URL  string // nfs://host:port/Name
}

// nfsDisk is an NFS export's open overlay and the snapshot data under it.
type nfsDisk struct {
	e    NFSExport
	base pe.Image
	ov   *overlay.Overlay
	// stopping is set (under Service.mu) while a stop holds the export.
	stopping bool
}

func (d *nfsDisk) close() error { return errors.Join(d.ov.Close(), d.base.Close()) }

func (s *Service) nfsServer() error {
	if s.nfs == nil {
		return notConfigured("NFS")
	}
	return nil
}

// NFSExports lists the NFS exports by name.
func (s *Service) NFSExports() []NFSExport {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NFSExport, 0, len(s.nfsDisks))
	for _, d := range s.nfsDisks {
		e := d.e
		e.URL = s.nfsURL(e.Name)
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b NFSExport) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// StartNFSExport serves snapshot id (of the configuration, or in the
// repository) writable over NFS at once; its writes land in an overlay,
// the snapshot never changes. A live PE is snapshotted first.
func (s *Service) StartNFSExport(ctx context.Context, id pe.ID) (NFSExport, error) {
	if err := s.nfsServer(); err != nil {
		return NFSExport{}, err
	}
	// Refused before a live fs PE is snapshotted for nothing.
	if err := nfsExportable(id); err != nil {
		return NFSExport{}, err
	}
	p, err := s.exportable(ctx, id)
	if err != nil {
		return NFSExport{}, err
	}
	e := NFSExport{ID: p.ID(), Name: nfsName(strings.TrimSuffix(p.ID().Name(), ".img"), p.ID().Type())}
	if err := s.openNFS(ctx, p, e, true); err != nil {
		return NFSExport{}, err
	}
	if err := s.journal.NFSExportStarted(e); err != nil {
		_, serr := s.StopNFSExport(context.WithoutCancel(ctx), e.Name, false, nil)
		return NFSExport{}, errors.Join(err, serr)
	}
	s.log.Info("NFS export started", "export", e.Name, "snapshot", e.ID)
	return s.nfsExport(e.Name), nil
}

// nfsExportable refuses the PEs whose data is not a disk.
func nfsExportable(id pe.ID) error {
	if err := nbdexport.DiskData(id); err != nil {
		return fmt.Errorf("NFS export of %s: %w", id, err)
	}
	return nil
}

// ResumeNFSExport serves again what a journal recorded, with the writes
// in its overlay.
func (s *Service) ResumeNFSExport(ctx context.Context, e NFSExport) error {
	if err := s.nfsServer(); err != nil {
		return err
	}
	p, err := s.snapshotPE(ctx, e.ID)
	if err != nil {
		return err
	}
	return s.openNFS(ctx, p, e, false)
}

// DiscardNFSExport deletes what is left of a recorded export that cannot
// come back (its snapshot is gone): its overlay and its clients' files.
func (s *Service) DiscardNFSExport(name string) error {
	if err := s.nfsServer(); err != nil {
		return err
	}
	if !validNFSName.MatchString(name) {
		return fmt.Errorf("NFS export %q: not a name of an NFS export", name)
	}
	s.mu.Lock()
	_, served := s.nfsDisks[name]
	s.mu.Unlock()
	if served {
		return fmt.Errorf("NFS export %s is served: %w", name, pe.ErrExists)
	}
	return errors.Join(overlay.Remove(filepath.Join(s.overlayDir, "nfs-"+name)), s.nfs.Discard(name))
}

// openNFS serves p as e over NFS through its overlay: a new one if
// create, else the one made before.
func (s *Service) openNFS(ctx context.Context, p pe.ProtectedEntity, e NFSExport, create bool) error {
	open := overlay.Open
	if create {
		open = overlay.Create
	}
	if !validNFSName.MatchString(e.Name) {
		return fmt.Errorf("NFS export %q: not a name of an NFS export", e.Name)
	}
	if err := nfsExportable(e.ID); err != nil {
		return err
	}
	// Like the NBD exports' overlays, under a directory made on first use.
	if err := os.MkdirAll(s.overlayDir, 0o700); err != nil {
		return fmt.Errorf("NFS export of %s: %w", e.ID, err)
	}
	base, err := p.Data(ctx)
	if err != nil {
		return fmt.Errorf("NFS export of %s: %w", e.ID, err)
	}
	ov, err := open(filepath.Join(s.overlayDir, "nfs-"+e.Name), base, nil, overlay.Options{Base: e.ID.String()})
	if err != nil {
		base.Close()
		return fmt.Errorf("NFS export of %s: %w", e.ID, err)
	}
	d := &nfsDisk{e: e, base: base, ov: ov}
	s.mu.Lock()
	if _, taken := s.nfsDisks[e.Name]; taken {
		s.mu.Unlock()
		// Names are random: not one this call made.
		return errors.Join(fmt.Errorf("NFS export %s: %w", e.Name, pe.ErrExists), d.close())
	}
	s.nfsDisks[e.Name] = d
	s.mu.Unlock()
	if err := s.nfs.Add(e.Name, ov); err != nil {
		s.mu.Lock()
		delete(s.nfsDisks, e.Name)
		s.mu.Unlock()
		if !errors.Is(err, nfsexport.ErrExists) {
			// A disk the NFS server cannot serve (its size): the
			// client's request, not the appliance, is wrong.
			err = fmt.Errorf("%w (%w)", err, pe.ErrInvalidSource)
		}
		err = errors.Join(fmt.Errorf("NFS export of %s: %w", e.ID, err), d.close())
		if create {
			// Nothing was written into a new one yet.
			err = errors.Join(err, overlay.Remove(ov.Dir()))
		}
		return err
	}
	return nil
}

// StopNFSExport stops serving the NFS export name and removes the files
// clients made in it. Its writes are discarded, unless keep: then the
// snapshot with them is first copied into a new PE of the snapshot's type,
// which is returned.
func (s *Service) StopNFSExport(ctx context.Context, name string, keep bool, progress pe.Progress) (pe.ID, error) {
	if vm := s.instantVMOf(name); vm != "" {
		return pe.ID{}, fmt.Errorf("NFS export %s is a disk of instant VM %s: migrate or stop the VM: %w", name, vm, pe.ErrExists)
	}
	return s.stopNFS(ctx, name, keep, progress)
}

// instantVMOf is the instant VM that runs on the NFS export name, if any.
func (s *Service) instantVMOf(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.instant {
		if slices.Contains(v.Disks, name) {
			return v.VM.Name
		}
	}
	return ""
}

func (s *Service) stopNFS(ctx context.Context, name string, keep bool, progress pe.Progress) (pe.ID, error) {
	if err := s.nfsServer(); err != nil {
		return pe.ID{}, err
	}
	// Claimed under the lock: a second stop must not close or remove
	// the overlay that the first one may still be copying.
	s.mu.Lock()
	d := s.nfsDisks[name]
	stopping := d != nil && d.stopping
	if d != nil {
		d.stopping = true
	}
	s.mu.Unlock()
	if d == nil {
		return pe.ID{}, fmt.Errorf("NFS export %q: %w", name, pe.ErrNotFound)
	}
	if stopping {
		return pe.ID{}, fmt.Errorf("NFS export %q is being stopped by another request: %w", name, pe.ErrExists)
	}
	var kept pe.ID
	if keep {
		p, err := s.keepOverlay(ctx, d.e.ID, d.ov, progress)
		if err != nil {
			s.mu.Lock()
			d.stopping = false // the export goes on, its writes in place
			s.mu.Unlock()
			return pe.ID{}, err
		}
		kept = p.ID()
	}
	s.mu.Lock()
	delete(s.nfsDisks, name)
	s.mu.Unlock()
	err := s.nfs.Remove(name)
	err = errors.Join(err, d.close(), overlay.Remove(d.ov.Dir()))
	if kept.IsZero() {
		s.log.Info("NFS export stopped", "export", name)
	} else {
		s.log.Info("NFS export stopped", "export", name, "writes kept in", kept)
	}
	return kept, errors.Join(err, s.journal.NFSExportStopped(name))
}

// keepOverlay copies snapshot id as ov reads it, with its writes, into a
// new PE of id's type.
func (s *Service) keepOverlay(ctx context.Context, id pe.ID, ov *overlay.Overlay, progress pe.Progress) (pe.ProtectedEntity, error) {
	tm, err := s.m.Type(ctx, id.Type())
	if err != nil {
		return nil, fmt.Errorf("keep the writes of %s: %w", id, err)
	}
	p, err := s.snapshotPE(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("keep the writes of %s: %w", id, err)
	}
	// Frozen first, as NBD's Keep does: the copy is the export as its
	// clients left it, not torn by writes landing while it is made.
	ov.Freeze()
	kept, err := func() (pe.ProtectedEntity, error) {
		if err := ov.Sync(); err != nil {
			return nil, err
		}
		return tm.Copy(ctx, overlay.Over(p, ov), pe.CopyOptions{Mode: pe.CreateNew, Progress: progress})
	}()
	if err != nil {
		ov.Thaw() // the export goes on
		return nil, fmt.Errorf("keep the writes of %s: %w", id, err)
	}
	return kept, nil
}

// closeNFS closes the NFS exports' overlays, keeping them for a restart.
func (s *Service) closeNFS() error {
	s.mu.Lock()
	disks := s.nfsDisks
	s.nfsDisks = map[string]*nfsDisk{}
	s.mu.Unlock()
	// The exports stay in the server, which is stopping: Remove would
	// delete the files clients made in them (a VM's), which a restart
	// serves again.
	var errs []error
	for _, d := range disks {
		errs = append(errs, d.close())
	}
	return errors.Join(errs...)
}

func (s *Service) nfsExport(name string) NFSExport {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.nfsDisks[name].e
	e.URL = s.nfsURL(e.Name)
	return e
}

func (s *Service) nfsURL(name string) string { return "nfs://" + s.nfsAddr + "/" + name }

var validNFSName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// nfsName names an NFS export after base (or fallback, if nothing of it
// is left): in the characters NFS names allow, with a random suffix (a
// snapshot may be exported twice).
func nfsName(base, fallback string) string {
	base = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, base)
	base = strings.TrimLeft(base, ".")
	if len(base) > 40 {
		base = base[:40]
	}
	var b [4]byte
	rand.Read(b[:])
	if base == "" {
		base = fallback
	}
	return base + "-" + hex.EncodeToString(b[:])
}

// snapshotPE is snapshot id of the configuration, or else of the
// repository.
func (s *Service) snapshotPE(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if s.repo == nil {
		return s.m.Get(ctx, id)
	}
	return pe.WithSnapshots(s.m, s.repo.Manager()).Get(ctx, id)
}

// exportable is the snapshot an export of id serves: a snapshot of the
// configuration or the repository as it is, a live PE snapshotted first.
func (s *Service) exportable(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.HasSnapshot() {
		return s.snapshotPE(ctx, id)
	}
	return s.Resolve(ctx, id)
}
