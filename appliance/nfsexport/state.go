package nfsexport

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	nfs "github.com/willscott/go-nfs"
)

// What clients change of an export's two disk files — the descriptor's
// text, and which of the two they removed — is kept in a directory of the
// export's scratch directory that clients cannot see, so that an export
// added again after an appliance restart serves the same:
//
//	.nfsexport/<name>.vmdk               the descriptor as a client wrote it
//	.nfsexport/<name>.vmdk.removed       the descriptor was removed
//	.nfsexport/<name>-flat.vmdk.removed  the flat file was removed
const (
	stateDirName  = ".nfsexport"
	removedSuffix = ".removed"
	// maxDescriptor bounds a descriptor a client writes: ESXi's are
	// under 1 KiB.
	maxDescriptor = 64 << 10
)

// errExtentChanged refuses a descriptor whose extent line a client
// changed.
var errExtentChanged = errors.New("the extent line of an instant-recovery disk's descriptor is fixed")

func (e *export) stateDir() string { return filepath.Join(e.scratchDir, stateDirName) }

// loadState reads what clients changed before (an export added again
// after a restart). A stored descriptor that does not fit the disk (a
// disk of another size added under the same name) is dropped for a new
// one.
func (e *export) loadState() error {
	e.desc, e.descMod = descriptor(e.name, e.disk.Size()), e.added
	e.gone = map[string]bool{}
	p := filepath.Join(e.stateDir(), descriptorName(e.name))
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		if err := checkDescriptor(b, e.name, e.disk.Size()); err != nil {
			e.log.Warn("nfs export: the descriptor a client wrote does not fit the disk; serving a new one", "err", err)
			break
		}
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		e.desc, e.descMod = b, fi.ModTime()
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	for _, file := range []string{descriptorName(e.name), flatName(e.name)} {
		_, err := os.Stat(filepath.Join(e.stateDir(), file+removedSuffix))
		switch {
		case err == nil:
			e.gone[file] = true
		case !errors.Is(err, fs.ErrNotExist):
			return err
		}
	}
	return nil
}

// hidden reports whether a client removed file (the descriptor's or the
// flat file's name).
func (e *export) hidden(file string) bool {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	return e.gone[file]
}

// hide is a client's REMOVE of the descriptor or the flat file: ESXi
// deletes a disk's files after a storage vMotion moved it off the
// datastore. The file is no longer listed nor found; the disk itself
// stays until the appliance removes the export.
func (e *export) hide(p, file string) error {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	if e.gone[file] {
		return &fs.PathError{Op: "remove", Path: p, Err: fs.ErrNotExist}
	}
	if err := e.saveState(p, file+removedSuffix, nil); err != nil {
		return err
	}
	e.gone[file] = true
	e.log.Info("nfs export: a client removed a disk file; it is hidden, the disk stays", "file", file)
	return nil
}

// readDescriptor returns the descriptor served now.
func (e *export) readDescriptor() []byte {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	return e.desc
}

// writeDescriptor writes p at off in the descriptor.
func (e *export) writeDescriptor(p string, off int64, b []byte) error {
	if off < 0 || off > maxDescriptor || int64(len(b)) > maxDescriptor-off {
		return &fs.PathError{Op: "write", Path: p,
			Err: fmt.Errorf("%d bytes at %d pass the largest descriptor (%d): %w", len(b), off, maxDescriptor, syscall.EFBIG)}
	}
	return e.changeDescriptor(p, "write", func(cur []byte) []byte {
		next := make([]byte, max(int64(len(cur)), off+int64(len(b))))
		copy(next, cur)
		copy(next[off:], b)
		return next
	})
}

// truncateDescriptor sets the descriptor's size, as editors do before
// they write it again.
func (e *export) truncateDescriptor(p string, size int64) error {
	if size < 0 || size > maxDescriptor {
		return &nfs.NFSStatusError{NFSStatus: nfs.NFSStatusFBig,
			WrappedErr: fmt.Errorf("%s: size %d: a descriptor holds at most %d bytes", p, size, maxDescriptor)}
	}
	err := e.changeDescriptor(p, "truncate", func(cur []byte) []byte {
		next := make([]byte, size)
		copy(next, cur)
		return next
	})
	if errors.Is(err, errExtentChanged) {
		return &nfs.NFSStatusError{NFSStatus: nfs.NFSStatusAccess, WrappedErr: err}
	}
	return err
}

// changeDescriptor replaces the descriptor with change(current), on disk
// first, unless the result names another extent than the disk's.
func (e *export) changeDescriptor(p, op string, change func([]byte) []byte) error {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	if e.gone[descriptorName(e.name)] {
		return &fs.PathError{Op: op, Path: p, Err: fs.ErrNotExist}
	}
	next := change(e.desc)
	if err := checkDescriptor(next, e.name, e.disk.Size()); err != nil {
		return &fs.PathError{Op: op, Path: p, Err: err}
	}
	if err := e.saveState(p, descriptorName(e.name), next); err != nil {
		return err
	}
	e.desc, e.descMod = next, time.Now()
	return nil
}

// saveState writes a file of the state directory durably: whole (a
// temporary file renamed over it) and synced with its directory.
func (e *export) saveState(p, file string, data []byte) error {
	return e.makeInScratch("save", p, func() error {
		dir := e.stateDir()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		tmp, err := os.CreateTemp(dir, file+".tmp*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name()) // after the rename, nothing
		_, err = tmp.Write(data)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), filepath.Join(dir, file))
		}
		if err != nil {
			return fmt.Errorf("%s: saving %s: %w", p, file, err)
		}
		return syncDir(dir)
	})
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// checkDescriptor refuses a descriptor whose extents are not the disk's
// one extent, <name>-flat.vmdk of its size: the extent is what the
// appliance serves, and a client must not point ESXi (or a storage
// vMotion) at another file. A descriptor being written may hold no
// extent line yet, or end in the start of the disk's.
func checkDescriptor(desc []byte, name string, size int64) error {
	want := extentLine(name, size)
	lines := strings.Split(string(desc), "\n")
	extents := 0
	for i, line := range lines {
		fields := strings.Fields(strings.Map(dropInvisible, line))
		if len(fields) == 0 || !isExtentAccess(fields[0]) {
			continue
		}
		got := strings.Join(fields, " ")
		if got != want && !(i == len(lines)-1 && halfWritten(got, want)) {
			return fmt.Errorf("%w: %q, want %q", errExtentChanged, got, want)
		}
		if extents++; extents > 1 {
			return fmt.Errorf("%w: a second extent %q", errExtentChanged, got)
		}
	}
	return nil
}

// halfWritten reports whether got, a last line not ended by a newline,
// may be want being written in several WRITEs: a beginning of it that
// names no file yet (a parser might take a file name cut short).
func halfWritten(got, want string) bool {
	return strings.HasPrefix(want, got) && !strings.Contains(got, `"`)
}

// dropInvisible drops what a descriptor parser may skip before a line's
// first word: NULs (a truncate that grows pads with them) and byte order
// marks.
func dropInvisible(r rune) rune {
	if r == 0 || r == '\ufeff' {
		return -1
	}
	return r
}

func isExtentAccess(word string) bool {
	for _, a := range []string{"RW", "RDONLY", "NOACCESS"} {
		if strings.EqualFold(word, a) {
			return true
		}
	}
	return false
}
