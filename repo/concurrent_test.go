package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// snapErr takes a snapshot of a live PE, for goroutines (no t.Fatal).
func (e *env) snapErr(id string) (pe.ProtectedEntity, error) {
	ctx := context.Background()
	pid, err := pe.ParseID(id)
	if err != nil {
		return nil, err
	}
	p, err := e.m.Get(ctx, pid)
	if err != nil {
		return nil, err
	}
	s, err := p.Snapshot(ctx, nil)
	if err != nil {
		return nil, err
	}
	return e.m.Get(ctx, s)
}

// writeAt writes b into a live disk image.
func (e *env) writeAt(name string, b []byte, off int64) error {
	f, err := os.OpenFile(filepath.Join(e.dir, "disk", name), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(b, off)
	return err
}

// imageSum hashes the whole data of a repository snapshot, read through
// an image as NBD and FUSE read it.
func imageSum(ctx context.Context, r *Repository, id pe.ID) ([32]byte, error) {
	p, err := r.OpenSnapshot(ctx, id)
	if err != nil {
		return [32]byte{}, err
	}
	img, err := p.Data(ctx)
	if err != nil {
		return [32]byte{}, err
	}
	defer img.Close()
	h := sha256.New()
	if _, err := io.Copy(h, pe.NewReader(img)); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

// image opens the data of a repository snapshot, until the test ends.
func (e *env) image(id pe.ID) pe.Image {
	e.t.Helper()
	ctx := context.Background()
	p, err := e.r.OpenSnapshot(ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	img, err := p.Data(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { img.Close() })
	return img
}

// restoredSum restores a disk snapshot and hashes the disk made.
func (e *env) restoredSum(id pe.ID) [32]byte {
	e.t.Helper()
	out, err := e.restore(id)
	if err != nil {
		e.t.Fatalf("restore %s: %v", id, err)
	}
	return fileSum(e.t, filepath.Join(e.dir, "disk", out.Name()))
}

// openAgain opens a second Repository on a backend, as another
// appliance sharing it would.
func openAgain(t *testing.T, be backend.Backend, opts Options) *Repository {
	t.Helper()
	opts.Logger = quiet()
	r, err := Open(context.Background(), be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestConcurrentBackupsOneRepository backs up disks of their own data and
// copies of one disk, all at once and in rounds, into one Repository,
// while readers read every committed snapshot through its image: every
// read and every restore is byte-exact, and check reads everything clean.
func TestConcurrentBackupsOneRepository(t *testing.T) {
	dir, err := backend.NewDir(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, &slowIndex{Backend: dir, delay: 50 * time.Millisecond}, Options{Password: "pw"})
	ctx := context.Background()
	const size, rounds = 4 * mib, 4
	var names []string
	for i := range 3 {
		names = append(names, fmt.Sprintf("own%d.img", i))
		e.disk(names[i], size, map[int64]int64{0: 3 * mib})
	}
	same := e.disk("same0.img", size, map[int64]int64{mib: 3 * mib})
	data := mustRead(t, same)
	names = append(names, "same0.img")
	for i := 1; i < 3; i++ {
		names = append(names, fmt.Sprintf("same%d.img", i))
		os.WriteFile(filepath.Join(e.dir, "disk", names[len(names)-1]), data, 0o644)
	}
	// What the copies are changed to in each round: alike in all.
	changes := make([][]byte, rounds)
	for i := range changes {
		changes[i] = make([]byte, mib/2)
		rand.Read(changes[i])
	}

	var (
		mu        sync.Mutex
		committed = map[pe.ID][32]byte{} // snapshot → its disk's hash
		done      atomic.Bool
		wg        sync.WaitGroup
		errs      = make(chan error, 100)
	)
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range rounds {
				if round > 0 {
					change := changes[round]
					if strings.HasPrefix(name, "own") {
						change = make([]byte, mib/2)
						rand.Read(change)
					}
					if err := e.writeAt(name, change, int64(round)*mib); err != nil {
						errs <- err
						return
					}
				}
				p, err := e.snapErr("disk:" + name)
				if err != nil {
					errs <- err
					return
				}
				sum, err := sumFile(filepath.Join(e.dir, "disk", name))
				if err != nil {
					errs <- err
					return
				}
				// Out of step: one backup's refresh meets another's uploads.
				time.Sleep(time.Duration(mrand.IntN(200)) * time.Millisecond)
				if _, err := e.r.Backup(ctx, p, nil); err != nil {
					errs <- fmt.Errorf("backup %s round %d: %w", name, round, err)
					return
				}
				mu.Lock()
				committed[p.ID()] = sum
				mu.Unlock()
			}
		}()
	}
	var reads atomic.Int64
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; i < 500 && !done.Load(); i++ {
				mu.Lock()
				var id pe.ID
				var want [32]byte
				for id, want = range committed {
					break
				}
				mu.Unlock()
				if id.IsZero() {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				got, err := imageSum(ctx, e.r, id)
				if err != nil {
					errs <- fmt.Errorf("read %s: %w", id, err)
					return
				}
				if got != want {
					errs <- fmt.Errorf("read %s during the backups: its data differs", id)
					return
				}
				reads.Add(1)
			}
		}()
	}
	wg.Wait()
	done.Store(true)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	t.Logf("%d snapshots backed up, %d read meanwhile", len(committed), reads.Load())
	if len(committed) != len(names)*rounds {
		t.Fatalf("%d snapshots committed, want %d", len(committed), len(names)*rounds)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
	for id, want := range committed {
		if e.restoredSum(id) != want {
			t.Errorf("restore of %s differs", id)
		}
	}
	// What the copies hold is stored: another copy adds nothing.
	os.WriteFile(filepath.Join(e.dir, "disk", "same3.img"), mustRead(t, filepath.Join(e.dir, "disk", "same0.img")), 0o644)
	if s, err := e.r.Backup(ctx, e.snap("disk:same3.img"), nil); err != nil || s.New != 0 || s.Stored != 0 {
		t.Errorf("backup of another copy: %+v %v", s, err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTwoAppliancesOneBackend opens two Repository values on one backend,
// as two appliances sharing a directory or a bucket: they back up at
// once, and then each backs up what the other stored without storing a
// byte of it again.
func TestTwoAppliancesOneBackend(t *testing.T) {
	t.Run("dir", func(t *testing.T) {
		e := newEnv(t, nil, Options{Password: "pw"})
		be2, err := backend.NewDir(e.be.Location())
		if err != nil {
			t.Fatal(err)
		}
		testTwoAppliances(t, e, openAgain(t, be2, Options{Password: "pw"}))
	})
	t.Run("s3", func(t *testing.T) {
		srv := startS3(t)
		e := newEnv(t, srv.backend(t), Options{Password: "pw"})
		testTwoAppliances(t, e, openAgain(t, srv.backend(t), Options{Password: "pw"}))
	})
}

func testTwoAppliances(t *testing.T, e *env, r2 *Repository) {
	ctx := context.Background()
	const size = 24 * mib
	e.disk("a.img", size, map[int64]int64{0: 20 * mib})
	e.disk("b.img", size, map[int64]int64{mib: 20 * mib})
	pa, pb := e.snap("disk:a.img"), e.snap("disk:b.img")
	var wg sync.WaitGroup
	var sa, sb Summary
	var ea, eb error
	wg.Add(2)
	go func() { defer wg.Done(); sa, ea = e.r.Backup(ctx, pa, nil) }()
	go func() { defer wg.Done(); sb, eb = r2.Backup(ctx, pb, nil) }()
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatalf("concurrent backups: %v; %v", ea, eb)
	}
	t.Logf("concurrent: first stored %d bytes, second %d", sa.Stored, sb.Stored)

	copyDisk := func(from, to string) {
		os.WriteFile(filepath.Join(e.dir, "disk", to), mustRead(t, filepath.Join(e.dir, "disk", from)), 0o644)
	}
	copyDisk("a.img", "a2.img")
	copyDisk("b.img", "b2.img")
	pa2, pb2 := e.snap("disk:a2.img"), e.snap("disk:b2.img")
	s, err := r2.Backup(ctx, pa2, nil)
	if err != nil || s.Read != 20*mib || s.New != 0 || s.Stored != 0 {
		t.Errorf("the second appliance's backup of what the first stored: %+v %v", s, err)
	}
	s, err = e.r.Backup(ctx, pb2, nil)
	if err != nil || s.Read != 20*mib || s.New != 0 || s.Stored != 0 {
		t.Errorf("the first appliance's backup of what the second stored: %+v %v", s, err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
	for _, r := range []*Repository{e.r, r2} {
		for _, p := range []pe.ProtectedEntity{pa, pb, pa2, pb2} {
			got, err := imageSum(ctx, r, p.ID())
			if err != nil {
				t.Fatal(err)
			}
			if want := fileSum(t, filepath.Join(e.dir, "disk", p.ID().Name())); got != want {
				t.Errorf("%s read through %p differs", p.ID(), r)
			}
		}
	}
}

// slowIndex lists packs and writes index files slowly, as a remote
// bucket does: the packs of other backups land while a backup refreshes
// its index, and a backup's packs are uploaded a while before the index
// file that lists them.
type slowIndex struct {
	backend.Backend
	delay time.Duration
}

func (s *slowIndex) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	err := s.Backend.List(ctx, prefix, fn)
	if prefix == "data/" {
		time.Sleep(s.delay)
	}
	return err
}

func (s *slowIndex) Save(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasPrefix(name, "index/") {
		time.Sleep(s.delay)
	}
	return s.Backend.Save(ctx, name, r, size)
}

// faultyBackend fails listings or reads of objects under a prefix, and
// records what is removed.
type faultyBackend struct {
	backend.Backend
	failList, failLoad string
	mu                 sync.Mutex
	removed            []string
}

var errInjected = errors.New("injected failure")

// List fails after the first object under failList: a listing that
// breaks off half way, as a paged S3 listing may.
func (f *faultyBackend) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	if f.failList == "" || !strings.HasPrefix(prefix, f.failList) {
		return f.Backend.List(ctx, prefix, fn)
	}
	err := f.Backend.List(ctx, prefix, func(name string, size int64) error {
		if err := fn(name, size); err != nil {
			return err
		}
		return errInjected
	})
	if err == nil {
		err = errInjected
	}
	return err
}

func (f *faultyBackend) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if f.failLoad != "" && strings.HasPrefix(name, f.failLoad) {
		return nil, errInjected
	}
	return f.Backend.Load(ctx, name, off, length)
}

func (f *faultyBackend) Remove(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, "locks/") {
		f.mu.Lock()
		f.removed = append(f.removed, name)
		f.mu.Unlock()
	}
	return f.Backend.Remove(ctx, name)
}

// TestPruneStopsOnBackendErrors fails each listing and read prune needs
// in turn: prune fails and removes nothing; then it runs clean.
func TestPruneStopsOnBackendErrors(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	e.disk("b.img", 4*mib, map[int64]int64{0: 3 * mib})
	a := e.backup("disk:a.img")
	b := e.backup("disk:b.img")
	if err := e.r.Forget(ctx, a); err != nil {
		t.Fatal(err)
	}
	// A failed backup's leftover, which prune removes too.
	failed := e.snap("disk:a.img").ID()
	os.MkdirAll(e.snapDir(failed), 0o700)
	os.WriteFile(filepath.Join(e.snapDir(failed), "index"), []byte("partial"), 0o600)

	all := func() []string { return append(append(e.files("data"), e.files("index")...), e.files("snapshots")...) }
	before := all()
	for _, c := range []struct{ list, load string }{
		{list: "snapshots/"}, {list: "index/"}, {list: "data/"},
		{load: "snapshots/"}, {load: "index/"},
	} {
		f := &faultyBackend{Backend: e.be, failList: c.list, failLoad: c.load}
		r := openAgain(t, f, Options{Password: "pw"}) // a fresh index: it reads every index file
		_, err := r.Prune(ctx)
		if !errors.Is(err, errInjected) {
			t.Errorf("prune with %+v failing: %v", c, err)
		}
		if len(f.removed) != 0 {
			t.Errorf("prune with %+v failing removed %v", c, f.removed)
		}
		if got := all(); strings.Join(got, "\n") != strings.Join(before, "\n") {
			t.Errorf("prune with %+v failing changed the repository:\n%v\nwas\n%v", c, got, before)
		}
	}
	s, err := e.r.Prune(ctx)
	if err != nil || s.Packs != 1 || s.Incomplete != 1 {
		t.Errorf("prune: %+v %v", s, err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
	if e.restoredSum(b) != fileSum(t, filepath.Join(e.dir, "disk", "b.img")) {
		t.Error("restore after prune differs")
	}
}

// pausedPE stops a backup where it asks for the PE's data, after the
// backup has taken its lock and refreshed its index.
type pausedPE struct {
	pe.ProtectedEntity
	reached, resume chan struct{}
}

func (p *pausedPE) Data(ctx context.Context) (pe.Image, error) {
	close(p.reached)
	<-p.resume
	return p.ProtectedEntity.Data(ctx)
}

// TestBackupLosingItsLockDoesNotCommit lets a prune remove, under a
// stolen lock, the packs a running backup dedups against: the backup
// must not commit a snapshot that names them; run again, it stores them
// anew.
func TestBackupLosingItsLockDoesNotCommit(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	path := e.disk("a.img", 4*mib, map[int64]int64{0: 3 * mib})
	old := e.backup("disk:a.img")
	if err := e.r.Forget(ctx, old); err != nil {
		t.Fatal(err)
	}
	p := &pausedPE{ProtectedEntity: e.snap("disk:a.img"), reached: make(chan struct{}), resume: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := e.r.Backup(ctx, p, nil)
		done <- err
	}()
	<-p.reached
	other := openAgain(t, e.be, Options{Password: "pw"})
	if n, err := other.Unlock(ctx, true); err != nil || n != 1 {
		t.Fatalf("unlock --force: %d %v", n, err)
	}
	if s, err := other.Prune(ctx); err != nil || s.Packs == 0 {
		t.Fatalf("prune: %+v %v", s, err)
	}
	close(p.resume)
	if err := <-done; !errors.Is(err, ErrLocked) {
		t.Errorf("backup that lost its lock: %v", err)
	}
	if snaps, err := e.r.Snapshots(ctx, pe.ID{}); err != nil || len(snaps) != 0 {
		t.Errorf("snapshots: %v %v", snaps, err)
	}
	s, err := e.r.Backup(ctx, e.snap("disk:a.img"), nil)
	if err != nil || s.New != 3*mib {
		t.Errorf("backup again: %+v %v", s, err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
	if e.restoredSum(s.ID) != fileSum(t, path) {
		t.Error("restore differs")
	}
}

// TestPruneDuringBackups runs backups in three Repository values on one
// backend, each keeping only its latest snapshot of content that comes
// back in later rounds, while a fourth prunes: prune never removes a pack
// a committed snapshot needs, nor does a backup refer to a pack pruned
// since its Repository last saw it.
func TestPruneDuringBackups(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	const backups, minRounds, maxRounds = 3, 6, 40
	payloads := make([][]byte, 3)
	for i := range payloads {
		payloads[i] = make([]byte, 2*mib)
		rand.Read(payloads[i])
	}
	pruner := openAgain(t, e.be, Options{Password: "pw"})
	var (
		mu        sync.Mutex
		latest    = map[pe.ID][32]byte{}
		pruned    atomic.Int64 // prunes that removed packs
		waiting   atomic.Bool  // the pruner has been locked out a while
		running   atomic.Int64
		errs      = make(chan error, 100)
		wg        sync.WaitGroup
		lockedOut atomic.Int64
	)
	retry := func(f func() error) error {
		for range 1000 {
			err := f()
			if !errors.Is(err, ErrLocked) {
				return err
			}
			lockedOut.Add(1)
			time.Sleep(time.Duration(mrand.IntN(20)) * time.Millisecond)
		}
		return errors.New("locked out 1000 times")
	}
	for g := range backups {
		r := e.r
		if g > 0 {
			r = openAgain(t, e.be, Options{Password: "pw"})
		}
		name := fmt.Sprintf("d%d.img", g)
		e.disk(name, 4*mib, nil)
		running.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer running.Add(-1)
			var prev pe.ID
			for round := 0; round < maxRounds && (round < minRounds || pruned.Load() < 3); round++ {
				// Let a starved prune in, a bounded while.
				for i := 0; i < 20 && waiting.Load(); i++ {
					time.Sleep(10 * time.Millisecond)
				}
				if err := e.writeAt(name, payloads[(g+round)%len(payloads)], mib); err != nil {
					errs <- err
					return
				}
				p, err := e.snapErr("disk:" + name)
				if err != nil {
					errs <- err
					return
				}
				sum, err := sumFile(filepath.Join(e.dir, "disk", name))
				if err != nil {
					errs <- err
					return
				}
				if err := retry(func() error { _, err := r.Backup(ctx, p, nil); return err }); err != nil {
					errs <- fmt.Errorf("backup %s round %d: %w", name, round, err)
					return
				}
				mu.Lock()
				latest[p.ID()] = sum
				if !prev.IsZero() {
					delete(latest, prev)
				}
				mu.Unlock()
				if !prev.IsZero() {
					if err := r.Forget(ctx, prev); err != nil {
						errs <- err
						return
					}
				}
				prev = p.ID()
			}
		}()
	}
	prunes := 0
	for i := 0; running.Load() > 0 && i < 100000; i++ {
		s, err := pruner.Prune(ctx)
		switch {
		case errors.Is(err, ErrLocked):
			waiting.Store(true)
			time.Sleep(5 * time.Millisecond)
			continue
		case err != nil:
			t.Errorf("prune: %v", err)
		}
		waiting.Store(false)
		prunes++
		if s.Packs > 0 {
			pruned.Add(1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waiting.Store(false)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d prunes ran, %d removed packs; backups and prunes locked out %d times", prunes, pruned.Load(), lockedOut.Load())
	if pruned.Load() == 0 {
		t.Error("no prune removed anything while the backups ran")
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check: %v", probs)
	}
	snaps, err := e.r.Snapshots(ctx, pe.ID{})
	if err != nil || len(snaps) != backups {
		t.Fatalf("snapshots: %v %v", snaps, err)
	}
	for id, want := range latest {
		if e.restoredSum(id) != want {
			t.Errorf("restore of %s differs", id)
		}
	}
	// A last prune with nothing running: what stays is what they use.
	if _, err := pruner.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check after the last prune: %v", probs)
	}
}

// TestReadGivenUp reads a snapshot's image with a context given up: the
// read stops with the context's error and fetches nothing; the image
// reads on for others.
func TestReadGivenUp(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	path := e.disk("a.img", 4*mib, map[int64]int64{0: 4 * mib})
	img := e.image(e.backup("disk:a.img"))
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	buf := make([]byte, 4096)
	if n, err := pe.ReadAt(cancelled, img, buf, mib); !errors.Is(err, context.Canceled) || n != 0 {
		t.Errorf("read given up: %d bytes, %v", n, err)
	}
	want := make([]byte, len(buf))
	f, _ := os.Open(path)
	f.ReadAt(want, mib)
	f.Close()
	if _, err := pe.ReadAt(ctx, img, buf, mib); err != nil || !bytes.Equal(buf, want) {
		t.Errorf("read after one given up: %v", err)
	}
}
