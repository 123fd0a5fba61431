package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// blockSize is the tar block size: headers and padded contents are
// multiples of it, and the archive ends with two zero blocks.
const blockSize = 512

// trailerSize is the end-of-archive marker.
const trailerSize = 2 * blockSize

// member is one entry of the laid-out tar stream. Its header blocks are not
// kept (they would cost 0.5–1.5 KiB per file) but encoded again from hdr
// when read: the encoding is deterministic.
type member struct {
	hdr    *tar.Header
	header int64  // offset of the first header block
	hdrLen int64  // bytes of header blocks, PAX records included
	rel    string // regular files: the content's name below the layout's root
	// What the content file was when laid out: ReadAt refuses to read a
	// file that is not that any more.
	key   fileKey
	mtime unix.Timespec
}

// offset is where the content starts.
func (m *member) offset() int64 { return m.header + m.hdrLen }

// size is the content length.
func (m *member) size() int64 {
	if m.hdr.Typeflag == tar.TypeReg {
		return m.hdr.Size
	}
	return 0
}

// end is where the next member starts.
func (m *member) end() int64 { return m.offset() + padded(m.size()) }

func padded(n int64) int64 { return (n + blockSize - 1) / blockSize * blockSize }

// layout is a tar stream laid out over a directory tree. It keeps the
// tree's root open: contents are opened below it, never through a
// symlink, so that a live tree changed since cannot make a read leave it.
type layout struct {
	dir     string   // for messages
	root    *os.File // the directory dir
	members []member
	size    int64
	// allocated is what the content files take on disk, holes left
	// out: about what a restore writes.
	allocated int64
}

// close closes the root.
func (l *layout) close() error { return l.root.Close() }

// path names the content of m in messages.
func (l *layout) path(m *member) string { return filepath.Join(l.dir, filepath.FromSlash(m.rel)) }

// layoutTree walks dir once, in lexical order per directory, and lays out
// the tar stream of its contents: "./" for dir itself, then every entry
// under its slash-separated relative name, directories with a trailing
// slash. A regular file seen before under another name is a hard link to
// that name; so is a fifo or device node. Sockets are left out with a
// warning: they are endpoints of running processes, not data. Access times
// are left out too: reading a tree changes them, and the image of a
// snapshot must be the same bytes every time. The walk goes through
// directory descriptors (see dirfd.go). Close the layout when done with
// it.
func layoutTree(ctx context.Context, dir string) (*layout, error) {
	root, err := openDir(dir)
	if err != nil {
		return nil, fmt.Errorf("lay out tar: %w", err)
	}
	l := &layout{dir: dir, root: root}
	w := &layoutWalker{ctx: ctx, l: l, links: map[fileKey]string{}, sockets: skipLog{what: "tar image leaves out a socket"}}
	var st unix.Stat_t
	err = unix.Fstat(int(root.Fd()), &st)
	if err == nil {
		err = w.dir(root, "", &st)
	}
	w.sockets.summarize()
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("lay out tar of %s: %w", dir, err)
	}
	l.size += trailerSize
	return l, nil
}

type layoutWalker struct {
	ctx     context.Context
	l       *layout
	links   map[fileKey]string // first tar name of multiply linked files
	sockets skipLog
}

// header starts the tar header of an entry from its stat.
func header(st *unix.Stat_t) *tar.Header {
	return &tar.Header{
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		// PAX lets the writer keep nanosecond mtimes and xattrs; it
		// adds extended records only to members that need them.
		Format: tar.FormatPAX,
	}
}

// add lays out the member m, with xattrs x.
func (w *layoutWalker) add(m member, x map[string]string) error {
	h := m.hdr
	for k, v := range x {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+k] = v
	}
	hb, err := encodeHeader(h)
	if err != nil {
		return fmt.Errorf("tar header of %q: %w", h.Name, err)
	}
	m.header, m.hdrLen = w.l.size, int64(len(hb))
	w.l.members = append(w.l.members, m)
	w.l.size = m.end()
	return nil
}

// dir adds the open directory d, named rel ("" for the root), and its
// contents.
func (w *layoutWalker) dir(d *os.File, rel string, st *unix.Stat_t) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if err := checkDepth(rel); err != nil {
		return err
	}
	h := header(st)
	h.Typeflag = tar.TypeDir
	h.Name = rel + "/"
	if rel == "" {
		h.Name = "./"
	}
	x, err := fdXattrs(int(d.Fd()))
	if err != nil {
		return fmt.Errorf("%s: %w", h.Name, err)
	}
	if err := w.add(member{hdr: h}, x); err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", h.Name, err)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := w.entry(d, path.Join(rel, name)); err != nil {
			return err
		}
	}
	return nil
}

// entry adds the entry rel of the open directory d.
func (w *layoutWalker) entry(d *os.File, rel string) error {
	name := path.Base(rel)
	st, f, err := openEntry(int(d.Fd()), name)
	if errors.Is(err, unix.ENOENT) {
		return nil // deleted since listed (live trees only)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	if f != nil {
		defer f.Close()
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return w.dir(f, rel, &st)
	case unix.S_IFREG:
		return w.regular(d, f, rel, &st)
	case unix.S_IFLNK:
		target, err := readlinkAt(int(d.Fd()), name)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
			return nil // deleted, or replaced by a non-symlink, since the stat
		}
		if err != nil {
			return fmt.Errorf("readlink %s: %w", rel, err)
		}
		x, err := atXattrs(int(d.Fd()), name)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		h := header(&st)
		h.Typeflag = tar.TypeSymlink
		h.Name = rel
		h.Linkname = target
		return w.add(member{hdr: h}, x)
	case unix.S_IFSOCK:
		w.sockets.skip(rel, "a socket belongs to a running process")
		return nil
	default:
		return w.node(d, rel, &st)
	}
}

// nodeTypeflag is tar's type of a fifo or device node of file type typ.
func nodeTypeflag(typ uint32) (byte, bool) {
	switch typ {
	case unix.S_IFIFO:
		return tar.TypeFifo, true
	case unix.S_IFCHR:
		return tar.TypeChar, true
	case unix.S_IFBLK:
		return tar.TypeBlock, true
	}
	return 0, false
}

// node adds the fifo or device node rel of the directory d, a hard link if
// seen before.
func (w *layoutWalker) node(d *os.File, rel string, st *unix.Stat_t) error {
	typ, ok := nodeTypeflag(st.Mode & unix.S_IFMT)
	if !ok {
		return fmt.Errorf("%s: unknown file type %#o", rel, st.Mode&unix.S_IFMT)
	}
	h := header(st)
	h.Name = rel
	if w.hardlink(h, st) {
		return w.add(member{hdr: h}, nil)
	}
	h.Typeflag = typ
	if isDevice(st.Mode & unix.S_IFMT) {
		h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	}
	x, err := atXattrs(int(d.Fd()), path.Base(rel))
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return w.add(member{hdr: h}, x)
}

// hardlink makes h a hard link if the file st was laid out before under
// another name, and remembers its name otherwise.
func (w *layoutWalker) hardlink(h *tar.Header, st *unix.Stat_t) bool {
	key := fileKey{dev: st.Dev, ino: st.Ino}
	if first, ok := w.links[key]; ok {
		h.Typeflag = tar.TypeLink
		h.Linkname = first
		return true
	}
	if st.Nlink > 1 {
		w.links[key] = h.Name
	}
	return false
}

// regular adds the regular file rel of the directory d, open as f (nil if
// we may not read it), a hard link if seen before.
func (w *layoutWalker) regular(d, f *os.File, rel string, st *unix.Stat_t) error {
	h := header(st)
	h.Name = rel
	if w.hardlink(h, st) {
		return w.add(member{hdr: h}, nil)
	}
	key := fileKey{dev: st.Dev, ino: st.Ino}
	h.Typeflag = tar.TypeReg
	h.Size = st.Size
	w.l.allocated += min(st.Blocks*512, st.Size)
	var x map[string]string
	var err error
	if f != nil {
		x, err = fdXattrs(int(f.Fd()))
	} else {
		x, err = atXattrs(int(d.Fd()), path.Base(rel))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return w.add(member{hdr: h, rel: rel, key: key, mtime: st.Mtim}, x)
}

// encodeHeader returns the header blocks archive/tar writes for h.
func encodeHeader(h *tar.Header) ([]byte, error) {
	var b bytes.Buffer
	// The writer is dropped without Close: we want the header blocks
	// only, not the content it would expect next or the trailer.
	if err := tar.NewWriter(&b).WriteHeader(h); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
