package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"syscall"
	"time"
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
	path   string // file to read the content from (regular files)
	// What the content file was when laid out: ReadAt refuses to read a
	// file that is not that any more.
	key   fileKey
	mtime syscall.Timespec
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

// layout is a tar stream laid out over a directory tree.
type layout struct {
	dir     string
	members []member
	size    int64
}

// layoutTree walks dir once, in lexical order per directory, and lays out
// the tar stream of its contents: "./" for dir itself, then every entry
// under its slash-separated relative name, directories with a trailing
// slash. A regular file seen before under another name is a hard link to
// that name. Sockets, fifos and device nodes are left out: they hold no
// data, and restoring device nodes is a way to give someone a disk.
func layoutTree(ctx context.Context, dir string) (*layout, error) {
	l := &layout{dir: dir}
	w := &layoutWalker{ctx: ctx, l: l, links: map[fileKey]string{}}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("lay out tar: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("lay out tar: %s: not a directory", dir)
	}
	if err := w.walk(dir, "", fi); err != nil {
		return nil, fmt.Errorf("lay out tar of %s: %w", dir, err)
	}
	l.size += trailerSize
	return l, nil
}

type layoutWalker struct {
	ctx   context.Context
	l     *layout
	links map[fileKey]string // first tar name of multiply linked files
}

// walk adds the entry at abs, named rel ("" for the root), and for a
// directory its contents.
func (w *layoutWalker) walk(abs, rel string, fi os.FileInfo) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat data", abs)
	}
	h := &tar.Header{
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		// PAX lets the writer keep nanosecond mtimes and xattrs; it
		// adds extended records only to members that need them.
		Format: tar.FormatPAX,
	}
	m := member{hdr: h}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		h.Typeflag = tar.TypeDir
		h.Name = rel + "/"
		if rel == "" {
			h.Name = "./"
		}
	case syscall.S_IFREG:
		h.Name = rel
		key := fileKey{dev: st.Dev, ino: st.Ino}
		if first, ok := w.links[key]; ok {
			h.Typeflag = tar.TypeLink
			h.Linkname = first
			break
		}
		if st.Nlink > 1 {
			w.links[key] = rel
		}
		h.Typeflag = tar.TypeReg
		h.Size = st.Size
		m.path, m.key, m.mtime = abs, key, st.Mtim
	case syscall.S_IFLNK:
		target, err := os.Readlink(abs)
		if err != nil {
			return err
		}
		h.Typeflag = tar.TypeSymlink
		h.Name = rel
		h.Linkname = target
	default:
		return nil
	}
	if h.Typeflag != tar.TypeLink {
		x, err := listXattrs(abs)
		if err != nil {
			return err
		}
		for k, v := range x {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	hb, err := encodeHeader(h)
	if err != nil {
		return fmt.Errorf("tar header of %q: %w", h.Name, err)
	}
	m.header, m.hdrLen = w.l.size, int64(len(hb))
	w.l.members = append(w.l.members, m)
	w.l.size = m.end()

	if h.Typeflag != tar.TypeDir {
		return nil
	}
	entries, err := os.ReadDir(abs) // sorted by name
	if err != nil {
		return err
	}
	for _, e := range entries {
		a := filepath.Join(abs, e.Name())
		fi, err := os.Lstat(a)
		if os.IsNotExist(err) {
			continue // deleted since ReadDir (live trees only)
		}
		if err != nil {
			return err
		}
		if err := w.walk(a, path.Join(rel, e.Name()), fi); err != nil {
			return err
		}
	}
	return nil
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
