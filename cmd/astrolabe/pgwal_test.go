package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/astrolabe-appliance/astrolabe/appliance/walarchive"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// TestPGWALCommands: pg wal-status lists what a receiver archived of a
// real server with its lag, pg wal-fetch writes a segment as the server
// wrote it and fails clearly for one the repository lacks, pg wal-forget
// drops the older ones.
func TestPGWALCommands(t *testing.T) {
	ctx := context.Background()
	s := pgtest.Start(t, pgtest.Options{})
	cfg := t.TempDir()
	if err := os.MkdirAll(filepath.Join(cfg, "pes"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "pgpass"), []byte(pgtest.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pgcfg, _ := json.Marshal(map[string]any{"clusters": []map[string]any{{
		"name": "main", "host": s.Host, "port": s.Port, "user": pgtest.ReplicationUser, "passwordFile": "pgpass", "sslmode": "disable"}}})
	if err := os.WriteFile(filepath.Join(cfg, "pes", "pg.pe.json"), pgcfg, 0o600); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(t.TempDir(), "repo")
	t.Setenv("ASTROLABE_PASSWORD", "pg-test")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir)

	r, err := openTestRepo(ctx, repoDir, repo.Options{Password: "pg-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	clusters, err := walarchive.LoadClusters(cfg)
	if err != nil || len(clusters) != 1 {
		t.Fatalf("clusters: %v %v", clusters, err)
	}
	rctx, stop := context.WithCancel(ctx)
	rc := walarchive.NewReceiver(r, clusters[0], nil, walarchive.ReceiverOptions{PartialEvery: -1})
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc.Run(rctx)
	}()
	defer func() { stop(); <-done }()

	conn, err := pgx.Connect(ctx, s.ConnString(pgtest.Superuser, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var segs []string // one with a table's rows each
	for i := range 2 {
		var seg string
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE t%d AS SELECT generate_series(1, 1000) AS n", i)); err != nil {
			t.Fatal(err)
		}
		// The insert position: with synchronous_commit off the WAL
		// written lags behind.
		if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())").Scan(&seg); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
		segs = append(segs, seg)
	}
	var now string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&now); err != nil {
		t.Fatal(err)
	}
	want, _ := walarchive.ParseLSN(now)
	deadline := time.Now().Add(time.Minute)
	for rc.Status().ArchivedLSN < want {
		if time.Now().After(deadline) {
			t.Fatalf("not archived after a minute: %+v", rc.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}

	out := mustRun(t, cfg, "pg", "wal-status", "--repo", repoDir).stdout
	if !strings.Contains(out, "main ") || !strings.Contains(out, segs[1]) || !strings.Contains(out, "none") || !strings.Contains(out, "bytes") {
		t.Fatalf("wal-status:\n%s", out)
	}

	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	mustRun(t, cfg, "pg", "wal-fetch", "--repo", repoDir, "main", segs[1], dest)
	got, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	server, err := os.ReadFile(filepath.Join(s.DataDir, "pg_wal", segs[1]))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, server) {
		t.Fatalf("wal-fetch %s: %d bytes differing from the server's %d", segs[1], len(got), len(server))
	}
	mustFail(t, cfg, "not in the repository", "pg", "wal-fetch", "--repo", repoDir, "main", "0000000100000000000000FF", dest)
	mustFail(t, cfg, "not a WAL segment", "pg", "wal-fetch", "--repo", repoDir, "main", "../config", dest)
	mustFail(t, cfg, "no WAL archived", "pg", "wal-fetch", "--repo", repoDir, "other", segs[1], dest)

	out = mustRun(t, cfg, "pg", "wal-forget", "--repo", repoDir, "--before", segs[1], "main").stdout
	if !strings.HasPrefix(out, "forgot ") || strings.HasPrefix(out, "forgot 0 ") {
		t.Fatalf("wal-forget: %s", out)
	}
	mustFail(t, cfg, "not in the repository", "pg", "wal-fetch", "--repo", repoDir, "main", segs[0], dest)
	mustRun(t, cfg, "pg", "wal-fetch", "--repo", repoDir, "main", segs[1], dest)
}
