package repo

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// s3Server is a versitygw process on loopback, serving a directory.
type s3Server struct {
	t    *testing.T
	dir  string
	addr string
	cmd  *exec.Cmd
}

const s3Access, s3Secret = "astrolabe-test", "astrolabe-test-secret"

func startS3(t *testing.T) *s3Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &s3Server{t: t, dir: t.TempDir(), addr: addr}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *s3Server) start() {
	s.t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		gobin := filepath.Join(os.Getenv("HOME"), "go", "bin", "versitygw")
		if out, gerr := exec.Command("go", "env", "GOPATH").Output(); gerr == nil {
			gobin = filepath.Join(strings.TrimSpace(string(out)), "bin", "versitygw")
		}
		if _, err := os.Stat(gobin); err != nil {
			s.t.Fatal("versitygw missing: run scripts/s3-server.sh install (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
		}
		bin = gobin
	}
	s.cmd = exec.Command(bin, "--port", s.addr, "posix", s.dir)
	s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s3Access, "ROOT_SECRET_KEY="+s3Secret)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	for range 100 {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("versitygw did not listen on %s", s.addr)
}

func (s *s3Server) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *s3Server) backend(t *testing.T) backend.Backend {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", s3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3Secret)
	cfg, err := backend.ParseS3URL(fmt.Sprintf("s3+http://%s/backups/astrolabe", s.addr))
	if err != nil {
		t.Fatal(err)
	}
	be, err := backend.NewS3(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestS3RoundTrip(t *testing.T) {
	srv := startS3(t)
	e := newEnv(t, srv.backend(t), Options{Password: "pw"})
	ctx := context.Background()
	path := e.disk("s3.img", 256*mib, map[int64]int64{0: 40 * mib, 200 * mib: 8 * mib})
	p := e.snap("disk:s3.img")
	s, err := e.r.Backup(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.New != 48*mib {
		t.Errorf("backup: %+v", s)
	}
	restored, err := e.restore(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, filepath.Join(e.dir, "disk", restored.Name())) != fileSum(t, path) {
		t.Error("restored disk differs")
	}
	snaps, err := e.r.Snapshots(ctx, pe.ID{})
	if err != nil || len(snaps) != 1 || snaps[0].ID != p.ID() {
		t.Errorf("snapshots: %v %v", snaps, err)
	}
}

// TestS3Fault kills the S3 server during a backup: the backup fails, no
// partial snapshot shows, and after a restart the backup completes
// uploading only what was missing.
func TestS3Fault(t *testing.T) {
	srv := startS3(t)
	e := newEnv(t, srv.backend(t), Options{Password: "pw"})
	ctx := context.Background()
	// Enough data that the backup is still uploading when the first
	// packs have landed, on fast machines too.
	e.disk("f.img", 512*mib, map[int64]int64{0: 320 * mib})
	p := e.snap("disk:f.img")

	// Kill the server once some packs have arrived.
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			n := 0
			filepath.Walk(filepath.Join(srv.dir, "backups"), func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() && strings.Contains(p, "/data/") {
					n++
				}
				return nil
			})
			if n >= 2 {
				srv.stop()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t0 := time.Now()
	_, err := e.r.Backup(ctx, p, nil)
	<-killed
	if err == nil {
		t.Fatal("backup succeeded with the server killed")
	}
	t.Logf("backup error (expected) after %v: %v", time.Since(t0), err)

	srv.start()
	snaps, err := e.r.Snapshots(ctx, pe.ID{})
	if err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after a failed backup: %v %v", snaps, err)
	}
	st, _ := e.r.Stats(ctx)
	s, err := e.r.Backup(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.PackBytes == 0 || s.Stored > 320*mib-st.PackBytes+2*mib {
		t.Errorf("re-run uploaded %d bytes; %d were there from the failed run", s.Stored, st.PackBytes)
	}
	t.Logf("failed run left %d MiB; re-run uploaded %d MiB (at %v)", st.PackBytes>>20, s.Stored>>20, time.Since(t0))
	if probs, err := e.r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
		t.Errorf("check after the re-run: %v %v", probs, err)
	}
	restored, err := e.restore(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, filepath.Join(e.dir, "disk", restored.Name())) != fileSum(t, filepath.Join(e.dir, "disk", "f.img")) {
		t.Error("restore after the re-run differs")
	}
}
