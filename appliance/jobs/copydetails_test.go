package jobs

import (
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// A replicate run's details name what it did not copy, and why.
func TestCopyDetails(t *testing.T) {
	id := func(s string) pe.ID {
		t.Helper()
		v, err := pe.ParseID(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	sum := repo.CopySummary{
		Copied:  []pe.ID{id("fs:a:s1")},
		Skipped: []pe.ID{id("fs:a:s0"), id("fs:b:s0")},
		Gone:    []pe.ID{id("fs:c:s9")},
		Differ:  []pe.ID{id("disk:d:s2")},
	}
	want := "copied 1 snapshot(s), 2 there already; forgotten in the source meanwhile, not copied: fs:c:s9; in the target with other content, left alone: disk:d:s2"
	if got := copyDetails(sum); got != want {
		t.Errorf("details %q\nwant %q", got, want)
	}
	if got := copyDetails(repo.CopySummary{}); got != "copied 0 snapshot(s), 0 there already" {
		t.Errorf("details of nothing: %q", got)
	}
}
