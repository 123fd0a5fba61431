package ivd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// Data implements pe.ProtectedEntity for the live disk: its backing VMDK
// read through the datastore's HTTP file access. Snapshot data needs the
// snapshot's own backing (RetrieveSnapshotDetails, or VDDK): not built.
func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	if e.id.HasSnapshot() {
		return nil, fmt.Errorf("data of %s: reading FCD snapshots is not built yet: %w", e.id, pe.ErrNotSupported)
	}
	b, ok := e.obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo)
	if !ok {
		return nil, fmt.Errorf("data of %s: backing %T: %w", e.id, e.obj.Config.Backing, pe.ErrNotSupported)
	}
	var p object.DatastorePath
	if !p.FromString(b.FilePath) {
		return nil, fmt.Errorf("data of %s: backing path %q", e.id, b.FilePath)
	}
	c, err := e.tm.client(ctx)
	if err != nil {
		return nil, err
	}
	dir := path.Dir(p.Path)
	open := func(name string) (vmdk.File, error) {
		// The image outlives the call that opened it.
		return &dsFile{ctx: context.WithoutCancel(ctx), ds: e.ds, c: c.Client.Client, path: path.Join(dir, name)}, nil
	}
	d, err := vmdk.Open(open, path.Base(p.Path))
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return &image{d}, nil
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

// image is a VMDK as a pe.Image.
type image struct{ d *vmdk.Disk }

func (im *image) ReadAt(p []byte, off int64) (int, error) { return im.d.ReadAt(p, off) }
func (im *image) Size() int64                             { return im.d.Size() }
func (im *image) Close() error                            { return im.d.Close() }

// Extents implements pe.Image from the disk's allocated grains.
func (im *image) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, im.d.Size())
	if !ok {
		return nil, nil
	}
	alloc, err := im.d.Allocated()
	if err != nil {
		return nil, err
	}
	end := off + length
	var out []pe.Extent
	for _, a := range alloc {
		from, to := max(a.Offset, off), min(a.Offset+a.Length, end)
		if from >= to {
			continue
		}
		kind := pe.ExtentHole
		if a.Allocated {
			kind = pe.ExtentData
		}
		out = append(out, pe.Extent{Offset: from, Length: to - from, Kind: kind})
	}
	return pe.MergeExtents(out), nil
}
