package walarchive

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/astrolabe-appliance/astrolabe/pe/pg"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newRepo is an encrypted repository in a directory, with its backend
// for tests that damage it.
func newRepo(t *testing.T) (*repo.Repository, string) {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	be, err := backend.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts := repo.Options{Password: "pw", Logger: quiet()}
	if err := repo.Init(ctx, be, opts); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, dir
}

func clusterOf(s *pgtest.Server, name string) Cluster {
	return Cluster{pg.Cluster{Name: name, Host: s.Host, Port: s.Port, User: pgtest.ReplicationUser, Password: pgtest.Password, SSLMode: "disable"}}
}

// running is a Receiver running until stop.
type running struct {
	rc   *Receiver
	stop func()
}

func startReceiver(t *testing.T, r *repo.Repository, c Cluster, opts ReceiverOptions) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rc := NewReceiver(r, c, quiet(), opts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc.Run(ctx)
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return &running{rc: rc, stop: stop}
}

func connect(t *testing.T, s *pgtest.Server) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), s.ConnString(pgtest.Superuser, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func currentLSN(t *testing.T, conn *pgx.Conn) uint64 {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// switchAndWait closes the server's current segment and waits (at most
// a minute) until the receiver has archived it.
func switchAndWait(t *testing.T, conn *pgx.Conn, rc *Receiver) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	want := currentLSN(t, conn)
	deadline := time.Now().Add(time.Minute)
	for rc.Status().ArchivedLSN < want {
		if time.Now().After(deadline) {
			t.Fatalf("WAL to %s not archived after a minute: %+v", FormatLSN(want), rc.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReceiverUnderLoad archives WAL while pgbench runs, with the
// receiver stopped and started again on the way: the archive holds every
// segment from the first to the last once, and none partial but the end.
func TestReceiverUnderLoad(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	r, _ := newRepo(t)
	c := clusterOf(s, "bench")
	opts := ReceiverOptions{StatusInterval: time.Second, PartialEvery: -1}
	first := startReceiver(t, r, c, opts)
	conn := connect(t, s)
	ctx := context.Background()

	// Lag: the server's end of WAL against the archive's, sampled while
	// pgbench runs.
	type sample struct {
		at       time.Time
		server   uint64
		archived uint64
	}
	var (
		mu      sync.Mutex
		samples []sample
		rc      = first.rc
	)
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		sconn, err := pgx.Connect(ctx, s.ConnString(pgtest.Superuser, "postgres"))
		if err != nil {
			t.Error(err)
			return
		}
		defer sconn.Close(ctx)
		for i := 0; i < 3000; i++ {
			select {
			case <-sampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var lsn string
			if err := sconn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
				t.Error(err)
				return
			}
			l, _ := ParseLSN(lsn)
			mu.Lock()
			samples = append(samples, sample{time.Now(), l, rc.Status().ArchivedLSN})
			mu.Unlock()
		}
	}()

	// The receiver is stopped in the middle of pgbench's load, once it
	// has archived a few segments, and started again.
	load := s.Command("pgbench", "-i", "-q", "-s", "6", "postgres")
	out := &strings.Builder{}
	load.Stdout, load.Stderr = out, out
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loaded := make(chan error, 1)
	go func() { loaded <- load.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for first.rc.Status().Segments < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	first.stop()
	if st := first.rc.Status(); st.Segments < 2 {
		t.Fatalf("%d segments archived under load: %+v", st.Segments, st)
	}
	second := startReceiver(t, r, c, opts)
	mu.Lock()
	rc = second.rc
	mu.Unlock()
	if err := <-loaded; err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	s.Run(t, "pgbench", "-n", "-c", "2", "-t", "3000", "postgres")
	close(sampling)
	<-sampled
	switchAndWait(t, conn, second.rc)
	second.stop()

	files, err := r.WALFiles(ctx, c.Name, second.rc.Status().SystemID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		if f.Partial {
			continue
		}
		names = append(names, f.Name)
	}
	if len(names) < 4 {
		t.Fatalf("only %d segments archived: %v", len(names), names)
	}
	_, start, _ := parseSegmentName(names[0], defaultSegSize)
	for i, n := range names {
		if want := segmentName(1, start+uint64(i)*defaultSegSize, defaultSegSize); n != want {
			t.Fatalf("segment %d is %s, want %s: a gap or a duplicate in %v", i, n, want, names)
		}
	}
	for _, f := range files {
		if f.Partial && f.Name != segmentName(1, start+uint64(len(names))*defaultSegSize, defaultSegSize) {
			t.Errorf("partial segment %s left beside complete ones", f.Name)
		}
	}
	// The archive is WAL PostgreSQL reads: pg_waldump follows its
	// records through every segment staged from it.
	stage := pgtest.OwnedDir(t)
	if _, err := (Source{Repo: r}).Stage(ctx, c.Name, second.rc.Status().SystemID, 1, FormatLSN(start), Target{}, stage); err != nil {
		t.Fatal(err)
	}
	end := start + uint64(len(names))*defaultSegSize
	s.Run(t, "pg_waldump", "-q", "-p", stage, "-t", "1", "-s", FormatLSN(start+defaultSegSize), "-e", FormatLSN(end-1))

	sums, err := Summaries(ctx, r)
	if err != nil || len(sums) != 1 || len(sums[0].Gaps) != 0 || sums[0].Segments != len(names) {
		t.Fatalf("summary: %+v %v", sums, err)
	}
	if sums[0].NewestTime.IsZero() || sums[0].OldestTime.After(sums[0].NewestTime) {
		t.Fatalf("summary times: %+v", sums[0])
	}

	// Lag report: bytes behind at each sample, and how long each
	// sample's end of WAL took to be archived.
	var maxBytes, sumBytes uint64
	var maxDelay, sumDelay time.Duration
	n := 0
	for i, sm := range samples {
		maxBytes = max(maxBytes, sm.server-min(sm.archived, sm.server))
		sumBytes += sm.server - min(sm.archived, sm.server)
		for _, later := range samples[i:] {
			if later.archived >= sm.server {
				d := later.at.Sub(sm.at)
				maxDelay = max(maxDelay, d)
				sumDelay += d
				n++
				break
			}
		}
	}
	t.Logf("lag samples: %d, %d of them archived", len(samples), n)
	if len(samples) > 0 && n > 0 {
		t.Logf("WAL archive lag under pgbench (%d samples, %d segments): bytes behind mean %.1f MiB max %.1f MiB; seconds until archived mean %.2f max %.2f",
			len(samples), len(names), float64(sumBytes)/float64(len(samples))/(1<<20), float64(maxBytes)/(1<<20), sumDelay.Seconds()/float64(n), maxDelay.Seconds())
	}
}

var startLocation = regexp.MustCompile(`START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)`)

// TestPointInTime restores a pg_basebackup of a server to a time between
// rows written one per 100 ms from WAL staged from the repository: the
// rows committed at or before it are there, no others.
func TestPointInTime(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{Settings: []string{"track_commit_timestamp = on"}})
	r, repoDir := newRepo(t)
	c := clusterOf(s, "pitr")
	rcv := startReceiver(t, r, c, ReceiverOptions{StatusInterval: time.Second, PartialEvery: -1})
	conn := connect(t, s)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "CREATE TABLE ticks (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	insert := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := conn.Exec(ctx, "INSERT INTO ticks VALUES ($1)", i); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	insert(0, 5)

	backupDir := pgtest.OwnedDir(t)
	s.Run(t, "pg_basebackup", "-h", s.Host, "-p", strconv.Itoa(s.Port), "-U", pgtest.ReplicationUser,
		"-D", filepath.Join(backupDir, "base"), "-Ft", "-X", "none", "--no-sync", "-c", "fast")
	insert(5, 30)
	var lsnAfter string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsnAfter); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, conn, rcv.rc)

	commits := map[int]time.Time{}
	rows, err := conn.Query(ctx, "SELECT id, pg_xact_commit_timestamp(xmin) FROM ticks ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int
		var ts time.Time
		if err := rows.Scan(&id, &ts); err != nil {
			t.Fatal(err)
		}
		commits[id] = ts
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	target := commits[17].Add(50 * time.Millisecond)
	var want []int
	for id, ts := range commits {
		if !ts.After(target) {
			want = append(want, id)
		}
	}
	slices.Sort(want)

	// The backup's start, from its backup_label.
	label, err := exec.Command("tar", "-xOf", filepath.Join(backupDir, "base", "base.tar"), "backup_label").Output()
	if err != nil {
		t.Fatalf("backup_label: %v", err)
	}
	m := startLocation.FindSubmatch(label)
	if m == nil {
		t.Fatalf("backup_label without a start: %s", label)
	}
	startLSN, startSeg := string(m[1]), string(m[2])
	sysID := rcv.rc.Status().SystemID
	src := Source{Repo: r}
	oldest, newest, err := src.Range(ctx, c.Name, sysID)
	if err != nil || newest.Before(commits[29]) || newest.After(time.Now()) || oldest.After(commits[5]) {
		t.Fatalf("range %s to %s (%v), want it to hold %s", oldest, newest, err, target)
	}
	if _, err := src.Stage(ctx, c.Name, sysID, 1, startLSN, Target{Time: newest.Add(time.Second)}, pgtest.OwnedDir(t)); err == nil || !strings.Contains(err.Error(), "needs a transaction archived after that time") {
		t.Fatalf("a target after the archive: %v", err)
	}

	// To an LSN: through the segment that holds it.
	byLSN := pgtest.OwnedDir(t)
	if _, err := src.Stage(ctx, c.Name, sysID, 1, startLSN, Target{LSN: lsnAfter}, byLSN); err != nil {
		t.Fatal(err)
	}
	staged, _ := filepath.Glob(filepath.Join(byLSN, "0*"))
	lsn, _ := ParseLSN(lsnAfter)
	if len(staged) == 0 || filepath.Base(staged[len(staged)-1]) != segmentName(1, lsn, defaultSegSize) {
		t.Fatalf("staged to %s: %v", lsnAfter, staged)
	}

	stage := pgtest.OwnedDir(t)
	cmd, err := src.Stage(ctx, c.Name, sysID, 1, startLSN, Target{Time: target}, stage)
	if err != nil {
		t.Fatal(err)
	}
	staged, _ = filepath.Glob(filepath.Join(stage, "0*"))
	if len(staged) == 0 || filepath.Base(staged[0]) != startSeg {
		t.Fatalf("staged %v, want from %s", staged, startSeg)
	}

	data := filepath.Join(pgtest.OwnedDir(t), "data")
	runAs(t, "mkdir", "-m", "0700", data)
	runAs(t, "tar", "-xf", filepath.Join(backupDir, "base", "base.tar"), "-C", data)
	runAs(t, "touch", filepath.Join(data, "recovery.signal"))
	restored := pgtest.StartDataDir(t, data,
		"restore_command = '"+strings.ReplaceAll(cmd, "'", "''")+"'",
		"recovery_target_time = '"+target.UTC().Format("2006-01-02 15:04:05.999999")+"+00'",
		"recovery_target_action = 'promote'")
	restored.WaitReady(t, time.Minute)
	var got []int
	deadline := time.Now().Add(time.Minute)
	for {
		// Promotion follows the end of recovery.
		if restored.Psql(t, "postgres", "SELECT pg_is_in_recovery()") == "f" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restored server did not promote within a minute")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, f := range strings.Fields(restored.Psql(t, "postgres", "SELECT id FROM ticks ORDER BY id")) {
		id, _ := strconv.Atoi(f)
		got = append(got, id)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("restored to %s: rows %v, want %v", target, got, want)
	}

	// A segment the replay needs, removed from the repository (with one
	// archived after it): staging names it, and the summary the gap.
	insert(30, 31)
	switchAndWait(t, conn, rcv.rc)
	_, start, _ := parseSegmentName(startSeg, defaultSegSize)
	missing := segmentName(1, start+defaultSegSize, defaultSegSize)
	if err := os.Remove(filepath.Join(repoDir, "wal", c.Name, fmt.Sprint(sysID), missing)); err != nil {
		t.Fatal(err)
	}
	_, err = src.Stage(ctx, c.Name, sysID, 1, startLSN, Target{Time: target}, pgtest.OwnedDir(t))
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("staging past a removed segment: %v, want an error naming %s", err, missing)
	}
	sums, err := Summaries(ctx, r)
	if err != nil || len(sums) != 1 || len(sums[0].Gaps) != 1 || !strings.HasPrefix(sums[0].Gaps[0], missing) {
		t.Fatalf("summary after a segment was removed: %+v %v", sums, err)
	}
}

// runAs runs a command as the servers' account.
func runAs(t *testing.T, prog string, args ...string) {
	t.Helper()
	out, err := exec.Command("runuser", append([]string{"-u", pgtest.OSUser, "--", prog}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", prog, args, err, out)
	}
}

// TestSlotInvalidated: WAL removed from the server before it was
// archived (the slot invalidated by max_slot_wal_keep_size while the
// receiver was down) is reported as a gap, and archiving goes on with a
// new slot.
func TestSlotInvalidated(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{Settings: []string{"max_slot_wal_keep_size = '16MB'", "min_wal_size = '32MB'", "max_wal_size = '64MB'"}})
	r, _ := newRepo(t)
	c := clusterOf(s, "lossy")
	opts := ReceiverOptions{StatusInterval: time.Second, PartialEvery: 100 * time.Millisecond}
	first := startReceiver(t, r, c, opts)
	conn := connect(t, s)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "CREATE TABLE filler (n int)"); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, conn, first.rc)
	// A partial segment is stored while the segment is being written.
	if _, err := conn.Exec(ctx, "INSERT INTO filler SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	sysID := first.rc.Status().SystemID
	deadline := time.Now().Add(time.Minute)
	for {
		files, err := r.WALFiles(ctx, c.Name, sysID)
		if err != nil {
			t.Fatal(err)
		}
		if len(files) > 0 && files[len(files)-1].Partial && files[len(files)-1].Size > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no partial segment stored within a minute: %+v", files)
		}
		time.Sleep(50 * time.Millisecond)
	}
	first.stop()

	for range 5 {
		if _, err := conn.Exec(ctx, "INSERT INTO filler SELECT generate_series(1, 1000)"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	var walStatus string
	if err := conn.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", SlotName(c.Name)).Scan(&walStatus); err != nil {
		t.Fatal(err)
	}
	if walStatus != "lost" {
		t.Fatalf("slot's wal_status %q, want lost", walStatus)
	}

	second := startReceiver(t, r, c, opts)
	if _, err := conn.Exec(ctx, "INSERT INTO filler SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, conn, second.rc)
	if st := second.rc.Status(); len(st.Gaps) != 1 {
		t.Fatalf("receiver status after the slot was lost: %+v, want one gap", st)
	}
	sums, err := Summaries(ctx, r)
	if err != nil || len(sums) != 1 || len(sums[0].Gaps) == 0 {
		t.Fatalf("summary after the slot was lost: %+v %v, want the gap", sums, err)
	}
	t.Logf("gaps: %v", sums[0].Gaps)
}

// TestTimelineSwitch archives a standby's WAL across its promotion: the
// stream of timeline 1 ends, the receiver goes on with timeline 2 and
// its history file, and the archive has no gap.
func TestTimelineSwitch(t *testing.T) {
	primary := pgtest.Start(t, pgtest.Options{})
	data := filepath.Join(pgtest.OwnedDir(t), "data")
	primary.Run(t, "pg_basebackup", "-h", primary.Host, "-p", strconv.Itoa(primary.Port), "-U", pgtest.ReplicationUser,
		"-D", data, "-Fp", "-X", "stream", "-R", "--no-sync", "-c", "fast")
	standby := pgtest.StartDataDir(t, data)
	standby.WaitReady(t, time.Minute)

	r, _ := newRepo(t)
	c := clusterOf(standby, "standby")
	rcv := startReceiver(t, r, c, ReceiverOptions{StatusInterval: time.Second, PartialEvery: -1})
	pconn := connect(t, primary)
	ctx := context.Background()
	if _, err := pconn.Exec(ctx, "CREATE TABLE before_promotion AS SELECT generate_series(1, 1000) AS n"); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, pconn, rcv.rc)

	standby.Run(t, "pg_ctl", "-D", data, "-w", "-t", "60", "promote")
	sconn := connect(t, standby)
	if _, err := sconn.Exec(ctx, "CREATE TABLE after_promotion AS SELECT generate_series(1, 1000) AS n"); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, sconn, rcv.rc)
	rcv.stop()

	st := rcv.rc.Status()
	if st.Timeline != 2 || len(st.Gaps) != 0 {
		t.Fatalf("status after the promotion: %+v", st)
	}
	files, err := r.WALFiles(ctx, c.Name, st.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	if !slices.Contains(names, "00000002.history") {
		t.Fatalf("no history file of timeline 2 in %v", names)
	}
	sums, err := Summaries(ctx, r)
	if err != nil || len(sums) != 1 || sums[0].Timeline != 2 || len(sums[0].Gaps) != 0 || !strings.HasPrefix(sums[0].Newest, "00000002") {
		t.Fatalf("summary: %+v %v (files %v)", sums, err, names)
	}
	t.Logf("archived across the promotion: %v", names)
}

// TestFailoverToLaggingStandby: the primary's WAL is archived well past
// where an asynchronous standby stopped; the standby is promoted and
// becomes the cluster. Its timeline 2 from the switch point on is
// archived (not resumed past, from the old primary's segments), the
// archive reports no gap, and a replay along timeline 2 can be staged.
func TestFailoverToLaggingStandby(t *testing.T) {
	primary := pgtest.Start(t, pgtest.Options{})
	data := filepath.Join(pgtest.OwnedDir(t), "data")
	primary.Run(t, "pg_basebackup", "-h", primary.Host, "-p", strconv.Itoa(primary.Port), "-U", pgtest.ReplicationUser,
		"-D", data, "-Fp", "-X", "stream", "-R", "--no-sync", "-c", "fast")
	standby := pgtest.StartDataDir(t, data)
	standby.WaitReady(t, time.Minute)
	standby.Stop(t)

	r, _ := newRepo(t)
	ctx := context.Background()
	c := clusterOf(primary, "main")
	opts := ReceiverOptions{StatusInterval: time.Second, PartialEvery: -1}
	first := startReceiver(t, r, c, opts)
	pconn := connect(t, primary)
	start := currentLSN(t, pconn)
	if _, err := pconn.Exec(ctx, "CREATE TABLE t (n int)"); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := pconn.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 100)"); err != nil {
			t.Fatal(err)
		}
		switchAndWait(t, pconn, first.rc)
	}
	primaryEnd := first.rc.Status().ArchivedLSN
	first.stop()
	pconn.Close(ctx)
	primary.Stop(t)

	standby.Restart(t)
	standby.Run(t, "pg_ctl", "-D", data, "-w", "-t", "60", "promote")
	sconn := connect(t, standby)
	if _, err := sconn.Exec(ctx, "CREATE TABLE after_failover AS SELECT generate_series(1, 1000) AS n"); err != nil {
		t.Fatal(err)
	}
	var switchText string
	if err := sconn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&switchText); err != nil {
		t.Fatal(err)
	}
	c = clusterOf(standby, "main")
	second := startReceiver(t, r, c, opts)
	switchAndWait(t, sconn, second.rc)
	second.stop()

	st := second.rc.Status()
	sums, err := Summaries(ctx, r)
	if err != nil || len(sums) != 1 {
		t.Fatalf("summaries: %+v %v", sums, err)
	}
	files, err := r.WALFiles(ctx, c.Name, st.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	t.Logf("primary archived to %s; archive: %v; status gaps %v; summary gaps %v", FormatLSN(primaryEnd), names, st.Gaps, sums[0].Gaps)
	if st.Timeline != 2 || len(st.Gaps) != 0 || len(sums[0].Gaps) != 0 {
		t.Fatalf("after the failover: status %+v, summary %+v: want timeline 2 archived from its switch point without a gap", st, sums[0])
	}
	// Every segment of timeline 2 from the switch point's on is there.
	sw, err := parseHistory(mustReadWAL(t, r, c.Name, st.SystemID, "00000002.history"))
	if err != nil || len(sw) != 1 {
		t.Fatalf("history of timeline 2: %v %v", sw, err)
	}
	if sw[0].end >= primaryEnd {
		t.Fatalf("the standby was promoted at %s, not behind the primary's archive end %s: the test proves nothing", FormatLSN(sw[0].end), FormatLSN(primaryEnd))
	}
	segSize := uint64(16 << 20)
	for pos := sw[0].end - sw[0].end%segSize; pos < st.ArchivedLSN; pos += segSize {
		if name := segmentName(2, pos, segSize); !slices.Contains(names, name) {
			t.Fatalf("segment %s of timeline 2 not archived: %v", name, names)
		}
	}
	if _, err := (Source{Repo: r}).Stage(ctx, c.Name, st.SystemID, 1, FormatLSN(start), Target{}, pgtest.OwnedDir(t)); err != nil {
		t.Fatalf("stage along timeline 2: %v", err)
	}
}

func mustReadWAL(t *testing.T, r *repo.Repository, cluster string, systemID uint64, name string) []byte {
	t.Helper()
	_, b, err := r.ReadWAL(context.Background(), cluster, systemID, name, false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStageFollowsNoLink: the staging directory belongs to the restored
// server's account, which may plant links in it; Stage (run as root)
// neither writes through them nor changes their targets' owners.
func TestStageFollowsNoLink(t *testing.T) {
	r, _ := newRepo(t)
	ctx := context.Background()
	const segSize = 1 << 20
	for pos := uint64(segSize); pos < 3*segSize; pos += segSize {
		seg := make([]byte, segSize)
		seg[0] = byte(pos >> 20)
		f := repo.WALFile{Cluster: "c", SystemID: 1, Name: segmentName(1, pos, segSize), StartLSN: pos, EndLSN: pos + segSize}
		if _, err := r.PutWAL(ctx, f, seg); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root's"), 0o600); err != nil {
		t.Fatal(err)
	}
	stage := pgtest.OwnedDir(t)
	if err := os.Symlink(secret, filepath.Join(stage, segmentName(1, 2*segSize, segSize))); err != nil {
		t.Fatal(err)
	}
	_, err := (Source{Repo: r}).Stage(ctx, "c", 1, 1, FormatLSN(segSize), Target{}, stage)
	if err == nil {
		t.Fatal("staged over a planted link")
	}
	b, rerr := os.ReadFile(secret)
	st, serr := os.Stat(secret)
	if rerr != nil || serr != nil || string(b) != "root's" || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("the link's target was written or given away: %q %v %v", b, rerr, serr)
	}
	t.Logf("refused: %v", err)

	// The directory itself a link: refused too.
	link := filepath.Join(t.TempDir(), "wal")
	if err := os.Symlink(pgtest.OwnedDir(t), link); err != nil {
		t.Fatal(err)
	}
	if _, err := (Source{Repo: r}).Stage(ctx, "c", 1, 1, FormatLSN(segSize), Target{}, link); err == nil {
		t.Fatal("staged into a linked directory")
	}
	// A clean directory gets both segments, owned by its owner.
	clean := pgtest.OwnedDir(t)
	if _, err := (Source{Repo: r}).Stage(ctx, "c", 1, 1, FormatLSN(segSize), Target{}, clean); err != nil {
		t.Fatal(err)
	}
	dst, _ := os.Stat(clean)
	for _, name := range []string{segmentName(1, segSize, segSize), segmentName(1, 2*segSize, segSize)} {
		st, err := os.Stat(filepath.Join(clean, name))
		if err != nil || st.Size() != segSize || st.Sys().(*syscall.Stat_t).Uid != dst.Sys().(*syscall.Stat_t).Uid {
			t.Fatalf("staged %s: %v %v", name, st, err)
		}
	}
}

// TestLoadClusters: pg.pe.json is read as the pg PE reads it: strictly,
// and the password is the first line of its file.
func TestLoadClusters(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "pes"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pgpass"), []byte("first\nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(cfg string) {
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"root": "/srv/pg", "clusters": [{"name": "main", "host": "127.0.0.1", "user": "astrolabe", "passwordFile": "pgpass"}]}`)
	cl, err := LoadClusters(dir)
	if err != nil || len(cl) != 1 {
		t.Fatalf("clusters: %v %v", cl, err)
	}
	cs, err := cl[0].connString()
	if err != nil || !strings.Contains(cs, "password='first'") || strings.Contains(cs, "second") {
		t.Fatalf("connection string %q %v: want the password file's first line", cs, err)
	}
	write(`{"root": "/srv/pg", "clusters": [{"name": "main", "host": "127.0.0.1", "user": "astrolabe", "pasword": "typo"}]}`)
	if _, err := LoadClusters(dir); err == nil || !strings.Contains(err.Error(), "pasword") {
		t.Fatalf("unknown field: %v", err)
	}
}
