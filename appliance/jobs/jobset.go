package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
)

// Errors of the changes to the job set.
var (
	ErrInvalid  = errors.New("invalid job")
	ErrNotFound = errors.New("no such job")
	ErrExists   = errors.New("a job of that name exists")
	ErrRunning  = errors.New("a run of the job is running")
)

// invalidError is a job refused by validation: its message is the
// reason, and it is ErrInvalid.
type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Unwrap() error        { return e.err }
func (e invalidError) Is(target error) bool { return target == ErrInvalid }

// DecodeJob reads one job as jobs.json spells it, refusing unknown
// fields; Create and Update validate it.
func DecodeJob(b []byte) (*Job, error) {
	j, err := decodeJob(b)
	if err != nil {
		return nil, invalidError{fmt.Errorf("job: %w", err)}
	}
	return j, nil
}

// check validates j as a job of jobs.json, without the faults jobs.json
// may hold (strictErrors), and a backup job's PE types as configured.
func (s *Scheduler) check(j *Job) error {
	err := j.validate()
	if err == nil {
		err = errors.Join(j.strictErrors()...)
	}
	if err == nil {
		if unknown := j.unknownTypes(context.Background(), s.opts.Manager); len(unknown) > 0 {
			err = fmt.Errorf("pes: no PE type %s is configured", strings.Join(unknown, ", "))
		}
	}
	if err != nil {
		if j.Name == "" {
			return invalidError{fmt.Errorf("job: %w", err)}
		}
		return invalidError{fmt.Errorf("job %q: %w", j.Name, err)}
	}
	return nil
}

// Status is a job as it stands: its definition, when it is due, its last
// run and the task of the run running.
type Status struct {
	Job *Job
	// Next is when the job is due next; zero until the scheduler has
	// first looked at it.
	Next time.Time
	// Last is the latest run kept, if any.
	Last *Run
	// Running is the task of the run running, if any.
	Running string
}

// List returns the jobs, in the order of jobs.json.
func (s *Scheduler) List() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, len(s.jobs))
	for i, j := range s.jobs {
		out[i] = s.status(j)
	}
	return out
}

// Get returns the job name.
func (s *Scheduler) Get(name string) (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(name)
	if i < 0 {
		return Status{}, fmt.Errorf("job %q: %w", name, ErrNotFound)
	}
	return s.status(s.jobs[i]), nil
}

// status describes j; s.mu is held.
func (s *Scheduler) status(j *Job) Status {
	st := Status{Job: j.clone(), Next: s.next[j.Name]}
	if r, ok := s.hist.latest(j.Name); ok {
		st.Last = &r
	}
	if run := s.running[j.Name]; run != nil {
		st.Running = run.task
	}
	return st
}

// Create adds j, a job of a new name, to jobs.json and schedules it from
// now: a job created is not late for runs before it.
func (s *Scheduler) Create(j *Job) error {
	if err := s.check(j); err != nil {
		return err
	}
	j = j.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.find(j.Name) >= 0 {
		return fmt.Errorf("job %q: %w", j.Name, ErrExists)
	}
	if err := s.setJobs(append(slices.Clip(s.jobs), j)); err != nil {
		return err
	}
	s.setNext(j, s.opts.Now())
	s.wake()
	return nil
}

// Update replaces the job of j's name by j. A new schedule counts from
// now; a run running goes on as it was defined when it started.
func (s *Scheduler) Update(j *Job) error {
	if err := s.check(j); err != nil {
		return err
	}
	j = j.clone()
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(j.Name)
	if i < 0 {
		return fmt.Errorf("job %q: %w", j.Name, ErrNotFound)
	}
	old := s.jobs[i]
	jobs := slices.Clone(s.jobs)
	jobs[i] = j
	if err := s.setJobs(jobs); err != nil {
		return err
	}
	if j.Schedule != old.Schedule {
		now := s.opts.Now()
		// Kept in the history, so that after a restart the new schedule
		// still counts from now, not from the last run.
		s.setLast(j, now)
		if _, known := s.next[j.Name]; known {
			s.setNext(j, now)
			s.wake()
		}
	}
	return nil
}

// Delete removes the job name from jobs.json, cancels its run if one is
// running (its task ends as cancelled) and drops its history: a job
// created later under the name starts anew.
func (s *Scheduler) Delete(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(name)
	if i < 0 {
		return fmt.Errorf("job %q: %w", name, ErrNotFound)
	}
	if err := s.setJobs(slices.Delete(slices.Clone(s.jobs), i, i+1)); err != nil {
		return err
	}
	delete(s.next, name)
	delete(s.nextFrom, name)
	if run := s.running[name]; run != nil {
		// The run, no longer running, records nothing when it ends.
		delete(s.running, name)
		if _, err := s.opts.Tasks.Cancel(run.task); err != nil {
			s.log.Warn("run of a deleted job not cancelled", "job", name, "task", run.task, "err", err)
		}
	}
	if err := s.hist.drop(name); err != nil {
		s.log.Error("job history", "job", name, "err", err)
	}
	return nil
}

// RunNow starts a run of the job name at once, as a task, and returns
// the task's ID; ErrRunning if a run of it is running. Its schedule is
// unchanged.
func (s *Scheduler) RunNow(name string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(name)
	if i < 0 {
		return "", fmt.Errorf("job %q: %w", name, ErrNotFound)
	}
	if run := s.running[name]; run != nil {
		return "", fmt.Errorf("job %q: %w (task %s)", name, ErrRunning, run.task)
	}
	now := s.opts.Now()
	id, err := s.start(s.jobs[i], now, now, true)
	if err != nil {
		return "", fmt.Errorf("job %q: %w", name, err)
	}
	return id, nil
}

// wake tells Run to look at the next times again.
func (s *Scheduler) wake() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// find returns the index of the job name, or -1; s.mu is held.
func (s *Scheduler) find(name string) int {
	return slices.IndexFunc(s.jobs, func(j *Job) bool { return j.Name == name })
}

// setJobs writes jobs to jobs.json, then makes them the job set: a set
// that could not be written is not used. s.mu is held.
func (s *Scheduler) setJobs(jobs []*Job) error {
	if jobs == nil {
		jobs = []*Job{} // [], not null
	}
	b, err := json.MarshalIndent(jobs, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(s.opts.ConfigDir, File)
	if err := s.writeJobs(path, append(b, '\n')); err != nil {
		return fmt.Errorf("jobs not changed: %w", err)
	}
	s.jobs = jobs
	return nil
}

func writeJobsFile(path string, content []byte) error {
	return atomicfile.Write(path, 0o600, func(w io.Writer) error {
		_, err := w.Write(content)
		return err
	})
}

// clone returns a copy of j that shares nothing with it.
func (j *Job) clone() *Job {
	c := *j
	c.PEs = slices.Clone(j.PEs)
	if j.Keep != nil {
		k := *j.Keep
		c.Keep = &k
	}
	if j.From != nil {
		f := *j.From
		c.From = &f
	}
	return &c
}
