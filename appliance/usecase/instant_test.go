package usecase

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// TestRestoreInstant: an instant restore makes its PE and export at once
// (journaled as live), serves the snapshot and takes writes before it is
// filled; a restart takes it up again from the journal's record and fills
// it to the snapshot with the writes; the record then names a settled
// export of the PE.
func TestRestoreInstant(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	want, err := os.ReadFile(filepath.Join(e.diskRoot, "vm1.img"))
	must(t, err)
	sum, err := e.uc.Backup(ctx, id(t, "disk:vm1.img"), nil)
	must(t, err)

	if _, err := e.uc.RestoreInstant(ctx, sum.ID, "disk", pe.CopyOptions{Mode: pe.Update, Name: "vm1.img"}); !errors.Is(err, pe.ErrNotSupported) {
		t.Fatalf("instant restore in update mode: %v", err)
	}
	ir, err := e.uc.RestoreInstant(ctx, sum.ID, "disk", pe.CopyOptions{Mode: pe.Create, Name: "fast.img"})
	must(t, err)
	if ir.Target != id(t, "disk:fast.img") || !ir.Export.Writable || !ir.Export.Live || ir.Export.Target != ir.Target {
		t.Fatalf("instant restore %+v", ir)
	}
	x, err := e.src.Open(ctx, ir.Export.Name)
	must(t, err)
	got := make([]byte, diskSize)
	if _, err := x.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the export of an instant restore does not read as the snapshot before it is filled")
	}
	_, err = x.(nbd.Writer).WriteAt([]byte("written before the fill"), 2<<20+100)
	must(t, err)
	copy(want[2<<20+100:], "written before the fill")
	must(t, x.(interface{ Flush() error }).Flush())
	x.(interface{ Close() error }).Close()
	if _, err := e.uc.StopExport(ctx, ir.Export.ID, false, nil); !errors.Is(err, pe.ErrExists) {
		t.Fatalf("stop of a live restore's export: %v", err)
	}

	// Unfilled, the target refuses snapshots (a backup would hold holes),
	// and says so across the restart below.
	if _, err := e.uc.Snapshot(ctx, ir.Target, nil); !errors.Is(err, pe.ErrIncomplete) {
		t.Fatalf("snapshot of an unfilled instant restore target: %v", err)
	}

	// The appliance stops before any fill, and starts again: the journal
	// has the live restore.
	must(t, e.uc.Close())
	rec := slices.Clone(e.journal.recorded())
	if len(rec) != 1 || rec[0] != fmt.Sprintf("export %s %s %s true", ir.Export.ID, ir.Export.Name, ir.Target) {
		t.Fatalf("journal %q", rec)
	}
	fresh, err := New(Config{Manager: e.m, Repository: e.r, Exports: e.src, Journal: e.journal})
	must(t, err)
	r, err := fresh.ResumeExport(ctx, ir.Export)
	must(t, err)
	if r.Name != ir.Export.Name || !r.Live {
		t.Fatalf("resumed %+v", r)
	}
	resumed := fresh.ResumedRestores()
	if len(resumed) != 1 || len(fresh.ResumedRestores()) != 0 {
		t.Fatalf("resumed restores %v", resumed)
	}
	var prog counter
	res, err := resumed[0].Task()(ctx, &prog)
	must(t, err)
	if res["id"] != "disk:fast.img" || prog.added() == 0 {
		t.Errorf("task result %v, progress %d", res, prog.added())
	}
	b, err := os.ReadFile(filepath.Join(e.diskRoot, "fast.img"))
	must(t, err)
	if !bytes.Equal(b, want) {
		t.Fatal("the filled PE differs from the snapshot with the write")
	}
	if _, err := fresh.Snapshot(ctx, ir.Target, nil); err != nil {
		t.Errorf("snapshot of the filled target: %v", err)
	}
	if rec := e.journal.recorded(); rec[len(rec)-1] != fmt.Sprintf("update %s %s %s false", ir.Export.ID, ir.Export.Name, ir.Target) {
		t.Errorf("journal after the fill %q", rec)
	}
	// Settled: the export serves the PE, and stops like any other.
	if ex := fresh.Exports(); len(ex) != 1 || ex[0].Live || ex[0].Target != ir.Target {
		t.Errorf("exports after the fill %+v", ex)
	}
	// A settled export comes back after a restart: of the PE, although
	// its snapshot is not one of the configuration's.
	must(t, fresh.Close())
	again, err := New(Config{Manager: e.m, Repository: e.r, Exports: e.src, Journal: e.journal})
	must(t, err)
	settled := ir.Export
	settled.Live = false
	if r, err := again.ResumeExport(ctx, settled); err != nil || r.Target != ir.Target || r.Live {
		t.Fatalf("settled export resumed: %+v %v", r, err)
	}
	_, err = again.StopExport(ctx, ir.Export.ID, false, nil)
	must(t, err)
	tm, _ := e.m.Type(ctx, "disk")
	if live, _ := tm.List(ctx); len(live) != 2 {
		t.Errorf("disk PEs %v, want vm1.img and fast.img", live)
	}
}

// TestRestoreInstantCancelled: a user who cancels the fill's task aborts
// the restore: its PE and export are gone. A shutdown leaves both.
func TestRestoreInstantCancelled(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	sum, err := e.uc.Backup(ctx, id(t, "disk:vm1.img"), nil)
	must(t, err)
	for _, cause := range []error{tasks.ErrShutdown, tasks.ErrCancelled} {
		ir, err := e.uc.RestoreInstant(ctx, sum.ID, "disk", pe.CopyOptions{Mode: pe.CreateNew})
		must(t, err)
		stopped, cancel := context.WithCancelCause(ctx)
		cancel(cause)
		if _, err := ir.Task()(stopped, nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("fill stopped by %v: %v", cause, err)
		}
		_, statErr := os.Stat(filepath.Join(e.diskRoot, ir.Target.Name()))
		exported := len(e.uc.Exports()) == 1
		switch cause {
		case tasks.ErrShutdown:
			if statErr != nil || !exported {
				t.Fatalf("a shutdown removed the restore: %v, exported %v", statErr, exported)
			}
			// Cancelled next, as a user would.
			stopped, cancel = context.WithCancelCause(ctx)
			cancel(tasks.ErrCancelled)
			ir.Task()(stopped, nil)
			_, statErr = os.Stat(filepath.Join(e.diskRoot, ir.Target.Name()))
			exported = len(e.uc.Exports()) == 1
			fallthrough
		case tasks.ErrCancelled:
			if !errors.Is(statErr, os.ErrNotExist) || exported {
				t.Fatalf("a cancelled restore left its PE (%v) or export (%v)", statErr, exported)
			}
		}
	}
}
