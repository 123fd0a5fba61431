package calendar

import (
	"errors"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Cron is a cron line (5 fields, or a descriptor such as @daily; CRON_TZ=
// names its zone) that keeps cron's own rules where the clocks change,
// which robfig/cron does not: a job at a fixed time (neither minute nor
// hour is '*'...) that falls in the hour skipped when the clocks go
// forward runs right after the change instead of not at all that day, and
// one in the hour passed twice when they go back runs once, not twice.
// Jobs with '*' in the minute or hour follow the clock as it is (Vixie
// cron and cronie do the same).
type Cron struct {
	spec  *cron.SpecSchedule
	fixed bool
}

// ErrEvery refuses robfig/cron's @every: an interval counted from when
// the scheduler started rather than a time of the clock, and one as short
// as a second would flood a job's history.
var ErrEvery = errors.New("@every is not supported: use a cron line or a calendar event (*:0/15 is every 15 minutes)")

// ParseCron parses a cron line.
func ParseCron(expr string) (cron.Schedule, error) {
	s, err := parseCronLine(expr)
	if err != nil {
		return nil, err
	}
	spec, ok := s.(*cron.SpecSchedule)
	if !ok {
		return nil, ErrEvery
	}
	return &Cron{spec: spec, fixed: fixedTime(expr)}, nil
}

// fixedTime tells a cron line whose minute and hour fields are both
// without '*' (cron's MIN_STAR and HR_STAR).
func fixedTime(expr string) bool {
	f := strings.Fields(expr)
	if len(f) > 0 && (strings.HasPrefix(f[0], "CRON_TZ=") || strings.HasPrefix(f[0], "TZ=")) {
		f = f[1:]
	}
	if len(f) == 0 {
		return false
	}
	if strings.HasPrefix(f[0], "@") {
		return f[0] != "@hourly"
	}
	return len(f) >= 2 && !strings.HasPrefix(f[0], "*") && !strings.HasPrefix(f[1], "*")
}

// Next is when c runs first after t, in t's location; zero if never (in
// the next five years, as robfig/cron looks).
func (c *Cron) Next(t time.Time) time.Time {
	n := c.spec.Next(t)
	if !c.fixed {
		return n
	}
	loc := c.spec.Location
	if loc == time.Local {
		loc = t.Location()
	}
	// A run in the second pass of a repeated hour was due in the first.
	for range 2 {
		end, ok := secondPass(n.In(loc))
		if n.IsZero() || !ok {
			break
		}
		n = c.spec.Next(end.Add(-time.Second))
	}
	if at, ok := c.skipped(t, n, loc); ok {
		return at.In(t.Location())
	}
	return n
}

// secondPass reports whether t is in a wall-clock hour passed for the
// second time (the clocks went back), and when that pass ends.
func secondPass(t time.Time) (time.Time, bool) {
	start, _ := t.ZoneBounds()
	if start.IsZero() {
		return time.Time{}, false
	}
	back := time.Duration(offset(start.Add(-time.Second))-offset(t)) * time.Second
	end := start.Add(back)
	return end, back > 0 && t.Before(end)
}

// maxTransitions bounds the zone changes looked at between two runs.
const maxTransitions = 16

// skipped finds the first change between t and n where the clocks go
// forward over a time c runs at: c runs at that change.
func (c *Cron) skipped(t, n time.Time, loc *time.Location) (time.Time, bool) {
	cur := t.In(loc)
	for range maxTransitions {
		_, change := cur.ZoneBounds()
		if change.IsZero() || (!n.IsZero() && !change.Before(n)) {
			return time.Time{}, false
		}
		before, after := offset(change.Add(-time.Second).In(loc)), offset(change.In(loc))
		if after > before {
			// The wall times skipped: from the change read at the old
			// offset, for the length of the jump.
			from := change.Add(time.Duration(before) * time.Second).UTC()
			for m := time.Duration(0); m < time.Duration(after-before)*time.Second; m += time.Minute {
				if c.matches(from.Add(m)) {
					return change, true
				}
			}
		}
		cur = change.In(loc)
	}
	return time.Time{}, false
}

// matches tells whether c runs at the wall time w (given in UTC).
func (c *Cron) matches(w time.Time) bool {
	s := c.spec
	bit := func(set uint64, v int) bool { return set&(1<<uint(v)) != 0 }
	if !bit(s.Second, w.Second()) || !bit(s.Minute, w.Minute()) || !bit(s.Hour, w.Hour()) || !bit(s.Month, int(w.Month())) {
		return false
	}
	// robfig/cron's rule (and cron's): with '*' in either day field both
	// must match, else either.
	const star = 1 << 63
	dom, dow := bit(s.Dom, w.Day()), bit(s.Dow, int(w.Weekday()))
	if s.Dom&star != 0 || s.Dow&star != 0 {
		return dom && dow
	}
	return dom || dow
}
