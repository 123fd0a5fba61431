package nbdexport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/overlay"
)

// Live is the export of a live restore: its target PE is filled from the
// snapshot in the background while clients use it already. Reads of
// blocks the target lacks come from the snapshot (and are filled next),
// writes land in the target.
type Live struct {
	src *Source
	id  pe.ID
	sh  *shared
	h   *overlay.Hydration
}

// AddLive exports target, a live PE of snapshot p's size that reads as
// zeros (just made), as a live restore of p under a new name of
// WritableName. ResumeLive takes it up again after a restart.
func (s *Source) AddLive(ctx context.Context, p pe.ProtectedEntity, target pe.ID) (Export, *Live, error) {
	return s.addLive(ctx, p, target, WritableName(p.ID()), overlay.Create)
}

// ResumeLive exports again, under name, the live restore of p into target
// that AddLive started, with what it filled and what clients wrote.
func (s *Source) ResumeLive(ctx context.Context, p pe.ProtectedEntity, target pe.ID, name string) (Export, *Live, error) {
	return s.addLive(ctx, p, target, name, overlay.Open)
}

func (s *Source) addLive(ctx context.Context, p pe.ProtectedEntity, target pe.ID, name string, open func(string, pe.Image, pe.WritableImage, overlay.Options) (*overlay.Overlay, error)) (Export, *Live, error) {
	id := p.ID()
	t := token(id, name)
	switch {
	case t == "":
		return Export{}, nil, fmt.Errorf("live restore of %s: name %q is not one of WritableName", id, name)
	case s.overlays == "":
		return Export{}, nil, fmt.Errorf("live restore of %s: no directory for overlays configured: %w", id, pe.ErrNotSupported)
	case target.IsZero() || target.HasSnapshot():
		return Export{}, nil, fmt.Errorf("live restore of %s: target %s is not a live PE", id, target)
	}
	if err := s.reserve(id); err != nil {
		return Export{}, nil, err
	}
	defer s.unreserve(id)
	tp, err := s.m.Get(ctx, target)
	if err != nil {
		return Export{}, nil, fmt.Errorf("live restore of %s: %w", id, err)
	}
	dw, ok := tp.(pe.DataWriter)
	if !ok {
		return Export{}, nil, fmt.Errorf("live restore of %s: %s PEs cannot be written in place: %w", id, target.Type(), pe.ErrNotSupported)
	}
	layer, err := dw.WritableData(ctx)
	if err != nil {
		return Export{}, nil, fmt.Errorf("live restore of %s: %w", id, err)
	}
	base, err := p.Data(ctx)
	if err != nil {
		layer.Close()
		return Export{}, nil, fmt.Errorf("live restore of %s: %w", id, err)
	}
	fail := func(err error) (Export, *Live, error) {
		return Export{}, nil, errors.Join(fmt.Errorf("live restore of %s into %s: %w", id, target, err), base.Close(), layer.Close())
	}
	if err := os.MkdirAll(s.overlays, 0o700); err != nil {
		return fail(err)
	}
	h := overlay.NewHydration()
	ov, err := open(filepath.Join(s.overlays, t), base, layer, overlay.Options{OnMiss: h.Miss, SyncEvery: syncEvery, Base: id.String()})
	if err != nil {
		return fail(err)
	}
	sh := &shared{p: p, base: base, ov: ov, layer: layer, refs: 1}
	e := entry{id: id, name: name, ov: sh, target: target, live: true}
	if err := s.add(e, true); err != nil {
		return Export{}, nil, errors.Join(err, sh.release(false))
	}
	return e.export(), &Live{src: s, id: id, sh: sh, h: h}, nil
}

// Run fills the target until it holds the whole snapshot, then serves
// the export from the target alone: clients connected stay connected.
// When ctx ends first it returns ctx's error, and what was filled stays
// for ResumeLive; another error stops the fill but not the export. Once
// the caller has recorded that the restore is done, Done lets the
// overlay go.
func (l *Live) Run(ctx context.Context, progress pe.Progress) error {
	if err := l.h.Run(ctx, l.sh.ov, true, progress); err != nil {
		return fmt.Errorf("live restore of %s: %w", l.id, err)
	}
	return l.src.settle(l)
}

// Done removes the overlay of a settled live restore once its last
// client is gone. Until then a restart resumes the restore from it (and
// finds it full).
func (l *Live) Done() error { return l.sh.release(true) }

// settle turns the export of a filled live restore into one of its
// target; the overlay stays until Done.
func (s *Source) settle(l *Live) error {
	s.mu.Lock()
	found := false
	for i, e := range s.entries {
		if e.ov == l.sh {
			s.entries[i] = entry{id: e.id, name: e.name, target: e.target}
			found = true
			break
		}
	}
	s.mu.Unlock()
	if !found {
		return fmt.Errorf("live restore of %s: its export is gone", l.id)
	}
	return nil
}

// Abort stops a live restore that has not settled: the export goes, and
// the overlay with it once its last client is gone; the caller removes
// the target, which holds only part of the snapshot.
func (l *Live) Abort() error {
	s := l.src
	s.mu.Lock()
	found := false
	for i, e := range s.entries {
		if e.ov == l.sh {
			s.entries = append(s.entries[:i], s.entries[i+1:]...)
			found = true
			break
		}
	}
	s.mu.Unlock()
	if !found {
		return nil
	}
	return l.sh.release(true)
}
