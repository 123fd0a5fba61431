package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestLifecycle(t *testing.T) {
	m := NewManager(Options{Logger: quiet()})
	ctx := context.Background()
	nx, err := m.NewNexus()
	if err != nil {
		t.Fatal(err)
	}
	ok, err := m.Start(ctx, "t", "works", nx, func(ctx context.Context, p pe.Progress) (map[string]string, error) {
		p.Start(200)
		p.Add(100)
		return map[string]string{"id": "x"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := m.Start(ctx, "t", "fails", nx, func(ctx context.Context, p pe.Progress) (map[string]string, error) {
		return nil, errors.New("boom")
	})
	if _, err := m.Start(ctx, "t", "", "nexus-nope", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown nexus: %v", err)
	}
	got, err := m.Wait(ctx, ok.ID)
	if err != nil || got.Status != Success || got.Progress != 100 || got.Result["id"] != "x" || got.Finished.IsZero() {
		t.Errorf("ok task: %+v %v", got, err)
	}
	got, _ = m.Wait(ctx, bad.ID)
	if got.Status != Failed || got.Details != "boom" {
		t.Errorf("failed task: %+v", got)
	}
	done, err := m.WaitNexus(ctx, nx, time.Time{}, time.Second)
	if err != nil || len(done) != 2 {
		t.Errorf("nexus: %v %v", done, err)
	}
	last := done[len(done)-1].Finished
	if more, _ := m.WaitNexus(ctx, nx, last, 10*time.Millisecond); len(more) != 0 {
		t.Errorf("nexus after last: %v", more)
	}
}

func TestRetention(t *testing.T) {
	m := NewManager(Options{Logger: quiet(), Retention: 50 * time.Millisecond, MaxFinished: 3})
	ctx := context.Background()
	var ids []string
	for range 5 {
		info, _ := m.Start(ctx, "t", "", "", func(context.Context, pe.Progress) (map[string]string, error) { return nil, nil })
		m.Wait(ctx, info.ID)
		ids = append(ids, info.ID)
	}
	if got := m.List(); len(got) != 3 || got[0] != ids[2] {
		t.Errorf("MaxFinished 3 keeps the newest: %v of %v", got, ids)
	}
	time.Sleep(80 * time.Millisecond)
	if got := m.List(); len(got) != 0 {
		t.Errorf("after retention: %v", got)
	}
	if _, err := m.Get(ids[4]); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired task: %v", err)
	}
}

func TestShutdownCancels(t *testing.T) {
	m := NewManager(Options{Logger: quiet()})
	info, _ := m.Start(context.Background(), "t", "", "", func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(info.ID); got.Status != Cancelled {
		t.Errorf("after shutdown: %+v", got)
	}
}

// A task whose work reports its context's cause, as net/http does,
// rather than context.Canceled ends cancelled too: by Cancel and by
// Shutdown.
func TestCancelCauseCancels(t *testing.T) {
	m := NewManager(Options{Logger: quiet()})
	ctx := context.Background()
	work := func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
		<-ctx.Done()
		return nil, fmt.Errorf("read chunk: %w", context.Cause(ctx))
	}
	cancelled, _ := m.Start(ctx, "t", "", "", work)
	stopped, _ := m.Start(ctx, "t", "", "", work)
	m.Cancel(cancelled.ID)
	if got, _ := m.Wait(ctx, cancelled.ID); got.Status != Cancelled {
		t.Errorf("after Cancel: %+v", got)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := m.Shutdown(sctx, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(stopped.ID); got.Status != Cancelled {
		t.Errorf("after Shutdown: %+v", got)
	}
}

// A flood of nexus is bounded: idle ones expire after the retention, and
// at MaxNexus the least recently used idle one makes room; nexus with
// running tasks are kept and the next one is refused.
func TestNexusBounded(t *testing.T) {
	m := NewManager(Options{Logger: quiet(), Retention: 50 * time.Millisecond, MaxNexus: 10})
	ctx := context.Background()
	var ids []string
	for range 25 {
		id, err := m.NewNexus()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if got := len(m.Nexus()); got != 10 {
		t.Errorf("%d nexus kept, want MaxNexus 10", got)
	}
	if _, err := m.WaitNexus(ctx, ids[0], time.Time{}, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("oldest nexus: %v, want dropped", err)
	}
	time.Sleep(80 * time.Millisecond)
	if got := m.Nexus(); len(got) != 0 {
		t.Errorf("after retention: %v", got)
	}

	release := make(chan struct{})
	defer close(release)
	for range 10 {
		id, _ := m.NewNexus()
		if _, err := m.Start(ctx, "t", "", id, func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
			<-release
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.NewNexus(); !errors.Is(err, ErrTooMany) {
		t.Errorf("nexus past the bound with all busy: %v, want ErrTooMany", err)
	}
	time.Sleep(80 * time.Millisecond)
	if got := len(m.Nexus()); got != 10 {
		t.Errorf("busy nexus expired: %d left", got)
	}
}

// Tasks that finish at the same instant get distinct finish times on the
// FinishGrid, in the order they finished, each exactly a float64; a
// finish time rounded through a float64 snaps back to itself.
func TestFinishTimesDistinctOnGrid(t *testing.T) {
	// 1796458123456789123 ns: an instant a float64 cannot hold exactly.
	frozen := time.Unix(0, 1796458123456789123)
	m := NewManager(Options{Logger: quiet(), Now: func() time.Time { return frozen }})
	ctx := context.Background()
	nx, err := m.NewNexus()
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for range n {
		info, err := m.Start(ctx, "t", "", nx, func(context.Context, pe.Progress) (map[string]string, error) { return nil, nil })
		if err != nil {
			t.Fatal(err)
		}
		m.Wait(ctx, info.ID)
	}
	done, err := m.WaitNexus(ctx, nx, time.Time{}, time.Second)
	if err != nil || len(done) != n {
		t.Fatalf("nexus: %d tasks, %v", len(done), err)
	}
	grid := int64(FinishGrid)
	for i, info := range done {
		ns := info.Finished.UnixNano()
		if ns%grid != 0 || int64(float64(ns)) != ns {
			t.Errorf("finish time %d: not on the %d ns grid or not exact as a float64", ns, grid)
		}
		if i > 0 && ns != done[i-1].Finished.UnixNano()+grid {
			t.Errorf("finish time %d follows %d: want one grid step apart", ns, done[i-1].Finished.UnixNano())
		}
		rel := math.Ldexp(1, -52)
		for _, sent := range []float64{float64(ns), float64(ns) * (1 + rel), float64(ns) * (1 - rel)} {
			if got := SnapToGrid(int64(sent)); got != ns {
				t.Errorf("finish time %d sent back as %.0f: snaps to %d", ns, sent, got)
			}
		}
	}
	if first := done[0].Finished.UnixNano(); first < frozen.UnixNano() || first-frozen.UnixNano() >= grid {
		t.Errorf("first finish time %d: want the frozen clock %d rounded up to the grid", first, frozen.UnixNano())
	}
	for _, ns := range []int64{0, 1, math.MaxInt64} {
		if got := SnapToGrid(ns); got < 0 || got%grid != 0 || got-ns >= grid || ns-got >= grid {
			t.Errorf("SnapToGrid(%d) = %d", ns, got)
		}
	}
}

// TestFinishNotBeforeStart: a task that fails as soon as it starts, on a
// clock between grid points or set back while the task ran, finishes at
// or after its start, on the grid.
func TestFinishNotBeforeStart(t *testing.T) {
	start := time.Unix(0, 1796458123456789123) // 6787 ns past a grid point
	for _, c := range []struct {
		name   string
		finish time.Time
	}{
		{"clock frozen", start},
		{"clock set back", start.Add(-time.Hour)},
		{"clock on the grid", time.Unix(0, 1796458123456790528)},
	} {
		t.Run(c.name, func(t *testing.T) {
			var calls atomic.Int64
			clock := func() time.Time {
				if calls.Add(1) == 1 {
					return start
				}
				return c.finish
			}
			m := NewManager(Options{Logger: quiet(), Now: clock})
			ctx := context.Background()
			info, err := m.Start(ctx, "t", "", "", func(context.Context, pe.Progress) (map[string]string, error) {
				return nil, errors.New("broken at once")
			})
			if err != nil {
				t.Fatal(err)
			}
			if info, err = m.Wait(ctx, info.ID); err != nil || info.Status != Failed {
				t.Fatalf("task: %+v %v, want failed", info, err)
			}
			if !info.Started.Equal(start) {
				t.Errorf("started %d, want the clock %d", info.Started.UnixNano(), start.UnixNano())
			}
			fin := info.Finished.UnixNano()
			if fin < start.UnixNano() || fin%int64(FinishGrid) != 0 || fin-start.UnixNano() >= int64(FinishGrid) {
				t.Errorf("finished %d, started %d: want the first grid point at or after the start", fin, start.UnixNano())
			}
		})
	}
}

// After Shutdown, Start refuses with ErrShutdown and runs nothing.
func TestStartAfterShutdown(t *testing.T) {
	m := NewManager(Options{Logger: quiet()})
	if err := m.Shutdown(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	ran := false
	_, err := m.Start(context.Background(), "t", "", "", func(context.Context, pe.Progress) (map[string]string, error) {
		ran = true
		return nil, nil
	})
	if !errors.Is(err, ErrShutdown) || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("start after shutdown: %v", err)
	}
	if got := m.List(); len(got) != 0 || ran {
		t.Fatalf("a task after shutdown: %v ran %v", got, ran)
	}
}

// TestPanicFailsTask: a task that panics fails with the panic's message,
// its stack is logged, and the manager (the appliance) goes on.
func TestPanicFailsTask(t *testing.T) {
	var logged strings.Builder
	var mu sync.Mutex
	m := NewManager(Options{Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, nil))})
	ctx := context.Background()
	info, err := m.Start(ctx, "t", "panics", "", func(ctx context.Context, p pe.Progress) (map[string]string, error) {
		var ids []string
		_ = ids[3] // index out of range
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Wait(ctx, info.ID)
	if err != nil || got.Status != Failed || !strings.Contains(got.Details, "panic") || !strings.Contains(got.Details, "index out of range") {
		t.Fatalf("panicking task: %+v %v", got, err)
	}
	mu.Lock()
	log := logged.String()
	mu.Unlock()
	if !strings.Contains(log, "TestPanicFailsTask") {
		t.Errorf("the stack is not logged: %s", log)
	}
	after, _ := m.Start(ctx, "t", "after", "", func(ctx context.Context, p pe.Progress) (map[string]string, error) { return nil, nil })
	if got, _ := m.Wait(ctx, after.ID); got.Status != Success {
		t.Errorf("task after a panic: %+v", got)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestStartAs: a task started with a given ID (one that outlives a
// restart) is found under it; the ID cannot be taken twice.
func TestStartAs(t *testing.T) {
	m := NewManager(Options{})
	id := NewID()
	done := make(chan struct{})
	info, err := m.StartAs(context.Background(), id, "restore", "resumed", "", func(ctx context.Context, p pe.Progress) (map[string]string, error) {
		<-done
		return nil, nil
	})
	if err != nil || info.ID != id {
		t.Fatalf("StartAs: %+v %v", info, err)
	}
	if _, err := m.StartAs(context.Background(), id, "restore", "again", "", nil); err == nil {
		t.Error("a second task under the same ID was started")
	}
	if _, err := m.StartAs(context.Background(), "", "restore", "empty", "", nil); err == nil {
		t.Error("a task with an empty ID was started")
	}
	close(done)
	if got, err := m.Wait(context.Background(), id); err != nil || got.Status != Success {
		t.Errorf("wait for %s: %+v %v", id, got, err)
	}
}
