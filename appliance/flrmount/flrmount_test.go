package flrmount

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

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
	root, parts, release1, err := mm.Acquire(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 1 || parts[0].Name != "p1" || parts[0].FSType != "ext4" {
		t.Fatalf("partitions %+v", parts)
	}
	root2, _, release2, err := mm.Acquire(ctx, snap)
	if err != nil || root2 != root {
		t.Fatalf("second user: %v, same root %v", err, root2 == root)
	}
	if b, err := root.ReadFile("p1/README.txt"); err != nil || len(b) == 0 {
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
	if _, _, _, err := mm.Acquire(ctx, snap); err != nil {
		t.Fatal(err)
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
