package jobs

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Options configure a Scheduler; Jobs, ConfigDir, Manager and Tasks are
// required.
type Options struct {
	Jobs []*Job
	// ConfigDir holds the history file.
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

	mu      sync.Mutex
	next    map[string]time.Time // per job, when it is due next
	running map[string]bool
	// repoLocks holds, per repository location, a token while a run
	// uses it.
	repoLocks map[string]chan struct{}
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
	return &Scheduler{opts: opts, hist: h, log: opts.Logger, next: map[string]time.Time{}, running: map[string]bool{}, repoLocks: map[string]chan struct{}{}}, nil
}

// Run runs the jobs until ctx is cancelled: those missed since their last
// run at once, then each when due. It waits at most a minute between
// looks at the clock, so that a clock set forward is followed. It returns
// only between Ticks, so once it has returned it starts no more tasks.
func (s *Scheduler) Run(ctx context.Context) {
	for {
		s.Tick()
		wait := min(s.Next().Sub(s.opts.Now()), time.Minute)
		t := time.NewTimer(max(wait, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
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
	now := s.opts.Now()
	var started []string
	for _, j := range s.opts.Jobs {
		due, ok := s.due(j, now)
		if !ok {
			continue
		}
		if id, ok := s.start(j, due, now); ok {
			started = append(started, id)
		}
	}
	return started
}

// due reports whether j is due at now, and since when; it moves j's next
// time past now.
func (s *Scheduler) due(j *Job, now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, ok := s.next[j.Name]
	if !ok {
		// A run cut short (the appliance stopped or crashed during it, or
		// it was cancelled) is run again at start.
		if r, ok := s.hist.cutShort(j.Name); ok {
			s.next[j.Name] = j.schedule.Next(now)
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
	} else if soonest := j.schedule.Next(now); next.After(soonest) {
		// The clock went back since next was computed.
		next = soonest
	}
	if now.Before(next) {
		s.next[j.Name] = next
		return time.Time{}, false
	}
	s.next[j.Name] = j.schedule.Next(now)
	return next, true
}

func (s *Scheduler) start(j *Job, due, now time.Time) (string, bool) {
	s.mu.Lock()
	busy := s.running[j.Name]
	s.running[j.Name] = true
	s.mu.Unlock()
	if busy {
		s.log.Warn("job skipped: its previous run is still running", "job", j.Name, "due", due)
		s.setLast(j, now)
		s.record(j, Run{Scheduled: due, Started: now, Finished: now, Status: Skipped, Error: "the previous run was still running"})
		return "", false
	}
	// The run is recorded as running, under its task's ID, once Start
	// returns; it waits for that before recording its end.
	begun := make(chan string, 1)
	info, err := s.opts.Tasks.Start(s.opts.TaskContext, "job-"+j.Kind, j.Name, "", func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
		res, err := s.run(ctx, j, progress)
		r := Run{Scheduled: due, Started: now, Task: <-begun}
		r.Read, r.New, r.Stored, r.Details = res.read, res.new, res.stored, res.details
		r.Finished, r.Status = s.opts.Now(), string(tasks.Success)
		switch {
		case ctx.Err() != nil:
			r.Status, r.Error = string(tasks.Cancelled), context.Cause(ctx).Error()
		case err != nil:
			r.Status, r.Error = string(tasks.Failed), err.Error()
		}
		if herr := s.hist.end(j.Name, r); herr != nil {
			s.log.Error("job history", "job", j.Name, "err", herr)
		}
		s.mu.Lock()
		delete(s.running, j.Name)
		s.mu.Unlock()
		return res.result(), err
	})
	if err != nil {
		s.mu.Lock()
		delete(s.running, j.Name)
		s.mu.Unlock()
		s.setLast(j, now)
		s.record(j, Run{Scheduled: due, Started: now, Finished: now, Status: string(tasks.Failed), Error: err.Error()})
		return "", false
	}
	if err := s.hist.begin(j.Name, now, Run{Task: info.ID, Scheduled: due, Started: now}); err != nil {
		s.log.Error("job history", "job", j.Name, "err", err)
	}
	begun <- info.ID
	return info.ID, true
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
