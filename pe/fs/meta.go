package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// attrs is what a copy or restore carries over besides content and type.
type attrs struct {
	uid, gid int
	mode     uint32 // permission bits plus setuid, setgid and sticky
	atime    unix.Timespec
	mtime    unix.Timespec
	xattrs   map[string]string
	symlink  bool // mode does not apply
}

// attrsOf collects the attrs of path from its lstat result.
func attrsOf(path string, st *syscall.Stat_t) (attrs, error) {
	x, err := listXattrs(path)
	if err != nil {
		return attrs{}, err
	}
	return attrs{
		uid:     int(st.Uid),
		gid:     int(st.Gid),
		mode:    st.Mode & 0o7777,
		atime:   unix.Timespec(st.Atim),
		mtime:   unix.Timespec(st.Mtim),
		xattrs:  x,
		symlink: st.Mode&syscall.S_IFMT == syscall.S_IFLNK,
	}, nil
}

// applyAttrs sets a on path, which it does not follow if it is a symlink.
// Ownership comes first because chown clears setuid bits and file
// capabilities, times last because setting xattrs is a change.
func applyAttrs(path string, a attrs, chown bool) error {
	if chown {
		if err := os.Lchown(path, a.uid, a.gid); err != nil {
			return err
		}
	}
	if !a.symlink {
		if err := unix.Fchmodat(unix.AT_FDCWD, path, a.mode, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	if err := setXattrs(path, a.xattrs); err != nil {
		return err
	}
	ts := []unix.Timespec{a.atime, a.mtime}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", path, err)
	}
	return nil
}

// canChown reports whether we may give files away: as root we keep owners,
// as anyone else files belong to us.
func canChown() bool { return os.Geteuid() == 0 }

// listXattrs returns the extended attributes of path, not following a
// symlink. A filesystem without xattrs has none.
func listXattrs(path string) (map[string]string, error) {
	names, err := readXattrBuf(func(b []byte) (int, error) { return unix.Llistxattr(path, b) })
	if xattrUnsupported(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list xattrs of %s: %w", path, err)
	}
	var out map[string]string
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" {
			continue
		}
		v, err := readXattrBuf(func(b []byte) (int, error) { return unix.Lgetxattr(path, name, b) })
		if errors.Is(err, unix.ENODATA) || xattrUnsupported(err) {
			continue // removed since listing, or not ours to read
		}
		if err != nil {
			return nil, fmt.Errorf("get xattr %s of %s: %w", name, path, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = string(v)
	}
	return out, nil
}

// readXattrBuf calls get with a buffer large enough, retrying when the
// attribute grows between asking for the size and reading it.
func readXattrBuf(get func([]byte) (int, error)) ([]byte, error) {
	for range 10 {
		n, err := get(nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, nil
		}
		b := make([]byte, n)
		n, err = get(b)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return b[:n], nil
	}
	return nil, unix.ERANGE
}

// setXattrs sets xattrs on path, not following a symlink, as far as the
// filesystem and our privileges allow: user.* on a symlink, trusted.* as
// non-root or any xattr on tmpfs are refused, and that must not fail a
// snapshot or restore.
func setXattrs(path string, xattrs map[string]string) error {
	for name, v := range xattrs {
		err := unix.Lsetxattr(path, name, []byte(v), 0)
		if err != nil && !xattrUnsupported(err) {
			return fmt.Errorf("set xattr %s of %s: %w", name, path, err)
		}
	}
	return nil
}

func xattrUnsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}
