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
