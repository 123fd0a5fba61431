// Package flrmount keeps the file-level-recovery mounts (package flr) of
// disk snapshots that the web page browses: made on first use, shared
// while in use, taken down once idle, and all of them when the appliance
// stops. Mounts left by a crash are taken down at start.
package flrmount

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/flr"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Partition is one mounted partition of a snapshot.
type Partition struct {
	Name   string // p1, p2, ... or disk
	FSType string
	Size   int64
	// Root is the partition's mount point, opened once: no path looked
	// up through it leaves the partition, by ".." or a symlink, for the
	// directory above (which holds the mount's state file) or another
	// partition.
	Root *os.Root
}

type mount struct {
	dir      string
	parts    []Partition
	users    int
	lastUsed time.Time
	// ready is closed once the mount is made or has failed (err); until
	// then the users wait for it, and the reaper leaves it alone.
	ready chan struct{}
	err   error
}

func (mt *mount) isReady() bool {
	select {
	case <-mt.ready:
		return mt.err == nil
	default:
		return false
	}
}

// mountTimeout bounds the making of one mount: blkid, losetup, mount or
// a FUSE driver that hangs on a crafted image gives up then.
const mountTimeout = 2 * time.Minute

// Manager is the mounts under one directory.
type Manager struct {
	dir     string
	idle    time.Duration
	timeout time.Duration
	log     *slog.Logger
	// mountFS and unmountFS are flr's, but in tests.
	mountFS   func(ctx context.Context, p pe.ProtectedEntity, dir string) ([]flr.Mounted, error)
	unmountFS func(ctx context.Context, dir string) error

	mu       sync.Mutex
	mounts   map[string]*mount // by snapshot ID
	closed   bool
	inFlight sync.WaitGroup // mounts being made
	stop     chan struct{}
	done     chan struct{}
}

// New takes down what a previous process left under dir and starts a
// Manager that unmounts what has not been used for idle.
func New(ctx context.Context, dir string, idle time.Duration, log *slog.Logger) (*Manager, error) {
	m := &Manager{dir: dir, idle: idle, timeout: mountTimeout, log: log, mountFS: flr.Mount, unmountFS: flr.Unmount}
	return m, m.start(ctx)
}

func (m *Manager) start(ctx context.Context) error {
	dir, log := m.dir, m.log
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("recovery mounts: %w", err)
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("recovery mounts: %w", err)
	}
	for _, e := range left {
		p := filepath.Join(dir, e.Name())
		if err := m.unmountFS(ctx, p); err != nil {
			log.Warn("recovery mount left by an earlier run", "dir", p, "err", err)
		}
		os.Remove(p)
	}
	m.mounts, m.stop, m.done = map[string]*mount{}, make(chan struct{}), make(chan struct{})
	go m.reap()
	return nil
}

// Acquire mounts the partitions of snapshot p (or finds them mounted, or
// being mounted) and returns them. The caller calls release when done
// with them. One mount of a snapshot is made at a time, outside the
// Manager's lock: other snapshots' users do not wait for it.
func (m *Manager) Acquire(ctx context.Context, p pe.ProtectedEntity) (parts []Partition, release func(), err error) {
	key := p.ID().String()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, nil, errors.New("recovery mounts: the appliance is stopping")
	}
	mt, ok := m.mounts[key]
	if !ok {
		sum := sha256.Sum256([]byte(key))
		mt = &mount{dir: filepath.Join(m.dir, hex.EncodeToString(sum[:8])), ready: make(chan struct{})}
		m.mounts[key] = mt
		m.inFlight.Add(1)
		// Not the request's context: the mount serves the other users
		// too, and one giving up does not undo it for them.
		go m.make(context.WithoutCancel(ctx), key, p, mt)
	}
	mt.users++
	m.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			mt.users--
			mt.lastUsed = time.Now()
		})
	}
	select {
	case <-mt.ready:
	case <-ctx.Done():
		release()
		return nil, nil, fmt.Errorf("recovery mount of %s: %w", key, ctx.Err())
	}
	if mt.err != nil {
		return nil, nil, mt.err
	}
	return mt.parts, release, nil
}

// make mounts p at mt.dir, within m.timeout, and makes it ready, or
// forgets it after a failure (the next user tries again).
func (m *Manager) make(ctx context.Context, key string, p pe.ProtectedEntity, mt *mount) {
	defer m.inFlight.Done()
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	parts, err := m.mountParts(ctx, key, p, mt.dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil && m.closed {
		closeRoots(parts)
		err = errors.Join(errors.New("recovery mounts: the appliance is stopping"), m.unmount(mt.dir))
	}
	if err != nil {
		mt.err = err
		delete(m.mounts, key)
	} else {
		mt.parts, mt.lastUsed = parts, time.Now()
		m.log.Info("recovery mount", "snapshot", key, "partitions", len(parts))
	}
	close(mt.ready)
}

// mountParts mounts p at dir and opens each mounted partition's root.
func (m *Manager) mountParts(ctx context.Context, key string, p pe.ProtectedEntity, dir string) ([]Partition, error) {
	mounted, err := m.mountFS(ctx, p, dir)
	if err != nil {
		os.Remove(dir)
		if ctx.Err() != nil {
			err = fmt.Errorf("recovery mount of %s: gave up after %v: %w", key, m.timeout, err)
		}
		return nil, err
	}
	var parts []Partition
	for _, pm := range mounted {
		if pm.Dir == "" {
			m.log.Info("recovery mount: partition left out", "snapshot", key, "partition", pm.Name, "why", pm.Skipped)
			continue
		}
		root, err := os.OpenRoot(pm.Dir)
		if err != nil {
			closeRoots(parts)
			return nil, errors.Join(fmt.Errorf("recovery mount of %s: %w", key, err), m.unmount(dir))
		}
		parts = append(parts, Partition{Name: pm.Name, FSType: pm.FSType, Size: pm.Size, Root: root})
	}
	return parts, nil
}

func (m *Manager) unmount(dir string) error {
	err := m.unmountFS(context.Background(), dir)
	if err == nil {
		os.Remove(dir)
	}
	return err
}

// reap takes down the mounts idle for longer than m.idle.
func (m *Manager) reap() {
	defer close(m.done)
	t := time.NewTicker(max(m.idle/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case now := <-t.C:
			m.reapIdle(now)
		}
	}
}

// reapIdle takes down the mounts unused since m.idle before now.
func (m *Manager) reapIdle(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, mt := range m.mounts {
		if mt.users == 0 && mt.isReady() && now.Sub(mt.lastUsed) >= m.idle {
			m.drop(key, mt)
		}
	}
}

// drop unmounts one mount; m.mu is held.
func (m *Manager) drop(key string, mt *mount) {
	// Open roots would keep the mount points busy: closed first, and
	// opened again if the unmount fails.
	closeRoots(mt.parts)
	if err := m.unmount(mt.dir); err != nil {
		m.log.Warn("recovery mount: unmount", "snapshot", key, "err", err)
		mt.reopenRoots(m.log)
		return // tried again at the next tick, or at start
	}
	delete(m.mounts, key)
	m.log.Info("recovery mount taken down", "snapshot", key)
}

func closeRoots(parts []Partition) {
	for _, p := range parts {
		p.Root.Close()
	}
}

// reopenRoots opens the partitions' roots again after a failed unmount
// (the mount stays, and its users may come back).
func (mt *mount) reopenRoots(log *slog.Logger) {
	for i, p := range mt.parts {
		root, err := os.OpenRoot(filepath.Join(mt.dir, p.Name))
		if err != nil {
			log.Warn("recovery mount: reopen", "partition", p.Name, "err", err)
			continue
		}
		mt.parts[i].Root = root
	}
}

// Mounted lists the snapshots mounted now (not those being mounted).
func (m *Manager) Mounted() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.mounts))
	for k, mt := range m.mounts {
		if mt.isReady() {
			out = append(out, k)
		}
	}
	return out
}

// Close takes every mount down (also those in use: the appliance stops).
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	close(m.stop)
	for key, mt := range m.mounts {
		if mt.isReady() {
			m.drop(key, mt)
		}
	}
	m.mu.Unlock()
	// The mounts being made take themselves down when done.
	m.inFlight.Wait()
	<-m.done
}
