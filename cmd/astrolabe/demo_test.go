package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeDemo runs the README's first command, `make demo`, as a newcomer
// would (its script, with the binary TestMain built), then every command
// the demo tells the user to try while its appliance runs, and stops the
// appliance with Ctrl-C.
func TestMakeDemo(t *testing.T) {
	needNBDTools(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl missing: apt-get install -y curl")
	}
	dir := filepath.Join(t.TempDir(), "demo")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join("..", "..", "scripts", "demo.sh"), dir)
	cmd.Env = append(os.Environ(), "ASTROLABE="+astrolabeBin,
		"DEMO_API="+loopbackAddr(t), "DEMO_NBD="+loopbackAddr(t), "DEMO_S3="+loopbackAddr(t))
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // one stream, in the order the user sees it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	lines := bufio.NewScanner(out)
	var try []string
	for lines.Scan() {
		seen.WriteString(lines.Text() + "\n")
		if strings.HasPrefix(lines.Text(), "Try, in another terminal:") {
			for len(try) < 4 && lines.Scan() {
				seen.WriteString(lines.Text() + "\n")
				try = append(try, strings.TrimSpace(lines.Text()))
			}
			break
		}
	}
	go io.Copy(io.Discard, out) // the server's log, until it stops
	for _, want := range []string{"restored tree equals the source", "restored disk equals the source"} {
		if !strings.Contains(seen.String(), want) {
			t.Fatalf("make demo did not print %q:\n%s", want, seen.String())
		}
	}
	if len(try) != 4 {
		t.Fatalf("make demo printed %d commands to try, want 4:\n%s", len(try), seen.String())
	}

	// The server starts after the list is printed; its first start writes
	// the certificate the curl lines pin.
	waitFor(t, 30*time.Second, func() bool {
		return exec.Command("bash", "-c", try[0]+" -sf -o /dev/null").Run() == nil
	})
	wants := []string{`"disk:sample.img"`, `"uri":"nbd://`, `export="disk:sample.img:`, "fs:sample"}
	for i, line := range try {
		got, err := exec.CommandContext(ctx, "bash", "-c", line).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, got)
		}
		if !strings.Contains(string(got), wants[i]) {
			t.Errorf("%s: printed no %s:\n%s", line, wants[i], got)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the demo's appliance did not stop cleanly on Ctrl-C: %v", err)
	}
}

// loopbackAddr is a free loopback address for a server of the test.
func loopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, limit time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %v", limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
