package fs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// fileKey identifies an inode, to keep hard links hard links.
type fileKey struct {
	dev, ino uint64
}

// treeCopier copies a directory tree for a snapshot and counts what it did.
type treeCopier struct {
	ctx   context.Context
	chown bool
	root  string             // source root, to name skipped files
	links map[fileKey]string // inode of a multiply linked source file → its copy

	files, bytes      int64
	reflinked, copied int64
	skipped           []string
	skippedCount      int64
}

func newTreeCopier(ctx context.Context) *treeCopier {
	return &treeCopier{ctx: ctx, chown: canChown(), links: map[fileKey]string{}}
}

// copyTree copies the directory src to dst, which must not exist.
func (c *treeCopier) copyTree(src, dst string) error {
	c.root = src
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", src)
	}
	return c.copyEntry(src, dst, fi)
}

// copyEntry copies one entry of any type; directories recursively.
func (c *treeCopier) copyEntry(src, dst string, fi os.FileInfo) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat data", src)
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		return c.copyDir(src, dst, st)
	case syscall.S_IFREG:
		return c.copyRegular(src, dst, st)
	case syscall.S_IFLNK:
		return c.copySymlink(src, dst, st)
	default:
		// Sockets, fifos and device nodes hold no data; the tar image
		// leaves them out too (see layout.go).
		c.skippedCount++
		if len(c.skipped) < maxSkippedNames {
			rel, _ := filepath.Rel(c.root, src)
			c.skipped = append(c.skipped, filepath.ToSlash(rel))
		}
		return nil
	}
}

func (c *treeCopier) copyDir(src, dst string, st *syscall.Stat_t) error {
	// Owner-only until the contents are in: the final mode may forbid
	// writing, and nobody else should see a half-made tree.
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		s := filepath.Join(src, e.Name())
		fi, err := os.Lstat(s)
		if os.IsNotExist(err) {
			continue // deleted since ReadDir: not part of this snapshot
		}
		if err != nil {
			return err
		}
		if err := c.copyEntry(s, filepath.Join(dst, e.Name()), fi); err != nil {
			return err
		}
	}
	// Times last: adding the entries changed the directory's mtime.
	return c.applyFrom(src, dst, st)
}

func (c *treeCopier) copyRegular(src, dst string, st *syscall.Stat_t) error {
	key := fileKey{dev: st.Dev, ino: st.Ino}
	if st.Nlink > 1 {
		if first, ok := c.links[key]; ok {
			return os.Link(first, dst)
		}
	}
	reflinked, n, err := copyFile(c.ctx, src, dst)
	if err != nil {
		return err
	}
	if reflinked {
		c.reflinked++
	} else {
		c.copied++
	}
	c.files++
	c.bytes += n
	if st.Nlink > 1 {
		c.links[key] = dst
	}
	return c.applyFrom(src, dst, st)
}

func (c *treeCopier) copySymlink(src, dst string, st *syscall.Stat_t) error {
	target, err := os.Readlink(src)
	if err != nil {
		return err
	}
	if err := os.Symlink(target, dst); err != nil {
		return err
	}
	return c.applyFrom(src, dst, st)
}

// applyFrom gives dst the owner, mode, xattrs and times of src.
func (c *treeCopier) applyFrom(src, dst string, st *syscall.Stat_t) error {
	a, err := attrsOf(src, st)
	if err != nil {
		return err
	}
	return applyAttrs(dst, a, c.chown)
}
