package fs

import (
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// attrs is what a copy or restore carries over besides content and type.
type attrs struct {
	uid, gid int
	mode     uint32 // permission bits plus setuid, setgid and sticky
	atime    unix.Timespec
	mtime    unix.Timespec
	xattrs   map[string]string
}

// attrsOfStat is the attrs of a file from its stat and xattrs.
func attrsOfStat(st *unix.Stat_t, x map[string]string) attrs {
	return attrs{
		uid:    int(st.Uid),
		gid:    int(st.Gid),
		mode:   st.Mode & 0o7777,
		atime:  st.Atim,
		mtime:  st.Mtim,
		xattrs: x,
	}
}

// withoutPrivileges is a as restored from untrusted input: no setuid or
// setgid bit, and only the xattrs that grant nothing — user.* (data of
// the owner's applications) and POSIX ACLs (system.posix_acl_access and
// _default: they grant access as the mode bits do, and those are
// restored too). Dropped are file capabilities (security.capability),
// SELinux and other LSM labels (security.*), trusted.* (readable and
// acted on only by root) and anything else.
func (a attrs) withoutPrivileges() attrs {
	a.mode &^= unix.S_ISUID | unix.S_ISGID
	var keep map[string]string
	for k, v := range a.xattrs {
		if unprivilegedXattr(k) {
			if keep == nil {
				keep = map[string]string{}
			}
			keep[k] = v
		}
	}
	a.xattrs = keep
	return a
}

// unprivilegedXattr reports whether restoring the xattr name from
// untrusted input grants no privilege; see withoutPrivileges.
func unprivilegedXattr(name string) bool {
	return strings.HasPrefix(name, "user.") ||
		name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

// canChown reports whether we may give files away: as root we keep owners,
// as anyone else files belong to us.
func canChown() bool { return os.Geteuid() == 0 }

// readXattrs returns the extended attributes list and get report. A
// filesystem without xattrs has none.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) (map[string]string, error) {
	names, err := readXattrBuf(list)
	if xattrUnsupported(err) {
		return nil, nil
	}
	if err != nil {
		return nil, &os.SyscallError{Syscall: "listxattr", Err: err}
	}
	var out map[string]string
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" {
			continue
		}
		v, err := readXattrBuf(func(b []byte) (int, error) { return get(name, b) })
		if errors.Is(err, unix.ENODATA) || xattrUnsupported(err) {
			continue // removed since listing, or not ours to read
		}
		if err != nil {
			return nil, &os.SyscallError{Syscall: "getxattr " + name, Err: err}
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

// xattrUnsupported reports an xattr the filesystem or our privileges do
// not allow: user.* on a symlink, trusted.* as non-root, any xattr on
// some tmpfs; that must not fail a snapshot or restore.
func xattrUnsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
}
