package fs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenBeneath: openBeneath, and its fallback for kernels without
// openat2, open names below a directory and refuse any that passes
// through a symlink or leaves the directory.
func TestOpenBeneath(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a", "b", "f"), []byte("in"), 0o644)
	must(t, os.Symlink("a", filepath.Join(dir, "l")))
	must(t, os.Symlink("../..", filepath.Join(dir, "a", "up")))
	must(t, os.Symlink("f", filepath.Join(dir, "a", "b", "lf")))
	root, err := openDir(dir)
	must(t, err)
	defer root.Close()

	for name, open := range map[string]func(int, string, int) (int, error){
		"openat2": openBeneath,
		"openat":  openBeneathByName,
	} {
		for _, rel := range []string{"a/b/f", ".", "a/b"} {
			fd, err := open(int(root.Fd()), rel, unix.O_RDONLY)
			if err != nil {
				t.Errorf("%s %q: %v", name, rel, err)
				continue
			}
			unix.Close(fd)
		}
		fd, err := open(int(root.Fd()), "a", unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			t.Errorf("%s a O_PATH: %v", name, err)
		} else {
			unix.Close(fd)
		}
		for _, rel := range []string{"l/b/f", "l", "a/up/x", "a/b/lf", "../x"} {
			fd, err := open(int(root.Fd()), rel, unix.O_RDONLY)
			if err == nil {
				unix.Close(fd)
				t.Errorf("%s %q: opened, want it refused", name, rel)
				continue
			}
			if !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.EXDEV) {
				t.Errorf("%s %q: %v, want ELOOP, ENOTDIR or EXDEV", name, rel, err)
			}
		}
	}
}
