package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progress shows bytes done, percentage and rate on a terminal. It is
// silent when w is not a terminal, so scripts get clean output.
type progress struct {
	mu      sync.Mutex
	w       io.Writer
	total   int64
	done    int64
	start   time.Time
	last    time.Time
	printed bool
}

// newProgress returns a progress for w, or nil when w is not a terminal; a
// nil *progress is a valid, silent pe.Progress.
func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	return &progress{w: w}
}

func (p *progress) Start(total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Nested copies (components) call Start again; keep the outer total.
	if p.start.IsZero() {
		p.total, p.start = total, time.Now()
	}
}

func (p *progress) Add(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if now := time.Now(); now.Sub(p.last) >= 250*time.Millisecond {
		p.last = now
		p.render(now)
	}
}

// Done prints the final state and ends the line.
func (p *progress) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.printed {
		p.render(time.Now())
		fmt.Fprintln(p.w)
		p.printed = false
	}
}

func (p *progress) render(now time.Time) {
	rate := ""
	if secs := now.Sub(p.start).Seconds(); secs > 0 {
		rate = fmt.Sprintf(" %s/s", humanBytes(int64(float64(p.done)/secs)))
	}
	if p.total > 0 {
		fmt.Fprintf(p.w, "\r%s / %s (%.0f%%)%s   ", humanBytes(p.done), humanBytes(p.total),
			100*float64(p.done)/float64(p.total), rate)
	} else {
		fmt.Fprintf(p.w, "\r%s%s   ", humanBytes(p.done), rate)
	}
	p.printed = true
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
