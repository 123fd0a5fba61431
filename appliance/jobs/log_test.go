package jobs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
)

// syncBuffer is a bytes.Buffer the runs' goroutines may log into.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestRunEndsLogged: the end of every run is in the log: a success at
// INFO with its bytes, a failure (a wrong password) at ERROR with its
// error, a run cancelled by the job's delete at WARN.
func TestRunEndsLogged(t *testing.T) {
	f := newFixture(t)
	var log syncBuffer
	s, err := New(Options{ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.SetAt("2026-11-01 12:00:00")
	wrong := filepath.Join(f.dir, "wrong-password")
	writeFile(t, wrong, "not the password\n")
	for _, js := range []string{
		`{"name": "good", "kind": "backup", "schedule": "@daily", "pes": ["fs:sample"],
		  "repository": {"location": %[1]q, "passwordFile": %[2]q}}`,
		fmt.Sprintf(`{"name": "bad", "kind": "verify", "schedule": "@daily",
		  "repository": {"location": %%[1]q, "passwordFile": %q}}`, wrong),
	} {
		if err := s.Create(f.job(t, js)); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]tasks.Status{"good": tasks.Success, "bad": tasks.Failed} {
		id, err := s.RunNow(name)
		if err != nil {
			t.Fatal(err)
		}
		if info := f.wait(t, id); info.Status != want {
			t.Fatalf("run of %s: %+v", name, info)
		}
	}
	if err := s.Create(f.job(t, verifyJobOne)); err != nil {
		t.Fatal(err)
	}
	f.holdPassword(t)
	f.deleteDuringRun(t, s, "verify")

	lines := strings.Split(log.String(), "\n")
	for _, want := range [][]string{
		{"level=INFO", "job=good", "succeeded", "bytesRead=", "bytesNew="},
		{"level=ERROR", "job=bad", "failed", "err=", "password"},
		{"level=WARN", "job=verify", "cancelled", "err="},
	} {
		found := false
		for _, l := range lines {
			found = found || containsAll(l, want)
		}
		if !found {
			t.Errorf("no log line with %q in:\n%s", want, log.String())
		}
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestJobsFailingOnlyWhenRun: a job naming a PE type not configured is
// refused at Create and Update (loaded from jobs.json at start it is
// kept, with a warning); a job on an encrypted repository without a
// password file fails saying to set passwordFile in the job.
func TestJobsFailingOnlyWhenRun(t *testing.T) {
	f := newFixture(t)
	var log syncBuffer
	const vmJob = `{"name": %[3]q, "kind": "backup", "schedule": "@daily", "pes": ["vm:*", "fs:sample", "nas:x"],
	  "repository": {"location": %[1]q, "passwordFile": %[2]q}}`
	named := func(name string) *Job {
		return f.job(t, fmt.Sprintf(vmJob, "%[1]s", "%[2]s", name))
	}
	s, err := New(Options{Jobs: []*Job{named("vms")}, ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if l := log.String(); !containsAll(l, []string{"level=WARN", "job=vms", "not configured", "vm", "nas"}) {
		t.Errorf("no warning of the job's unknown types at start:\n%s", l)
	}
	if _, err := s.Get("vms"); err != nil {
		t.Errorf("the job of unknown types was not loaded: %v", err)
	}
	if err := s.Create(named("vms2")); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `job "vms2": pes: no PE type vm, nas is configured`) {
		t.Errorf("create of a job of unknown types: %v", err)
	}
	if err := s.Update(named("vms")); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no PE type vm, nas") {
		t.Errorf("update to a job of unknown types: %v", err)
	}

	if err := s.Create(f.job(t, `{"name": "nopw", "kind": "verify", "schedule": "@daily", "repository": {"location": %[1]q}}`)); err != nil {
		t.Fatal(err)
	}
	id, err := s.RunNow("nopw")
	if err != nil {
		t.Fatal(err)
	}
	info := f.wait(t, id)
	if runs := s.History("nopw"); info.Status != tasks.Failed || len(runs) != 1 ||
		!strings.HasSuffix(runs[0].Error, "is encrypted: set passwordFile in the job") {
		t.Errorf("run without a password file: %+v %+v", info, runs)
	}
}
