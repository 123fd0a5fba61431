package usecase

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// With a state directory, a backup of a live PE keeps the snapshot it
// took as the next backup's base, so the next reads only what changed,
// and deletes the one it replaces; a user's own snapshots are never
// deleted, a failed backup's snapshot is, and each repository keeps its
// own base.
func TestBackupKeepsItsBase(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	state := t.TempDir()
	uc := func(r *repo.Repository) *Service {
		s, err := New(Config{Manager: e.m, Repository: r, StateDir: state, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		must(t, err)
		return s
	}
	a := uc(e.r)
	disk := id(t, "disk:vm1.img")
	img := filepath.Join(e.diskRoot, "vm1.img")
	changeOneBlock := func(b byte) {
		t.Helper()
		f, err := os.OpenFile(img, os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteAt([]byte{b}, 5)
		must(t, err)
		must(t, f.Close())
	}

	first, err := a.Backup(ctx, disk, nil)
	must(t, err)
	if got := snapshots(t, e.m, disk); !slices.Equal(got, []pe.ID{first.ID}) {
		t.Fatalf("after the first backup the PE's snapshots are %v, want its base %s", got, first.ID)
	}
	changeOneBlock(1)
	second, err := a.Backup(ctx, disk, nil)
	must(t, err)
	if second.Read >= diskSize/2 || second.Reused == 0 {
		t.Errorf("the second backup read %d bytes and reused %d unread: change tracking off", second.Read, second.Reused)
	}
	if got := snapshots(t, e.m, disk); !slices.Equal(got, []pe.ID{second.ID}) {
		t.Fatalf("after the second backup the PE's snapshots are %v, want only its base %s", got, second.ID)
	}

	// The user's own snapshot stays, whatever backups come after.
	p, err := e.m.Get(ctx, disk)
	must(t, err)
	own, err := p.Snapshot(ctx, nil)
	must(t, err)
	changeOneBlock(2)
	third, err := a.Backup(ctx, disk, nil)
	must(t, err)
	if got := snapshots(t, e.m, disk); !slices.Equal(got, []pe.ID{own, third.ID}) {
		t.Fatalf("after a user's snapshot and a backup: %v, want %s and %s", got, own, third.ID)
	}

	// A failed backup leaves nothing and keeps the base.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Backup(cancelled, disk, nil); err == nil {
		t.Fatal("a backup with a cancelled context succeeded")
	}
	if got := snapshots(t, e.m, disk); !slices.Equal(got, []pe.ID{own, third.ID}) {
		t.Fatalf("after a failed backup: %v, want %s and %s", got, own, third.ID)
	}

	// An fs tree tracks no changes: nothing is kept of it.
	if _, err := a.Backup(ctx, id(t, "fs:home"), nil); err != nil {
		t.Fatal(err)
	}
	if got := snapshots(t, e.m, id(t, "fs:home")); len(got) != 0 {
		t.Fatalf("a backup of an fs tree kept %v", got)
	}

	// A second repository keeps its own base; a backup into the first
	// then deletes only the first's.
	dir := t.TempDir()
	be, err := backend.NewDir(dir)
	must(t, err)
	opts := repo.Options{Insecure: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	must(t, repo.Init(ctx, be, opts))
	r2, err := repo.Open(ctx, be, opts)
	must(t, err)
	defer r2.Close()
	other, err := uc(r2).Backup(ctx, disk, nil)
	must(t, err)
	fourth, err := a.Backup(ctx, disk, nil)
	must(t, err)
	if got := snapshots(t, e.m, disk); !slices.Equal(got, []pe.ID{own, other.ID, fourth.ID}) {
		t.Fatalf("with two repositories: %v, want %s, %s (the other's base) and %s", got, own, other.ID, fourth.ID)
	}
}
