package vsphere

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"sync"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/vddk"
	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// DiskRef names the bytes of a virtual disk: an FCD or a VM's disk, live
// or in a snapshot.
type DiskRef struct {
	Datastore *object.Datastore
	Path      string // the backing VMDK's datastore path, "[ds] fcd/x.vmdk"
	// For VDDK, which opens disks through their owner: the FCD and its
	// snapshot, or the VM and its snapshot (managed object IDs).
	FCD, FCDSnapshot string
	VM, VMSnapshot   string
}

// DiskAccess reads and writes disks: the pure-Go datastore HTTP access
// by default, VDDK when configured (build tag vddk).
type DiskAccess interface {
	Open(ctx context.Context, c *govmomi.Client, ref DiskRef) (vddk.Disk, error)
	// Write makes the disk's bytes those of src, zeros included, and
	// zero-fills the disk after src's end. fresh says the disk was just
	// created and reads as zeros, so holes of src need no writing.
	Write(ctx context.Context, c *govmomi.Client, ref DiskRef, src pe.Image, fresh bool, progress pe.Progress) error
}

// HTTPAccess reaches disks through the datastore's HTTP file access
// (/folder): reads with ranged GETs through the pure-Go VMDK reader,
// writes by uploading the raw extent of a flat disk in one PUT.
type HTTPAccess struct{}

func (HTTPAccess) Open(ctx context.Context, c *govmomi.Client, ref DiskRef) (vddk.Disk, error) {
	d, err := OpenVMDK(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	return vddk.FromVMDK(d), nil
}

// OpenVMDK opens a disk's VMDK chain through the datastore's HTTP file
// access.
func OpenVMDK(ctx context.Context, c *govmomi.Client, ref DiskRef) (*vmdk.Disk, error) {
	var p object.DatastorePath
	if !p.FromString(ref.Path) {
		return nil, fmt.Errorf("backing path %q is not a datastore path", ref.Path)
	}
	dir := path.Dir(p.Path)
	open := func(name string) (vmdk.File, error) {
		// The disk outlives the call that opened it.
		return &dsFile{ctx: context.WithoutCancel(ctx), ds: ref.Datastore, c: c.Client.Client, path: path.Join(dir, name)}, nil
	}
	d, err := vmdk.Open(open, path.Base(p.Path))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ref.Path, err)
	}
	return d, nil
}

func (HTTPAccess) Write(ctx context.Context, c *govmomi.Client, ref DiskRef, src pe.Image, fresh bool, progress pe.Progress) error {
	d, err := OpenVMDK(ctx, c, ref)
	if err != nil {
		return err
	}
	capacity := d.Size()
	flat, ok := d.FlatFile()
	d.Close()
	if !ok {
		return fmt.Errorf("write %s: only a flat disk without snapshots can be written over the datastore's file access; configure VDDK for this disk: %w", ref.Path, pe.ErrNotSupported)
	}
	if src.Size() > capacity {
		return fmt.Errorf("write %s: the source's %d bytes do not fit its %d", ref.Path, src.Size(), capacity)
	}
	var p object.DatastorePath
	p.FromString(ref.Path)
	target := path.Join(path.Dir(p.Path), flat)
	if progress != nil {
		progress.Start(capacity)
	}
	// One sequential stream of the whole extent: HTTP file access has no
	// partial writes. Reads of 1 MiB keep the source's readahead busy.
	body := io.MultiReader(
		bufio.NewReaderSize(io.NewSectionReader(src, 0, src.Size()), 1<<20),
		io.LimitReader(zeros{}, capacity-src.Size()),
	)
	if progress != nil {
		body = &progressReader{r: body, p: progress}
	}
	err = c.Client.Client.Upload(ctx, body, ref.Datastore.NewURL(target), &soap.Upload{Method: http.MethodPut, ContentLength: capacity})
	if err != nil {
		return fmt.Errorf("write %s: upload %s: %w", ref.Path, target, err)
	}
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

type progressReader struct {
	r io.Reader
	p pe.Progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.Add(int64(n))
	return n, err
}

// dsFile is a datastore file read with ranged HTTP GETs. Sparse and
// streamOptimized VMDKs are read a grain (64 KiB or less) at a time; one
// GET per grain would make a backup crawl, so small reads are served from
// a few windows of readWindow bytes fetched whole.
type dsFile struct {
	ctx  context.Context
	ds   *object.Datastore
	c    *soap.Client
	path string

	mu      sync.Mutex
	windows []window // most recently used last
}

type window struct {
	off  int64
	data []byte // shorter than readWindow at the end of the file
}

const (
	readWindow = 2 << 20
	maxWindows = 4
)

func (f *dsFile) Size() (int64, error) {
	fi, err := f.ds.Stat(f.ctx, f.path)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.path, err)
	}
	return fi.GetFileInfo().FileSize, nil
}

func (f *dsFile) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) >= readWindow/2 {
		return f.fetch(p, off)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.window(off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	n := copy(p, w.data[off-w.off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// window returns a window holding [off, off+n), or as much of it as the
// file has, fetching one if none does. f.mu is held.
func (f *dsFile) window(off, n int64) (window, error) {
	for i := len(f.windows) - 1; i >= 0; i-- {
		w := f.windows[i]
		if off >= w.off && (off+n <= w.off+int64(len(w.data)) || (len(w.data) < readWindow && off <= w.off+int64(len(w.data)))) {
			f.windows = append(append(f.windows[:i:i], f.windows[i+1:]...), w)
			return w, nil
		}
	}
	buf := make([]byte, readWindow)
	got, err := f.fetch(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return window{}, err
	}
	w := window{off: off, data: buf[:got]}
	if len(f.windows) == maxWindows {
		f.windows = f.windows[1:]
	}
	f.windows = append(f.windows, w)
	return w, nil
}

// fetch reads [off, off+len(p)) with one GET.
func (f *dsFile) fetch(p []byte, off int64) (int, error) {
	u := f.ds.NewURL(f.path)
	res, err := f.c.DownloadRequest(f.ctx, u, &soap.Download{Method: http.MethodGet, Headers: map[string]string{
		"Range": fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1),
	}})
	if err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", f.path, off, err)
	}
	defer res.Body.Close()
	switch res.StatusCode {
	case http.StatusPartialContent:
	case http.StatusRequestedRangeNotSatisfiable:
		return 0, io.EOF
	default:
		return 0, fmt.Errorf("read %s at %d: %s", f.path, off, res.Status)
	}
	n, err := io.ReadFull(res.Body, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

func (f *dsFile) Close() error { return nil }

// NewImage makes an open disk a pe.Image.
func NewImage(d vddk.Disk) pe.Image { return &image{d} }

// image is a vddk.Disk as a pe.Image.
type image struct{ d vddk.Disk }

func (im *image) ReadAt(p []byte, off int64) (int, error) { return im.d.ReadAt(p, off) }
func (im *image) Size() int64                             { return im.d.Size() }
func (im *image) Close() error                            { return im.d.Close() }

// Extents implements pe.Image from the disk's allocated blocks.
func (im *image) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, im.d.Size())
	if !ok {
		return nil, nil
	}
	alloc, err := im.d.Allocated(ctx)
	if err != nil {
		return nil, err
	}
	end := off + length
	var out []pe.Extent
	pos := off
	for _, a := range alloc {
		from, to := max(a.Offset, off), min(a.Offset+a.Length, end)
		if from >= to {
			continue
		}
		if from > pos {
			out = append(out, pe.Extent{Offset: pos, Length: from - pos, Kind: pe.ExtentHole})
		}
		out = append(out, pe.Extent{Offset: from, Length: to - from, Kind: pe.ExtentData})
		pos = to
	}
	if pos < end {
		out = append(out, pe.Extent{Offset: pos, Length: end - pos, Kind: pe.ExtentHole})
	}
	return pe.MergeExtents(out), nil
}
