package usecase

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
	"github.com/astrolabe-appliance/astrolabe/fusefs"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Mount is one FUSE mount of the PE tree.
type Mount struct {
	ID         string
	Path       string
	AllowOther bool
	// Force mounted over a directory that was not empty.
	Force bool
}

// MountRequest asks for a FUSE mount under the mount root.
type MountRequest struct {
	Path       string
	AllowOther bool
	// Force mounts over a directory that is not empty.
	Force bool
}

type mounted struct {
	Mount
	srv *fuse.Server
}

// Mounts lists the FUSE mounts.
func (s *Service) Mounts() []Mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Mount, 0, len(s.mounts))
	for _, m := range s.mounts {
		out = append(out, m.Mount)
	}
	return out
}

// Mount mounts the PE tree as a client asked: only under the mount root,
// into a directory that is made if missing and must be empty unless
// req.Force.
func (s *Service) Mount(ctx context.Context, req MountRequest) (Mount, error) {
	if s.mountRoot == "" {
		return Mount{}, notConfigured("FUSE")
	}
	path, err := s.apiPath(req.Path)
	if err != nil {
		return Mount{}, err
	}
	if err := s.checkPath(path, req.Path, req.Force); err != nil {
		return Mount{}, err
	}
	var b [6]byte
	rand.Read(b[:])
	m, err := s.mount(Mount{ID: "mount-" + hex.EncodeToString(b[:]), Path: path, AllowOther: req.AllowOther, Force: req.Force})
	if err != nil {
		return Mount{}, fmt.Errorf("mount %s: %w (%w)", req.Path, err, pe.ErrInvalidSource)
	}
	if req.Force {
		s.log.Warn("FUSE mount over a directory that was not empty, at the API's request", "path", path)
	}
	return m, s.journal.MountStarted(m)
}

// MountAt is the operator's own mount (the CLI's, serve --mount): at dir,
// wherever that is, and not journaled.
func (s *Service) MountAt(ctx context.Context, id, dir string, allowOther bool) (Mount, error) {
	return s.mount(Mount{ID: id, Path: dir, AllowOther: allowOther})
}

// ResumeMount mounts again what a journal recorded, under the rules of
// Mount.
func (s *Service) ResumeMount(ctx context.Context, m Mount) error {
	if s.mountRoot == "" {
		return notConfigured("FUSE")
	}
	if err := s.checkPath(m.Path, m.Path, m.Force); err != nil {
		return err
	}
	_, err := s.mount(m)
	return err
}

func (s *Service) mount(m Mount) (Mount, error) {
	abs, err := filepath.Abs(m.Path)
	if err != nil {
		return Mount{}, err
	}
	m.Path = abs
	if err := s.reserve(abs); err != nil {
		return Mount{}, err
	}
	srv, err := fusefs.Mount(s.m, abs, fusefs.Options{Logger: s.log, AllowOther: m.AllowOther})
	s.mu.Lock()
	delete(s.mounting, abs)
	closed := s.closed
	if err == nil && !closed {
		s.mounts[m.ID] = &mounted{m, srv}
	}
	s.mu.Unlock()
	if err != nil {
		return Mount{}, err
	}
	if closed {
		// Close ran while this mount was being made: nobody would
		// unmount it.
		return Mount{}, errors.Join(errClosed, s.unmount(&mounted{m, srv}))
	}
	s.log.Info("FUSE mount started", "path", abs)
	return m, nil
}

// errClosed refuses mounts once the Service is closed.
var errClosed = errors.New("the appliance is shutting down")

// reserve claims path for a mount being made: two requests for one empty
// directory must not both mount there (the second would hide the first,
// and both would come back stacked after a restart).
func (s *Service) reserve(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	busy := s.mounting[path]
	for _, m := range s.mounts {
		busy = busy || m.Path == path
	}
	if busy {
		return fmt.Errorf("a mount is there already: %w", pe.ErrExists)
	}
	s.mounting[path] = true
	return nil
}

// apiPath resolves a path a client asked for: absolute, or relative to
// the mount root; strictly under the root, which it is made in.
// Messages name the path as the client gave it: the root is not theirs to
// learn.
func (s *Service) apiPath(asked string) (string, error) {
	p := asked
	if !filepath.IsAbs(p) {
		p = filepath.Join(s.mountRoot, p)
	}
	p = filepath.Clean(p)
	if !under(p, s.mountRoot) {
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
	if err != nil || !under(real, s.mountRoot) {
		return "", fmt.Errorf("mount %s: leads out of the mount root: %w", asked, pe.ErrInvalidSource)
	}
	return real, nil
}

// resolvesUnder reports whether the longest existing prefix of p, with its
// symlinks resolved, is the root or under it.
func (s *Service) resolvesUnder(p string) bool {
	for q := p; ; q = filepath.Dir(q) {
		real, err := filepath.EvalSymlinks(q)
		if err == nil {
			return real == s.mountRoot || under(real, s.mountRoot)
		}
		if !errors.Is(err, os.ErrNotExist) || q == filepath.Dir(q) {
			return false
		}
	}
}

// checkPath refuses a mountpoint outside the root, or one that is not an
// empty directory unless force: a mount would hide what is there.
func (s *Service) checkPath(p, shown string, force bool) error {
	if !under(p, s.mountRoot) {
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

// Unmount unmounts the mount named id and waits until it is gone.
func (s *Service) Unmount(ctx context.Context, id string) error {
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
	return s.journal.MountStopped(id)
}

func (s *Service) unmount(m *mounted) error {
	if err := fusefs.Unmount(m.srv, m.Path); err != nil {
		return err
	}
	m.srv.Wait()
	s.log.Info("FUSE mount stopped", "path", m.Path)
	return nil
}

// Close unmounts everything and closes the writable exports' overlays,
// but leaves the journal as it is, so that the mounts and exports come
// back with the next start.
func (s *Service) Close() error {
	s.mu.Lock()
	s.closed = true
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
	if s.exports != nil {
		// Writable exports' overlays are saved, to be resumed.
		if err := s.exports.Close(); err != nil && first == nil {
			first = err
		}
	}
	if err := s.closeNFS(); err != nil && first == nil {
		first = err
	}
	return first
}
