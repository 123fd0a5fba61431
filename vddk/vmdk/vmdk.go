// Package vmdk reads VMware virtual disks without VDDK: monolithicFlat and
// twoGbMaxExtentFlat (raw extents), monolithicSparse and
// twoGbMaxExtentSparse (hosted sparse extents with grain tables),
// streamOptimized (compressed grains, footer), vmfs flat disks, and delta
// chains (a child's unallocated grains come from its parent). It reads from
// an opener, so extents can live on local disk or behind a datastore's HTTP
// file access.
package vmdk

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
)

const sector = 512

// File is an extent file opened for reading.
type File interface {
	io.ReaderAt
	io.Closer
	Size() (int64, error)
}

// Opener opens the files of a disk by name, relative to the descriptor.
type Opener func(name string) (File, error)

// LocalOpener opens files in dir.
func LocalOpener(dir string) Opener {
	return func(name string) (File, error) {
		f, err := os.Open(path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		return localFile{f}, nil
	}
}

type localFile struct{ *os.File }

func (f localFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Extent is a range of the disk and whether it holds data.
type Extent struct {
	Offset, Length int64
	Allocated      bool
}

// Disk is an open virtual disk, read-only; ReadAt is safe for concurrent use.
type Disk struct {
	size    int64
	extents []extent
	parent  *Disk
	CID     string
	// CreateType is the descriptor's createType.
	CreateType string
}

// extent is one extent of the descriptor: a byte range of the disk.
type extent struct {
	start, size int64 // in the disk
	kind        string
	flat        File // FLAT/VMFS: bytes at flatOffset
	flatName    string
	flatOffset  int64
	sparse      *sparseExtent
	zero        bool
}

// Open opens the disk whose descriptor (a text descriptor, or a sparse
// file with one embedded) is name, and its parents.
func Open(open Opener, name string) (*Disk, error) {
	return openDepth(open, name, 0)
}

// OpenFile opens a local disk by path.
func OpenFile(p string) (*Disk, error) {
	return Open(LocalOpener(path.Dir(p)), path.Base(p))
}

const maxChain = 32

func openDepth(open Opener, name string, depth int) (*Disk, error) {
	if depth > maxChain {
		return nil, fmt.Errorf("%s: delta chain deeper than %d", name, maxChain)
	}
	f, err := open(name)
	if err != nil {
		return nil, err
	}
	head := make([]byte, 4)
	if _, err := f.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var desc []byte
	var embedded *sparseExtent
	if binary.LittleEndian.Uint32(head) == sparseMagic {
		embedded, err = openSparse(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if desc, err = embedded.descriptor(); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	} else {
		size, err := f.Size()
		if err != nil || size > 1<<20 {
			f.Close()
			return nil, fmt.Errorf("%s: not a VMDK descriptor", name)
		}
		desc = make([]byte, size)
		_, err = f.ReadAt(desc, 0)
		f.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	d, err := parseDescriptor(open, name, desc, embedded)
	if err != nil {
		if embedded != nil {
			embedded.f.Close()
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if d.parentHint != "" {
		p, err := openDepth(open, d.parentHint, depth+1)
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("%s: parent: %w", name, err)
		}
		d.parent = p
	}
	return d.Disk, nil
}

type parsed struct {
	*Disk
	parentHint string
}

// parseDescriptor reads a text descriptor and opens its extents.
func parseDescriptor(open Opener, name string, desc []byte, embedded *sparseExtent) (parsed, error) {
	d := parsed{Disk: &Disk{}}
	// The text ends at the first NUL. What follows may be the tail of an
	// older, longer descriptor: qemu rewrites the embedded descriptor in
	// place when it updates the CID, and a shorter CID leaves the old
	// text's last bytes behind the terminator.
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	sc := bufio.NewScanner(bytes.NewReader(desc))
	var pos int64
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "RW ") && !strings.HasPrefix(line, "RDONLY ") && !strings.HasPrefix(line, "NOACCESS ") {
			k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"`)
			switch k {
			case "createType":
				d.CreateType = v
			case "CID":
				d.CID = v
			case "parentFileNameHint":
				d.parentHint = v
			}
			continue
		}
		// An extent: ACCESS SECTORS TYPE ["FILE" [OFFSET]]
		fields := strings.Fields(line)
		if len(fields) < 3 {
			return d, fmt.Errorf("descriptor line %q", line)
		}
		sectors, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || sectors < 0 {
			return d, fmt.Errorf("descriptor line %q: bad size", line)
		}
		e := extent{start: pos, size: sectors * sector, kind: fields[2]}
		// The file name is quoted and may hold spaces; an offset in
		// sectors may follow it.
		var file string
		if q := strings.IndexByte(line, '"'); q >= 0 {
			r := strings.IndexByte(line[q+1:], '"')
			if r < 0 {
				return d, fmt.Errorf("descriptor line %q: unterminated file name", line)
			}
			file = line[q+1 : q+1+r]
			if rest := strings.TrimSpace(line[q+2+r:]); rest != "" {
				off, err := strconv.ParseInt(rest, 10, 64)
				if err != nil || off < 0 {
					return d, fmt.Errorf("descriptor line %q: bad offset", line)
				}
				e.flatOffset = off * sector
			}
		}
		switch e.kind {
		case "FLAT", "VMFS", "VMFSRAW", "VMFSRDM":
			f, err := open(file)
			if err != nil {
				return d, err
			}
			e.flat, e.flatName = f, file
		case "SPARSE", "VMFSSPARSE":
			if embedded != nil && (file == "" || file == name || path.Base(file) == path.Base(name)) {
				e.sparse = embedded
				embedded = nil
			} else {
				f, err := open(file)
				if err != nil {
					return d, err
				}
				if e.sparse, err = openSparse(f); err != nil {
					f.Close()
					return d, fmt.Errorf("%s: %w", file, err)
				}
			}
		case "ZERO":
			e.zero = true
		default:
			return d, fmt.Errorf("extent type %s not supported", e.kind)
		}
		d.extents = append(d.extents, e)
		pos += e.size
	}
	if len(d.extents) == 0 {
		return d, errors.New("descriptor without extents")
	}
	d.size = pos
	return d, sc.Err()
}

// Size is the disk's capacity in bytes.
func (d *Disk) Size() int64 { return d.size }

// Close closes the disk's files and its parents'.
func (d *Disk) Close() error {
	var first error
	for _, e := range d.extents {
		var err error
		switch {
		case e.flat != nil:
			err = e.flat.Close()
		case e.sparse != nil:
			err = e.sparse.f.Close()
		}
		if first == nil {
			first = err
		}
	}
	if d.parent != nil {
		if err := d.parent.Close(); first == nil {
			first = err
		}
	}
	return first
}

// ReadAt implements io.ReaderAt over the whole chain.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", off)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	want := len(p)
	var short error
	if int64(want) > d.size-off {
		want, short = int(d.size-off), io.EOF
	}
	done := 0
	for done < want {
		at := off + int64(done)
		i := sort.Search(len(d.extents), func(i int) bool { return d.extents[i].start+d.extents[i].size > at })
		e := &d.extents[i]
		n := int(min(int64(want-done), e.start+e.size-at))
		if err := d.readExtent(e, p[done:done+n], at); err != nil {
			return done, err
		}
		done += n
	}
	return want, short
}

func (d *Disk) readExtent(e *extent, p []byte, at int64) error {
	rel := at - e.start
	switch {
	case e.zero:
		clear(p)
		return nil
	case e.flat != nil:
		n, err := e.flat.ReadAt(p, e.flatOffset+rel)
		if n < len(p) {
			if err == nil || errors.Is(err, io.EOF) {
				clear(p[n:]) // a flat file shorter than its extent reads as zeros
				return nil
			}
			return err
		}
		return nil
	}
	return e.sparse.read(p, rel, func(q []byte, diskOff int64) error {
		// An unallocated grain: the parent's bytes, or zeros.
		if d.parent != nil {
			_, err := d.parent.ReadAt(q, diskOff)
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return err
		}
		clear(q)
		return nil
	}, e.start)
}

// FlatFile returns the name, relative to the descriptor, of the one raw
// extent file that holds the whole disk from its first byte, for writers
// that replace a disk's bytes; ok is false for any other layout (sparse
// extents, several extents, a delta chain).
func (d *Disk) FlatFile() (name string, ok bool) {
	if d.parent != nil || len(d.extents) != 1 {
		return "", false
	}
	e := d.extents[0]
	if e.flat == nil || e.flatOffset != 0 || e.size != d.size {
		return "", false
	}
	return e.flatName, true
}

// Allocated describes [0, Size) as extents allocated in this disk or its
// parents (backup reads only those), in order.
func (d *Disk) Allocated() ([]Extent, error) {
	var out []Extent
	add := func(off, n int64, alloc bool) {
		if n <= 0 {
			return
		}
		if k := len(out); k > 0 && out[k-1].Allocated == alloc && out[k-1].Offset+out[k-1].Length == off {
			out[k-1].Length += n
			return
		}
		out = append(out, Extent{off, n, alloc})
	}
	var parent []Extent
	if d.parent != nil {
		var err error
		if parent, err = d.parent.Allocated(); err != nil {
			return nil, err
		}
	}
	// parent is sorted and covers the disk: the extents that may overlap
	// [off, off+n) start at the last one that begins at or before off.
	parentAllocated := func(off, n int64) bool {
		i := sort.Search(len(parent), func(i int) bool { return parent[i].Offset > off }) - 1
		for i = max(i, 0); i < len(parent) && parent[i].Offset < off+n; i++ {
			if x := parent[i]; x.Allocated && x.Offset+x.Length > off {
				return true
			}
		}
		return false
	}
	for _, e := range d.extents {
		switch {
		case e.zero:
			add(e.start, e.size, false)
		case e.flat != nil:
			add(e.start, e.size, true)
		default:
			gs := e.sparse.grainBytes()
			for g := int64(0); g*gs < e.size; g++ {
				off, n := e.start+g*gs, min(gs, e.size-g*gs)
				alloc, err := e.sparse.allocated(g)
				if err != nil {
					return nil, err
				}
				add(off, n, alloc || parentAllocated(off, n))
			}
		}
	}
	return out, nil
}

// sparseExtent is a hosted sparse extent (including streamOptimized).
type sparseExtent struct {
	f          File
	capacity   int64 // sectors
	grainSize  int64 // sectors
	descOff    int64 // sectors
	descSize   int64 // sectors
	gtesPerGT  int64
	gdOffset   int64 // sectors
	compressed bool

	once sync.Once
	gd   []uint32
	gErr error
	mu   sync.Mutex
	gts  map[int64][]uint32 // grain tables read so far
}

const (
	sparseMagic  = 0x564d444b // "KDMV"
	gdAtEnd      = 0xFFFFFFFFFFFFFFFF
	flagCompress = 1 << 16
	flagMarkers  = 1 << 17
	maxGrainSize = 1 << 20 // sectors: bounds what a corrupt header can ask for
)

func openSparse(f File) (*sparseExtent, error) {
	h := make([]byte, sector)
	if _, err := f.ReadAt(h, 0); err != nil {
		return nil, fmt.Errorf("sparse header: %w", err)
	}
	s, err := parseSparseHeader(h)
	if err != nil {
		return nil, err
	}
	s.f = f
	if uint64(s.gdOffset) == gdAtEnd {
		// streamOptimized: the real header is the footer, before the
		// end-of-stream marker.
		size, err := f.Size()
		if err != nil {
			return nil, err
		}
		if size < 3*sector {
			return nil, errors.New("streamOptimized extent without footer")
		}
		if _, err := f.ReadAt(h, size-2*sector); err != nil {
			return nil, fmt.Errorf("footer: %w", err)
		}
		foot, err := parseSparseHeader(h)
		if err != nil {
			return nil, fmt.Errorf("footer: %w", err)
		}
		s.gdOffset = foot.gdOffset
	}
	return s, nil
}

func parseSparseHeader(h []byte) (*sparseExtent, error) {
	le := binary.LittleEndian
	if le.Uint32(h[0:]) != sparseMagic {
		return nil, errors.New("not a sparse extent (bad magic)")
	}
	flags := le.Uint32(h[8:])
	s := &sparseExtent{
		capacity:  int64(le.Uint64(h[12:])),
		grainSize: int64(le.Uint64(h[20:])),
		descOff:   int64(le.Uint64(h[28:])),
		descSize:  int64(le.Uint64(h[36:])),
		gtesPerGT: int64(le.Uint32(h[44:])),
		gdOffset:  int64(le.Uint64(h[56:])),
		gts:       map[int64][]uint32{},
	}
	s.compressed = flags&flagCompress != 0 && le.Uint16(h[77:]) == 1
	if s.grainSize <= 0 || s.grainSize > maxGrainSize || s.grainSize&(s.grainSize-1) != 0 {
		return nil, fmt.Errorf("grain size %d sectors", s.grainSize)
	}
	if s.gtesPerGT <= 0 || s.gtesPerGT > 1<<16 {
		return nil, fmt.Errorf("%d grain table entries per table", s.gtesPerGT)
	}
	if s.capacity < 0 || s.capacity > 1<<40 {
		return nil, fmt.Errorf("capacity %d sectors", s.capacity)
	}
	return s, nil
}

func (s *sparseExtent) grainBytes() int64 { return s.grainSize * sector }

func (s *sparseExtent) descriptor() ([]byte, error) {
	if s.descOff == 0 || s.descSize <= 0 || s.descSize > 2048 {
		return nil, errors.New("sparse extent without embedded descriptor")
	}
	b := make([]byte, s.descSize*sector)
	if _, err := s.f.ReadAt(b, s.descOff*sector); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}

// loadGD reads the grain directory once.
func (s *sparseExtent) loadGD() error {
	s.once.Do(func() {
		grains := (s.capacity + s.grainSize - 1) / s.grainSize
		n := (grains + s.gtesPerGT - 1) / s.gtesPerGT
		b := make([]byte, n*4)
		if _, err := s.f.ReadAt(b, s.gdOffset*sector); err != nil && !errors.Is(err, io.EOF) {
			s.gErr = fmt.Errorf("grain directory: %w", err)
			return
		}
		s.gd = make([]uint32, n)
		for i := range s.gd {
			s.gd[i] = binary.LittleEndian.Uint32(b[i*4:])
		}
	})
	return s.gErr
}

// gte returns the grain table entry of grain g: its sector, 0 if the grain
// is not allocated, 1 if it is allocated as zeros.
func (s *sparseExtent) gte(g int64) (uint32, error) {
	if err := s.loadGD(); err != nil {
		return 0, err
	}
	t := g / s.gtesPerGT
	if t >= int64(len(s.gd)) {
		return 0, nil
	}
	if s.gd[t] == 0 {
		return 0, nil
	}
	s.mu.Lock()
	gt, ok := s.gts[t]
	s.mu.Unlock()
	if !ok {
		b := make([]byte, s.gtesPerGT*4)
		if _, err := s.f.ReadAt(b, int64(s.gd[t])*sector); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("grain table %d: %w", t, err)
		}
		gt = make([]uint32, s.gtesPerGT)
		for i := range gt {
			gt[i] = binary.LittleEndian.Uint32(b[i*4:])
		}
		s.mu.Lock()
		s.gts[t] = gt
		s.mu.Unlock()
	}
	return gt[g%s.gtesPerGT], nil
}

func (s *sparseExtent) allocated(g int64) (bool, error) {
	e, err := s.gte(g)
	return e > 1, err
}

// read fills p with the extent's bytes at rel; unallocated grains come
// from missing (the parent, or zeros).
func (s *sparseExtent) read(p []byte, rel int64, missing func([]byte, int64) error, base int64) error {
	gs := s.grainBytes()
	for len(p) > 0 {
		g, in := rel/gs, rel%gs
		n := int(min(int64(len(p)), gs-in))
		e, err := s.gte(g)
		if err != nil {
			return err
		}
		switch {
		case e == 0:
			if err := missing(p[:n], base+rel); err != nil {
				return err
			}
		case e == 1:
			clear(p[:n])
		case s.compressed:
			grain, err := s.compressedGrain(int64(e))
			if err != nil {
				return fmt.Errorf("grain %d: %w", g, err)
			}
			if int64(len(grain)) < in+int64(n) {
				return fmt.Errorf("grain %d: %d bytes after decompression", g, len(grain))
			}
			copy(p[:n], grain[in:])
		default:
			k, err := s.f.ReadAt(p[:n], int64(e)*sector+in)
			if k < n {
				if err == nil || errors.Is(err, io.EOF) {
					return fmt.Errorf("grain %d: extent file too short", g)
				}
				return err
			}
		}
		p, rel = p[n:], rel+int64(n)
	}
	return nil
}

// compressedGrain reads a streamOptimized grain: lba (8 bytes), size (4),
// then that many bytes of zlib data.
func (s *sparseExtent) compressedGrain(sec int64) ([]byte, error) {
	h := make([]byte, 12)
	if _, err := s.f.ReadAt(h, sec*sector); err != nil {
		return nil, err
	}
	size := int64(binary.LittleEndian.Uint32(h[8:]))
	if size <= 0 || size > 2*s.grainBytes()+1024 {
		return nil, fmt.Errorf("compressed size %d", size)
	}
	z := make([]byte, size)
	if _, err := s.f.ReadAt(z, sec*sector+12); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	zr, err := zlib.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(io.LimitReader(zr, s.grainBytes()+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > s.grainBytes() {
		return nil, errors.New("grain larger than the grain size")
	}
	if int64(len(out)) < s.grainBytes() {
		out = append(out, make([]byte, s.grainBytes()-int64(len(out)))...)
	}
	return out, nil
}
