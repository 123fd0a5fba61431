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

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
)

// HistoryFile is the name of the history file in the configuration
// directory.
const HistoryFile = "jobs-history.json"

// maxRuns bounds the runs kept per job, oldest dropped first.
const maxRuns = 100

// Run statuses beyond those of tasks.
const Skipped = "skipped"

// Run is the result of one run of a job.
type Run struct {
	Task      string    `json:"task,omitempty"` // the task that ran it
	Scheduled time.Time `json:"scheduled"`      // when it was due
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Status    string    `json:"status"` // success, failed, cancelled or skipped
	Read      int64     `json:"bytesRead"`
	New       int64     `json:"bytesNew"`
	Stored    int64     `json:"bytesStored"`
	Details   string    `json:"details,omitempty"`
	Error     string    `json:"error,omitempty"`
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
	for name, j := range h.jobs {
		if j == nil {
			delete(h.jobs, name)
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

func (h *history) add(name string, r Run) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	j := h.job(name)
	j.Runs = append(j.Runs, r)
	if len(j.Runs) > maxRuns {
		j.Runs = append([]Run(nil), j.Runs[len(j.Runs)-maxRuns:]...)
	}
	return h.save()
}

func (h *history) runs(name string) []Run {
	h.mu.Lock()
	defer h.mu.Unlock()
	if j := h.jobs[name]; j != nil {
		return append([]Run(nil), j.Runs...)
	}
	return nil
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
