package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/fusefs"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// mountService starts and stops FUSE mounts of the PE tree for the API and
// records them.
type mountService struct {
	m     pe.Manager
	state *state
	log   *slog.Logger

	mu     sync.Mutex
	mounts map[string]*mounted
}

type mounted struct {
	rest.Mount
	srv *fuse.Server
}

var _ rest.Mounts = (*mountService)(nil)

func newMountService(m pe.Manager, st *state, log *slog.Logger) *mountService {
	return &mountService{m: m, state: st, log: log, mounts: map[string]*mounted{}}
}

// restore mounts again what the state records; a mount that fails is
// logged and dropped.
func (s *mountService) restore() error {
	var keep []mountState
	for _, ms := range s.state.snapshot().Mounts {
		if err := s.mount(ms.ID, ms.Path, ms.AllowOther); err != nil {
			s.log.Warn("FUSE mount not restored", "path", ms.Path, "err", err)
			continue
		}
		keep = append(keep, ms)
	}
	return s.state.update(func(d *stateData) { d.Mounts = keep })
}

func (s *mountService) mount(id, path string, allowOther bool) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	srv, err := fusefs.Mount(s.m, abs, fusefs.Options{Logger: s.log, AllowOther: allowOther})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.mounts[id] = &mounted{rest.Mount{ID: id, Path: abs, AllowOther: allowOther}, srv}
	s.mu.Unlock()
	s.log.Info("FUSE mount started", "path", abs)
	return nil
}

func (s *mountService) List() []rest.Mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]rest.Mount, 0, len(s.mounts))
	for _, m := range s.mounts {
		out = append(out, m.Mount)
	}
	return out
}

func (s *mountService) Start(ctx context.Context, path string, allowOther bool) (rest.Mount, error) {
	var b [6]byte
	rand.Read(b[:])
	id := "mount-" + hex.EncodeToString(b[:])
	if err := s.mount(id, path, allowOther); err != nil {
		return rest.Mount{}, fmt.Errorf("mount %s: %w (%w)", path, err, pe.ErrInvalidSource)
	}
	s.mu.Lock()
	m := s.mounts[id].Mount
	s.mu.Unlock()
	err := s.state.update(func(d *stateData) {
		d.Mounts = append(d.Mounts, mountState{ID: id, Path: m.Path, AllowOther: allowOther})
	})
	return m, err
}

func (s *mountService) Stop(ctx context.Context, id string) error {
	s.mu.Lock()
	m := s.mounts[id]
	delete(s.mounts, id)
	s.mu.Unlock()
	if m == nil {
		return fmt.Errorf("mount %q: %w", id, pe.ErrNotFound)
	}
	if err := s.unmount(m); err != nil {
		return err
	}
	return s.state.update(func(d *stateData) {
		keep := d.Mounts[:0]
		for _, ms := range d.Mounts {
			if ms.ID != id {
				keep = append(keep, ms)
			}
		}
		d.Mounts = keep
	})
}

func (s *mountService) unmount(m *mounted) error {
	if err := fusefs.Unmount(m.srv, m.Path); err != nil {
		return err
	}
	m.srv.Wait()
	s.log.Info("FUSE mount stopped", "path", m.Path)
	return nil
}

// close unmounts everything at shutdown but keeps the state, so that the
// mounts come back with the next start.
func (s *mountService) close() error {
	s.mu.Lock()
	ms := make([]*mounted, 0, len(s.mounts))
	for id, m := range s.mounts {
		ms = append(ms, m)
		delete(s.mounts, id)
	}
	s.mu.Unlock()
	var first error
	for _, m := range ms {
		if err := s.unmount(m); err != nil && first == nil {
			first = err
		}
	}
	return first
}
