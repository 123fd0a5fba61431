package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// A backup or copy of a live PE snapshots it and deletes that snapshot
// when done: a nightly backup must not pile snapshots up on the PE's
// storage. A snapshot the user took is theirs and stays.
func TestBackupAndCopyLeaveNoSnapshot(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "init", cfg, "--samples")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	snaps := func(id string) string {
		t.Helper()
		return strings.TrimSpace(mustRun(t, cfg, "lssn", id).stdout)
	}
	for _, id := range []string{"disk:sample.img", "fs:sample"} {
		r := mustRun(t, cfg, "backup", id, "--repo", repoDir, "--insecure-no-password")
		if !strings.Contains(r.stderr, "deleted once backed up") {
			t.Errorf("backup %s does not say the snapshot it took is deleted: %s", id, r.stderr)
		}
		if left := snaps(id); left != "" {
			t.Errorf("backup of %s left local snapshots: %s", id, left)
		}
	}
	mustRun(t, cfg, "cp", "fs:sample", filepath.Join(dir, "sample.zip"))
	if left := snaps("fs:sample"); left != "" {
		t.Errorf("cp of fs:sample left local snapshots: %s", left)
	}
	own := strings.TrimSpace(mustRun(t, cfg, "snap", "disk:sample.img").stdout)
	mustRun(t, cfg, "backup", own, "--repo", repoDir, "--insecure-no-password")
	if left := snaps("disk:sample.img"); left != own {
		t.Errorf("a backup of the snapshot %s the user took: local snapshots now %q", own, left)
	}
}
