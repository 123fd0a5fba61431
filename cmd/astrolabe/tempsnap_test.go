package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A backup of a live PE keeps the snapshot it took as the next backup's
// base (the next one reads only changed blocks) and deletes the one
// before; a copy deletes the snapshot it took. Nightly backups must not
// pile snapshots up on the PE's storage, nor read whole disks every
// night. A snapshot the user took is theirs and stays.
func TestBackupAndCopySnapshots(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "init", cfg, "--samples")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	snaps := func(id string) string {
		t.Helper()
		return strings.TrimSpace(mustRun(t, cfg, "lssn", id).stdout)
	}
	backup := func(id string) (string, string) {
		t.Helper()
		r := mustRun(t, cfg, "backup", id, "--repo", repoDir, "--insecure-no-password")
		return strings.TrimSpace(r.stdout), r.stderr
	}
	// A disk tracks changes: its last backup's snapshot is kept.
	first, stderr := backup("disk:sample.img")
	if !strings.Contains(stderr, "kept snapshot "+first+" as the next backup's base") {
		t.Errorf("backup of the disk does not say it keeps the snapshot it took: %s", stderr)
	}
	second, _ := backup("disk:sample.img")
	if left := snaps("disk:sample.img"); left != second {
		t.Errorf("after two backups of the disk (%s, %s), local snapshots %q; want the last only", first, second, left)
	}
	// An fs tree does not: a kept snapshot would be a whole copy of it
	// for nothing.
	tree, stderr := backup("fs:sample")
	if !strings.Contains(stderr, "deleted snapshot "+tree) {
		t.Errorf("backup of the tree does not say it deleted the snapshot it took: %s", stderr)
	}
	if left := snaps("fs:sample"); left != "" {
		t.Errorf("after a backup of the tree, local snapshots %q; want none", left)
	}
	// The disk's third backup reads only what changed since the second.
	_, stderr = backup("disk:sample.img")
	if m := regexp.MustCompile(`read ([0-9.]+ [KMG]?i?B), .* reused unread ([0-9.]+ [KMG]?i?B)`).FindStringSubmatch(stderr); m == nil || m[2] == "0 B" {
		t.Errorf("a backup of an unchanged disk reused nothing unread: %s", stderr)
	}

	before := snaps("fs:sample")
	mustRun(t, cfg, "cp", "fs:sample", filepath.Join(dir, "sample.zip"))
	if left := snaps("fs:sample"); left != before {
		t.Errorf("cp of fs:sample left local snapshots: %q, before %q", left, before)
	}
	own := strings.TrimSpace(mustRun(t, cfg, "snap", "disk:sample.img").stdout)
	base := snaps("disk:sample.img")
	backup("disk:sample.img")
	backup(own)
	if left := snaps("disk:sample.img"); !strings.Contains(left, own) || strings.Contains(left, base) {
		t.Errorf("the user's snapshot %s, the old base %s: local snapshots now %q", own, base, left)
	}
}
