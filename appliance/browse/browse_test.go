package browse

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func TestCheckPath(t *testing.T) {
	for _, p := range []string{"", "a", "a/b", "a b/ü", "..a", "a.."} {
		if err := CheckPath(p); err != nil {
			t.Errorf("CheckPath(%q): %v", p, err)
		}
	}
	for _, p := range []string{"..", "../etc/passwd", "a/../../b", "/etc", "a/", "a//b", "./a", "a/.", "a\x00b"} {
		if err := CheckPath(p); !errors.Is(err, ErrBadPath) {
			t.Errorf("CheckPath(%q) = %v, want ErrBadPath", p, err)
		}
	}
}

func TestIndexPagesAndFiles(t *testing.T) {
	now := time.Unix(1700000000, 0)
	toc := []pe.TOCEntry{
		{Name: "", Mode: fs.ModeDir | 0o755},
		{Name: "big", Mode: fs.ModeDir | 0o755},
		{Name: "deep/er/file", Mode: 0o644, Size: 3, Offset: 1024}, // parents implied
		{Name: "link", Mode: fs.ModeSymlink | 0o777, Linkname: "deep/er/file"},
		{Name: "hard", Mode: 0o644, HardLink: true, Linkname: "./deep/er/file"},
		{Name: "../escape", Mode: 0o644, Size: 1},
		{Name: "a/../b", Mode: 0o644, Size: 1},
	}
	const n = 2500
	for i := range n {
		toc = append(toc, pe.TOCEntry{Name: fmt.Sprintf("big/f%05d", i), Mode: 0o644, Size: int64(i), ModTime: now})
	}
	x := NewIndex(toc, now)

	root, err := x.List("", "", 100)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range root.Entries {
		names = append(names, e.Name+":"+string(e.Kind))
	}
	if fmt.Sprint(names) != "[big:dir deep:dir hard:file link:symlink]" || root.Next != "" {
		t.Errorf("root: %v next %q", names, root.Next)
	}

	var all []Entry
	cursor, pages := "", 0
	for {
		p, err := x.List("big", cursor, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all, pages = append(all, p.Entries...), pages+1
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if len(all) != n || pages != 3 || all[0].Name != "f00000" || all[n-1].Name != "f02499" || all[n-1].Size != n-1 {
		t.Errorf("big: %d entries in %d pages", len(all), pages)
	}

	off, size, _, err := x.File("hard")
	if err != nil || off != 1024 || size != 3 {
		t.Errorf("hard link: %d %d %v", off, size, err)
	}
	for p, want := range map[string]error{
		"deep":         ErrNotFile,
		"link":         ErrNotFile,
		"nothing":      pe.ErrNotFound,
		"../escape":    ErrBadPath,
		"deep/er/../x": ErrBadPath,
	} {
		if _, _, _, err := x.File(p); !errors.Is(err, want) {
			t.Errorf("File(%q) = %v, want %v", p, err, want)
		}
	}
	if _, err := x.List("deep/er/file", "", 10); !errors.Is(err, ErrBadPath) {
		t.Errorf("List of a file: %v", err)
	}
	if _, err := x.List("none", "", 10); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("List of nothing: %v", err)
	}
	if _, err := x.List("big", "!!", 10); !errors.Is(err, ErrBadPath) {
		t.Errorf("List with a bad cursor: %v", err)
	}
}

func TestSearch(t *testing.T) {
	toc := []pe.TOCEntry{
		{Name: "Report.TXT", Mode: 0o644, Size: 1},
		{Name: "a/report-2.txt", Mode: 0o644, Size: 2},
		{Name: "a/other", Mode: 0o644},
		{Name: "reports", Mode: fs.ModeDir | 0o755},
		{Name: "../report-escape", Mode: 0o644},
		{Name: "Report.TXT", Mode: 0o644, Size: 3}, // replaces the first
	}
	x := NewIndex(toc, time.Unix(0, 0))
	var got []string
	cursor := ""
	for range 10 {
		m, next, err := x.Search("REPORT", cursor, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range m {
			got = append(got, fmt.Sprintf("%s:%s:%d", e.Path, e.Entry.Kind, e.Entry.Size))
		}
		if cursor = next; next == "" {
			break
		}
	}
	if fmt.Sprint(got) != "[a/report-2.txt:file:2 reports:dir:0 Report.TXT:file:3]" {
		t.Errorf("search, a match per page: %v", got)
	}
	for _, c := range []string{"x", "-1", "99"} {
		if _, _, err := x.Search("r", c, 1); !errors.Is(err, ErrBadPath) {
			t.Errorf("cursor %q: %v", c, err)
		}
	}
}
