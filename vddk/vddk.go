// Package vddk is how PEs reach the bytes of vSphere virtual disks.
//
// Two implementations stand behind Disk: the pure-Go default, which reads a
// disk's backing VMDK through the datastore's HTTP file access with
// vddk/vmdk and needs nothing from VMware, and the cgo binding to VMware's
// libvixDiskLib in vddk/vixdisklib (build tag vddk), which loads the
// library at run time and brings the nbd, nbdssl, hotadd and san
// transports.
package vddk

import (
	"context"
	"errors"
	"io"

	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// Disk is an open virtual disk (or disk snapshot). ReadAt is safe for
// concurrent use; WriteAt fails on a disk opened read-only.
type Disk interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Size is the capacity in bytes.
	Size() int64
	// Allocated returns the ranges of [0, Size) that hold data, sorted and
	// not overlapping; everything else reads as zeros.
	Allocated(ctx context.Context) ([]Range, error)
}

// Range is a byte range of a disk.
type Range struct {
	Offset, Length int64
}

// ErrReadOnly is returned by WriteAt on a disk opened for reading.
var ErrReadOnly = errors.New("disk is open read-only")

// FromVMDK makes a disk read by the pure-Go VMDK reader a Disk.
func FromVMDK(d *vmdk.Disk) Disk { return vmdkDisk{d} }

type vmdkDisk struct{ *vmdk.Disk }

func (vmdkDisk) WriteAt([]byte, int64) (int, error) { return 0, ErrReadOnly }

func (d vmdkDisk) Allocated(ctx context.Context) ([]Range, error) {
	exts, err := d.Disk.Allocated()
	if err != nil {
		return nil, err
	}
	// vmdk merges neighbours of a kind: allocated extents never touch.
	var out []Range
	for _, e := range exts {
		if e.Allocated {
			out = append(out, Range{Offset: e.Offset, Length: e.Length})
		}
	}
	return out, nil
}
