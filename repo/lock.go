package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
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
	// Where and since when the process runs, so that another process on
	// the same host can tell it died even if its PID was reused: the
	// kernel's boot ID, the PID namespace, and the process's start time
	// (clock ticks after boot, /proc/PID/stat). Empty in older locks.
	BootID    string `json:"bootID,omitempty"`
	PIDNS     string `json:"pidNS,omitempty"`
	StartTime uint64 `json:"startTime,omitempty"`
	// Snapshot is the snapshot a backup's lock claims: no other backup of
	// it runs meanwhile. Empty in other locks and older ones.
	Snapshot string `json:"snapshot,omitempty"`
}

// thisProcess describes the running process as its locks record it.
func thisProcess() lockInfo {
	host, _ := os.Hostname()
	li := lockInfo{Host: host, PID: os.Getpid()}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		li.BootID = strings.TrimSpace(string(b))
	}
	li.PIDNS, _ = os.Readlink("/proc/self/ns/pid")
	li.StartTime, _ = processStart(li.PID)
	return li
}

// processStart returns when process pid started, in clock ticks after
// boot (field 22 of /proc/PID/stat); an error wrapping fs.ErrNotExist if
// there is no such process.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields to count start after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// dead reports whether the lock belongs to a process known to be gone:
// one of this host, this boot and this PID namespace whose PID is no
// longer running, or now runs a process started at another time. A lock
// of another host or boot, or an older lock without those, is never known
// dead: only its age tells.
func (li lockInfo) dead(self lockInfo) bool {
	if li.Host != self.Host || li.BootID == "" || li.BootID != self.BootID || li.PIDNS == "" || li.PIDNS != self.PIDNS || li.PID <= 0 {
		return false
	}
	start, err := processStart(li.PID)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	return err == nil && li.StartTime != 0 && start != li.StartTime
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
	// written is when the lock object was last written: others take it
	// for stale staleAfter later.
	written time.Time
	// confirmed is when the lock object was last seen there.
	confirmed time.Time
}

// ErrLocked is returned when the repository is locked against us.
var ErrLocked = errors.New("repository is locked")

func (r *Repository) lock(ctx context.Context, exclusive bool) (*heldLock, error) {
	return r.lockFor(ctx, exclusive, "")
}

// lockFor takes a lock; a backup's shared lock claims its snapshot. Each
// process writes its claim before it lists the others', so of two
// backups of one snapshot, at least one sees the other's claim and
// fails (both may).
func (r *Repository) lockFor(ctx context.Context, exclusive bool, snapshot string) (*heldLock, error) {
	self := thisProcess()
	info := self
	info.Time, info.Exclusive, info.Snapshot = time.Now().UTC(), exclusive, snapshot
	l := &heldLock{r: r, name: "locks/" + randomName(), info: info, stop: make(chan struct{})}
	if err := l.write(ctx); err != nil {
		return nil, fmt.Errorf("lock %s: %w", r.Location(), err)
	}
	err := r.scanLocks(ctx, self, l.name, exclusive, snapshot)
	if err != nil {
		r.be.Remove(context.WithoutCancel(ctx), l.name)
		return nil, err
	}
	l.wg.Add(1)
	go l.refresh(ctx)
	return l, nil
}

// scanLocks lists the locks other than own and fails with ErrLocked if
// one conflicts with a lock of the given kind: an exclusive lock, or any
// lock if exclusive. Locks of dead processes are removed; stale ones are
// ignored (and removed if exclusive). A lock that cannot be read, other
// than because it is gone, is a conflict: its kind is unknown, and a
// backup's shared lock that a pruner fails to read (an S3 503) must still
// keep the prune from removing the packs the backup dedups against. A
// lock claiming snapshot (if not empty) conflicts too, with ErrExists.
func (r *Repository) scanLocks(ctx context.Context, self lockInfo, own string, exclusive bool, snapshot string) error {
	var conflict error
	err := r.be.List(ctx, "locks/", func(name string, _ int64) error {
		if name == own || conflict != nil {
			return nil
		}
		if r.releasedLock(name) {
			// Ours, released when the backend failed to remove it: it
			// protects nothing (nor claims a snapshot); removed now.
			if err := r.be.Remove(ctx, name); err == nil {
				r.forgetReleased(name)
			}
			return nil
		}
		var other lockInfo
		err := r.loadJSON(ctx, name, &other)
		if errors.Is(err, backend.ErrNotExist) {
			return nil // released meanwhile
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			conflict = fmt.Errorf("%w: lock %s cannot be read (if it is damaged, 'astrolabe repo unlock' removes it): %v", ErrLocked, name, err)
			return nil
		}
		if other.dead(self) {
			// Its process is gone, killed or crashed: the lock protects
			// nothing any more, whatever kind it is.
			r.log.Warn("removing the lock of a dead process", "host", other.Host, "pid", other.PID, "since", other.Time, "exclusive", other.Exclusive)
			// A repository that cannot be written (a copy's read-only
			// source) keeps it; it is no conflict all the same.
			if err := r.be.Remove(ctx, name); err != nil && !backend.IsReadOnly(err) {
				return fmt.Errorf("remove dead lock: %w", err)
			}
			return nil
		}
		if r.stale(ctx, name, other) {
			if exclusive {
				r.log.Warn("removing a stale lock", "host", other.Host, "pid", other.PID, "since", other.Time)
				r.be.Remove(ctx, name)
			}
			return nil
		}
		if snapshot != "" && other.Snapshot == snapshot {
			conflict = fmt.Errorf("snapshot %s is being backed up by %s (pid %d) since %s: %w", snapshot, other.Host, other.PID, other.Time.Format(time.RFC3339), ErrExists)
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
	if err != nil {
		return fmt.Errorf("list locks: %w", err)
	}
	return conflict
}

// stale reports whether a lock was not refreshed for staleAfter: by the
// time it holds, written by its process's clock, and by when its object
// was written, by the backend's. A host whose clock is behind does not
// make its live locks stale for others (nor one ahead of the others make
// theirs stale for itself), unless the backend's clock is off too.
func (r *Repository) stale(ctx context.Context, name string, li lockInfo) bool {
	if time.Since(li.Time) <= staleAfter {
		return false
	}
	written, err := r.be.ModTime(ctx, name)
	return err == nil && time.Since(written) > staleAfter
}

// recheck lists the locks again, right before a commit or a deletion: a
// lock written since ours (a listing of S3 may lag behind writes) that
// conflicts with ours stops the operation. Snapshot claims are not
// checked again: the first listing settled them.
func (l *heldLock) recheck(ctx context.Context) error {
	if err := l.check(ctx); err != nil {
		return err
	}
	if err := l.r.scanLocks(ctx, thisProcess(), l.name, l.info.Exclusive, ""); err != nil {
		return fmt.Errorf("lock %s: %w", l.r.Location(), err)
	}
	return nil
}

func (l *heldLock) write(ctx context.Context) error {
	if err := l.r.saveJSON(ctx, l.name, l.info); err != nil {
		return err
	}
	l.mu.Lock()
	l.written = l.info.Time
	l.mu.Unlock()
	return nil
}

// check confirms, before a commit or a deletion, that the lock still
// holds: its object is there (no exclusive locker took it for stale and
// removed it, nor 'unlock --force') and was written recently enough
// that none could.
func (l *heldLock) check(ctx context.Context) error {
	if err := l.unrefreshed(); err != nil {
		return err
	}
	if _, err := l.r.be.Stat(ctx, l.name); errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("lock %s: removed by another process (unlock --force?): %w", l.r.Location(), ErrLocked)
	} else if err != nil {
		return fmt.Errorf("lock %s: %w", l.r.Location(), err)
	}
	l.mu.Lock()
	l.confirmed = time.Now()
	l.mu.Unlock()
	return nil
}

// checkOften is check for every step of a long operation (each removal
// of a prune): the age of the lock is tested each time, its object at
// most every lockStatEvery.
func (l *heldLock) checkOften(ctx context.Context) error {
	l.mu.Lock()
	confirmed := l.confirmed
	l.mu.Unlock()
	if time.Since(confirmed) >= l.r.lockStatEvery {
		return l.check(ctx)
	}
	return l.unrefreshed()
}

// unrefreshed fails for a lock not written for half the stale limit:
// others may soon take it for stale.
func (l *heldLock) unrefreshed() error {
	l.mu.Lock()
	written, lastE := l.written, l.lastE
	l.mu.Unlock()
	if age := time.Since(written); age > staleAfter/2 {
		return fmt.Errorf("lock %s: not refreshed for %s: %v", l.r.Location(), age.Round(time.Second), lastE)
	}
	return nil
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
	if err := l.r.be.Remove(context.Background(), l.name); err != nil {
		l.r.log.Warn("cannot remove a lock: it is removed at the next locking", "lock", l.name, "err", err)
		l.r.lockMu.Lock()
		l.r.released[l.name] = true
		l.r.lockMu.Unlock()
	}
}

// releasedLock reports whether lock name is one this Repository released
// but failed to remove.
func (r *Repository) releasedLock(name string) bool {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	return r.released[name]
}

func (r *Repository) forgetReleased(name string) {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	delete(r.released, name)
}

// Unlock removes stale locks and those of processes of this host that
// are gone (all locks with force), as after a crash or kill -9.
func (r *Repository) Unlock(ctx context.Context, force bool) (int, error) {
	self := thisProcess()
	n := 0
	err := r.be.List(ctx, "locks/", func(name string, _ int64) error {
		var li lockInfo
		err := r.loadJSON(ctx, name, &li)
		switch {
		case errors.Is(err, backend.ErrNotExist):
			return nil // released meanwhile
		case err != nil && !errors.Is(err, errAuth):
			return err
		}
		// A lock that does not open counts as stale.
		if force || err != nil || r.stale(ctx, name, li) || li.dead(self) {
			n++
			return r.be.Remove(ctx, name)
		}
		return nil
	})
	return n, err
}
