package jobs

import "testing"

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
