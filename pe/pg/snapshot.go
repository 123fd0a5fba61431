package pg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// Files of a snapshot directory (besides snapdir's info.json).
const (
	archiveFile = "base.tar"
	tocFile     = "toc.json"
)

// Metadata is a base backup's metadata: the PE's metadata stream, as JSON.
type Metadata struct {
	Cluster string `json:"cluster"`
	// SystemID is the cluster's system identifier, in decimal (it does
	// not fit a JSON number).
	SystemID      string            `json:"systemIdentifier"`
	ServerVersion string            `json:"serverVersion"`
	Timeline      uint32            `json:"timeline"`
	StartLSN      string            `json:"startLSN"`
	StopLSN       string            `json:"stopLSN"`
	BackupStart   time.Time         `json:"backupStart"`
	BackupEnd     time.Time         `json:"backupEnd"`
	Databases     []string          `json:"databases"`
	Tablespaces   []Tablespace      `json:"tablespaces"`
	Settings      map[string]string `json:"settings"`
}

// Tablespace is one tablespace of a cluster; Location is empty for those
// in the data directory.
type Tablespace struct {
	Name     string `json:"name"`
	Location string `json:"location,omitempty"`
}

// snapshotInfo is the info.json of a snapshot.
type snapshotInfo struct {
	Created  time.Time `json:"created"`
	Size     int64     `json:"size"` // of base.tar
	Metadata Metadata  `json:"metadata"`
}

// takeSnapshot takes a base backup of cl into a new snapshot of PE name.
func (m *TypeManager) takeSnapshot(ctx context.Context, name string, cl Cluster) (string, error) {
	// Described first: a wrong password or a server that is down fails
	// here, before anything is written.
	md, err := describe(ctx, cl)
	if err != nil {
		return "", err
	}
	conn, err := connect(ctx, cl, true)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	return m.snaps.Take(ctx, name, func(ctx context.Context, dir string, now time.Time) (any, error) {
		md.BackupStart = now.UTC()
		size, err := writeBackup(ctx, conn, dir, "astrolabe "+name+" "+now.UTC().Format(time.RFC3339), &md, m.onBackupData)
		if err != nil {
			return nil, fmt.Errorf("base backup of cluster %s: %w", cl.Name, err)
		}
		return snapshotInfo{Created: now, Size: size, Metadata: md}, nil
	})
}

// writeBackup streams the base backup into dir/base.tar and its table of
// contents into dir/toc.json, and fills in md; it returns the archive's
// size.
func writeBackup(ctx context.Context, conn *pgconn.PgConn, dir, label string, md *Metadata, onData func(int)) (int64, error) {
	f, err := os.OpenFile(filepath.Join(dir, archiveFile), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// The table of contents is read off the stream as it is written.
	pr, pw := io.Pipe()
	type scan struct {
		toc []pe.TOCEntry
		err error
	}
	scanned := make(chan scan, 1)
	go func() {
		toc, err := pe.ScanTar(ctx, pr)
		io.Copy(io.Discard, pr)
		pr.CloseWithError(err)
		scanned <- scan{toc, err}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	var w io.Writer = io.MultiWriter(bw, pw)
	if onData != nil {
		w = notifyWriter{w, onData}
	}
	res, err := baseBackup(ctx, conn, label, w)
	if err == nil {
		err = bw.Flush()
	}
	pw.CloseWithError(err)
	sc := <-scanned
	if err != nil {
		return 0, err
	}
	if sc.err != nil {
		return 0, fmt.Errorf("table of contents: %w", sc.err)
	}
	md.BackupEnd = time.Now().UTC()
	md.SystemID = strconv.FormatUint(res.SystemID, 10)
	md.ServerVersion = res.Version
	md.Timeline = res.Timeline
	md.StartLSN = res.StartLSN.String()
	md.StopLSN = res.EndLSN.String()
	if err := zeroUnneededWAL(f, sc.toc, res.StartLSN, res.EndLSN); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), snapdir.WriteJSON(filepath.Join(dir, tocFile), sc.toc)
}

// walPageSize is XLOG_BLCKSZ, the unit WAL is written in.
const walPageSize = 8192

// walSegmentName matches the names of WAL segment files: timeline, log,
// segment.
var walSegmentName = regexp.MustCompile(`^pg_wal/([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$`)

// zeroUnneededWAL zeroes what the WAL segments of the archive hold
// outside [start, end), the WAL replay of the backup reads, page-wise,
// except each segment's first page, whose header recovery checks.
// Segments are recycled, so that is WAL of long ago (or WAL written during
// the backup, not needed to make it consistent, or the previous backup's
// own): zeros read as the end of WAL to recovery, as in pg_receivewal's
// partial segments, and store as nothing in a repository, which would
// otherwise take a mostly new 16 MiB segment for each backup of an
// unchanged cluster.
func zeroUnneededWAL(f *os.File, toc []pe.TOCEntry, start, end pglogrepl.LSN) error {
	keepFrom := uint64(start) / walPageSize * walPageSize
	keepTo := (uint64(end) + walPageSize - 1) / walPageSize * walPageSize
	zeros := make([]byte, 1<<20)
	zero := func(e pe.TOCEntry, from, to int64) error {
		for off := from; off < to; {
			n := min(int64(len(zeros)), to-off)
			if _, err := f.WriteAt(zeros[:n], e.Offset+off); err != nil {
				return fmt.Errorf("zero WAL the backup does not need in %s: %w", e.Name, err)
			}
			off += n
		}
		return nil
	}
	for _, e := range toc {
		sm := walSegmentName.FindStringSubmatch(e.Name)
		if sm == nil || !e.Mode.IsRegular() || e.Size <= walPageSize || (1<<32)%e.Size != 0 {
			continue
		}
		log, _ := strconv.ParseUint(sm[2], 16, 32)
		seg, _ := strconv.ParseUint(sm[3], 16, 32)
		size := uint64(e.Size)
		segStart := (log*(1<<32/size) + seg) * size
		// Offsets in the segment, clamped to it; the first page stays.
		rel := func(lsn uint64) int64 {
			return int64(min(max(lsn, segStart+walPageSize), segStart+size) - segStart)
		}
		if err := zero(e, walPageSize, rel(keepFrom)); err != nil {
			return err
		}
		if err := zero(e, rel(keepTo), e.Size); err != nil {
			return err
		}
	}
	return nil
}

// describe reads what a snapshot's metadata tells of the cluster besides
// the backup: its databases, tablespaces and non-default settings.
func describe(ctx context.Context, cl Cluster) (Metadata, error) {
	md := Metadata{Cluster: cl.Name, Settings: map[string]string{}}
	conn, err := connect(ctx, cl, false)
	if err != nil {
		return md, err
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, `SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname;
SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace ORDER BY spcname;
SELECT name, setting FROM pg_settings WHERE source NOT IN ('default', 'override') ORDER BY name`).ReadAll()
	if err != nil {
		return md, fmt.Errorf("describe cluster %s: %w", cl.Name, err)
	}
	if len(res) != 3 {
		return md, fmt.Errorf("describe cluster %s: %d results, want 3", cl.Name, len(res))
	}
	for _, row := range res[0].Rows {
		md.Databases = append(md.Databases, string(row[0]))
	}
	for _, row := range res[1].Rows {
		md.Tablespaces = append(md.Tablespaces, Tablespace{Name: string(row[0]), Location: string(row[1])})
	}
	for _, row := range res[2].Rows {
		if !secretSetting(string(row[0])) {
			md.Settings[string(row[0])] = string(row[1])
		}
	}
	return md, nil
}

// secretSetting reports whether the setting name may hold a password or
// run a command (primary_conninfo, ssl_passphrase_command,
// archive_command...): metadata goes to REST clients, zips and
// repositories, and these stay out of it.
func secretSetting(name string) bool {
	for _, s := range []string{"conninfo", "password", "passphrase", "command", "secret"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// readSnapshotInfo reads the info.json of a snapshot.
func (m *TypeManager) readSnapshotInfo(name, snap string) (snapshotInfo, error) {
	var si snapshotInfo
	err := m.snaps.ReadInfo(name, snap, &si)
	return si, err
}

// metadataReader is md as the metadata stream.
func metadataReader(md Metadata) (io.ReadCloser, error) {
	b, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// notifyWriter tells of each write.
type notifyWriter struct {
	w      io.Writer
	notify func(n int)
}

func (n notifyWriter) Write(p []byte) (int, error) {
	n.notify(len(p))
	return n.w.Write(p)
}
