package calendar

import (
	"testing"
	"time"
)

// A schedule comes from jobs.json and the REST API: no input may panic or
// loop, and a schedule taken must always move forward.
func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{
		"daily", "Mon..Fri 02:30", "*-*-01 03:00 Europe/Berlin", "*:0/15", "*-02~1",
		"Sat,Sun *-*-* 12:00:00.5", "2026-*-29 1,2:3/7 UTC", "@1700000000", "quarterly",
		"30 2 * * *", "CRON_TZ=Europe/Berlin 0 3 * * 1-5", "@weekly", "*/5 * * * *",
	} {
		f.Add(s)
	}
	bases := []time.Time{
		time.Date(2026, 3, 29, 0, 59, 59, 0, time.UTC),
		time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC),
		time.Date(2028, 2, 28, 23, 59, 59, 0, time.UTC),
	}
	f.Fuzz(func(t *testing.T, expr string) {
		s, err := ParseSchedule(expr)
		if err != nil {
			return
		}
		for _, base := range bases {
			for t0, i := base, 0; i < 3; i++ {
				next := s.Next(t0)
				if next.Equal(Never) {
					break
				}
				if !next.After(t0) {
					t.Fatalf("%q: Next(%s) = %s, not later", expr, t0, next)
				}
				t0 = next
			}
		}
	})
}
