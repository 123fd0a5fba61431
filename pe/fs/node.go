package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"golang.org/x/sys/unix"
)

// Special files — fifos and device nodes — hold no data but are part of a
// tree (a root filesystem's /dev, a daemon's fifo). They are created with
// mknodat and never opened: opening a fifo blocks, opening a device node
// talks to the device. Their attrs are set through an O_PATH descriptor.
// Sockets are not kept: a socket is an endpoint of a running process, and
// a copy of one is a file nothing listens on.

// errNeedsRoot explains why creating a device node failed as non-root.
var errNeedsRoot = errors.New("creating device nodes needs root")

// isDevice reports whether the file type bits typ are a character or
// block device.
func isDevice(typ uint32) bool { return typ == unix.S_IFCHR || typ == unix.S_IFBLK }

// makeNode creates the fifo or device node (typ, rdev) name in the
// directory dir, rel in the tree, and gives it the attrs a. mknodat fails
// on an existing name, symlink or not, so nothing is created elsewhere.
func makeNode(dir int, name, rel string, typ uint32, rdev uint64, a attrs, chown bool) error {
	if err := unix.Mknodat(dir, name, typ|0o600, int(rdev)); err != nil {
		if isDevice(typ) && errors.Is(err, unix.EPERM) && !canChown() {
			err = fmt.Errorf("%w: %w", errNeedsRoot, err)
		}
		return fmt.Errorf("create %s %s: %w", nodeKind(typ), rel, err)
	}
	return applyNodeAttrs(dir, name, rel, typ, a, chown)
}

// applyNodeAttrs gives the fifo or device node name in the directory dir
// the attrs a. The node is opened with O_PATH|O_NOFOLLOW, which neither
// opens a device nor blocks on a fifo, and checked to be of type typ: if
// the name was swapped for a symlink since, that is what is opened and
// refused. Mode, xattrs and times go through /proc/self/fd, which names
// the opened inode itself; chown through the descriptor.
func applyNodeAttrs(dir int, name, rel string, typ uint32, a attrs, chown bool) error {
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", rel, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	if st.Mode&unix.S_IFMT != typ {
		return fmt.Errorf("%s: %w", rel, errChangedNode)
	}
	if chown {
		if err := unix.Fchownat(fd, "", a.uid, a.gid, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("chown %s: %w", rel, err)
		}
	}
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	if err := unix.Fchmodat(unix.AT_FDCWD, p, a.mode, 0); err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
	}
	for k, v := range a.xattrs {
		if err := unix.Setxattr(p, k, []byte(v), 0); err != nil && !xattrUnsupported(err) {
			return fmt.Errorf("set xattr %s of %s: %w", k, rel, err)
		}
	}
	ts := []unix.Timespec{a.atime, a.mtime}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err != nil {
		return fmt.Errorf("set times of %s: %w", rel, err)
	}
	return nil
}

// errChangedNode is returned when a fifo or device node just created is
// found replaced by something else.
var errChangedNode = errors.New("replaced by another file while being created")

// nodeKind names the type of a special file in messages.
func nodeKind(typ uint32) string {
	switch typ {
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "special file"
}

// maxWarnings bounds the per-file warnings of one walk or restore; a
// summary with the count follows.
const maxWarnings = 10

// skipLog warns about the files a walk or restore leaves out, one line per
// file up to maxWarnings, and counts them all.
type skipLog struct {
	what  string // "socket not kept", ...
	names []string
	count int64
}

// skip warns that rel is left out.
func (s *skipLog) skip(rel, why string) {
	s.count++
	if s.count <= maxWarnings {
		slog.Warn(s.what, "path", rel, "why", why)
	}
	if len(s.names) < maxSkippedNames {
		s.names = append(s.names, rel)
	}
}

// summarize warns once with the count if there were more than the
// per-file warnings said.
func (s *skipLog) summarize() {
	if s.count > maxWarnings {
		slog.Warn(s.what, "count", s.count, "warned", maxWarnings)
	}
}
