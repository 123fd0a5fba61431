package fusefs

import (
	"context"
	"sort"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// The nodes of an fs snapshot's files/ view. Each shows one node of its
// tree (after tree.file: a hard link shows the file it names, under the
// same inode number) with the type, mode, owner, times, link count,
// device number and extended attributes of its TOC entry.
//
// FIFOs and device nodes are shown but never opened by this server: the
// kernel opens them itself. A device opens nothing, as the mount is nodev
// (EACCES); a FIFO is a pipe as on any filesystem, whose reader waits for
// a writer (as on the source tree; O_NONBLOCK readers return at once).

// treeNode is what the nodes of a tree share: their place in it.
type treeNode struct {
	tree *tree
	n    int
}

var (
	_ fs.NodeGetxattrer  = treeNode{}
	_ fs.NodeListxattrer = treeNode{}
)

// Getxattr answers from the TOC entry's xattrs those the caller may see.
func (t treeNode) Getxattr(ctx context.Context, name string, dest []byte) (uint32, syscall.Errno) {
	v, ok := t.tree.xattr(t.n, name)
	if !ok || !callerSees(ctx, name) {
		return 0, syscall.ENODATA
	}
	return copyOut(dest, v)
}

// Listxattr lists the TOC entry's xattrs the caller may see, sorted.
func (t treeNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names := t.tree.xattrNames(t.n)
	seen := names[:0]
	for _, name := range names {
		if callerSees(ctx, name) {
			seen = append(seen, name)
		}
	}
	return copyOut(dest, xattrList(seen))
}

// copyOut copies v to dest as getxattr(2) does: the size alone for an
// empty dest, ERANGE if it does not fit.
func copyOut(dest []byte, v string) (uint32, syscall.Errno) {
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// treeDir is a directory of the tree.
type treeDir struct {
	fs.Inode
	treeNode
	fsys *fsys
	img  pe.Image
	snap pe.ID
}

var (
	_ fs.NodeReaddirer = (*treeDir)(nil)
	_ fs.NodeLookuper  = (*treeDir)(nil)
	_ fs.NodeGetattrer = (*treeDir)(nil)
)

func (d *treeDir) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.tree.attr(d.n, &out.Attr)
	return 0
}

func (d *treeDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	children := d.tree.dirs[d.tree.dirPath(d.n)]
	names := make([]string, 0, len(children))
	for name := range children {
		names = append(names, name)
	}
	sort.Strings(names)
	entries := make([]fuse.DirEntry, 0, len(names))
	for _, name := range names {
		n := d.tree.file(children[name])
		entries = append(entries, fuse.DirEntry{Name: name, Mode: d.tree.typeBits(n), Ino: d.tree.ino(n)})
	}
	return fs.NewListDirStream(entries), 0
}

func (d *treeDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	c, ok := d.tree.dirs[d.tree.dirPath(d.n)][name]
	if !ok {
		return nil, syscall.ENOENT
	}
	t := d.tree
	n := t.file(c)
	t.attr(n, &out.Attr)
	node := treeNode{tree: t, n: n}
	var child fs.InodeEmbedder
	switch t.typeBits(n) {
	case syscall.S_IFDIR:
		child = &treeDir{treeNode: node, fsys: d.fsys, img: d.img, snap: d.snap}
	case syscall.S_IFREG:
		e := &t.entries[n]
		f := &treeFile{treeNode: node, rangeFile: rangeFile{fsys: d.fsys, img: d.img, off: e.Offset, size: e.Size,
			mtime: e.ModTime, name: e.Name, snap: d.snap}}
		f.blocks = allocatedBlocks(ctx, d.img, e.Offset, e.Size)
		out.Attr.Blocks = f.blocks
		child = f
	case syscall.S_IFLNK:
		child = &treeSymlink{treeNode: node}
	default:
		child = &treeSpecial{treeNode: node}
	}
	return d.NewInode(ctx, child, fs.StableAttr{Mode: t.typeBits(n), Ino: t.ino(n)}), 0
}

// treeFile is a regular file of the tree: a range of the tar image.
type treeFile struct {
	rangeFile
	treeNode
	blocks uint64 // allocated, in 512-byte units
}

var _ fs.NodeGetattrer = (*treeFile)(nil)

func (f *treeFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.tree.attr(f.n, &out.Attr)
	out.Blocks = f.blocks
	return 0
}

// allocatedBlocks is what a file's content takes on disk in 512-byte
// blocks, holes left out, as far as the image can tell: the stat of the
// file that holds it (fs PEs), else the image's data extents in its range.
func allocatedBlocks(ctx context.Context, img pe.Image, off, size int64) uint64 {
	if size <= 0 {
		return 0
	}
	if b, ok := img.(pe.BackingFiler); ok {
		if f, err := b.OpenBacking(ctx, off, size); err == nil {
			var st syscall.Stat_t
			err := syscall.Fstat(int(f.Fd()), &st)
			f.Close()
			if err == nil {
				return uint64(st.Blocks)
			}
		}
	}
	exts, err := img.Extents(ctx, off, size)
	if err != nil {
		return sizeBlocks(size)
	}
	var blocks uint64
	for _, e := range exts {
		if !e.Kind.ReadsZero() {
			blocks += sizeBlocks(e.Length)
		}
	}
	return min(blocks, sizeBlocks(size))
}

// treeSymlink is a symbolic link of the tree: its target as stored,
// relative or absolute, never resolved here.
type treeSymlink struct {
	fs.Inode
	treeNode
}

var (
	_ fs.NodeReadlinker = (*treeSymlink)(nil)
	_ fs.NodeGetattrer  = (*treeSymlink)(nil)
)

func (l *treeSymlink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(l.tree.entries[l.n].Linkname), 0
}

func (l *treeSymlink) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l.tree.attr(l.n, &out.Attr)
	return 0
}

// treeSpecial is a FIFO, a device node or a socket of the tree: attributes
// only, as no open of it reaches this server (see above).
type treeSpecial struct {
	fs.Inode
	treeNode
}

var _ fs.NodeGetattrer = (*treeSpecial)(nil)

func (s *treeSpecial) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	s.tree.attr(s.n, &out.Attr)
	return 0
}
