package ivd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/vddk"
	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// diskRef names the bytes of an FCD, or of one of its snapshots.
type diskRef struct {
	ds       *object.Datastore
	id       string // FCD uuid
	snapshot string // snapshot id, or "" for the live disk
	path     string // the backing VMDK's datastore path, "[ds] fcd/x.vmdk"
}

// diskAccess reads and writes disks: the pure-Go datastore HTTP access
// by default, VDDK when configured (build tag vddk).
type diskAccess interface {
	open(ctx context.Context, c *govmomi.Client, ref diskRef) (vddk.Disk, error)
	// write makes the disk's bytes those of src, zeros included, and
	// zero-fills the disk after src's end. fresh says the disk was just
	// created and reads as zeros, so holes of src need no writing.
	write(ctx context.Context, c *govmomi.Client, ref diskRef, src pe.Image, fresh bool, progress pe.Progress) error
}

// httpAccess reaches disks through the datastore's HTTP file access
// (/folder): reads with ranged GETs through the pure-Go VMDK reader,
// writes by uploading the raw extent of a flat disk in one PUT.
type httpAccess struct{}

func (httpAccess) open(ctx context.Context, c *govmomi.Client, ref diskRef) (vddk.Disk, error) {
	d, err := openVMDK(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	return vddk.FromVMDK(d), nil
}

func openVMDK(ctx context.Context, c *govmomi.Client, ref diskRef) (*vmdk.Disk, error) {
	var p object.DatastorePath
	if !p.FromString(ref.path) {
		return nil, fmt.Errorf("backing path %q is not a datastore path", ref.path)
	}
	dir := path.Dir(p.Path)
	open := func(name string) (vmdk.File, error) {
		// The disk outlives the call that opened it.
		return &dsFile{ctx: context.WithoutCancel(ctx), ds: ref.ds, c: c.Client.Client, path: path.Join(dir, name)}, nil
	}
	d, err := vmdk.Open(open, path.Base(p.Path))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ref.path, err)
	}
	return d, nil
}

func (httpAccess) write(ctx context.Context, c *govmomi.Client, ref diskRef, src pe.Image, fresh bool, progress pe.Progress) error {
	d, err := openVMDK(ctx, c, ref)
	if err != nil {
		return err
	}
	capacity := d.Size()
	flat, ok := d.FlatFile()
	d.Close()
	if !ok {
		return fmt.Errorf("write %s: only a flat disk without snapshots can be written over the datastore's file access; configure VDDK for this disk: %w", ref.path, pe.ErrNotSupported)
	}
	if src.Size() > capacity {
		return fmt.Errorf("write %s: the source's %d bytes do not fit its %d", ref.path, src.Size(), capacity)
	}
	var p object.DatastorePath
	p.FromString(ref.path)
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
	err = c.Client.Client.Upload(ctx, body, ref.ds.NewURL(target), &soap.Upload{Method: http.MethodPut, ContentLength: capacity})
	if err != nil {
		return fmt.Errorf("write %s: upload %s: %w", ref.path, target, err)
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

// dsFile is a datastore file read with ranged HTTP GETs.
type dsFile struct {
	ctx  context.Context
	ds   *object.Datastore
	c    *soap.Client
	path string
}

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
