package pg

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// A base backup taken while pgbench writes restores to a cluster that
// starts, passes pg_amcheck and holds every transaction committed before
// the backup.
func TestBackupUnderLoadRestores(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t, pgtest.Options{})
	srv.Psql(t, "postgres", "CREATE DATABASE bench")
	srv.Run(t, "pgbench", "-i", "-q", "-s", "2", "bench")
	srv.Psql(t, "bench", "CREATE TABLE marker (n int PRIMARY KEY); INSERT INTO marker SELECT generate_series(1, 1000)")
	m := newManager(t, clusterOf("main", srv))

	// Bounded load: 2 clients for at most 60 s, stopped once the backup
	// is taken.
	load := srv.Command("pgbench", "-n", "-c", "2", "-T", "60", "bench")
	load.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()
	// Transactions pgbench committed before the backup started.
	for i := 0; srv.Psql(t, "bench", "SELECT count(*) FROM pgbench_history") == "0"; i++ {
		if i > 600 {
			t.Fatal("pgbench committed nothing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before, _ := strconv.Atoi(srv.Psql(t, "bench", "SELECT count(*) FROM pgbench_history"))

	p, err := m.Get(ctx, mustID(t, "main"))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(-load.Process.Pid, syscall.SIGINT)
	<-loadDone

	sp, err := m.Get(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	info, err := sp.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dbs, _ := info.Details["databases"].([]string); !strings.Contains(strings.Join(dbs, ","), "bench") {
		t.Errorf("snapshot info lists databases %v, want bench among them", info.Details["databases"])
	}

	restored, err := m.Copy(ctx, sp, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	port := restoredPort(t, restored)
	if got := psqlAt(t, srv, port, "bench", "SELECT count(*) FROM marker"); got != "1000" {
		t.Errorf("restored marker rows: %s, want 1000", got)
	}
	after, _ := strconv.Atoi(psqlAt(t, srv, port, "bench", "SELECT count(*) FROM pgbench_history"))
	if after < before {
		t.Errorf("restored cluster holds %d pgbench transactions, %d were committed before the backup", after, before)
	}
	if out, err := runAt(srv, port, "pg_amcheck", "--all", "--install-missing"); err != nil {
		t.Errorf("pg_amcheck of the restored cluster: %v", err)
	} else {
		t.Logf("pg_amcheck: ok %s", out)
	}
	t.Logf("backup of %d bytes; %d transactions before it, %d restored", info.Size, before, after)
}
