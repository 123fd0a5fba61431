package pe

import (
	"archive/zip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/flate"
)

// The zip layout of the Astrolabe spec: one zip per PE holding
// <peid>.peinfo, <peid>.md (if metadata), <peid>.data (if data) and
// components/<component peid>.zip, stored so a nested zip stays random
// access inside its parent.
const (
	zipInfoExt      = ".peinfo"
	zipMetadataExt  = ".md"
	zipDataExt      = ".data"
	zipComponentDir = "components/"
	zipComponentExt = ".zip"
)

// ZipWriterVersion names what WriteZip writes for given inputs: the
// order, names, methods and times of its entries and how the info is
// encoded. Bump it with any change that gives a PE's zip other bytes: the
// S3 data path hashes it into a zip's ETag, which must change with them.
const ZipWriterVersion = 1

// Limits on untrusted zips: they bound memory and work, never real PEs.
const (
	maxZipInfo      = 1 << 20 // bytes of peinfo JSON
	maxZipEntries   = 10_000  // entries per zip
	maxZipDepth     = 16      // component nesting
	maxZipEntrySize = 1 << 50 // declared uncompressed bytes (1 PiB)
)

// WriteZip writes p, its metadata, data and components (recursively) as an
// Astrolabe zip to w.
func WriteZip(ctx context.Context, w io.Writer, p ProtectedEntity, progress Progress) error {
	if progress != nil {
		progress.Start(dataSize(ctx, p))
	}
	return writeZip(ctx, w, p, progress)
}

// dataSize adds up the data sizes of p and its components, SizeUnknown if
// any is unknown.
func dataSize(ctx context.Context, p ProtectedEntity) int64 {
	info, err := p.Info(ctx)
	if err != nil || info.Size < 0 {
		return SizeUnknown
	}
	total := info.Size
	comps, err := p.Components(ctx)
	if err != nil {
		return SizeUnknown
	}
	for _, c := range comps {
		n := dataSize(ctx, c)
		if n < 0 {
			return SizeUnknown
		}
		total += n
	}
	return total
}

func writeZip(ctx context.Context, w io.Writer, p ProtectedEntity, progress Progress) error {
	id := p.ID()
	info, err := p.Info(ctx)
	if err != nil {
		return fmt.Errorf("zip %s: info: %w", id, err)
	}
	infoJSON, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("zip %s: info: %w", id, err)
	}
	// A snapshot's entries carry its time: its zip is then the same bytes
	// each time it is built (the S3 data path gives it one ETag).
	modified := time.Now()
	if info.Created != nil {
		modified = *info.Created
	}
	zw := zip.NewWriter(w)
	// BestSpeed: data is mostly disk images, where the win is the zeros
	// (about 1000:1 at any level) and the cost is CPU per byte.
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(out, flate.BestSpeed)
	})
	if err := writeZipEntry(zw, id.String()+zipInfoExt, zip.Deflate, modified, strings.NewReader(string(infoJSON)), nil); err != nil {
		return fmt.Errorf("zip %s: %w", id, err)
	}

	md, err := p.Metadata(ctx)
	switch {
	case errors.Is(err, ErrNoMetadata):
	case err != nil:
		return fmt.Errorf("zip %s: metadata: %w", id, err)
	default:
		err = writeZipEntry(zw, id.String()+zipMetadataExt, zip.Deflate, modified, ctxReader{ctx, md}, nil)
		md.Close()
		if err != nil {
			return fmt.Errorf("zip %s: metadata: %w", id, err)
		}
	}

	img, err := p.Data(ctx)
	switch {
	case errors.Is(err, ErrNoData):
	case err != nil:
		return fmt.Errorf("zip %s: data: %w", id, err)
	default:
		err = writeZipEntry(zw, id.String()+zipDataExt, zip.Deflate, modified, ctxReader{ctx, NewReader(img)}, progress)
		img.Close()
		if err != nil {
			return fmt.Errorf("zip %s: data: %w", id, err)
		}
	}

	comps, err := p.Components(ctx)
	if err != nil {
		return fmt.Errorf("zip %s: components: %w", id, err)
	}
	for _, c := range comps {
		cw, err := zw.CreateHeader(&zip.FileHeader{Name: zipComponentDir + c.ID().String() + zipComponentExt, Method: zip.Store, Modified: modified})
		if err != nil {
			return fmt.Errorf("zip %s: component %s: %w", id, c.ID(), err)
		}
		if err := writeZip(ctx, cw, c, progress); err != nil {
			return fmt.Errorf("zip %s: component: %w", id, err)
		}
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zip %s: %w", id, err)
	}
	return nil
}

func writeZipEntry(zw *zip.Writer, name string, method uint16, modified time.Time, r io.Reader, progress Progress) error {
	w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: method, Modified: modified})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if progress != nil {
		w = progressWriter{w, progress}
	}
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

type progressWriter struct {
	w io.Writer
	p Progress
}

func (pw progressWriter) Write(b []byte) (int, error) {
	n, err := pw.w.Write(b)
	pw.p.Add(int64(n))
	return n, err
}

// ctxReader stops a long copy when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// OpenZipFile opens the Astrolabe zip at path; close the returned Closer
// when done with the PE.
func OpenZipFile(ctx context.Context, path string) (ProtectedEntity, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	p, err := OpenZip(ctx, f, st.Size())
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, f, nil
}

// OpenZip reads an Astrolabe zip as a read-only PE. The zip is untrusted:
// every entry name is checked against the layout, sizes and nesting are
// bounded, and nothing proportional to declared sizes is allocated. The PE
// and its components say so (see Untrusted): a restore of them grants no
// privileges and is bounded in what it writes (CopyOptions).
func OpenZip(ctx context.Context, r io.ReaderAt, size int64) (ProtectedEntity, error) {
	return openZip(ctx, r, size, 0)
}

func openZip(ctx context.Context, r io.ReaderAt, size int64, depth int) (*zipEntity, error) {
	if depth > maxZipDepth {
		return nil, fmt.Errorf("invalid PE zip: components nested deeper than %d", maxZipDepth)
	}
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, fmt.Errorf("invalid PE zip: %w", err)
	}
	if len(zr.File) > maxZipEntries {
		return nil, fmt.Errorf("invalid PE zip: %d entries (at most %d)", len(zr.File), maxZipEntries)
	}
	z := &zipEntity{size: size}
	var info, md, data *zip.File
	var comps []*zip.File
	seen := make(map[string]bool, len(zr.File))
	for _, f := range zr.File {
		name := f.Name
		if seen[name] {
			return nil, fmt.Errorf("invalid PE zip: duplicate entry %q", name)
		}
		seen[name] = true
		if err := checkZipName(name); err != nil {
			return nil, err
		}
		if f.UncompressedSize64 > maxZipEntrySize {
			return nil, fmt.Errorf("invalid PE zip: entry %q declares %d bytes (at most %d)", name, f.UncompressedSize64, int64(maxZipEntrySize))
		}
		switch {
		case strings.HasPrefix(name, zipComponentDir):
			comps = append(comps, f)
		case strings.HasSuffix(name, zipInfoExt):
			if info != nil {
				return nil, fmt.Errorf("invalid PE zip: two peinfo entries %q and %q", info.Name, name)
			}
			info = f
		case strings.HasSuffix(name, zipMetadataExt):
			md = f
		case strings.HasSuffix(name, zipDataExt):
			data = f
		default:
			return nil, fmt.Errorf("invalid PE zip: unexpected entry %q", name)
		}
	}
	if info == nil {
		return nil, fmt.Errorf("invalid PE zip: no .peinfo entry")
	}
	if z.info, err = readZipInfo(info); err != nil {
		return nil, err
	}
	prefix := z.info.ID.String()
	if info.Name != prefix+zipInfoExt {
		return nil, fmt.Errorf("invalid PE zip: entry %q holds the info of %s", info.Name, prefix)
	}
	for _, f := range []*zip.File{md, data} {
		if f != nil && strings.TrimSuffix(strings.TrimSuffix(f.Name, zipMetadataExt), zipDataExt) != prefix {
			return nil, fmt.Errorf("invalid PE zip: entry %q does not belong to %s", f.Name, prefix)
		}
	}
	z.md, z.data = md, data
	for _, f := range comps {
		c, err := openZipComponent(ctx, r, size, f, depth)
		if err != nil {
			return nil, err
		}
		z.components = append(z.components, c)
	}
	return z, nil
}

// checkZipName accepts only the names of the layout: a PE ID with one of
// the extensions, or components/<PE ID>.zip. IDs may contain '/', so the
// name is also checked for anything that could escape or confuse a path.
func checkZipName(name string) error {
	bad := func(why string) error { return fmt.Errorf("invalid PE zip: entry %q: %s", name, why) }
	switch {
	case name == "":
		return bad("empty name")
	case strings.HasPrefix(name, "/"):
		return bad("absolute name")
	case strings.ContainsAny(name, "\\\x00"):
		return bad("backslash or NUL in name")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." || part == "." || part == "" {
			return bad("empty, '.' or '..' path component")
		}
	}
	base := name
	ext := ""
	if strings.HasPrefix(name, zipComponentDir) {
		base, ext = strings.TrimPrefix(name, zipComponentDir), zipComponentExt
	} else {
		for _, e := range []string{zipInfoExt, zipMetadataExt, zipDataExt} {
			if strings.HasSuffix(name, e) {
				ext = e
				break
			}
		}
	}
	if ext == "" || !strings.HasSuffix(base, ext) {
		return bad("not part of the PE zip layout (<peid>.peinfo|.md|.data, components/<peid>.zip)")
	}
	if _, err := ParseID(strings.TrimSuffix(base, ext)); err != nil {
		return bad(err.Error())
	}
	return nil
}

func readZipInfo(f *zip.File) (Info, error) {
	if f.UncompressedSize64 > maxZipInfo {
		return Info{}, fmt.Errorf("invalid PE zip: %q is %d bytes (at most %d)", f.Name, f.UncompressedSize64, maxZipInfo)
	}
	rc, err := f.Open()
	if err != nil {
		return Info{}, fmt.Errorf("invalid PE zip: %q: %w", f.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxZipInfo+1))
	if err == nil && len(b) > maxZipInfo {
		err = fmt.Errorf("longer than %d bytes", maxZipInfo)
	}
	if err != nil {
		return Info{}, fmt.Errorf("invalid PE zip: %q: %w", f.Name, err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return Info{}, fmt.Errorf("invalid PE zip: %q: %w", f.Name, err)
	}
	return info, nil
}

func openZipComponent(ctx context.Context, r io.ReaderAt, size int64, f *zip.File, depth int) (*zipEntity, error) {
	if f.Method != zip.Store {
		return nil, fmt.Errorf("invalid PE zip: component %q is compressed (must be stored)", f.Name)
	}
	off, err := f.DataOffset()
	if err != nil {
		return nil, fmt.Errorf("invalid PE zip: component %q: %w", f.Name, err)
	}
	n := int64(f.CompressedSize64)
	if f.CompressedSize64 != f.UncompressedSize64 || n < 0 || off < 0 || off > size || n > size-off {
		return nil, fmt.Errorf("invalid PE zip: component %q: stored range [%d, +%d) outside the %d-byte zip", f.Name, off, f.CompressedSize64, size)
	}
	c, err := openZip(ctx, io.NewSectionReader(r, off, n), n, depth+1)
	if err != nil {
		return nil, fmt.Errorf("component %q: %w", f.Name, err)
	}
	if want := strings.TrimSuffix(strings.TrimPrefix(f.Name, zipComponentDir), zipComponentExt); c.info.ID.String() != want {
		return nil, fmt.Errorf("invalid PE zip: component %q holds %s", f.Name, c.info.ID)
	}
	return c, nil
}

// zipEntity is a PE read from a zip: a frozen copy, so the snapshot
// operations are not supported.
type zipEntity struct {
	size       int64 // of the zip holding it
	info       Info
	md, data   *zip.File
	components []*zipEntity
}

// Untrusted implements the method pe.Untrusted looks for: a zip comes from
// outside the appliance (an upload, a file named on the command line), and
// nothing in it is authenticated, so restoring it grants no privileges
// unless asked to.
func (z *zipEntity) Untrusted() bool { return true }

// StoredSize implements the method pe.StoredSize looks for: the compressed
// size of the data entry, what an expansion bound multiplies. The zip
// declares it, so it counts no more than the zip's own size: the entry
// cannot hold more than that.
func (z *zipEntity) StoredSize() int64 {
	if z.data == nil {
		return 0
	}
	return int64(min(z.data.CompressedSize64, uint64(z.size)))
}

func (z *zipEntity) ID() ID                                 { return z.info.ID }
func (z *zipEntity) Info(ctx context.Context) (Info, error) { return z.info, nil }

func (z *zipEntity) Snapshot(ctx context.Context, params Params) (ID, error) {
	return ID{}, fmt.Errorf("snapshot of zip PE %s: %w", z.info.ID, ErrNotSupported)
}

// ListSnapshots lists the one snapshot a zip of a snapshot holds.
func (z *zipEntity) ListSnapshots(ctx context.Context) ([]ID, error) {
	if z.info.ID.HasSnapshot() {
		return []ID{z.info.ID}, nil
	}
	return nil, nil
}

func (z *zipEntity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	return fmt.Errorf("delete snapshot of zip PE %s: %w", z.info.ID, ErrNotSupported)
}

func (z *zipEntity) SnapshotInfo(ctx context.Context, snapshot string) (Info, error) {
	if snapshot == z.info.ID.Snapshot() {
		return z.info, nil
	}
	return Info{}, fmt.Errorf("snapshot %s of zip PE %s: %w", snapshot, z.info.ID, ErrNotFound)
}

func (z *zipEntity) Components(ctx context.Context) ([]ProtectedEntity, error) {
	out := make([]ProtectedEntity, len(z.components))
	for i, c := range z.components {
		out[i] = c
	}
	return out, nil
}

func (z *zipEntity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	if z.md == nil {
		return nil, fmt.Errorf("zip PE %s: %w", z.info.ID, ErrNoMetadata)
	}
	rc, err := z.md.Open()
	if err != nil {
		return nil, fmt.Errorf("zip PE %s: metadata: %w", z.info.ID, err)
	}
	return rc, nil
}

func (z *zipEntity) Data(ctx context.Context) (Image, error) {
	if z.data == nil {
		return nil, fmt.Errorf("zip PE %s: %w", z.info.ID, ErrNoData)
	}
	return &zipImage{f: z.data, size: int64(z.data.UncompressedSize64)}, nil
}

func (z *zipEntity) Overwrite(ctx context.Context, src ProtectedEntity, withComponents bool) error {
	return fmt.Errorf("overwrite zip PE %s: %w", z.info.ID, ErrNotSupported)
}

// zipImage reads a zip entry as an Image. Stored entries are truly random
// access; deflated ones are decompressed from the start, keeping the
// position so sequential ReadAt calls cost O(n) in all, and restarting only
// when a read goes backwards.
type zipImage struct {
	f    *zip.File
	size int64

	mu     sync.Mutex
	stored *io.SectionReader
	rc     io.ReadCloser
	pos    int64
	closed bool
}

func (z *zipImage) Size() int64 { return z.size }

func (z *zipImage) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	return AllData(off, length, z.size), nil
}

func (z *zipImage) Close() error {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.closed = true
	if z.rc != nil {
		err := z.rc.Close()
		z.rc = nil
		return err
	}
	return nil
}

func (z *zipImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("zip %s: negative offset %d", z.f.Name, off)
	}
	if off >= z.size {
		return 0, io.EOF
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.closed {
		return 0, fmt.Errorf("zip %s: read after close", z.f.Name)
	}
	want := p
	if rest := z.size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	var n int
	var err error
	if z.f.Method == zip.Store {
		n, err = z.readStored(want, off)
	} else {
		n, err = z.readDeflated(want, off)
	}
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

func (z *zipImage) readStored(p []byte, off int64) (int, error) {
	if z.stored == nil {
		r, err := z.f.OpenRaw()
		if err != nil {
			return 0, fmt.Errorf("zip %s: %w", z.f.Name, err)
		}
		ra, ok := r.(io.ReaderAt)
		if !ok {
			return 0, fmt.Errorf("zip %s: stored entry is not random access", z.f.Name)
		}
		z.stored = io.NewSectionReader(ra, 0, z.size)
	}
	n, err := z.stored.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return n, fmt.Errorf("zip %s at %d: %w", z.f.Name, off, err)
	}
	return n, nil
}

func (z *zipImage) readDeflated(p []byte, off int64) (int, error) {
	if z.rc == nil || off < z.pos {
		if z.rc != nil {
			z.rc.Close()
		}
		rc, err := z.f.Open()
		if err != nil {
			return 0, fmt.Errorf("zip %s: %w", z.f.Name, err)
		}
		z.rc, z.pos = rc, 0
	}
	if skip := off - z.pos; skip > 0 {
		n, err := io.CopyN(io.Discard, z.rc, skip)
		z.pos += n
		if err != nil {
			return 0, z.readErr(err)
		}
	}
	n, err := io.ReadFull(z.rc, p)
	z.pos += int64(n)
	if err != nil {
		return n, z.readErr(err)
	}
	if z.pos == z.size {
		// archive/zip checks size and CRC only when it sees EOF: make it
		// look, so corruption surfaces as an error, not as bad data.
		var one [1]byte
		if m, err := z.rc.Read(one[:]); m != 0 || err != io.EOF {
			if err == nil || err == io.EOF {
				err = fmt.Errorf("more data than the declared %d bytes", z.size)
			}
			return n, z.readErr(err)
		}
	}
	return n, nil
}

// readErr reports a failed deflated read and drops the reader so the next
// read starts over rather than continuing from an unknown position.
func (z *zipImage) readErr(err error) error {
	z.rc.Close()
	z.rc = nil
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = fmt.Errorf("entry shorter than its declared %d bytes: %w", z.size, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("zip %s: %w", z.f.Name, err)
}
