package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var astrolabeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "astrolabe-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	astrolabeBin = filepath.Join(dir, "astrolabe")
	build := exec.Command("go", "build", "-o", astrolabeBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build astrolabe:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// lastLine is what scripts take from commands that print an ID last.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	return lines[len(lines)-1]
}

func astrolabe(t *testing.T, config string, args ...string) result {
	t.Helper()
	return runBinary(t, "", append([]string{"--config", config}, args...)...)
}

// runBinary runs the built binary with exactly args in dir ("": the
// test's), failing the test if it prints a Go trace.
func runBinary(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runBinaryWithin(t, dir, 0, args...)
}

// runBinaryWithin is runBinary killing the binary after limit (0: never),
// for commands that must fail at once rather than serve.
func runBinaryWithin(t *testing.T, dir string, limit time.Duration, args ...string) result {
	t.Helper()
	ctx := context.Background()
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, astrolabeBin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run astrolabe %v: %v", args, err)
	}
	r := result{out.String(), errb.String(), code}
	for _, bad := range []string{"panic", "goroutine ", ".go:"} {
		if strings.Contains(r.stderr, bad) {
			t.Fatalf("astrolabe %v printed a Go trace (%q):\n%s", args, bad, r.stderr)
		}
	}
	return r
}

func mustRun(t *testing.T, config string, args ...string) result {
	t.Helper()
	r := astrolabe(t, config, args...)
	if r.code != 0 {
		t.Fatalf("astrolabe %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// mustFail runs a command that must fail with one clear line on stderr
// containing want.
func mustFail(t *testing.T, config, want string, args ...string) {
	t.Helper()
	r := astrolabe(t, config, args...)
	if r.code == 0 {
		t.Fatalf("astrolabe %v succeeded, want failure %q\nstdout: %s", args, want, r.stdout)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "astrolabe: ") || !strings.Contains(lines[0], want) {
		t.Fatalf("astrolabe %v: stderr %q, want one line 'astrolabe: ...%s...'", args, r.stderr, want)
	}
}

func TestCLIEndToEnd(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	mustFail(t, cfg, "already a config directory", "init", cfg)

	if got := mustRun(t, cfg, "types").stdout; got != "disk\nfs\n" {
		t.Errorf("types = %q", got)
	}
	if got := mustRun(t, cfg, "ls", "fs").stdout; got != "fs:sample\n" {
		t.Errorf("ls fs = %q", got)
	}
	if got := mustRun(t, cfg, "ls", "disk").stdout; got != "disk:sample.img\n" {
		t.Errorf("ls disk = %q", got)
	}
	if got := mustRun(t, cfg, "show", "fs:sample").stdout; !strings.Contains(got, `"id": "fs:sample"`) {
		t.Errorf("show fs:sample = %s", got)
	}

	src := filepath.Join(cfg, "fs", "sample")
	before := treeDigest(t, src)
	snap := mustRun(t, cfg, "snap", "fs:sample").lastLine()
	if !strings.HasPrefix(snap, "fs:sample:") {
		t.Fatalf("snap printed %q, want fs:sample:<snapshot>", snap)
	}
	if got := mustRun(t, cfg, "lssn", "fs:sample").stdout; !strings.Contains(got, snap+"\n") {
		t.Errorf("lssn = %q, want it to list %s", got, snap)
	}
	// Changing the live tree does not change the snapshot.
	if err := os.WriteFile(filepath.Join(src, "README.txt"), []byte("changed after the snapshot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(src, "docs")); err != nil {
		t.Fatal(err)
	}

	zip := filepath.Join(dir, "sample.zip")
	if got := mustRun(t, cfg, "cp", snap, zip).lastLine(); got != snap {
		t.Errorf("cp to zip printed %q, want %s", got, snap)
	}
	mustFail(t, cfg, "already exists", "cp", snap, zip)
	mustRun(t, cfg, "cp", "--mode", "update", snap, zip)

	// zip → type, create_new: a new PE equal to the snapshot.
	newID := mustRun(t, cfg, "cp", zip, "fs").lastLine()
	if !strings.HasPrefix(newID, "fs:") || newID == "fs:sample" {
		t.Fatalf("cp zip fs printed %q", newID)
	}
	if got := treeDigest(t, filepath.Join(cfg, "fs", strings.TrimPrefix(newID, "fs:"))); got != before {
		t.Errorf("restored tree (create_new) differs from the snapshot:\n%s\nwant:\n%s", got, before)
	}
	// create with a name, twice.
	if got := mustRun(t, cfg, "cp", "--mode", "create", zip, "fs:restored").lastLine(); got != "fs:restored" {
		t.Errorf("cp --mode create printed %q", got)
	}
	mustFail(t, cfg, "already exists", "cp", "--mode", "create", zip, "fs:restored")
	// update overwrites the live tree with the snapshot's content.
	if got := mustRun(t, cfg, "cp", "--mode", "update", zip, "fs:sample").lastLine(); got != "fs:sample" {
		t.Errorf("cp --mode update printed %q", got)
	}
	if got := treeDigest(t, src); got != before {
		t.Errorf("tree after update differs from the snapshot:\n%s\nwant:\n%s", got, before)
	}
	mustFail(t, cfg, "not found", "cp", "--mode", "update", zip, "fs:nosuch")
	mustFail(t, cfg, "create_new", "cp", "--mode", "create_new", zip, "fs:named")

	// disk: snapshot, zip, restore; the restored image equals the source.
	dsnap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	dzip := filepath.Join(dir, "disk.zip")
	mustRun(t, cfg, "cp", dsnap, dzip)
	dnew := mustRun(t, cfg, "cp", dzip, "disk").lastLine()
	a, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	b, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(dnew, "disk:")))
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("restored disk %s differs from disk:sample.img (%d vs %d bytes)", dnew, len(b), len(a))
	}
	// PE → PE copy, snapshotting the live source first.
	if got := mustRun(t, cfg, "cp", "disk:sample.img", "disk:copy.img").lastLine(); got != "disk:copy.img" {
		t.Errorf("cp disk:sample.img disk:copy.img printed %q", got)
	}

	mustRun(t, cfg, "rmsn", snap)
	if got := mustRun(t, cfg, "lssn", "fs:sample").stdout; strings.Contains(got, snap) {
		t.Errorf("lssn after rmsn still lists %s", snap)
	}
	mustFail(t, cfg, "not found", "rmsn", snap)
	mustFail(t, cfg, "not found", "show", snap)
}

func TestCLIBadInput(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustFail(t, cfg, "does not exist", "ls", "fs")
	mustRun(t, cfg, "init", cfg)

	for _, tt := range []struct {
		want string
		args []string
	}{
		{`invalid PE ID "bad"`, []string{"show", "bad"}},
		{`character ' ' not allowed`, []string{"show", "fs:a b"}},
		{`too many`, []string{"show", "fs:a:b:c"}},
		{`PE type "nosuch"`, []string{"ls", "nosuch"}},
		{`PE type "nosuch"`, []string{"show", "nosuch:x"}},
		{`not found`, []string{"show", "fs:missing"}},
		{`names no snapshot`, []string{"rmsn", "fs:missing"}},
		{`want PEID`, []string{"snap"}},
		{`want SRC DEST`, []string{"cp", "fs:x"}},
		{`invalid copy mode "sideways"`, []string{"cp", "--mode", "sideways", "fs:x", "fs"}},
		{`no such file`, []string{"cp", filepath.Join(dir, "missing.zip"), "fs"}},
		{`unknown command "frobnicate"`, []string{"frobnicate"}},
	} {
		mustFail(t, cfg, tt.want, tt.args...)
	}
	if err := os.MkdirAll(filepath.Join(cfg, "fs", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustFail(t, cfg, "not found", "show", "fs:x:nosnap")
	mustFail(t, cfg, "not found", "cp", "fs:x:nosnap", "fs")

	// A file that is not a zip, given as a source.
	bogus := filepath.Join(dir, "bogus.zip")
	if err := os.WriteFile(bogus, []byte("this is not a zip file"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, cfg, "bogus.zip", "cp", bogus, "fs")
}

// treeDigest describes a directory tree: every path with its type, mode,
// symlink target and content hash, one line each, sorted.
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " -> %s", target)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return b.String()
}
