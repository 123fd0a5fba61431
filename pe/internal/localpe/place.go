package localpe

import (
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// placeNew renames the entry from to the name to, which must not exist: an
// error matching fs.ErrExist if it does. A plain rename would replace a
// file, or an empty directory, made there meanwhile.
func placeNew(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return placeNewWithoutRenameat2(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// placeNewWithoutRenameat2 is placeNew on filesystems without
// RENAME_NOREPLACE: a file is linked, which never replaces anything, and
// then unlinked from its old name; a directory cannot be linked, so it is
// checked for, then renamed: racy, but rare.
func placeNewWithoutRenameat2(from, to string) error {
	fi, err := os.Lstat(from)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		if err := os.Link(from, to); err != nil {
			return err
		}
		return os.Remove(from)
	}
	if _, err := os.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
	}
	return os.Rename(from, to)
}
