package fs

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

func TestRestoreModes(t *testing.T) {
	petest.RequireRoot(t, "compares owners")
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	makeTree(t, filepath.Join(tm.Root(), "data"))
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))
	src := getPE(t, tm, sid)
	want, wantLinks := treeEntries(t, tm.trees.treePath("data", sid.Snapshot()))

	checkTree := func(what string, p pe.ProtectedEntity) {
		t.Helper()
		got, gotLinks := treeEntries(t, filepath.Join(tm.Root(), p.ID().Name()))
		compareEntries(t, what, got, want)
		if !reflect.DeepEqual(gotLinks, wantLinks) {
			t.Errorf("%s: hard links %v, want %v", what, gotLinks, wantLinks)
		}
		if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
			t.Errorf("%s: leftovers in the root: %v", what, h)
		}
	}

	// create_new: a fresh name every time.
	var progress petest.Progress
	p1, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew, Progress: &progress})
	must(t, err)
	if !strings.HasPrefix(p1.ID().Name(), "data-") || p1.ID().Type() != Type {
		t.Errorf("create_new made %s", p1.ID())
	}
	checkTree("create_new", p1)
	img := openData(t, src)
	if done, total := progress.Counts(); total != img.Size() || done != img.Size() {
		t.Errorf("progress %s, want %d/%d", progress.String(), img.Size(), img.Size())
	}
	p2, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew})
	must(t, err)
	if p2.ID() == p1.ID() {
		t.Errorf("create_new twice made %s both times", p1.ID())
	}

	// create: the source's name exists; another name does not.
	if _, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.Create}); !errors.Is(err, pe.ErrExists) {
		t.Errorf("create over the existing source: %v, want ErrExists", err)
	}
	p3, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.Create, Name: "copy"})
	must(t, err)
	if p3.ID() != fsID(t, "copy") {
		t.Errorf("create made %s", p3.ID())
	}
	checkTree("create", p3)
	if _, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.Create, Name: "copy"}); !errors.Is(err, pe.ErrExists) {
		t.Errorf("create twice: %v, want ErrExists", err)
	}
	if _, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.Create, Name: ".sneaky"}); err == nil {
		t.Error("create of a hidden name succeeded")
	}

	// update: the live tree, changed since the snapshot, is put back.
	live := filepath.Join(tm.Root(), "data")
	must(t, os.Chmod(filepath.Join(live, "ro"), 0o755))
	must(t, os.RemoveAll(filepath.Join(live, "sub")))
	writeFile(t, filepath.Join(live, "a.txt"), []byte("changed"), 0o600)
	writeFile(t, filepath.Join(live, "extra"), []byte("not in the snapshot"), 0o644)
	p4, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.Update})
	must(t, err)
	if p4.ID() != fsID(t, "data") {
		t.Errorf("update made %s", p4.ID())
	}
	checkTree("update", p4)
	if list, _ := p4.ListSnapshots(ctx); len(list) != 1 {
		t.Errorf("update lost snapshots: %v", list)
	}
	if _, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.Update, Name: "nothere"}); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("update of a missing PE: %v, want ErrNotFound", err)
	}

	// Overwrite is update.
	must(t, os.Remove(filepath.Join(tm.Root(), "copy", "a.txt")))
	must(t, p3.Overwrite(ctx, src, true))
	checkTree("overwrite", p3)

	if _, err := tm.Copy(ctx, src, pe.CopyOptions{}); err == nil {
		t.Error("copy without a mode succeeded")
	}
}

// TestRestoreForeignTar restores a tar stream made by someone else: no
// root entry, implicit parents, "./" names, a sparse GNU tar.
func TestRestoreForeignTar(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	b := buildTar(t,
		tarMember{name: "./top.txt", typ: tar.TypeReg, body: "top"},
		tarMember{name: "a/b/c.txt", typ: tar.TypeReg, body: "implicit parents"},
		tarMember{name: "a/", typ: tar.TypeDir},
		tarMember{name: "a/b/link", typ: tar.TypeSymlink, link: "../../top.txt"},
		tarMember{name: "a/hard", typ: tar.TypeLink, link: "./top.txt"},
		tarMember{name: "zeros", typ: tar.TypeReg, body: strings.Repeat("\x00", 3<<20)},
	)
	p, err := tm.Copy(ctx, newTarPE(t, "some/where/backup.tar", b), pe.CopyOptions{Mode: pe.CreateNew})
	must(t, err)
	if !strings.HasPrefix(p.ID().Name(), "some_where_backup.tar-") {
		t.Errorf("create_new named it %s", p.ID())
	}
	dir := filepath.Join(tm.Root(), p.ID().Name())
	got, links := treeEntries(t, dir)
	if got["a/b/c.txt"].Size != 16 || got["a/b/link"].Link != "../../top.txt" || links["a/hard"] != "a/hard" || links["top.txt"] != "a/hard" {
		t.Errorf("restored %+v, links %v", got, links)
	}
	if got["."].Mode != 0o755 || got["a/b"].Mode != 0o755 {
		t.Errorf("implicit directories have modes %o %o, want 755", got["."].Mode, got["a/b"].Mode)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a", "b", "link")); err != nil || string(b) != "top" {
		t.Errorf("symlink reads %q, %v", b, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "zeros"))
	must(t, err)
	if blocks := fi.Sys().(*syscallStat).Blocks; blocks*512 >= 3<<20 {
		t.Errorf("all-zero file allocated %d bytes, want a hole", blocks*512)
	}
}

type syscallStat = syscall.Stat_t

func TestRestoreRejectsUnsafeTars(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	tm := newTestRoot(t, base)
	must(t, os.Mkdir(filepath.Join(tm.Root(), "existing"), 0o755))
	writeFile(t, filepath.Join(tm.Root(), "existing", "keep"), []byte("keep"), 0o644)
	ok := tarMember{name: "fine.txt", typ: tar.TypeReg, body: "fine"}

	tests := []struct {
		name    string
		members []tarMember
		bad     []string // members the error must name
	}{
		{"dotdot", []tarMember{ok, {name: "../evil", typ: tar.TypeReg, body: "x"}}, []string{"../evil"}},
		{"absolute", []tarMember{{name: "/abs", typ: tar.TypeReg, body: "x"}}, []string{"/abs"}},
		{"inner dotdot", []tarMember{{name: "a/../../x", typ: tar.TypeReg, body: "x"}}, []string{"a/../../x"}},
		{"through symlink", []tarMember{
			{name: "l", typ: tar.TypeSymlink, link: "/etc"},
			{name: "l/passwd", typ: tar.TypeReg, body: "root::0:0::/:/bin/sh"},
		}, []string{"l/passwd"}},
		{"through symlink below", []tarMember{
			{name: "d/l", typ: tar.TypeSymlink, link: "/"},
			{name: "d/l/etc/", typ: tar.TypeDir},
			{name: "d/l/etc/passwd", typ: tar.TypeReg, body: "x"},
		}, []string{"d/l/etc/", "d/l/etc/passwd"}},
		{"hardlink through symlink", []tarMember{
			{name: "l", typ: tar.TypeSymlink, link: "/etc"},
			{name: "h", typ: tar.TypeLink, link: "l/shadow"},
		}, []string{"h"}},
		{"fifo then below it", []tarMember{
			{name: "p", typ: tar.TypeFifo},
			{name: "p/x", typ: tar.TypeReg, body: "x"},
		}, []string{"p/x"}},
		{"through relative symlink", []tarMember{
			{name: "l", typ: tar.TypeSymlink, link: "."},
			{name: "l/x", typ: tar.TypeReg, body: "x"},
		}, []string{"l/x"}},
		{"hardlink out", []tarMember{{name: "h", typ: tar.TypeLink, link: "../x"}}, []string{"h"}},
		{"hardlink absolute", []tarMember{{name: "h", typ: tar.TypeLink, link: "/etc/shadow"}}, []string{"h"}},
		{"hardlink missing", []tarMember{{name: "h", typ: tar.TypeLink, link: "nothere"}}, []string{"h"}},
		{"hardlink to symlink", []tarMember{
			{name: "s", typ: tar.TypeSymlink, link: "fine.txt"},
			{name: "h", typ: tar.TypeLink, link: "s"},
		}, []string{"h"}},
		{"below a file", []tarMember{ok, {name: "fine.txt/x", typ: tar.TypeReg, body: "x"}}, []string{"fine.txt/x"}},
		{"dir replaced by symlink", []tarMember{
			{name: "d/", typ: tar.TypeDir},
			{name: "d", typ: tar.TypeSymlink, link: "/etc"},
			{name: "d/passwd", typ: tar.TypeReg, body: "x"},
		}, []string{"d", "d/passwd"}},
		{"duplicate file", []tarMember{ok, ok}, []string{"fine.txt"}},
		{"duplicate fifo", []tarMember{{name: "p", typ: tar.TypeFifo}, {name: "p", typ: tar.TypeFifo}}, []string{"p"}},
		{"hardlink to a directory", []tarMember{{name: "d/", typ: tar.TypeDir}, {name: "h", typ: tar.TypeLink, link: "d"}}, []string{"h"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := newTarPE(t, "evil", buildTar(t, tt.members...))
			for _, opts := range []pe.CopyOptions{
				{Mode: pe.CreateNew},
				{Mode: pe.Create, Name: "target"},
				{Mode: pe.Update, Name: "existing"},
			} {
				_, err := tm.Copy(ctx, src, opts)
				var ue *UnsafeArchiveError
				if !errors.As(err, &ue) || !errors.Is(err, pe.ErrInvalidSource) {
					t.Fatalf("%v: %v, want an UnsafeArchiveError", opts.Mode, err)
				}
				var named []string
				for _, m := range ue.Members {
					named = append(named, m.Name)
				}
				if !reflect.DeepEqual(named, tt.bad) {
					t.Errorf("%v: error names %q, want %q: %v", opts.Mode, named, tt.bad, err)
				}
				for _, b := range tt.bad {
					if !strings.Contains(err.Error(), `"`+b+`"`) {
						t.Errorf("%v: message does not name %q: %v", opts.Mode, b, err)
					}
				}
			}
			// Nothing new anywhere: base holds only the root, the root
			// only the untouched PE.
			entries, err := os.ReadDir(base)
			must(t, err)
			if len(entries) != 1 {
				t.Errorf("created outside the root: %v", entries)
			}
			ids, err := tm.List(ctx)
			must(t, err)
			if len(ids) != 1 || ids[0].Name() != "existing" {
				t.Errorf("PEs after refused restores: %v", ids)
			}
			if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
				t.Errorf("leftovers in the root: %v", h)
			}
			got, _ := treeEntries(t, filepath.Join(tm.Root(), "existing"))
			if len(got) != 2 || got["keep"].Size != 4 {
				t.Errorf("existing PE changed: %v", got)
			}
		})
	}
}

func TestRestoreReportsAtMostTen(t *testing.T) {
	var members []tarMember
	for i := range 25 {
		members = append(members, tarMember{name: "/abs" + strings.Repeat("x", i), typ: tar.TypeReg, body: "x"})
	}
	tm := newTestRoot(t, t.TempDir())
	_, err := tm.Copy(context.Background(), newTarPE(t, "evil", buildTar(t, members...)), pe.CopyOptions{Mode: pe.CreateNew})
	var ue *UnsafeArchiveError
	if !errors.As(err, &ue) || len(ue.Members) != maxRejected || !ue.More {
		t.Fatalf("error %v", err)
	}
}

func TestRestoreCancelled(t *testing.T) {
	tm := newTestRoot(t, t.TempDir())
	makeTree(t, filepath.Join(tm.Root(), "data"))
	src := getPE(t, tm, fsID(t, "data"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled copy: %v", err)
	}
	if _, err := src.Snapshot(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled snapshot: %v", err)
	}
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}
	if h := hiddenEntries(t, tm.trees.Snapshots().Of("data")); len(h) != 0 {
		t.Errorf("leftovers in the snapshot directory: %v", h)
	}
	if ids, _ := tm.List(ctx); len(ids) != 1 {
		t.Errorf("PEs after cancelled copy: %v", ids)
	}
}
