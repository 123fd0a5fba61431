package walarchive

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// segmentName is the pg_wal name of the segment of timeline tl that
// holds LSN lsn.
func segmentName(tl uint32, lsn, segSize uint64) string {
	segno := lsn / segSize
	perID := (1 << 32) / segSize
	return fmt.Sprintf("%08X%08X%08X", tl, segno/perID, segno%perID)
}

// parseSegmentName returns a segment's timeline and the LSN it starts at.
func parseSegmentName(name string, segSize uint64) (tl uint32, start uint64, err error) {
	if len(name) != 24 {
		return 0, 0, fmt.Errorf("%q is not a WAL segment name", name)
	}
	var v [3]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(name[8*i:8*i+8], 16, 32); err != nil {
			return 0, 0, fmt.Errorf("%q is not a WAL segment name", name)
		}
	}
	perID := (1 << 32) / segSize
	if v[2] >= perID {
		return 0, 0, fmt.Errorf("%q is not a WAL segment name of %d-byte segments", name, segSize)
	}
	return uint32(v[0]), (v[1]*perID + v[2]) * segSize, nil
}

// historyName is the name of a timeline's history file.
func historyName(tl uint32) string { return fmt.Sprintf("%08X.history", tl) }

// switchPoint is where a timeline of a history file ended.
type switchPoint struct {
	timeline uint32
	end      uint64
}

// parseHistory reads a timeline history file: "parent tl<TAB>switch
// LSN<TAB>reason" per line, oldest first.
func parseHistory(b []byte) ([]switchPoint, error) {
	var out []switchPoint
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("timeline history: bad line %q", line)
		}
		tl, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("timeline history: bad line %q", line)
		}
		lsn, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("timeline history: bad line %q: %w", line, err)
		}
		out = append(out, switchPoint{uint32(tl), lsn})
	}
	return out, sc.Err()
}

// timelineOf is the timeline a replay reads the segment starting at
// start from: the first in history that ended after the segment did
// (the segment holding a switch point is read from the next timeline),
// else current.
func timelineOf(history []switchPoint, current uint32, start, segSize uint64) uint32 {
	for _, sp := range history {
		if sp.end >= start+segSize {
			return sp.timeline
		}
	}
	return current
}

// ParseLSN reads an LSN as PostgreSQL writes it: two hex numbers X/Y.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("LSN %q: want X/Y", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("LSN %q: want X/Y in hex", s)
	}
	return h<<32 | l, nil
}

// FormatLSN writes an LSN as PostgreSQL does.
func FormatLSN(lsn uint64) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }
