package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var checkSummary = regexp.MustCompile(`read (\d+) of (\d+) packs`)

// packsChecked runs repo check with args and returns the packs it read
// and those in the repository.
func packsChecked(t *testing.T, cfg string, args ...string) (read, all int) {
	t.Helper()
	r := mustRun(t, cfg, append([]string{"repo", "check"}, args...)...)
	if !strings.Contains(r.stdout, "no problems found") {
		t.Fatalf("repo check %v: %s%s", args, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "read no pack data") || strings.Contains(r.stdout, "no pack new since") {
		return 0, -1
	}
	m := checkSummary.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("repo check %v says no packs read: %s", args, r.stdout)
	}
	read, _ = strconv.Atoi(m[1])
	all, _ = strconv.Atoi(m[2])
	return read, all
}

// TestRepoCheckSubsets: repo check --read-data-subset reads the packs
// asked for, --read-data-new those the verifier has not read before.
func TestRepoCheckSubsets(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	r := []string{"--repo", filepath.Join(dir, "repo")}
	mustRun(t, cfg, slices.Concat([]string{"repo", "init", "--insecure-no-password"}, r)...)
	mustRun(t, cfg, append([]string{"backup"}, slices.Concat(r, []string{"disk:sample.img"})...)...)
	mustRun(t, cfg, append([]string{"backup"}, slices.Concat(r, []string{"fs:sample"})...)...)

	_, all := packsChecked(t, cfg, slices.Concat(r, []string{"--read-data"})...)
	if all < 2 {
		t.Fatalf("%d packs", all)
	}
	sum := 0
	for _, g := range []string{"1/3", "2/3", "3/3"} {
		read, _ := packsChecked(t, cfg, slices.Concat(r, []string{"--read-data-subset", g})...)
		sum += read
	}
	if sum != all {
		t.Errorf("groups 1/3..3/3 read %d packs, want %d", sum, all)
	}
	if read, _ := packsChecked(t, cfg, slices.Concat(r, []string{"--read-data-subset", "1"})...); read != 1 {
		t.Errorf("--read-data-subset 1 read %d packs", read)
	}
	if read, _ := packsChecked(t, cfg, slices.Concat(r, []string{"--read-data-subset", "50%"})...); read != (all+1)/2 {
		t.Errorf("--read-data-subset 50%% read %d of %d packs", read, all)
	}

	// A new verifier reads everything once, then nothing until a backup
	// adds packs.
	v := slices.Concat(r, []string{"--read-data-new", "--verifier", "cli-test"})
	if read, _ := packsChecked(t, cfg, v...); read != all {
		t.Errorf("first --read-data-new read %d of %d packs", read, all)
	}
	if read, _ := packsChecked(t, cfg, v...); read != 0 {
		t.Errorf("second --read-data-new read %d packs", read)
	}
	os.WriteFile(filepath.Join(cfg, "fs", "sample", "new-file"), []byte(strings.Repeat("a new file\n", 1000)), 0o644)
	mustRun(t, cfg, append([]string{"backup"}, slices.Concat(r, []string{"fs:sample"})...)...)
	read, now := packsChecked(t, cfg, v...)
	if read == 0 || read != now-all {
		t.Errorf("--read-data-new after a backup read %d packs, want the %d added", read, now-all)
	}

	mustFail(t, cfg, "--read-data-subset", append([]string{"repo", "check"}, slices.Concat(r, []string{"--read-data-subset", "0%"})...)...)
	mustFail(t, cfg, "--read-data reads every pack", append([]string{"repo", "check"}, slices.Concat(r, []string{"--read-data", "--read-data-new"})...)...)
	mustFail(t, cfg, "verifier", append([]string{"repo", "check"}, slices.Concat(r, []string{"--read-data-new", "--verifier", "../x"})...)...)
	// 2^32 groups divided by zero (a panic), more read nothing.
	mustFail(t, cfg, "at most 1000000 groups", append([]string{"repo", "check"}, slices.Concat(r, []string{"--read-data-subset", "1/4294967296"})...)...)
	mustFail(t, cfg, "at most 1000000 groups", append([]string{"repo", "check"}, slices.Concat(r, []string{"--read-data-subset", "2/4294967297"})...)...)

	// An object in data/ that is no pack (a short name panicked) is a
	// problem, in each mode.
	os.WriteFile(filepath.Join(dir, "repo", "data", "x"), []byte("stray"), 0o600)
	for _, mode := range [][]string{{"--read-data-subset", "1/2"}, {"--read-data-subset", "1"}, {"--read-data"}} {
		res := astrolabe(t, cfg, append([]string{"repo", "check"}, slices.Concat(r, mode)...)...)
		if res.code == 0 || !strings.Contains(res.stdout, "data/x is not a pack") || !strings.Contains(res.stderr, "1 problem(s) found") {
			t.Errorf("repo check %v with data/x: exit %d\nstdout: %s\nstderr: %s", mode, res.code, res.stdout, res.stderr)
		}
	}
}

// TestReadDataSubsetMessages: a bad --read-data-subset (empty included)
// is a usage error saying once which value is wrong and the forms
// wanted, in plain words; --read-data-new with nothing new says so.
func TestReadDataSubsetMessages(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	repoDir := filepath.Join(dir, "repo")
	rf := []string{"--repo", repoDir, "--insecure-no-password"}
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	mustRun(t, cfg, append([]string{"backup", "fs:sample"}, rf...)...)
	for _, c := range []struct{ subset, want string }{
		{"", `--read-data-subset "": empty: want n/t`},
		{"abc", `--read-data-subset "abc": want n/t (group n of t), x% (a percentage) or N`},
		{"1/", `--read-data-subset "1/": want n/t`},
		{"x/2", `--read-data-subset "x/2": want n/t`},
		{"1/0", `--read-data-subset "1/0": t must be at least 1`},
		{"3/2", `--read-data-subset "3/2": want 1 <= n <= 2`},
		{"abc%", `--read-data-subset "abc%": want x%`},
	} {
		r := astrolabe(t, cfg, append([]string{"repo", "check", "--read-data-subset", c.subset}, rf...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "subset") != 1 ||
			strings.Contains(r.stderr, "strconv") {
			t.Errorf("--read-data-subset %q: exit %d, stderr %q; want exit 2 and %q", c.subset, r.code, r.stderr, c.want)
		}
	}
	args := append([]string{"repo", "check", "--read-data-new", "--verifier", "v1"}, rf...)
	first := mustRun(t, cfg, args...)
	if strings.Contains(first.stdout, "no pack new") {
		t.Errorf("first --read-data-new found nothing new: %q", first.stdout)
	}
	again := mustRun(t, cfg, args...)
	if !strings.Contains(again.stdout, "no pack new since the last read by verifier v1 (") {
		t.Errorf("--read-data-new with nothing new: stdout %q, stderr %q", again.stdout, again.stderr)
	}
}
