package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// Locks let several appliances share a repository: backups take shared
// locks, prune an exclusive one. A lock is refreshed while held; one not
// refreshed for staleAfter belongs to a process that died.
const (
	lockRefresh = 5 * time.Minute
	staleAfter  = 30 * time.Minute
)

type lockInfo struct {
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Time      time.Time `json:"time"`
	Exclusive bool      `json:"exclusive"`
}

// heldLock is a lock this process holds.
type heldLock struct {
	r     *Repository
	name  string
	info  lockInfo
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	lastE error
}

// ErrLocked is returned when the repository is locked against us.
var ErrLocked = errors.New("repository is locked")

func (r *Repository) lock(ctx context.Context, exclusive bool) (*heldLock, error) {
	host, _ := os.Hostname()
	l := &heldLock{r: r, name: "locks/" + randomName(), info: lockInfo{Host: host, PID: os.Getpid(), Time: time.Now().UTC(), Exclusive: exclusive}, stop: make(chan struct{})}
	if err := l.write(ctx); err != nil {
		return nil, fmt.Errorf("lock %s: %w", r.Location(), err)
	}
	var conflict error
	err := r.be.List(ctx, "locks/", func(name string, _ int64) error {
		if name == l.name || conflict != nil {
			return nil
		}
		var other lockInfo
		if err := r.loadJSON(ctx, name, &other); err != nil {
			return nil // removed meanwhile, or not ours to read
		}
		if time.Since(other.Time) > staleAfter {
			if exclusive {
				r.log.Warn("removing a stale lock", "host", other.Host, "pid", other.PID, "since", other.Time)
				r.be.Remove(ctx, name)
			}
			return nil
		}
		if exclusive || other.Exclusive {
			kind := "shared"
			if other.Exclusive {
				kind = "exclusive"
			}
			conflict = fmt.Errorf("%w: %s lock of %s (pid %d) since %s", ErrLocked, kind, other.Host, other.PID, other.Time.Format(time.RFC3339))
		}
		return nil
	})
	if err == nil {
		err = conflict
	}
	if err != nil {
		r.be.Remove(context.WithoutCancel(ctx), l.name)
		return nil, err
	}
	l.wg.Add(1)
	go l.refresh(ctx)
	return l, nil
}

func (l *heldLock) write(ctx context.Context) error {
	return l.r.saveJSON(ctx, l.name, l.info)
}

func (l *heldLock) refresh(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			l.info.Time = time.Now().UTC()
			if err := l.write(ctx); err != nil {
				l.mu.Lock()
				l.lastE = fmt.Errorf("refresh lock: %w", err)
				l.mu.Unlock()
			}
		}
	}
}

// err reports a failure to keep the lock fresh during the operation.
func (l *heldLock) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastE
}

func (l *heldLock) release() {
	close(l.stop)
	l.wg.Wait()
	l.r.be.Remove(context.Background(), l.name)
}

// Unlock removes stale locks (all locks with force), as after a crash.
func (r *Repository) Unlock(ctx context.Context, force bool) (int, error) {
	n := 0
	err := r.be.List(ctx, "locks/", func(name string, _ int64) error {
		var li lockInfo
		if err := r.loadJSON(ctx, name, &li); err != nil && !errors.Is(err, backend.ErrNotExist) && !strings.Contains(err.Error(), "authentication") {
			return err
		}
		if force || time.Since(li.Time) > staleAfter {
			n++
			return r.be.Remove(ctx, name)
		}
		return nil
	})
	return n, err
}
