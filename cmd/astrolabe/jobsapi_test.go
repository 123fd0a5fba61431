package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeJobsAPI: on a serve started without jobs.json, a backup job is
// created through the API, run at once, its task waited for and its
// history read (a success with bytes), then updated and deleted, with
// jobs.json on disk checked after each step; a bad job gets 400 with the
// reason and the server stays up.
func TestServeJobsAPI(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	pw := filepath.Join(cfg, "passwords", "repo.pw")
	if err := os.MkdirAll(filepath.Dir(pw), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pw, []byte("jobs-api\n"), 0o600)
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--password-file", pw)

	a := startServe(t, cfg)
	token := a.info["token"]
	jobsFile := filepath.Join(cfg, "jobs.json")
	onDisk := func() []map[string]any {
		t.Helper()
		b, err := os.ReadFile(jobsFile)
		if err != nil {
			t.Fatalf("jobs.json: %v", err)
		}
		var js []map[string]any
		if err := json.Unmarshal(b, &js); err != nil {
			t.Fatalf("jobs.json: %v: %s", err, b)
		}
		return js
	}
	call := func(method, path, body string, want int) string {
		t.Helper()
		code, out := a.call(method, path, token, body)
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d; stderr: %s", method, path, code, out, want, a.stderr)
		}
		return out
	}

	bad := `{"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "repository": {"location": "` + repoDir + `", "passwordFile": "repo.pw"}}`
	out := call("POST", "/v1/appliance/jobs", bad, http.StatusBadRequest)
	if !strings.Contains(out, "a backup job needs PEs to back up") {
		t.Fatalf("bad job: %s", out)
	}
	call("GET", "/healthz", "", http.StatusOK)
	if _, err := os.Stat(jobsFile); !os.IsNotExist(err) {
		t.Fatalf("jobs.json after a bad job: %v", err)
	}

	job := strings.Replace(bad, `"schedule"`, `"pes": ["fs:sample"], "schedule"`, 1)
	call("POST", "/v1/appliance/jobs", job, http.StatusCreated)
	if js := onDisk(); len(js) != 1 || js[0]["name"] != "nightly" || js[0]["repository"].(map[string]any)["passwordFile"] != pw {
		t.Fatalf("jobs.json after create: %v", js)
	}

	var started struct{ TaskID string }
	json.Unmarshal([]byte(call("POST", "/v1/appliance/jobs/nightly/run", "", http.StatusAccepted)), &started)
	var task struct {
		Completed bool
		Status    string
	}
	for range 600 { // bounded: a backup of the sample tree
		json.Unmarshal([]byte(call("GET", "/v1/astrolabe/tasks/"+started.TaskID, "", http.StatusOK)), &task)
		if task.Completed {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if task.Status != "success" {
		t.Fatalf("run's task %s: %+v; stderr: %s", started.TaskID, task, a.stderr)
	}
	var runs []struct {
		TaskID, Status, Started, Finished string
		BytesRead, BytesStored            int64
	}
	out = call("GET", "/v1/appliance/jobs/nightly/history", "", http.StatusOK)
	json.Unmarshal([]byte(out), &runs)
	if len(runs) != 1 || runs[0].Status != "success" || runs[0].TaskID != started.TaskID || runs[0].BytesRead == 0 || runs[0].BytesStored == 0 ||
		!strings.HasSuffix(runs[0].Finished, "Z") {
		t.Fatalf("history: %s", out)
	}

	call("PUT", "/v1/appliance/jobs/nightly", strings.Replace(job, "0 2 * * *", "30 3 * * *", 1), http.StatusOK)
	if js := onDisk(); len(js) != 1 || js[0]["schedule"] != "30 3 * * *" {
		t.Fatalf("jobs.json after update: %v", js)
	}
	call("DELETE", "/v1/appliance/jobs/nightly", "", http.StatusNoContent)
	if js := onDisk(); len(js) != 0 {
		t.Fatalf("jobs.json after delete: %v", js)
	}
	call("GET", "/v1/appliance/jobs/nightly", "", http.StatusNotFound)
	a.stop()

	snaps := mustRun(t, cfg, "repo", "snapshots", "--repo", repoDir, "--password-file", pw).stdout
	if strings.Count(snaps, "fs:sample:") != 1 {
		t.Fatalf("repo snapshots after the run:\n%s", snaps)
	}
}
