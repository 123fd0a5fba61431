package fs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// maxOpenFiles bounds the content files an image keeps open between reads.
const maxOpenFiles = 64

// image is the tar stream of a directory tree, read from the files as
// asked for. It implements pe.Image and pe.TableOfContents.
type image struct {
	l      *layout
	files  *openFiles
	closed atomic.Bool
}

var (
	_ pe.Image           = (*image)(nil)
	_ pe.TableOfContents = (*image)(nil)
)

// openImage lays out the tar stream of dir.
func openImage(ctx context.Context, dir string) (*image, error) {
	l, err := layoutTree(ctx, dir)
	if err != nil {
		return nil, err
	}
	return &image{l: l, files: newOpenFiles(l, maxOpenFiles)}, nil
}

// Size implements pe.Image.
func (im *image) Size() int64 { return im.l.size }

// Allocated is what the tree's files take on disk, holes left out: a
// restore of the image writes about that much, though the tar stream
// holds every hole as zeros.
func (im *image) Allocated() int64 { return im.l.allocated }

// Close implements pe.Image.
func (im *image) Close() error {
	if im.closed.Swap(true) {
		return nil
	}
	return errors.Join(im.files.closeAll(), im.l.close())
}

// ReadAt implements pe.Image. It is safe for concurrent use.
func (im *image) ReadAt(p []byte, off int64) (int, error) {
	if im.closed.Load() {
		return 0, fmt.Errorf("read tar image: %w", os.ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("read tar image at %d: negative offset", off)
	}
	ms := im.l.members
	// The first member that ends after off holds it (or none: trailer).
	i := sort.Search(len(ms), func(i int) bool { return ms[i].end() > off })
	n := 0
	for n < len(p) && off < im.l.size {
		var (
			k   int
			err error
		)
		if i == len(ms) {
			k = zeroFill(p[n:], im.l.size-off)
		} else {
			m := &ms[i]
			switch {
			case off < m.offset():
				k, err = im.readHeader(p[n:], m, off-m.header)
			case off < m.offset()+m.size():
				k, err = im.readContent(p[n:], i, off-m.offset())
			case off < m.end():
				k = zeroFill(p[n:], m.end()-off)
			default:
				i++
				continue
			}
		}
		n += k
		off += int64(k)
		if err != nil {
			return n, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// zeroFill zeroes up to max bytes of p and returns how many.
func zeroFill(p []byte, max int64) int {
	k := int(min(int64(len(p)), max))
	clear(p[:k])
	return k
}

// readHeader copies header bytes of m from rel on.
func (im *image) readHeader(p []byte, m *member, rel int64) (int, error) {
	hb, err := encodeHeader(m.hdr)
	if err != nil {
		return 0, fmt.Errorf("tar header of %q: %w", m.hdr.Name, err)
	}
	if int64(len(hb)) != m.hdrLen {
		// Cannot happen unless archive/tar stops being deterministic;
		// then say so rather than shift every later byte.
		return 0, fmt.Errorf("tar header of %q: %d bytes, laid out as %d", m.hdr.Name, len(hb), m.hdrLen)
	}
	return copy(p, hb[rel:]), nil
}

// readContent reads content of member i from rel on.
func (im *image) readContent(p []byte, i int, rel int64) (int, error) {
	m := &im.l.members[i]
	want := min(int64(len(p)), m.size()-rel)
	f, err := im.files.acquire(i, m)
	if err != nil {
		return 0, err
	}
	defer im.files.release(f)
	k, err := f.f.ReadAt(p[:want], rel)
	if err != nil && !errors.Is(err, io.EOF) {
		return k, fmt.Errorf("read %s: %w", f.f.Name(), err)
	}
	// Checked after reading, so that a change during the read is seen
	// too (up to mtime granularity); a short read means it shrank.
	if err := checkUnchanged(f.f, m); err != nil {
		return 0, err
	}
	if int64(k) < want {
		return 0, fmt.Errorf("read %s: %w", f.f.Name(), errChanged)
	}
	return k, nil
}

// errChanged is returned when a file changed under an image of a live tree.
var errChanged = errors.New("file changed since the tar image was laid out (snapshot the PE for a consistent image)")

// checkUnchanged fails if f is not the file m was laid out from.
func checkUnchanged(f *os.File, m *member) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return &os.PathError{Op: "stat", Path: f.Name(), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Dev != m.key.dev || st.Ino != m.key.ino || st.Size != m.hdr.Size || st.Mtim != m.mtime {
		return fmt.Errorf("%s: %w", f.Name(), errChanged)
	}
	return nil
}

// Extents implements pe.Image: headers and contents are data, the padding
// after contents and the trailer are zero.
func (im *image) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, im.l.size)
	if !ok {
		return nil, nil
	}
	end := off + length
	var exts []pe.Extent
	add := func(from, to int64, kind pe.ExtentKind) {
		from, to = max(from, off), min(to, end)
		if from < to {
			exts = append(exts, pe.Extent{Offset: from, Length: to - from, Kind: kind})
		}
	}
	ms := im.l.members
	i := sort.Search(len(ms), func(i int) bool { return ms[i].end() > off })
	for ; i < len(ms) && ms[i].header < end; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m := &ms[i]
		add(m.header, m.offset()+m.size(), pe.ExtentData)
		add(m.offset()+m.size(), m.end(), pe.ExtentZero)
	}
	add(im.l.size-trailerSize, im.l.size, pe.ExtentZero)
	return pe.MergeExtents(exts), nil
}

// TOC implements pe.TableOfContents without reading any content.
func (im *image) TOC(ctx context.Context) ([]pe.TOCEntry, error) {
	toc := make([]pe.TOCEntry, len(im.l.members))
	for i := range im.l.members {
		m := &im.l.members[i]
		h := m.hdr
		e := pe.TOCEntry{
			Name:     pe.CleanTarName(h.Name),
			Mode:     h.FileInfo().Mode(),
			Size:     m.size(),
			ModTime:  h.ModTime,
			UID:      h.Uid,
			GID:      h.Gid,
			Linkname: h.Linkname,
			HardLink: h.Typeflag == tar.TypeLink,
			Devmajor: h.Devmajor,
			Devminor: h.Devminor,
			Header:   m.header,
			Offset:   m.offset(),
		}
		for k, v := range h.PAXRecords {
			const prefix = "SCHILY.xattr."
			if len(k) > len(prefix) && k[:len(prefix)] == prefix {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[k[len(prefix):]] = v
			}
		}
		toc[i] = e
	}
	return toc, nil
}

var _ pe.BackingFiler = (*image)(nil)

// OpenBacking implements pe.BackingFiler for the content of one regular
// member: its stored file, checked to be the one laid out.
func (im *image) OpenBacking(ctx context.Context, off, size int64) (*os.File, error) {
	ms := im.l.members
	i := sort.Search(len(ms), func(i int) bool { return ms[i].offset() >= off })
	if i == len(ms) || ms[i].offset() != off || ms[i].size() != size || ms[i].hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("tar image range %d+%d: not one file's content: %w", off, size, pe.ErrNotSupported)
	}
	return im.l.openContent(&ms[i])
}
