package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/samples/samplestest"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
)

// clock is the test's clock: it moves only when the test sets it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }
func quiet() *slog.Logger        { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
func at(s string) time.Time      { t, _ := time.ParseInLocation(time.DateTime, s, time.Local); return t }
func (c *clock) SetAt(s string)  { c.Set(at(s)) }
func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fixture is a configuration with the sample PEs, a repository in it
// with a password file, and a tasks manager.
type fixture struct {
	dir, repoDir, passFile string
	m                      pe.Manager
	tm                     *tasks.Manager
	clock                  *clock
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir, m := samplestest.Config(t)
	f := &fixture{dir: dir, m: m, repoDir: filepath.Join(dir, "repo"), passFile: filepath.Join(dir, "password"), clock: &clock{}}
	writeFile(t, f.passFile, repotest.Password+"\n")
	be, err := backend.NewDir(f.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Init(context.Background(), be, repo.Options{Password: repotest.Password, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	f.tm = tasks.NewManager(tasks.Options{Logger: quiet()})
	t.Cleanup(func() { f.tm.Shutdown(context.Background(), time.Minute) })
	return f
}

// scheduler loads jobsJSON (%[1]s is the repository, %[2]s its password
// file) as jobs.json and returns a new Scheduler of it.
func (f *fixture) scheduler(t *testing.T, jobsJSON string) *Scheduler {
	t.Helper()
	writeFile(t, filepath.Join(f.dir, File), fmt.Sprintf(jobsJSON, f.repoDir, f.passFile))
	jobs, ok, err := Load(f.dir)
	if err != nil || !ok {
		t.Fatalf("load jobs: %v %v", ok, err)
	}
	s, err := New(Options{Jobs: jobs, ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tick runs the jobs due and waits for their runs to end.
func (f *fixture) tick(t *testing.T, s *Scheduler) []tasks.Info {
	t.Helper()
	var out []tasks.Info
	for _, id := range s.Tick() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		info, err := f.tm.Wait(ctx, id)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if info.Status != tasks.Success {
			t.Fatalf("task %s (%s): %s %v", id, info.Details, info.Status, info.Result)
		}
		out = append(out, info)
	}
	return out
}

// TestNightlyBackupAndPruneAsRestic: a nightly backup job and a prune job
// with keep-daily 7 / keep-weekly 4 run for 30 simulated days leave
// exactly the snapshots restic forget keeps of backups at the same times.
func TestNightlyBackupAndPruneAsRestic(t *testing.T) {
	f := newFixture(t)
	s := f.scheduler(t, `[
  {"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "pes": ["fs:*"],
   "repository": {"location": %[1]q, "passwordFile": %[2]q}},
  {"name": "retention", "kind": "prune", "schedule": "30 2 * * *",
   "repository": {"location": %[1]q, "passwordFile": %[2]q}, "keep": {"daily": 7, "weekly": 4}}
]`)
	f.clock.SetAt("2026-10-20 00:00:00")
	if started := s.Tick(); len(started) != 0 {
		t.Fatalf("jobs never run ran at once: %v", started)
	}
	var backups []time.Time
	for range 200 { // bounded: 60 runs are expected
		if len(backups) == 30 {
			break
		}
		f.clock.Set(s.Next())
		for _, info := range f.tick(t, s) {
			if info.Details == "nightly" {
				backups = append(backups, f.clock.Now())
			}
		}
	}
	if len(backups) != 30 {
		t.Fatalf("%d nightly backups, want 30", len(backups))
	}
	f.clock.Set(s.Next()) // the last night's prune
	if got := f.tick(t, s); len(got) != 1 || got[0].Details != "retention" {
		t.Fatalf("after the last backup ran %v, want the prune", got)
	}

	want := repotest.ResticKept(t, backups, [][]string{{"--keep-daily", "7", "--keep-weekly", "4"}})[0]
	r := f.open(t)
	snaps, err := r.Snapshots(context.Background(), pe.ID{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sn := range snaps {
		got = append(got, sn.BackedUp.Local().Format(time.DateTime))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("the repository holds snapshots of\n%v\nrestic keeps\n%v", got, want)
	}
	if len(want) != 9 { // 7 days (the newest 2 weeks), and 2 more Sundays
		t.Fatalf("restic keeps %d snapshots, want 9: %v", len(want), want)
	}
	if problems, err := r.Check(context.Background(), true, nil); err != nil || len(problems) > 0 {
		t.Fatalf("check --read-data: %v %v", problems, err)
	}

	runs := s.History("nightly")
	if len(runs) != 30 {
		t.Fatalf("%d runs in the history of nightly, want 30", len(runs))
	}
	for i, run := range runs {
		if run.Status != "success" || !run.Started.Equal(backups[i]) || run.Task == "" || !strings.HasPrefix(run.Details, "backed up fs:sample:") {
			t.Fatalf("run %d: %+v", i, run)
		}
	}
	if runs[0].Read == 0 || runs[0].New == 0 || runs[0].Stored == 0 {
		t.Fatalf("the first backup read/new/stored nothing: %+v", runs[0])
	}
	prunes := s.History("retention")
	if len(prunes) != 30 || !strings.Contains(prunes[29].Details, "kept 9 snapshot(s), forgot 1") {
		t.Fatalf("%d prune runs, the last %+v", len(prunes), prunes[len(prunes)-1])
	}
}

func (f *fixture) open(t *testing.T) *repo.Repository {
	t.Helper()
	be, err := backend.NewDir(f.repoDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), be, repo.Options{Password: repotest.Password, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

const verifyJob = `[{"name": "verify", "kind": "verify", "schedule": "0 3 * * *",
  "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`

// TestMissedRunsRunOnceAtStart: runs missed while the appliance was down
// run once when it starts again (a new Scheduler over the same history),
// not once per missed time; a job never run before does not.
func TestMissedRunsRunOnceAtStart(t *testing.T) {
	f := newFixture(t)
	s := f.scheduler(t, verifyJob)
	f.clock.SetAt("2026-11-01 01:00:00")
	f.tick(t, s)
	f.clock.SetAt("2026-11-01 03:00:00")
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d at 03:00, want 1", len(got))
	}

	// Down for three nights; then a new job appears too.
	f.clock.SetAt("2026-11-04 10:00:00")
	s = f.scheduler(t, `[
  {"name": "verify", "kind": "verify", "schedule": "0 3 * * *", "repository": {"location": %[1]q, "passwordFile": %[2]q}},
  {"name": "new", "kind": "verify", "schedule": "0 3 * * *", "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`)
	got := f.tick(t, s)
	if len(got) != 1 || got[0].Details != "verify" {
		t.Fatalf("at start ran %v, want the missed verify once", got)
	}
	if got := f.tick(t, s); len(got) != 0 {
		t.Fatalf("ran again at once: %v", got)
	}
	if next := s.Next(); !next.Equal(at("2026-11-05 03:00:00")) {
		t.Fatalf("next run at %v, want 2026-11-05 03:00", next)
	}
	runs := s.History("verify")
	if len(runs) != 2 || !runs[1].Scheduled.Equal(at("2026-11-02 03:00:00")) || !runs[1].Started.Equal(at("2026-11-04 10:00:00")) {
		t.Fatalf("history: %+v", runs)
	}
	if runs := s.History("new"); len(runs) != 0 {
		t.Fatalf("the new job ran: %+v", runs)
	}
}

// TestRunsNeverOverlap: a run due while the previous run of its job still
// runs is skipped, and the skip recorded; the next one runs. The first
// run is held by its password file, a FIFO the test writes when it wants
// the run to go on.
func TestRunsNeverOverlap(t *testing.T) {
	f := newFixture(t)
	os.Remove(f.passFile)
	if err := syscall.Mkfifo(f.passFile, 0o600); err != nil {
		t.Fatal(err)
	}
	s := f.scheduler(t, `[{"name": "hourly", "kind": "verify", "schedule": "@hourly",
  "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`)
	f.clock.SetAt("2026-11-01 00:30:00")
	s.Tick()
	f.clock.SetAt("2026-11-01 01:00:00")
	first := s.Tick()
	if len(first) != 1 {
		t.Fatalf("started %v at 01:00", first)
	}
	f.clock.SetAt("2026-11-01 02:00:00")
	if got := s.Tick(); len(got) != 0 {
		t.Fatalf("started %v while the 01:00 run runs", got)
	}
	runs := s.History("hourly")
	if len(runs) != 2 || runs[0].Status != Running || runs[0].Task != first[0] ||
		runs[1].Status != Skipped || !runs[1].Scheduled.Equal(at("2026-11-01 02:00:00")) {
		t.Fatalf("history while the first run runs: %+v", runs)
	}

	release := func() { f.reached(t)() }
	release()
	info, err := f.tm.Wait(context.Background(), first[0])
	if err != nil || info.Status != tasks.Success {
		t.Fatalf("first run: %+v %v", info, err)
	}
	f.clock.SetAt("2026-11-01 03:00:00")
	third := s.Tick()
	if len(third) != 1 {
		t.Fatalf("started %v at 03:00 after the first run ended", third)
	}
	release()
	if info, err := f.tm.Wait(context.Background(), third[0]); err != nil || info.Status != tasks.Success {
		t.Fatalf("third run: %+v %v", info, err)
	}
	runs = s.History("hourly")
	var statuses []string
	for _, r := range runs {
		statuses = append(statuses, r.Status)
	}
	if !slices.Equal(statuses, []string{"success", Skipped, "success"}) || runs[0].Task != first[0] {
		t.Fatalf("history: %+v", runs)
	}
}

// TestParseErrors: a bad jobs file is refused with the job and the field.
func TestParseErrors(t *testing.T) {
	repoJSON := `"repository": {"location": "/r"}`
	for _, c := range []struct{ json, want string }{
		{`{}`, "want a JSON list of jobs, not object"},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}, {"name": "nightly", "kind": "verify", "schedul": "@daily", ` + repoJSON + `}]`, `job "nightly" (2nd): unknown field "schedul"`},
		{`[[1]]`, `job 1: want a JSON object (one job), not array`},
		{`[null]`, `job 1: want a JSON object (one job), not null`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {"daily": "7"}}]`, `job "a" (1st): keep.daily: want an integer, not string`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {"daily": 1.5}}]`, `keep.daily: want an integer, not number 1.5`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", ` + repoJSON + `, "pes": "fs:x"}]`, `job "a" (1st): pes: want a JSON list, not string`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}`, `want a JSON list of jobs: not JSON`},
		{`[{"name": "a", "kind": "backup", "schedule": "0 2 * * *", ` + repoJSON + `, "pes": ["fs:x"], "color": 1}]`, `unknown field "color"`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {"daily": -2}}]`, `job "a": keep: keep-daily -2: want a count, or -1 for all`},
		{`[{"name": "a", "kind": "dance", "schedule": "@daily", ` + repoJSON + `}]`, `job "a": kind "dance"`},
		{`[{"name": "a", "kind": "verify", "schedule": "61 * * * *", ` + repoJSON + `}]`, `job "a": schedule "61 * * * *"`},
		{`[{"name": "a", "kind": "verify", "schedule": "Mon *-*-* 25:00", ` + repoJSON + `}]`, `job "a": schedule "Mon *-*-* 25:00": want cron`},
		{`[{"name": "a", "kind": "verify", "schedule": "Mon *-*-* 25:00", ` + repoJSON + `}]`, `or systemd calendar`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", "readDataSubset": "200%", ` + repoJSON + `}]`, `job "a": readDataSubset "200%": want x%: a percentage`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", "readData": true, "readDataNew": true, ` + repoJSON + `}]`, `job "a": readData: it reads every pack`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily"}]`, `job "a": repository.location: missing`},
		{`[{"name": "a", "kind": "backup", "schedule": "@daily", ` + repoJSON + `}]`, `job "a": pes: a backup job needs PEs`},
		{`[{"name": "a", "kind": "backup", "schedule": "@daily", ` + repoJSON + `, "pes": ["nocolon"]}]`, `job "a": pes: "nocolon"`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `}]`, `job "a": keep: a prune job needs`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {}}]`, `job "a": keep: no keep rule`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {"daily": -2}}]`, `job "a": keep: keep-daily -2`},
		{`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {"within": "7x"}}]`, `job "a": keep: within`},
		{`[{"name": "a", "kind": "replicate", "schedule": "@daily", ` + repoJSON + `}]`, `job "a": from.location`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", ` + repoJSON + `, "keep": {"daily": 1}}]`, `job "a": keep: only for prune jobs`},
		{`[{"kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `job 1: name ""`},
		{`[{"name": "..", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `job "..": name ".."`},
		{`[{"name": ".hidden", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `name ".hidden": want 1 to 128 letters`},
		{`[{"name": "a b?c#d%", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `name "a b?c#d%": want 1 to 128 letters`},
		{`[{"name": "a\nb", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `want 1 to 128 letters`},
		{`[{"name": "` + strings.Repeat("x", 129) + `", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `want 1 to 128 letters`},
		{`[{"name": "a", "kind": "verify", "schedule": "@every 1s", ` + repoJSON + `}]`, `job "a": schedule "@every 1s": @every`},
		{`[{"name": "a", "kind": "verify", "schedule": "@every 1h", ` + repoJSON + `}]`, `job "a": schedule "@every 1h": @every`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}, {"name": "a", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`, `job "a": name: defined twice`},
	} {
		_, err := Parse([]byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.json, err, c.want)
		}
	}
	if _, err := Parse([]byte(`[{"name": "` + strings.Repeat("x", 128) + `", "kind": "verify", "schedule": "@daily", ` + repoJSON + `},
		{"name": "Nightly_backup-2.0", "kind": "verify", "schedule": "@daily", ` + repoJSON + `}]`)); err != nil {
		t.Errorf("valid names refused: %v", err)
	}
	// -1 keeps all, as repo forget --keep-daily -1.
	if _, err := Parse([]byte(`[{"name": "a", "kind": "prune", "schedule": "@daily", ` + repoJSON + `, "keep": {"daily": -1, "last": 3}}]`)); err != nil {
		t.Errorf("keep of -1 refused: %v", err)
	}
	jobs, err := Parse([]byte(`[{"name": "w", "kind": "replicate", "schedule": "@weekly", "pes": ["disk:*", "fs:sample"],
		"repository": {"location": "s3+http://127.0.0.1:1/b"}, "from": {"location": "/r"}}]`))
	if err != nil || len(jobs) != 1 {
		t.Fatal(err)
	}
	b, _ := json.Marshal(jobs[0])
	if !strings.Contains(string(b), `"from":{"location":"/r"}`) {
		t.Fatalf("job as JSON: %s", b)
	}
}

// TestReplicateJob: a replicate job copies the backups of the PEs it
// names into a second repository with its own password; run again it
// copies only the new one.
func TestReplicateJob(t *testing.T) {
	f := newFixture(t)
	second := filepath.Join(f.dir, "second")
	secondPass := filepath.Join(f.dir, "second.pw")
	writeFile(t, secondPass, "another\n")
	be, err := backend.NewDir(second)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Init(context.Background(), be, repo.Options{Password: "another", Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	s := f.scheduler(t, fmt.Sprintf(`[
  {"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "pes": ["fs:sample", "disk:*"],
   "repository": {"location": %%[1]q, "passwordFile": %%[2]q}},
  {"name": "offsite", "kind": "replicate", "schedule": "0 3 * * *", "pes": ["fs:*"],
   "from": {"location": %%[1]q, "passwordFile": %%[2]q}, "repository": {"location": %q, "passwordFile": %q}}
]`, second, secondPass))
	f.clock.SetAt("2026-11-01 00:00:00")
	s.Tick()
	for range 4 { // two nights
		f.clock.Set(s.Next())
		f.tick(t, s)
	}
	runs := s.History("offsite")
	if len(runs) != 2 || runs[0].Details != "copied 1 snapshot(s), 0 there already" || runs[1].Details != "copied 1 snapshot(s), 1 there already" {
		t.Fatalf("replicate runs: %+v", runs)
	}
	if runs[0].New == 0 || runs[1].New >= runs[0].New {
		t.Fatalf("the second copy sent %d new bytes, the first %d: want fewer", runs[1].New, runs[0].New)
	}
	r, err := repo.Open(context.Background(), be, repo.Options{Password: "another", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ids, err := r.SnapshotIDs(context.Background(), pe.ID{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := f.open(t).SnapshotIDs(context.Background(), mustParse(t, "fs:sample"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, src) || len(ids) != 2 {
		t.Fatalf("the replica holds %v, the primary's fs:sample snapshots are %v", ids, src)
	}
	if problems, err := r.Check(context.Background(), true, nil); err != nil || len(problems) > 0 {
		t.Fatalf("check --read-data of the replica: %v %v", problems, err)
	}
}

func mustParse(t *testing.T, s string) pe.ID {
	t.Helper()
	id, err := pe.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestDamagedHistory: a truncated history file does not stop the
// scheduler: it is moved aside and the history starts empty.
func TestDamagedHistory(t *testing.T) {
	f := newFixture(t)
	damaged := `{"nightly": {"last": "2026-10-20T02:00:00Z", "runs": [{"sta`
	writeFile(t, historyPath(f.dir), damaged)
	s := f.scheduler(t, `[{"name": "nightly", "kind": "prune", "schedule": "0 2 * * *",
   "repository": {"location": %[1]q, "passwordFile": %[2]q}, "keep": {"daily": 7}}]`)
	if runs := s.History("nightly"); len(runs) != 0 {
		t.Fatalf("history of a damaged file: %v", runs)
	}
	b, err := os.ReadFile(historyPath(f.dir) + ".corrupt")
	if err != nil || string(b) != damaged {
		t.Fatalf("damaged file not kept aside: %q %v", b, err)
	}
	if _, err := os.Stat(historyPath(f.dir)); !os.IsNotExist(err) {
		t.Fatalf("damaged history file still in place: %v", err)
	}
}

// TestInterruptedRunRunsAgain: a run still running when the appliance
// stopped is shown interrupted at the next start and runs again once
// there, though its next time is not yet due.
func TestInterruptedRunRunsAgain(t *testing.T) {
	f := newFixture(t)
	writeFile(t, historyPath(f.dir), `{"verify": {"last": "2026-11-01T03:00:00+01:00",
  "runs": [{"task": "task-1", "scheduled": "2026-11-01T03:00:00+01:00", "started": "2026-11-01T03:00:00+01:00",
    "finished": "0001-01-01T00:00:00Z", "status": "running", "bytesRead": 0, "bytesNew": 0, "bytesStored": 0}]}}`)
	f.clock.SetAt("2026-11-01 09:00:00")
	s := f.scheduler(t, verifyJob)
	if runs := s.History("verify"); len(runs) != 1 || runs[0].Status != Interrupted {
		t.Fatalf("history at start: %+v", runs)
	}
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d at start, want the interrupted run again", len(got))
	}
	if got := f.tick(t, s); len(got) != 0 {
		t.Fatalf("ran again: %v", got)
	}
	runs := s.History("verify")
	if len(runs) != 2 || runs[0].Status != Interrupted || runs[1].Status != "success" || runs[1].Task == "" {
		t.Fatalf("history: %+v", runs)
	}
	// The next start finds a finished run: nothing to run again.
	s = f.scheduler(t, verifyJob)
	if got := s.Tick(); len(got) != 0 {
		t.Fatalf("ran at the next start: %v", got)
	}
}

// TestClockWentBack: a last run dated in the future (the clock went back)
// does not hold the job until the clock catches up, and neither does a
// next time computed before the clock went back.
func TestClockWentBack(t *testing.T) {
	f := newFixture(t)
	writeFile(t, historyPath(f.dir), `{"verify": {"last": "2031-01-01T03:00:00+01:00", "runs": []}}`)
	f.clock.SetAt("2026-11-01 01:00:00")
	s := f.scheduler(t, verifyJob)
	if got := s.Tick(); len(got) != 0 {
		t.Fatalf("ran at 01:00: %v", got)
	}
	if next := s.Next(); !next.Equal(at("2026-11-01 03:00:00")) {
		t.Fatalf("next run at %v, want 2026-11-01 03:00", next)
	}

	// The clock is set years ahead (the missed run runs, and the next
	// time is computed from there), then set right again.
	f.clock.SetAt("2031-06-01 04:00:00")
	s = f.scheduler(t, verifyJob)
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d in 2031, want the missed run", len(got))
	}
	f.clock.SetAt("2026-11-02 01:00:00")
	if got := s.Tick(); len(got) != 0 {
		t.Fatalf("ran at 01:00: %v", got)
	}
	if next := s.Next(); !next.Equal(at("2026-11-02 03:00:00")) {
		t.Fatalf("next run at %v after the clock went back, want 2026-11-02 03:00", next)
	}
	f.clock.SetAt("2026-11-02 03:00:00")
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d at 03:00, want 1", len(got))
	}
}

// TestScheduleZone: a CRON_TZ= prefix gives a schedule in that zone (the
// README's advice against daylight-saving gaps).
func TestScheduleZone(t *testing.T) {
	js, err := Parse([]byte(`[{"name": "v", "kind": "verify", "schedule": "CRON_TZ=UTC 30 2 * * *", "repository": {"location": "/r"}}]`))
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC)
	if next := js[0].schedule.Next(from); !next.Equal(from.Add(150 * time.Minute)) {
		t.Fatalf("next of CRON_TZ=UTC 30 2 * * * after %v: %v", from, next)
	}
}

// TestBackupOfNothingFails: a backup job whose selectors match no PE fails
// and says so, rather than succeeding with nothing backed up.
func TestBackupOfNothingFails(t *testing.T) {
	f := newFixture(t)
	if err := os.RemoveAll(filepath.Join(f.dir, "fs", "sample")); err != nil {
		t.Fatal(err)
	}
	s := f.scheduler(t, `[{"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "pes": ["fs:*"],
   "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`)
	f.clock.SetAt("2026-11-01 01:00:00")
	s.Tick()
	f.clock.SetAt("2026-11-01 02:00:00")
	ids := s.Tick()
	if len(ids) != 1 {
		t.Fatalf("started %v at 02:00", ids)
	}
	info, err := f.tm.Wait(context.Background(), ids[0])
	if err != nil || info.Status != tasks.Failed || !strings.Contains(info.Details, "no PEs match fs:*") {
		t.Fatalf("task: %+v %v", info, err)
	}
	if runs := s.History("nightly"); len(runs) != 1 || runs[0].Status != "failed" || !strings.Contains(runs[0].Error, "no PEs match fs:*") {
		t.Fatalf("history: %+v", runs)
	}
}

// TestVerifyErrorBounded: the problems named in a verify run's error are
// bounded, with the count of the rest.
func TestVerifyErrorBounded(t *testing.T) {
	var msgs []string
	for i := range 25 {
		msgs = append(msgs, fmt.Sprintf("pack %d missing", i))
	}
	got := summarize(msgs, maxProblems)
	if !strings.HasPrefix(got, "pack 0 missing; ") || !strings.HasSuffix(got, "pack 19 missing; and 5 more") {
		t.Fatalf("summary of 25: %q", got)
	}
	if got := summarize(msgs[:2], maxProblems); got != "pack 0 missing; pack 1 missing" {
		t.Fatalf("summary of 2: %q", got)
	}
}

// TestRunsOnOneRepositoryWait: a prune due while a backup runs on the same
// repository waits for it, rather than failing on the repository's lock,
// and both succeed. The backup is held by its password file, a FIFO.
func TestRunsOnOneRepositoryWait(t *testing.T) {
	f := newFixture(t)
	fifo := filepath.Join(f.dir, "backup-password")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s := f.scheduler(t, `[{"name": "nightly", "kind": "backup", "schedule": "0 2 * * *", "pes": ["fs:*"],
   "repository": {"location": %[1]q, "passwordFile": `+strconv.Quote(fifo)+`}},
  {"name": "retention", "kind": "prune", "schedule": "30 2 * * *", "keep": {"daily": 7},
   "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`)
	f.clock.SetAt("2026-11-01 01:00:00")
	s.Tick()
	f.clock.SetAt("2026-11-01 02:00:00")
	backup := s.Tick()
	if len(backup) != 1 {
		t.Fatalf("started %v at 02:00", backup)
	}
	// The backup reads its password, so holds the repository, once the
	// FIFO has a reader.
	var w *os.File
	for range 3000 { // bounded: up to 30 s
		var err error
		if w, err = os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if w == nil {
		t.Fatal("the backup never read its password file")
	}
	f.clock.SetAt("2026-11-01 02:30:00")
	prune := s.Tick()
	if len(prune) != 1 {
		t.Fatalf("started %v at 02:30", prune)
	}
	if info, _ := f.tm.Get(prune[0]); info.Status != tasks.Running {
		t.Fatalf("the prune ran during the backup: %+v", info)
	}
	w.WriteString(repotest.Password + "\n")
	w.Close()
	var ended []time.Time
	for _, id := range append(backup, prune...) {
		info, err := f.tm.Wait(context.Background(), id)
		if err != nil || info.Status != tasks.Success {
			t.Fatalf("task %s: %+v %v", id, info, err)
		}
		ended = append(ended, info.Finished)
	}
	if !ended[0].Before(ended[1]) {
		t.Fatalf("the prune ended (%v) before the backup it waits for (%v)", ended[1], ended[0])
	}
}

// TestCancelledAfterItsWork: a run whose work is done when its task is
// cancelled (a shutdown just after a backup committed) is a success, and
// is not run again at the next start; a run that panics fails, is
// recorded, and the job runs again at its next time.
func TestCancelledAfterItsWork(t *testing.T) {
	f := newFixture(t)
	f.clock.SetAt("2026-11-01 02:00:00")
	s := f.scheduler(t, verifyJob)
	s.Tick()
	s.afterRun = func(task string) { f.tm.Cancel(task) }
	f.clock.SetAt("2026-11-01 03:00:00")
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d at 03:00, want 1", len(got))
	}
	if runs := s.History("verify"); len(runs) != 1 || runs[0].Status != string(tasks.Success) {
		t.Fatalf("history: %+v, want a success", runs)
	}
	s = f.scheduler(t, verifyJob)
	if got := s.Tick(); len(got) != 0 {
		t.Fatalf("ran again at the next start: %v", got)
	}

	s.afterRun = func(string) { panic("bug") }
	f.clock.SetAt("2026-11-02 03:00:00")
	ids := s.Tick()
	if len(ids) != 1 {
		t.Fatalf("ran %d at 03:00, want 1", len(ids))
	}
	if info := f.wait(t, ids[0]); info.Status != tasks.Failed || !strings.Contains(info.Details, "bug") {
		t.Fatalf("panicking run: %+v", info)
	}
	if runs := s.History("verify"); len(runs) != 2 || runs[1].Status != string(tasks.Failed) || !strings.Contains(runs[1].Error, "bug") {
		t.Fatalf("history: %+v, want the panic recorded", runs)
	}
	s.afterRun = nil
	f.clock.SetAt("2026-11-03 03:00:00")
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d after a panic, want 1", len(got))
	}
}
