package nbdexport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/overlay"
)

// syncEvery is how often writable exports sync what clients did not
// flush: a killed appliance loses at most that much of it.
const syncEvery = 5 * time.Second

// DiskData refuses, for writable exports (NBD or NFS), the PEs whose data
// is not a disk: an fs PE's is a tar stream laid out for reading, and
// written blocks would make no tree anyone could restore.
func DiskData(id pe.ID) error {
	if id.Type() == "fs" {
		return fmt.Errorf("the data of fs PEs is a tar stream, not a disk: export it read-only or mount it: %w", pe.ErrNotSupported)
	}
	return nil
}

// AddWritable exports snapshot id writable at once: reads come from the
// snapshot, writes land in a new overlay, under a name of WritableName. A
// snapshot that is exported already, or being exported, is refused
// (pe.ErrExists).
func (s *Source) AddWritable(ctx context.Context, id pe.ID) (Export, error) {
	if err := s.reserve(id); err != nil {
		return Export{}, err
	}
	defer s.unreserve(id)
	name := WritableName(id)
	ov, err := s.openOverlay(ctx, id, token(id, name), overlay.Create)
	if err != nil {
		return Export{}, err
	}
	e := entry{id: id, name: name, ov: ov}
	if err := s.add(e, true); err != nil {
		return Export{}, errors.Join(err, ov.release(true))
	}
	return e.export(), nil
}

// ResumeWritable exports snapshot id writable again under name, with the
// overlay AddWritable made for it and the writes in it: an appliance
// restarting restores its exports so.
func (s *Source) ResumeWritable(ctx context.Context, id pe.ID, name string) (Export, error) {
	t := token(id, name)
	if t == "" {
		return Export{}, fmt.Errorf("export %s: name %q is not one of WritableName", id, name)
	}
	if err := s.reserve(id); err != nil {
		return Export{}, err
	}
	defer s.unreserve(id)
	ov, err := s.openOverlay(ctx, id, t, overlay.Open)
	if err != nil {
		return Export{}, err
	}
	e := entry{id: id, name: name, ov: ov}
	if err := s.add(e, true); err != nil {
		return Export{}, errors.Join(err, ov.release(false))
	}
	return e.export(), nil
}

// openOverlay opens snapshot id's data and, over it, the overlay of token
// with open (overlay.Create or overlay.Open).
func (s *Source) openOverlay(ctx context.Context, id pe.ID, token string, open func(string, pe.Image, pe.WritableImage, overlay.Options) (*overlay.Overlay, error)) (*shared, error) {
	if s.overlays == "" {
		return nil, fmt.Errorf("export %s writable: no directory for overlays configured: %w", id, pe.ErrNotSupported)
	}
	if err := DiskData(id); err != nil {
		return nil, fmt.Errorf("export %s writable: %w", id, err)
	}
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", id, err)
	}
	base, err := p.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", id, err)
	}
	if err := os.MkdirAll(s.overlays, 0o700); err != nil {
		base.Close()
		return nil, fmt.Errorf("export %s writable: %w", id, err)
	}
	ov, err := open(filepath.Join(s.overlays, token), base, nil, overlay.Options{SyncEvery: syncEvery, Base: id.String()})
	if err != nil {
		base.Close()
		return nil, fmt.Errorf("export %s writable: %w", id, err)
	}
	return &shared{p: p, base: base, ov: ov, refs: 1}, nil
}

// Keep copies writable export id, the snapshot with the writes made to
// it, into a new PE made by tm (pe.CreateNew) and returns it. Writes are
// refused from then on, so that the copy is the export as its clients
// left it (a write under way when Keep starts ends first): stop the export
// next. A Keep that fails lets writes go on.
func (s *Source) Keep(ctx context.Context, id pe.ID, tm pe.TypeManager, progress pe.Progress) (pe.ProtectedEntity, error) {
	s.mu.Lock()
	e, ok := s.lookupID(id)
	var ov *shared
	if ok && e.ov != nil && !e.live && e.ov.acquire() {
		ov = e.ov
	}
	s.mu.Unlock()
	if ov == nil {
		return nil, fmt.Errorf("keep the writes of %s: no writable export of it with an overlay: %w", id, pe.ErrNotFound)
	}
	defer ov.release(false)
	ov.ov.Freeze()
	kept, err := func() (pe.ProtectedEntity, error) {
		if err := ov.ov.Sync(); err != nil {
			return nil, err
		}
		return tm.Copy(ctx, overlay.Over(ov.p, ov.ov), pe.CopyOptions{Mode: pe.CreateNew, Progress: progress})
	}()
	if err != nil {
		ov.ov.Thaw()
		return nil, fmt.Errorf("keep the writes of %s: %w", id, err)
	}
	return kept, nil
}

// Close closes the overlays of all writable exports, keeping them (and
// their writes) for ResumeWritable; for a server that is shutting down.
func (s *Source) Close() error {
	s.mu.Lock()
	entries := s.entries
	s.entries = nil
	s.mu.Unlock()
	var errs []error
	for _, e := range entries {
		if e.ov != nil {
			errs = append(errs, e.ov.release(false))
		}
	}
	return errors.Join(errs...)
}

// shared is a writable export's overlay, open while the export exists or
// a client or a Keep uses it: each holds a reference.
type shared struct {
	p     pe.ProtectedEntity // the snapshot
	base  pe.Image
	ov    *overlay.Overlay
	layer pe.WritableImage // a live restore's target, closed with the overlay; nil for others

	mu      sync.Mutex
	refs    int
	discard bool // remove the overlay once the last reference goes
}

// acquire takes a reference, unless the last one is gone.
func (sh *shared) acquire() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.refs == 0 {
		return false
	}
	sh.refs++
	return true
}

// release drops a reference; discard marks the overlay to be removed with
// the last one. The last one closes it.
func (sh *shared) release(discard bool) error {
	sh.mu.Lock()
	sh.discard = sh.discard || discard
	sh.refs--
	last, remove := sh.refs == 0, sh.discard
	sh.mu.Unlock()
	if !last {
		return nil
	}
	err := errors.Join(sh.ov.Close(), sh.base.Close())
	if sh.layer != nil {
		err = errors.Join(err, sh.layer.Close())
	}
	if remove {
		err = errors.Join(err, overlay.Remove(sh.ov.Dir()))
	}
	return err
}

// open is a client's connection to the export.
func (sh *shared) open(read *atomic.Int64) (nbd.Export, error) {
	if !sh.acquire() {
		return nil, nbd.ErrUnknownExport
	}
	var once sync.Once
	var err error
	return writableExport{export{sh.ov.Borrowed(), read}, sh.ov, func() error {
		once.Do(func() { err = sh.release(false) })
		return err
	}}, nil
}
