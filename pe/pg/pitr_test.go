package pg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// tick is one row of the ticks table and when it committed.
type tick struct {
	id int
	at time.Time
}

// Point in time with DirWAL: a table receives one row per 100 ms; restores
// to three times, between and after two base backups, hold exactly the
// rows committed at or before each; a time before the oldest backup is
// refused with the range, and a gap in the archive is named.
func TestPointInTimeDirWAL(t *testing.T) {
	ctx := context.Background()
	archive := archiveDir(t)
	srv := pgtest.Start(t, pgtest.Options{Settings: []string{
		"archive_mode = on",
		"archive_command = 'cp %p " + archive + "/%f'",
		"track_commit_timestamp = on",
	}})
	srv.Psql(t, "postgres", "CREATE TABLE ticks (id int PRIMARY KEY)")
	cl := clusterOf("main", srv)
	cl.WALArchiveDir = archive
	m := newManager(t, cl)
	p, err := m.Get(ctx, mustID(t, "main"))
	if err != nil {
		t.Fatal(err)
	}

	// 60 rows, one per 100 ms, each its own transaction.
	var script strings.Builder
	for i := 1; i <= 60; i++ {
		fmt.Fprintf(&script, "INSERT INTO ticks VALUES (%d);\nSELECT pg_sleep(0.1);\n", i)
	}
	writer := srv.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres")
	writer.Stdin = strings.NewReader(script.String())
	done := make(chan error, 1)
	go func() {
		out, err := writer.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		done <- err
	}()
	waitRows := func(n int) {
		t.Helper()
		for i := 0; ; i++ {
			got, _ := strconv.Atoi(srv.Psql(t, "postgres", "SELECT count(*) FROM ticks"))
			if got >= n {
				return
			}
			if i > 600 {
				t.Fatalf("ticks: %d rows, waited for %d", got, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitRows(10)
	b1, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitRows(30)
	b2, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A WAL location after the 60 rows, and one row after it.
	lsn := srv.Psql(t, "postgres", "SELECT pg_current_wal_insert_lsn()")
	srv.Psql(t, "postgres", "INSERT INTO ticks VALUES (61)")
	// The last segment is archived once switched.
	seg := srv.Psql(t, "postgres", "SELECT pg_walfile_name(pg_switch_wal())")
	for i := 0; srv.Psql(t, "postgres", "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg; i++ {
		if i > 600 {
			t.Fatalf("segment %s not archived", seg)
		}
		time.Sleep(50 * time.Millisecond)
	}

	ticks := commitTimes(t, srv)
	end := func(id pe.ID) time.Time {
		si, err := m.readSnapshotInfo(id.Name(), id.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		return si.Metadata.BackupEnd
	}
	// A target 50 ms after the commit of the first row committed after
	// the given time.
	after := func(tm time.Time, skip int) time.Time {
		for i, tk := range ticks {
			if tk.at.After(tm) && i+skip < len(ticks)-1 {
				return ticks[i+skip].at.Add(50 * time.Millisecond)
			}
		}
		t.Fatalf("no row committed after %v", tm)
		return time.Time{}
	}
	cases := []struct {
		name string
		from pe.ID
		to   time.Time
	}{
		{"between the backups", b1, after(end(b1), 3)},
		{"after the second", b2, after(end(b2), 2)},
		{"later, from the first", b1, after(end(b2), 15)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, err := m.Get(ctx, c.from)
			if err != nil {
				t.Fatal(err)
			}
			restored, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew,
				Params: pe.Params{Type: {ParamToTime: c.to.Format(time.RFC3339Nano)}}})
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, tk := range ticks {
				if !tk.at.After(c.to) {
					want = append(want, strconv.Itoa(tk.id))
				}
			}
			got := psqlAt(t, srv, restoredPort(t, restored), "postgres", "SELECT string_agg(id::text, ',' ORDER BY id) FROM ticks")
			if got != strings.Join(want, ",") {
				t.Errorf("restored to %s: rows %s, want %s", c.to.Format(time.RFC3339Nano), got, strings.Join(want, ","))
			}
			// The restored cluster was promoted: it takes writes.
			psqlAt(t, srv, restoredPort(t, restored), "postgres", "INSERT INTO ticks VALUES (1000)")
		})
	}

	t.Run("to an LSN", func(t *testing.T) {
		src, _ := m.Get(ctx, b2)
		restored, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew, Params: pe.Params{Type: {ParamToLSN: lsn}}})
		if err != nil {
			t.Fatal(err)
		}
		if got := psqlAt(t, srv, restoredPort(t, restored), "postgres", "SELECT count(*), max(id) FROM ticks WHERE id <= 61"); got != "60|60" {
			t.Errorf("restored to %s: rows (count|max) %s, want 60|60", lsn, got)
		}
	})

	t.Run("after the newest archived WAL", func(t *testing.T) {
		src, _ := m.Get(ctx, b2)
		_, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew,
			Params: pe.Params{Type: {ParamToTime: time.Now().Add(time.Hour).Format(time.RFC3339)}}})
		if !errors.Is(err, pe.ErrNotSupported) || !strings.Contains(err.Error(), "after the newest archived WAL") {
			t.Fatalf("restore to a time after the archive: %v", err)
		}
	})

	t.Run("before the oldest backup", func(t *testing.T) {
		src, _ := m.Get(ctx, b1)
		before := ticks[0].at.Add(-time.Second)
		_, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew,
			Params: pe.Params{Type: {ParamToTime: before.Format(time.RFC3339Nano)}}})
		if !errors.Is(err, pe.ErrNotSupported) || !strings.Contains(err.Error(), "can be restored to points from") {
			t.Fatalf("restore to before the oldest backup: %v, want a refusal naming the range", err)
		}
		t.Log(err)
		checkNothingLeft(t, m, 4)
	})

	t.Run("gap in the archive", func(t *testing.T) {
		segs, err := filepath.Glob(filepath.Join(archive, "0000000100000000000000??"))
		if err != nil || len(segs) < 4 {
			t.Fatalf("archived segments %v, %v", segs, err)
		}
		sort.Strings(segs)
		missing := segs[len(segs)-2]
		if err := os.Remove(missing); err != nil {
			t.Fatal(err)
		}
		src, _ := m.Get(ctx, b1)
		_, err = m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew,
			Params: pe.Params{Type: {ParamToTime: cases[2].to.Format(time.RFC3339Nano)}}})
		if err == nil || !strings.Contains(err.Error(), filepath.Base(missing)+" is missing") {
			t.Fatalf("restore over a gap: %v, want an error naming %s", err, filepath.Base(missing))
		}
		t.Log(err)
		checkNothingLeft(t, m, 4)
	})
}

// commitTimes reads the ticks and their commit timestamps.
func commitTimes(t *testing.T, srv *pgtest.Server) []tick {
	t.Helper()
	out := srv.Psql(t, "postgres", "SELECT id, to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM ticks ORDER BY id")
	var ticks []tick
	for _, line := range strings.Split(out, "\n") {
		id, at, _ := strings.Cut(line, "|")
		n, err := strconv.Atoi(id)
		if err != nil {
			t.Fatalf("ticks row %q", line)
		}
		tm, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			t.Fatal(err)
		}
		ticks = append(ticks, tick{n, tm})
	}
	return ticks
}

// checkNothingLeft checks that the root holds the restored clusters
// wanted and no temporary entries.
func checkNothingLeft(t *testing.T, m *TypeManager, restored int) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(m.root, clustersDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != restored {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("restored clusters: %v, want %d", names, restored)
	}
}
