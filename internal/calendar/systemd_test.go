package calendar

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// iterations is how many elapses of each expression are compared.
const iterations = 12

// systemdNext asks systemd-analyze for the next elapses of expr after base
// with the process's zone tz; ok is false when it refuses expr. Times are
// to the second: systemd-analyze prints no fractions.
func systemdNext(t *testing.T, tz, expr string, base time.Time) (times []time.Time, ok bool) {
	t.Helper()
	cmd := exec.Command("systemd-analyze", "calendar", fmt.Sprintf("--iterations=%d", iterations), fmt.Sprintf("--base-time=@%d", base.Unix()), "--", expr)
	cmd.Env = append(os.Environ(), "TZ="+tz, "SYSTEMD_COLORS=0", "LC_ALL=C")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if strings.Contains(errb.String(), "Failed to parse calendar specification") {
			return nil, false
		}
		t.Fatalf("systemd-analyze calendar %q: %v: %s", expr, err, errb.String())
	}
	// Each elapse is a line "Next elapse: ..." or "Iter. #n: ...", in the
	// local zone, followed by "(in UTC): ..." unless that is UTC.
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		key, val, _ := strings.Cut(line, ": ")
		switch {
		case key == "Next elapse" && val == "never":
			return times, true
		case key == "Next elapse" || strings.HasPrefix(key, "Iter. #"):
			if strings.HasSuffix(val, " UTC") {
				times = append(times, parseUTC(t, val))
			}
		case key == "(in UTC)":
			times = append(times, parseUTC(t, val))
		}
	}
	return times, true
}

func parseUTC(t *testing.T, s string) time.Time {
	t.Helper()
	ts, err := time.Parse("Mon 2006-01-02 15:04:05 MST", s)
	if err != nil {
		t.Fatalf("systemd-analyze printed %q: %v", s, err)
	}
	return ts.UTC()
}

func requireSystemdAnalyze(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze is missing: install the Debian package systemd (scripts/deps.d/calendar.sh)")
	}
}

// ourNext is the next elapses of e after base, base in zone tz.
func ourNext(t *testing.T, e *Event, tz string, base time.Time) []time.Time {
	t.Helper()
	loc, err := time.LoadLocation(tz)
	if err != nil {
		t.Fatal(err)
	}
	var times []time.Time
	at := base.In(loc)
	for range iterations {
		at = e.Next(at)
		if at.IsZero() {
			break
		}
		times = append(times, at.Truncate(time.Second).UTC())
	}
	return times
}

// TestAgainstSystemd compares Parse and Next with systemd's own
// computation (systemd-analyze calendar) over many expressions, the
// first iterations elapses of each, exactly.
func TestAgainstSystemd(t *testing.T) {
	requireSystemdAnalyze(t)
	newYear := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	exprs := []string{
		// shorthands
		"minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually", "quarterly",
		"semiannually", "semi-annually", "biannually", "DAILY", "Weekly",
		// weekdays
		"Mon", "Sat,Sun 10:00", "Mon..Fri 22:30", "Mon-Wed *-*-* 1:2:3", "Wed..Sat,Tue 12-10-15 1:2:3",
		"Monday,Wednesday 12:00", "sat..sun", "Fri *-*-13", "Mon..Fri *-*-1/7 15:00", "Sun,Mon,Tue,Wed,Thu,Fri,Sat",
		"Mon,", "Fri..Mon", "Mon..", "Mon,,Tue", "Mo 12:00", "Mon..Wed..Fri",
		// dates
		"*-*-01", "*-*-01 03:30", "*-*-7,1 0:0:0", "*-*-1,15 12:00", "2026-*-* 0/2:00", "*-1/2-1/7 13:45",
		"*-*-1..31/10", "*-*-5..20/5 6:00", "*-02-29", "2028-02-29 12:00", "2026-12-25", "12-1-1", "*-02-30",
		"2030..2040/5-1-1", "26-06-15", "99-1-1", "*-*-01,30", "*-*-29..31", "*-*-31",
		"*-13-01", "*-00-01", "*-*-32", "1969-1-1", "2200-1-1", "06-15", "2-29 6:00",
		// end of month
		"*-*~01", "*-02~03", "*-*~1,3,5", "Mon *-05~07/1", "*-*~7..1", "*-*~03/2", "*-*~1..5/2", "*-*~29",
		"*~01", "2026-*~02 10:00",
		// times
		"*:0/15", "*:*:0/10", "*:2/3", "*-*-* *:*:*", "1:2", "1:2:3", "01:02:03.5", "12:00", "00:00:00",
		"*:30", "8..18:00", "8..18/3:15", "0,12:00", "*:0,30:0,30", "*:*:0/0.5", "*:*:1.25/2.5",
		"25:00", "*:60", "12:00:60", "*/5", "12", "12:", ":30", "1:2:3:4", "*:0/0", "*:0/60", "*:59/2",
		// time stamps
		"@1767225600", "@0", "@1798761600",
		// zones
		"12:00 UTC", "mon 00:00 utc", "Mon 12:00 Europe/Berlin", "daily Europe/Berlin", "*-*-* 02:30 Europe/Berlin",
		"hourly America/New_York", "*:0/20 Asia/Kolkata", "*-*~01 21:00 Australia/Sydney", "daily Etc/UTC",
		"daily No/Such_Zone", "UTC", "bogus", "", "  ",
		// spaces around or doubled
		" daily", "daily ", "\tdaily", "daily\n", "daily  Europe/Berlin", " 12:00 UTC", "Mon  12:00", "*-*-*  02:30",
	}
	for _, expr := range exprs {
		checkExpr(t, "UTC", expr, newYear)
	}
	// Daylight saving changes, in a zone named and as the local zone.
	dst := []struct {
		tz    string
		base  time.Time
		exprs []string
	}{
		{"Europe/Berlin", time.Date(2026, 3, 28, 23, 50, 0, 0, time.UTC), nil},
		{"Europe/Berlin", time.Date(2026, 3, 29, 0, 59, 30, 0, time.UTC), nil},
		{"Europe/Berlin", time.Date(2026, 10, 24, 23, 30, 0, 0, time.UTC), nil},
		{"Europe/Berlin", time.Date(2026, 10, 25, 0, 10, 0, 0, time.UTC), nil}, // in the first 02:xx
		{"Europe/Berlin", time.Date(2026, 10, 25, 1, 10, 0, 0, time.UTC), nil}, // in the second
		{"America/New_York", time.Date(2026, 3, 8, 6, 0, 0, 0, time.UTC), nil},
		{"America/New_York", time.Date(2026, 11, 1, 5, 0, 0, 0, time.UTC), nil},
		{"Australia/Lord_Howe", time.Date(2026, 4, 4, 14, 0, 0, 0, time.UTC), nil}, // 30 minutes back
		// In winter time; the next 31st of October (2032) is the night
		// the clocks go back: glibc resolves its 02:30 by the offset of
		// its previous mktime in the search (summer time), not the
		// base's.
		{"Europe/Berlin", time.Date(2031, 10, 31, 1, 30, 1, 0, time.UTC), nil},
		{"Europe/Berlin", time.Date(2031, 11, 5, 12, 0, 0, 0, time.UTC), nil},
	}
	dstExprs := []string{"*-10-31 02:30", "*-10-31,11-01 02:30", "*-*-* 02:30", "*-*-* 02:00", "*-*-* 03:00", "*:0/20", "hourly", "*-*-* 01:59:59",
		"*-*-* 02:*", "*-*-* 02:10,50", "*-*-* 1..3:15", "daily", "*:*:0/30", "Sun *-*-* 2:30:00", "*-*-* 01:30,45"}
	for _, d := range dst {
		for _, expr := range dstExprs {
			checkExpr(t, d.tz, expr, d.base)
			checkExpr(t, "UTC", expr+" "+d.tz, d.base)
		}
	}
}

func checkExpr(t *testing.T, tz, expr string, base time.Time) {
	t.Helper()
	want, ok := systemdNext(t, tz, expr, base)
	e, err := Parse(expr)
	switch {
	case !ok && err == nil:
		t.Errorf("TZ=%s %q: systemd refuses it, Parse accepts it", tz, expr)
		return
	case ok && err != nil:
		t.Errorf("TZ=%s %q: systemd accepts it, Parse says %v", tz, expr, err)
		return
	case !ok:
		return
	}
	got := ourNext(t, e, tz, base)
	if !equalTimes(got, want) {
		t.Errorf("TZ=%s %q after %s:\n got %s\nwant %s", tz, expr, base.Format(time.RFC3339), fmtTimes(got), fmtTimes(want))
	}
}

func equalTimes(a, b []time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func fmtTimes(ts []time.Time) string {
	var s []string
	for _, t := range ts {
		s = append(s, t.Format("2006-01-02T15:04:05"))
	}
	return "[" + strings.Join(s, " ") + "]"
}
