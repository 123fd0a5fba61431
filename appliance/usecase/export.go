package usecase

import (
	"context"
	"errors"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Export is one NBD export.
type Export struct {
	ID       pe.ID  // the snapshot exported
	Name     string // the NBD export name
	URI      string // where clients reach it
	Writable bool
	Target   pe.ID // where writes land, for writable exports
}

func (s *Service) describe(x nbdexport.Export) Export {
	w := !x.Target.IsZero()
	return Export{ID: x.ID, Name: x.Name, URI: s.exportURI(x.Name, w), Writable: w, Target: x.Target}
}

func (s *Service) exportSource() (*nbdexport.Source, error) {
	if s.exports == nil {
		return nil, notConfigured("NBD")
	}
	return s.exports, nil
}

// Exports lists the NBD exports in the order they were started.
func (s *Service) Exports() []Export {
	var out []Export
	if s.exports != nil {
		for _, x := range s.exports.Exports() {
			out = append(out, s.describe(x))
		}
	}
	return out
}

// StartExport exports the PE id names over NBD, snapshotting a live PE
// first (Resolve). A writable export is a restore target: the snapshot is
// first copied into a new PE, with progress, and writes land there.
func (s *Service) StartExport(ctx context.Context, id pe.ID, writable bool, progress pe.Progress) (Export, error) {
	src, err := s.exportSource()
	if err != nil {
		return Export{}, err
	}
	p, err := s.Resolve(ctx, id)
	if err != nil {
		return Export{}, err
	}
	id = p.ID()
	x := nbdexport.Export{ID: id, Name: id.String()}
	if writable {
		x, err = src.AddWritable(ctx, id, progress)
	} else {
		err = src.Add(id)
	}
	if err != nil {
		return Export{}, err
	}
	e := s.describe(x)
	if err := s.journal.ExportStarted(e); err != nil {
		src.Remove(id)
		if writable {
			// The client may be gone; the copy must not be left behind.
			err = errors.Join(err, src.Discard(context.WithoutCancel(ctx), x.Target))
		}
		return Export{}, err
	}
	s.log.Info("NBD export started", "export", id, "target", x.Target)
	return e, nil
}

// ResumeExport exports again what a journal recorded, under the same
// name; a writable export into its existing target.
func (s *Service) ResumeExport(ctx context.Context, e Export) (Export, error) {
	src, err := s.exportSource()
	if err != nil {
		return Export{}, err
	}
	if _, err := s.m.Get(ctx, e.ID); err != nil {
		return Export{}, err
	}
	if e.Target.IsZero() {
		return s.describe(nbdexport.Export{ID: e.ID, Name: e.ID.String()}), src.Add(e.ID)
	}
	if e.Name == "" {
		// Recorded before writable exports had secret names: the old
		// name was guessable, so the export gets a new one.
		s.log.Warn("NBD writable export renamed: its name had no token", "export", e.ID)
	}
	x, err := src.AddTarget(e.ID, e.Target, e.Name)
	return s.describe(x), err
}

// StopExport stops exporting id; connected clients keep their export
// open until they disconnect.
func (s *Service) StopExport(ctx context.Context, id pe.ID) error {
	src, err := s.exportSource()
	if err != nil {
		return err
	}
	if err := src.Remove(id); err != nil {
		return err
	}
	s.log.Info("NBD export stopped", "export", id)
	return s.journal.ExportStopped(id)
}

// ExportTransports advertises, for a PE's info, the NBD URI of a snapshot
// exported read-only; a writable export's name is told only to who
// started it.
func (s *Service) ExportTransports(id pe.ID) []pe.Transport {
	for _, e := range s.Exports() {
		if e.ID == id && !e.Writable {
			return []pe.Transport{{Type: "nbd", Params: map[string]string{"url": e.URI}}}
		}
	}
	return nil
}
