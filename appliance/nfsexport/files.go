package nfsexport

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"syscall"

	billy "github.com/go-git/go-billy/v5"
	nfs "github.com/willscott/go-nfs"
)

// go-nfs opens a file for each READ or WRITE call and closes it after;
// its WRITE reply always says FILE_SYNC (v0.0.4 neither passes the
// client's stable_how down nor does anything on COMMIT), so Close makes
// what the call wrote durable before the reply. ESXi asks for FILE_SYNC
// on every write anyway.

// descriptorFile is the VMDK descriptor: ESXi rewrites it (a new CID
// after the first write, ddb lines), and each WRITE or truncate is kept
// durably before the reply (see state.go). A change to its extent line is
// refused: go-nfs answers a refused WRITE NFS3ERR_IO (v0.0.4 maps no
// other write error than ENOSPC, EDQUOT and EFBIG), a refused SETATTR
// NFS3ERR_ACCES.
type descriptorFile struct {
	name string
	e    *export
	off  int64
}

var _ billy.File = (*descriptorFile)(nil)

func (f *descriptorFile) Name() string { return f.name }

func (f *descriptorFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: fs.ErrInvalid}
	}
	return bytes.NewReader(f.e.readDescriptor()).ReadAt(p, off)
}

func (f *descriptorFile) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *descriptorFile) Seek(offset int64, whence int) (int64, error) {
	return seek(f.name, &f.off, offset, whence, func() int64 { return int64(len(f.e.readDescriptor())) })
}

func (f *descriptorFile) Write(p []byte) (int, error) {
	if err := f.e.writeDescriptor(f.name, f.off, p); err != nil {
		return 0, err
	}
	f.off += int64(len(p))
	return len(p), nil
}

func (f *descriptorFile) Truncate(size int64) error { return f.e.truncateDescriptor(f.name, size) }
func (f *descriptorFile) Close() error              { return nil }
func (f *descriptorFile) Lock() error               { return nil }
func (f *descriptorFile) Unlock() error             { return nil }

// flatFile is the disk's bytes, read and written in place.
type flatFile struct {
	name    string
	e       *export
	off     int64
	written bool
}

var _ billy.File = (*flatFile)(nil)

func (f *flatFile) Name() string { return f.name }

func (f *flatFile) ReadAt(p []byte, off int64) (int, error) {
	size := f.e.disk.Size()
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: fs.ErrInvalid}
	}
	if off >= size {
		return 0, io.EOF
	}
	var eof error
	if rest := size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	var n int
	err := f.e.guard("read", func() (err error) {
		n, err = f.e.disk.ReadAt(p, off)
		return err
	})
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("%s: read at %d: %w", f.name, off, err)
	}
	return n, eof
}

func (f *flatFile) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *flatFile) Seek(offset int64, whence int) (int64, error) {
	return seek(f.name, &f.off, offset, whence, f.e.disk.Size)
}

// seek moves the offset *off of the file name, whose size is size().
func seek(name string, off *int64, offset int64, whence int, size func() int64) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += *off
	case io.SeekEnd:
		offset += size()
	default:
		return *off, &fs.PathError{Op: "seek", Path: name, Err: fs.ErrInvalid}
	}
	if offset < 0 {
		return *off, &fs.PathError{Op: "seek", Path: name, Err: fs.ErrInvalid}
	}
	*off = offset
	return offset, nil
}

// Write writes at the offset; a write that would pass the end of the disk
// is refused whole with EFBIG, which go-nfs answers as NFS3ERR_FBIG.
func (f *flatFile) Write(p []byte) (int, error) {
	if end := f.off + int64(len(p)); end > f.e.disk.Size() || end < f.off {
		return 0, &fs.PathError{Op: "write", Path: f.name,
			Err: fmt.Errorf("%d bytes at %d pass the disk's end (%d): %w", len(p), f.off, f.e.disk.Size(), syscall.EFBIG)}
	}
	var n int
	err := f.e.guard("write", func() (err error) {
		n, err = f.e.disk.WriteAt(p, f.off)
		return err
	})
	f.off += int64(n)
	if n > 0 {
		f.written = true
		f.e.touch()
	}
	if err != nil {
		return n, fmt.Errorf("%s: write at %d: %w", f.name, f.off, err)
	}
	return n, nil
}

// Truncate accepts only the disk's own size: SETATTR of the flat file's
// size to anything else gets NFS3ERR_FBIG (growing) or NFS3ERR_INVAL
// (shrinking). go-nfs passes an *nfs.NFSStatusError returned here to the
// client as is.
func (f *flatFile) Truncate(size int64) error {
	switch cur := f.e.disk.Size(); {
	case size > cur:
		return &nfs.NFSStatusError{NFSStatus: nfs.NFSStatusFBig,
			WrappedErr: fmt.Errorf("%s: the size of an instant-recovery disk is fixed at %d", f.name, cur)}
	case size < cur:
		return &nfs.NFSStatusError{NFSStatus: nfs.NFSStatusInval,
			WrappedErr: fmt.Errorf("%s: the size of an instant-recovery disk is fixed at %d", f.name, cur)}
	}
	return nil
}

func (f *flatFile) Close() error {
	if !f.written {
		return nil
	}
	f.written = false
	if err := f.e.guard("sync", f.e.disk.Sync); err != nil {
		return fmt.Errorf("%s: sync: %w", f.name, err)
	}
	return nil
}

func (f *flatFile) Lock() error   { return nil }
func (f *flatFile) Unlock() error { return nil }

// scratchFile is a client-made file: its name is its path in the tree,
// which go-nfs's CREATE reply stats.
type scratchFile struct {
	billy.File
	name    string
	written bool
}

func (f *scratchFile) Name() string { return f.name }

func (f *scratchFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	if n > 0 {
		f.written = true
	}
	return n, err
}

func (f *scratchFile) Close() error {
	var err error
	if s, ok := f.File.(interface{ Sync() error }); ok && f.written {
		err = s.Sync()
	}
	return errors.Join(err, f.File.Close())
}
