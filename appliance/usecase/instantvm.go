package usecase

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/vm"
)

// InstantDatastore is the name of the NFS datastore vSphere hosts mount
// the appliance's export "/" as, for instant VMs.
const InstantDatastore = "astrolabe-instant"

// InstantVM is a VM that runs from a backup: its disks are NFS exports of
// the backup's disks (copy-on-write), mounted on a vSphere host as
// InstantDatastore.
type InstantVM struct {
	ID    pe.ID // the VM's snapshot, in the repository or of vSphere
	VM    vm.InstantVM
	Disks []string // the NFS exports of its disks
}

// instantVMs are the VM type manager's instant operations.
type instantVMs interface {
	StartInstant(ctx context.Context, hw vm.Hardware, nas vm.NASDatastore, diskNames map[int32]string) (vm.InstantVM, error)
	MigrateInstant(ctx context.Context, v vm.InstantVM, datastore string) error
	StopInstant(ctx context.Context, v vm.InstantVM) error
}

func (s *Service) instantVMs(ctx context.Context) (instantVMs, error) {
	if err := s.nfsServer(); err != nil {
		return nil, err
	}
	tm, err := s.m.Type(ctx, vm.Type)
	if err != nil {
		return nil, fmt.Errorf("instant VMs need the vm type (pes/vm.pe.json): %w", err)
	}
	ivm, ok := tm.(instantVMs)
	if !ok {
		return nil, fmt.Errorf("instant VMs: the vm type cannot start them: %w", pe.ErrNotSupported)
	}
	return ivm, nil
}

// nasDatastore is the appliance's NFS export as vSphere hosts mount it.
func (s *Service) nasDatastore() (vm.NASDatastore, error) {
	host, _, err := net.SplitHostPort(s.nfsAddr)
	if err != nil {
		return vm.NASDatastore{}, fmt.Errorf("NFS address %q: %w", s.nfsAddr, err)
	}
	return vm.NASDatastore{Name: InstantDatastore, RemoteHost: host, RemotePath: "/"}, nil
}

// StartInstantVM boots VM snapshot id (a backup in the repository, or a
// vSphere snapshot) on vSphere without restoring it: each of its disks is
// exported over NFS through an overlay, the export is mounted as a
// datastore, and a VM with the snapshot's hardware is made on those disks
// and powered on. Migrate it to keep it, stop it to throw it away.
func (s *Service) StartInstantVM(ctx context.Context, id pe.ID) (InstantVM, error) {
	ivm, err := s.instantVMs(ctx)
	if err != nil {
		return InstantVM{}, err
	}
	nas, err := s.nasDatastore()
	if err != nil {
		return InstantVM{}, err
	}
	if id.Type() != vm.Type || !id.HasSnapshot() {
		return InstantVM{}, fmt.Errorf("instant VM of %s: not a VM snapshot (vm:UUID:SNAPSHOT): %w", id, pe.ErrNotSupported)
	}
	p, err := s.snapshotPE(ctx, id)
	if err != nil {
		return InstantVM{}, err
	}
	hw, disks, err := vm.ReadHardware(ctx, p)
	if err != nil {
		return InstantVM{}, fmt.Errorf("instant VM of %s: %w", id, err)
	}
	out := InstantVM{ID: id}
	names := map[int32]string{}
	stopDisks := func() error {
		var errs []error
		for _, name := range out.Disks {
			_, err := s.stopNFS(context.WithoutCancel(ctx), name, false, nil)
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	keys := make([]int32, 0, len(disks))
	for k := range disks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		d := disks[k]
		e := NFSExport{ID: d.ID(), Name: nfsName(hw.Name+"-disk"+strconv.Itoa(int(k)), vm.Type)}
		if err := s.openNFS(ctx, d, e, true); err != nil {
			return InstantVM{}, errors.Join(fmt.Errorf("instant VM of %s: disk %d: %w", id, k, err), stopDisks())
		}
		out.Disks = append(out.Disks, e.Name)
		names[k] = e.Name
		if err := s.journal.NFSExportStarted(e); err != nil {
			return InstantVM{}, errors.Join(err, stopDisks())
		}
	}
	if out.VM, err = ivm.StartInstant(ctx, hw, nas, names); err != nil {
		return InstantVM{}, errors.Join(err, stopDisks())
	}
	s.mu.Lock()
	s.instant[out.VM.Name] = out
	s.mu.Unlock()
	if err := s.journal.InstantVMStarted(out); err != nil {
		// The VM runs and can be stopped or migrated; only the record
		// is missing: say so.
		return out, fmt.Errorf("instant VM %s runs, but was not recorded (a restart forgets it): %w", out.VM.Name, err)
	}
	s.log.Info("instant VM started", "snapshot", id, "vm", out.VM.Name, "disks", out.Disks)
	return out, nil
}

// InstantVMs lists the instant VMs by name.
func (s *Service) InstantVMs() []InstantVM {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]InstantVM, 0, len(s.instant))
	for _, v := range s.instant {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b InstantVM) int { return strings.Compare(a.VM.Name, b.VM.Name) })
	return out
}

// instantVM is instant VM name and the vm type that runs it.
func (s *Service) instantVM(ctx context.Context, name string) (instantVMs, InstantVM, error) {
	if err := s.nfsServer(); err != nil {
		return nil, InstantVM{}, err
	}
	s.mu.Lock()
	v, ok := s.instant[name]
	s.mu.Unlock()
	if !ok {
		return nil, InstantVM{}, fmt.Errorf("no instant VM %q: %w", name, pe.ErrNotFound)
	}
	ivm, err := s.instantVMs(ctx)
	return ivm, v, err
}

// MigrateInstantVM moves instant VM name onto datastore (the vm type's
// restore datastore if empty) while it runs, then lets the NFS exports of
// its disks go: the VM is an ordinary one.
func (s *Service) MigrateInstantVM(ctx context.Context, name, datastore string) error {
	ivm, v, err := s.instantVM(ctx, name)
	if err != nil {
		return err
	}
	if err := ivm.MigrateInstant(ctx, v.VM, datastore); err != nil {
		return err
	}
	s.log.Info("instant VM migrated", "vm", name, "datastore", datastore)
	return s.endInstantVM(ctx, ivm, v)
}

// StopInstantVM powers instant VM name off and removes it (a migrated one
// stays), unmounts the datastore where no VM uses it any more, and
// discards its disks' NFS exports with their writes.
func (s *Service) StopInstantVM(ctx context.Context, name string) error {
	ivm, v, err := s.instantVM(ctx, name)
	if err != nil {
		return err
	}
	return s.endInstantVM(ctx, ivm, v)
}

func (s *Service) endInstantVM(ctx context.Context, ivm instantVMs, v InstantVM) error {
	if err := ivm.StopInstant(ctx, v.VM); err != nil {
		return err
	}
	var errs []error
	for _, name := range v.Disks {
		if _, err := s.stopNFS(ctx, name, false, nil); err != nil && !errors.Is(err, pe.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	delete(s.instant, v.VM.Name)
	s.mu.Unlock()
	errs = append(errs, s.journal.InstantVMStopped(v.VM.Name))
	s.log.Info("instant VM stopped", "vm", v.VM.Name)
	return errors.Join(errs...)
}

// ResumeInstantVM takes up again an instant VM a journal recorded; its
// disks' NFS exports are resumed on their own (ResumeNFSExport).
func (s *Service) ResumeInstantVM(v InstantVM) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instant[v.VM.Name] = v
}
