package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
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
