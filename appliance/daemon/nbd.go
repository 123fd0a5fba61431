package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// nbdService starts and stops NBD exports for the API and records them.
type nbdService struct {
	m     pe.Manager
	src   *nbdexport.Source
	base  string // nbd://host:port
	state *state
	log   *slog.Logger
}

var _ rest.Exports = (*nbdService)(nil)

// restore re-adds the exports recorded in the state. One that cannot come
// back (its snapshot was deleted) is logged and dropped, not fatal.
func (s *nbdService) restore(ctx context.Context) error {
	var keep []exportState
	for _, e := range s.state.snapshot().Exports {
		if err := s.readd(ctx, e); err != nil {
			s.log.Warn("NBD export not restored", "export", e.ID, "err", err)
			continue
		}
		keep = append(keep, e)
	}
	return s.state.update(func(d *stateData) { d.Exports = keep })
}

func (s *nbdService) readd(ctx context.Context, e exportState) error {
	id, err := pe.ParseID(e.ID)
	if err != nil {
		return err
	}
	if _, err := s.m.Get(ctx, id); err != nil {
		return err
	}
	if e.Target == "" {
		return s.src.Add(id)
	}
	target, err := pe.ParseID(e.Target)
	if err != nil {
		return err
	}
	return s.src.AddTarget(id, target)
}

func (s *nbdService) List() []rest.NBDExport {
	var out []rest.NBDExport
	for _, e := range s.src.Exports() {
		out = append(out, s.describe(e.ID, e.Target))
	}
	return out
}

func (s *nbdService) describe(id, target pe.ID) rest.NBDExport {
	return rest.NBDExport{ID: id, URI: s.base + "/" + id.String(), Writable: !target.IsZero(), Target: target}
}

// Start exports id, snapshotting a live PE first.
func (s *nbdService) Start(ctx context.Context, id pe.ID, writable bool) (rest.NBDExport, error) {
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return rest.NBDExport{}, err
	}
	if !id.HasSnapshot() {
		if id, err = p.Snapshot(ctx, nil); err != nil {
			return rest.NBDExport{}, fmt.Errorf("snapshot %s: %w", p.ID(), err)
		}
	}
	var target pe.ID
	if writable {
		target, err = s.src.AddWritable(ctx, id, nil)
	} else {
		err = s.src.Add(id)
	}
	if err != nil {
		return rest.NBDExport{}, err
	}
	rec := exportState{ID: id.String()}
	if !target.IsZero() {
		rec.Target = target.String()
	}
	if err := s.state.update(func(d *stateData) { d.Exports = append(d.Exports, rec) }); err != nil {
		s.src.Remove(id)
		return rest.NBDExport{}, err
	}
	s.log.Info("NBD export started", "export", id, "target", target)
	return s.describe(id, target), nil
}

func (s *nbdService) Stop(ctx context.Context, id pe.ID) error {
	if err := s.src.Remove(id); err != nil {
		return err
	}
	s.log.Info("NBD export stopped", "export", id)
	return s.state.update(func(d *stateData) {
		keep := d.Exports[:0]
		for _, e := range d.Exports {
			if e.ID != id.String() {
				keep = append(keep, e)
			}
		}
		d.Exports = keep
	})
}

// transports advertises the NBD URI of an exported snapshot in its info.
func (s *nbdService) transports(id pe.ID) []pe.Transport {
	for _, e := range s.src.Exports() {
		if e.ID == id {
			return []pe.Transport{{Type: "nbd", Params: map[string]string{"url": s.base + "/" + id.String()}}}
		}
	}
	return nil
}
