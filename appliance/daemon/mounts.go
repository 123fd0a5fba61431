package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
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
	// root is the directory API mounts must be under.
	root string

	mu     sync.Mutex
	mounts map[string]*mounted
}

type mounted struct {
	rest.Mount
	srv *fuse.Server
}

var _ rest.Mounts = (*mountService)(nil)

// newMountService makes the mount root (0755: users that allowOther
// mounts serve must reach them) and returns the service.
func newMountService(m pe.Manager, st *state, log *slog.Logger, root string) (*mountService, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("mount root: %w", err)
	}
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return nil, fmt.Errorf("mount root: %w", err)
	}
	return &mountService{m: m, state: st, log: log, root: root, mounts: map[string]*mounted{}}, nil
}

// restore mounts again what the state records, under the rules of API
// mounts; a mount that fails is logged and dropped.
func (s *mountService) restore() error {
	var keep []mountState
	for _, ms := range s.state.snapshot().Mounts {
		err := s.checkPath(ms.Path, ms.Path, ms.Force)
		if err == nil {
			err = s.mount(ms.ID, ms.Path, ms.AllowOther)
		}
		if err != nil {
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

// Start mounts the tree for the API: only under the mount root, into a
// directory that is made if missing and must be empty unless req.Force.
func (s *mountService) Start(ctx context.Context, req rest.MountRequest) (rest.Mount, error) {
	path, err := s.apiPath(req.Path)
	if err != nil {
		return rest.Mount{}, err
	}
	if err := s.checkPath(path, req.Path, req.Force); err != nil {
		return rest.Mount{}, err
	}
	var b [6]byte
	rand.Read(b[:])
	id := "mount-" + hex.EncodeToString(b[:])
	if err := s.mount(id, path, req.AllowOther); err != nil {
		return rest.Mount{}, fmt.Errorf("mount %s: %w (%w)", req.Path, err, pe.ErrInvalidSource)
	}
	if req.Force {
		s.log.Warn("FUSE mount over a directory that was not empty, at the API's request", "path", path)
	}
	s.mu.Lock()
	m := s.mounts[id].Mount
	s.mu.Unlock()
	err = s.state.update(func(d *stateData) {
		d.Mounts = append(d.Mounts, mountState{ID: id, Path: m.Path, AllowOther: req.AllowOther, Force: req.Force})
	})
	return m, err
}

// apiPath resolves a path asked for by the API: absolute, or relative to
// the mount root; strictly under the root, which it is made in.
// Messages name the path as the client gave it: the root is not theirs to
// learn.
func (s *mountService) apiPath(asked string) (string, error) {
	p := asked
	if !filepath.IsAbs(p) {
		p = filepath.Join(s.root, p)
	}
	p = filepath.Clean(p)
	if !under(p, s.root) {
		return "", fmt.Errorf("mount %s: API mounts must be under the appliance's mount root (serve --mount-root): %w", asked, pe.ErrInvalidSource)
	}
	// A symlink inside the root must not lead out of it: check the part
	// that exists before making the rest.
	if !s.resolvesUnder(p) {
		return "", fmt.Errorf("mount %s: leads out of the mount root: %w", asked, pe.ErrInvalidSource)
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", fmt.Errorf("mount %s: cannot make the directory: %s: %w", asked, redact.Error(err), pe.ErrInvalidSource)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil || !under(real, s.root) {
		return "", fmt.Errorf("mount %s: leads out of the mount root: %w", asked, pe.ErrInvalidSource)
	}
	return real, nil
}

// resolvesUnder reports whether the longest existing prefix of p, with its
// symlinks resolved, is the root or under it.
func (s *mountService) resolvesUnder(p string) bool {
	for q := p; ; q = filepath.Dir(q) {
		real, err := filepath.EvalSymlinks(q)
		if err == nil {
			return real == s.root || under(real, s.root)
		}
		if !errors.Is(err, os.ErrNotExist) || q == filepath.Dir(q) {
			return false
		}
	}
}

// checkPath refuses a mountpoint outside the root, or one that is not an
// empty directory unless force: a mount would hide what is there.
func (s *mountService) checkPath(p, shown string, force bool) error {
	if !under(p, s.root) {
		return fmt.Errorf("mount %s: API mounts must be under the appliance's mount root (serve --mount-root): %w", shown, pe.ErrInvalidSource)
	}
	if force {
		return nil
	}
	d, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("mount %s: %s: %w", shown, redact.Error(err), pe.ErrInvalidSource)
	}
	defer d.Close()
	if _, err := d.Readdirnames(1); !errors.Is(err, io.EOF) {
		return fmt.Errorf("mount %s: the directory is not empty (a mount would hide its content; set force to mount anyway): %w", shown, pe.ErrInvalidSource)
	}
	return nil
}

// under reports whether p is strictly inside dir (both clean, absolute).
func under(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
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
