package pg

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// Root writes only into directories it owns: a restored cluster's
// directory stays root's (0711), and its data directory is root's until
// everything root writes there is written, then handed over to the
// restore account (handOver). Anyone running code as that account (a
// superuser of a restored clone can) thus never gets root to follow a
// link it planted.

// privateDir makes dir (if missing) root's, mode 0700.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		return fmt.Errorf("%s: not a directory of root's", dir)
	}
	return os.Chmod(dir, 0o700)
}

// createFile writes a new file, mode 0600, refusing any existing entry
// (a link too) at path.
func createFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	return errors.Join(err, f.Close())
}

// ownedFileAt creates the new file path owned by acct (mode 0600),
// through its descriptor: nothing existing at path, a link neither, is
// followed or reused.
func ownedFileAt(path string, acct account) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	return errors.Join(f.Chown(acct.uid, acct.gid), f.Close())
}

// ownedDirAt makes the new directory dir owned by acct, mode 0700,
// changed through its descriptor.
func ownedDirAt(dir string, acct account) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	if err := unix.Fchown(fd, acct.uid, acct.gid); err != nil {
		return fmt.Errorf("chown %s: %w", dir, err)
	}
	return nil
}

// handOver gives the tree dir, root's so far, to acct: children before
// their directory, so that no entry is changed while the account can
// already replace one of its parents.
func handOver(dir string, acct account) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s: a link in a data directory being restored", p)
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("hand %s over to %s: %w", dir, acct.name, err)
	}
	for _, p := range slices.Backward(paths) {
		if err := os.Lchown(p, acct.uid, acct.gid); err != nil {
			return fmt.Errorf("hand %s over to %s: %w", dir, acct.name, err)
		}
	}
	return nil
}
