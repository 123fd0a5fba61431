package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// clientWrite is what a test's NBD client writes into an instant
// restore's export: a pattern byte over [off, off+n).
type clientWrite struct {
	off, n  int64
	pattern byte
}

// qemuIO is qemu-io's -c commands that make ws and flush them.
func qemuIO(ws ...clientWrite) []string {
	var args []string
	for _, w := range ws {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d %d", w.pattern, w.off, w.n))
	}
	return append(args, "-c", "flush")
}

// apply returns img with ws made.
func apply(img []byte, ws ...clientWrite) []byte {
	out := bytes.Clone(img)
	for _, w := range ws {
		for i := range w.n {
			out[w.off+i] = w.pattern
		}
	}
	return out
}

func needQemuIO(t *testing.T) {
	t.Helper()
	needNBDTools(t)
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Fatal("qemu-io missing: apt-get install -y qemu-utils")
	}
}

// qemuSession is a qemu-io that stays connected to an export: commands
// go to its stdin one by one.
type qemuSession struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *syncBuffer
	sent int
}

func startQemuSession(t *testing.T, args ...string) *qemuSession {
	t.Helper()
	q := &qemuSession{cmd: exec.Command("qemu-io", args...), out: &syncBuffer{}}
	q.cmd.Stdout, q.cmd.Stderr = q.out, q.out
	var err error
	if q.in, err = q.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.cmd.Process.Kill(); q.cmd.Wait() })
	return q
}

// run makes qemu-io run command and waits until it did: it prompts for
// the next one.
func (q *qemuSession) run(t *testing.T, command string) {
	t.Helper()
	q.sent++
	fmt.Fprintln(q.in, command)
	for range 1000 {
		if strings.Count(q.out.String(), "qemu-io> ") > q.sent {
			if strings.Contains(q.out.String(), "failed") || strings.Contains(q.out.String(), "error") {
				t.Fatalf("qemu-io %s:\n%s", command, q.out)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("qemu-io did not do %s in 20 s:\n%s", command, q.out)
}

// writeSparseDisk writes a disk image of size bytes to path: random data
// in runs of 8 MiB every 16 MiB (half of it), holes between. It returns
// the image and its data bytes.
func writeSparseDisk(t *testing.T, path string, size int64) ([]byte, int64) {
	t.Helper()
	const run, stride = 8 * mib, 16 * mib
	img := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{18})
	var data int64
	for off := int64(0); off < size; off += stride {
		n := min(run, size-off)
		rng.Read(img[off : off+n])
		data += n
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < size; off += stride {
		if _, err := f.WriteAt(img[off:off+min(run, size-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	return img, data
}

// leftOverlays lists what is left in a config directory's overlays.
func leftOverlays(cfg string) []string {
	names, _ := filepath.Glob(filepath.Join(cfg, "state", "overlays", "*"))
	return names
}

// instantCLI is a running 'astrolabe restore --instant'.
type instantCLI struct {
	cmd    *exec.Cmd
	start  time.Time
	lines  chan stampedLine // stdout, line by line
	stderr *syncBuffer
	done   chan error
}

func startInstantCLI(t *testing.T, cfg string, args ...string) *instantCLI {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, astrolabeBin, append([]string{"--config", cfg, "restore", "--instant", "--listen", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r := &instantCLI{cmd: cmd, lines: make(chan stampedLine, 16), stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = r.stderr
	r.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); <-r.done })
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			r.lines <- stampedLine{sc.Text(), time.Since(r.start)}
		}
		close(r.lines)
		r.done <- cmd.Wait()
		close(r.done)
	}()
	return r
}

// stampedLine is a line the command printed and when, since its start.
type stampedLine struct {
	text string
	at   time.Duration
}

// line waits for the next line the command prints on stdout.
func (r *instantCLI) line(t *testing.T, what string) stampedLine {
	t.Helper()
	select {
	case l, ok := <-r.lines:
		if !ok {
			t.Fatalf("restore --instant ended before it printed %s; stderr:\n%s", what, r.stderr)
		}
		return l
	case <-time.After(2 * time.Minute):
		t.Fatalf("restore --instant did not print %s in 2 minutes; stderr:\n%s", what, r.stderr)
	}
	return stampedLine{}
}

// stderrSays waits a little for what the command printed on stderr
// before the line it printed on stdout, copied apart.
func (r *instantCLI) stderrSays(text string) bool {
	for range 100 {
		if strings.Contains(r.stderr.String(), text) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// interrupt sends SIGINT and returns the exit code.
func (r *instantCLI) interrupt(t *testing.T) int {
	t.Helper()
	r.cmd.Process.Signal(os.Interrupt)
	for range r.lines {
	}
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		t.Fatalf("restore --instant did not end a minute after SIGINT; stderr:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr.String(), "panic") || strings.Contains(r.stderr.String(), "goroutine ") {
		t.Fatalf("restore --instant printed a Go trace:\n%s", r.stderr)
	}
	return r.cmd.ProcessState.ExitCode()
}

// TestInstantRestoreCLI: restore --instant serves the new PE at once;
// a client reads the snapshot's bytes and writes through the export
// while it is filled; the PE ends up as the snapshot with the writes,
// its holes still holes. Interrupted before it is full, the restore
// removes the PE. Bad input is refused before a PE is made.
func TestInstantRestoreCLI(t *testing.T) {
	needQemuIO(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	const size = 128 * mib
	img, data := writeSparseDisk(t, filepath.Join(cfg, "disk", "big.img"), size)
	// Restores read the repository at 32 MiB/s: the fill of the data
	// takes about 2 s.
	const rate = 32 * mib
	direct, rf := slowS3Repo(t, cfg, rate)
	snap := mustRun(t, cfg, append([]string{"backup", "disk:big.img"}, direct...)...).lastLine()

	start := time.Now()
	plain := mustRun(t, cfg, append([]string{"restore", snap, "--to", "disk:plain.img"}, rf...)...).lastLine()
	plainTook := time.Since(start)
	if got, _ := os.ReadFile(filepath.Join(cfg, "disk", "plain.img")); plain != "disk:plain.img" || !bytes.Equal(got, img) {
		t.Fatalf("plain restore made %s, not the snapshot's bytes", plain)
	}

	r := startInstantCLI(t, cfg, append([]string{snap, "--to", "disk:NEW"}, rf...)...)
	first := r.line(t, "the NBD URI")
	uri, toURI := first.text, first.at
	if !strings.HasPrefix(uri, "nbd://127.0.0.1:") || strings.Contains(r.stderr.String(), "restored ") {
		t.Fatalf("first line %q (want the nbd:// URI before the restore is done); stderr:\n%s", uri, r.stderr)
	}
	t.Logf("%d MiB snapshot (%d MiB data) from S3 at %d MiB/s: instant restore served it after %v; plain restore took %v",
		size/mib, data/mib, rate/mib, toURI.Round(time.Millisecond), plainTook.Round(time.Millisecond))

	// One write into a hole, one across data and a hole, not aligned;
	// one more through a connection that stays open across the end of
	// the fill.
	writes := []clientWrite{{8*mib + 12345, 100000, 0x5a}, {32*mib - 4000, 70000, 0xa5}}
	want := apply(img, writes...)
	runTool(t, "qemu-io", append(append([]string{"-f", "raw"}, qemuIO(writes...)...), uri)...)
	session := startQemuSession(t, "-f", "raw", uri)
	during := clientWrite{40*mib + 1, 3000, 0x3c}
	session.run(t, fmt.Sprintf("write -P 0x%02x %d %d", during.pattern, during.off, during.n))
	want = apply(want, during)
	read := filepath.Join(dir, "read.img")
	runTool(t, "nbdcopy", uri, read)
	readDone := time.Since(r.start)
	if got, _ := os.ReadFile(read); !bytes.Equal(got, want) {
		t.Errorf("nbdcopy read of the live export differs from the snapshot with the writes")
	}
	second := r.line(t, "the restored PE's ID")
	id, filled := second.text, second.at
	t.Logf("the client wrote and read the whole export %v after the start, the fill ended after %v", readDone.Round(time.Millisecond), filled.Round(time.Millisecond))
	if id != "disk:NEW" || !r.stderrSays("restored "+snap+" as disk:NEW") {
		t.Fatalf("printed %q after the URI; stderr:\n%s", id, r.stderr)
	}
	newPath := filepath.Join(cfg, "disk", "NEW")
	if got, _ := os.ReadFile(newPath); !bytes.Equal(got, want) {
		t.Errorf("disk/NEW differs from the snapshot with the client's writes")
	}
	alloc := allocated(t, newPath)
	t.Logf("filled %v after the start; disk/NEW: %d MiB, %.1f MiB allocated (%d MiB data)", filled.Round(time.Millisecond), size/mib, float64(alloc)/mib, data/mib)
	if alloc < data || alloc > data+4*mib {
		t.Errorf("disk/NEW allocates %d bytes, want about the data's %d (holes kept)", alloc, data)
	}
	// Once full it serves the PE itself, writes too; the client
	// connected during the fill stays connected.
	after := []clientWrite{{size - 512, 512, 0x77}, {48 * mib, 65536, 0x78}}
	runTool(t, "qemu-io", append(append([]string{"-f", "raw"}, qemuIO(after[0])...), uri)...)
	session.run(t, fmt.Sprintf("read -P 0x%02x %d %d", during.pattern, during.off, during.n))
	session.run(t, fmt.Sprintf("write -P 0x%02x %d %d", after[1].pattern, after[1].off, after[1].n))
	session.run(t, "flush")
	fmt.Fprintln(session.in, "quit")
	if err := session.cmd.Wait(); err != nil {
		t.Errorf("qemu-io connected across the end of the fill: %v\n%s", err, session.out)
	}
	runTool(t, "nbdcopy", uri, read)
	want = apply(want, after...)
	if got, _ := os.ReadFile(read); !bytes.Equal(got, want) {
		t.Errorf("the export of the filled PE does not read as the snapshot with the writes")
	}
	if code := r.interrupt(t); code != 0 {
		t.Fatalf("SIGINT after the fill: exit %d; stderr:\n%s", code, r.stderr)
	}
	if got, _ := os.ReadFile(newPath); !bytes.Equal(got, want) {
		t.Errorf("disk/NEW after SIGINT lacks the writes")
	}
	if left := leftOverlays(cfg); len(left) != 0 {
		t.Errorf("overlays left after the restore: %v", left)
	}

	// Interrupted before it is full: the PE goes.
	r = startInstantCLI(t, cfg, append([]string{snap, "--to", "disk:NEW2"}, rf...)...)
	uri = r.line(t, "the NBD URI").text
	runTool(t, "qemu-io", append(append([]string{"-f", "raw"}, qemuIO(writes...)...), uri)...)
	code := r.interrupt(t)
	if _, err := os.Stat(filepath.Join(cfg, "disk", "NEW2")); code == 0 || !os.IsNotExist(err) || !strings.Contains(r.stderr.String(), "removed") {
		t.Errorf("SIGINT before the fill ended: exit %d, disk/NEW2: %v; stderr:\n%s", code, err, r.stderr)
	}
	if left := leftOverlays(cfg); len(left) != 0 {
		t.Errorf("overlays left after the aborted restore: %v", left)
	}

	// Killed -9 before it is full: nothing can remove the PE, so it must
	// say it is unfinished rather than look whole: a snapshot (hence a
	// backup) of it is refused, and a full restore over it mends it.
	r = startInstantCLI(t, cfg, append([]string{snap, "--to", "disk:NEW3"}, rf...)...)
	r.line(t, "the NBD URI")
	r.cmd.Process.Kill()
	<-r.done
	if _, err := os.Stat(filepath.Join(cfg, "disk", "NEW3")); err != nil {
		t.Fatalf("disk/NEW3 after kill -9: %v", err)
	}
	// Its overlay stays until a 'serve' of this config sweeps the ones no
	// export records (a restore --instant must not: a stopped appliance's
	// overlays are unheld too).
	left := leftOverlays(cfg)
	if len(left) != 1 {
		t.Fatalf("overlays after kill -9: %v, want the killed restore's", left)
	}
	if err := os.RemoveAll(left[0]); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"snap", "disk:NEW3"}, append([]string{"backup", "disk:NEW3"}, direct...)} {
		res := runBinaryWithin(t, "", time.Minute, append([]string{"--config", cfg}, args...)...)
		if res.code == 0 || !strings.Contains(res.stderr, "has not finished") {
			t.Errorf("astrolabe %v of a PE whose instant restore was killed: exit %d, stderr %q (want a refusal saying it has not finished)", args, res.code, res.stderr)
		}
	}
	mustRun(t, cfg, append([]string{"restore", snap, "--to", "disk:NEW3", "--mode", "update"}, rf...)...)
	if got, _ := os.ReadFile(filepath.Join(cfg, "disk", "NEW3")); !bytes.Equal(got, img) {
		t.Errorf("disk/NEW3 after a full restore over the unfinished one differs from the snapshot")
	}
	mustRun(t, cfg, "snap", "disk:NEW3")

	t.Run("BadInput", func(t *testing.T) {
		fsSnap := mustRun(t, cfg, append([]string{"backup", "fs:sample"}, direct...)...).lastLine()
		before := mustRun(t, cfg, "ls", "disk").stdout + mustRun(t, cfg, "ls", "fs").stdout
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{snap, "--mode", "update"}, "create or create_new"},
			{[]string{snap, "--to", "disk:big.img", "--mode", "update"}, "create or create_new"},
			{[]string{fsSnap}, "cannot be written in place"},
			{[]string{snap, "--to", "disk:big.img"}, "exists"},
			{[]string{snap, "--listen", "0.0.0.0:0"}, "not loopback"},
			{[]string{snap, "--listen", "[::]:0"}, "not loopback"},
		} {
			args := append(append([]string{"restore", "--instant"}, c.args...), rf...)
			res := runBinaryWithin(t, "", time.Minute, append([]string{"--config", cfg}, args...)...)
			if res.code == 0 || !strings.Contains(res.stderr, c.want) || res.stdout != "" {
				t.Errorf("astrolabe %v: exit %d, stdout %q, stderr %q (want a failure saying %q)", c.args, res.code, res.stdout, res.stderr, c.want)
			}
		}
		if after := mustRun(t, cfg, "ls", "disk").stdout + mustRun(t, cfg, "ls", "fs").stdout; after != before {
			t.Errorf("bad instant restores changed the PEs:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if got, _ := os.ReadFile(filepath.Join(cfg, "disk", "big.img")); !bytes.Equal(got, img) {
			t.Errorf("a refused instant restore changed disk:big.img")
		}
		if left := leftOverlays(cfg); len(left) != 0 {
			t.Errorf("overlays left after bad instant restores: %v", left)
		}
	})
}

// throttle is a TCP proxy on 127.0.0.1 that passes what its upstream
// answers at rate bytes a second in all: a repository in S3 behind it is
// slow enough that a live restore's fill takes seconds.
type throttle struct {
	l        net.Listener
	upstream string
	rate     int64

	mu    sync.Mutex
	next  time.Time // when the next byte may pass
	conns map[net.Conn]bool
}

func startThrottle(t *testing.T, upstream string, rate int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	th := &throttle{l: l, upstream: upstream, rate: rate, conns: map[net.Conn]bool{}}
	go th.serve()
	t.Cleanup(th.close)
	return l.Addr().String()
}

func (th *throttle) serve() {
	for {
		c, err := th.l.Accept()
		if err != nil {
			return
		}
		go th.pipe(c)
	}
}

func (th *throttle) track(c net.Conn, on bool) {
	th.mu.Lock()
	defer th.mu.Unlock()
	if on {
		th.conns[c] = true
	} else {
		delete(th.conns, c)
	}
}

func (th *throttle) close() {
	th.l.Close()
	th.mu.Lock()
	defer th.mu.Unlock()
	for c := range th.conns {
		c.Close()
	}
}

// wait blocks until n more bytes may pass.
func (th *throttle) wait(n int) {
	th.mu.Lock()
	now := time.Now()
	if th.next.Before(now) {
		th.next = now
	}
	th.next = th.next.Add(time.Duration(int64(n) * int64(time.Second) / th.rate))
	d := th.next.Sub(now)
	th.mu.Unlock()
	time.Sleep(d)
}

func (th *throttle) pipe(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", th.upstream)
	if err != nil {
		return
	}
	defer up.Close()
	th.track(c, true)
	th.track(up, true)
	defer th.track(c, false)
	defer th.track(up, false)
	go func() {
		io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			th.wait(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// slowS3Repo makes a repository in a versitygw bucket and returns the
// flags that name it directly and through a throttle of rate bytes a
// second.
func slowS3Repo(t *testing.T, cfg string, rate int64) (direct, slow []string) {
	t.Helper()
	s3 := startVersitygw(t)
	const bucketPrefix = "/backups/astrolabe"
	direct = []string{"--repo", "s3+http://" + s3.endpoint + bucketPrefix, "--insecure-no-password"}
	mustRun(t, cfg, append([]string{"repo", "init"}, direct...)...)
	slow = []string{"--repo", "s3+http://" + startThrottle(t, s3.endpoint, rate) + bucketPrefix, "--insecure-no-password"}
	return direct, slow
}

// instantStarted is the answer to an instant restore's POST.
type instantStarted struct {
	TaskID string
	Target string
	Export struct {
		ID, URI  string
		Writable bool
	}
}

func (a *appliance) startInstant(snap, name string) instantStarted {
	a.t.Helper()
	status, body := a.call("POST", "/v1/appliance/repository/restores", a.info["token"],
		fmt.Sprintf(`{"id":%q,"instant":true,"mode":"create","name":%q}`, snap, name))
	var s instantStarted
	if err := json.Unmarshal([]byte(body), &s); status != 202 || err != nil || s.TaskID == "" || !s.Export.Writable ||
		s.Target != "disk:"+name || !strings.HasPrefix(s.Export.URI, "nbds://") {
		a.t.Fatalf("instant restore of %s: %d %s", snap, status, body)
	}
	return s
}

// taskProgress is a task's progress in percent, and whether it ended.
func (a *appliance) taskProgress(id string) (float64, bool) {
	a.t.Helper()
	_, body := a.call("GET", "/v1/astrolabe/tasks/"+id, a.info["token"], "")
	var ti struct {
		Completed bool
		Progress  float64
	}
	json.Unmarshal([]byte(body), &ti)
	return ti.Progress, ti.Completed
}

// nbdExports lists the appliance's exports.
func (a *appliance) nbdExports() []struct{ ID, URI string } {
	a.t.Helper()
	_, body := a.call("GET", "/v1/appliance/nbd/exports", a.info["token"], "")
	var out []struct{ ID, URI string }
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		a.t.Fatalf("exports: %s", body)
	}
	return out
}

// resumedInstant finds, after a restart, the export of snapshot snap
// named name and the one task that fills it on: task before, whose ID
// clients know.
func (a *appliance) resumedInstant(snap, name, before string) (uri, task string) {
	a.t.Helper()
	for _, e := range a.nbdExports() {
		if e.ID == snap && exportName(e.URI) == name {
			uri = e.URI
		}
	}
	if uri == "" {
		a.t.Fatalf("after the restart the export %s is not listed: %v", name, a.nbdExports())
	}
	_, body := a.call("GET", "/v1/astrolabe/tasks", a.info["token"], "")
	var ids []string
	json.Unmarshal([]byte(body), &ids)
	if len(ids) != 1 || ids[0] != before {
		a.t.Fatalf("after the restart tasks %s, want the restore task %s going on", body, before)
	}
	return uri, ids[0]
}

// exportName is the NBD export name in uri.
func exportName(uri string) string {
	u, _ := url.Parse(uri)
	return strings.TrimPrefix(u.Path, "/")
}

// liveRecords are the exports state.json records as live restores.
func liveRecords(t *testing.T, cfg string) (live, all int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cfg, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Exports []struct{ Live bool } }
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state.json: %v", err)
	}
	for _, e := range st.Exports {
		if e.Live {
			live++
		}
	}
	return live, len(st.Exports)
}

// TestInstantRestoreAPI: an instant restore through the API from a slow
// S3 repository. A client with a certificate writes through the export;
// kill -9 of the appliance mid-fill; after the restart the export is back
// under its name, a new task fills on, and the PE is the snapshot with
// the writes. A live export cannot be stopped; cancelling its task
// removes the PE and the export.
func TestInstantRestoreAPI(t *testing.T) {
	needQemuIO(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	const size = 128 * mib
	img, data := writeSparseDisk(t, filepath.Join(cfg, "disk", "vm.img"), size)
	// The appliance reads the repository at 16 MiB/s: the fill of the
	// data takes about 4 s.
	const rate = 16 * mib
	direct, slow := slowS3Repo(t, cfg, rate)
	snap := mustRun(t, cfg, append([]string{"backup", "disk:vm.img"}, direct...)...).lastLine()
	// A graceful stop waits that long for the fill, then leaves it to
	// the next start.
	slow = append(slow, "--drain", "100ms")
	certs := filepath.Join(dir, "client")
	qemuWrite := func(uri string, ws ...clientWrite) {
		runTool(t, "qemu-io", append(append(qemuTLS(certs), qemuIO(ws...)...), qemuNBD(uri))...)
	}
	readExport := func(uri string) []byte {
		path := filepath.Join(dir, "read.img")
		runTool(t, "nbdcopy", withCerts(uri, certs), path)
		b, _ := os.ReadFile(path)
		return b
	}

	a := startServe(t, cfg, slow...)
	mustRun(t, cfg, "nbd", "client-cert", "--name", "instant test", certs)
	started := time.Now()
	s := a.startInstant(snap, "restored.img")
	t.Logf("instant restore of %d MiB (%d MiB data) from S3 at %d MiB/s answered in %v", size/mib, data/mib, rate/mib, time.Since(started).Round(time.Millisecond))
	writes := []clientWrite{{3*mib + 1000, 200000, 0x5a}, {100*mib - 300, 5000, 0xc3}}
	want := apply(img, writes...)
	qemuWrite(s.Export.URI, writes...)
	if live, all := liveRecords(t, cfg); live != 1 || all != 1 {
		t.Errorf("state.json records %d exports, %d live; want the one live restore", all, live)
	}
	// kill -9 mid-fill.
	var progress float64
	for range 2000 {
		p, done := a.taskProgress(s.TaskID)
		if done {
			t.Fatalf("the fill ended before the kill: make the repository slower (rate) or the image larger")
		}
		if p > 0 && p < 100 {
			progress = p
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if progress == 0 {
		t.Fatalf("the fill did not start in 20 s; stderr:\n%s", a.stderr)
	}
	a.kill9()
	t.Logf("killed -9 at %.1f%% filled, %v after the start", progress, time.Since(started).Round(time.Millisecond))

	a = startServe(t, cfg, slow...)
	_, task := a.resumedInstant(snap, exportName(s.Export.URI), s.TaskID)
	p, _ := a.taskProgress(task)
	t.Logf("after the restart the fill resumed at %.1f%%", p)
	// A graceful stop mid-fill (SIGTERM, the drain too short for the
	// fill) leaves it to be resumed too: the PE stays.
	a.stop()
	if live, _ := liveRecords(t, cfg); live != 1 {
		t.Fatalf("after a graceful stop mid-fill state.json records %d live restores, want 1", live)
	}
	a = startServe(t, cfg, slow...)
	resumed, task := a.resumedInstant(snap, exportName(s.Export.URI), s.TaskID)
	p, _ = a.taskProgress(task)
	t.Logf("after a graceful restart the fill resumed at %.1f%%", p)
	// The client reads the export while it is filled on.
	if got := readExport(resumed); !bytes.Equal(got, want) {
		t.Errorf("the resumed export does not read as the snapshot with the writes")
	}
	ti := a.waitTaskResult(a.info["token"], task)
	t.Logf("resumed fill done %v after the first start", time.Since(started).Round(time.Millisecond))
	if res, _ := ti["result"].(map[string]any); ti["status"] != "success" || ti["kind"] != "restore" || res["id"] != s.Target {
		t.Fatalf("resumed restore task: %v", ti)
	}
	restored := filepath.Join(cfg, "disk", "restored.img")
	if got, _ := os.ReadFile(restored); !bytes.Equal(got, want) {
		t.Errorf("%s after the resumed fill differs from the snapshot with the client's writes", s.Target)
	}
	if got := readExport(resumed); !bytes.Equal(got, want) {
		t.Errorf("the export of the filled PE does not read as the snapshot with the writes")
	}
	if alloc := allocated(t, restored); alloc > data+4*mib {
		t.Errorf("%s allocates %d bytes, want about the data's %d (holes kept)", s.Target, alloc, data)
	}
	if live, all := liveRecords(t, cfg); live != 0 || all != 1 {
		t.Errorf("state.json records %d exports, %d live; want the one export, not live", all, live)
	}
	// Stopping the export of the filled PE keeps the PE.
	if status, body := a.call("DELETE", "/v1/appliance/nbd/exports/"+url.PathEscape(snap), a.info["token"], ""); status != 204 {
		t.Fatalf("stop the filled export: %d %s", status, body)
	}
	if got, _ := os.ReadFile(restored); !bytes.Equal(got, want) {
		t.Errorf("%s changed when its export stopped", s.Target)
	}

	// A live export is not stopped; cancelling the task removes the PE.
	s = a.startInstant(snap, "cancelled.img")
	qemuWrite(s.Export.URI, writes...)
	if status, body := a.call("DELETE", "/v1/appliance/nbd/exports/"+url.PathEscape(snap), a.info["token"], ""); status != 409 || !strings.Contains(body, "cancel") {
		t.Errorf("stop a live export: %d %s, want 409 saying to cancel the restore", status, body)
	}
	if status, body := a.call("DELETE", "/v1/astrolabe/tasks/"+s.TaskID, a.info["token"], ""); status != 200 {
		t.Fatalf("cancel the restore task: %d %s", status, body)
	}
	if ti := a.waitTaskResult(a.info["token"], s.TaskID); ti["status"] != "cancelled" {
		t.Errorf("cancelled restore task: %v", ti)
	}
	if _, err := os.Stat(filepath.Join(cfg, "disk", "cancelled.img")); !os.IsNotExist(err) {
		t.Errorf("the cancelled restore's PE is still there: %v", err)
	}
	if status, _ := a.call("GET", "/v1/astrolabe/disk/disk:cancelled.img", a.info["token"], ""); status != 404 {
		t.Errorf("GET the cancelled restore's PE: %d, want 404", status)
	}
	if xs := a.nbdExports(); len(xs) != 0 {
		t.Errorf("exports after the cancel: %v", xs)
	}
	if live, all := liveRecords(t, cfg); all != 0 {
		t.Errorf("state.json still records %d exports (%d live)", all, live)
	}
	if left := leftOverlays(cfg); len(left) != 0 {
		t.Errorf("overlays left after the cancel: %v", left)
	}

	// Bad requests: 400, nothing made.
	fsSnap := mustRun(t, cfg, append([]string{"backup", "fs:sample"}, direct...)...).lastLine()
	before := mustRun(t, cfg, "ls", "disk").stdout + mustRun(t, cfg, "ls", "fs").stdout
	for _, body := range []string{
		fmt.Sprintf(`{"id":%q,"instant":true,"mode":"update"}`, snap),
		fmt.Sprintf(`{"id":%q,"instant":true,"mode":"update","name":"vm.img"}`, snap),
		fmt.Sprintf(`{"id":%q,"instant":true}`, fsSnap),
		fmt.Sprintf(`{"id":%q,"instant":true,"mode":"create_new","name":"x.img"}`, snap),
	} {
		if status, answer := a.call("POST", "/v1/appliance/repository/restores", a.info["token"], body); status != 400 {
			t.Errorf("POST restores %s: %d %s, want 400", body, status, answer)
		}
	}
	if status, answer := a.call("POST", "/v1/appliance/repository/restores", a.info["token"],
		fmt.Sprintf(`{"id":%q,"instant":true,"mode":"create","name":"restored.img"}`, snap)); status != 409 {
		t.Errorf("instant restore onto an existing PE: %d %s, want 409", status, answer)
	}
	if after := mustRun(t, cfg, "ls", "disk").stdout + mustRun(t, cfg, "ls", "fs").stdout; after != before {
		t.Errorf("bad instant restores changed the PEs:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if xs := a.nbdExports(); len(xs) != 0 {
		t.Errorf("exports after bad instant restores: %v", xs)
	}
	a.stop()
}
