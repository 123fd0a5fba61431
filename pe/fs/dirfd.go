package fs

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Walks and restores go through directory file descriptors: a directory is
// opened once, with O_NOFOLLOW|O_DIRECTORY, and everything in it is
// reached relative to that descriptor, one name at a time, never following
// a symlink. A directory renamed, or swapped for a symlink (renameat2
// RENAME_EXCHANGE), while a walk runs cannot lead it outside the tree: the
// descriptor stays on the directory it opened, and a name that has become
// a symlink is read as a symlink. Paths are resolved only below a
// descriptor and only with openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS
// (see openBeneath).

// resolveBeneath is how openBeneath resolves: below the starting
// directory, through no symlink at all.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// maxTypeChanges bounds how often openEntry looks again at a name whose
// type changes between its stat and its open: a tree rewritten that fast
// fails the walk rather than keeping it busy forever.
const maxTypeChanges = 10

// openBeneath opens rel, a slash-separated name without ".." ("." for dir
// itself), below the directory dir without following any symlink on the
// way or at the end (ELOOP). With O_PATH, flags must hold O_DIRECTORY.
func openBeneath(dir int, rel string, flags int) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolveBeneath}
	for range 10 {
		fd, err := unix.Openat2(dir, rel, &how)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			// EAGAIN: a rename raced with the lookup; look again.
			continue
		case errors.Is(err, unix.ENOSYS):
			return openBeneathByName(dir, rel, flags)
		default:
			return -1, err
		}
	}
	return -1, unix.EAGAIN
}

// openBeneathByName is openBeneath for kernels without openat2 (before
// 5.6): one openat with O_NOFOLLOW per component.
func openBeneathByName(dir int, rel string, flags int) (int, error) {
	parts := strings.Split(rel, "/")
	cur := dir
	closeCur := func() {
		if cur != dir {
			unix.Close(cur)
		}
	}
	for i, c := range parts {
		if c == ".." || c == "" {
			closeCur()
			return -1, unix.EXDEV // as openat2 RESOLVE_BENEATH says
		}
		f := unix.O_PATH | unix.O_DIRECTORY
		if i == len(parts)-1 {
			f = flags
		}
		fd, err := unix.Openat(cur, c, f|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		closeCur()
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

// openDir opens the directory at path, which must not be a symlink.
func openDir(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openEntry looks at the entry name of the directory dir without following
// a symlink, and opens it if it is a directory or a regular file. It
// returns the entry's stat — of the opened descriptor when it opened one,
// so that what is described is what is read — and the open file, nil for
// other types and for regular files we may not read. A name that changes
// type between the stat and the open is looked at again. The error is
// ENOENT (unwrapped) if the name is gone.
func openEntry(dir int, name string) (unix.Stat_t, *os.File, error) {
	var st unix.Stat_t
	for range maxTypeChanges {
		if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return st, nil, err
		}
		var flags int
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			flags = unix.O_RDONLY | unix.O_DIRECTORY
		case unix.S_IFREG:
			// O_NONBLOCK: a fifo swapped in must not block the open.
			flags = unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOCTTY
		default:
			return st, nil, nil
		}
		fd, err := unix.Openat(dir, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENOENT) {
			continue // replaced since the stat
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) {
			// Not ours to read (we are not root): described, not
			// opened; who needs the content fails on it.
			return st, nil, nil
		}
		if err != nil {
			return st, nil, err
		}
		var got unix.Stat_t
		if err := unix.Fstat(fd, &got); err != nil {
			unix.Close(fd)
			return st, nil, err
		}
		if got.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT {
			unix.Close(fd)
			continue
		}
		return got, os.NewFile(uintptr(fd), name), nil
	}
	return st, nil, fmt.Errorf("changed type %d times while being read", maxTypeChanges)
}

// readlinkAt returns the target of the symlink name in dir.
func readlinkAt(dir int, name string) (string, error) {
	for n := 256; n <= 1<<20; n *= 4 {
		b := make([]byte, n)
		k, err := unix.Readlinkat(dir, name, b)
		if err != nil {
			return "", err
		}
		if k < n {
			return string(b[:k]), nil
		}
	}
	return "", unix.ENAMETOOLONG
}

// procPath names the entry name of the open directory dir through /proc,
// for the calls that have no *at form (lgetxattr, lsetxattr): the path is
// resolved from the descriptor, and the l* calls do not follow name.
func procPath(dir int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dir) + "/" + name
}

// fdXattrs returns the extended attributes of the open file fd.
func fdXattrs(fd int) (map[string]string, error) {
	return readXattrs(
		func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(name string, b []byte) (int, error) { return unix.Fgetxattr(fd, name, b) })
}

// atXattrs returns the extended attributes of the entry name of dir, a
// symlink or a file we may not open, without following it. They are read
// through /proc (procPath), as symlinks cannot be opened for fgetxattr;
// without /proc such an entry has none: on symlinks only trusted.* and
// security.* can be set, and rarely are, and losing them on such a system
// beats reading them through a path that could be swapped.
func atXattrs(dir int, name string) (map[string]string, error) {
	p := procPath(dir, name)
	x, err := readXattrs(
		func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(name string, b []byte) (int, error) { return unix.Lgetxattr(p, name, b) })
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	return x, err
}

// applyFdAttrs gives the open file or directory fd, name in the tree, the
// attrs a. Ownership comes first because chown clears setuid bits
// and file capabilities, times last because setting xattrs is a change.
func applyFdAttrs(fd int, name string, a attrs, chown bool) error {
	if chown {
		if err := unix.Fchown(fd, a.uid, a.gid); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	if err := unix.Fchmod(fd, a.mode); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	for k, v := range a.xattrs {
		if err := unix.Fsetxattr(fd, k, []byte(v), 0); err != nil && !xattrUnsupported(err) {
			return fmt.Errorf("set xattr %s of %s: %w", k, name, err)
		}
	}
	ts := []unix.Timespec{a.atime, a.mtime}
	if err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("set times of %s: %w", name, err)
	}
	return nil
}

// applySymlinkAttrs gives the symlink name in the directory dir, rel in
// the tree, the owner, xattrs and times of a; a symlink has no mode of its
// own.
func applySymlinkAttrs(dir int, name, rel string, a attrs, chown bool) error {
	if chown {
		if err := unix.Fchownat(dir, name, a.uid, a.gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %s: %w", rel, err)
		}
	}
	if len(a.xattrs) > 0 {
		p := procPath(dir, name)
		for k, v := range a.xattrs {
			err := unix.Lsetxattr(p, k, []byte(v), 0)
			if err != nil && !xattrUnsupported(err) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("set xattr %s of %s: %w", k, rel, err)
			}
		}
	}
	ts := []unix.Timespec{a.atime, a.mtime}
	if err := unix.UtimesNanoAt(dir, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", rel, err)
	}
	return nil
}

// maxTreeDepth bounds how deep the walks of a tree (layout.go, copytree.go)
// go. They hold the descriptors of every directory above the one they
// read (two per level when copying), so a tree 100,000 levels deep, which
// any user of a live tree can make, would run the process out of
// descriptors, failing this walk and everything else the appliance does.
// 2048 is PATH_MAX/2: the depth of the deepest tree whose paths fit in
// PATH_MAX (4096) with one-character names, so a deeper tree cannot be
// named by path at all and no ordinary tool (tar, rsync, a restore of its
// tar) handles it either. A copy holds at most 4096 descriptors for it.
const maxTreeDepth = 2048

// checkDepth fails for a directory rel (a slash-separated name below the
// root) nested more than maxTreeDepth levels deep, naming the start of
// its path: the whole of it would be thousands of components.
func checkDepth(rel string) error {
	if strings.Count(rel, "/") < maxTreeDepth {
		return nil
	}
	head := strings.SplitN(rel, "/", 5)
	return fmt.Errorf("directory %s/… is nested more than %d levels deep; a snapshot walks no deeper: flatten the tree", strings.Join(head[:4], "/"), maxTreeDepth)
}

// linkBeneath makes name in the directory dir a hard link to target, a
// slash-separated name below the directory root, resolved without
// following any symlink.
func linkBeneath(root int, target string, dir int, name string) error {
	tdir, tbase := root, target
	if i := strings.LastIndexByte(target, '/'); i >= 0 {
		fd, err := openBeneath(root, target[:i], unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		tdir, tbase = fd, target[i+1:]
	}
	return unix.Linkat(tdir, tbase, dir, name, 0)
}
