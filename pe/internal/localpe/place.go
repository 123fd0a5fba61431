package localpe

import (
	"errors"
	"io/fs"
	"log/slog"
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
//
// Once the link is made the entry is in place: failing then would leave a
// PE the caller believes was not made (an orphan of a CreateNew, a name
// taken on a retried Create). So the old name is removed on a best-effort
// basis; a hidden name left behind is no PE, only a second link to one.
func placeNewWithoutRenameat2(from, to string) error {
	fi, err := os.Lstat(from)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		if err := os.Link(from, to); err != nil {
			return err
		}
		if err := os.Remove(from); err != nil {
			slog.Warn("placed a new entry, but its temporary name is left", "entry", to, "err", err)
		}
		return nil
	}
	if _, err := os.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
	}
	return os.Rename(from, to)
}
