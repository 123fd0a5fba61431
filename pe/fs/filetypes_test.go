package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

// TestRestoreSymlinksAreData: a symlink is restored as the link it was,
// whatever its target says — absolute, out of the tree by "..", through
// other links, in a loop — from trusted and untrusted input alike, and
// nothing is ever written through one.
func TestRestoreSymlinksAreData(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	outside := mkdir(t, filepath.Join(base, "outside"))
	tm := newTestRoot(t, mkdir(t, filepath.Join(base, "root")))
	links := map[string]string{
		"abs":       outside,
		"etc-alt":   "/etc/alternatives/awk",
		"d/up":      "../../outside",
		"d/e/top":   "../../../..",
		"chain":     "d/up/..",
		"loop1":     "loop2",
		"loop2":     "loop1",
		"dangling":  "/nowhere/at/all",
		"self":      ".",
		"d/e/fine":  "../../f",
		"d/e/inner": "fine",
	}
	members := []tarMember{{name: "f", typ: tar.TypeReg, body: "content"}}
	for name, target := range links {
		members = append(members, tarMember{name: name, typ: tar.TypeSymlink, link: target})
	}
	// After the links: a file of the same directory, and one whose name
	// the link would redirect were it followed (refused below).
	members = append(members, tarMember{name: "d/e/later", typ: tar.TypeReg, body: "x"})
	b := buildTar(t, members...)
	for _, src := range []pe.ProtectedEntity{newTarPE(t, "trusted", b), untrustedPE{newTarPE(t, "zip", b), int64(len(b))}} {
		p, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew})
		if err != nil {
			t.Fatalf("%s: %v", src.ID(), err)
		}
		got, _ := treeEntries(t, filepath.Join(tm.Root(), p.ID().Name()))
		for name, target := range links {
			if e := got[name]; e.Type != "symlink" || e.Link != target {
				t.Errorf("%s: %s restored as %+v, want a symlink to %q", src.ID(), name, e, target)
			}
		}
	}
	if entries, err := os.ReadDir(outside); err != nil || len(entries) != 0 {
		t.Errorf("written outside: %v %v", entries, err)
	}

	// An archive whose members go through a symlink it made: refused,
	// nothing written anywhere.
	for _, evil := range [][]tarMember{
		{{name: "abs", typ: tar.TypeSymlink, link: outside}, {name: "abs/planted", typ: tar.TypeReg, body: "x"}},
		{{name: "abs", typ: tar.TypeSymlink, link: outside}, {name: "abs/", typ: tar.TypeDir}, {name: "abs/planted", typ: tar.TypeReg, body: "x"}},
		{{name: "abs", typ: tar.TypeSymlink, link: outside}, {name: "abs/sub/deep/planted", typ: tar.TypeFifo}},
		{{name: "up", typ: tar.TypeSymlink, link: "../outside"}, {name: "up/planted", typ: tar.TypeSymlink, link: "x"}},
		{{name: "abs", typ: tar.TypeSymlink, link: outside}, {name: "abs/planted", typ: tar.TypeLink, link: "abs"}},
	} {
		b := buildTar(t, evil...)
		for _, src := range []pe.ProtectedEntity{newTarPE(t, "trusted", b), untrustedPE{newTarPE(t, "zip", b), int64(len(b))}} {
			_, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew})
			var ue *UnsafeArchiveError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), "planted") {
				t.Errorf("%s %v: %v, want an UnsafeArchiveError naming the planted member", src.ID(), evil, err)
			}
		}
	}
	if entries, err := os.ReadDir(outside); err != nil || len(entries) != 0 {
		t.Errorf("written outside: %v %v", entries, err)
	}
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}
}

// specialTar holds fifos and device nodes with attrs, and hard links to
// them.
func specialTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2025, 1, 2, 3, 4, 5, 987654321, time.UTC)
	for _, h := range []*tar.Header{
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt},
		{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt},
		{Name: "dev/loop7", Typeflag: tar.TypeBlock, Mode: 0o660, Gid: 6, Devmajor: 7, Devminor: 7, ModTime: mt},
		{Name: "dev/null-too", Typeflag: tar.TypeLink, Linkname: "dev/null", ModTime: mt},
		{Name: "run/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt},
		{Name: "run/initctl", Typeflag: tar.TypeFifo, Mode: 0o2600, Uid: 1234, Gid: 99, ModTime: mt,
			PAXRecords: map[string]string{"SCHILY.xattr.trusted.t": "kept when trusted"}},
		{Name: "run/pipe-too", Typeflag: tar.TypeLink, Linkname: "run/initctl", ModTime: mt},
	} {
		h.Format = tar.FormatPAX
		must(t, tw.WriteHeader(h))
	}
	must(t, tw.Close())
	return buf.Bytes()
}

// TestRestoreSpecialFiles: fifos are restored from any input, device nodes
// from trusted input or with KeepPrivileges, and from a plain untrusted
// one left out with a warning each, the restore succeeding; hard links to
// them stay hard links.
func TestRestoreSpecialFiles(t *testing.T) {
	petest.RequireRoot(t, "creates device nodes")
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	b := specialTar(t)
	untrusted := untrustedPE{newTarPE(t, "zip", b), int64(len(b))}
	mt := time.Date(2025, 1, 2, 3, 4, 5, 987654321, time.UTC).UnixNano()

	for _, tt := range []struct {
		what    string
		src     pe.ProtectedEntity
		keep    bool
		devices bool
	}{
		{"trusted", newTarPE(t, "snapshot", b), false, true},
		{"untrusted", untrusted, false, false},
		{"untrusted with KeepPrivileges", untrusted, true, true},
	} {
		var log bytes.Buffer
		old := slog.Default()
		slog.SetDefault(slog.New(slog.NewTextHandler(&log, nil)))
		p, err := tm.Copy(ctx, tt.src, pe.CopyOptions{Mode: pe.CreateNew, KeepPrivileges: tt.keep})
		slog.SetDefault(old)
		if err != nil {
			t.Fatalf("%s: %v", tt.what, err)
		}
		dir := filepath.Join(tm.Root(), p.ID().Name())
		got, links := treeEntries(t, dir)

		fifo := got["run/initctl"]
		wantFifo := entry{Type: "fifo", Mode: 0o2600, UID: 1234, GID: 99, MTime: mt}
		if !tt.devices {
			wantFifo = entry{Type: "fifo", Mode: 0o600, MTime: mt} // setgid, owner dropped
		}
		fifo.Xattrs = nil
		if !equalEntry(fifo, wantFifo) || links["run/pipe-too"] != "run/initctl" {
			t.Errorf("%s: fifo %+v, links %v, want %+v", tt.what, got["run/initctl"], links, wantFifo)
		}
		x, err := listXattrs(filepath.Join(dir, "run", "initctl"))
		must(t, err)
		if _, ok := x["trusted.t"]; ok != tt.devices {
			t.Errorf("%s: fifo's trusted.* xattr kept: %v", tt.what, ok)
		}

		if tt.devices {
			if e := got["dev/null"]; e.Type != "char" || e.Dev != [2]int64{1, 3} || e.Mode != 0o666 || e.MTime != mt || links["dev/null-too"] != "dev/null" {
				t.Errorf("%s: dev/null %+v, links %v", tt.what, e, links)
			}
			if e := got["dev/loop7"]; e.Type != "block" || e.Dev != [2]int64{7, 7} || e.GID != 6 {
				t.Errorf("%s: dev/loop7 %+v", tt.what, e)
			}
			if strings.Contains(log.String(), "device") {
				t.Errorf("%s: warned: %s", tt.what, log.String())
			}
			continue
		}
		for _, n := range []string{"dev/null", "dev/loop7", "dev/null-too"} {
			if _, ok := got[n]; ok {
				t.Errorf("%s: device node %s restored", tt.what, n)
			}
			if !strings.Contains(log.String(), "path="+n) {
				t.Errorf("%s: no warning names %s: %s", tt.what, n, log.String())
			}
		}
	}
}

// equalEntry compares what TestRestoreSpecialFiles sets.
func equalEntry(a, b entry) bool {
	return a.Type == b.Type && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.MTime == b.MTime
}

// TestSparseStaysSparse: a file of holes and data keeps its holes through
// a snapshot, its tar image and a restore.
func TestSparseStaysSparse(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	live := mkdir(t, filepath.Join(tm.Root(), "data"))
	f, err := os.Create(filepath.Join(live, "disk.img"))
	must(t, err)
	for i := range int64(8) { // 4 KiB of data every 16 MiB
		_, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), i<<24)
		must(t, err)
	}
	must(t, f.Truncate(128<<20))
	must(t, f.Close())
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))
	p, err := tm.Copy(ctx, getPE(t, tm, sid), pe.CopyOptions{Mode: pe.CreateNew})
	must(t, err)
	for _, dir := range []string{live, tm.trees.treePath("data", sid.Snapshot()), filepath.Join(tm.Root(), p.ID().Name())} {
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(dir, "disk.img"), &st))
		if st.Size != 128<<20 || st.Blocks*512 > 8*64<<10 {
			t.Errorf("%s: size %d, allocated %d bytes, want 8 blocks of data", dir, st.Size, st.Blocks*512)
		}
	}
}
