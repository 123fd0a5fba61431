package walarchive

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe/pg"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Target is how far a point-in-time restore replays WAL: a time or an
// LSN (one set).
type Target = pg.RecoveryTarget

// Source gives point-in-time restores the WAL archived in a repository.
type Source struct {
	Repo *repo.Repository
}

var _ pg.WALSource = Source{}

// ErrNoWAL is returned when a cluster has no WAL in the repository.
var ErrNoWAL = errors.New("no WAL archived")

// defaultSegSize is PostgreSQL's default segment size, assumed where the
// archive holds no complete segment to tell.
const defaultSegSize = 16 << 20

// archive is what the repository holds of one cluster's WAL.
type archive struct {
	cluster  string
	systemID uint64
	segSize  uint64
	complete map[string]repo.WALFile // by name
	partial  map[string]repo.WALFile
	history  map[uint32]bool
	latestTL uint32
	segs     []repo.WALFile // complete and partial segments, in order
	// switches is the history of latestTL (nil if not archived).
	switches []switchPoint
}

func (s Source) load(ctx context.Context, cluster string, systemID uint64) (*archive, error) {
	files, err := s.Repo.WALFiles(ctx, cluster, systemID)
	if err != nil {
		return nil, err
	}
	a := &archive{cluster: cluster, systemID: systemID, segSize: defaultSegSize,
		complete: map[string]repo.WALFile{}, partial: map[string]repo.WALFile{}, history: map[uint32]bool{}, latestTL: 1}
	for _, f := range files {
		switch {
		case f.IsHistory():
			a.history[f.Timeline()] = true
			a.latestTL = max(a.latestTL, f.Timeline())
			continue
		case f.Partial:
			a.partial[f.Name] = f
		default:
			a.complete[f.Name] = f
			a.segSize = uint64(f.Size)
		}
		a.latestTL = max(a.latestTL, f.Timeline())
		a.segs = append(a.segs, f)
	}
	if len(a.segs) == 0 {
		return nil, fmt.Errorf("cluster %s (system %d): %w", cluster, systemID, ErrNoWAL)
	}
	if a.history[a.latestTL] {
		_, b, err := s.Repo.ReadWAL(ctx, a.cluster, a.systemID, historyName(a.latestTL), false)
		if err != nil {
			return nil, err
		}
		if a.switches, err = parseHistory(b); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", cluster, err)
		}
	}
	return a, nil
}

// onPath reports whether segment f is on the latest timeline's history:
// of the timeline a replay reads its position from. Without that
// timeline's history file every segment counts.
func (a *archive) onPath(f repo.WALFile, pos uint64) bool {
	if a.latestTL > 1 && !a.history[a.latestTL] {
		return true
	}
	return f.Timeline() == timelineOf(a.switches, a.latestTL, pos, a.segSize)
}

// segmentTime is the newest time a segment is known to cover: its last
// transaction's, else when the server sent its end.
func segmentTime(f repo.WALFile) time.Time {
	if !f.LastCommit.IsZero() {
		return f.LastCommit
	}
	return f.ServerTime
}

// Range reports the times the archive of a cluster covers without a
// gap: from the first transaction of the oldest segment after the last
// gap to the newest transaction archived.
func (s Source) Range(ctx context.Context, cluster string, systemID uint64) (oldest, newest time.Time, err error) {
	a, err := s.load(ctx, cluster, systemID)
	if err != nil {
		return oldest, newest, err
	}
	sum := a.summary()
	return sum.OldestTime, sum.NewestTime, nil
}

// Stage copies the segments a replay from startLSN on timeline to target
// needs into dir, readable by dir's owner, and returns the
// restore_command that reads them there: from startLSN's segment through
// the first whose transactions pass target (a partial segment is padded
// to a full one, as recovery wants). History files of the archive's
// timelines go with them. A segment missing on the way is an error that
// names it; so is a target after the newest WAL archived.
func (s Source) Stage(ctx context.Context, cluster string, systemID uint64, timeline uint32, startLSN string, target Target, dir string) (string, error) {
	start, err := ParseLSN(startLSN)
	if err != nil {
		return "", err
	}
	var targetLSN uint64
	if target.LSN != "" {
		if targetLSN, err = ParseLSN(target.LSN); err != nil {
			return "", fmt.Errorf("target: %w", err)
		}
	}
	a, err := s.load(ctx, cluster, systemID)
	if err != nil {
		return "", err
	}
	history := a.switches
	sd, err := openStageDir(dir)
	if err != nil {
		return "", err
	}
	defer sd.close()
	write := sd.write
	for tl := range a.history {
		_, b, err := s.Repo.ReadWAL(ctx, cluster, systemID, historyName(tl), false)
		if err != nil {
			return "", err
		}
		if err := write(historyName(tl), b); err != nil {
			return "", err
		}
	}
	reached := func(f repo.WALFile) bool {
		if target.LSN != "" {
			return f.EndLSN > targetLSN
		}
		return !target.Time.IsZero() && f.LastCommit.After(target.Time)
	}
	last := a.segs[len(a.segs)-1]
	_, lastStart, _ := parseSegmentName(last.Name, a.segSize)
	for pos := start - start%a.segSize; ; pos += a.segSize {
		tl := max(timelineOf(history, a.latestTL, pos, a.segSize), timeline)
		name := segmentName(tl, pos, a.segSize)
		f, ok := a.complete[name]
		partial := false
		if !ok {
			f, partial = a.partial[name]
		}
		if !ok && !partial {
			if pos > lastStart {
				if target.IsZero() {
					break
				}
				return "", fmt.Errorf("the WAL archived of cluster %s ends at %s (segment %s): %s", cluster, segmentTime(last).UTC().Format(time.RFC3339Nano), last.Name, beyond(target))
			}
			return "", fmt.Errorf("WAL segment %s of cluster %s is missing from the repository: the WAL from %s on cannot be replayed", name, cluster, FormatLSN(pos))
		}
		_, data, err := s.Repo.ReadWAL(ctx, cluster, systemID, name, partial)
		if err != nil {
			return "", err
		}
		if partial {
			data = append(data, make([]byte, int(a.segSize)-len(data))...)
		}
		if err := write(name, data); err != nil {
			return "", err
		}
		if reached(f) {
			break
		}
		if partial {
			if pos < lastStart {
				return "", fmt.Errorf("WAL segment %s of cluster %s is incomplete in the repository (only its first %d bytes were received): the WAL from %s on cannot be replayed", name, cluster, f.Size, FormatLSN(f.EndLSN))
			}
			if target.IsZero() {
				break
			}
			return "", fmt.Errorf("the WAL archived of cluster %s ends at %s (the partial segment %s): %s", cluster, segmentTime(f).UTC().Format(time.RFC3339Nano), name, beyond(target))
		}
	}
	return RestoreCommand(dir), nil
}

// beyond says why the archive does not reach target.
func beyond(t Target) string {
	if t.LSN != "" {
		return "the target LSN " + t.LSN + " is after it"
	}
	// Recovery stops at the first transaction after the target time:
	// one must be archived.
	return "a replay to " + t.Time.UTC().Format(time.RFC3339Nano) + " needs a transaction archived after that time"
}

// RestoreCommand is the restore_command that copies WAL staged in dir:
// quoted for the shell, with '%' doubled as restore_command wants.
func RestoreCommand(dir string) string {
	q := "'" + strings.ReplaceAll(dir, "'", `'\''`) + "'"
	return "cp " + strings.ReplaceAll(q, "%", "%%") + `/"%f" "%p"`
}

// Summary is what the repository holds of a cluster's WAL.
type Summary struct {
	Cluster  string `json:"cluster"`
	SystemID uint64 `json:"systemID"`
	// Timeline is the newest timeline archived.
	Timeline uint32 `json:"timeline"`
	Segments int    `json:"segments"`
	// Oldest and Newest are the first segment after the last gap and
	// the last segment (a partial one if that is the end); their times
	// are the first and last transaction they hold (else when they
	// were sent).
	Oldest     string    `json:"oldest"`
	Newest     string    `json:"newest"`
	OldestTime time.Time `json:"oldestTime,omitzero"`
	NewestTime time.Time `json:"newestTime,omitzero"`
	// EndLSN is the end of the WAL archived, and NewestSent when the
	// server sent its last byte.
	EndLSN     string    `json:"endLSN"`
	NewestSent time.Time `json:"newestSent,omitzero"`
	// Gaps are the ranges of segments missing between the oldest
	// archived and the newest.
	Gaps []string `json:"gaps,omitempty"`
}

func (a *archive) summary() Summary {
	sum := Summary{Cluster: a.cluster, SystemID: a.systemID, Timeline: a.latestTL, Segments: len(a.complete)}
	// Positions covered along the latest timeline's history (a segment
	// of another history does not replace the missing one of this): a
	// partial segment is a gap unless it is the archive's end (its
	// segment was not received whole).
	byPos := map[uint64]repo.WALFile{}
	var endPos uint64
	for _, f := range a.segs {
		_, pos, err := parseSegmentName(f.Name, a.segSize)
		if err != nil || !a.onPath(f, pos) {
			continue
		}
		if old, ok := byPos[pos]; !ok || old.Partial || (!f.Partial && f.Timeline() > old.Timeline()) {
			byPos[pos] = f
		}
		endPos = max(endPos, pos)
	}
	positions := make([]uint64, 0, len(byPos))
	for pos := range byPos {
		positions = append(positions, pos)
	}
	slices.Sort(positions)
	first := 0
	for i, pos := range positions {
		if i > 0 && pos != positions[i-1]+a.segSize {
			prev := positions[i-1]
			from := segmentName(byPos[prev].Timeline(), prev+a.segSize, a.segSize)
			n := (pos - prev - a.segSize) / a.segSize
			sum.Gaps = append(sum.Gaps, fmt.Sprintf("%s (%d segments missing)", from, n))
			first = i
		}
		if f := byPos[pos]; f.Partial && pos != endPos {
			sum.Gaps = append(sum.Gaps, fmt.Sprintf("%s (only its first %d bytes were received)", f.Name, f.Size))
			first = i + 1
		}
	}
	if len(positions) == 0 {
		return sum
	}
	oldest, newest := byPos[positions[first]], byPos[positions[len(positions)-1]]
	sum.Oldest, sum.Newest = oldest.Name, newest.Name
	if newest.Partial {
		sum.Newest += ".partial"
	}
	sum.OldestTime = oldest.FirstCommit
	if sum.OldestTime.IsZero() {
		sum.OldestTime = oldest.ServerTime
	}
	// The newest transaction may sit in an earlier segment than the
	// last (one without any).
	for _, pos := range positions[first:] {
		if t := segmentTime(byPos[pos]); t.After(sum.NewestTime) {
			sum.NewestTime = t
		}
	}
	sum.EndLSN, sum.NewestSent = FormatLSN(newest.EndLSN), newest.ServerTime
	return sum
}

// Summaries describes the WAL archived of every cluster in r.
func Summaries(ctx context.Context, r *repo.Repository) ([]Summary, error) {
	clusters, err := r.WALClusters(ctx)
	if err != nil {
		return nil, err
	}
	src := Source{Repo: r}
	out := make([]Summary, 0, len(clusters))
	for _, c := range clusters {
		a, err := src.load(ctx, c.Name, c.SystemID)
		if errors.Is(err, ErrNoWAL) {
			continue // history files only
		}
		if err != nil {
			return nil, err
		}
		out = append(out, a.summary())
	}
	return out, nil
}

// Fetch writes WAL file name of cluster to dest, as a restore_command
// does: a complete segment, else a partial one padded to a full one.
// systemID 0 takes the cluster's only archive.
func Fetch(ctx context.Context, r *repo.Repository, cluster string, systemID uint64, name, dest string) error {
	if err := repo.ValidWALName(name); err != nil {
		return err
	}
	if systemID == 0 {
		clusters, err := r.WALClusters(ctx)
		if err != nil {
			return err
		}
		var ids []uint64
		for _, c := range clusters {
			if c.Name == cluster {
				ids = append(ids, c.SystemID)
			}
		}
		switch len(ids) {
		case 0:
			return fmt.Errorf("cluster %s: %w", cluster, ErrNoWAL)
		case 1:
			systemID = ids[0]
		default:
			return fmt.Errorf("cluster %s has the WAL of %d systems in the repository: give --system-id (one of %v)", cluster, len(ids), ids)
		}
	}
	f, data, err := r.ReadWAL(ctx, cluster, systemID, name, true)
	if err != nil {
		return err
	}
	if f.Partial {
		a, err := Source{Repo: r}.load(ctx, cluster, systemID)
		if err != nil {
			return err
		}
		data = append(data, make([]byte, max(int(a.segSize)-len(data), 0))...)
	}
	tmp := dest + ".astrolabe-tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// stageDir is the directory WAL is staged in, held open: its owner (the
// restored server's account) may plant links in it, so each file is
// created new beside its descriptor, never through a link or over an
// existing file, and given to the owner through its own descriptor.
type stageDir struct {
	path     string
	fd       int
	uid, gid int
}

func openStageDir(dir string) (*stageDir, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("stage WAL in %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stage WAL in %s: %w", dir, err)
	}
	return &stageDir{path: dir, fd: fd, uid: int(st.Uid), gid: int(st.Gid)}, nil
}

func (d *stageDir) close() { unix.Close(d.fd) }

func (d *stageDir) write(name string, data []byte) error {
	fd, err := unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("stage WAL %s in %s: %w", name, d.path, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(d.path, name))
	err = f.Chown(d.uid, d.gid)
	if err == nil {
		_, err = f.Write(data)
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("stage WAL %s: %w", name, err)
	}
	return nil
}
