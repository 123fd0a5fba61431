package calendar

import "time"

// maxIterations bounds the search as systemd does: an event it cannot
// resolve within that many steps never elapses.
const maxIterations = 1000

// wall is a wall-clock time in a zone, fields as struct tm's but with
// real years and months 1..12; usec are the microseconds of the second.
type wall struct {
	year, month, day, hour, min, sec, usec int
}

// zone is where an event is computed: its location, and the UTC offset to
// prefer for a wall time that happens twice (when the clocks go back):
// as glibc's mktime with tm_isdst -1, the offset of the previous call
// (normalize), which starts as the base time's.
type zone struct {
	loc    *time.Location
	prefer int
}

// normalize is mktime: it carries overflowing fields over (Feb 30 is Mar 2)
// and moves a wall time the clocks skip forward by the jump (02:30 on the
// night clocks go from 02:00 to 03:00 is 03:30), as glibc does.
func (z *zone) normalize(w wall) wall {
	naive := time.Date(w.year, time.Month(w.month), w.day, w.hour, w.min, w.sec, 0, time.UTC)
	n := wallOf(naive, w.usec)
	t := time.Date(n.year, time.Month(n.month), n.day, n.hour, n.min, n.sec, 0, z.loc)
	if sameWall(t, n) {
		// glibc keeps the offset it found for its next guess.
		z.prefer = offset(z.instant(n))
		return n
	}
	// In a gap: read w at the offset before it, the smaller of those
	// around it, which lands past the gap; glibc keeps that offset.
	before := min(offset(naive.Add(-24*time.Hour).In(z.loc)), offset(naive.Add(24*time.Hour).In(z.loc)))
	z.prefer = before
	return wallOf(naive.Add(-time.Duration(before)*time.Second).In(z.loc), w.usec)
}

func wallOf(t time.Time, usec int) wall {
	return wall{t.Year(), int(t.Month()), t.Day(), t.Hour(), t.Minute(), t.Second(), usec}
}

// instant is the time of w, which must exist. A wall time that happens
// twice is taken at the preferred offset when it has it, as glibc's
// mktime does with tm_isdst -1.
func (z *zone) instant(w wall) time.Time {
	naive := time.Date(w.year, time.Month(w.month), w.day, w.hour, w.min, w.sec, w.usec*1000, time.UTC)
	if t := naive.Add(-time.Duration(z.prefer) * time.Second).In(z.loc); offset(t) == z.prefer && sameWall(t, w) {
		return t
	}
	return time.Date(w.year, time.Month(w.month), w.day, w.hour, w.min, w.sec, w.usec*1000, z.loc)
}

func offset(t time.Time) int {
	_, off := t.Zone()
	return off
}

func sameWall(t time.Time, w wall) bool {
	return t.Year() == w.year && int(t.Month()) == w.month && t.Day() == w.day &&
		t.Hour() == w.hour && t.Minute() == w.min && t.Second() == w.sec
}

// Next is when e elapses first after t, in t's location; the zero time if
// it never does again. It follows systemd: the search runs on the wall
// clock of e's zone (t's zone if e names none), so a time the clocks skip
// when they go forward does not happen that day (02:30 on the night of
// 02:00 → 03:00), and a time they pass twice when they go back happens
// once, the first time (unless t is already in the second pass).
func (e *Event) Next(t time.Time) time.Time {
	loc := e.loc
	switch {
	case e.utc:
		loc = time.UTC
	case loc == nil:
		loc = t.Location()
	}
	// systemd counts in microseconds since 1970, from the one after t.
	usec := max(t.UnixMicro(), -1) + 1
	base := time.UnixMicro(usec).In(loc)
	z := &zone{loc: loc, prefer: offset(base)}
	c := wall{base.Year(), int(base.Month()), base.Day(), base.Hour(), base.Minute(), base.Second(), int(usec % usecPerSec)}
	w, ok := e.find(z, c)
	if !ok {
		return time.Time{}
	}
	return z.instant(w).In(t.Location())
}

// find is systemd's find_next: it moves c, field by field from the year
// down, to the first wall time the event matches.
func (e *Event) find(z *zone, c wall) (wall, bool) {
	for range maxIterations {
		c = z.normalize(c)
		if d := e.year.match(c.year, nil); d < 0 {
			return c, false
		} else if d != c.year {
			c = wall{year: d, month: 1, day: 1}
		}
		if z.withinBounds(&c) <= 0 {
			return c, false
		}
		if !z.advance(&c, c.month, e.month.match(c.month, nil), func(c *wall, d int) { *c = wall{year: c.year, month: d, day: 1} }, func(c *wall) { *c = wall{year: c.year + 1, month: 1, day: 1} }) {
			continue
		}
		var eom *wall
		if e.endOfMonth {
			eom = &c
		}
		if !z.advance(&c, c.day, e.day.match(c.day, eom), func(c *wall, d int) { *c = wall{year: c.year, month: c.month, day: d} }, nextDay(0)) {
			continue
		}
		if !e.weekdayMatches(c) {
			nextDay(1)(&c)
			continue
		}
		if !z.advance(&c, c.hour, e.hour.match(c.hour, nil), func(c *wall, d int) { *c = wall{year: c.year, month: c.month, day: c.day, hour: d} }, nextDay(1)) {
			continue
		}
		if !z.advance(&c, c.min, e.minute.match(c.min, nil), func(c *wall, d int) { c.min, c.sec, c.usec = d, 0, 0 }, func(c *wall) { *c = wall{year: c.year, month: c.month, day: c.day, hour: c.hour + 1} }) {
			continue
		}
		us := c.sec*usecPerSec + c.usec
		if !z.advance(&c, us, e.usec.match(us, nil), func(c *wall, d int) { c.sec, c.usec = d/usecPerSec, d%usecPerSec }, func(c *wall) { c.min, c.sec, c.usec = c.min+1, 0, 0 }) {
			continue
		}
		return c, true
	}
	return c, false
}

// nextDay returns a carry to the start of the day after c's, or (with 0)
// to the start of the month after c's.
func nextDay(days int) func(*wall) {
	return func(c *wall) {
		if days == 0 {
			*c = wall{year: c.year, month: c.month + 1, day: 1}
			return
		}
		*c = wall{year: c.year, month: c.month, day: c.day + days}
	}
}

// advance applies a field's match d (-1: none) to c: set puts d in the
// field and resets those below it; it is called when d differs from
// cur, the field's value. With no match, or a
// wall time that normalizes backwards, carry moves c to the start of the
// next value of the field above; a wall time that normalizes forwards (it
// does not exist) is replaced by the normalized one. It reports whether c
// matches down to this field, so the search goes on to the next.
func (z *zone) advance(c *wall, cur, d int, set func(*wall, int), carry func(*wall)) bool {
	if d < 0 {
		carry(c)
		return false
	}
	if d != cur {
		set(c, d)
	}
	switch z.withinBounds(c) {
	case -1:
		carry(c)
		return false
	case 0:
		return false
	}
	return true
}

// withinBounds is systemd's tm_within_bounds: 1 when c exists as it is; 0
// when it normalizes forward, c then set to the normalized time with the
// field below the first changed one reset; -1 when it normalizes
// backward, or the year is beyond systemd's calendar.
func (z *zone) withinBounds(c *wall) int {
	if c.year > maxYear {
		return -1
	}
	t := z.normalize(*c)
	cmp := 0
	switch {
	case t.year != c.year:
		cmp, t.month = compare(t.year, c.year), 1
	case t.month != c.month:
		cmp, t.day = compare(t.month, c.month), 1
	case t.day != c.day:
		cmp, t.hour = compare(t.day, c.day), 0
	case t.hour != c.hour:
		cmp, t.min = compare(t.hour, c.hour), 0
	case t.min != c.min:
		cmp, t.sec = compare(t.min, c.min), 0
	default:
		cmp = compare(t.sec, c.sec)
	}
	switch {
	case cmp < 0:
		return -1
	case cmp > 0:
		*c = t
		return 0
	}
	return 1
}

func compare(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// match is the first value of c at or after v; -1 if none. For the days
// of an end-of-month event, eom is the month they count back from.
func (c chain) match(v int, eom *wall) int {
	if c == nil {
		return v
	}
	d := -1
	for _, x := range c {
		start, stop := x.start, x.stop
		if eom != nil {
			start, stop = endOfMonth(*eom, start), endOfMonth(*eom, stop)
			if stop > 0 {
				start, stop = stop, start
			}
		}
		switch {
		case start >= v:
			if d < 0 || start < d {
				d = start
			}
		case x.repeat > 0:
			k := start + x.repeat*((v-start+x.repeat-1)/x.repeat)
			if (d < 0 || k < d) && (stop < 0 || k <= stop) {
				d = k
			}
		}
	}
	return d
}

// endOfMonth is the day of w's month that is day-th from its end (1 is
// the last), or -1 if there is none.
func endOfMonth(w wall, day int) int {
	t := time.Date(w.year, time.Month(w.month+1), 1-day, 0, 0, 0, 0, time.UTC)
	if int(t.Month()) != (w.month-1)%12+1 || t.Year() != w.year {
		return -1
	}
	return t.Day()
}

func (e *Event) weekdayMatches(c wall) bool {
	if e.weekdays < 0 {
		return true
	}
	wd := time.Date(c.year, time.Month(c.month), c.day, 0, 0, 0, 0, time.UTC).Weekday()
	k := (int(wd) + 6) % 7 // Monday 0
	return e.weekdays&(1<<k) != 0
}
