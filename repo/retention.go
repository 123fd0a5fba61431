package repo

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Policy says which snapshots of a PE to keep, as restic's
// forget --keep-* does. A count of 0 keeps none by that rule, -1 all.
type Policy struct {
	Last    int // the newest N snapshots
	Hourly  int // the newest snapshot of each of the newest N hours with one
	Daily   int // ... days
	Weekly  int // ... ISO weeks
	Monthly int // ... months
	Yearly  int // ... years
	Within  Duration
}

// Empty reports whether p has no rule: it would keep everything.
func (p Policy) Empty() bool { return p == Policy{} }

// Valid checks the counts: each at least -1.
func (p Policy) Valid() error {
	for _, c := range p.counts() {
		if c.n < -1 {
			return fmt.Errorf("keep-%s %d: want a count, or -1 for all", c.name, c.n)
		}
	}
	return nil
}

type policyCount struct {
	name   string
	n      int
	bucket func(t time.Time, nr int) int
	reason string
}

// counts are the counted rules in restic's order, which is the order of
// the reasons.
func (p Policy) counts() []policyCount {
	return []policyCount{
		{"last", p.Last, func(_ time.Time, nr int) int { return nr }, "last snapshot"},
		{"hourly", p.Hourly, func(t time.Time, _ int) int { return t.Year()*1000000 + int(t.Month())*10000 + t.Day()*100 + t.Hour() }, "hourly snapshot"},
		{"daily", p.Daily, func(t time.Time, _ int) int { return t.Year()*10000 + int(t.Month())*100 + t.Day() }, "daily snapshot"},
		{"weekly", p.Weekly, func(t time.Time, _ int) int { y, w := t.ISOWeek(); return y*100 + w }, "weekly snapshot"},
		{"monthly", p.Monthly, func(t time.Time, _ int) int { return t.Year()*100 + int(t.Month()) }, "monthly snapshot"},
		{"yearly", p.Yearly, func(t time.Time, _ int) int { return t.Year() }, "yearly snapshot"},
	}
}

// Duration is a calendar span as restic writes it: 1y2m3d4h.
type Duration struct{ Years, Months, Days, Hours int }

// ParseDuration reads a Duration such as "7d", "1y6m" or "2d12h".
func ParseDuration(s string) (Duration, error) {
	var d Duration
	if s == "" {
		return d, errors.New("empty duration")
	}
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i == len(rest) {
			return Duration{}, fmt.Errorf("duration %q: want numbers with units y, m, d, h (e.g. 1y2m3d4h)", s)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil {
			return Duration{}, fmt.Errorf("duration %q: %w", s, err)
		}
		switch rest[i] {
		case 'y':
			d.Years += n
		case 'm':
			d.Months += n
		case 'd':
			d.Days += n
		case 'h':
			d.Hours += n
		default:
			return Duration{}, fmt.Errorf("duration %q: unknown unit %q (want y, m, d or h)", s, rest[i])
		}
		rest = rest[i+1:]
	}
	return d, nil
}

func (d Duration) String() string {
	var b strings.Builder
	for _, u := range []struct {
		n    int
		unit string
	}{{d.Years, "y"}, {d.Months, "m"}, {d.Days, "d"}, {d.Hours, "h"}} {
		if u.n != 0 {
			fmt.Fprintf(&b, "%d%s", u.n, u.unit)
		}
	}
	return b.String()
}

// before is the time d before t.
func (d Duration) before(t time.Time) time.Time {
	return t.AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
}

// Decision is the fate of one snapshot under a policy.
type Decision struct {
	Snapshot Snapshot
	Keep     bool
	Reasons  []string // why it is kept
}

// ApplyPolicy decides, for the snapshots of one PE, which p keeps and
// why, as restic's forget does; newest first. Hours, days, weeks (ISO),
// months and years are those of the location the times carry. Each
// counted rule keeps the newest snapshot of each of its newest N
// buckets, and the oldest snapshot while a count is left (restic 0.16
// on). keep-within counts back from the newest snapshot not after now.
// An empty policy keeps everything.
func ApplyPolicy(p Policy, snaps []Snapshot, now time.Time) []Decision {
	list := make([]Snapshot, len(snaps))
	copy(list, snaps)
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].BackedUp.Equal(list[j].BackedUp) {
			return list[i].BackedUp.After(list[j].BackedUp)
		}
		return list[i].ID.String() > list[j].ID.String()
	})
	out := make([]Decision, len(list))
	if p.Empty() {
		for i, s := range list {
			out[i] = Decision{Snapshot: s, Keep: true, Reasons: []string{"policy is empty"}}
		}
		return out
	}
	var latest time.Time
	for _, s := range list {
		if s.BackedUp.After(latest) && s.BackedUp.Before(now) {
			latest = s.BackedUp
		}
	}
	rules := p.counts()
	last := make([]int, len(rules))
	for i := range last {
		last[i] = -1
	}
	for nr, s := range list {
		d := Decision{Snapshot: s}
		if p.Within != (Duration{}) && s.BackedUp.After(p.Within.before(latest)) {
			d.Reasons = append(d.Reasons, "within "+p.Within.String())
		}
		oldest := nr == len(list)-1
		for i := range rules {
			r := &rules[i]
			if r.n == 0 {
				continue
			}
			val := r.bucket(s.BackedUp, nr)
			if val == last[i] && !oldest {
				continue
			}
			reason := r.reason
			if val == last[i] {
				reason = "oldest " + reason
			}
			d.Reasons = append(d.Reasons, reason)
			last[i] = val
			if r.n > 0 {
				r.n--
			}
		}
		d.Keep = len(d.Reasons) > 0
		out[nr] = d
	}
	return out
}

// PolicyResult is what a policy decided for the snapshots of one PE.
type PolicyResult struct {
	PE        pe.ID // the PE, without snapshot
	Decisions []Decision
}

// ForgetPolicy applies p to the snapshots of each PE (those of pes, or all
// if none given), in local time, and unless dryRun forgets the snapshots
// it does not keep. Their data goes with the next prune.
func (r *Repository) ForgetPolicy(ctx context.Context, p Policy, pes []pe.ID, dryRun bool) ([]PolicyResult, error) {
	if err := p.Valid(); err != nil {
		return nil, err
	}
	snaps, err := r.Snapshots(ctx, pe.ID{})
	if err != nil {
		return nil, err
	}
	want := map[pe.ID]bool{}
	for _, id := range pes {
		want[id.Base()] = true
	}
	groups := map[pe.ID][]Snapshot{}
	for _, s := range snaps {
		base := s.ID.Base()
		if len(want) > 0 && !want[base] {
			continue
		}
		s.BackedUp = s.BackedUp.Local()
		groups[base] = append(groups[base], s)
	}
	out := make([]PolicyResult, 0, len(groups))
	for base, group := range groups {
		out = append(out, PolicyResult{PE: base, Decisions: ApplyPolicy(p, group, r.now())})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PE.String() < out[j].PE.String() })
	if dryRun {
		return out, nil
	}
	for _, g := range out {
		for _, d := range g.Decisions {
			if d.Keep {
				continue
			}
			if err := r.Forget(ctx, d.Snapshot.ID); err != nil && !errors.Is(err, pe.ErrNotFound) {
				return out, err
			}
		}
	}
	return out, nil
}
