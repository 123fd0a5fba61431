package usecase

import (
	"context"
	"errors"
	"fmt"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Export is one NBD export.
type Export struct {
	ID       pe.ID  // the snapshot exported
	Name     string // the NBD export name
	URI      string // where clients reach it
	Writable bool
	// Target is where the writes land of an instant restore, or of a
	// writable export made before exports had overlays; zero for all
	// others.
	Target pe.ID
	// Live says Target is being filled from the snapshot (an instant
	// restore under way).
	Live bool
	// Task is the ID of the task that fills a live restore's Target,
	// recorded so that it stays the same across restarts.
	Task string
}

func (s *Service) describe(x nbdexport.Export) Export {
	return Export{ID: x.ID, Name: x.Name, URI: s.exportURI(x.Name, x.Writable), Writable: x.Writable, Target: x.Target, Live: x.Live}
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
// first (Resolve). A writable export serves the snapshot at once; its
// writes land in an overlay (StopExport discards them or keeps them as a
// new PE).
func (s *Service) StartExport(ctx context.Context, id pe.ID, writable bool) (Export, error) {
	src, err := s.exportSource()
	if err != nil {
		return Export{}, err
	}
	p, err := s.exportable(ctx, id)
	if err != nil {
		return Export{}, err
	}
	id = p.ID()
	x := nbdexport.Export{ID: id, Name: id.String()}
	if writable {
		x, err = src.AddWritable(ctx, id)
	} else {
		err = src.Add(id)
	}
	if err != nil {
		return Export{}, err
	}
	e := s.describe(x)
	if err := s.journal.ExportStarted(e); err != nil {
		// Removing a writable export removes its overlay too.
		return Export{}, errors.Join(err, src.Remove(id))
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
	switch {
	case e.Live:
		// Its snapshot is in the repository.
		return s.resumeInstant(ctx, src, e)
	case !e.Target.IsZero():
		// What it serves is the target (its snapshot may be one in the
		// repository that an instant restore filled it from).
		if _, err := s.m.Get(ctx, e.Target); err != nil {
			return Export{}, err
		}
		if e.Name == "" {
			// Recorded before writable exports had secret names: the
			// old name was guessable, so the export gets a new one.
			s.log.Warn("NBD writable export renamed: its name had no token", "export", e.ID)
		}
		x, err := src.AddTarget(e.ID, e.Target, e.Name)
		return s.describe(x), err
	}
	if _, err := s.snapshotPE(ctx, e.ID); err != nil {
		return Export{}, err
	}
	if e.Writable {
		x, err := src.ResumeWritable(ctx, e.ID, e.Name)
		return s.describe(x), err
	}
	return s.describe(nbdexport.Export{ID: e.ID, Name: e.ID.String()}), src.Add(e.ID)
}

// StopExport stops exporting id; connected clients keep their export
// open until they disconnect. A writable export's writes are discarded
// with its overlay, unless keep: then the snapshot with them is first
// copied into a new PE of the snapshot's type among the configured ones,
// which is returned.
func (s *Service) StopExport(ctx context.Context, id pe.ID, keep bool, progress pe.Progress) (pe.ID, error) {
	src, err := s.exportSource()
	if err != nil {
		return pe.ID{}, err
	}
	var kept pe.ID
	if keep {
		tm, err := s.m.Type(ctx, id.Type())
		if err != nil {
			return pe.ID{}, fmt.Errorf("keep the writes of %s: %w", id, err)
		}
		p, err := s.KeepWrites(ctx, id, tm, progress)
		if err != nil {
			return pe.ID{}, err
		}
		kept = p.ID()
	}
	if err := src.Remove(id); err != nil {
		return kept, err
	}
	s.log.Info("NBD export stopped", "export", id)
	return kept, s.journal.ExportStopped(id)
}

// KeepWrites copies writable export id as it reads now, the snapshot with
// the writes made so far, into a new PE made by tm, and returns it. The
// export goes on.
func (s *Service) KeepWrites(ctx context.Context, id pe.ID, tm pe.TypeManager, progress pe.Progress) (pe.ProtectedEntity, error) {
	src, err := s.exportSource()
	if err != nil {
		return nil, err
	}
	p, err := src.Keep(ctx, id, tm, progress)
	if err != nil {
		return nil, err
	}
	s.log.Info("NBD export's writes kept", "export", id, "pe", p.ID())
	return p, nil
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
