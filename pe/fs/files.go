package fs

import (
	"container/list"
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// openFiles keeps the content files of an image open between reads, at
// most max of them idle: a sequential read opens each file once, and a
// tree of a million files does not run out of descriptors. Files in use
// by a ReadAt are never closed under it.
type openFiles struct {
	l    *layout
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

func newOpenFiles(l *layout, max int) *openFiles {
	return &openFiles{l: l, max: max, open: map[int]*openFile{}}
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
	// other readers should not wait for it.
	f, err := o.l.openContent(m)
	if err != nil {
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

// openContent opens the content file of m below the layout's root, never
// through a symlink (a live tree may have swapped one in since it was laid
// out), and checks that it is the file laid out.
func (l *layout) openContent(m *member) (*os.File, error) {
	rc, err := l.root.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, oerr := -1, error(nil)
	// Control keeps the root open while it runs, even if the image is
	// closed meanwhile: the descriptor cannot be reused under us.
	err = rc.Control(func(root uintptr) {
		fd, oerr = openBeneath(int(root), m.rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	})
	if err != nil {
		return nil, err
	}
	if oerr != nil {
		if errors.Is(oerr, unix.ELOOP) || errors.Is(oerr, unix.ENOENT) || errors.Is(oerr, unix.ENOTDIR) || errors.Is(oerr, unix.EXDEV) {
			oerr = errChanged
		}
		return nil, &os.PathError{Op: "open", Path: l.path(m), Err: oerr}
	}
	f := os.NewFile(uintptr(fd), l.path(m))
	if err := checkUnchanged(f, m); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
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
