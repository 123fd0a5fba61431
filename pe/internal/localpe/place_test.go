package localpe

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
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

// TestPlaceNewLinkedButNotUnlinked: without RENAME_NOREPLACE, once the
// file is linked under its final name it is in place, even when its
// temporary name cannot be removed (here: a directory whose entries may
// be added, not removed, FS_APPEND_FL).
func TestPlaceNewLinkedButNotUnlinked(t *testing.T) {
	dir := t.TempDir()
	appendOnly := filepath.Join(dir, "append-only")
	if err := os.Mkdir(appendOnly, 0o700); err != nil {
		t.Fatal(err)
	}
	from, to := filepath.Join(appendOnly, ".tmp-file"), filepath.Join(dir, "placed")
	if err := os.WriteFile(from, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	setAppendOnly(t, appendOnly)

	if err := placeNewWithoutRenameat2(from, to); err != nil {
		t.Fatalf("placing a file whose temporary name cannot be removed: %v, want nil", err)
	}
	if b, err := os.ReadFile(to); err != nil || string(b) != "new" {
		t.Errorf("placed file holds %q, %v", b, err)
	}
	if _, err := os.Lstat(from); err != nil {
		t.Errorf("the temporary name is gone (%v): the test did not make its removal fail", err)
	}
}

// fsAppendFL is FS_APPEND_FL of <linux/fs.h>, which x/sys/unix lacks.
const fsAppendFL = 0x20

// setAppendOnly sets FS_APPEND_FL on the directory dir until the test ends.
func setAppendOnly(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, fsAppendFL); err != nil {
		t.Fatalf("set FS_APPEND_FL on %s (needs root and a filesystem with inode flags, such as ext4 or xfs, for t.TempDir: set TMPDIR): %v", dir, err)
	}
	t.Cleanup(func() {
		f, err := os.Open(dir)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, 0); err != nil {
			t.Errorf("clear FS_APPEND_FL on %s: %v", dir, err)
		}
	})
}
