package calendar

import (
	"strings"
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

// runs lists the times s elapses after from, up to to.
func runs(s Schedule, from, to time.Time) []string {
	var out []string
	for t := s.Next(from); t.Before(to) && len(out) < 100; t = s.Next(t) {
		out = append(out, t.UTC().Format("01-02 15:04"))
	}
	return out
}

// TestDaylightSaving runs a nightly schedule and a frequent one through
// Europe/Berlin's changes of 2026 (29 March 02:00 CET → 03:00 CEST, 25
// October 03:00 CEST → 02:00 CET), given in UTC.
func TestDaylightSaving(t *testing.T) {
	spring, fall := utc("2026-03-27 12:00"), utc("2026-10-23 12:00")
	for _, c := range []struct {
		expr     string
		from     time.Time
		hours    int
		want     string
		scenario string
	}{
		// systemd: a time skipped does not happen that day; a time passed
		// twice happens once, the first time.
		{"*-*-* 02:30 Europe/Berlin", spring, 72, "03-28 01:30 03-30 00:30", "calendar: 02:30 does not exist on 29 March"},
		{"*-*-* 02:30 Europe/Berlin", fall, 72, "10-24 00:30 10-25 00:30 10-26 01:30", "calendar: 02:30 once on 25 October, in summer time"},
		{"*:0/30 Europe/Berlin", utc("2026-10-24 23:45"), 4, "10-25 00:00 10-25 00:30 10-25 02:00 10-25 02:30 10-25 03:00 10-25 03:30", "calendar: the repeated hour once"},
		{"*:0/30 Europe/Berlin", utc("2026-03-29 00:15"), 2, "03-29 00:30 03-29 01:00 03-29 01:30 03-29 02:00", "calendar: the clock as it is"},
		// cron: a fixed time skipped runs at the change; passed twice, once.
		{"CRON_TZ=Europe/Berlin 30 2 * * *", spring, 72, "03-28 01:30 03-29 01:00 03-30 00:30", "cron: 02:30 runs at 03:00 on 29 March"},
		{"CRON_TZ=Europe/Berlin 30 2 * * *", fall, 72, "10-24 00:30 10-25 00:30 10-26 01:30", "cron: 02:30 once on 25 October"},
		{"CRON_TZ=Europe/Berlin 15,45 2 * * *", spring, 48, "03-28 01:15 03-28 01:45 03-29 01:00", "cron: two skipped times run once at the change"},
		{"CRON_TZ=Europe/Berlin 0 3 * * *", spring, 48, "03-28 02:00 03-29 01:00", "cron: 03:00 exists"},
		{"CRON_TZ=Europe/Berlin @daily", fall, 72, "10-23 22:00 10-24 22:00 10-25 23:00", "cron: @daily is a fixed time"},
		// cron: with '*' in minute or hour, the clock as it is.
		{"CRON_TZ=Europe/Berlin */30 * * * *", utc("2026-10-24 23:45"), 4, "10-25 00:00 10-25 00:30 10-25 01:00 10-25 01:30 10-25 02:00 10-25 02:30 10-25 03:00 10-25 03:30", "cron: wildcard runs in both passes"},
		{"CRON_TZ=Europe/Berlin 30 * * * *", utc("2026-03-28 23:45"), 4, "03-29 00:30 03-29 01:30 03-29 02:30 03-29 03:30", "cron: hourly wildcard, 02:30 skipped"},
	} {
		s, err := ParseSchedule(c.expr)
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		got := strings.Join(runs(s, c.from, c.from.Add(time.Duration(c.hours)*time.Hour)), " ")
		if got != c.want {
			t.Errorf("%s (%s):\n got %s\nwant %s", c.expr, c.scenario, got, c.want)
		}
	}
}

// TestCronDSTEveryDayOnce checks Cron's rule over a year of daily and
// hourly fixed times in a zone that changes: every day has each fixed time
// exactly once, and no run is earlier than the one before.
func TestCronDSTEveryDayOnce(t *testing.T) {
	for _, expr := range []string{"CRON_TZ=Europe/Berlin 30 2 * * *", "CRON_TZ=America/New_York 0 2 * * *", "CRON_TZ=Europe/Berlin 59 1,2 * * *"} {
		s, err := ParseSchedule(expr)
		if err != nil {
			t.Fatal(err)
		}
		perDay := map[string]int{}
		prev := utc("2026-01-01 00:00")
		for range 800 {
			n := s.Next(prev)
			if !n.After(prev) {
				t.Fatalf("%s: %s after %s", expr, n, prev)
			}
			if n.Year() > 2026 {
				break
			}
			perDay[n.In(s.(neverZero).Schedule.(*Cron).spec.Location).Format("01-02")]++
			prev = n
		}
		want := 1
		if strings.Contains(expr, "1,2") {
			want = 2
		}
		if len(perDay) != 365 {
			t.Errorf("%s: runs on %d days of 2026, want 365", expr, len(perDay))
		}
		for day, n := range perDay {
			// On the spring day, 01:59 and the skipped 02:59 are two runs,
			// at 01:59 and at 03:00.
			if n != want {
				t.Errorf("%s: %d runs on %s, want %d", expr, n, day, want)
			}
		}
	}
}

func TestParseSchedule(t *testing.T) {
	for _, ok := range []string{"30 2 * * *", "@daily", "CRON_TZ=UTC 0 * * * *", "daily", "Mon..Fri 02:30", "*-*-01 03:00 Europe/Berlin", "*:0/15", "Sat,Sun 10:00 UTC", "*-*~01", "2020-01-01"} {
		if _, err := ParseSchedule(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "never", "61 * * * *", "* * * *", "Mon..Fri 25:00", "*-02-30", "0 0 30 2 *", "daily Mars/Olympus"} {
		_, err := ParseSchedule(bad)
		if err == nil {
			t.Errorf("%q: accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), "never elapses") && (!strings.Contains(err.Error(), "cron") || !strings.Contains(err.Error(), "systemd calendar")) {
			t.Errorf("%q: error %q names neither syntax", bad, err)
		}
	}
	// A date that has passed is due never, not at once.
	s, err := ParseSchedule("2020-01-01 00:00 UTC")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Next(utc("2026-01-01 00:00")); !got.Equal(Never) {
		t.Errorf("a passed date: next %s, want Never", got)
	}
}
