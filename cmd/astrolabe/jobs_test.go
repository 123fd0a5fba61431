package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeRunsJobs: serve refuses a bad jobs.json naming the job and
// field; with a good one it runs the jobs missed since their last run
// (per the history file) at start, as tasks whose results land in the
// history: a backup of fs:* and a verify.
func TestServeRunsJobs(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	pw := filepath.Join(dir, "password")
	os.WriteFile(pw, []byte("jobs\n"), 0o600)
	repoArgs := []string{"--repo", filepath.Join(dir, "repo"), "--password-file", pw}
	mustRun(t, cfg, append([]string{"repo", "init"}, repoArgs...)...)

	jobsFile := filepath.Join(cfg, "jobs.json")
	os.WriteFile(jobsFile, []byte(`[{"name": "nightly", "kind": "dance", "schedule": "@daily", "repository": {"location": "/r"}}]`), 0o600)
	r := astrolabe(t, cfg, "serve", "--api", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--s3", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, `job "nightly": kind "dance": want backup, prune, verify or replicate`) {
		t.Fatalf("serve with a bad jobs.json: exit %d, stderr %s", r.code, r.stderr)
	}

	repo := fmt.Sprintf(`"repository": {"location": %q, "passwordFile": %q}`, filepath.Join(dir, "repo"), pw)
	os.WriteFile(jobsFile, []byte(`[
  {"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "pes": ["fs:*"], `+repo+`},
  {"name": "verify", "kind": "verify", "schedule": "@weekly", "readData": true, `+repo+`}]`), 0o600)
	history := filepath.Join(cfg, "jobs-history.json")
	os.WriteFile(history, []byte(`{"nightly": {"last": "2020-01-01T00:00:00Z"}, "verify": {"last": "2020-01-01T00:00:00Z"}}`), 0o600)
	a := startServe(t, cfg)
	type run struct {
		Task, Status, Error string
		Read                int64 `json:"bytesRead"`
	}
	var runs map[string]struct{ Runs []run }
	finished := func(rs []run) bool { return len(rs) > 0 && rs[len(rs)-1].Status != "running" }
	for range 600 { // bounded: both run at start
		b, _ := os.ReadFile(history)
		runs = nil
		json.Unmarshal(b, &runs)
		// A run is recorded as running when it starts; wait for the end.
		if finished(runs["nightly"].Runs) && finished(runs["verify"].Runs) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.stop()
	n, v := runs["nightly"].Runs, runs["verify"].Runs
	if len(n) != 1 || n[0].Status != "success" || n[0].Read == 0 || n[0].Task == "" {
		t.Fatalf("nightly runs: %+v; stderr: %s", n, a.stderr)
	}
	// The verify may run before or after the backup: either is a good repository.
	if len(v) != 1 || v[0].Status != "success" {
		t.Fatalf("verify runs: %+v; stderr: %s", v, a.stderr)
	}
	out := mustRun(t, cfg, append(append([]string{"repo", "snapshots"}, repoArgs...), "fs:sample")...).stdout
	if strings.Count(out, "fs:sample:") != 1 {
		t.Fatalf("repo snapshots after the backup job:\n%s", out)
	}
}
