package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNBDServe(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "nbdcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y libnbd-bin", tool)
		}
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, astrolabeBin, "--config", cfg, "nbd", "serve", "--listen", "127.0.0.1:0", "disk:sample.img", "fs:sample")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var uris []string
	for len(uris) < 2 && sc.Scan() {
		uris = append(uris, sc.Text())
	}
	if len(uris) != 2 || !strings.HasPrefix(uris[0], "nbd://127.0.0.1:") || !strings.Contains(uris[0], "/disk:sample.img:") {
		cmd.Process.Kill()
		t.Fatalf("nbd serve printed %q; stderr: %s", uris, stderr.String())
	}
	host := strings.SplitN(strings.TrimPrefix(uris[0], "nbd://"), "/", 2)[0]

	out, err := exec.CommandContext(ctx, "nbdinfo", "--list", "nbd://"+host).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "disk:sample.img:") || !strings.Contains(string(out), "fs:sample:") {
		t.Errorf("nbdinfo --list: %v\n%s", err, out)
	}
	copied := filepath.Join(dir, "copy.img")
	if out, err := exec.CommandContext(ctx, "nbdcopy", uris[0], copied).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	a, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	b, _ := os.ReadFile(copied)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("nbdcopy of %s differs from the image (%d vs %d bytes)", uris[0], len(b), len(a))
	}
	// The fs export is the snapshot's tar.
	tarCopy := filepath.Join(dir, "fs.tar")
	if out, err := exec.CommandContext(ctx, "nbdcopy", uris[1], tarCopy).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy fs: %v\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "tar", "-tf", tarCopy).CombinedOutput(); err != nil || !strings.Contains(string(out), "README.txt") {
		t.Errorf("tar -tf of the fs export: %v\n%s", err, out)
	}

	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("nbd serve after SIGINT: %v; stderr: %s", err, stderr.String())
	}
}
