package flrmount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/browse"
	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/flr"
	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// diskSnapshot makes a disk PE under a new appliance directory whose one
// ext4 partition holds tree, snapshots it and returns the snapshot.
func diskSnapshot(t *testing.T, tree string) pe.ProtectedEntity {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if err := config.Init(dir); err != nil {
		t.Fatal(err)
	}
	if err := samples.WriteDisk(ctx, filepath.Join(dir, "disk", "d.img"), tree); err != nil {
		t.Fatalf("sample disk (needs mke2fs from e2fsprogs): %v", err)
	}
	m, err := config.Load(dir, config.Factories())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pe.ParseID("disk:d.img")
	live, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	snapID, err := live.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := m.Get(ctx, snapID)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// TestSymlinksStayInTheirPartition: a partition's symlinks to ".." and
// to "/" lead nowhere outside it: not to the mount's state file beside
// the partitions, nor to the appliance's own files.
func TestSymlinksStayInTheirPartition(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("recovery mounts need root (loop devices and mounts)")
	}
	ctx := context.Background()
	tree := filepath.Join(t.TempDir(), "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "f.txt"), []byte("in the partition\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"up": "..", "sub/upup": "../..", "abs": "/", "state": "../.astrolabe-flr.json"} {
		if err := os.Symlink(target, filepath.Join(tree, link)); err != nil {
			t.Fatal(err)
		}
	}
	snap := diskSnapshot(t, tree)
	mm, err := New(ctx, filepath.Join(t.TempDir(), "flr"), time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	parts, release, err := mm.Acquire(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	roots := map[string]*os.Root{}
	for _, p := range parts {
		roots[p.Name] = p.Root
	}
	tr := browse.Mounted{Partitions: roots}
	if f, _, err := tr.Open("p1/sub/f.txt"); err != nil {
		t.Fatalf("a file of the partition: %v", err)
	} else {
		f.Close()
	}
	for _, dir := range []string{"p1/up", "p1/sub/upup", "p1/abs"} {
		if page, err := tr.List(dir, "", 100); err == nil {
			t.Errorf("list %s: %+v, want an error", dir, page.Entries)
		}
	}
	for _, p := range []string{"p1/up/.astrolabe-flr.json", "p1/sub/upup/.astrolabe-flr.json", "p1/state", "p1/abs/etc/passwd"} {
		if f, _, err := tr.Open(p); err == nil {
			f.Close()
			t.Errorf("open %s: opened, want an error", p)
		}
	}
	var walked []string
	if err := tr.Walk("", func(p string, e browse.Entry) error {
		walked = append(walked, p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"p1", "p1/lost+found", "p1/sub", "p1/sub/f.txt"}
	if fmt.Sprint(walked) != fmt.Sprint(want) {
		t.Errorf("walk: %v, want %v", walked, want)
	}
}

// TestShareIdleAndClose: two users share one mount; it stays while
// used, goes once idle, and a mount left by a crashed process goes at the
// next start.
func TestShareIdleAndClose(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("recovery mounts need root (loop devices and mounts)")
	}
	ctx := context.Background()
	tree := filepath.Join(t.TempDir(), "tree")
	if err := samples.WriteTree(tree); err != nil {
		t.Fatal(err)
	}
	snap := diskSnapshot(t, tree)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mdir := filepath.Join(t.TempDir(), "flr")
	mm, err := New(ctx, mdir, time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	parts, release1, err := mm.Acquire(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 1 || parts[0].Name != "p1" || parts[0].FSType != "ext4" {
		t.Fatalf("partitions %+v", parts)
	}
	parts2, release2, err := mm.Acquire(ctx, snap)
	if err != nil || parts2[0].Root != parts[0].Root {
		t.Fatalf("second user: %v, same root %v", err, err == nil && parts2[0].Root == parts[0].Root)
	}
	if b, err := parts[0].Root.ReadFile("README.txt"); err != nil || len(b) == 0 {
		t.Fatalf("p1/README.txt: %v", err)
	}
	release1()
	release1() // twice is once
	// In use by the second user: the reaper keeps it whatever the time.
	mm.reapIdle(time.Now().Add(time.Hour))
	if len(mm.Mounted()) != 1 {
		t.Fatal("a mount in use was taken down")
	}
	release2()
	if mm.reapIdle(time.Now()); len(mm.Mounted()) != 1 {
		t.Fatal("a mount was taken down before it was idle for long")
	}
	if mm.reapIdle(time.Now().Add(2 * time.Second)); len(mm.Mounted()) != 0 {
		t.Fatal("the idle mount stayed")
	}
	if left, _ := os.ReadDir(mdir); len(left) != 0 {
		t.Errorf("after the idle mount went, %s holds %v", mdir, left)
	}

	// A mount the manager did not take down (a crash) goes at the next
	// start.
	parts, _, err = mm.Acquire(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	// A crashed process's files are closed; its mounts stay.
	for _, p := range parts {
		p.Root.Close()
	}
	// mm is left as a crashed process leaves it: mounted.
	mm2, err := New(ctx, mdir, time.Hour, log)
	if err != nil {
		t.Fatal(err)
	}
	defer mm2.Close()
	if left, _ := os.ReadDir(mdir); len(left) != 0 {
		t.Errorf("after a restart, %s holds %v", mdir, left)
	}
	mm.Close()
}

// fakeMounts stands for flr in TestMountOutsideTheLock: a snapshot's
// mount makes a directory per partition and waits for its gate, if it
// has one, or for its context.
type fakeMounts struct {
	mu    sync.Mutex
	gates map[string]chan struct{}
	made  map[string]int
}

func (f *fakeMounts) mount(ctx context.Context, p pe.ProtectedEntity, dir string) ([]flr.Mounted, error) {
	f.mu.Lock()
	f.made[p.ID().String()]++
	gate := f.gates[p.ID().String()]
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "p1"), 0o755); err != nil {
		return nil, err
	}
	return []flr.Mounted{{Name: "p1", Dir: filepath.Join(dir, "p1"), FSType: "ext4"}}, nil
}

func unmountFake(_ context.Context, dir string) error { return os.RemoveAll(dir) }

// TestMountOutsideTheLock: while one snapshot's mount is being made,
// another snapshot's users and Mounted are served; the first snapshot's
// users share the one mount being made; a user that gives up leaves it
// to the others; a mount that hangs is given up after the timeout, and
// the next user tries again.
func TestMountOutsideTheLock(t *testing.T) {
	ctx := context.Background()
	slow, quick := diskSnapshot(t, t.TempDir()), diskSnapshot(t, t.TempDir())
	fake := &fakeMounts{gates: map[string]chan struct{}{slow.ID().String(): make(chan struct{})}, made: map[string]int{}}
	mm := &Manager{dir: filepath.Join(t.TempDir(), "flr"), idle: time.Hour, timeout: time.Hour,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), mountFS: fake.mount, unmountFS: unmountFake}
	if err := mm.start(ctx); err != nil {
		t.Fatal(err)
	}
	defer mm.Close()

	type result struct {
		parts []Partition
		err   error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			parts, _, err := mm.Acquire(ctx, slow)
			results <- result{parts, err}
		}()
	}
	// A user that gives up waiting.
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() {
		_, _, err := mm.Acquire(cctx, slow)
		gaveUp <- err
	}()
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Errorf("a user that gave up: %v", err)
	}
	// The slow mount is being made: the quick one is served meanwhile.
	parts, release, err := mm.Acquire(ctx, quick)
	if err != nil || len(parts) != 1 {
		t.Fatalf("another snapshot while one is being mounted: %v %v", parts, err)
	}
	release()
	if got := mm.Mounted(); len(got) != 1 || got[0] != quick.ID().String() {
		t.Errorf("mounted while the slow one is being made: %v", got)
	}
	close(fake.gates[slow.ID().String()])
	a, b := <-results, <-results
	if a.err != nil || b.err != nil || a.parts[0].Root != b.parts[0].Root {
		t.Fatalf("the slow snapshot's users: %v %v", a.err, b.err)
	}
	if n := fake.made[slow.ID().String()]; n != 1 {
		t.Errorf("the slow snapshot was mounted %d times for its three users", n)
	}

	// A mount that hangs is given up after the timeout; the next user
	// tries again.
	hung := diskSnapshot(t, t.TempDir())
	fake.mu.Lock()
	fake.gates[hung.ID().String()] = make(chan struct{})
	fake.mu.Unlock()
	mm.mu.Lock()
	mm.timeout = 10 * time.Millisecond
	mm.mu.Unlock()
	if _, _, err := mm.Acquire(ctx, hung); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "gave up") {
		t.Errorf("a hung mount: %v", err)
	}
	close(fake.gates[hung.ID().String()])
	if _, _, err := mm.Acquire(ctx, hung); err != nil {
		t.Errorf("after a hung mount, the next one: %v", err)
	}
	if n := fake.made[hung.ID().String()]; n != 2 {
		t.Errorf("the hung snapshot was tried %d times, want 2", n)
	}
}
