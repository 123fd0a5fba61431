package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
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
	pgcfg, _ := json.Marshal(map[string]any{"root": filepath.Join(cfg, "pg"), "clusters": []map[string]any{{
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
	var stopOnce sync.Once
	defer stopOnce.Do(func() { stop(); <-done })

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

	// The slot: refused while the receiver streams from it, dropped once
	// it stopped, and gone from the server.
	mustFail(t, cfg, "a receiver is streaming from it", "pg", "drop-slot", "main")
	stopOnce.Do(func() { stop(); <-done })
	if out := mustRun(t, cfg, "pg", "drop-slot", "main").stdout; !strings.Contains(out, "dropped slot astrolabe_main") {
		t.Fatalf("drop-slot: %s", out)
	}
	var slots int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots").Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("slots after drop-slot: %d %v", slots, err)
	}
	mustFail(t, cfg, "has no slot", "pg", "drop-slot", "main")
	mustFail(t, cfg, "no cluster \"other\"", "pg", "drop-slot", "other")
	mustRun(t, cfg, "pg", "wal-fetch", "--repo", repoDir, "main", segs[1], dest)
}

// TestPGServeArchivesWAL: astrolabe serve with a repository archives a
// cluster's WAL into it, and a repository backup restores to a time after
// it from that WAL alone (the cluster has no archive directory).
func TestPGServeArchivesWAL(t *testing.T) {
	ctx := context.Background()
	cfg, srv := pgSetup(t)
	// The WAL comes from the repository only.
	path := filepath.Join(cfg, "pes", "pg.pe.json")
	var pgcfg map[string]any
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &pgcfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range pgcfg["clusters"].([]any) {
		delete(cl.(map[string]any), "walArchiveDir")
	}
	if err := config.WritePEConfig(cfg, "pg", pgcfg); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(filepath.Dir(cfg), "repo")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	a := startServe(t, cfg, "--repo", repoDir)

	srv.Psql(t, "postgres", "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
	backedUp := mustRun(t, cfg, "backup", "--repo", repoDir, "pg:main").lastLine()
	insertRowsApart(t, srv, 101, 110)
	target := commitTime(t, srv, 105).Add(time.Millisecond)
	srv.Psql(t, "postgres", "SELECT pg_switch_wal()")
	// The written position: after a switch, the start of the next segment.
	want, err := walarchive.ParseLSN(srv.Psql(t, "postgres", "SELECT pg_current_wal_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := openTestRepo(ctx, repoDir, repo.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	deadline := time.Now().Add(time.Minute)
	for {
		sums, err := walarchive.Summaries(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if len(sums) == 1 {
			if end, _ := walarchive.ParseLSN(sums[0].EndLSN); end >= want {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not archive the WAL to %s within a minute: %+v\n%s", walarchive.FormatLSN(want), sums, a.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status, body := a.call("GET", "/metrics", a.info["token"], ""); status != 200 || !strings.Contains(body, `astrolabe_wal_connected{cluster="main"} 1`) {
		t.Errorf("metrics: %d, no astrolabe_wal_connected of main:\n%s", status, body)
	}

	res := mustRun(t, cfg, "restore", "--repo", repoDir, "--to", "pg:pitr", "--to-time", target.Format(time.RFC3339Nano), backedUp)
	if got := pgQuery(t, srv, pgPort(t, res), "SELECT max(n) FROM t"); got != "105" {
		t.Errorf("restored to %s from the WAL serve archived: rows up to %s, want 105", target.Format(time.RFC3339Nano), got)
	}
	// What the oldest backup does not need goes; a restore from it
	// still replays to the target.
	mustFail(t, cfg, "give --before SEGMENT or --before-oldest-backup", "pg", "wal-forget", "--repo", repoDir, "main")
	if out := mustRun(t, cfg, "pg", "wal-forget", "--repo", repoDir, "--before-oldest-backup", "main").stdout; !strings.HasPrefix(out, "forgot ") {
		t.Errorf("wal-forget --before-oldest-backup: %s", out)
	}
	mustRun(t, cfg, "repo", "prune", "--repo", repoDir)
	res = mustRun(t, cfg, "restore", "--repo", repoDir, "--to", "pg:pitr2", "--to-time", target.Format(time.RFC3339Nano), backedUp)
	if got := pgQuery(t, srv, pgPort(t, res), "SELECT max(n) FROM t"); got != "105" {
		t.Errorf("restored to %s after wal-forget and prune: rows up to %s, want 105", target.Format(time.RFC3339Nano), got)
	}
	after := commitTime(t, srv, 110).Add(time.Hour)
	mustFail(t, cfg, "newest archived WAL", "restore", "--repo", repoDir, "--to", "pg:late", "--to-time", after.Format(time.RFC3339Nano), backedUp)
	a.stop()
}
