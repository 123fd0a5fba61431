package pg

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// DirWAL is the WAL clusters archive with their own archive_command into a
// directory each ("cp %p /archive/%f", as many DBAs configure it), keyed
// by cluster name. Restores read the segments from there.
type DirWAL struct {
	Dirs map[string]string
}

var _ WALSource = DirWAL{}

// walFileName matches a WAL segment's file name: timeline, log, segment.
var walFileName = regexp.MustCompile(`^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$`)

// segment is one archived WAL segment.
type segment struct {
	name     string
	timeline uint32
	no       uint64 // log * segments per log + segment
	modTime  time.Time
}

// walLongHeader is the start of a segment's first page: XLogLongPageHeaderData.
type walLongHeader struct {
	Magic    uint16
	Info     uint16
	Timeline uint32
	PageAddr uint64
	RemLen   uint32
	_        uint32
	SystemID uint64
	SegSize  uint32
	BlockSz  uint32
}

// readHeader reads the long page header that starts a segment file.
func readHeader(path string) (walLongHeader, error) {
	var h walLongHeader
	f, err := os.Open(path)
	if err != nil {
		return h, err
	}
	defer f.Close()
	if err := binary.Read(io.LimitReader(f, 40), binary.LittleEndian, &h); err != nil {
		return h, fmt.Errorf("WAL segment %s: header: %w", path, err)
	}
	return h, nil
}

// segments lists the archive's segments of cluster systemID, checking the
// system identifier in the first segment's header and giving the segment
// size.
func (d DirWAL) segments(cluster string, systemID uint64) (string, []segment, uint64, error) {
	dir := d.Dirs[cluster]
	if dir == "" {
		return "", nil, 0, fmt.Errorf("no archived WAL for cluster %s (no walArchiveDir configured for it, and no repository given: the WAL astrolabe serve archives is read by restore --repo REPO)", cluster)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", nil, 0, fmt.Errorf("archived WAL of cluster %s: %w", cluster, err)
	}
	var (
		segs    []segment
		segSize uint64
	)
	for _, e := range entries {
		m := walFileName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if segSize == 0 {
			h, err := readHeader(filepath.Join(dir, e.Name()))
			if err != nil {
				return "", nil, 0, err
			}
			if h.SystemID != systemID {
				return "", nil, 0, fmt.Errorf("archived WAL of cluster %s in %s is of another cluster (system identifier %d, the backup's is %d)", cluster, dir, h.SystemID, systemID)
			}
			if h.SegSize == 0 || (1<<32)%uint64(h.SegSize) != 0 {
				return "", nil, 0, fmt.Errorf("WAL segment %s: segment size %d", e.Name(), h.SegSize)
			}
			segSize = uint64(h.SegSize)
		}
		tli, _ := strconv.ParseUint(m[1], 16, 32)
		log, _ := strconv.ParseUint(m[2], 16, 32)
		seg, _ := strconv.ParseUint(m[3], 16, 32)
		segs = append(segs, segment{name: e.Name(), timeline: uint32(tli), no: log*(1<<32/segSize) + seg, modTime: fi.ModTime()})
	}
	if len(segs) == 0 {
		return "", nil, 0, fmt.Errorf("no archived WAL for cluster %s in %s", cluster, dir)
	}
	return dir, segs, segSize, nil
}

// Range implements WALSource: the times the oldest and the newest segments
// were archived.
func (d DirWAL) Range(ctx context.Context, cluster string, systemID uint64) (oldest, newest time.Time, err error) {
	_, segs, _, err := d.segments(cluster, systemID)
	if err != nil {
		return oldest, newest, err
	}
	oldest, newest = segs[0].modTime, segs[0].modTime
	for _, s := range segs {
		if s.modTime.Before(oldest) {
			oldest = s.modTime
		}
		if s.modTime.After(newest) {
			newest = s.modTime
		}
	}
	return oldest, newest, nil
}

// Stage implements WALSource. The server copies segments straight from the
// archive (dir is not needed); Stage checks that the archive holds every
// segment of timeline from startLSN's on up to the newest (or to the
// target LSN's), so that a gap is named now rather than found by the
// server as an early end of recovery.
func (d DirWAL) Stage(ctx context.Context, cluster string, systemID uint64, timeline uint32, startLSN string, target RecoveryTarget, dir string) (string, error) {
	archive, segs, segSize, err := d.segments(cluster, systemID)
	if err != nil {
		return "", err
	}
	start, err := pglogrepl.ParseLSN(startLSN)
	if err != nil {
		return "", fmt.Errorf("start %q: %w", startLSN, err)
	}
	have := map[uint64]bool{}
	var last uint64
	for _, s := range segs {
		if s.timeline == timeline {
			have[s.no] = true
			last = max(last, s.no)
		}
	}
	if target.LSN != "" {
		t, err := pglogrepl.ParseLSN(target.LSN)
		if err != nil {
			return "", fmt.Errorf("target %q: %w", target.LSN, err)
		}
		last = max(last, uint64(t)/segSize)
	}
	// The first segment is in the base backup itself.
	for no := uint64(start)/segSize + 1; no <= last; no++ {
		if !have[no] {
			return "", fmt.Errorf("archived WAL of cluster %s in %s has a gap: segment %s is missing", cluster, archive, segmentName(timeline, no, segSize))
		}
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	// PostgreSQL replaces % escapes in all of restore_command.
	return "cp " + strings.ReplaceAll(shellQuote(archive), "%", "%%") + "/%f %p", nil
}

// segmentName is the file name of segment no of timeline.
func segmentName(timeline uint32, no, segSize uint64) string {
	perLog := (1 << 32) / segSize
	return fmt.Sprintf("%08X%08X%08X", timeline, no/perLog, no%perLog)
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
