package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
)

// empty returns a Scheduler of f without jobs.json.
func (f *fixture) empty(t *testing.T) *Scheduler {
	t.Helper()
	s, err := New(Options{ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// job decodes a job of jobJSON (%[1]s the repository, %[2]s its password
// file).
func (f *fixture) job(t *testing.T, jobJSON string) *Job {
	t.Helper()
	j, err := DecodeJob([]byte(fmt.Sprintf(jobJSON, f.repoDir, f.passFile)))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// onDisk is jobs.json as Load reads it: the names and schedules.
func (f *fixture) onDisk(t *testing.T) []string {
	t.Helper()
	js, ok, err := Load(f.dir)
	if err != nil || !ok {
		t.Fatalf("jobs.json: %v %v", ok, err)
	}
	var out []string
	for _, j := range js {
		out = append(out, j.Name+" "+j.Schedule)
	}
	return out
}

const verifyJobOne = `{"name": "verify", "kind": "verify", "schedule": "@daily",
  "repository": {"location": %[1]q, "passwordFile": %[2]q}}`

// TestJobSetChanges: jobs created, updated and deleted while the
// scheduler runs are in jobs.json after each change; a bad job is refused
// as jobs.json would refuse it and changes nothing; an update of the
// schedule moves the next time; a delete drops the history.
func TestJobSetChanges(t *testing.T) {
	f := newFixture(t)
	s := f.empty(t)
	f.clock.SetAt("2026-11-01 10:30:00")
	if err := s.Create(f.job(t, verifyJobOne)); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(f.onDisk(t)); got != "[verify @daily]" {
		t.Fatalf("jobs.json after create: %s", got)
	}
	st, err := s.Get("verify")
	if err != nil || !st.Next.Equal(at("2026-11-02 00:00:00")) || st.Last != nil || st.Running != "" {
		t.Fatalf("created job: %+v %v", st, err)
	}
	if err := s.Create(f.job(t, verifyJobOne)); !errors.Is(err, ErrExists) {
		t.Fatalf("create twice: %v", err)
	}

	for _, c := range []struct{ json, want string }{
		{`{"name": "bad", "kind": "verify", "schedule": "at noon", "repository": {"location": "/r"}}`, `job "bad": schedule "at noon": want cron (minute hour day month weekday`},
		{`{"name": "bad", "kind": "backup", "schedule": "@daily", "repository": {"location": "/r"}}`, `job "bad": pes: a backup job needs PEs`},
		{`{"kind": "verify", "schedule": "@daily", "repository": {"location": "/r"}}`, `job: name "": want 1 to 128 letters`},
		{`{"name": "bad", "kind": "verify", "schedule": "@daily", "repository": {"location": "/r"}, "colour": "red"}`, `unknown field "colour"`},
		{`{"name": "bad", "kind": "verify", "schedule": "@daily", "repository": {"location": "/r"}} {}`, `more after the JSON value`},
		{`null`, `not null`},
	} {
		j, err := DecodeJob([]byte(c.json))
		if err == nil {
			err = s.Create(j)
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInvalid with %q", c.json, err, c.want)
		}
	}
	if got := fmt.Sprint(f.onDisk(t)); got != "[verify @daily]" {
		t.Fatalf("jobs.json after refused jobs: %s", got)
	}

	// The job runs, then gets an hourly schedule: due at the next hour.
	f.clock.SetAt("2026-11-02 00:00:00")
	if ran := f.tick(t, s); len(ran) != 1 {
		t.Fatalf("ran %d at midnight", len(ran))
	}
	f.clock.SetAt("2026-11-02 05:10:00")
	hourly := f.job(t, strings.Replace(verifyJobOne, "@daily", "@hourly", 1))
	if err := s.Update(hourly); err != nil {
		t.Fatal(err)
	}
	st, _ = s.Get("verify")
	if !st.Next.Equal(at("2026-11-02 06:00:00")) || st.Job.Schedule != "@hourly" || st.Last == nil || st.Last.Status != "success" {
		t.Fatalf("after update: %+v", st)
	}
	if !s.Next().Equal(at("2026-11-02 06:00:00")) {
		t.Fatalf("scheduler's next: %v", s.Next())
	}
	if got := fmt.Sprint(f.onDisk(t)); got != "[verify @hourly]" {
		t.Fatalf("jobs.json after update: %s", got)
	}
	// The caller's job is copied, not kept.
	hourly.Schedule = "@yearly"
	if st, _ := s.Get("verify"); st.Job.Schedule != "@hourly" {
		t.Fatalf("the scheduler shares the caller's job: %+v", st.Job)
	}
	missing := f.job(t, strings.Replace(verifyJobOne, `"verify"`, `"other"`, 1))
	if err := s.Update(missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing job: %v", err)
	}

	if err := s.Delete("verify"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(f.onDisk(t)); got != "[]" {
		t.Fatalf("jobs.json after delete: %s", got)
	}
	if len(s.List()) != 0 || len(s.History("verify")) != 0 || !s.Next().IsZero() {
		t.Fatalf("after delete: %+v %+v %v", s.List(), s.History("verify"), s.Next())
	}
	if err := s.Delete("verify"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	// A job created again under the name starts anew.
	if err := s.Create(f.job(t, verifyJobOne)); err != nil {
		t.Fatal(err)
	}
	f.clock.SetAt("2026-11-02 07:00:00")
	if ran := s.Tick(); len(ran) != 0 {
		t.Fatalf("a job created at 05:10 @daily ran at 07:00: %v", ran)
	}
}

// TestJobsFileNotWritten: a change that cannot be written to jobs.json is
// not applied, and the file keeps its content.
func TestJobsFileNotWritten(t *testing.T) {
	f := newFixture(t)
	// A directory in jobs.json's place: the rename over it fails.
	if err := os.MkdirAll(filepath.Join(f.dir, File, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := f.empty(t)
	if err := s.Create(f.job(t, verifyJobOne)); err == nil || !strings.Contains(err.Error(), "jobs not changed") {
		t.Fatalf("create with jobs.json a directory: %v", err)
	}
	if len(s.List()) != 0 || !s.Next().IsZero() {
		t.Fatalf("a job not written is scheduled: %+v", s.List())
	}
	if err := os.RemoveAll(filepath.Join(f.dir, File)); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(f.job(t, verifyJobOne)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(f.dir, File))

	s.writeJobs = func(string, []byte) error { return syscall.ENOSPC }
	if err := s.Update(f.job(t, strings.Replace(verifyJobOne, "@daily", "@hourly", 1))); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("update: %v", err)
	}
	if err := s.Delete("verify"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("delete: %v", err)
	}
	if err := s.Create(f.job(t, strings.Replace(verifyJobOne, `"verify"`, `"other"`, 1))); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("create: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(f.dir, File))
	list := s.List()
	if string(after) != string(before) || len(list) != 1 || list[0].Job.Schedule != "@daily" {
		t.Fatalf("after failed writes: file %s, jobs %+v", after, list)
	}
}

// holdPassword makes f's password file a FIFO: a run blocks opening its
// repository until release.
func (f *fixture) holdPassword(t *testing.T) (release func()) {
	t.Helper()
	os.Remove(f.passFile)
	if err := syscall.Mkfifo(f.passFile, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() { f.reached(t)() }
}

// reached waits until a run has the password FIFO open, then returns what
// lets it read the password: between the two it stays blocked there.
func (f *fixture) reached(t *testing.T) (write func()) {
	t.Helper()
	// Opening a FIFO to write without blocking fails (ENXIO) until it has
	// a reader; a blocking open would hang the test if no run came.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		fd, err := syscall.Open(f.passFile, syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if err == nil {
			w := os.NewFile(uintptr(fd), f.passFile)
			return func() {
				w.WriteString(repotest.Password + "\n")
				w.Close()
			}
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("waiting for a run to open the password file: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// deleteDuringRun runs the job name now, deletes the job while its run
// waits for the password FIFO (holdPassword), and checks that the run
// ends cancelled.
func (f *fixture) deleteDuringRun(t *testing.T, s *Scheduler, name string) {
	t.Helper()
	id, err := s.RunNow(name)
	if err != nil {
		t.Fatal(err)
	}
	write := f.reached(t)
	if err := s.Delete(name); err != nil {
		t.Fatal(err)
	}
	write()
	if info := f.wait(t, id); info.Status != tasks.Cancelled {
		t.Fatalf("run of a deleted job: %+v", info)
	}
}

func (f *fixture) wait(t *testing.T, id string) tasks.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := f.tm.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestRunNow: a run asked for starts at once as a task and is recorded as
// manual; a second while it runs is refused, and so is the scheduled one
// due meanwhile (skipped). A job deleted during its run has the run
// cancelled, and nothing of it recorded.
func TestRunNow(t *testing.T) {
	f := newFixture(t)
	release := f.holdPassword(t)
	s := f.empty(t)
	f.clock.SetAt("2026-11-01 23:59:00")
	if err := s.Create(f.job(t, verifyJobOne)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunNow("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("run of a missing job: %v", err)
	}
	id, err := s.RunNow("verify")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RunNow("verify"); !errors.Is(err, ErrRunning) || !strings.Contains(err.Error(), id) {
		t.Fatalf("second run while one runs: %v", err)
	}
	if st, _ := s.Get("verify"); st.Running != id || st.Last == nil || st.Last.Status != Running || !st.Last.Manual {
		t.Fatalf("while running: %+v %+v", st, st.Last)
	}
	f.clock.SetAt("2026-11-02 00:00:00")
	if ran := s.Tick(); len(ran) != 0 {
		t.Fatalf("the scheduled run started during the manual one: %v", ran)
	}
	release()
	if info := f.wait(t, id); info.Status != tasks.Success {
		t.Fatalf("manual run: %+v", info)
	}
	runs := s.History("verify")
	if len(runs) != 2 || runs[0].Task != id || runs[0].Status != "success" || !runs[0].Manual ||
		!runs[0].Scheduled.Equal(at("2026-11-01 23:59:00")) || runs[1].Status != Skipped || runs[1].Manual {
		t.Fatalf("history: %+v", runs)
	}
	if st, _ := s.Get("verify"); st.Running != "" {
		t.Fatalf("still running after the end: %+v", st)
	}

	f.deleteDuringRun(t, s, "verify")
	if runs := s.History("verify"); len(runs) != 0 {
		t.Fatalf("history of a deleted job: %+v", runs)
	}
	b, _ := os.ReadFile(historyPath(f.dir))
	if strings.Contains(string(b), `"verify"`) {
		t.Fatalf("history file keeps the deleted job: %s", b)
	}
}

// TestJobSetConcurrent: changes, reads and ticks from many goroutines
// (run with -race) leave jobs.json and the set agreeing.
func TestJobSetConcurrent(t *testing.T) {
	f := newFixture(t)
	s := f.empty(t)
	f.clock.SetAt("2026-11-01 10:00:00")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				name := fmt.Sprintf("j%d-%d", g, i)
				j := f.job(t, strings.Replace(verifyJobOne, `"verify"`, fmt.Sprintf("%q", name), 1))
				if err := s.Create(j); err != nil {
					t.Error(err)
					return
				}
				j.Schedule = "@weekly"
				if err := s.Update(j); err != nil {
					t.Error(err)
				}
				s.List()
				s.Tick()
				if i%2 == 0 {
					if err := s.Delete(name); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	disk := f.onDisk(t)
	if len(disk) != 20 || len(s.List()) != 20 {
		t.Fatalf("jobs.json has %d jobs, the scheduler %d, want 20", len(disk), len(s.List()))
	}
	for _, d := range disk {
		if !strings.HasSuffix(d, " @weekly") {
			t.Fatalf("jobs.json: %v", disk)
		}
	}
}

// TestPasswordFileBounded: a password file that never ends fails the run
// rather than filling the memory.
func TestPasswordFileBounded(t *testing.T) {
	if _, err := readPassword("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a password") {
		t.Fatalf("read /dev/zero as a password: %v", err)
	}
}

// TestScheduleChangeSurvivesRestart: a new schedule counts from when it
// was set, after a restart too: a run of the new schedule between the
// last run and the change was not missed.
func TestScheduleChangeSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	f.clock.SetAt("2026-11-01 02:00:00")
	s := f.scheduler(t, verifyJob)
	s.Tick()
	f.clock.SetAt("2026-11-01 03:00:00")
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d at 03:00, want 1", len(got))
	}
	f.clock.SetAt("2026-11-01 12:00:00")
	if err := s.Update(f.job(t, `{"name": "verify", "kind": "verify", "schedule": "0 6 * * *",
  "repository": {"location": %[1]q, "passwordFile": %[2]q}}`)); err != nil {
		t.Fatal(err)
	}
	f.clock.SetAt("2026-11-01 13:00:00")
	jobs, _, err := Load(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err = New(Options{Jobs: jobs, ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Tick(); len(got) != 0 {
		t.Fatalf("ran after a restart at 13:00: %v, want nothing (the new schedule was set at 12:00)", got)
	}
	if next := s.Next(); !next.Equal(at("2026-11-02 06:00:00")) {
		t.Fatalf("next run at %v, want 2026-11-02 06:00", next)
	}
}
