package main

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
)

// retentionZone is where the simulated nights are: 02:00 in Tokyo is the
// day before in UTC, so bucketing by UTC instead of local time shows.
const retentionZone = "Asia/Tokyo"

// nightlyTimes are 30 nightly backups at 02:00 from 2026-10-20 (crossing a
// month), with three more on 2026-11-10 and one late on Sunday 2026-11-15.
func nightlyTimes(t *testing.T, loc *time.Location) []time.Time {
	t.Helper()
	var out []time.Time
	first := time.Date(2026, 10, 20, 2, 0, 0, 0, loc)
	for day := range 30 {
		out = append(out, first.AddDate(0, 0, day))
	}
	for _, s := range []string{"2026-11-10 12:00:00", "2026-11-10 23:30:00", "2026-11-10 23:59:59", "2026-11-15 23:45:00"} {
		tm, err := time.ParseInLocation(time.DateTime, s, loc)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tm)
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// backupAt backs up a new snapshot of PE id at each time, on the
// repository's clock, and returns the repository snapshot of each time.
func backupAt(t *testing.T, cfgDir, repoDir, password string, id pe.ID, times []time.Time) map[pe.ID]time.Time {
	t.Helper()
	ctx := context.Background()
	m, err := config.Load(cfgDir, config.Factories())
	if err != nil {
		t.Fatal(err)
	}
	var now time.Time
	r, err := openTestRepo(ctx, repoDir, repo.Options{Password: password, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[pe.ID]time.Time{}
	for _, now = range times {
		snap, err := p.Snapshot(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		sp, err := m.Get(ctx, snap)
		if err != nil {
			t.Fatal(err)
		}
		s, err := r.Backup(ctx, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		out[s.ID] = now
	}
	return out
}

func openTestRepo(ctx context.Context, dir string, opts repo.Options) (*repo.Repository, error) {
	be, err := backend.NewDir(dir)
	if err != nil {
		return nil, err
	}
	return repo.Open(ctx, be, opts)
}

// forgetLines parses the output of repo forget: per snapshot its action
// and reasons.
type forgetLine struct {
	id      string
	keep    bool
	reasons string
}

func parseForget(t *testing.T, out string) []forgetLine {
	t.Helper()
	var lines []forgetLine
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || (f[3] != "keep" && f[3] != "remove") {
			continue
		}
		lines = append(lines, forgetLine{id: f[0], keep: f[3] == "keep", reasons: strings.Join(f[4:], " ")})
	}
	return lines
}

// TestRetentionMatchesRestic: 30 simulated nights backed up with
// controlled times; repo forget --dry-run keeps, for each policy, exactly
// the times restic forget --dry-run keeps for the same times, and the
// real run leaves exactly those, the repository whole.
func TestRetentionMatchesRestic(t *testing.T) {
	loc, err := time.LoadLocation(retentionZone)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TZ", retentionZone) // for the binary and restic
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	const password = "retention"
	t.Setenv("ASTROLABE_PASSWORD", password)
	repoDir := filepath.Join(dir, "repo")
	r := []string{"--repo", repoDir}
	mustRun(t, cfg, append([]string{"repo", "init"}, r...)...)

	times := nightlyTimes(t, loc)
	disk, _ := pe.ParseID("disk:sample.img")
	fs, _ := pe.ParseID("fs:sample")
	snapTimes := backupAt(t, cfg, repoDir, password, disk, times)
	other := backupAt(t, cfg, repoDir, password, fs, times[:3])

	policies := [][]string{
		{"--keep-daily", "7", "--keep-weekly", "4"},
		{"--keep-last", "5"},
		{"--keep-monthly", "2", "--keep-hourly", "3"},
		{"--keep-within", "10d"},
	}
	want := repotest.ResticKept(t, times, policies)
	for i, p := range policies {
		args := append(append(append([]string{"repo", "forget"}, r...), p...), "--dry-run", disk.String())
		lines := parseForget(t, mustRun(t, cfg, args...).stdout)
		if len(lines) != len(times) {
			t.Fatalf("forget %v: %d snapshots listed, want %d", p, len(lines), len(times))
		}
		var kept []string
		for _, l := range lines {
			tm, ok := snapTimes[mustID(t, l.id)]
			if !ok {
				t.Fatalf("forget %v lists %s, not a snapshot of %s", p, l.id, disk)
			}
			if l.keep {
				kept = append(kept, tm.In(loc).Format(time.DateTime))
				if l.reasons == "" {
					t.Errorf("forget %v keeps %s with no reason", p, l.id)
				}
			}
		}
		slices.Sort(kept)
		if !reflect.DeepEqual(kept, want[i]) {
			t.Errorf("forget %v keeps\n  %v\nrestic keeps\n  %v", p, kept, want[i])
		} else {
			t.Logf("forget %v: keeps %d of %d, as restic", p, len(kept), len(times))
		}
	}

	if res := mustRun(t, cfg, append(append([]string{"repo", "forget"}, r...), "--dry-run", "--keep-last", "1", "disk:nosuch.img")...); !strings.Contains(res.stderr, "disk:nosuch.img has no snapshots") {
		t.Errorf("forget of a PE without snapshots: %+v", res)
	}

	// The real run forgets the others of disk:sample.img only.
	args := append(append([]string{"repo", "forget"}, r...), "--keep-daily", "7", "--keep-weekly", "4", disk.String())
	res := mustRun(t, cfg, args...)
	if !strings.Contains(res.stdout, fmt.Sprintf("keep %d snapshot(s), removed %d", len(want[0]), len(times)-len(want[0]))) {
		t.Errorf("forget summary:\n%s", res.stdout)
	}
	var listed []string
	for _, l := range strings.Split(mustRun(t, cfg, append([]string{"repo", "snapshots"}, r...)...).stdout, "\n")[1:] {
		if f := strings.Fields(l); len(f) > 0 {
			listed = append(listed, f[0])
		}
	}
	var wantListed []string
	for id, tm := range snapTimes {
		if slices.Contains(want[0], tm.In(loc).Format(time.DateTime)) {
			wantListed = append(wantListed, id.String())
		}
	}
	for id := range other {
		wantListed = append(wantListed, id.String())
	}
	slices.Sort(listed)
	slices.Sort(wantListed)
	if !reflect.DeepEqual(listed, wantListed) {
		t.Errorf("repo snapshots after forget:\n  %v\nwant\n  %v", listed, wantListed)
	}
	mustRun(t, cfg, append([]string{"repo", "prune"}, r...)...)
	mustRun(t, cfg, append([]string{"repo", "check", "--read-data"}, r...)...)
}

func mustID(t *testing.T, s string) pe.ID {
	t.Helper()
	id, err := pe.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestForgetUsage: the two forms of repo forget do not mix, and a
// policy must say something.
func TestForgetUsage(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	r := []string{"repo", "forget", "--repo", filepath.Join(dir, "repo"), "--insecure-no-password"}
	for _, tc := range []struct {
		want string
		args []string
	}{
		{"want PEID:SNAPSHOT, or --keep-* rules", nil},
		{"names no snapshot", []string{"disk:a"}},
		{"with --keep-* give PE IDs without snapshot", []string{"--keep-daily", "7", "disk:a:s1"}},
		{"keep nothing by themselves", []string{"--keep-daily", "0"}},
		{"unknown unit", []string{"--keep-within", "2w"}},
		{"want a count, or -1 for all", []string{"--keep-last", "-2"}},
	} {
		mustFail(t, cfg, tc.want, append(slices.Clone(r), tc.args...)...)
		if res := astrolabe(t, cfg, append(slices.Clone(r), tc.args...)...); res.code != 2 {
			t.Errorf("forget %v: exit %d, want 2", tc.args, res.code)
		}
	}
}
