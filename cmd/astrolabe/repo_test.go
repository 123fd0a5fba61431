package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRepoCommands(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	r := []string{"--repo", filepath.Join(dir, "repo"), "--password-file", pw}
	// urfave/cli takes flags before the arguments: verb words, flags, args.
	cmd := func(words ...string) []string {
		n := 1
		if words[0] == "repo" {
			n = 2
		}
		out := append(append(append([]string{}, words[:n]...), r...), words[n:]...)
		return out
	}

	mustFail(t, cfg, "no repository", "backup", "disk:sample.img")
	mustRun(t, cfg, cmd("repo", "init")...)
	mustFail(t, cfg, "exists there already", cmd("repo", "init")...)
	snap := mustRun(t, cfg, cmd("backup", "disk:sample.img")...)
	if !strings.Contains(snap.stderr, "stored") || !strings.HasPrefix(snap.lastLine(), "disk:sample.img:") {
		t.Fatalf("backup: %+v", snap)
	}
	id := snap.lastLine()
	mustRun(t, cfg, cmd("backup", "fs:sample")...)
	if out := mustRun(t, cfg, cmd("repo", "snapshots", "disk:sample.img")...).stdout; !strings.Contains(out, id) || strings.Contains(out, "fs:sample") {
		t.Errorf("repo snapshots disk:sample.img:\n%s", out)
	}
	restored := mustRun(t, cfg, cmd("restore", id)...).lastLine()
	a, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	b, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(restored, "disk:")))
	if !bytes.Equal(a, b) {
		t.Error("restored disk differs")
	}
	mustRun(t, cfg, cmd("repo", "check", "--read-data")...)
	mustFail(t, cfg, "exists", cmd("restore", "--mode", "create", id)...)
	mustRun(t, cfg, cmd("repo", "forget", id)...)
	mustFail(t, cfg, "not found", cmd("restore", id)...)
	mustRun(t, cfg, cmd("repo", "prune")...)
	mustRun(t, cfg, cmd("repo", "check")...)

	os.WriteFile(pw, []byte("wrong\n"), 0o600)
	mustFail(t, cfg, "wrong password", cmd("repo", "snapshots")...)
}

// TestServeFromRepository mounts and exports backed-up snapshots straight
// from the repository.
func TestServeFromRepository(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	r := []string{"--repo", filepath.Join(dir, "repo")}
	mustRun(t, cfg, append([]string{"repo", "init", "--insecure-no-password"}, r...)...)
	disk := mustRun(t, cfg, append(append([]string{"backup"}, r...), "disk:sample.img")...).lastLine()
	fsSnap := mustRun(t, cfg, append(append([]string{"backup"}, r...), "fs:sample")...).lastLine()
	image, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))

	s := startNBD(t, cfg, 1, append(r, disk)...)
	copied := filepath.Join(dir, "nbd.img")
	runTool(t, "nbdcopy", s.uri(0), copied)
	if b, _ := os.ReadFile(copied); !bytes.Equal(b, image) {
		t.Error("NBD export from the repository differs from the image")
	}
	s.stop(syscall.SIGTERM)

	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, astrolabeBin, append(append([]string{"--config", cfg, "mount"}, r...), mnt)...)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); syscall.Unmount(mnt, syscall.MNT_DETACH) })
	bufio.NewScanner(stdout).Scan()
	snapDir := func(id string) string {
		p := strings.Split(id, ":")
		return filepath.Join(mnt, p[0], p[0]+":"+p[1], "snapshots", p[2])
	}
	if b, err := os.ReadFile(filepath.Join(snapDir(disk), "data")); err != nil || !bytes.Equal(b, image) {
		t.Errorf("disk data from the repository mount: %v", err)
	}
	want, _ := os.ReadFile(filepath.Join(cfg, "fs", "sample", "README.txt"))
	if b, err := os.ReadFile(filepath.Join(snapDir(fsSnap), "files", "README.txt")); err != nil || !bytes.Equal(b, want) {
		t.Errorf("fs file from the repository mount: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("mount --repo after SIGTERM: %v", err)
	}
}

// TestReadOnlyCommandsMakeNoDirectory: a command on a repository that is
// not there says so and leaves no directory (nor its parents) behind, as
// a job's "must exist" check would then pass; repo init makes one.
func TestReadOnlyCommandsMakeNoDirectory(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	for i, args := range [][]string{
		{"repo", "snapshots"},
		{"repo", "check"},
		{"repo", "check", "--read-data"},
		{"repo", "forget", "--keep-last", "1"},
		{"repo", "prune"},
		{"repo", "unlock"},
		{"backup", "fs:sample"},
		{"restore", "fs:sample"},
	} {
		missing := filepath.Join(dir, fmt.Sprintf("nope%d", i), "sub", "deeper")
		r := astrolabe(t, cfg, append(args, "--repo", missing, "--insecure-no-password")...)
		if r.code == 0 || !strings.Contains(r.stderr, "no repository here") {
			t.Errorf("astrolabe %q on a missing repository: exit %d, stderr %q", args, r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("nope%d", i))); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("astrolabe %q made a directory: %v", args, err)
		}
	}
	made := filepath.Join(dir, "new", "sub", "repo")
	mustRun(t, cfg, "repo", "init", "--repo", made, "--insecure-no-password")
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("repo init: %v %v", fi, err)
	}
}

// TestEmptyPasswordFile: an empty password file (or one of a newline) is
// said to be empty, not taken for no password.
func TestEmptyPasswordFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	pw, empty := filepath.Join(dir, "pw"), filepath.Join(dir, "empty.pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--password-file", pw)
	for _, content := range []string{"", "\n"} {
		os.WriteFile(empty, []byte(content), 0o600)
		for _, args := range [][]string{
			{"repo", "snapshots", "--repo", repoDir, "--password-file", empty},
			{"repo", "init", "--repo", filepath.Join(dir, "new"), "--password-file", empty},
			{"repo", "copy", "--from", repoDir, "--from-password-file", empty, "--to", repoDir, "--password-file", pw},
		} {
			r := astrolabe(t, cfg, args...)
			if r.code == 0 || !strings.Contains(r.stderr, "password file "+empty+" is empty") {
				t.Errorf("astrolabe %q with a password file of %q: exit %d, stderr %q", args, content, r.code, r.stderr)
			}
		}
	}
}
