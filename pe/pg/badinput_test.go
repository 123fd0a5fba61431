package pg

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// A wrong password and a server stopped in the middle of a backup each
// fail the snapshot with one clear error and leave nothing; an update
// refuses a running target and replaces a stopped one.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t, pgtest.Options{})
	srv.Run(t, "pgbench", "-i", "-q", "-s", "2", "postgres")
	wrong := clusterOf("wrong", srv)
	wrong.Password = "not-the-password"
	m := newManager(t, clusterOf("main", srv), wrong)

	t.Run("wrong password", func(t *testing.T) {
		p, err := m.Get(ctx, mustID(t, "wrong"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Snapshot(ctx, nil)
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("snapshot with a wrong password: %v", err)
		}
		t.Log(err)
		if left := leftovers(t, m, "wrong"); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	p, err := m.Get(ctx, mustID(t, "main"))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	src, err := m.Get(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("update", func(t *testing.T) {
		restored, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.Create, Name: "copy"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.Create, Name: "copy"}); !errors.Is(err, pe.ErrExists) {
			t.Errorf("create over an existing cluster: %v, want ErrExists", err)
		}
		port := restoredPort(t, restored)
		psqlAt(t, srv, port, "postgres", "CREATE TABLE scratch (n int)")
		_, err = m.Copy(ctx, src, pe.CopyOptions{Mode: pe.Update, Name: "copy"})
		if err == nil || !strings.Contains(err.Error(), "stop its server first") {
			t.Fatalf("update of a running cluster: %v", err)
		}
		if err := mustServer(t, m, "copy").stop(ctx); err != nil {
			t.Fatal(err)
		}
		// Its port, taken by another process, is named before anything
		// is extracted.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Copy(ctx, src, pe.CopyOptions{Mode: pe.Update, Name: "copy"})
		l.Close()
		if err == nil || !strings.Contains(err.Error(), "taken by another process") {
			t.Fatalf("update with its port taken: %v", err)
		}
		if _, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.Update, Name: "copy"}); err != nil {
			t.Fatal(err)
		}
		if got := restoredPort(t, restored); got != port {
			t.Errorf("updated cluster listens on %d, was %d", got, port)
		}
		if got := psqlAt(t, srv, port, "postgres", "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'"); got != "0" {
			t.Errorf("updated cluster still has the table made after the backup")
		}
		// A restored cluster is not backed up: the credentials astrolabe
		// has for it are its origin's.
		if _, err := restored.Snapshot(ctx, nil); !errors.Is(err, pe.ErrNotSupported) || !strings.Contains(err.Error(), "credentials of cluster \"main\"") {
			t.Errorf("snapshot of a restored cluster: %v, want ErrNotSupported naming main's credentials", err)
		}
	})

	t.Run("no archived WAL", func(t *testing.T) {
		_, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew, Params: pe.Params{Type: {ParamToTime: time.Now().Format(time.RFC3339)}}})
		if !errors.Is(err, pe.ErrNotSupported) || !strings.Contains(err.Error(), "no archived WAL for cluster main") {
			t.Fatalf("point-in-time restore without an archive: %v", err)
		}
		checkNothingLeft(t, m, 1) // the cluster "copy" of the update test
	})

	t.Run("server stopped mid-backup", func(t *testing.T) {
		var once sync.Once
		m.onBackupData = func(int) {
			once.Do(func() {
				go srv.Command("pg_ctl", "-D", srv.DataDir, "-m", "immediate", "stop").Run()
			})
			// Slow the backup down so that it cannot end before the
			// server is gone.
			time.Sleep(2 * time.Millisecond)
		}
		defer func() { m.onBackupData = nil }()
		before, _ := p.ListSnapshots(ctx)
		_, err := p.Snapshot(ctx, nil)
		if err == nil || !strings.Contains(err.Error(), "base backup of cluster main") {
			t.Fatalf("snapshot of a server stopped mid-backup: %v", err)
		}
		t.Log(err)
		after, _ := p.ListSnapshots(ctx)
		if len(after) != len(before) {
			t.Errorf("snapshots %v after the failed backup, %v before", after, before)
		}
		entries, _ := os.ReadDir(m.snaps.Of("main"))
		if len(entries) != len(before) {
			t.Errorf("snapshot directory holds %d entries, want the %d whole snapshots", len(entries), len(before))
		}
		srv.Restart(t)
	})
}
