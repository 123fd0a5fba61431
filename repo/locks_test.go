package repo

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// pausedBackup starts a backup of a new snapshot of disk name that stops
// after it has taken its lock and refreshed its index; resume lets it go
// on, and wait returns its error.
func (e *env) pausedBackup(name string) (p *pausedPE, resume func(), wait func() error) {
	return e.pausedBackupIn(e.r, name)
}

// pausedBackupIn is pausedBackup in Repository r.
func (e *env) pausedBackupIn(r *Repository, name string) (p *pausedPE, resume func(), wait func() error) {
	p = &pausedPE{ProtectedEntity: e.snap("disk:" + name), reached: make(chan struct{}), resume: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := r.Backup(context.Background(), p, nil)
		done <- err
	}()
	<-p.reached
	return p, func() { close(p.resume) }, func() error { return <-done }
}

// TestUnreadableLockIsAConflict: a lock that fails to read (an S3 503)
// may be a running backup's or an exclusive one: prune does not run
// beside it, nor a backup.
func TestUnreadableLockIsAConflict(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	old := e.backup("disk:a.img")
	if err := e.r.Forget(ctx, old); err != nil {
		t.Fatal(err)
	}
	_, resume, wait := e.pausedBackup("a.img")
	f := &faultyBackend{Backend: e.be, failLoad: "locks/"}
	pruner := openAgain(t, f, Options{Password: "pw"})
	if _, err := pruner.Prune(ctx); !errors.Is(err, ErrLocked) {
		t.Errorf("prune beside an unreadable lock: %v", err)
	}
	if len(f.removed) != 0 {
		t.Errorf("prune beside an unreadable lock removed %v", f.removed)
	}
	resume()
	if err := wait(); err != nil {
		t.Errorf("backup: %v", err)
	}

	// An exclusive lock that fails to read stops a backup.
	exclusive := "locks/" + randomName()
	if err := e.r.saveJSON(ctx, exclusive, lockInfo{Host: "other", PID: 1, Time: time.Now().UTC(), Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := openAgain(t, f, Options{Password: "pw"}).Backup(ctx, e.snap("disk:a.img"), nil); !errors.Is(err, ErrLocked) {
		t.Errorf("backup beside an unreadable exclusive lock: %v", err)
	}
	if err := e.be.Remove(ctx, exclusive); err != nil {
		t.Fatal(err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
}

// laggingLocks hides every lock from the first listing of locks/, as a
// listing that lags behind writes may.
type laggingLocks struct {
	backend.Backend
	listed atomic.Bool
}

func (l *laggingLocks) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	if prefix == "locks/" && !l.listed.Swap(true) {
		return nil
	}
	return l.Backend.List(ctx, prefix, fn)
}

// TestPruneRelistsLocks: a prune whose first listing of the locks missed a
// running backup's lock sees it before it changes anything.
func TestPruneRelistsLocks(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	old := e.backup("disk:a.img")
	if err := e.r.Forget(ctx, old); err != nil {
		t.Fatal(err)
	}
	_, resume, wait := e.pausedBackup("a.img")
	f := &faultyBackend{Backend: &laggingLocks{Backend: e.be}}
	if _, err := openAgain(t, f, Options{Password: "pw"}).Prune(ctx); !errors.Is(err, ErrLocked) {
		t.Errorf("prune beside a lock its first listing missed: %v", err)
	}
	if len(f.removed) != 0 {
		t.Errorf("prune removed %v", f.removed)
	}
	resume()
	if err := wait(); err != nil {
		t.Errorf("backup: %v", err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
}

// TestBackupConfirmsPacks: the packs a backup dedups against, removed
// while it runs by a prune that did not see its lock, are missed before
// the snapshot is committed; run again, the backup stores them anew.
func TestBackupConfirmsPacks(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	path := e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	old := e.backup("disk:a.img")
	if err := e.r.Forget(ctx, old); err != nil {
		t.Fatal(err)
	}
	p, resume, wait := e.pausedBackup("a.img")
	if err := os.RemoveAll(filepath.Join(e.be.Location(), "data")); err != nil {
		t.Fatal(err)
	}
	resume()
	if err := wait(); !errors.Is(err, ErrLocked) {
		t.Errorf("backup whose packs were removed: %v", err)
	}
	if _, err := e.be.Stat(ctx, snapshotDir(p.ID())+"/info"); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("the snapshot was committed: %v", err)
	}
	s, err := e.r.Backup(ctx, e.snap("disk:a.img"), nil)
	if err != nil || s.New != 3*mib {
		t.Errorf("backup again: %+v %v", s, err)
	}
	if e.restoredSum(s.ID) != fileSum(t, path) {
		t.Error("restore differs")
	}
	if snaps, err := e.r.Snapshots(ctx, pe.ID{}); err != nil || len(snaps) != 1 {
		t.Errorf("snapshots: %v %v", snaps, err)
	}
}

// snapshotObjects reads a snapshot's index and info as stored.
func (e *env) snapshotObjects(id pe.ID) string {
	e.t.Helper()
	var out string
	for _, obj := range []string{"index", "info"} {
		b, err := backend.ReadAll(context.Background(), e.be, snapshotDir(id)+"/"+obj)
		if err != nil {
			e.t.Fatal(err)
		}
		out += objectHash(b)
	}
	return out
}

// TestOneBackupPerSnapshot backs up one snapshot twice at once, in one
// process (a double submit) and in two (two appliances): one commits,
// the other gets ErrExists, and the snapshot opens; backing up a
// committed snapshot again is refused and leaves it as it was.
func TestOneBackupPerSnapshot(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	path := e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	sum := fileSum(t, path)
	other := openAgain(t, e.be, Options{Password: "pw"})
	for _, c := range []struct {
		name   string
		second *Repository
	}{{"one process", e.r}, {"two processes", other}} {
		p, resume, wait := e.pausedBackup("a.img")
		second := make(chan error, 1)
		go func() {
			_, err := c.second.Backup(ctx, p.ProtectedEntity, nil)
			second <- err
		}()
		if c.second == other {
			// The other process sees the claim at once.
			if err := <-second; !errors.Is(err, ErrExists) {
				t.Errorf("%s: second backup: %v", c.name, err)
			}
		}
		resume()
		if err := wait(); err != nil {
			t.Errorf("%s: first backup: %v", c.name, err)
		}
		if c.second == e.r {
			// This process's second waits for the first, then finds
			// the snapshot committed.
			if err := <-second; !errors.Is(err, ErrExists) {
				t.Errorf("%s: second backup: %v", c.name, err)
			}
		}
		if _, _, err := e.r.loadSnapshot(ctx, p.ID()); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if e.restoredSum(p.ID()) != sum {
			t.Errorf("%s: restore differs", c.name)
		}
		before := e.snapshotObjects(p.ID())
		for _, r := range []*Repository{e.r, other} {
			if _, err := r.Backup(ctx, p.ProtectedEntity, nil); !errors.Is(err, ErrExists) {
				t.Errorf("%s: backup of a committed snapshot: %v", c.name, err)
			}
		}
		if e.snapshotObjects(p.ID()) != before {
			t.Errorf("%s: backing up a committed snapshot again changed it", c.name)
		}
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
}

// failingStat fails the Stat of snapshot objects, as a server that is
// down for a moment does.
type failingStat struct{ backend.Backend }

func (f failingStat) Stat(ctx context.Context, name string) (int64, error) {
	if strings.HasPrefix(name, "snapshots/") {
		return 0, errInjected
	}
	return f.Backend.Stat(ctx, name)
}

// TestBackupStatError: a backup that cannot tell whether its snapshot is
// committed fails; it does not write over it.
func TestBackupStatError(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	id := e.backup("disk:a.img")
	before := e.snapshotObjects(id)
	p, err := e.m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openAgain(t, failingStat{e.be}, Options{Password: "pw"}).Backup(ctx, p, nil); !errors.Is(err, errInjected) {
		t.Errorf("backup with Stat failing: %v", err)
	}
	if e.snapshotObjects(id) != before {
		t.Error("the snapshot was written over")
	}
}

// lockThief removes every lock when the first pack is removed, as
// 'unlock --force' on another host while a prune runs.
type lockThief struct {
	*faultyBackend
	stolen atomic.Bool
}

func (l *lockThief) Remove(ctx context.Context, name string) error {
	err := l.faultyBackend.Remove(ctx, name)
	if strings.HasPrefix(name, "data/") && !l.stolen.Swap(true) {
		l.Backend.List(ctx, "locks/", func(lock string, _ int64) error { return l.Backend.Remove(ctx, lock) })
	}
	return err
}

// TestPruneChecksItsLockBeforeEachRemoval: a prune whose lock is removed
// while it removes packs stops at the next.
func TestPruneChecksItsLockBeforeEachRemoval(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	for _, name := range []string{"a.img", "b.img", "c.img"} {
		e.disk(name, 2*mib, map[int64]int64{0: mib})
		if err := e.r.Forget(ctx, e.backup("disk:"+name)); err != nil {
			t.Fatal(err)
		}
	}
	f := &lockThief{faultyBackend: &faultyBackend{Backend: e.be}}
	pruner := openAgain(t, f, Options{Password: "pw"})
	pruner.lockStatEvery = 0
	if _, err := pruner.Prune(ctx); !errors.Is(err, ErrLocked) {
		t.Errorf("prune that lost its lock: %v", err)
	}
	var packs []string
	for _, name := range f.removed {
		if strings.HasPrefix(name, "data/") {
			packs = append(packs, name)
		}
	}
	if len(packs) != 1 {
		t.Errorf("prune that lost its lock went on removing: %v", packs)
	}
}

// TestLockStalenessByBackendClock: a live lock written by a host whose
// clock is two hours behind is not stale (its object is new); it is once
// its object is old too.
func TestLockStalenessByBackendClock(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", mib, map[int64]int64{0: mib})
	name := "locks/" + randomName()
	behind := time.Now().Add(-2 * time.Hour).UTC()
	if err := e.r.saveJSON(ctx, name, lockInfo{Host: "skewed", PID: 1, Time: behind, Exclusive: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Backup(ctx, e.snap("disk:a.img"), nil); !errors.Is(err, ErrLocked) {
		t.Errorf("backup beside a live exclusive lock of a skewed clock: %v", err)
	}
	if n, err := e.r.Unlock(ctx, false); err != nil || n != 0 {
		t.Errorf("unlock removed %d locks: %v", n, err)
	}
	if err := os.Chtimes(filepath.Join(e.be.Location(), name), behind, behind); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Backup(ctx, e.snap("disk:a.img"), nil); err != nil {
		t.Errorf("backup beside a stale exclusive lock: %v", err)
	}
	if n, err := e.r.Unlock(ctx, false); err != nil || n != 1 {
		t.Errorf("unlock removed %d locks: %v", n, err)
	}
}

// TestPruneStopsAtUnparsableSnapshotFolder: a snapshot folder with an
// info whose name does not parse stops prune before it removes its packs.
func TestPruneStopsAtUnparsableSnapshotFolder(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 2*mib, map[int64]int64{0: mib})
	id := e.backup("disk:a.img")
	if err := os.Rename(e.snapDir(id), filepath.Join(e.be.Location(), "snapshots", "not-an-id")); err != nil {
		t.Fatal(err)
	}
	f := &faultyBackend{Backend: e.be}
	if _, err := openAgain(t, f, Options{Password: "pw"}).Prune(ctx); err == nil || !strings.Contains(err.Error(), "not-an-id") {
		t.Errorf("prune beside an unparsable snapshot folder: %v", err)
	}
	if len(f.removed) != 0 {
		t.Errorf("prune removed %v", f.removed)
	}
}

// TestDedupSurvivesPruneOfOneCopy: two appliances store the same chunks
// at once, each in its own pack; once a prune removes one of the packs,
// the other appliance's index finds the chunks in the other pack.
func TestDedupSurvivesPruneOfOneCopy(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	path := e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	if err := os.WriteFile(filepath.Join(e.dir, "disk", "b.img"), mustRead(t, path), 0o600); err != nil {
		t.Fatal(err)
	}
	other := openAgain(t, e.be, Options{Password: "pw"})
	a, resumeA, waitA := e.pausedBackupIn(e.r, "a.img")
	_, resumeB, waitB := e.pausedBackupIn(other, "b.img")
	resumeA()
	resumeB()
	if err := waitA(); err != nil {
		t.Fatal(err)
	}
	if err := waitB(); err != nil {
		t.Fatal(err)
	}
	if err := e.r.refreshIndex(ctx); err != nil { // it learns b's pack
		t.Fatal(err)
	}
	if err := e.r.Forget(ctx, a.ID()); err != nil {
		t.Fatal(err)
	}
	if s, err := openAgain(t, e.be, Options{Password: "pw"}).Prune(ctx); err != nil || s.Packs != 1 {
		t.Fatalf("prune: %+v %v", s, err)
	}
	s, err := e.r.Backup(ctx, e.snap("disk:a.img"), nil)
	if err != nil || s.New != 0 {
		t.Errorf("backup after the prune of one copy: %+v %v", s, err)
	}
	if e.restoredSum(s.ID) != fileSum(t, path) {
		t.Error("restore differs")
	}

	// Prune's own forgetting keeps the chunks of a pack it removes that
	// another pack holds too.
	ix := newIndex()
	blob := packBlob{ID: strings.Repeat("c", 64), Off: 0, Len: 10, Raw: 8}
	x, y := strings.Repeat("1", 64), strings.Repeat("2", 64)
	ix.added(x, []packBlob{blob})
	ix.added(y, []packBlob{{ID: strings.Repeat("d", 64), Len: 5, Raw: 4}, {ID: blob.ID, Off: 5, Len: 10, Raw: 8}})
	ix.forget([]string{x}, nil)
	if loc, ok := ix.lookup(blob.ID); !ok || loc.Pack != y || loc.Off != 5 {
		t.Errorf("after the prune of one copy: %+v %v", loc, ok)
	}
}

// failSecondPack fails the upload of the second pack, once the first
// is stored.
type failSecondPack struct {
	backend.Backend
	packs    atomic.Int32
	firstOut chan struct{}
}

func (f *failSecondPack) Save(ctx context.Context, name string, r io.Reader, size int64) error {
	if !strings.HasPrefix(name, "data/") {
		return f.Backend.Save(ctx, name, r, size)
	}
	if f.packs.Add(1) == 1 {
		defer close(f.firstOut)
		return f.Backend.Save(ctx, name, r, size)
	}
	<-f.firstOut
	return errInjected
}

// TestFailedBackupIndexesItsPacks: the packs a failed backup uploaded
// are listed by an index file.
func TestFailedBackupIndexesItsPacks(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 40*mib, map[int64]int64{0: 40 * mib})
	f := &failSecondPack{Backend: e.be, firstOut: make(chan struct{})}
	if _, err := openAgain(t, f, Options{Password: "pw"}).Backup(ctx, e.snap("disk:a.img"), nil); !errors.Is(err, errInjected) {
		t.Fatalf("backup: %v", err)
	}
	packs := e.files("data")
	if len(packs) != 1 {
		t.Fatalf("packs: %v", packs)
	}
	files, damaged, err := e.r.readAllIndexFiles(ctx)
	if err != nil || len(damaged) != 0 {
		t.Fatal(err, damaged)
	}
	var listed []string
	for _, file := range files {
		for _, p := range file.Packs {
			listed = append(listed, p.ID)
		}
	}
	if len(listed) != 1 || !strings.HasSuffix(packs[0], listed[0]) {
		t.Errorf("index files list %v, the packs are %v", listed, packs)
	}
}

// dropLockRemoval fails the removal of locks while drop is set, as a
// backend that is down for a moment does.
type dropLockRemoval struct {
	backend.Backend
	drop atomic.Bool
}

func (d *dropLockRemoval) Remove(ctx context.Context, name string) error {
	if d.drop.Load() && strings.HasPrefix(name, "locks/") {
		return errInjected
	}
	return d.Backend.Remove(ctx, name)
}

// TestClaimLeftByThisRepository: a backup's lock left behind because the
// backend failed its removal does not keep the Repository from backing
// up the snapshot again (it removes it then); another's claim does.
func TestClaimLeftByThisRepository(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", mib, map[int64]int64{0: mib})
	p := e.snap("disk:a.img")
	d := &dropLockRemoval{Backend: e.be}
	r := openAgain(t, d, Options{Password: "pw"})
	// A backup that fails (its PE's data is gone) and cannot remove its lock.
	d.drop.Store(true)
	if _, err := r.Backup(ctx, failingData{p}, nil); !errors.Is(err, errInjected) {
		t.Fatalf("backup: %v", err)
	}
	d.drop.Store(false)
	if n := len(e.files("locks")); n != 1 {
		t.Fatalf("%d locks left", n)
	}
	if _, err := openAgain(t, e.be, Options{Password: "pw"}).Backup(ctx, p, nil); !errors.Is(err, ErrExists) {
		t.Errorf("backup beside another Repository's claim: %v", err)
	}
	if _, err := r.Backup(ctx, p, nil); err != nil {
		t.Errorf("backup beside this Repository's own left claim: %v", err)
	}
	if n := len(e.files("locks")); n != 0 {
		t.Errorf("%d locks left", n)
	}
}

// failingData fails where the backup asks for the PE's data.
type failingData struct{ pe.ProtectedEntity }

func (f failingData) Data(ctx context.Context) (pe.Image, error) { return nil, errInjected }
