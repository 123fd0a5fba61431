package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
