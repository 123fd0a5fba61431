package jobs

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

var readPacks = regexp.MustCompile(`^read (\d+) of (\d+) packs \((\d+) of \d+ bytes\)`)

// packsRead parses a verify run's details: packs read and in all.
func packsRead(t *testing.T, r Run) (read, all int) {
	t.Helper()
	m := readPacks.FindStringSubmatch(r.Details)
	if m == nil {
		t.Fatalf("verify run details %q", r.Details)
	}
	read, _ = strconv.Atoi(m[1])
	all, _ = strconv.Atoi(m[2])
	if b, _ := strconv.ParseInt(m[3], 10, 64); b != r.Read {
		t.Errorf("details say %d bytes read, the run %d", b, r.Read)
	}
	return read, all
}

// TestVerifyNewAndSample: a nightly backup of a tree that grows, a verify
// job reading the packs new since its last run, and one reading a sample
// of one pack: the first reads everything once, then only what each
// backup added; the sample reads one pack each time.
func TestVerifyNewAndSample(t *testing.T) {
	f := newFixture(t)
	s := f.scheduler(t, `[
  {"name": "nightly", "kind": "backup", "schedule": "02:00", "pes": ["fs:*"],
   "repository": {"location": %[1]q, "passwordFile": %[2]q}},
  {"name": "new", "kind": "verify", "schedule": "03:00", "readDataNew": true,
   "repository": {"location": %[1]q, "passwordFile": %[2]q}},
  {"name": "sample", "kind": "verify", "schedule": "04:00", "readDataSubset": "1",
   "repository": {"location": %[1]q, "passwordFile": %[2]q}}
]`)
	f.clock.SetAt("2026-11-01 00:00:00")
	s.Tick()
	for day := range 3 {
		// Each day's backup adds a file of its own, so packs of its own.
		b := make([]byte, 256<<10)
		rand.Read(b)
		writeFile(t, filepath.Join(f.dir, "fs", "sample", fmt.Sprintf("day%d", day)), string(b))
		for range 3 {
			f.clock.Set(s.Next())
			f.tick(t, s)
		}
	}
	runs := s.History("new")
	if len(runs) != 3 {
		t.Fatalf("%d runs of the new verify, want 3: %+v", len(runs), runs)
	}
	read, all := packsRead(t, runs[0])
	if read != all || all == 0 {
		t.Errorf("the first new verify read %d of %d packs, want all", read, all)
	}
	total := all
	for _, r := range runs[1:] {
		read, all := packsRead(t, r)
		if read == 0 || read != all-total {
			t.Errorf("a new verify read %d packs of %d, want the %d added since: %q", read, all, all-total, r.Details)
		}
		total = all
	}
	for _, r := range s.History("sample") {
		if read, _ := packsRead(t, r); read != 1 {
			t.Errorf("the sample verify read %d packs, want 1", read)
		}
	}
}
