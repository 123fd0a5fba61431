package browse

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// countingNames is a DirNames that counts the directories it is given.
type countingNames struct {
	byKey map[string][]string
	puts  int
}

func (c *countingNames) Get(key string) ([]string, bool) { n, ok := c.byKey[key]; return n, ok }
func (c *countingNames) Put(key string, names []string)  { c.byKey[key] = names; c.puts++ }

// TestMountedPagesReadTheDirectoryOnce: the pages of a partition's
// directory after the first take its names from Names, not from the
// directory (a name added after the first page is not seen: a snapshot's
// tree does not change, so none ever is), and entries are described
// from their own lookups.
func TestMountedPagesReadTheDirectoryOnce(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "p1", "big", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"c", "a", "b"} {
		if err := os.WriteFile(filepath.Join(dir, "p1", "big", n), []byte(n+n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(dir, "p1", "big", "link")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(filepath.Join(dir, "p1"))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	names := &countingNames{byKey: map[string][]string{}}
	m := Mounted{Partitions: map[string]*os.Root{"p1": root}, Names: names, Key: "snap"}
	var got []string
	cursor := ""
	for i := 0; i < 10; i++ {
		page, err := m.List("p1/big", cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entries {
			got = append(got, e.Name+":"+string(e.Kind)+":"+e.LinkTarget)
		}
		if i == 0 {
			os.WriteFile(filepath.Join(dir, "p1", "big", "b2"), nil, 0o644)
		}
		if cursor = page.Next; cursor == "" {
			break
		}
	}
	if want := "a:file: b:file: c:file: link:symlink:a sub:dir:"; strings.Join(got, " ") != want {
		t.Errorf("pages: %v, want %s", got, want)
	}
	if names.puts != 1 {
		t.Errorf("the directory was read %d times for its pages", names.puts)
	}
	// Another directory, or the same path of another snapshot, is its own.
	if page, err := (Mounted{Partitions: m.Partitions, Names: names, Key: "other"}).List("p1/big", "", 100); err != nil || len(page.Entries) != 6 {
		t.Errorf("the same path in another snapshot: %+v %v", page.Entries, err)
	}
}
