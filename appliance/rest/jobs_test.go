package rest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/jobs"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// jobsFixture is an API with a job scheduler over the fixture's PEs, a
// repository and its password file in the password directory, and a
// job of jobs.json ("held") whose password file, outside the password
// directory, is a FIFO: its runs wait until release.
type jobsFixture struct {
	*fixture
	repoDir, pwRoot, fifo string
}

const jobsPassword = "jobs-api"

func newJobsFixture(t *testing.T) *jobsFixture {
	t.Helper()
	base := newFixture(t)
	f := &jobsFixture{fixture: base, repoDir: filepath.Join(base.cfgDir, "repo"), pwRoot: filepath.Join(base.cfgDir, "passwords"),
		fifo: filepath.Join(base.cfgDir, "held.pw")}
	if err := os.MkdirAll(f.pwRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.pwRoot, "repo.pw"), []byte(jobsPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := backend.NewDir(f.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Init(context.Background(), be, repo.Options{Password: jobsPassword}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(f.fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	held, err := jobs.Parse([]byte(fmt.Sprintf(`[{"name": "held", "kind": "verify", "schedule": "@yearly",
  "repository": {"location": %q, "passwordFile": %q}}]`, f.repoDir, f.fifo)))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tm := tasks.NewManager(tasks.Options{Logger: log})
	t.Cleanup(func() { tm.Shutdown(context.Background(), time.Minute) })
	sched, err := jobs.New(jobs.Options{Jobs: held, ConfigDir: base.cfgDir, Manager: base.m, Tasks: tm, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(Config{UseCases: useCases(t, base.m), Tasks: tm, Logger: log, Token: token,
		Jobs: sched, PasswordRoot: f.pwRoot}))
	t.Cleanup(srv.Close)
	c, err := api.NewClientWithResponses(srv.URL, api.WithHTTPClient(base.http), api.WithRequestEditorFn(func(ctx context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+token)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	base.url, base.client, base.tasks = srv.URL, c, tm
	return f
}

func (f *jobsFixture) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// release lets the held job's run open its repository.
func (f *jobsFixture) release(t *testing.T) {
	w, err := os.OpenFile(f.fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString(jobsPassword + "\n")
	w.Close()
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
	return v
}

// TestJobsAPI: jobs are created, read, run, updated and deleted through
// the API, as jobs.json has them after each change; each answer is the
// spec's.
func TestJobsAPI(t *testing.T) {
	f := newJobsFixture(t)
	jobsFile := filepath.Join(f.cfgDir, jobs.File)
	onDisk := func() string {
		b, _ := os.ReadFile(jobsFile)
		return string(b)
	}
	nightly := fmt.Sprintf(`{"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "pes": ["fs:a"],
  "repository": {"location": %q, "passwordFile": "repo.pw"}}`, f.repoDir)

	code, out := f.do(t, "POST", "/v1/appliance/jobs", nightly)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, out)
	}
	created := decode[api.JobStatus](t, out)
	pw := filepath.Join(f.pwRoot, "repo.pw")
	if created.Job.Name == nil || *created.Job.Name != "nightly" || created.Next == nil || created.Next.Location() != time.UTC ||
		created.Job.Repository.PasswordFile == nil || *created.Job.Repository.PasswordFile != pw || created.LastRun != nil {
		t.Fatalf("created: %s", out)
	}
	if disk := onDisk(); !strings.Contains(disk, `"nightly"`) || !strings.Contains(disk, fmt.Sprintf("%q", pw)) {
		t.Fatalf("jobs.json after create: %s", disk)
	}
	if code, out := f.do(t, "POST", "/v1/appliance/jobs", nightly); code != http.StatusConflict || !strings.Contains(out, "exists") {
		t.Fatalf("create twice: %d %s", code, out)
	}

	list, err := f.client.ListJobsWithResponse(context.Background())
	if err != nil || list.JSON200 == nil || len(*list.JSON200) != 2 || *(*list.JSON200)[0].Job.Name != "held" || *(*list.JSON200)[1].Job.Name != "nightly" {
		t.Fatalf("list: %v %s", err, list.Body)
	}

	run, err := f.client.RunJobWithResponse(context.Background(), "nightly")
	if err != nil || run.JSON202 == nil {
		t.Fatalf("run: %v %s", err, run.Body)
	}
	if ti := f.waitTask(t, run.JSON202.TaskID); ti.Status != api.Success || ti.Kind != "job-backup" {
		t.Fatalf("run's task: %+v", ti)
	}
	hist, err := f.client.GetJobHistoryWithResponse(context.Background(), "nightly")
	if err != nil || hist.JSON200 == nil || len(*hist.JSON200) != 1 {
		t.Fatalf("history: %v %s", err, hist.Body)
	}
	r := (*hist.JSON200)[0]
	if r.Status != api.RunSuccess || r.TaskID == nil || *r.TaskID != run.JSON202.TaskID || r.BytesRead == 0 || r.BytesStored == 0 ||
		r.Finished == nil || r.Manual == nil || !*r.Manual || r.Details == nil || !strings.Contains(*r.Details, "fs:a:") {
		t.Fatalf("history: %s", hist.Body)
	}
	got, err := f.client.GetJobWithResponse(context.Background(), "nightly")
	if err != nil || got.JSON200 == nil || got.JSON200.LastRun == nil || got.JSON200.LastRun.Status != api.RunSuccess || got.JSON200.RunningTask != nil {
		t.Fatalf("get after the run: %v %s", err, got.Body)
	}

	// Update: the name may be left out, the schedule counts from now.
	hourly := strings.Replace(strings.Replace(nightly, `"name": "nightly", `, "", 1), "0 2 * * *", "@hourly", 1)
	code, out = f.do(t, "PUT", "/v1/appliance/jobs/nightly", hourly)
	updated := decode[api.JobStatus](t, out)
	if code != http.StatusOK || updated.Job.Schedule != "@hourly" || updated.Next == nil || time.Until(*updated.Next) > time.Hour {
		t.Fatalf("update: %d %s", code, out)
	}
	if disk := onDisk(); !strings.Contains(disk, `"@hourly"`) || strings.Contains(disk, "0 2 * * *") {
		t.Fatalf("jobs.json after update: %s", disk)
	}
	if code, out := f.do(t, "PUT", "/v1/appliance/jobs/nightly", strings.Replace(nightly, `"nightly"`, `"other"`, 1)); code != http.StatusBadRequest || !strings.Contains(out, "renamed") {
		t.Fatalf("update with another name: %d %s", code, out)
	}
	if code, out := f.do(t, "PUT", "/v1/appliance/jobs/nope", hourly); code != http.StatusNotFound {
		t.Fatalf("update of a missing job: %d %s", code, out)
	}

	code, _ = f.do(t, "DELETE", "/v1/appliance/jobs/nightly", "")
	if code != http.StatusNoContent || strings.Contains(onDisk(), "nightly") {
		t.Fatalf("delete: %d; jobs.json %s", code, onDisk())
	}
	for _, p := range []string{"/v1/appliance/jobs/nightly", "/v1/appliance/jobs/nightly/history"} {
		if code, out := f.do(t, "GET", p, ""); code != http.StatusNotFound || !strings.Contains(out, "no such job") {
			t.Fatalf("GET %s after delete: %d %s", p, code, out)
		}
	}
	if code, _ := f.do(t, "DELETE", "/v1/appliance/jobs/nightly", ""); code != http.StatusNotFound {
		t.Fatalf("delete twice: %d", code)
	}
	if code, _ := f.do(t, "POST", "/v1/appliance/jobs/nightly/run", ""); code != http.StatusNotFound {
		t.Fatalf("run of a deleted job: %d", code)
	}
	if m := f.spec.missing("listJobs", "createJob", "getJob", "updateJob", "deleteJob", "runJob", "getJobHistory"); len(m) > 0 {
		t.Errorf("no answer of %v checked against the spec", m)
	}
}

// TestJobsAPIRunConflict: a run asked for while one of the job runs is
// refused with 409 naming the running task; the job shows it.
func TestJobsAPIRunConflict(t *testing.T) {
	f := newJobsFixture(t)
	run, err := f.client.RunJobWithResponse(context.Background(), "held")
	if err != nil || run.JSON202 == nil {
		t.Fatalf("run: %v %s", err, run.Body)
	}
	id := run.JSON202.TaskID
	code, out := f.do(t, "POST", "/v1/appliance/jobs/held/run", "")
	if code != http.StatusConflict || !strings.Contains(out, id) {
		t.Fatalf("second run: %d %s", code, out)
	}
	got, err := f.client.GetJobWithResponse(context.Background(), "held")
	if err != nil || got.JSON200 == nil || got.JSON200.RunningTask == nil || *got.JSON200.RunningTask != id ||
		got.JSON200.LastRun == nil || got.JSON200.LastRun.Status != api.RunRunning || got.JSON200.LastRun.Finished != nil {
		t.Fatalf("job while running: %v %s", err, got.Body)
	}
	f.release(t)
	if ti := f.waitTask(t, id); ti.Status != api.Success {
		t.Fatalf("run: %+v", ti)
	}
}

// TestJobsAPIRefused: bad jobs and paths the API must not take are
// refused with 400 and the reason, and change nothing.
func TestJobsAPIRefused(t *testing.T) {
	f := newJobsFixture(t)
	if err := os.Symlink("/etc/hostname", filepath.Join(f.pwRoot, "out.pw")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(f.pwRoot, "fifo.pw"), 0o600); err != nil {
		t.Fatal(err)
	}
	job := func(fields string) string {
		return `{"name": "j", "kind": "verify", "schedule": "@daily", ` + fields + `}`
	}
	repoWith := func(pw string) string {
		return fmt.Sprintf(`"repository": {"location": %q, "passwordFile": %q}`, f.repoDir, pw)
	}
	for _, c := range []struct{ body, want string }{
		{job(repoWith("repo.pw") + `, "colour": "red"`), `unknown field "colour"`},
		{strings.Replace(job(repoWith("repo.pw")), "@daily", "25 * * * * *", 1), `schedule "25 * * * * *": want cron (minute hour day month weekday`},
		{strings.Replace(job(repoWith("repo.pw")), "verify", "dance", 1), `kind "dance": want backup, prune, verify or replicate`},
		{job(repoWith("/etc/shadow")), `repository.passwordFile "shadow": want a file in the appliance's password directory`},
		{job(repoWith("../held.pw")), `want a file in the appliance's password directory`},
		{job(repoWith("out.pw")), `want a file in the appliance's password directory`},
		{job(repoWith("fifo.pw")), `not a regular file`},
		{job(repoWith("missing.pw")), `want a file in the appliance's password directory`},
		{job(fmt.Sprintf(`"repository": {"location": %q, "s3CredentialsFile": "/root/.aws/credentials"}`, f.repoDir)), `repository.s3CredentialsFile "credentials": want a file in the appliance's password directory`},
		{`{"name": "j", "kind": "replicate", "schedule": "@daily", ` + repoWith("repo.pw") + `, "from": {"location": "s3://h/b", "s3Profile": "site1", "s3CredentialsFile": "../held.pw"}}`, `from.s3CredentialsFile "../held.pw": want a file in the appliance's password directory`},
		{job(`"repository": {"location": "relative/repo"}`), `repository.location "relative/repo": want an absolute directory`},
		{job(`"repository": {"location": "/nonexistent/repo"}`), `want an existing directory`},
		{job(`"repository": {"location": "/etc/hostname"}`), `want an existing directory`},
		{job(`"repository": {"location": "/", "passwordFile": "repo.pw"}, "name": "a b"`), `name "a b": want 1 to 128 letters`},
		{strings.Replace(job(repoWith("repo.pw")), "@daily", "@every 1s", 1), `@every is not supported`},
		{`{"name": "j", "kind": "replicate", "schedule": "@daily", ` + repoWith("repo.pw") + `, "from": {"location": "/x", "passwordFile": "/root/pw"}}`, `from.passwordFile`},
		{`{"name": "j", "kind": "verify", "schedule": "@daily", "pes": "fs:a", ` + repoWith("repo.pw") + `}`, `pes`},
		{`[` + job(repoWith("repo.pw")) + `]`, `want a JSON object (one job), not array`},
		{`not json`, `not JSON`},
		{`{"name": "j", "kind": "prune", "schedule": "@daily", ` + repoWith("repo.pw") + `, "keep": {"daily": "7"}}`, `keep.daily: want an integer, not string`},
		{`{"name": "j", "kind": "prune", "schedule": "@daily", ` + repoWith("repo.pw") + `, "keep": {"Daily": 7}}`, `unknown field "keep.Daily": did you mean "keep.daily"?`},
		{`{"name": "j", "Kind": "verify", "schedule": "@daily", ` + repoWith("repo.pw") + `}`, `unknown field "Kind": did you mean "kind"?`},
		{`{"name": "j", "kind": "backup", "schedule": "@daily", "pes": ["vm:*"], ` + repoWith("repo.pw") + `}`, `pes: no PE type vm is configured`},
		{`{"name": "j", "kind": "replicate", "schedule": "@daily", ` + repoWith("repo.pw") + `, "from": {"location": "` + f.repoDir + `/"}}`, `the job's repository itself`},
		{`{"name": "j", "kind": "verify", "schedule": "@daily", "pes": ["fs:a"], ` + repoWith("repo.pw") + `}`, `pes: a verify job checks the whole repository`},
		{`{"name": "j", "kind": "prune", "schedule": "@daily", "readDataNew": true, "keep": {"daily": 7}, ` + repoWith("repo.pw") + `}`, `readDataNew: only for verify jobs, not prune`},
	} {
		code, out := f.do(t, "POST", "/v1/appliance/jobs", c.body)
		msg := decode[api.Error](t, out).Message
		if code != http.StatusBadRequest || !strings.Contains(msg, c.want) {
			t.Errorf("%s: %d %s, want 400 with %q", c.body, code, out, c.want)
		}
		for _, goWords := range []string{"Go ", "api.", "jobs.", "struct", "json:"} {
			if strings.Contains(msg, goWords) {
				t.Errorf("%s: %q speaks Go (%q)", c.body, msg, goWords)
			}
		}
	}
	if list, _ := f.client.ListJobsWithResponse(context.Background()); list.JSON200 == nil || len(*list.JSON200) != 1 {
		t.Fatalf("jobs after refusals: %s", list.Body)
	}
	if _, err := os.Stat(filepath.Join(f.cfgDir, jobs.File)); !os.IsNotExist(err) {
		t.Fatalf("jobs.json written by refused jobs: %v", err)
	}
	// The password file the operator gave in jobs.json may be kept.
	held := fmt.Sprintf(`{"kind": "verify", "schedule": "@monthly", "repository": {"location": %q, "passwordFile": %q}}`, f.repoDir, f.fifo)
	if code, out := f.do(t, "PUT", "/v1/appliance/jobs/held", held); code != http.StatusOK {
		t.Fatalf("update keeping the operator's password file: %d %s", code, out)
	}
	// A prune job selects the PEs of the repository's snapshots: a type
	// not configured here (vm at a second site) is no fault.
	pruneVMs := `{"name": "prune-vms", "kind": "prune", "schedule": "@daily", "pes": ["vm:*"], "keep": {"daily": 7}, ` + repoWith("repo.pw") + `}`
	if code, out := f.do(t, "POST", "/v1/appliance/jobs", pruneVMs); code != http.StatusCreated {
		t.Fatalf("prune job of vm:* without vm configured: %d %s", code, out)
	}
}

// TestJobsNotConfigured: an API without a scheduler answers 501.
func TestJobsNotConfigured(t *testing.T) {
	f := newSecFixture(t)
	if code, out := f.do(t, "GET", "/v1/appliance/jobs", ""); code != http.StatusNotImplemented {
		t.Fatalf("list without scheduler: %d %s", code, out)
	}
}
