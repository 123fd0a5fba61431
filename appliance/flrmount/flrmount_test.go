package flrmount

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/browse"
	"github.com/astrolabe-appliance/astrolabe/appliance/config"
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
	dir := t.TempDir()
	if err := config.Init(dir); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "tree")
	if err := samples.WriteTree(tree); err != nil {
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
