package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needNBDTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y libnbd-bin qemu-utils openssl", tool)
		}
	}
}

// nbdServer is a running 'astrolabe nbd serve'.
type nbdServer struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  []string // what it printed, one line per export
	host   string
	stderr *bytes.Buffer
	// rest is what it printed after the export lines, complete once done
	// is closed (at its exit).
	rest []string
	done chan struct{}
}

// startNBD runs 'astrolabe nbd serve' and waits for its n export lines.
func startNBD(t *testing.T, cfg string, n int, args ...string) *nbdServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	args = append([]string{"--config", cfg, "nbd", "serve", "--listen", "127.0.0.1:0"}, args...)
	cmd := exec.CommandContext(ctx, astrolabeBin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &nbdServer{t: t, cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); <-s.done; cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for len(s.lines) < n && sc.Scan() {
		s.lines = append(s.lines, sc.Text())
	}
	// Wait closes stdout: it is read to the end first (stop, Cleanup).
	go func() {
		defer close(s.done)
		for sc.Scan() {
			s.rest = append(s.rest, sc.Text())
		}
	}()
	if len(s.lines) != n || !strings.Contains(s.lines[0], "://127.0.0.1:") {
		t.Fatalf("nbd serve %v printed %q; stderr: %s", args, s.lines, s.stderr)
	}
	s.host = strings.SplitN(strings.SplitN(s.lines[0], "://", 2)[1], "/", 2)[0]
	return s
}

// uri is the export URI of line i (the first word).
func (s *nbdServer) uri(i int) string { return strings.Fields(s.lines[i])[0] }

// stop sends sig and expects a clean exit.
func (s *nbdServer) stop(sig syscall.Signal) {
	s.t.Helper()
	s.cmd.Process.Signal(sig)
	<-s.done
	if err := s.cmd.Wait(); err != nil {
		s.t.Errorf("nbd serve after %v: %v; stderr: %s", sig, err, s.stderr)
	}
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func TestNBDServe(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	s := startNBD(t, cfg, 2, "disk:sample.img", "fs:sample")
	if !strings.Contains(s.lines[0], "/disk:sample.img:") {
		t.Fatalf("first export %q", s.lines[0])
	}

	out := runTool(t, "nbdinfo", "--list", "nbd://"+s.host)
	if !strings.Contains(out, "disk:sample.img:") || !strings.Contains(out, "fs:sample:") {
		t.Errorf("nbdinfo --list:\n%s", out)
	}
	copied := filepath.Join(dir, "copy.img")
	runTool(t, "nbdcopy", s.uri(0), copied)
	a, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	b, _ := os.ReadFile(copied)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("nbdcopy of %s differs from the image (%d vs %d bytes)", s.uri(0), len(b), len(a))
	}
	// The fs export is the snapshot's tar.
	tarCopy := filepath.Join(dir, "fs.tar")
	runTool(t, "nbdcopy", s.uri(1), tarCopy)
	if out := runTool(t, "tar", "-tf", tarCopy); !strings.Contains(out, "README.txt") {
		t.Errorf("tar -tf of the fs export:\n%s", out)
	}
	s.stop(syscall.SIGINT)
}

// TestNBDChanged exports the second of two snapshots with the blocks
// changed since the first as the astrolabe:changed meta context.
func TestNBDChanged(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	first := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	img := filepath.Join(cfg, "disk", "sample.img")
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Change 4 KiB at 40 MiB: one 64 KiB block of the snapshot's hashes.
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xAB}, 4096), 40<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	second := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	s := startNBD(t, cfg, 1, second)

	snap1 := strings.Split(first, ":")[2]
	out := runTool(t, "nbdinfo", s.uri(0))
	if !strings.Contains(out, "astrolabe:changed:"+snap1) {
		t.Errorf("nbdinfo does not list astrolabe:changed:%s:\n%s", snap1, out)
	}
	out = runTool(t, "nbdinfo", "--map=astrolabe:changed:"+snap1, s.uri(0))
	got := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"0 41943040 0", "41943040 65536 1", "42008576 25100288 0"} {
		if !strings.Contains(got, want) {
			t.Errorf("--map=astrolabe:changed lacks %q:\n%s", want, out)
		}
	}
	s.stop(syscall.SIGTERM)
}

// TestNBDWritable restores an image into a writable export: it serves at
// once, the writes land in an overlay and read back, the snapshot stays as
// it was, no PE is made; at exit the writes are discarded, or with
// --keep-writes kept in a new PE that holds exactly what was written.
func TestNBDWritable(t *testing.T) {
	dir, cfg, snap, sample := sampleSnapshot(t)
	overlays := filepath.Join(cfg, "state", "overlays")
	disks := diskFiles(t, cfg)

	s := startNBD(t, cfg, 1, "--writable", snap)
	if fields := strings.Fields(s.lines[0]); len(fields) != 1 || !strings.Contains(fields[0], "/"+snap+"/") {
		t.Fatalf("writable export line %q", s.lines[0])
	}
	if out := runTool(t, "nbdinfo", s.uri(0)); !strings.Contains(out, "is_read_only: false") {
		t.Errorf("writable export:\n%s", out)
	}
	// The restore: a different image of the same size, with holes.
	restored := make([]byte, len(sample))
	rand.Read(restored[1<<20 : 3<<20])
	rand.Read(restored[50<<20 : 51<<20])
	src := filepath.Join(dir, "restore.img")
	os.WriteFile(src, restored, 0o644)
	runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, s.uri(0))
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri(0))
	if got := listDir(t, overlays); len(got) != 1 {
		t.Errorf("overlays while exported: %v, want one", got)
	}
	// Meanwhile the snapshot, exported by another server, reads as the sample.
	ro := startNBD(t, cfg, 1, snap)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", filepath.Join(cfg, "disk", "sample.img"), ro.uri(0))
	ro.stop(syscall.SIGINT)
	s.stop(syscall.SIGTERM)
	if len(s.rest) != 0 || !slices.Equal(diskFiles(t, cfg), disks) {
		t.Errorf("without --keep-writes: printed %q, disk PEs %v, want none new", s.rest, diskFiles(t, cfg))
	}
	if got := listDir(t, overlays); len(got) != 0 {
		t.Errorf("overlays left after exit: %v", got)
	}

	// Again with --keep-writes: the export starts from the snapshot (the
	// writes above are gone), and the writes end in a new PE.
	s = startNBD(t, cfg, 1, "--writable", "--keep-writes", snap)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", filepath.Join(cfg, "disk", "sample.img"), s.uri(0))
	runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, s.uri(0))
	s.stop(syscall.SIGTERM)
	kept := keptPE(t, s.uri(0), s.rest)
	if !strings.HasPrefix(kept, "disk:sample-") {
		t.Fatalf("kept PE %q", kept)
	}
	if got, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(kept, "disk:"))); !bytes.Equal(got, restored) {
		t.Errorf("the kept PE %s does not hold what was written", kept)
	}
	if got := listDir(t, overlays); len(got) != 0 {
		t.Errorf("overlays left after exit with --keep-writes: %v", got)
	}
	copied := filepath.Join(dir, "snap.img")
	// Export the untouched snapshot again: it still reads as the sample.
	s = startNBD(t, cfg, 1, snap)
	runTool(t, "nbdcopy", s.uri(0), copied)
	if b, _ := os.ReadFile(copied); !bytes.Equal(b, sample) {
		t.Error("the snapshot changed under a writable export")
	}
	s.stop(syscall.SIGINT)

	mustFail(t, cfg, "tar stream, not a disk", "nbd", "serve", "--listen", "127.0.0.1:0", "--writable", "fs:sample")
	mustFail(t, cfg, "--tls-required needs", "nbd", "serve", "--tls-required", "disk:sample.img")
	mustFail(t, cfg, "go together", "nbd", "serve", "--tls-cert", "x.pem", "disk:sample.img")
}

// sampleSnapshot makes a configuration with the samples in a temporary
// directory and a snapshot of disk:sample.img, and returns them and the
// sample image, for a test with NBD clients.
func sampleSnapshot(t *testing.T) (dir, cfg, snap string, sample []byte) {
	t.Helper()
	needNBDTools(t)
	dir = t.TempDir()
	cfg = filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap = mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	sample, err := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}
	return dir, cfg, snap, sample
}

// keptPE is the PE ID of '<uri>: writes kept in <PE ID>' among lines.
func keptPE(t *testing.T, uri string, lines []string) string {
	t.Helper()
	for _, line := range lines {
		if id, ok := strings.CutPrefix(line, uri+": writes kept in "); ok {
			return id
		}
	}
	t.Fatalf("no line '%s: writes kept in PEID' in %q", uri, lines)
	return ""
}

// listDir lists directory dir, none if it does not exist.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// diskFiles lists the disk PEs of configuration cfg.
func diskFiles(t *testing.T, cfg string) []string {
	t.Helper()
	var out []string
	for _, name := range listDir(t, filepath.Join(cfg, "disk")) {
		if fi, err := os.Stat(filepath.Join(cfg, "disk", name)); err == nil && fi.Mode().IsRegular() && !strings.HasPrefix(name, ".") {
			out = append(out, name)
		}
	}
	return out
}

func TestNBDTLS(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	certs := filepath.Join(dir, "certs")
	os.Mkdir(certs, 0o700)
	cert, key := filepath.Join(certs, "ca-cert.pem"), filepath.Join(dir, "key.pem")
	runTool(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
		"-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE")
	s := startNBD(t, cfg, 1, "--tls-cert", cert, "--tls-key", key, "--tls-required", "disk:sample.img")
	if !strings.HasPrefix(s.lines[0], "nbds://") {
		t.Errorf("TLS export line %q", s.lines[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	plain := strings.Replace(s.uri(0), "nbds://", "nbd://", 1)
	if out, err := exec.CommandContext(ctx, "nbdinfo", plain).CombinedOutput(); err == nil {
		t.Errorf("plain client accepted with --tls-required:\n%s", out)
	}
	copied := filepath.Join(dir, "copy.img")
	runTool(t, "nbdcopy", s.uri(0)+"?tls-certificates="+certs, copied)
	a, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	if b, _ := os.ReadFile(copied); !bytes.Equal(a, b) {
		t.Error("nbdcopy over TLS differs from the image")
	}
	s.stop(syscall.SIGTERM)
}
