// Package tasks runs the appliance's long operations (copies, backups,
// restores) in the background, with progress, cancellation, and nexus that
// let clients wait for completions. Finished tasks are kept for a retention
// period so that clients can still read their results.
package tasks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Status of a task.
type Status string

const (
	Running   Status = "running"
	Success   Status = "success"
	Failed    Status = "failed"
	Cancelled Status = "cancelled"
)

// ErrNotFound is returned for unknown task and nexus IDs.
var ErrNotFound = errors.New("not found")

// ErrCancelled is the cause (context.Cause) of a task's context that
// Cancel ended; ErrShutdown of one that Shutdown ended. A task whose work
// can be resumed after a restart tells the two apart. Both are
// context.Canceled to errors.Is.
var ErrCancelled = fmt.Errorf("cancelled by request: %w", context.Canceled)

// ErrTooMany is returned when a new nexus would pass MaxNexus and none
// can be dropped.
var ErrTooMany = errors.New("too many")

// ErrShutdown is returned by Start once Shutdown has been called: the
// appliance is stopping and starts nothing new. It is also the cause of
// the contexts of the tasks Shutdown ends.
var ErrShutdown = fmt.Errorf("the task manager is shutting down: %w", context.Canceled)

// Info is a snapshot of a task's state.
type Info struct {
	ID       string
	Kind     string
	Status   Status
	Details  string
	Progress float64 // 0..100
	Started  time.Time
	Finished time.Time // zero while running
	Result   map[string]string
}

// Done reports whether the task has finished.
func (i Info) Done() bool { return i.Status != Running }

// Func is the work of a task. It must return soon after ctx is cancelled;
// progress reports bytes done out of a total. The result is kept in the
// task on success.
type Func func(ctx context.Context, progress pe.Progress) (map[string]string, error)

// Options configure a Manager; zero values mean the defaults.
type Options struct {
	Logger *slog.Logger
	// Retention is how long finished tasks are kept (default 1 hour).
	Retention time.Duration
	// MaxFinished bounds the finished tasks kept, oldest dropped first
	// (default 10000), so a flood of tasks cannot exhaust memory.
	MaxFinished int
	// MaxNexus bounds the nexus kept (default 1000). A nexus unused
	// (no waits, no running task) for Retention expires; when a new one
	// would pass the bound, the least recently used idle one goes.
	MaxNexus int
	// Now is the clock (default time.Now); tests freeze it to make tasks
	// finish at the same instant.
	Now func() time.Time
}

// FinishGrid is the spacing of finish times. Clients of the nexus long
// poll send the finish time of the last task they saw back in nanoseconds,
// and many hold it as a float64 (JavaScript, any JSON decoder into
// doubles), which keeps 53 bits: a Unix time in nanoseconds is rounded by
// up to 512 ns, and one rounded twice (printed, parsed, computed with) by
// 2^-52 relative is off by at most 2048 ns below 2^63. Finish times are
// multiples of 2^13 ns, which a float64 holds exactly, and no two tasks
// share one, so a value off by less than half the grid still names
// exactly one finish time (see SnapToGrid).
const FinishGrid = 8192 * time.Nanosecond

// Manager runs tasks.
type Manager struct {
	opts Options
	log  *slog.Logger
	wg   sync.WaitGroup

	mu      sync.Mutex
	tasks   map[string]*task
	order   []string // task IDs, oldest first
	nexus   map[string]*nexus
	changed chan struct{} // closed and replaced when a task finishes
	// lastFinish is the latest finish time given; the next is later.
	lastFinish time.Time
	// closed is set by Shutdown; from then on Start refuses, so that
	// wg.Add never races wg.Wait.
	closed bool
}

type task struct {
	info   Info
	cancel context.CancelCauseFunc
	total  int64
	done   int64
}

type nexus struct {
	id    string
	tasks []string
	used  time.Time // created, last waited on, or last given a task
}

// NewManager returns a Manager.
func NewManager(opts Options) *Manager {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Retention <= 0 {
		opts.Retention = time.Hour
	}
	if opts.MaxFinished <= 0 {
		opts.MaxFinished = 10000
	}
	if opts.MaxNexus <= 0 {
		opts.MaxNexus = 1000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Manager{
		opts: opts, log: opts.Logger,
		tasks: map[string]*task{}, nexus: map[string]*nexus{},
		changed: make(chan struct{}),
	}
}

// NewID returns a new task ID, for StartAs.
func NewID() string { return newID("task-") }

func newID(prefix string) string {
	var b [8]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Start runs fn as a new task of the given kind. The task's context is
// derived from ctx (the appliance's lifetime, not a request's). With a
// nexus ID the task is associated with that nexus, which must exist.
func (m *Manager) Start(ctx context.Context, kind, details, nexusID string, fn Func) (Info, error) {
	return m.StartAs(ctx, NewID(), kind, details, nexusID, fn)
}

// StartAs is Start with the task's ID given (from NewID): a task that
// goes on after a restart of the appliance keeps the ID its clients
// know. An ID in use is refused.
func (m *Manager) StartAs(ctx context.Context, id, kind, details, nexusID string, fn Func) (Info, error) {
	m.mu.Lock()
	if _, dup := m.tasks[id]; dup || id == "" {
		m.mu.Unlock()
		return Info{}, fmt.Errorf("start %s task: task ID %q in use or empty", kind, id)
	}
	if m.closed {
		m.mu.Unlock()
		return Info{}, fmt.Errorf("start %s task: %w", kind, ErrShutdown)
	}
	var nx *nexus
	if nexusID != "" {
		if nx = m.nexus[nexusID]; nx == nil {
			m.mu.Unlock()
			return Info{}, fmt.Errorf("task nexus %q: %w", nexusID, ErrNotFound)
		}
	}
	tctx, cancel := context.WithCancelCause(ctx)
	t := &task{
		info:   Info{ID: id, Kind: kind, Status: Running, Details: details, Started: m.opts.Now()},
		cancel: cancel,
	}
	m.tasks[t.info.ID] = t
	m.order = append(m.order, t.info.ID)
	if nx != nil {
		nx.tasks = append(nx.tasks, t.info.ID)
		nx.used = m.opts.Now()
	}
	info := t.info
	m.wg.Add(1)
	m.mu.Unlock()

	m.log.Info("task started", "task", info.ID, "kind", kind, "details", details)
	go func() {
		defer m.wg.Done()
		defer cancel(nil)
		result, err := m.run(tctx, info.ID, fn, &taskProgress{m: m, t: t})
		m.finish(t, tctx, result, err)
	}()
	return info, nil
}

// run calls fn; a panic of it fails the task instead of the appliance,
// its stack logged.
func (m *Manager) run(ctx context.Context, id string, fn Func, progress pe.Progress) (result map[string]string, err error) {
	defer func() {
		if p := recover(); p != nil {
			m.log.Error("task panicked", "task", id, "panic", p, "stack", string(debug.Stack()))
			result, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return fn(ctx, progress)
}

func (m *Manager) finish(t *task, ctx context.Context, result map[string]string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t.info.Finished = m.nextFinish(t.info.Started, m.opts.Now())
	switch {
	case err == nil:
		t.info.Status, t.info.Progress, t.info.Result = Success, 100, result
	// Work that reports the context's cause (net/http does) was
	// cancelled as much as work that reports context.Canceled.
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.Cause(ctx))):
		t.info.Status, t.info.Details = Cancelled, "cancelled: "+t.info.Details
	default:
		t.info.Status, t.info.Details = Failed, err.Error()
	}
	m.log.Info("task finished", "task", t.info.ID, "status", t.info.Status, "details", t.info.Details)
	close(m.changed)
	m.changed = make(chan struct{})
	m.prune(m.opts.Now())
}

// nextFinish returns the finish time of a task that started at started
// and finishes at now: the later of the two rounded up to the FinishGrid,
// so that it never comes before the start (the wall clock may have been
// set back in between), or the grid point after the last finish time
// given if that is not earlier (tasks finishing within one grid step);
// m.mu held.
func (m *Manager) nextFinish(started, now time.Time) time.Time {
	f := ceilToGrid(max(started.UnixNano(), now.UnixNano()))
	if !f.After(m.lastFinish) {
		f = m.lastFinish.Add(FinishGrid)
	}
	m.lastFinish = f
	return f
}

// ceilToGrid returns the first FinishGrid point at or after ns.
func ceilToGrid(ns int64) time.Time {
	const grid = int64(FinishGrid)
	if r := ns % grid; r > 0 && ns <= math.MaxInt64-grid {
		ns += grid - r
	} else if r < 0 {
		ns -= r
	}
	return time.Unix(0, ns)
}

// SnapToGrid returns the FinishGrid point nearest ns, a finish time in
// nanoseconds since the epoch that a client may have rounded through a
// float64: the finish time it stands for. ns must not be negative.
func SnapToGrid(ns int64) int64 {
	const grid = int64(FinishGrid)
	low := ns - ns%grid
	if ns%grid >= grid/2 && low <= math.MaxInt64-grid {
		return low + grid
	}
	return low
}

// prune drops finished tasks past retention or beyond MaxFinished; m.mu held.
func (m *Manager) prune(now time.Time) {
	finished := 0
	for _, id := range m.order {
		if m.tasks[id].info.Done() {
			finished++
		}
	}
	keep := m.order[:0]
	for _, id := range m.order {
		t := m.tasks[id]
		if t.info.Done() && (now.Sub(t.info.Finished) > m.opts.Retention || finished > m.opts.MaxFinished) {
			finished--
			delete(m.tasks, id)
			continue
		}
		keep = append(keep, id)
	}
	m.order = keep
	for id, nx := range m.nexus {
		live := nx.tasks[:0]
		for _, id := range nx.tasks {
			if m.tasks[id] != nil {
				live = append(live, id)
			}
		}
		nx.tasks = live
		if m.idle(nx) && now.Sub(nx.used) > m.opts.Retention {
			delete(m.nexus, id)
		}
	}
}

// idle reports whether no task of nx runs; m.mu held.
func (m *Manager) idle(nx *nexus) bool {
	for _, id := range nx.tasks {
		if !m.tasks[id].info.Done() {
			return false
		}
	}
	return true
}

// Get returns a task's state.
func (m *Manager) Get(id string) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(m.opts.Now())
	t := m.tasks[id]
	if t == nil {
		return Info{}, fmt.Errorf("task %q: %w", id, ErrNotFound)
	}
	return t.info, nil
}

// List returns the IDs of the tasks kept, oldest first.
func (m *Manager) List() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(m.opts.Now())
	return append([]string(nil), m.order...)
}

// Cancel asks a running task to stop and returns its state; cancelling a
// finished task changes nothing.
func (m *Manager) Cancel(id string) (Info, error) {
	m.mu.Lock()
	t := m.tasks[id]
	m.mu.Unlock()
	if t == nil {
		return Info{}, fmt.Errorf("task %q: %w", id, ErrNotFound)
	}
	t.cancel(ErrCancelled)
	return m.Get(id)
}

// Wait blocks until the task finishes or ctx is done.
func (m *Manager) Wait(ctx context.Context, id string) (Info, error) {
	for {
		m.mu.Lock()
		t, ch := m.tasks[id], m.changed
		m.mu.Unlock()
		if t == nil {
			return Info{}, fmt.Errorf("task %q: %w", id, ErrNotFound)
		}
		if info, _ := m.Get(id); info.Done() {
			return info, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Info{}, ctx.Err()
		}
	}
}

// Shutdown refuses new tasks, cancels running tasks after grace and waits
// for all to end, at most until ctx is done.
func (m *Manager) Shutdown(ctx context.Context, grace time.Duration) error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	case <-ctx.Done():
	}
	m.mu.Lock()
	for _, t := range m.tasks {
		t.cancel(ErrShutdown)
	}
	m.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("tasks still running at shutdown: %w", ctx.Err())
	}
}

// NexusInfo is a nexus and its tasks.
type NexusInfo struct {
	ID    string
	Tasks []string
}

// NewNexus creates a nexus. At MaxNexus it drops the least recently used
// idle nexus, or fails with ErrTooMany if all have running tasks.
func (m *Manager) NewNexus() (string, error) {
	id := newID("nexus-")
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(now)
	if len(m.nexus) >= m.opts.MaxNexus {
		var lru *nexus
		for _, nx := range m.nexus {
			if m.idle(nx) && (lru == nil || nx.used.Before(lru.used)) {
				lru = nx
			}
		}
		if lru == nil {
			return "", fmt.Errorf("task nexus: %d kept, all with running tasks: %w", len(m.nexus), ErrTooMany)
		}
		delete(m.nexus, lru.id)
	}
	m.nexus[id] = &nexus{id: id, used: now}
	return id, nil
}

// Nexus lists the nexus, sorted by ID.
func (m *Manager) Nexus() []NexusInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(m.opts.Now())
	out := make([]NexusInfo, 0, len(m.nexus))
	for _, nx := range m.nexus {
		out = append(out, NexusInfo{ID: nx.id, Tasks: append([]string(nil), nx.tasks...)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// WaitNexus returns the tasks of the nexus that finished after
// lastFinished, waiting up to wait for one to finish if none has.
func (m *Manager) WaitNexus(ctx context.Context, id string, lastFinished time.Time, wait time.Duration) ([]Info, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		m.mu.Lock()
		nx := m.nexus[id]
		if nx == nil {
			m.mu.Unlock()
			return nil, fmt.Errorf("task nexus %q: %w", id, ErrNotFound)
		}
		nx.used = m.opts.Now()
		var out []Info
		for _, tid := range nx.tasks {
			if t := m.tasks[tid]; t != nil && t.info.Done() && t.info.Finished.After(lastFinished) {
				out = append(out, t.info)
			}
		}
		ch := m.changed
		m.mu.Unlock()
		if len(out) > 0 {
			sort.Slice(out, func(i, j int) bool { return out[i].Finished.Before(out[j].Finished) })
			return out, nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// taskProgress is the pe.Progress of a task: it turns bytes into percent.
type taskProgress struct {
	m *Manager
	t *task
}

func (p *taskProgress) Start(total int64) {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	p.t.total, p.t.done = total, 0
	p.t.info.Progress = 0
}

func (p *taskProgress) Add(n int64) {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	p.t.done += n
	if p.t.total > 0 && p.t.info.Status == Running {
		p.t.info.Progress = min(99.9, 100*float64(p.t.done)/float64(p.t.total))
	}
}

// Counts returns how many tasks are kept in each status.
func (m *Manager) Counts() map[Status]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[Status]int{Running: 0, Success: 0, Failed: 0, Cancelled: 0}
	for _, t := range m.tasks {
		out[t.info.Status]++
	}
	return out
}
