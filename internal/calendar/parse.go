// Package calendar parses job schedules: systemd calendar events (the
// syntax of OnCalendar= in systemd.time(7)) and cron lines, and tells when
// they elapse next. Both answer as their originals do, across daylight
// saving changes too; see Event.Next and Cron.Next.
package calendar

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds of systemd's calendar: years it computes, and the longest list.
const (
	minYear      = 1970
	maxYear      = 2199
	maxComponent = 240
	usecPerSec   = 1_000_000
)

// component is one item of a list: start, or start..stop, each optionally
// repeated every repeat from start. stop is -1 when there is none.
type component struct {
	start, stop, repeat int
}

// chain is a field's list of components; nil is '*', every value.
type chain []component

// Event is a parsed systemd calendar event.
type Event struct {
	expr       string
	weekdays   int // bit 0 Monday .. bit 6 Sunday; -1 every day
	endOfMonth bool
	year       chain
	month      chain
	day        chain
	hour       chain
	minute     chain
	usec       chain // the seconds field, in microseconds
	utc        bool
	loc        *time.Location // nil: the zone of the time given to Next
}

// String is the expression as it was written.
func (e *Event) String() string { return e.expr }

var errSyntax = errors.New("not a systemd calendar event")

// Parse parses a systemd calendar event such as "Mon..Fri 22:30",
// "*-*-01 02:00:00 Europe/Berlin", "*:0/15" or "weekly", as systemd
// (version 252) does. Without a time zone the event is in the zone of the
// times given to Next.
func Parse(expr string) (*Event, error) {
	e := &Event{expr: expr}
	if p := strings.TrimSpace(expr); p != expr && p != "" {
		// As systemd: " daily" is no event.
		return nil, fmt.Errorf("%w: space before or after it", errSyntax)
	}
	p := strings.TrimSpace(expr)
	if rest, ok := cutSuffixFold(p, " UTC"); ok {
		e.utc, p = true, rest
	} else if i := strings.LastIndexByte(p, ' '); i >= 0 {
		if loc, ok := loadZone(p[i+1:]); ok {
			e.loc, p = loc, p[:i]
			if loc.String() == "UTC" {
				e.utc, e.loc = true, nil
			}
		}
	}
	if p == "" {
		return nil, fmt.Errorf("%w: empty", errSyntax)
	}
	if !e.shorthand(p) {
		if err := e.parse(p); err != nil {
			return nil, err
		}
	}
	e.normalize()
	if err := e.valid(); err != nil {
		return nil, err
	}
	return e, nil
}

// loadZone loads an IANA time zone named at the end of an expression.
func loadZone(name string) (*time.Location, bool) {
	if name == "" || name == "Local" || strings.ContainsAny(name, "*:,~") || strings.HasPrefix(name, "-") {
		return nil, false
	}
	loc, err := time.LoadLocation(name)
	return loc, err == nil
}

func cutSuffixFold(s, suffix string) (string, bool) {
	if len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix) {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

func one(v int) chain { return chain{{start: v, stop: -1}} }

// shorthand sets e to one of the named events; unnamed fields are '*'.
func (e *Event) shorthand(p string) bool {
	midnight := func() { e.hour, e.minute, e.usec = one(0), one(0), one(0) }
	switch strings.ToLower(p) {
	case "minutely":
		e.usec = one(0)
	case "hourly":
		e.minute, e.usec = one(0), one(0)
	case "daily":
		midnight()
	case "weekly":
		e.weekdays = 1
		midnight()
	case "monthly":
		e.day = one(1)
		midnight()
	case "quarterly":
		e.month, e.day = chain{{1, -1, 0}, {4, -1, 0}, {7, -1, 0}, {10, -1, 0}}, one(1)
		midnight()
	case "semiannually", "semi-annually", "biannually", "bi-annually":
		e.month, e.day = chain{{1, -1, 0}, {7, -1, 0}}, one(1)
		midnight()
	case "yearly", "annually", "anually":
		e.month, e.day = one(1), one(1)
		midnight()
	default:
		return false
	}
	return true
}

// parse reads "[weekdays] [date] [time]".
func (e *Event) parse(p string) error {
	p, err := e.parseWeekdays(p)
	if err != nil {
		return err
	}
	p, done, err := e.parseDate(p)
	if err != nil {
		return err
	}
	if !done {
		if p, err = e.parseTime(p); err != nil {
			return err
		}
	}
	if p != "" {
		return fmt.Errorf("%w: unexpected %q", errSyntax, p)
	}
	return nil
}

var weekdayNames = []struct {
	name string
	nr   int
}{
	{"Monday", 0}, {"Mon", 0}, {"Tuesday", 1}, {"Tue", 1}, {"Wednesday", 2}, {"Wed", 2},
	{"Thursday", 3}, {"Thu", 3}, {"Friday", 4}, {"Fri", 4}, {"Saturday", 5}, {"Sat", 5},
	{"Sunday", 6}, {"Sun", 6},
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// parseWeekdays reads a list of weekdays and ranges (Mon..Fri, Sat,Sun).
func (e *Event) parseWeekdays(p string) (string, error) {
	bad := fmt.Errorf("%w: bad weekdays in %q", errSyntax, p)
	from := -1 // the start of an open range
	for first := true; ; first = false {
		nr := -1
		for _, d := range weekdayNames {
			if !hasPrefixFold(p, d.name) {
				continue
			}
			rest := p[len(d.name):]
			if rest != "" && !strings.ContainsRune("-., ", rune(rest[0])) {
				return "", bad
			}
			nr, p = d.nr, rest
			break
		}
		if nr < 0 {
			if first {
				return p, nil // no weekdays
			}
			return "", bad
		}
		e.weekdays |= 1 << nr
		if from >= 0 {
			if from > nr {
				return "", bad
			}
			for j := from + 1; j < nr; j++ {
				e.weekdays |= 1 << j
			}
		}
		if p == "" {
			return p, nil
		}
		if p[0] == ' ' {
			return strings.TrimLeft(p, " "), nil
		}
		switch {
		case p[0] == '.':
			if from >= 0 || !strings.HasPrefix(p, "..") {
				return "", bad
			}
			from, p = nr, p[2:]
		case p[0] == '-': // an older spelling of ..
			if from >= 0 {
				return "", bad
			}
			from, p = nr, p[1:]
		case p[0] == ',':
			from, p = -1, p[1:]
		}
		if p == "" || p[0] == ' ' {
			if from >= 0 {
				return "", bad // an open range
			}
			return strings.TrimLeft(p, " "), nil
		}
	}
}

// parseDate reads [[year-]month-day], or @seconds since the epoch (then
// done: there is no time after it). It consumes nothing when what follows
// is a time.
func (e *Event) parseDate(p string) (rest string, done bool, err error) {
	if p == "" {
		return p, false, nil
	}
	if p[0] == '@' {
		n, t := leadingDigits(p[1:])
		secs, err := strconv.ParseInt(n, 10, 64)
		if err != nil || secs > 1<<40 {
			return "", false, fmt.Errorf("%w: bad timestamp %q", errSyntax, p)
		}
		u := time.Unix(secs, 0).UTC()
		e.utc = true
		e.year, e.month, e.day = one(u.Year()), one(int(u.Month())), one(u.Day())
		e.hour, e.minute, e.usec = one(u.Hour()), one(u.Minute()), one(u.Second()*usecPerSec)
		return t, true, nil
	}
	bad := fmt.Errorf("%w: bad date in %q", errSyntax, p)
	t := p
	first, t, err := parseChain(t, false)
	if err != nil {
		return "", false, err
	}
	if t == "" || t[0] == ':' {
		return p, false, nil // a time, not a date
	}
	sep := func() bool {
		switch t[0] {
		case '~':
			e.endOfMonth = true
		case '-':
		default:
			return false
		}
		t = t[1:]
		return true
	}
	if !sep() {
		return "", false, bad
	}
	second, t, err := parseChain(t, false)
	if err != nil {
		return "", false, err
	}
	if t == "" || t[0] == ' ' {
		e.month, e.day = first, second
		return strings.TrimLeft(t, " "), false, nil
	}
	if e.endOfMonth || !sep() {
		return "", false, bad
	}
	third, t, err := parseChain(t, false)
	if err != nil {
		return "", false, err
	}
	if t != "" && t[0] != ' ' {
		return "", false, bad
	}
	e.year, e.month, e.day = first, second, third
	return strings.TrimLeft(t, " "), false, nil
}

// parseTime reads hour:minute[:second]; none at all is 00:00:00.
func (e *Event) parseTime(p string) (string, error) {
	if p == "" {
		e.hour, e.minute, e.usec = one(0), one(0), one(0)
		return p, nil
	}
	bad := fmt.Errorf("%w: bad time in %q", errSyntax, p)
	var err error
	if e.hour, p, err = parseChain(p, false); err != nil {
		return "", err
	}
	if p == "" || p[0] != ':' {
		return "", bad
	}
	if e.minute, p, err = parseChain(p[1:], false); err != nil {
		return "", err
	}
	if p == "" {
		e.usec = one(0)
		return p, nil
	}
	if p[0] != ':' {
		return "", bad
	}
	if e.usec, p, err = parseChain(p[1:], true); err != nil {
		return "", err
	}
	if p != "" {
		return "", bad
	}
	return p, nil
}

// parseChain reads '*' or a comma-separated list of components; usec
// reads seconds with up to 6 decimals into microseconds.
func parseChain(p string, usec bool) (chain, string, error) {
	if strings.HasPrefix(p, "*") {
		if usec {
			return chain{{start: 0, stop: -1, repeat: usecPerSec}}, p[1:], nil
		}
		return nil, p[1:], nil
	}
	var c chain
	for {
		if len(c) > maxComponent {
			return nil, "", fmt.Errorf("%w: too long a list", errSyntax)
		}
		comp, rest, err := parseComponent(p, usec)
		if err != nil {
			return nil, "", err
		}
		c, p = append(c, comp), rest
		if !strings.HasPrefix(p, ",") {
			return c, p, nil
		}
		p = p[1:]
	}
}

func parseComponent(p string, usec bool) (component, string, error) {
	bad := fmt.Errorf("%w: bad value in %q", errSyntax, p)
	c := component{stop: -1}
	var err error
	if c.start, p, err = parseDecimal(p, usec); err != nil {
		return c, "", err
	}
	if strings.HasPrefix(p, "..") {
		if c.stop, p, err = parseDecimal(p[2:], usec); err != nil {
			return c, "", err
		}
		c.repeat = 1
		if usec {
			c.repeat = usecPerSec
		}
	}
	if strings.HasPrefix(p, "/") {
		if c.repeat, p, err = parseDecimal(p[1:], usec); err != nil {
			return c, "", err
		}
		if c.repeat == 0 {
			return c, "", fmt.Errorf("%w: a repetition of 0", errSyntax)
		}
	} else if usec && c.stop >= 0 && c.start+c.repeat > c.stop {
		return c, "", bad
	}
	if p != "" && !strings.ContainsRune(" ,-~:", rune(p[0])) {
		return c, "", bad
	}
	return c, p, nil
}

func leadingDigits(p string) (digits, rest string) {
	i := 0
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		i++
	}
	return p[:i], p[i:]
}

// parseDecimal reads a number; usec reads seconds with up to 6 decimals
// (more are cut) into microseconds.
func parseDecimal(p string, usec bool) (int, string, error) {
	digits, rest := leadingDigits(p)
	v, err := strconv.ParseInt(digits, 10, 32)
	if err != nil {
		return 0, "", fmt.Errorf("%w: want a number at %q", errSyntax, p)
	}
	if !usec {
		return int(v), rest, nil
	}
	v *= usecPerSec
	if len(rest) >= 2 && rest[0] == '.' && rest[1] != '.' {
		frac, r := leadingDigits(rest[1:])
		if frac == "" {
			return 0, "", fmt.Errorf("%w: want decimals at %q", errSyntax, p)
		}
		frac = (frac + "00000")[:6]
		f, _ := strconv.Atoi(frac)
		v, rest = v+int64(f), r
	}
	if v > 1<<31-1 {
		return 0, "", fmt.Errorf("%w: %q is too large", errSyntax, p)
	}
	return int(v), rest, nil
}

func (e *Event) normalize() {
	if e.weekdays <= 0 || e.weekdays >= 127 {
		e.weekdays = -1
	}
	if e.endOfMonth && e.day == nil {
		e.endOfMonth = false
	}
	for i, c := range e.year { // 12 → 2012, 89 → 1989
		e.year[i].start, e.year[i].stop = fullYear(c.start), fullYear(c.stop)
	}
	for _, c := range []*chain{&e.year, &e.month, &e.day, &e.hour, &e.minute, &e.usec} {
		*c = normalizeChain(*c)
	}
}

func fullYear(y int) int {
	switch {
	case y >= 0 && y < 70:
		return y + 2000
	case y >= 70 && y < 100:
		return y + 1900
	}
	return y
}

// normalizeChain ends each range on a repetition, drops repetitions that
// never repeat, and sorts and deduplicates the list.
func normalizeChain(c chain) chain {
	if c == nil {
		return nil
	}
	for i := range c {
		x := &c[i]
		if x.stop > x.start && x.repeat > 0 {
			x.stop -= (x.stop - x.start) % x.repeat
		}
		if (x.stop > x.start && x.repeat > 0 && x.start+x.repeat > x.stop) || x.start == x.stop {
			x.repeat, x.stop = 0, -1
		}
	}
	slices.SortFunc(c, func(a, b component) int {
		if a.start != b.start {
			return a.start - b.start
		}
		if a.stop != b.stop {
			return a.stop - b.stop
		}
		return a.repeat - b.repeat
	})
	return slices.Compact(c)
}

func (e *Event) valid() error {
	for _, f := range []struct {
		name     string
		c        chain
		from, to int
		eom      bool
	}{
		{"year", e.year, minYear, maxYear, false},
		{"month", e.month, 1, 12, false},
		{"day", e.day, 1, 31, e.endOfMonth},
		{"hour", e.hour, 0, 23, false},
		{"minute", e.minute, 0, 59, false},
		{"second", e.usec, 0, 60*usecPerSec - 1, false},
	} {
		if !chainValid(f.c, f.from, f.to, f.eom) {
			return fmt.Errorf("%w: the %s is out of range", errSyntax, f.name)
		}
	}
	return nil
}

// chainValid checks that every component is in from..to (days counted from
// the end of the month only up to 28) and repeats at least once within it.
func chainValid(c chain, from, to int, eom bool) bool {
	if eom {
		to -= 3
	}
	for _, x := range c {
		if x.start < from || x.start > to || x.repeat > to-from {
			return false
		}
		if x.stop >= 0 {
			if x.stop < from || x.stop > to || x.start+x.repeat > x.stop {
				return false
			}
		} else if (eom && x.start-x.repeat < from) || (!eom && x.start+x.repeat > to) {
			return false
		}
	}
	return true
}
