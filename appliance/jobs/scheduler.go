package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Options configure a Scheduler; ConfigDir, Manager and Tasks are
// required.
type Options struct {
	// Jobs are the jobs at start (those of jobs.json; none if it is
	// absent); the set changes through Create, Update and Delete.
	Jobs []*Job
	// ConfigDir holds jobs.json, which the changes are written to, and
	// the history file.
	ConfigDir string
	// Manager is the PEs backup jobs back up.
	Manager pe.Manager
	// Tasks runs each run as a task, in TaskContext (the appliance's
	// lifetime; default context.Background()).
	Tasks       *tasks.Manager
	TaskContext context.Context
	// Now is the clock of the schedules, and of the repositories the jobs
	// open (it dates the backups); default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Scheduler starts the runs of jobs when they are due.
type Scheduler struct {
	opts Options
	hist *history
	log  *slog.Logger

	// mu guards the job set, and is held while a run starts or ends, so
	// that a change of the set (jobset.go) and a start never interleave.
	mu   sync.Mutex
	jobs []*Job               // as in jobs.json, in its order
	next map[string]time.Time // per job, when it is due next
	// nextFrom is, per job, the clock's time when next was last looked at: a
	// clock earlier than that went back.
	nextFrom map[string]time.Time
	running  map[string]*activeRun
	// repoLocks holds, per repository location, a token while a run
	// uses it.
	repoLocks map[string]chan struct{}
	// changed wakes Run when a job's next time has changed.
	changed chan struct{}
	// writeJobs writes jobs.json (a test makes it fail).
	writeJobs func(path string, content []byte) error
	// afterRun, if set, is called with a run's task ID when its work is
	// done (a test cancels the task there, or panics).
	afterRun func(task string)
}

// New returns a Scheduler of opts.Jobs, with the history kept in the
// configuration directory.
func New(opts Options) (*Scheduler, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.TaskContext == nil {
		opts.TaskContext = context.Background()
	}
	h, err := loadHistory(historyPath(opts.ConfigDir), opts.Logger)
	if err != nil {
		return nil, err
	}
	// A type configured no more fails a backup job's runs, not the
	// start: the other jobs run, and the job is fixed or deleted over
	// the API. So does what the API refuses and older versions wrote.
	for _, j := range opts.Jobs {
		if unknown := j.unknownTypes(opts.TaskContext, opts.Manager); len(unknown) > 0 {
			opts.Logger.Warn("backup job names PE types not configured: its runs fail on them", "job", j.Name, "types", unknown)
		}
		for _, w := range j.warnings {
			opts.Logger.Warn("jobs.json: job loaded with a fault the jobs API refuses", "job", j.Name, "fault", w)
		}
	}
	return &Scheduler{opts: opts, hist: h, log: opts.Logger, jobs: slices.Clone(opts.Jobs), next: map[string]time.Time{}, nextFrom: map[string]time.Time{},
		running: map[string]*activeRun{}, repoLocks: map[string]chan struct{}{}, changed: make(chan struct{}, 1), writeJobs: writeJobsFile}, nil
}

// activeRun is a run that has started and not ended.
type activeRun struct {
	task string // set once its task has started
}

// Run runs the jobs until ctx is cancelled: those missed since their last
// run at once, then each when due. It waits at most a minute between
// looks at the clock, so that a clock set forward is followed, and looks
// again when a job is created or its schedule changed. It returns
// only between Ticks, so once it has returned it starts no more tasks.
func (s *Scheduler) Run(ctx context.Context) {
	for {
		s.Tick()
		t := time.NewTimer(runWait(s.Next(), s.opts.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.changed:
			t.Stop()
		}
	}
}

// runWait is how long Run waits after a Tick at now for the job due next
// (next; zero if there is none): until then, but at most a minute and at
// least a second.
func runWait(next, now time.Time) time.Duration {
	if next.IsZero() {
		return time.Minute
	}
	return max(min(next.Sub(now), time.Minute), time.Second)
}

// Next is when the next job is due; zero before the first Tick.
func (s *Scheduler) Next() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first time.Time
	for _, t := range s.next {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first
}

// Tick starts the runs due now and returns their tasks' IDs. A job due
// several times since its last run (while the appliance was down) runs
// once; a job due while its previous run is still running is skipped, and
// the skip recorded in its history.
func (s *Scheduler) Tick() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	var started []string
	for _, j := range s.jobs {
		due, ok := s.due(j, now)
		if !ok {
			continue
		}
		if s.running[j.Name] != nil {
			s.log.Warn("job skipped: its previous run is still running", "job", j.Name, "due", due)
			s.setLast(j, now)
			s.record(j, Run{Scheduled: due, Started: now, Finished: now, Status: Skipped, Error: "the previous run was still running"})
			continue
		}
		id, err := s.start(j, due, now, false)
		if err != nil {
			r := Run{Scheduled: due, Started: now, Finished: now, Status: string(tasks.Failed), Error: err.Error()}
			s.logEnd(j, r)
			s.setLast(j, now)
			s.record(j, r)
			continue
		}
		started = append(started, id)
	}
	return started
}

// due reports whether j is due at now, and since when; it moves j's next
// time past now. s.mu is held.
func (s *Scheduler) due(j *Job, now time.Time) (time.Time, bool) {
	next, ok := s.next[j.Name]
	if !ok {
		// A run cut short (the appliance stopped or crashed during it, or
		// it was cancelled) is run again at start.
		if r, ok := s.hist.cutShort(j.Name); ok {
			s.setNext(j, now)
			return r.Scheduled, true
		}
		// A job never run counts from now: nothing of it was missed. A
		// last run in the future is a clock that went back: counting
		// from it would hold the job until the clock caught up.
		last := s.hist.last(j.Name)
		if last.IsZero() || last.After(now) {
			last = now
		}
		next = j.schedule.Next(last)
	} else if now.Before(s.nextFrom[j.Name]) {
		// The clock went back since next was computed: next would hold
		// the job until the clock caught up. (A next time later than
		// Next(now) alone is no sign of it: when the clocks go back an
		// hour, 02:30 comes again after a run at the first 02:30.)
		next = j.schedule.Next(now)
	}
	if now.Before(next) {
		s.next[j.Name] = next
		s.nextFrom[j.Name] = now
		return time.Time{}, false
	}
	s.setNext(j, now)
	return next, true
}

// setNext makes j due next after now; s.mu is held.
func (s *Scheduler) setNext(j *Job, now time.Time) {
	s.next[j.Name] = j.schedule.Next(now)
	s.nextFrom[j.Name] = now
}

// start starts a run of j due at due (now for a run asked for by RunNow,
// manual) as a task, and returns the task's ID. s.mu is held.
func (s *Scheduler) start(j *Job, due, now time.Time, manual bool) (string, error) {
	run := &activeRun{}
	s.running[j.Name] = run
	// The run is recorded as running, under its task's ID, once Start
	// returns; it waits for that before recording its end.
	begun := make(chan struct{})
	info, err := s.opts.Tasks.Start(s.opts.TaskContext, "job-"+j.Kind, j.Name, "", func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
		res, err := s.runRecovered(ctx, j, progress, begun, run)
		// A run whose work is done is a success even if its context was
		// cancelled after (a shutdown just after a backup committed):
		// counted cancelled, it would run again at the next start.
		if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			// A step that failed on the cancelled context without
			// saying so (a backend's own error) is a cancellation too.
			err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
		}
		<-begun
		r := Run{Scheduled: due, Started: now, Task: run.task, Manual: manual}
		r.Read, r.New, r.Stored, r.Details = res.read, res.new, res.stored, res.details
		r.Finished, r.Status = s.opts.Now(), string(tasks.Success)
		switch {
		case err != nil && ctx.Err() != nil:
			r.Status, r.Error = string(tasks.Cancelled), err.Error()
		case err != nil:
			r.Status, r.Error = string(tasks.Failed), err.Error()
		}
		s.logEnd(j, r)
		s.end(j.Name, run, r)
		return res.result(), err
	})
	if err != nil {
		delete(s.running, j.Name)
		return "", err
	}
	run.task = info.ID
	if err := s.hist.begin(j.Name, now, Run{Task: info.ID, Scheduled: due, Started: now, Manual: manual}); err != nil {
		s.log.Error("job history", "job", j.Name, "err", err)
	}
	close(begun)
	return info.ID, nil
}

// runRecovered is s.run, with a panic turned into an error so that the
// run's end is recorded (the job is not left running for ever), and
// s.afterRun called once the run has its task's ID.
func (s *Scheduler) runRecovered(ctx context.Context, j *Job, progress pe.Progress, begun <-chan struct{}, run *activeRun) (res outcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("job run panicked", "job", j.Name, "panic", p, "stack", string(debug.Stack()))
			res, err = outcome{}, fmt.Errorf("panic: %v", p)
		}
	}()
	res, err = s.run(ctx, j, progress)
	if s.afterRun != nil {
		<-begun
		s.afterRun(run.task)
	}
	return res, err
}

// logEnd logs the end of a run of j, whatever its status: the log is
// where an appliance's operator sees a nightly job fail.
func (s *Scheduler) logEnd(j *Job, r Run) {
	attrs := []any{"job", j.Name, "kind", j.Kind, "task", r.Task, "manual", r.Manual,
		"took", r.Finished.Sub(r.Started).Round(time.Millisecond)}
	switch r.Status {
	case string(tasks.Success):
		s.log.Info("job run succeeded", append(attrs, "bytesRead", r.Read, "bytesNew", r.New, "bytesStored", r.Stored)...)
	case string(tasks.Cancelled):
		s.log.Warn("job run cancelled", append(attrs, "err", r.Error)...)
	default:
		s.log.Error("job run failed", append(attrs, "err", r.Error)...)
	}
}

// end records the end of run. A run of a job deleted meanwhile is not
// recorded: the job's history went with it.
func (s *Scheduler) end(name string, run *activeRun, r Run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running[name] != run {
		s.log.Info("run of a deleted job ended", "job", name, "task", r.Task, "status", r.Status)
		return
	}
	delete(s.running, name)
	if err := s.hist.end(name, r); err != nil {
		s.log.Error("job history", "job", name, "err", err)
	}
}

func (s *Scheduler) setLast(j *Job, now time.Time) {
	if err := s.hist.setLast(j.Name, now); err != nil {
		s.log.Error("job history", "job", j.Name, "err", err)
	}
}

func (s *Scheduler) record(j *Job, r Run) {
	if err := s.hist.add(j.Name, r); err != nil {
		s.log.Error("job history", "job", j.Name, "err", err)
	}
}

// History returns the runs of the job name kept, oldest first.
func (s *Scheduler) History(name string) []Run { return s.hist.runs(name) }
