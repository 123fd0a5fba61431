package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// cancelAfterPacks is a backend that cancels a copy once n packs are
// stored: an interruption at a known point.
type cancelAfterPacks struct {
	backend.Backend
	n      int32
	saved  atomic.Int32
	cancel context.CancelFunc
}

func (b *cancelAfterPacks) Save(ctx context.Context, name string, r io.Reader, size int64) error {
	err := b.Backend.Save(ctx, name, r, size)
	if err == nil && strings.HasPrefix(name, "data/") && b.saved.Add(1) == b.n {
		b.cancel()
	}
	return err
}

// checkReplica checks the target's data and that each snapshot restores
// from it as the disk or tree it was taken of.
func checkReplica(t *testing.T, src, dst *env, want map[pe.ID]func(restored pe.ID) bool) {
	t.Helper()
	ctx := context.Background()
	if probs, err := dst.r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
		t.Fatalf("check --read-data of the target: %v %v", probs, err)
	}
	for id, same := range want {
		a, err := src.r.Snapshots(ctx, id)
		if err != nil || len(a) != 1 {
			t.Fatalf("source %s: %v %v", id, a, err)
		}
		b, err := dst.r.Snapshots(ctx, id)
		if err != nil || len(b) != 1 {
			t.Fatalf("target %s: %v %v", id, b, err)
		}
		if !a[0].BackedUp.Equal(b[0].BackedUp) || a[0].Info.Size != b[0].Info.Size || a[0].Info.ID != b[0].Info.ID {
			t.Errorf("%s: the copy's info %+v differs from the source's %+v", id, b[0], a[0])
		}
		restored, err := dst.restore(id)
		if err != nil {
			t.Fatalf("restore %s from the target: %v", id, err)
		}
		if !same(restored) {
			t.Errorf("%s restored from the target differs from what was backed up", id)
		}
	}
}

func TestCopy(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	diskSame := func(path string) func(pe.ID) bool {
		sum := fileSum(t, path)
		return func(restored pe.ID) bool {
			return fileSum(t, filepath.Join(dst.dir, "disk", restored.Name())) == sum
		}
	}

	a := src.disk("a.img", 64*mib, map[int64]int64{0: 8 * mib, 40 * mib: 4 * mib})
	tree := filepath.Join(src.dir, "fs", "home")
	if err := samples.WriteTree(tree); err != nil {
		t.Fatal(err)
	}
	pa, pt := src.snap("disk:a.img"), src.snap("fs:home")
	for _, p := range []pe.ProtectedEntity{pa, pt} {
		if _, err := src.r.Backup(ctx, p, nil); err != nil {
			t.Fatal(err)
		}
	}
	s, err := dst.r.Copy(ctx, src.r, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first copy: %+v", s)
	if len(s.Copied) != 2 || s.New < 12*mib || s.Sent < 12*mib || s.Present != 0 {
		t.Errorf("first copy: %+v", s)
	}
	treeWant := treeSums(t, tree)
	checkReplica(t, src, dst, map[pe.ID]func(pe.ID) bool{
		pa.ID(): diskSame(a),
		pt.ID(): func(r pe.ID) bool { return treeSums(t, filepath.Join(dst.dir, "fs", r.Name())) == treeWant },
	})

	// Again: nothing to do.
	s, err = dst.r.Copy(ctx, src.r, nil, nil)
	if err != nil || len(s.Copied) != 0 || len(s.Skipped) != 2 || s.Sent != 0 || s.Read != 0 {
		t.Errorf("copy again: %+v %v", s, err)
	}

	// A second backup with 1 MiB changed: its copy sends about that.
	f, _ := os.OpenFile(a, os.O_WRONLY, 0)
	b := make([]byte, mib)
	rand.Read(b)
	f.WriteAt(b, 2*mib)
	f.Close()
	pa2 := src.backup("disk:a.img")
	s, err = dst.r.Copy(ctx, src.r, []pe.ID{pa2.Base()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("incremental copy: %+v", s)
	if len(s.Copied) != 1 || s.Read != mib || s.New != mib || s.Sent > mib+64<<10 || s.Present != 11*mib {
		t.Errorf("incremental copy of 1 MiB changed: %+v", s)
	}
	checkReplica(t, src, dst, map[pe.ID]func(pe.ID) bool{pa2: diskSame(a)})

	// Interrupted after two packs of a 64 MiB disk: the run again reads
	// and sends only what the first did not store.
	c := src.disk("c.img", 64*mib, map[int64]int64{0: 64 * mib})
	pc := src.backup("disk:c.img")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cut := &cancelAfterPacks{Backend: dst.be, n: 2, cancel: cancel}
	interrupted, err := Open(ctx, cut, Options{Password: "second site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer interrupted.Close()
	s, err = interrupted.Copy(cctx, src.r, []pe.ID{pc}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted copy: %+v %v", s, err)
	}
	t.Logf("interrupted copy: %+v", s)
	if snaps, _ := dst.r.Snapshots(ctx, pc); len(snaps) != 0 {
		t.Fatal("an interrupted copy committed its snapshot")
	}
	s2, err := dst.r.Copy(ctx, src.r, []pe.ID{pc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("copy after the interruption: %+v", s2)
	if s2.Present < 2*packTarget-mib || s2.Read > 64*mib-s2.Present || s2.Read+s2.Present != 64*mib {
		t.Errorf("copy after an interruption after 2 packs: %+v", s2)
	}
	checkReplica(t, src, dst, map[pe.ID]func(pe.ID) bool{pc: diskSame(c)})
}

// An unencrypted source copies into an encrypted target and that into an
// unencrypted one; a repository is not copied into itself.
func TestCopyUnencryptedSource(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Insecure: true})
	dst := newEnv(t, nil, Options{Password: "second site"})
	tree := filepath.Join(src.dir, "fs", "home")
	if err := samples.WriteTree(tree); err != nil {
		t.Fatal(err)
	}
	p := src.backup("fs:home")
	if _, err := src.r.Copy(ctx, src.r, nil, nil); err == nil || !strings.Contains(err.Error(), "the same repository") {
		t.Errorf("copy into itself: %v", err)
	}
	if _, err := dst.r.Copy(ctx, src.r, []pe.ID{mustID(t, "fs:nothing")}, nil); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("copy of a PE without snapshots: %v", err)
	}
	if _, err := dst.r.Copy(ctx, src.r, nil, nil); err != nil {
		t.Fatal(err)
	}
	want := treeSums(t, tree)
	checkReplica(t, src, dst, map[pe.ID]func(pe.ID) bool{
		p: func(r pe.ID) bool { return treeSums(t, filepath.Join(dst.dir, "fs", r.Name())) == want },
	})
	// And from the encrypted copy into another unencrypted repository.
	third := newEnv(t, nil, Options{Insecure: true})
	if _, err := third.r.Copy(ctx, dst.r, nil, nil); err != nil {
		t.Fatal(err)
	}
	checkReplica(t, dst, third, map[pe.ID]func(pe.ID) bool{
		p: func(r pe.ID) bool { return treeSums(t, filepath.Join(third.dir, "fs", r.Name())) == want },
	})
}

func mustID(t *testing.T, s string) pe.ID {
	t.Helper()
	id, err := pe.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// lockHook runs hook once, when the first lock is about to be saved.
type lockHook struct {
	backend.Backend
	once sync.Once
	hook func()
}

func (b *lockHook) Save(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.HasPrefix(name, "locks/") {
		b.once.Do(b.hook)
	}
	return b.Backend.Save(ctx, name, r, size)
}

// TestCopyRechecksUnderLock: another process commits the snapshot between
// a copy's first look and its lock. The copy must find it there under the
// lock and leave it alone, not write it again (which would replace its
// index under its info).
func TestCopyRechecksUnderLock(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	src.disk("a.img", 8*mib, map[int64]int64{0: 3 * mib})
	p := src.backup("disk:a.img")
	var other string
	hooked := &lockHook{Backend: dst.be, hook: func() {
		// The other process: its own Repository on the same target.
		s, err := dst.r.Copy(ctx, src.r, nil, nil)
		if err != nil || len(s.Copied) != 1 {
			t.Errorf("the other copy: %+v %v", s, err)
		}
		other = dst.snapshotObjects(p)
	}}
	late, err := Open(ctx, hooked, Options{Password: "second site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	s, err := late.Copy(ctx, src.r, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Copied) != 0 {
		t.Errorf("the late copy wrote %v again: %+v", s.Copied, s)
	}
	if got := dst.snapshotObjects(p); got != other {
		t.Errorf("the committed snapshot's objects changed under the late copy")
	}
	if probs, err := dst.r.Check(ctx, false, nil); err != nil || len(probs) != 0 {
		t.Fatalf("check: %v %v", probs, err)
	}
}

// TestCopyComparesSnapshotsThere: a snapshot the target holds already is
// compared with the source's. The same, it is skipped; with another
// info, time or content, it is left alone and named in the error, and
// the other snapshots are copied all the same.
func TestCopyComparesSnapshotsThere(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	src.disk("a.img", 8*mib, map[int64]int64{0: 3 * mib})
	pa := src.backup("disk:a.img")
	if _, err := dst.r.Copy(ctx, src.r, nil, nil); err != nil {
		t.Fatal(err)
	}
	original := map[string][]byte{}
	for _, obj := range []string{"index", "info"} {
		b, err := backend.ReadAll(ctx, dst.be, snapshotDir(pa)+"/"+obj)
		if err != nil {
			t.Fatal(err)
		}
		original[obj] = b
	}
	// forge rewrites the target's copy of pa as copied, then changed by
	// change.
	forge := func(change func(*snapshotIndex, *snapshotInfo)) {
		t.Helper()
		for obj, b := range original {
			if err := dst.r.saveObject(ctx, snapshotDir(pa)+"/"+obj, b); err != nil {
				t.Fatal(err)
			}
		}
		idx, si, err := dst.r.loadSnapshot(ctx, pa)
		if err != nil {
			t.Fatal(err)
		}
		change(idx, si)
		if err := dst.r.saveSnapshot(ctx, pa, idx, snapshotInfo{Info: si.Info, BackedUp: si.BackedUp}); err != nil {
			t.Fatal(err)
		}
	}
	same := func(*snapshotIndex, *snapshotInfo) {}
	forge(same)
	s, err := dst.r.Copy(ctx, src.r, nil, nil)
	if err != nil || len(s.Skipped) != 1 || len(s.Copied) != 0 || len(s.Differ) != 0 {
		t.Fatalf("copy with the same snapshot there: %+v %v", s, err)
	}

	// A second PE, not in the target yet: copied whatever the first.
	src.disk("b.img", 4*mib, map[int64]int64{mib: mib})
	pb := src.backup("disk:b.img")
	for _, tc := range []struct {
		what   string
		change func(*snapshotIndex, *snapshotInfo)
	}{
		{"info", func(_ *snapshotIndex, si *snapshotInfo) { si.Info.Size++ }},
		{"backup time", func(idx *snapshotIndex, si *snapshotInfo) { si.BackedUp = si.BackedUp.Add(time.Second) }},
		{"data", func(idx *snapshotIndex, _ *snapshotInfo) { idx.Data.Chunks = idx.Data.Chunks[1:] }},
		{"data", func(idx *snapshotIndex, _ *snapshotInfo) {
			idx.Data.Chunks[1].ID, idx.Data.Chunks[2].ID = idx.Data.Chunks[2].ID, idx.Data.Chunks[1].ID
		}},
		{"components", func(idx *snapshotIndex, _ *snapshotInfo) { idx.Components = []string{pb.String()} }},
	} {
		forge(tc.change)
		forged := dst.snapshotObjects(pa)
		s, err := dst.r.Copy(ctx, src.r, nil, nil)
		if !errors.Is(err, ErrSnapshotDiffers) || !strings.Contains(err.Error(), "snapshot "+pa.String()+": differs from the source's in its "+tc.what) {
			t.Errorf("%s changed in the target: %+v %v", tc.what, s, err)
		}
		t.Logf("%s changed: %v", tc.what, err)
		if len(s.Differ) != 1 || s.Differ[0] != pa || len(s.Copied)+len(s.Skipped) != 1 {
			t.Errorf("%s changed in the target: %+v", tc.what, s)
		}
		if got, _ := dst.r.Snapshots(ctx, pb); len(got) != 1 {
			t.Errorf("%s changed in the target: the other snapshot was not copied", tc.what)
		}
		if dst.snapshotObjects(pa) != forged {
			t.Errorf("%s changed in the target: the copy overwrote it", tc.what)
		}
	}
}

// readOnlyMount bind-mounts dir read-only at a new directory, as a
// replica or a snapshot of a file system is mounted: even root cannot
// write there.
func readOnlyMount(t *testing.T, dir string) string {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "--bind", dir, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind (the test runs as root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o remount,bind,ro: %v: %s", err, out)
	}
	return mnt
}

// loadHook runs hook once, before the first pack is read.
type loadHook struct {
	backend.Backend
	once sync.Once
	hook func()
}

func (b *loadHook) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if strings.HasPrefix(name, "data/") {
		b.once.Do(b.hook)
	}
	return b.Backend.Load(ctx, name, off, length)
}

// TestCopyFromReadOnlySource copies from a repository mounted read-only:
// without a lock on it, but not while a prune holds its exclusive lock;
// a prune that removes the packs of a snapshot being copied makes the
// copy fail without committing it, and the target stays sound.
func TestCopyFromReadOnlySource(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	a := src.disk("a.img", 8*mib, map[int64]int64{0: 3 * mib})
	pa := src.backup("disk:a.img")
	ro, err := backend.NewDir(readOnlyMount(t, src.be.Location()))
	if err != nil {
		t.Fatal(err)
	}
	roSrc, err := Open(ctx, ro, Options{Password: "first site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer roSrc.Close()
	s, err := dst.r.Copy(ctx, roSrc, nil, nil)
	if err != nil || len(s.Copied) != 1 || !s.SourceUnlocked {
		t.Fatalf("copy from a read-only source: %+v %v", s, err)
	}
	sum := fileSum(t, a)
	checkReplica(t, src, dst, map[pe.ID]func(pe.ID) bool{
		pa: func(r pe.ID) bool { return fileSum(t, filepath.Join(dst.dir, "disk", r.Name())) == sum },
	})
	// A writable source is locked while it is read.
	locked := false
	probe := &loadHook{Backend: src.be, hook: func() {
		src.be.List(ctx, "locks/", func(string, int64) error { locked = true; return nil })
	}}
	third := newEnv(t, nil, Options{Password: "third site"})
	wsrc, err := Open(ctx, probe, Options{Password: "first site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer wsrc.Close()
	if s, err := third.r.Copy(ctx, wsrc, nil, nil); err != nil || s.SourceUnlocked || !locked {
		t.Errorf("copy from a writable source: %+v %v, source locked while read: %v", s, err, locked)
	}

	// A prune of the source holds its exclusive lock: no copy from it.
	src.disk("b.img", 64*mib, map[int64]int64{0: 64 * mib})
	pb := src.backup("disk:b.img")
	prune, err := src.r.lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	s, err = dst.r.Copy(ctx, roSrc, nil, nil)
	prune.release()
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "exclusive lock") || len(s.Copied) != 0 {
		t.Fatalf("copy from a read-only source a prune holds: %+v %v", s, err)
	}

	// A prune that starts once the copy runs and removes the packs of the
	// snapshot it copies: the copy fails, nothing of it is committed.
	pruned := &loadHook{Backend: ro, hook: func() {
		if err := src.r.Forget(ctx, pb); err != nil {
			t.Error(err)
		}
		if _, err := src.r.Prune(ctx); err != nil {
			t.Error(err)
		}
	}}
	cut, err := Open(ctx, pruned, Options{Password: "first site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	s, err = dst.r.Copy(ctx, cut, []pe.ID{pb}, nil)
	t.Logf("copy during a prune: %+v %v", s, err)
	if !errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), "pruned meanwhile") || len(s.Copied) != 0 {
		t.Fatalf("copy from a read-only source pruned meanwhile: %+v %v", s, err)
	}
	if got, _ := dst.r.Snapshots(ctx, pb); len(got) != 0 {
		t.Fatalf("the snapshot pruned in the source while copied was committed in the target")
	}
	if probs, err := dst.r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
		t.Fatalf("check --read-data of the target: %v %v", probs, err)
	}
}

// inFlight counts the source's pack reads at once. Each waits until
// copyAhead are (or 10 s have passed once): only reads ahead let them.
type inFlight struct {
	backend.Backend
	now, max atomic.Int32
	loads    atomic.Int32
	full     chan struct{}
	once     sync.Once
	gaveUp   atomic.Bool
}

func (b *inFlight) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if !strings.HasPrefix(name, "data/") {
		return b.Backend.Load(ctx, name, off, length)
	}
	b.loads.Add(1)
	n := b.now.Add(1)
	defer b.now.Add(-1)
	for m := b.max.Load(); n > m && !b.max.CompareAndSwap(m, n); m = b.max.Load() {
	}
	if n >= copyAhead {
		b.once.Do(func() { close(b.full) })
	}
	if !b.gaveUp.Load() {
		select {
		case <-b.full:
		case <-time.After(10 * time.Second):
			b.gaveUp.Store(true)
		}
	}
	return b.Backend.Load(ctx, name, off, length)
}

// TestCopyReadsAhead: the source's chunks are read copyAhead at once,
// never more, neighbours in a pack with one request.
func TestCopyReadsAhead(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	a := src.disk("a.img", 48*mib, map[int64]int64{0: 40 * mib})
	// One backup worker packs the chunks in exactly the stream's order.
	// Several pack them about in order, and how far off depends on the
	// machine's cores and load (a CI run with more of both saw 21 reads):
	// what is counted here is the grouping of reads, not the layout.
	procs := runtime.GOMAXPROCS(1)
	p := src.backup("disk:a.img")
	runtime.GOMAXPROCS(procs)
	counted := &inFlight{Backend: src.be, full: make(chan struct{})}
	cs, err := Open(ctx, counted, Options{Password: "first site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := dst.r.Copy(ctx, cs, nil, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reads of the source's packs for 40 chunks, at most %d at once", counted.loads.Load(), counted.max.Load())
	// Three chunks of 1 MiB to a read of at most 4 MiB, 16 to a pack: 15.
	if n := counted.loads.Load(); n > 16 {
		t.Errorf("%d reads of the source's packs for 40 chunks: neighbours are not read together", n)
	}
	if m := counted.max.Load(); m != copyAhead || counted.gaveUp.Load() {
		t.Errorf("%d reads of the source at once, want %d", m, copyAhead)
	}
	sum := fileSum(t, a)
	checkReplica(t, src, dst, map[pe.ID]func(pe.ID) bool{
		p: func(r pe.ID) bool { return fileSum(t, filepath.Join(dst.dir, "disk", r.Name())) == sum },
	})
}

// TestCopyComponentCycle: a source snapshot that is its own component,
// or one of its components' (a damaged or forged source), fails the copy
// with an error naming it; the copy does not wait on itself forever, and
// commits none of the cycle.
func TestCopyComponentCycle(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	var ids []pe.ID
	for _, name := range []string{"a.img", "b.img", "c.img"} {
		src.disk(name, 2*mib, map[int64]int64{0: mib})
		p := src.backup("disk:" + name)
		ids = append(ids, p)
	}
	components := func(id pe.ID, comps ...pe.ID) {
		t.Helper()
		idx, si, err := src.r.loadSnapshot(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		idx.Components = nil
		for _, c := range comps {
			idx.Components = append(idx.Components, c.String())
		}
		if err := src.r.saveSnapshot(ctx, id, idx, snapshotInfo{Info: si.Info, BackedUp: si.BackedUp}); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c := ids[0], ids[1], ids[2]
	for _, tc := range []struct {
		name  string
		forge func()
		cycle pe.ID
	}{
		{"itself", func() { components(a, a) }, a},
		{"a→b→c→a", func() { components(a, b); components(b, c); components(c, a) }, a},
	} {
		tc.forge()
		dst := newEnv(t, nil, Options{Password: "second site"})
		// Bounded: a copy that waited on itself would fail the test here.
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		s, err := dst.r.Copy(cctx, src.r, []pe.ID{a}, nil)
		cancel()
		t.Logf("%s: %v", tc.name, err)
		if err == nil || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), tc.cycle.String()+" is a component of itself") {
			t.Errorf("copy of a snapshot that is a component of %s: %+v %v", tc.name, s, err)
		}
		for _, id := range ids {
			if got, _ := dst.r.Snapshots(ctx, id); len(got) != 0 {
				t.Errorf("%s: %s of the cycle was committed", tc.name, id)
			}
		}
	}
	// Shared components are no cycle: a→b, a→c, b→c copies each once.
	components(a, b, c)
	components(b, c)
	components(c)
	dst := newEnv(t, nil, Options{Password: "second site"})
	s, err := dst.r.Copy(ctx, src.r, []pe.ID{a}, nil)
	if err != nil || len(s.Copied) != 3 || s.Copied[0] != c || s.Copied[1] != b || s.Copied[2] != a {
		t.Errorf("copy of a→b, a→c, b→c: %+v %v", s, err)
	}
}

// BenchmarkCopy copies a snapshot of 256 MiB of random data between two
// directory repositories (the CPU's part of a copy: open, decompress,
// hash, compress, seal); scripts/bench/copy.sh times one between two S3
// servers.
func BenchmarkCopy(b *testing.B) {
	ctx := context.Background()
	src := newEnv(b, nil, Options{Password: "first site"})
	src.disk("a.img", 256*mib, map[int64]int64{0: 256 * mib})
	p := src.snap("disk:a.img")
	if _, err := src.r.Backup(ctx, p, nil); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(256 * mib)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dst := newEnv(b, nil, Options{Password: "second site"})
		b.StartTimer()
		if _, err := dst.r.Copy(ctx, src.r, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// compressibleDisk writes a disk image of n chunks of 1 MiB, each
// distinct and compressing to a few hundred bytes, as disk PE name, and
// backs it up in e: a pack holds many of them.
func compressibleDisk(t *testing.T, e *env, name string, n int) pe.ProtectedEntity {
	t.Helper()
	f, err := os.Create(filepath.Join(e.dir, "disk", name))
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{0xab}, mib)
	for i := range n {
		binary.LittleEndian.PutUint64(buf, uint64(i)+1)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	p := e.snap("disk:" + name)
	if _, err := e.r.Backup(context.Background(), p, nil); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCopyReadAheadBound: chunks that compress well (1 MiB in a few
// hundred bytes of a pack) are read together by what they open to, not
// by what they take in the pack: the chunks read ahead and held opened
// are at most copyAhead*copyReadBytes bytes.
func TestCopyReadAheadBound(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	const n = 48 // more MiB than the bound
	p := compressibleDisk(t, src, "c.img", n)
	idx, _, err := src.r.loadSnapshot(ctx, p.ID())
	if err != nil {
		t.Fatal(err)
	}
	packs := map[string]bool{}
	for _, ch := range idx.Data.Chunks {
		packs[ch.Pack] = true
	}
	if len(idx.Data.Chunks) != n || len(packs) != 1 {
		t.Fatalf("%d chunks in %d packs, want %d in one: the test reads no group", len(idx.Data.Chunks), len(packs), n)
	}
	c := &copyRun{r: dst.r, src: src.r, ctx: ctx}
	ra := c.readAhead(ctx, newPacker(ctx, dst.r), idx.Data.Chunks)
	var got, groups int
	for a := range ra.chunks {
		data, err := ra.wait(ctx, a)
		if err != nil || int64(len(data)) != a.ch.Len {
			t.Fatalf("chunk at %d: %d bytes, %v", a.ch.Off, len(data), err)
		}
		got++
		if a.slot {
			groups++
		}
	}
	ra.close()
	t.Logf("%d chunks of 1 MiB in %d reads; at most %d MiB held opened", got, groups, ra.peak.Load()>>20)
	if got != n || ra.held.Load() != 0 {
		t.Errorf("%d chunks read, %d bytes left held; want %d, 0", got, ra.held.Load(), n)
	}
	if peak := ra.peak.Load(); peak > copyAhead*copyReadBytes {
		t.Errorf("%d MiB held opened at once, more than copyAhead*copyReadBytes = %d MiB", peak>>20, copyAhead*copyReadBytes>>20)
	}
	if groups < n*mib/copyReadBytes {
		t.Errorf("%d MiB of chunks read in %d reads: more than %d MiB opened from one", n, groups, copyReadBytes>>20)
	}
}

// blockingLoad is a source whose reads of packs cancel the copy, then
// wait for release (as a local read, deaf to ctx, goes on): it tells
// whether one ended, or a new one began, after the copy returned.
type blockingLoad struct {
	backend.Backend
	cancel   context.CancelFunc
	entered  chan struct{}
	once     sync.Once
	release  chan struct{}
	returned atomic.Bool // set by the test once Copy returned
	late     atomic.Int32
}

func (b *blockingLoad) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if !strings.HasPrefix(name, "data/") {
		return b.Backend.Load(ctx, name, off, length)
	}
	if b.returned.Load() {
		b.late.Add(1)
	}
	b.cancel()
	b.once.Do(func() { close(b.entered) })
	<-b.release
	rc, err := b.Backend.Load(ctx, name, off, length)
	if b.returned.Load() {
		b.late.Add(1)
	}
	return rc, err
}

// TestCopyCancelledWaitsForReads: a copy cancelled (a job cancelled, an
// error storing) returns once its reads ahead have ended, so that the
// source closed then (the caller's defer) is not used any more: it used
// to be, and opening a chunk with the closed decoder crashed the process.
func TestCopyCancelledWaitsForReads(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	compressibleDisk(t, src, "c.img", 32)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hook := &blockingLoad{Backend: src.be, cancel: cancel, entered: make(chan struct{}), release: make(chan struct{})}
	s, err := Open(ctx, hook, Options{Password: "first site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := dst.r.Copy(cctx, s, nil, nil)
		hook.returned.Store(true)
		s.Close() // as the CLI's and the replicate job's defer do
		done <- err
	}()
	<-hook.entered
	// The read is let go once Copy returned (it must not have), or
	// after a while.
	select {
	case err := <-done:
		close(hook.release)
		t.Fatalf("the copy returned while its source was being read: %v", err)
	case <-time.After(2 * time.Second):
	}
	close(hook.release)
	err = <-done
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled copy: %v, want context.Canceled", err)
	}
	if n := hook.late.Load(); n != 0 {
		t.Errorf("%d reads of the source after the copy returned", n)
	}
}

// TestCopyComparesWithoutHashingZeros: a stream compared with its copy
// (a snapshot copied already, skipped) hashes no zeros: 2000 chunks of
// as many lengths (content-defined, about 4 GiB) used to cost 4 GiB of
// zeros allocated and hashed on each side. A chunk of zeros one side has
// where the other has a hole is still the same; another chunk is not.
func TestCopyComparesWithoutHashingZeros(t *testing.T) {
	c := &copyRun{zeros: map[int64]string{}}
	st := &stream{}
	for i := range 2000 {
		n := int64(mib + i*997)
		st.Chunks = append(st.Chunks, chunkRef{Off: st.Size, Len: n, ID: chunkID([]byte{byte(i), byte(i >> 8)}), Pack: "a"})
		st.Size += n
	}
	moved := &stream{Size: st.Size}
	for _, ch := range st.Chunks {
		ch.Pack = "b"
		moved.Chunks = append(moved.Chunks, ch)
	}
	if !c.sameContent(st, moved) || len(c.zeros) != 0 {
		t.Fatalf("a stream and its copy: same %v, zeros of %d lengths hashed, want true, 0", c.sameContent(st, moved), len(c.zeros))
	}

	// A chunk of zeros in place of the hole the other leaves.
	zeros := st.Chunks[5]
	zeros.ID = chunkID(make([]byte, zeros.Len))
	holed := &stream{Size: st.Size, Chunks: append(append([]chunkRef{}, st.Chunks[:5]...), st.Chunks[6:]...)}
	withZeros := &stream{Size: st.Size, Chunks: append(append(append([]chunkRef{}, st.Chunks[:5]...), zeros), st.Chunks[6:]...)}
	if !c.sameContent(holed, withZeros) || !c.sameContent(withZeros, holed) {
		t.Error("zeros stored on one side, a hole on the other: differ")
	}
	if c.sameContent(st, holed) || c.sameContent(holed, st) {
		t.Error("a chunk of data on one side, a hole on the other: the same")
	}
	other := &stream{Size: st.Size, Chunks: append([]chunkRef{}, st.Chunks...)}
	other.Chunks[7].ID = zeros.ID
	if c.sameContent(st, other) || c.sameContent(st, &stream{Size: st.Size + 1, Chunks: st.Chunks}) || c.sameContent(st, nil) {
		t.Error("another chunk, or size, or no stream: the same")
	}
	if !c.sameContent(nil, nil) {
		t.Error("no stream on either side: differ")
	}
	if len(c.zeros) > 4 {
		t.Errorf("zeros of %d lengths hashed for the chunks without their match", len(c.zeros))
	}
}

// TestCopyErrorsTogether: a snapshot that differs in the target is told
// with the error that stops the copy later, not dropped for it; a
// component that differs is named, not only the snapshot copied.
func TestCopyErrorsTogether(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	var ids []pe.ID
	for _, name := range []string{"a.img", "b.img", "c.img"} {
		src.disk(name, 2*mib, map[int64]int64{0: mib})
		p := src.backup("disk:" + name)
		ids = append(ids, p)
	}
	a, b, c := ids[0], ids[1], ids[2]
	if _, err := dst.r.Copy(ctx, src.r, []pe.ID{a}, nil); err != nil {
		t.Fatal(err)
	}
	// a in the target is another snapshot; c has a as its component.
	idx, si, err := dst.r.loadSnapshot(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	si.Info.Size++
	if err := dst.r.saveSnapshot(ctx, a, idx, snapshotInfo{Info: si.Info, BackedUp: si.BackedUp}); err != nil {
		t.Fatal(err)
	}
	idx, si, err = src.r.loadSnapshot(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	idx.Components = []string{a.String()}
	if err := src.r.saveSnapshot(ctx, c, idx, snapshotInfo{Info: si.Info, BackedUp: si.BackedUp}); err != nil {
		t.Fatal(err)
	}
	s, err := dst.r.Copy(ctx, src.r, []pe.ID{mustID(t, "disk:c.img")}, nil)
	var differs *SnapshotDiffersError
	t.Logf("a component differs: %v", err)
	if !errors.As(err, &differs) || differs.ID != a || len(s.Differ) != 1 || s.Differ[0] != a || !strings.Contains(err.Error(), "component "+a.String()) {
		t.Errorf("copy of c, whose component a differs in the target: %+v %v; want a named", s, err)
	}

	// b cannot be read: its packs are gone from the source.
	idx, _, err = src.r.loadSnapshot(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range idx.Data.Chunks {
		if err := src.be.Remove(ctx, packName(ch.Pack)); err != nil && !errors.Is(err, backend.ErrNotExist) {
			t.Fatal(err)
		}
	}
	s, err = dst.r.Copy(ctx, src.r, []pe.ID{mustID(t, "disk:a.img"), mustID(t, "disk:b.img")}, nil)
	t.Logf("a differs, b fails: %v", err)
	if !errors.Is(err, ErrSnapshotDiffers) || !errors.Is(err, backend.ErrNotExist) || !strings.Contains(err.Error(), "copy "+a.String()) || !strings.Contains(err.Error(), "copy "+b.String()) {
		t.Errorf("a differs, b fails: %v; want both told", err)
	}
	if len(s.Differ) != 1 || s.Differ[0] != a {
		t.Errorf("a differs, b fails: %+v", s)
	}
	if strings.Contains(err.Error(), "pruned meanwhile") {
		t.Errorf("a source read under its lock: %v; want no word of a prune", err)
	}
}

// forgetOnRead is a source that forgets a snapshot once the copy reads
// its first pack: after the listing, as a forget does (it takes no lock).
type forgetOnRead struct {
	backend.Backend
	r    *Repository
	id   pe.ID
	once sync.Once
	err  error
}

func (b *forgetOnRead) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if strings.HasPrefix(name, "data/") {
		b.once.Do(func() { b.err = b.r.Forget(ctx, b.id) })
	}
	return b.Backend.Load(ctx, name, off, length)
}

// TestCopySnapshotForgottenMeanwhile: a snapshot forgotten in the source
// after the copy listed it is not copied, and told; the others are.
func TestCopySnapshotForgottenMeanwhile(t *testing.T) {
	ctx := context.Background()
	src := newEnv(t, nil, Options{Password: "first site"})
	dst := newEnv(t, nil, Options{Password: "second site"})
	var ids []pe.ID
	for _, name := range []string{"a.img", "b.img"} {
		src.disk(name, 2*mib, map[int64]int64{0: mib})
		p := src.backup("disk:" + name)
		ids = append(ids, p)
	}
	a, b := ids[0], ids[1]
	hook := &forgetOnRead{Backend: src.be, r: src.r, id: b}
	s, err := Open(ctx, hook, Options{Password: "first site", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sum, err := dst.r.Copy(ctx, s, nil, nil)
	if hook.err != nil {
		t.Fatal(hook.err)
	}
	if err != nil || len(sum.Copied) != 1 || sum.Copied[0] != a || len(sum.Gone) != 1 || sum.Gone[0] != b {
		t.Errorf("b forgotten in the source while a was copied: %+v %v; want a copied, b gone", sum, err)
	}
}
