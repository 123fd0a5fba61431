package fs

import (
	"container/list"
	"errors"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

type statT = syscall.Stat_t

// openFiles keeps the content files of an image open between reads, at
// most max of them idle: a sequential read opens each file once, and a
// tree of a million files does not run out of descriptors. Files in use
// by a ReadAt are never closed under it.
type openFiles struct {
	mu   sync.Mutex
	max  int
	open map[int]*openFile // by member index
	idle list.List         // of *openFile with refs 0, most recent first
	done bool              // closeAll ran: open nothing more
}

type openFile struct {
	f    *os.File
	idx  int
	refs int
	elem *list.Element // in idle, nil while in use
}

func newOpenFiles(max int) *openFiles {
	return &openFiles{max: max, open: map[int]*openFile{}}
}

// acquire returns the open content file of member idx; release it after use.
func (o *openFiles) acquire(idx int, m *member) (*openFile, error) {
	o.mu.Lock()
	if o.done {
		o.mu.Unlock()
		return nil, os.ErrClosed
	}
	if of, ok := o.open[idx]; ok {
		o.use(of)
		o.mu.Unlock()
		return of, nil
	}
	o.mu.Unlock()

	// Open outside the lock: opening can be slow (NFS, cold cache) and
	// other readers should not wait for it. O_NOFOLLOW: a live tree may
	// have replaced the file by a symlink since it was laid out.
	f, err := os.OpenFile(m.path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, os.ErrNotExist) {
			return nil, &os.PathError{Op: "open", Path: m.path, Err: errChanged}
		}
		return nil, err
	}
	if err := checkUnchanged(f, m); err != nil {
		f.Close()
		return nil, err
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done { // the image was closed while we opened
		f.Close()
		return nil, os.ErrClosed
	}
	if of, ok := o.open[idx]; ok { // another reader was faster
		f.Close()
		o.use(of)
		return of, nil
	}
	of := &openFile{f: f, idx: idx, refs: 1}
	o.open[idx] = of
	o.trim()
	return of, nil
}

// use marks of in use; o.mu is held.
func (o *openFiles) use(of *openFile) {
	of.refs++
	if of.elem != nil {
		o.idle.Remove(of.elem)
		of.elem = nil
	}
}

// release ends one use of of.
func (o *openFiles) release(of *openFile) {
	o.mu.Lock()
	defer o.mu.Unlock()
	of.refs--
	if of.refs > 0 {
		return
	}
	if _, ok := o.open[of.idx]; !ok { // closeAll ran meanwhile
		of.f.Close()
		return
	}
	of.elem = o.idle.PushFront(of)
	o.trim()
}

// trim closes the least recently used idle files beyond max; o.mu is held.
func (o *openFiles) trim() {
	for len(o.open) > o.max && o.idle.Len() > 0 {
		of := o.idle.Remove(o.idle.Back()).(*openFile)
		of.elem = nil
		delete(o.open, of.idx)
		of.f.Close()
	}
}

// closeAll closes the idle files; files in use are closed on release.
func (o *openFiles) closeAll() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done = true
	var errs []error
	for idx, of := range o.open {
		delete(o.open, idx)
		if of.refs == 0 {
			errs = append(errs, of.f.Close())
		}
	}
	o.idle.Init()
	return errors.Join(errs...)
}
