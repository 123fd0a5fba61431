package localpe

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestPlaceNew: a finished entry, file or directory, takes a free name
// and never one that is taken, with RENAME_NOREPLACE and without it.
func TestPlaceNew(t *testing.T) {
	for name, place := range map[string]func(from, to string) error{
		"renameat2": placeNew,
		"fallback":  placeNewWithoutRenameat2,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			file, tree := filepath.Join(dir, ".tmp-file"), filepath.Join(dir, ".tmp-tree")
			if err := os.WriteFile(file, []byte("new"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(tree, 0o700); err != nil {
				t.Fatal(err)
			}
			takenFile, takenDir := filepath.Join(dir, "taken-file"), filepath.Join(dir, "taken-dir")
			if err := os.WriteFile(takenFile, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(takenDir, 0o700); err != nil { // empty: a plain rename would replace it
				t.Fatal(err)
			}
			for _, tmp := range []string{file, tree} {
				for _, taken := range []string{takenFile, takenDir} {
					if err := place(tmp, taken); !errors.Is(err, fs.ErrExist) {
						t.Errorf("%s over %s: %v, want ErrExist", filepath.Base(tmp), filepath.Base(taken), err)
					}
				}
				free := filepath.Join(dir, "free"+filepath.Base(tmp))
				if err := place(tmp, free); err != nil {
					t.Fatal(err)
				}
				if _, err := os.Lstat(tmp); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s is still there after placing it: %v", tmp, err)
				}
			}
			if b, err := os.ReadFile(takenFile); err != nil || string(b) != "old" {
				t.Errorf("taken file now holds %q, %v", b, err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "free.tmp-file")); err != nil || string(b) != "new" {
				t.Errorf("placed file holds %q, %v", b, err)
			}
			if fi, err := os.Stat(filepath.Join(dir, "free.tmp-tree")); err != nil || !fi.IsDir() {
				t.Errorf("placed tree: %v %v", fi, err)
			}
		})
	}
}
