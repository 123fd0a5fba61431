package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/partition"
)

// rangeFile is [off, off+size) of an image as a file: the data image, a
// partition, or a file of an fs tree.
type rangeFile struct {
	fs.Inode
	fsys      *fsys
	img       pe.Image
	off, size int64
	mtime     time.Time
	name      string // for log lines
	snap      pe.ID  // the snapshot it is of
	owner     owner
}

var (
	_ fs.NodeGetattrer = (*rangeFile)(nil)
	_ fs.NodeOpener    = (*rangeFile)(nil)
	_ fs.NodeReader    = (*rangeFile)(nil)
	_ fs.NodeLseeker   = (*rangeFile)(nil)
)

func (f *rangeFile) attr(out *fuse.Attr) {
	staticFileAttr(out, f.size, f.mtime, f.owner)
}

func (f *rangeFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	return 0
}

// passthrough is the handle of a file whose bytes are a local file's: the
// kernel reads that file directly.
type passthrough struct{ f *os.File }

var (
	_ fs.FilePassthroughFder = (*passthrough)(nil)
	_ fs.FileReleaser        = (*passthrough)(nil)
)

func (p *passthrough) PassthroughFd() (int, bool) { return int(p.f.Fd()), true }

func (p *passthrough) Release(ctx context.Context) syscall.Errno {
	p.f.Close()
	return 0
}

func (f *rangeFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	// The kernel keeps the nodes of a snapshot deleted since: its files
	// are gone (ENOENT), even where an image opened earlier could still
	// be read.
	if _, err := f.fsys.m.Get(ctx, f.snap); err != nil {
		return nil, 0, f.fsys.eio("open "+f.name, err)
	}
	if b, ok := f.img.(pe.BackingFiler); ok && f.size > 0 {
		if file, err := b.OpenBacking(ctx, f.off, f.size); err == nil {
			return &passthrough{file}, 0, 0
		} else if errors.Is(err, iofs.ErrNotExist) {
			return nil, 0, syscall.ENOENT
		} else if !errors.Is(err, pe.ErrNotSupported) {
			f.fsys.log.Warn("fuse: no passthrough", "file", f.name, "err", err)
		}
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *rangeFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if p, ok := fh.(*passthrough); ok {
		// The kernel reads passthrough files itself; this is the
		// fallback when it did not take the file.
		n, err := p.f.ReadAt(dest, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, f.fsys.eio("read "+f.name, err)
		}
		return fuse.ReadResultData(dest[:n]), 0
	}
	if off >= f.size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(int64(len(dest)), f.size-off)
	k, err := pe.ReadAt(ctx, f.img, dest[:n], f.off+off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(k) == n) {
		return nil, f.fsys.eio(fmt.Sprintf("read %s at %d", f.name, off), err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the image's extents.
func (f *rangeFile) Lseek(ctx context.Context, _ fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	pos := int64(off)
	if pos >= f.size {
		return 0, syscall.ENXIO
	}
	exts, err := f.img.Extents(ctx, f.off+pos, f.size-pos)
	if err != nil {
		return 0, f.fsys.eio("extents of "+f.name, err)
	}
	wantData := whence == unixSeekData
	for _, e := range exts {
		if e.Kind.ReadsZero() != wantData {
			return uint64(max(e.Offset-f.off, pos)), 0
		}
	}
	if wantData {
		return 0, syscall.ENXIO
	}
	return uint64(f.size), 0 // the implicit hole at the end
}

const unixSeekData = 3 // SEEK_DATA; SEEK_HOLE is 4

// partitionsDir lists the partitions of a disk image: p1, p2, ...
type partitionsDir struct {
	fs.Inode
	fsys  *fsys
	img   pe.Image
	mtime time.Time
	name  string
	snap  pe.ID
	owner owner // of the disk's data, which its partitions are
}

var (
	_ fs.NodeReaddirer = (*partitionsDir)(nil)
	_ fs.NodeLookuper  = (*partitionsDir)(nil)
	_ fs.NodeGetattrer = (*partitionsDir)(nil)
)

func (d *partitionsDir) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	return 0
}

func (d *partitionsDir) table() ([]partition.Partition, syscall.Errno) {
	t, err := partition.Read(d.img, d.img.Size())
	if errors.Is(err, partition.ErrNoTable) {
		return nil, 0
	}
	if err != nil {
		// A damaged table is the disk's content, not our failure.
		d.fsys.log.Warn("fuse: partition table", "pe", d.name, "err", err)
		return nil, 0
	}
	return t.Partitions, 0
}

func (d *partitionsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ps, errno := d.table()
	if errno != 0 {
		return nil, errno
	}
	var entries []fuse.DirEntry
	for _, p := range ps {
		entries = append(entries, fuse.DirEntry{Name: fmt.Sprintf("p%d", p.Number), Mode: syscall.S_IFREG})
	}
	return fs.NewListDirStream(entries), 0
}

func (d *partitionsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ps, errno := d.table()
	if errno != 0 {
		return nil, errno
	}
	for _, p := range ps {
		if fmt.Sprintf("p%d", p.Number) == name {
			f := &rangeFile{fsys: d.fsys, img: d.img, off: p.Start, size: p.Size, mtime: d.mtime, name: d.name + "/" + name, snap: d.snap, owner: d.owner}
			f.attr(&out.Attr)
			return d.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG}), 0
		}
	}
	return nil, syscall.ENOENT
}

// tree indexes a table of contents by directory, so that lookups in any
// directory cost a map access.
type tree struct {
	entries []pe.TOCEntry
	dirs    map[string]map[string]int // dir → child name → entry (-1: implied dir)
	root    *pe.TOCEntry              // the tree's own directory; nil if the TOC has none
}

func newTree(toc []pe.TOCEntry) *tree {
	t := &tree{entries: toc, dirs: map[string]map[string]int{"": {}}}
	var ensure func(dir string)
	ensure = func(dir string) {
		if _, ok := t.dirs[dir]; ok || dir == "" {
			return
		}
		t.dirs[dir] = map[string]int{}
		parent, base := splitPath(dir)
		ensure(parent)
		if _, ok := t.dirs[parent][base]; !ok {
			t.dirs[parent][base] = -1
		}
	}
	for i, e := range toc {
		if e.Name == "" || e.Name == "." {
			// Its owner and mode guard the whole tree, as they did on
			// the live PE (a 0700 home directory).
			if e.Mode.IsDir() {
				t.root = &toc[i]
			}
			continue
		}
		parent, base := splitPath(e.Name)
		ensure(parent)
		t.dirs[parent][base] = i
		if e.Mode.IsDir() {
			ensure(e.Name)
		}
	}
	return t
}

func splitPath(p string) (dir, base string) {
	dir, base = path.Split(p)
	return strings.TrimSuffix(dir, "/"), base
}

// treeDir is a directory of an fs snapshot's tree.
type treeDir struct {
	fs.Inode
	fsys  *fsys
	img   pe.Image
	tree  *tree
	dir   string
	mtime time.Time
	entry *pe.TOCEntry // nil for implied directories (and a root the TOC lacks)
	snap  pe.ID
}

var (
	_ fs.NodeReaddirer = (*treeDir)(nil)
	_ fs.NodeLookuper  = (*treeDir)(nil)
	_ fs.NodeGetattrer = (*treeDir)(nil)
)

func (d *treeDir) attr(out *fuse.Attr) {
	dirAttr(out)
	t := d.mtime
	if e := d.entry; e != nil {
		out.Mode = syscall.S_IFDIR | uint32(e.Mode.Perm())
		out.Uid, out.Gid = uint32(e.UID), uint32(e.GID)
		t = e.ModTime
	}
	out.SetTimes(nil, &t, &t)
}

func (d *treeDir) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.attr(&out.Attr)
	return 0
}

func (d *treeDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	children := d.tree.dirs[d.dir]
	names := make([]string, 0, len(children))
	for name := range children {
		names = append(names, name)
	}
	sort.Strings(names)
	entries := make([]fuse.DirEntry, 0, len(names))
	for _, name := range names {
		mode := uint32(syscall.S_IFDIR)
		if i := children[name]; i >= 0 {
			mode = modeType(d.tree.entries[i].Mode)
		}
		entries = append(entries, fuse.DirEntry{Name: name, Mode: mode})
	}
	return fs.NewListDirStream(entries), 0
}

func modeType(m os.FileMode) uint32 {
	switch {
	case m.IsDir():
		return syscall.S_IFDIR
	case m&os.ModeSymlink != 0:
		return syscall.S_IFLNK
	case m&os.ModeNamedPipe != 0:
		return syscall.S_IFIFO
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice != 0:
		return syscall.S_IFCHR
	case m&os.ModeDevice != 0:
		return syscall.S_IFBLK
	}
	return syscall.S_IFREG
}

func (d *treeDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	i, ok := d.tree.dirs[d.dir][name]
	if !ok {
		return nil, syscall.ENOENT
	}
	full := path.Join(d.dir, name)
	if i < 0 {
		child := &treeDir{fsys: d.fsys, img: d.img, tree: d.tree, dir: full, mtime: d.mtime, snap: d.snap}
		child.attr(&out.Attr)
		return d.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
	}
	e := &d.tree.entries[i]
	// A hard link shows the file it links to, as a separate file.
	if e.HardLink {
		if j, ok := d.tree.lookup(pe.CleanTarName(e.Linkname)); ok {
			target := d.tree.entries[j]
			target.Name = e.Name
			e = &target
		}
	}
	switch {
	case e.Mode.IsDir():
		child := &treeDir{fsys: d.fsys, img: d.img, tree: d.tree, dir: full, mtime: d.mtime, entry: e, snap: d.snap}
		child.attr(&out.Attr)
		return d.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
	case e.Mode&os.ModeSymlink != 0:
		out.Attr.Mode = syscall.S_IFLNK | 0o777
		out.Attr.Size = uint64(len(e.Linkname))
		out.Attr.Uid, out.Attr.Gid = uint32(e.UID), uint32(e.GID)
		out.Attr.SetTimes(nil, &e.ModTime, &e.ModTime)
		return d.NewInode(ctx, &fs.MemSymlink{Data: []byte(e.Linkname), Attr: out.Attr}, fs.StableAttr{Mode: syscall.S_IFLNK}), 0
	case e.Mode.IsRegular():
		// The file's own owner and mode, as in the PE: a file only its
		// owner could read stays so (0000 stays 0000).
		f := &rangeFile{fsys: d.fsys, img: d.img, off: e.Offset, size: e.Size, mtime: e.ModTime, name: full, snap: d.snap,
			owner: owner{uid: uint32(e.UID), gid: uint32(e.GID), perm: uint32(e.Mode.Perm())}}
		f.attr(&out.Attr)
		return d.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	}
	// Devices and fifos are listed but not recreated: this is a view
	// for reading files.
	out.Attr.Mode = modeType(e.Mode) | uint32(e.Mode.Perm())
	out.Attr.Uid, out.Attr.Gid = uint32(e.UID), uint32(e.GID)
	out.Attr.SetTimes(nil, &e.ModTime, &e.ModTime)
	return d.NewInode(ctx, &fs.Inode{}, fs.StableAttr{Mode: modeType(e.Mode)}), 0
}

// lookup finds the entry of a path.
func (t *tree) lookup(p string) (int, bool) {
	dir, base := splitPath(p)
	i, ok := t.dirs[dir][base]
	return i, ok && i >= 0
}
