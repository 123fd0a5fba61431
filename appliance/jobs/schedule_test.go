package jobs

import (
	"strconv"
	"testing"
	"time"
)

// TestCalendarSchedule: a job scheduled in systemd calendar syntax runs
// when systemd would start it: on weekdays at 03:00, not at the weekend.
func TestCalendarSchedule(t *testing.T) {
	f := newFixture(t)
	s := f.scheduler(t, `[{"name": "weekdays", "kind": "verify", "schedule": "Mon..Fri 03:00",
  "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`)
	f.clock.SetAt("2026-11-06 12:00:00") // a Friday
	f.tick(t, s)
	if next := s.Next(); !next.Equal(at("2026-11-09 03:00:00")) {
		t.Fatalf("next run at %v, want Monday 2026-11-09 03:00", next)
	}
	for _, day := range []string{"2026-11-07 03:00:00", "2026-11-08 03:00:00"} {
		f.clock.SetAt(day)
		if got := f.tick(t, s); len(got) != 0 {
			t.Fatalf("ran at the weekend, %s: %v", day, got)
		}
	}
	f.clock.SetAt("2026-11-09 03:00:00")
	if got := f.tick(t, s); len(got) != 1 {
		t.Fatalf("ran %d on Monday 03:00, want 1", len(got))
	}
}

// TestDaylightSavingTransitions: jobs at 02:30 Berlin time, cron and
// calendar, with the clock ticking every minute across both changes of
// 2026, run once a day (the calendar job not on the day 02:30 is
// skipped, as systemd's timers; the cron job right after the change),
// and only once on the day 02:30 is passed twice.
func TestDaylightSavingTransitions(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		schedule string
		want     map[string]int // day in Berlin → runs
	}{
		{"CRON_TZ=Europe/Berlin 30 2 * * *", map[string]int{"03-29": 1, "03-30": 1, "10-25": 1, "10-26": 1}},
		{"*-*-* 02:30 Europe/Berlin", map[string]int{"03-29": 0, "03-30": 1, "10-25": 1, "10-26": 1}},
	} {
		got := map[string]int{}
		for _, start := range []time.Time{time.Date(2026, 3, 28, 22, 0, 0, 0, time.UTC), time.Date(2026, 10, 24, 22, 0, 0, 0, time.UTC)} {
			f := newFixture(t)
			f.clock.Set(start)
			s := f.scheduler(t, `[{"name": "v", "kind": "verify", "schedule": `+strconv.Quote(c.schedule)+`,
  "repository": {"location": %[1]q, "passwordFile": %[2]q}}]`)
			for now := start; now.Before(start.Add(30 * time.Hour)); now = now.Add(time.Minute) {
				f.clock.Set(now)
				for range f.tick(t, s) {
					got[now.In(berlin).Format("01-02")]++
				}
			}
		}
		for day, n := range c.want {
			if got[day] != n {
				t.Errorf("%s: %d run(s) on %s, want %d (all: %v)", c.schedule, got[day], day, n, got)
			}
		}
	}
}

// TestRunWait: Run waits for the next job, at most a minute, at least a
// second; a minute when no job is due at all (it used to wake every
// second).
func TestRunWait(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		next time.Time
		want time.Duration
	}{
		{time.Time{}, time.Minute},
		{now.Add(10 * time.Second), 10 * time.Second},
		{now.Add(time.Hour), time.Minute},
		{now.Add(-time.Hour), time.Second},
	} {
		if got := runWait(c.next, now); got != c.want {
			t.Errorf("next %v: wait %v, want %v", c.next, got, c.want)
		}
	}
}
