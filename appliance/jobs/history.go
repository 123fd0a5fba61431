package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
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

// history is the history file, rewritten whole (by rename) on each change.
type history struct {
	path string
	mu   sync.Mutex
	jobs map[string]*jobHistory
}

func loadHistory(path string) (*history, error) {
	h := &history{path: path, jobs: map[string]*jobHistory{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &h.jobs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
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
	tmp := h.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("job history: %w", err)
	}
	if err := os.Rename(tmp, h.path); err != nil {
		return fmt.Errorf("job history: %w", err)
	}
	return nil
}

func historyPath(dir string) string { return filepath.Join(dir, HistoryFile) }
