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
}

// Manager is the mounts under one directory.
type Manager struct {
	dir  string
	idle time.Duration
	log  *slog.Logger

	mu     sync.Mutex
	mounts map[string]*mount // by snapshot ID
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

// New takes down what a previous process left under dir and starts a
// Manager that unmounts what has not been used for idle.
func New(ctx context.Context, dir string, idle time.Duration, log *slog.Logger) (*Manager, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("recovery mounts: %w", err)
	}
	left, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("recovery mounts: %w", err)
	}
	for _, e := range left {
		p := filepath.Join(dir, e.Name())
		if err := flr.Unmount(ctx, p); err != nil {
			log.Warn("recovery mount left by an earlier run", "dir", p, "err", err)
		}
		os.Remove(p)
	}
	m := &Manager{dir: dir, idle: idle, log: log, mounts: map[string]*mount{}, stop: make(chan struct{}), done: make(chan struct{})}
	go m.reap()
	return m, nil
}

// Acquire mounts the partitions of snapshot p (or finds them mounted) and
// returns them. The caller calls release when done with them.
func (m *Manager) Acquire(ctx context.Context, p pe.ProtectedEntity) (parts []Partition, release func(), err error) {
	key := p.ID().String()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, errors.New("recovery mounts: the appliance is stopping")
	}
	mt, ok := m.mounts[key]
	if !ok {
		sum := sha256.Sum256([]byte(key))
		dir := filepath.Join(m.dir, hex.EncodeToString(sum[:8]))
		mounted, err := flr.Mount(ctx, p, dir)
		if err != nil {
			os.Remove(dir)
			return nil, nil, err
		}
		mt = &mount{dir: dir}
		for _, pm := range mounted {
			if pm.Dir == "" {
				m.log.Info("recovery mount: partition left out", "snapshot", key, "partition", pm.Name, "why", pm.Skipped)
				continue
			}
			root, err := os.OpenRoot(pm.Dir)
			if err != nil {
				mt.closeRoots()
				return nil, nil, errors.Join(fmt.Errorf("recovery mount of %s: %w", key, err), m.unmount(dir))
			}
			mt.parts = append(mt.parts, Partition{Name: pm.Name, FSType: pm.FSType, Size: pm.Size, Root: root})
		}
		m.mounts[key] = mt
		m.log.Info("recovery mount", "snapshot", key, "partitions", len(mt.parts))
	}
	mt.users++
	var once sync.Once
	return mt.parts, func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			mt.users--
			mt.lastUsed = time.Now()
		})
	}, nil
}

func (m *Manager) unmount(dir string) error {
	err := flr.Unmount(context.Background(), dir)
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
		if mt.users == 0 && now.Sub(mt.lastUsed) >= m.idle {
			m.drop(key, mt)
		}
	}
}

// drop unmounts one mount; m.mu is held.
func (m *Manager) drop(key string, mt *mount) {
	// Open roots would keep the mount points busy: closed first, and
	// opened again if the unmount fails.
	mt.closeRoots()
	if err := m.unmount(mt.dir); err != nil {
		m.log.Warn("recovery mount: unmount", "snapshot", key, "err", err)
		mt.reopenRoots(m.log)
		return // tried again at the next tick, or at start
	}
	delete(m.mounts, key)
	m.log.Info("recovery mount taken down", "snapshot", key)
}

func (mt *mount) closeRoots() {
	for _, p := range mt.parts {
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

// Mounted lists the snapshots mounted now.
func (m *Manager) Mounted() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.mounts))
	for k := range m.mounts {
		out = append(out, k)
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
		m.drop(key, mt)
	}
	m.mu.Unlock()
	<-m.done
}
