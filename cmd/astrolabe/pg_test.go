package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// pgSetup starts a PostgreSQL server archiving its WAL into a directory
// and writes a configuration whose pg type backs it up as pg:main. The
// directories are reachable by the server's account; the clusters the test
// restores are stopped and removed when it ends.
func pgSetup(t *testing.T) (cfg string, srv *pgtest.Server) {
	t.Helper()
	dir, err := os.MkdirTemp("", "astrolabe-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o711)
	archive := filepath.Join(dir, "archive")
	u, err := user.Lookup(pgtest.OSUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	os.Mkdir(archive, 0o700)
	os.Chown(archive, uid, gid)
	srv = pgtest.Start(t, pgtest.Options{Settings: []string{
		"archive_mode = on", "archive_command = 'cp %p " + archive + "/%f'", "track_commit_timestamp = on",
	}})
	cfg = filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	os.Chmod(cfg, 0o711)
	pgcfg := map[string]any{
		"root": "pg",
		"clusters": []map[string]any{{
			"name": "main", "host": srv.Host, "port": srv.Port, "user": pgtest.ReplicationUser,
			"password": pgtest.Password, "sslmode": "disable", "walArchiveDir": archive,
		}},
		"restore": map[string]any{"binDir": srv.BinDir, "portMin": 15100, "portMax": 15199},
	}
	if err := config.WritePEConfig(cfg, "pg", pgcfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRestoredClusters(t, cfg) })
	return cfg, srv
}

func removeRestoredClusters(t *testing.T, cfg string) {
	ctx := context.Background()
	m, err := config.Load(cfg, config.Factories())
	if err != nil {
		t.Error(err)
		return
	}
	tm, err := m.Type(ctx, "pg")
	if err != nil {
		t.Error(err)
		return
	}
	ids, _ := tm.List(ctx)
	for _, id := range ids {
		if id.Name() == "main" {
			continue
		}
		p, err := tm.Get(ctx, id)
		if err == nil {
			err = p.(pe.Remover).Remove(ctx)
		}
		if err != nil {
			t.Errorf("remove %s: %v", id, err)
		}
	}
}

// pgPort is the port the CLI printed for a restored cluster.
func pgPort(t *testing.T, r result) int {
	t.Helper()
	_, after, ok := strings.Cut(r.stderr, " port ")
	if !ok {
		t.Fatalf("no port printed: %s", r.stderr)
	}
	port, err := strconv.Atoi(strings.TrimSuffix(strings.Fields(after)[0], ","))
	if err != nil {
		t.Fatalf("port in %q: %v", r.stderr, err)
	}
	return port
}

// insertRowsApart inserts rows from..to into table t, 20 ms apart, each
// its own transaction: points in time to restore between.
func insertRowsApart(t *testing.T, srv *pgtest.Server, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		srv.Psql(t, "postgres", "INSERT INTO t VALUES ("+strconv.Itoa(i)+")")
		time.Sleep(20 * time.Millisecond)
	}
}

// commitTime is when the row n of table t was committed (the server
// tracks commit timestamps).
func commitTime(t *testing.T, srv *pgtest.Server, n int) time.Time {
	t.Helper()
	s := srv.Psql(t, "postgres", "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM t WHERE n = "+strconv.Itoa(n))
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func pgQuery(t *testing.T, srv *pgtest.Server, port int, sql string) string {
	t.Helper()
	out, err := srv.Command("psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", pgtest.Superuser, "-d", "postgres", "-c", sql).CombinedOutput()
	if err != nil {
		t.Fatalf("psql on port %d: %v: %s", port, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestPGCommands: a pg cluster through the CLI: snapshot, zip and back,
// the base backup's files through FUSE, a repository backup restored to a
// point in time, and a time before the backup refused with the range.
func TestPGCommands(t *testing.T) {
	cfg, srv := pgSetup(t)
	srv.Psql(t, "postgres", "CREATE TABLE t (n int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
	if got := mustRun(t, cfg, "ls", "pg").stdout; got != "pg:main\n" {
		t.Errorf("ls pg = %q", got)
	}
	if got := mustRun(t, cfg, "show", "pg:main").stdout; !strings.Contains(got, `"databases"`) || !strings.Contains(got, `"postgres"`) {
		t.Errorf("show pg:main lists no databases: %s", got)
	}
	snap := mustRun(t, cfg, "snap", "pg:main").lastLine()

	// zip and back.
	zip := filepath.Join(filepath.Dir(cfg), "main.zip")
	mustRun(t, cfg, "cp", snap, zip)
	r := mustRun(t, cfg, "cp", zip, "pg")
	if got := pgQuery(t, srv, pgPort(t, r), "SELECT count(*) FROM t"); got != "100" {
		t.Errorf("cluster restored from a zip: %s rows, want 100", got)
	}

	// FUSE: the base backup's files.
	mnt := filepath.Join(filepath.Dir(cfg), "mnt")
	cmd := startMount(t, cfg, mnt)
	parts := strings.SplitN(snap, ":", 3)
	if got, err := os.ReadFile(filepath.Join(mnt, "pg", "pg:main", "snapshots", parts[2], "files", "PG_VERSION")); err != nil || strings.TrimSpace(string(got)) != "15" {
		t.Errorf("PG_VERSION through the mount: %q, %v", got, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()

	// Repository backup, then rows after it; restore to a time between them.
	repoDir := filepath.Join(filepath.Dir(cfg), "repo")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	backedUp := mustRun(t, cfg, "backup", "--repo", repoDir, "pg:main").lastLine()
	insertRowsApart(t, srv, 101, 110)
	target := commitTime(t, srv, 105).Add(time.Millisecond)
	seg := srv.Psql(t, "postgres", "SELECT pg_walfile_name(pg_switch_wal())")
	for i := 0; srv.Psql(t, "postgres", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg; i++ {
		if i > 600 {
			t.Fatalf("segment %s not archived", seg)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r = mustRun(t, cfg, "restore", "--repo", repoDir, "--to", "pg:pitr", "--to-time", target.Format(time.RFC3339Nano), backedUp)
	if r.lastLine() != "pg:pitr" {
		t.Errorf("restore printed %q", r.lastLine())
	}
	if got := pgQuery(t, srv, pgPort(t, r), "SELECT max(n) FROM t"); got != "105" {
		t.Errorf("restored to %s: rows up to %s, want 105", target.Format(time.RFC3339Nano), got)
	}
	var info pe.Info
	if err := json.Unmarshal([]byte(mustRun(t, cfg, "show", "pg:pitr").stdout), &info); err != nil || info.Details["dataDir"] == nil {
		t.Errorf("show pg:pitr: %v %v", info.Details, err)
	}
	mustFail(t, cfg, "can be restored to points from", "restore", "--repo", repoDir, "--to", "pg:early", "--to-time", commitTime(t, srv, 1).Add(-time.Second).Format(time.RFC3339Nano), backedUp)
	mustFail(t, cfg, "want an RFC 3339 time", "restore", "--repo", repoDir, "--to", "pg:bad", "--to-time", "yesterday", backedUp)
}

// TestPGServe: a restore through the REST API of a running appliance, with
// a recovery target in the copy parameters: a bad one fails its task with
// the reason, a good one's result says where the restored server listens;
// and a restore of a zip uploaded through the S3 data path.
func TestPGServe(t *testing.T) {
	cfg, srv := pgSetup(t)
	srv.Psql(t, "postgres", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
	snap := mustRun(t, cfg, "snap", "pg:main").lastLine()
	a := startServe(t, cfg)
	token := a.info["token"]
	copyBody := func(params string) string {
		return `{"protectedEntityInfo":{"id":"` + snap + `","name":"","size":0,"dataTransports":[],"metadataTransports":[],"combinedTransports":[],"componentSpecs":[]}` + params + `}`
	}
	run := func(params string) map[string]any {
		t.Helper()
		status, body := a.call("POST", "/v1/astrolabe/pg?mode=create_new", token, copyBody(params))
		if status != 202 {
			t.Fatalf("copy: %d %s", status, body)
		}
		var task struct{ TaskID string }
		json.Unmarshal([]byte(body), &task)
		return a.waitTaskResult(token, task.TaskID)
	}
	ti := run(`,"copyParams":[{"key":"pg","value":[{"key":"toTime","value":"2001-01-01T00:00:00Z"}]}]`)
	if ti["status"] == "success" || !strings.Contains(fmt.Sprint(ti), "can be restored to points from") {
		t.Errorf("restore to a time before the backup: %v", ti)
	}
	ti = run("")
	res, _ := ti["result"].(map[string]any)
	if ti["status"] != "success" || res["port"] == nil {
		t.Fatalf("restore task: %v", ti)
	}
	port, _ := strconv.Atoi(res["port"].(string))
	if got := pgQuery(t, srv, port, "SELECT count(*) FROM t"); got != "1" {
		t.Errorf("restored over REST: %s rows", got)
	}
	status, body := a.call("GET", "/v1/astrolabe/pg/"+res["id"].(string), token, "")
	if status != 200 || !strings.Contains(body, `"dataDir"`) {
		t.Errorf("info of the restored cluster: %d %s", status, body)
	}

	// S3: the snapshot's zip uploaded into the copy bucket is restored as
	// a cluster.
	zipPath := filepath.Join(filepath.Dir(cfg), "main.zip")
	mustRun(t, cfg, "cp", snap, zipPath)
	up := &s3Uploader{a: a, cfg: cfg, dir: filepath.Dir(cfg), zip: zipPath}
	up.keys()
	up.minioGo(t, "main.zip")
	fromS3 := up.restored(t, "main.zip")
	status, body = a.call("GET", "/v1/astrolabe/pg/"+fromS3, token, "")
	var info struct{ Details map[string]any }
	if err := json.Unmarshal([]byte(body), &info); status != 200 || err != nil || info.Details["port"] == nil {
		t.Fatalf("info of %s: %d %s", fromS3, status, body)
	}
	if got := pgQuery(t, srv, int(info.Details["port"].(float64)), "SELECT count(*) FROM t"); got != "1" {
		t.Errorf("restored from an S3 upload: %s rows", got)
	}
	a.stop()
}
