package calendar

import (
	"errors"
	"fmt"
	"time"
)

// Schedule is when a job runs: Next is its first time after t.
type Schedule interface {
	Next(t time.Time) time.Time
}

// Never is what a Schedule of ParseSchedule returns once it elapses no
// more (a date that has passed): a time so far ahead that a scheduler
// comparing times never finds it due, which the zero time would be.
var Never = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// Syntax names the schedules ParseSchedule takes, for error messages.
const Syntax = `cron (minute hour day month weekday, e.g. "30 2 * * *", or @daily, @weekly...; CRON_TZ=zone first) ` +
	`or systemd calendar (OnCalendar=, e.g. "daily", "Mon..Fri 02:30", "*-*-01 03:00 Europe/Berlin", "*:0/15")`

// ParseSchedule parses a job's schedule: cron syntax if it is a cron line
// (5 fields or an @descriptor), else a systemd calendar event. A schedule
// that can never elapse (February 30th) is refused.
func ParseSchedule(expr string) (Schedule, error) {
	var s Schedule
	c, cronErr := ParseCron(expr)
	if errors.Is(cronErr, ErrEvery) {
		return nil, cronErr
	}
	if cronErr == nil {
		s = c
	} else {
		e, err := Parse(expr)
		if err != nil {
			return nil, fmt.Errorf("want %s: as cron: %v; as systemd calendar: %w", Syntax, cronErr, err)
		}
		s = e
	}
	if s.Next(time.Unix(0, 0)).IsZero() {
		return nil, errors.New("it never elapses")
	}
	return neverZero{s}, nil
}

// neverZero turns a Schedule's zero time (no next time) into Never.
type neverZero struct{ Schedule }

func (n neverZero) Next(t time.Time) time.Time {
	if next := n.Schedule.Next(t); !next.IsZero() {
		return next
	}
	return Never
}
