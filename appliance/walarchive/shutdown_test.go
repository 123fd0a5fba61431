package walarchive

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// TestFastShutdownWhileStreaming: a server whose WAL a receiver archives
// stops promptly (its walsender waits until the receiver confirms all it
// sent), the archive then holds its WAL to the end of the shutdown
// checkpoint, and after the server starts again the receiver goes on
// without gap or conflict.
func TestFastShutdownWhileStreaming(t *testing.T) {
	s := pgtest.Start(t, pgtest.Options{})
	r, _ := newRepo(t)
	c := clusterOf(s, "halt")
	rcv := startReceiver(t, r, c, ReceiverOptions{StatusInterval: time.Second, PartialEvery: -1, Retry: 100 * time.Millisecond})
	conn := connect(t, s)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	end := currentLSN(t, conn)
	deadline := time.Now().Add(time.Minute)
	for rcv.rc.Status().ReceivedLSN < end {
		if time.Now().After(deadline) {
			t.Fatalf("WAL to %s not received after a minute: %+v", FormatLSN(end), rcv.rc.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn.Close(ctx)

	// Without the receiver's confirmation pg_ctl gives up after 30 s.
	if out, err := s.Command("pg_ctl", "-D", s.DataDir, "-m", "fast", "-w", "-t", "30", "stop").CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl stop while the receiver streams: %v\n%s", err, out)
	}
	control := s.Run(t, "pg_controldata", "-D", s.DataDir)
	m := regexp.MustCompile(`Latest checkpoint location:\s+(\S+)`).FindStringSubmatch(control)
	if m == nil {
		t.Fatalf("no checkpoint location in pg_controldata's output:\n%s", control)
	}
	ckpt, err := ParseLSN(m[1])
	if err != nil {
		t.Fatal(err)
	}
	st := rcv.rc.Status()
	name := segmentName(st.Timeline, ckpt, defaultSegSize)
	onServer, err := os.ReadFile(filepath.Join(s.DataDir, "pg_wal", name))
	if err != nil {
		t.Fatal(err)
	}
	off := ckpt % defaultSegSize
	recordEnd := ckpt + uint64(binary.LittleEndian.Uint32(onServer[off:])) // xl_tot_len
	f, partial, err := r.ReadWAL(ctx, c.Name, st.SystemID, name, true)
	if err != nil {
		t.Fatalf("segment of the shutdown checkpoint at %s: %v", FormatLSN(ckpt), err)
	}
	if !f.Partial || f.EndLSN < recordEnd {
		t.Fatalf("archive holds %s to %s (partial %v), the shutdown checkpoint ends at %s", name, FormatLSN(f.EndLSN), f.Partial, FormatLSN(recordEnd))
	}
	if !bytes.Equal(partial, onServer[:len(partial)]) {
		t.Fatalf("partial %s differs from the server's segment", name)
	}

	s.Restart(t)
	conn = connect(t, s)
	if _, err := conn.Exec(ctx, "INSERT INTO t SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	switchAndWait(t, conn, rcv.rc)
	st = rcv.rc.Status()
	if len(st.Gaps) > 0 || st.Error != "" {
		t.Fatalf("receiver after the restart: %+v", st)
	}
	files, err := r.WALFiles(ctx, c.Name, st.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.Name == name && f.Partial {
			t.Errorf("partial %s left beside its complete segment", name)
		}
	}
	complete := mustReadWAL(t, r, c.Name, st.SystemID, name)
	if !bytes.Equal(complete[:len(partial)], partial) {
		t.Fatalf("complete %s does not extend the partial one stored at the shutdown", name)
	}
}
