package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"

	"golang.org/x/sys/unix"
)

// fileKey identifies an inode, to keep hard links hard links.
type fileKey struct {
	dev, ino uint64
}

// treeCopier copies a directory tree for a snapshot and counts what it
// did. Both trees are walked through directory descriptors (see dirfd.go):
// nothing outside the source is read, nothing outside the copy written.
type treeCopier struct {
	ctx   context.Context
	chown bool
	dst   *os.File           // root of the copy
	links map[fileKey]string // inode of a multiply linked source file → name of its copy

	files, bytes      int64
	reflinked, copied int64
	sockets           skipLog
}

func newTreeCopier(ctx context.Context) *treeCopier {
	return &treeCopier{
		ctx:     ctx,
		chown:   canChown(),
		links:   map[fileKey]string{},
		sockets: skipLog{what: "snapshot leaves out a socket"},
	}
}

// copyTree copies the directory src to dst, which must not exist.
func (c *treeCopier) copyTree(src, dst string) error {
	sf, err := openDir(src)
	if err != nil {
		return err
	}
	defer sf.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(sf.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	df, err := openDir(dst)
	if err != nil {
		return err
	}
	defer df.Close()
	c.dst = df
	err = c.copyDir(sf, df, ".", &st)
	c.sockets.summarize()
	return err
}

// copyDir copies the contents of the open directory src, named rel in the
// tree, into the new directory dst and then gives dst src's attrs.
func (c *treeCopier) copyDir(src, dst *os.File, rel string, st *unix.Stat_t) error {
	names, err := src.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", rel, err)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := c.copyEntry(src, dst, path.Join(rel, name)); err != nil {
			return err
		}
	}
	// Times last: adding the entries changed the directory's mtime.
	x, err := fdXattrs(int(src.Fd()))
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return applyFdAttrs(int(dst.Fd()), rel, attrsOfStat(st, x), c.chown)
}

// copyEntry copies the entry rel of the open directory src into dst;
// directories recursively.
func (c *treeCopier) copyEntry(src, dst *os.File, rel string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	name := path.Base(rel)
	st, f, err := openEntry(int(src.Fd()), name)
	if errors.Is(err, unix.ENOENT) {
		return nil // deleted since listed: not part of this snapshot
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	if f != nil {
		defer f.Close()
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.copySubdir(f, dst, rel, &st)
	case unix.S_IFREG:
		if f == nil {
			return fmt.Errorf("open %s: %w", rel, unix.EACCES)
		}
		return c.copyRegular(f, dst, rel, &st)
	case unix.S_IFLNK:
		return c.copySymlink(src, dst, rel, &st)
	case unix.S_IFSOCK:
		c.sockets.skip(rel, "a socket belongs to a running process")
		return nil
	default:
		return c.copyNode(src, dst, rel, &st)
	}
}

func (c *treeCopier) copySubdir(src, dst *os.File, rel string, st *unix.Stat_t) error {
	if err := checkDepth(rel); err != nil {
		return err
	}
	name := path.Base(rel)
	// Owner-only until the contents are in: the final mode may forbid
	// writing, and nobody else should see a half-made tree.
	if err := unix.Mkdirat(int(dst.Fd()), name, 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", rel, err)
	}
	fd, err := unix.Openat(int(dst.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", rel, err)
	}
	d := os.NewFile(uintptr(fd), rel)
	defer d.Close()
	return c.copyDir(src, d, rel, st)
}

// linkedEarlier reports whether the file st was copied before under
// another name, and makes rel a hard link to that copy if so.
func (c *treeCopier) linkedEarlier(dst *os.File, rel string, st *unix.Stat_t) (bool, error) {
	if st.Nlink <= 1 {
		return false, nil
	}
	first, ok := c.links[fileKey{dev: st.Dev, ino: st.Ino}]
	if !ok {
		return false, nil
	}
	return true, c.link(first, dst, rel)
}

// copiedAs records that rel is the copy of st, for the names of st to come.
func (c *treeCopier) copiedAs(rel string, st *unix.Stat_t) {
	if st.Nlink > 1 {
		c.links[fileKey{dev: st.Dev, ino: st.Ino}] = rel
	}
}

func (c *treeCopier) copyRegular(in, dst *os.File, rel string, st *unix.Stat_t) error {
	if linked, err := c.linkedEarlier(dst, rel, st); linked {
		return err
	}
	fd, err := unix.Openat(int(dst.Fd()), path.Base(rel), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", rel, err)
	}
	out := os.NewFile(uintptr(fd), rel)
	err = c.copyContent(in, out, rel, st)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	c.copiedAs(rel, st)
	return nil
}

// copyNode copies the fifo or device node rel of the directory src into
// dst: the node, not what it leads to.
func (c *treeCopier) copyNode(src, dst *os.File, rel string, st *unix.Stat_t) error {
	if linked, err := c.linkedEarlier(dst, rel, st); linked {
		return err
	}
	name := path.Base(rel)
	x, err := atXattrs(int(src.Fd()), name)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	if err := makeNode(int(dst.Fd()), name, rel, st.Mode&unix.S_IFMT, st.Rdev, attrsOfStat(st, x), c.chown); err != nil {
		return err
	}
	c.copiedAs(rel, st)
	return nil
}

// copyContent copies the content and attrs of in to the new file out.
func (c *treeCopier) copyContent(in, out *os.File, rel string, st *unix.Stat_t) error {
	reflinked, n, err := copyFile(c.ctx, in, out)
	if err != nil {
		return fmt.Errorf("copy %s: %w", rel, err)
	}
	if reflinked {
		c.reflinked++
	} else {
		c.copied++
	}
	c.files++
	c.bytes += n
	x, err := fdXattrs(int(in.Fd()))
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return applyFdAttrs(int(out.Fd()), rel, attrsOfStat(st, x), c.chown)
}

// link makes rel in the directory dst a hard link to first, the copy of
// an earlier name of the same file.
func (c *treeCopier) link(first string, dst *os.File, rel string) error {
	if err := linkBeneath(int(c.dst.Fd()), first, int(dst.Fd()), path.Base(rel)); err != nil {
		return fmt.Errorf("link %s to %s: %w", rel, first, err)
	}
	return nil
}

func (c *treeCopier) copySymlink(src, dst *os.File, rel string, st *unix.Stat_t) error {
	name := path.Base(rel)
	target, err := readlinkAt(int(src.Fd()), name)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
		return nil // deleted, or replaced by a non-symlink, since the stat
	}
	if err != nil {
		return fmt.Errorf("readlink %s: %w", rel, err)
	}
	x, err := atXattrs(int(src.Fd()), name)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	if err := unix.Symlinkat(target, int(dst.Fd()), name); err != nil {
		return fmt.Errorf("symlink %s: %w", rel, err)
	}
	return applySymlinkAttrs(int(dst.Fd()), name, rel, attrsOfStat(st, x), c.chown)
}
