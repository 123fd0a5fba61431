package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSweepOverlays: at start the overlays that no recorded export names
// go, unless a process has one open or it is less than a minute old.
func TestSweepOverlays(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	mk := func(name string, age time.Time) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "bitmap"), make([]byte, 8), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, age, age); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := "0123456789abcdef0123456789abcdef"
	used := mk(token, old)
	nfs := mk("nfs-vm1-12345678", old)
	orphan := mk("fedcba9876543210fedcba9876543210", old)
	young := mk("00000000000000000000000000000000", time.Now())
	held := mk("11111111111111111111111111111111", old)
	f, err := os.Open(filepath.Join(held, "bitmap"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(held, old, old); err != nil {
		t.Fatal(err)
	}
	d := stateData{
		Exports:    []exportState{{ID: "disk:a.img:s", Writable: true, Name: "disk:a.img:s/" + token}},
		NFSExports: []nfsState{{ID: "disk:a.img:s", Name: "vm1-12345678"}},
	}
	sweepOverlays(dir, d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for p, want := range map[string]bool{used: true, nfs: true, orphan: false, young: true, held: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: there %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}
