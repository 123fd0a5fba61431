package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
)

// HistoryFile is the name of the history file in the configuration
// directory.
const HistoryFile = "jobs-history.json"

// maxRuns bounds the runs kept per job, oldest dropped first.
const maxRuns = 100

// Run statuses beyond those of tasks.
const (
	Skipped = "skipped"
	// Running is recorded when a run starts; a run still running when
	// the history is loaded was cut short (a crash, a stop) and becomes
	// Interrupted.
	Running     = "running"
	Interrupted = "interrupted"
)

// Run is the result of one run of a job.
type Run struct {
	Task      string    `json:"task,omitempty"` // the task that ran it
	Scheduled time.Time `json:"scheduled"`      // when it was due
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Status    string    `json:"status"` // running, success, failed, cancelled, interrupted or skipped
	Read      int64     `json:"bytesRead"`
	New       int64     `json:"bytesNew"`
	Stored    int64     `json:"bytesStored"`
	Details   string    `json:"details,omitempty"`
	Error     string    `json:"error,omitempty"`
	// Manual is set on a run started by RunNow rather than the schedule.
	Manual bool `json:"manual,omitempty"`
}

type jobHistory struct {
	// Last is when the job last became due and was started or skipped:
	// the runs due after it and before a start of the appliance were
	// missed.
	Last time.Time `json:"last"`
	Runs []Run     `json:"runs"`
}

// history is the history file, rewritten whole (atomically, durably) on
// each change.
type history struct {
	path string
	mu   sync.Mutex
	jobs map[string]*jobHistory
}

// loadHistory reads the history file. A damaged one must not stop the
// appliance: it is moved aside to path.corrupt and the history starts
// empty.
func loadHistory(path string, log *slog.Logger) (*history, error) {
	h := &history{path: path, jobs: map[string]*jobHistory{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &h.jobs); err != nil {
		if rerr := os.Rename(path, path+".corrupt"); rerr != nil {
			return nil, fmt.Errorf("%s: %w; moving it aside: %w", path, err, rerr)
		}
		log.Warn("job history damaged: moved aside, starting with an empty history", "file", path+".corrupt", "err", err)
		h.jobs = map[string]*jobHistory{}
		return h, nil
	}
	interrupted := false
	for name, j := range h.jobs {
		if j == nil {
			delete(h.jobs, name)
			continue
		}
		for i := range j.Runs {
			if r := &j.Runs[i]; r.Status == Running {
				r.Status, r.Error = Interrupted, "the appliance stopped during the run"
				interrupted = true
			}
		}
	}
	if interrupted {
		if err := h.save(); err != nil {
			log.Error("job history", "err", err)
		}
	}
	return h, nil
}

func (h *history) job(name string) *jobHistory {
	j := h.jobs[name]
	if j == nil {
		j = &jobHistory{}
		h.jobs[name] = j
	}
	return j
}

func (h *history) last(name string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.jobs[name]; j != nil {
		return j.Last
	}
	return time.Time{}
}

func (h *history) setLast(name string, t time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.job(name).Last = t
	return h.save()
}

// begin records r, a run started at now, as running.
func (h *history) begin(name string, now time.Time, r Run) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.job(name)
	j.Last = now
	r.Status = Running
	h.append(j, r)
	return h.save()
}

// end replaces the running entry of r's task by r.
func (h *history) end(name string, r Run) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.job(name)
	for i := len(j.Runs) - 1; i >= 0; i-- {
		if j.Runs[i].Task == r.Task && j.Runs[i].Status == Running {
			j.Runs[i] = r
			return h.save()
		}
	}
	h.append(j, r)
	return h.save()
}

// cutShort returns the latest run of the job name, not counting skips, if
// it did not end by itself (interrupted or cancelled): it is to be run
// again.
func (h *history) cutShort(name string) (Run, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.jobs[name]
	if j == nil {
		return Run{}, false
	}
	for i := len(j.Runs) - 1; i >= 0; i-- {
		switch r := j.Runs[i]; r.Status {
		case Skipped:
			continue
		case Interrupted, string(tasks.Cancelled):
			return r, true
		default:
			return Run{}, false
		}
	}
	return Run{}, false
}

func (h *history) add(name string, r Run) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.append(h.job(name), r)
	return h.save()
}

func (h *history) append(j *jobHistory, r Run) {
	j.Runs = append(j.Runs, r)
	if len(j.Runs) > maxRuns {
		j.Runs = append([]Run(nil), j.Runs[len(j.Runs)-maxRuns:]...)
	}
}

func (h *history) runs(name string) []Run {
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.jobs[name]; j != nil {
		return append([]Run(nil), j.Runs...)
	}
	return nil
}

// latest returns the latest run of the job name kept.
func (h *history) latest(name string) (Run, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.jobs[name]; j != nil && len(j.Runs) > 0 {
		return j.Runs[len(j.Runs)-1], true
	}
	return Run{}, false
}

// drop forgets the job name.
func (h *history) drop(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.jobs[name]; !ok {
		return nil
	}
	delete(h.jobs, name)
	return h.save()
}

func (h *history) save() error {
	b, err := json.MarshalIndent(h.jobs, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(h.path, 0o600, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		return fmt.Errorf("job history: %w", err)
	}
	return nil
}

func historyPath(dir string) string { return filepath.Join(dir, HistoryFile) }
