package nbdexport

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/disk"
)

func TestChangedStates(t *testing.T) {
	changed := []pe.Extent{
		{Offset: 100, Length: 50, Kind: pe.ExtentData},
		{Offset: 150, Length: 50, Kind: pe.ExtentHole}, // adjacent: one run
		{Offset: 400, Length: 100, Kind: pe.ExtentData},
	}
	for _, tc := range []struct {
		off, length int64
		want        string
	}{
		{0, 1000, "[{100 0} {100 1} {200 0} {100 1} {500 0}]"},
		{120, 10, "[{10 1}]"},
		{200, 200, "[{200 0}]"},
		{450, 100, "[{50 1} {50 0}]"},
		{0, 50, "[{50 0}]"},
	} {
		if got := fmt.Sprint(changedStates(changed, tc.off, tc.length)); got != tc.want {
			t.Errorf("changedStates(%d, %d) = %s, want %s", tc.off, tc.length, got, tc.want)
		}
	}
	if got := fmt.Sprint(changedStates(nil, 5, 10)); got != "[{10 0}]" {
		t.Errorf("nothing changed: %s", got)
	}
}

// diskSource is a Source over a disk type manager in a temporary
// directory with one snapshot of a 4 MiB image.
func diskSource(t *testing.T) (*Source, string, pe.ID) {
	t.Helper()
	root := t.TempDir()
	img := make([]byte, 4<<20)
	copy(img[1<<20:], "some data")
	if err := os.WriteFile(filepath.Join(root, "a.img"), img, 0o644); err != nil {
		t.Fatal(err)
	}
	tm, err := disk.NewTypeManager(root)
	if err != nil {
		t.Fatal(err)
	}
	m, err := pe.NewManager(tm)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pe.ParseID("disk:a.img")
	p, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.Snapshot(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return NewSource(m, filepath.Join(t.TempDir(), "overlays")), root, snap
}

// liveImages lists the live disk PEs in root.
func liveImages(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestAddWritableOnce: parallel requests for one snapshot make one
// writable export, at once (no copy of the snapshot); the others are
// refused and leave nothing behind.
func TestAddWritableOnce(t *testing.T) {
	src, root, snap := diskSource(t)
	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	exports := make([]Export, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			exports[i], errs[i] = src.AddWritable(context.Background(), snap)
		}()
	}
	wg.Wait()
	var ok []Export
	for i, err := range errs {
		switch {
		case err == nil:
			ok = append(ok, exports[i])
		case !errors.Is(err, pe.ErrExists):
			t.Errorf("AddWritable: %v, want ErrExists", err)
		}
	}
	if len(ok) != 1 {
		t.Fatalf("%d of %d parallel AddWritable succeeded, want 1", len(ok), n)
	}
	if got := liveImages(t, root); len(got) != 1 {
		t.Errorf("disk PEs after %d parallel requests: %v, want a.img alone (no copy)", n, got)
	}
	if got, _ := os.ReadDir(src.overlays); len(got) != 1 {
		t.Errorf("overlays after %d parallel requests: %v, want one", n, got)
	}
	x := ok[0]
	token, found := strings.CutPrefix(x.Name, snap.String()+"/")
	if b, err := hex.DecodeString(token); !found || err != nil || len(b) != 16 {
		t.Errorf("writable export name %q: want %s/<128-bit hex token>", x.Name, snap)
	}
	// Listed as writable under its secret name, opened by it only.
	list, _ := src.List(context.Background())
	if len(list) != 1 || list[0].Name != x.Name || !list[0].Writable {
		t.Errorf("List: %+v", list)
	}
	if _, err := src.Open(context.Background(), snap.String()); !errors.Is(err, nbd.ErrUnknownExport) {
		t.Errorf("a writable export opened by its snapshot ID: %v", err)
	}
	e, err := src.Open(context.Background(), x.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.(nbd.Writer); !ok {
		t.Error("the writable export does not write")
	}
	e.(interface{ Close() error }).Close()
	// Read-only on top of it: refused.
	if err := src.Add(snap); !errors.Is(err, pe.ErrExists) {
		t.Errorf("Add of a snapshot exported writable: %v", err)
	}
	if err := src.Remove(snap); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadDir(src.overlays); len(got) != 0 {
		t.Errorf("overlays after Remove: %v", got)
	}
	// A name recorded for a target (before overlays) comes back as it
	// was; a malformed one is refused.
	target, _ := pe.ParseID("disk:a.img")
	if _, err := src.AddTarget(snap, target, x.Name); err != nil {
		t.Error(err)
	}
	src.Remove(snap)
	if _, err := src.AddTarget(snap, target, snap.String()); err == nil {
		t.Error("AddTarget took a name without a token")
	}
}

// TestWritableOverlay: a writable export writes into its overlay, never
// the snapshot; its writes come back with the export after a restart
// (Close, ResumeWritable); Keep copies the snapshot with them into a new
// PE; Remove discards them once the last client is gone.
func TestWritableOverlay(t *testing.T) {
	ctx := context.Background()
	src, root, snap := diskSource(t)
	x, err := src.AddWritable(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	e, err := src.Open(ctx, x.Name)
	if err != nil {
		t.Fatal(err)
	}
	w := e.(nbd.Writer)
	if _, err := w.WriteAt([]byte("written"), 1<<20+5); err != nil {
		t.Fatal(err)
	}
	if err := e.(interface{ Flush() error }).Flush(); err != nil {
		t.Fatal(err)
	}
	e.(interface{ Close() error }).Close()
	want := make([]byte, 4<<20)
	copy(want[1<<20:], "some data")
	copy(want[1<<20+5:], "written")
	read := func(name string) []byte {
		t.Helper()
		e, err := src.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		defer e.(interface{ Close() error }).Close()
		got := make([]byte, 4<<20)
		if _, err := e.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := read(x.Name); string(got) != string(want) {
		t.Fatal("the export does not read as the snapshot with the write")
	}
	p, _ := src.m.Get(ctx, snap)
	img, _ := p.Data(ctx)
	orig := make([]byte, 4<<20)
	img.ReadAt(orig, 0)
	img.Close()
	if string(orig[1<<20:1<<20+20]) != "some data"+string(make([]byte, 11)) {
		t.Fatal("the write changed the snapshot")
	}

	// A restart: the overlay is closed and opened again by name.
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.ResumeWritable(ctx, snap, x.Name); err != nil {
		t.Fatal(err)
	}
	if got := read(x.Name); string(got) != string(want) {
		t.Fatal("the resumed export lost the write")
	}

	tm, _ := src.m.Type(ctx, "disk")
	kept, err := src.Keep(ctx, snap, tm, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, kept.ID().Name()))
	if err != nil || string(b) != string(want) {
		t.Fatalf("kept PE %s does not hold the snapshot with the write: %v", kept.ID(), err)
	}

	// A client still connected keeps the overlay until it closes.
	e, err = src.Open(ctx, x.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Remove(snap); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadDir(src.overlays); len(got) != 1 {
		t.Fatalf("overlay removed under a connected client: %v", got)
	}
	got := make([]byte, 16)
	if _, err := e.ReadAt(got, 1<<20+5); err != nil || string(got[:7]) != "written" {
		t.Fatalf("a connected client's read after Remove: %q %v", got, err)
	}
	e.(interface{ Close() error }).Close()
	if got, _ := os.ReadDir(src.overlays); len(got) != 0 {
		t.Fatalf("overlay left after the last client closed: %v", got)
	}
	if _, err := src.ResumeWritable(ctx, snap, x.Name); err == nil {
		t.Fatal("an export resumed after its overlay was discarded")
	}
}

// TestWritableRefusesFS: an fs PE's data is a tar stream: no writable
// export of it.
func TestWritableRefusesFS(t *testing.T) {
	src, _, _ := diskSource(t)
	id, _ := pe.ParseID("fs:tree:20260101T000000Z-0001")
	if _, err := src.AddWritable(context.Background(), id); !errors.Is(err, pe.ErrNotSupported) {
		t.Fatalf("writable export of an fs snapshot: %v", err)
	}
}
