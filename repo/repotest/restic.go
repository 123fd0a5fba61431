package repotest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// ResticKept backs up a small directory into a new restic repository at
// each time and returns, per policy, the times restic forget --dry-run
// keeps, as local DateTime strings.
func ResticKept(t testing.TB, times []time.Time, policies [][]string) [][]string {
	t.Helper()
	if _, err := exec.LookPath("restic"); err != nil {
		t.Fatal("restic is needed to compare retention with: apt-get install restic (scripts/deps.d/retention.sh)")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)
	os.WriteFile(filepath.Join(data, "f"), []byte("nightly\n"), 0o644)
	restic := func(args ...string) []byte {
		cmd := exec.Command("restic", append([]string{"--no-cache", "-q", "-r", filepath.Join(dir, "repo")}, args...)...)
		cmd.Env = append(os.Environ(), "RESTIC_PASSWORD=retention")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("restic %v: %v", args, err)
		}
		return out
	}
	restic("init")
	for _, tm := range times {
		restic("backup", "--host", "astrolabe-test", "--time", tm.Format(time.DateTime), data)
	}
	var out [][]string
	for _, p := range policies {
		var groups []struct {
			Keep []struct {
				Time time.Time `json:"time"`
			} `json:"keep"`
		}
		if err := json.Unmarshal(restic(append([]string{"forget", "--dry-run", "--json"}, p...)...), &groups); err != nil || len(groups) != 1 {
			t.Fatalf("restic forget %v: %d groups, %v", p, len(groups), err)
		}
		var kept []string
		for _, s := range groups[0].Keep {
			kept = append(kept, s.Time.Local().Format(time.DateTime))
		}
		slices.Sort(kept)
		out = append(out, kept)
	}
	return out
}
