package nfsexport

import (
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	billy "github.com/go-git/go-billy/v5"
)

// tree is the exported file system as go-nfs sees it: the root lists the
// exports; an export's directory holds its descriptor, its flat file and
// whatever the clients made there, which lives in the export's scratch
// directory. The export's state directory there, and the disk files a
// client removed, are hidden: not found, not listed, and their names
// cannot be made again. Paths are the components go-nfs joins with Join: no leading
// slash, "" for the root.
type tree struct{ s *Server }

var (
	_ billy.Filesystem = (*tree)(nil)
	_ billy.Change     = (*tree)(nil)
	_ billy.Capable    = (*tree)(nil)
)

type place int

const (
	atRoot place = iota
	atDir
	atDescriptor
	atFlat
	atScratch
	atHidden // a reserved name that is not shown
)

// location is what a path names.
type location struct {
	place place
	e     *export
	rel   string // in the scratch directory, for atScratch
}

// locate resolves p. Components that are empty, ".", ".." or hold a NUL
// are refused, so no path leaves its export's directory.
func (t *tree) locate(op, p string) (location, error) {
	if p == "" || p == "/" {
		return location{place: atRoot}, nil
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for _, c := range parts {
		if !validComponent(c) {
			return location{}, &fs.PathError{Op: op, Path: p, Err: fs.ErrInvalid}
		}
	}
	e := t.s.exportByName(parts[0])
	if e == nil {
		return location{}, &fs.PathError{Op: op, Path: p, Err: fs.ErrNotExist}
	}
	switch {
	case len(parts) == 1:
		return location{place: atDir, e: e}, nil
	case parts[1] == stateDirName:
		return location{place: atHidden, e: e}, nil
	case len(parts) == 2 && (parts[1] == descriptorName(e.name) || parts[1] == flatName(e.name)):
		switch {
		case e.hidden(parts[1]):
			return location{place: atHidden, e: e}, nil
		case parts[1] == descriptorName(e.name):
			return location{place: atDescriptor, e: e}, nil
		}
		return location{place: atFlat, e: e}, nil
	}
	return location{place: atScratch, e: e, rel: strings.Join(parts[1:], "/")}, nil
}

// scratch resolves p and requires it to be a client-made file.
func (t *tree) scratch(op, p string) (location, error) {
	loc, err := t.locate(op, p)
	if err != nil {
		return loc, err
	}
	if loc.place != atScratch {
		return loc, &fs.PathError{Op: op, Path: p, Err: fs.ErrPermission}
	}
	return loc, nil
}

func (t *tree) Join(elem ...string) string { return strings.Join(elem, "/") }

func (t *tree) Capabilities() billy.Capability {
	return billy.WriteCapability | billy.ReadCapability | billy.ReadAndWriteCapability |
		billy.SeekCapability | billy.TruncateCapability
}

func (t *tree) Stat(p string) (os.FileInfo, error)  { return t.stat("stat", p, true) }
func (t *tree) Lstat(p string) (os.FileInfo, error) { return t.stat("lstat", p, false) }

func (t *tree) stat(op, p string, follow bool) (os.FileInfo, error) {
	loc, err := t.locate(op, p)
	if err != nil {
		return nil, err
	}
	switch loc.place {
	case atHidden:
		return nil, &fs.PathError{Op: op, Path: p, Err: fs.ErrNotExist}
	case atRoot:
		return dirInfo{name: "/", mtime: t.s.rootModified()}, nil
	case atDir:
		fi, err := loc.e.scratch.Stat("")
		if err != nil {
			return nil, err
		}
		return dirInfo{name: loc.e.name, mtime: fi.ModTime()}, nil
	case atDescriptor:
		return loc.e.descriptorInfo(), nil
	case atFlat:
		return loc.e.flatInfo(), nil
	}
	if follow {
		return loc.e.scratch.Stat(loc.rel)
	}
	return loc.e.scratch.Lstat(loc.rel)
}

func (t *tree) ReadDir(p string) ([]os.FileInfo, error) {
	loc, err := t.locate("readdir", p)
	if err != nil {
		return nil, err
	}
	switch loc.place {
	case atRoot:
		var out []os.FileInfo
		for _, e := range t.s.exportList() {
			fi, err := t.Stat(e.name)
			if err != nil {
				continue // removed meanwhile
			}
			out = append(out, fi)
		}
		return out, nil
	case atDir:
		made, err := loc.e.scratch.ReadDir("")
		if err != nil {
			return nil, err
		}
		var out []os.FileInfo
		if !loc.e.hidden(descriptorName(loc.e.name)) {
			out = append(out, loc.e.descriptorInfo())
		}
		if !loc.e.hidden(flatName(loc.e.name)) {
			out = append(out, loc.e.flatInfo())
		}
		for _, fi := range made {
			// Files put there behind the server's back under the
			// reserved names are hidden by the virtual ones.
			if n := fi.Name(); n != descriptorName(loc.e.name) && n != flatName(loc.e.name) && n != stateDirName {
				out = append(out, fi)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
		return out, nil
	case atScratch:
		return loc.e.scratch.ReadDir(loc.rel)
	case atHidden:
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: fs.ErrNotExist}
	}
	return nil, &fs.PathError{Op: "readdir", Path: p, Err: syscall.ENOTDIR}
}

func (t *tree) Create(p string) (billy.File, error) {
	return t.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

func (t *tree) Open(p string) (billy.File, error) { return t.OpenFile(p, os.O_RDONLY, 0) }

func (t *tree) OpenFile(p string, flag int, perm os.FileMode) (billy.File, error) {
	loc, err := t.locate("open", p)
	if err != nil {
		return nil, err
	}
	exclusive := flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL
	switch loc.place {
	case atHidden:
		if flag&os.O_CREATE != 0 {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrPermission}
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	case atRoot, atDir:
		return nil, &fs.PathError{Op: "open", Path: p, Err: syscall.EISDIR}
	case atDescriptor:
		if exclusive {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrExist}
		}
		if flag&os.O_TRUNC != 0 {
			if err := loc.e.truncateDescriptor(p, 0); err != nil {
				return nil, err
			}
		}
		return &descriptorFile{name: p, e: loc.e}, nil
	case atFlat:
		// Its size is the disk's: truncating or appending is refused.
		if exclusive {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrExist}
		}
		if flag&(os.O_TRUNC|os.O_APPEND) != 0 {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrPermission}
		}
		return &flatFile{name: p, e: loc.e}, nil
	}
	var f billy.File
	open := func() (err error) {
		f, err = loc.e.scratch.OpenFile(loc.rel, flag, perm)
		return err
	}
	if flag&os.O_CREATE != 0 {
		err = loc.e.makeInScratch("open", p, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, err
	}
	return &scratchFile{File: f, name: p}, nil
}

func (t *tree) Rename(from, to string) error {
	src, err := t.scratch("rename", from)
	if err != nil {
		return err
	}
	dst, err := t.scratch("rename", to)
	if err != nil {
		return err
	}
	if src.e != dst.e {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EXDEV}
	}
	return src.e.makeInScratch("rename", to, func() error { return src.e.scratch.Rename(src.rel, dst.rel) })
}

// Remove of the descriptor or the flat file hides it (see export.hide);
// of a hidden name, it finds nothing.
func (t *tree) Remove(p string) error {
	loc, err := t.locate("remove", p)
	if err != nil {
		return err
	}
	switch loc.place {
	case atDescriptor:
		return loc.e.hide(p, descriptorName(loc.e.name))
	case atFlat:
		return loc.e.hide(p, flatName(loc.e.name))
	case atHidden:
		return &fs.PathError{Op: "remove", Path: p, Err: fs.ErrNotExist}
	case atScratch:
		return loc.e.scratch.Remove(loc.rel)
	}
	return &fs.PathError{Op: "remove", Path: p, Err: fs.ErrPermission}
}

func (t *tree) MkdirAll(p string, perm os.FileMode) error {
	loc, err := t.scratch("mkdir", p)
	if err != nil {
		return err
	}
	return loc.e.makeInScratch("mkdir", p, func() error { return loc.e.scratch.MkdirAll(loc.rel, perm) })
}

func (t *tree) TempFile(dir, prefix string) (billy.File, error) {
	return nil, billy.ErrNotSupported
}

// Symlink is refused: a client-made link could point a later open out of
// the scratch directory.
func (t *tree) Symlink(target, link string) error {
	return &os.LinkError{Op: "symlink", Old: target, New: link, Err: fs.ErrPermission}
}

func (t *tree) Readlink(p string) (string, error) {
	loc, err := t.scratch("readlink", p)
	if err != nil {
		return "", err
	}
	return loc.e.scratch.Readlink(loc.rel)
}

func (t *tree) Chroot(string) (billy.Filesystem, error) { return nil, billy.ErrNotSupported }
func (t *tree) Root() string                            { return "/" }

// onDisk returns the local path of a client-made file that is not a
// symbolic link (so that the os calls below, which follow links, stay in
// the scratch directory).
func (t *tree) onDisk(op, p string) (string, error) {
	loc, err := t.scratch(op, p)
	if err != nil {
		return "", err
	}
	fi, err := loc.e.scratch.Lstat(loc.rel)
	if err != nil {
		return "", err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return "", &fs.PathError{Op: op, Path: p, Err: fs.ErrPermission}
	}
	return filepath.Join(loc.e.scratchDir, filepath.FromSlash(loc.rel)), nil
}

func (t *tree) Chmod(p string, mode os.FileMode) error {
	local, err := t.onDisk("chmod", p)
	if err != nil {
		return err
	}
	return os.Chmod(local, mode&fs.ModePerm)
}

// Lchown and Chown are refused: the files belong to the appliance.
func (t *tree) Lchown(p string, uid, gid int) error {
	return &fs.PathError{Op: "chown", Path: p, Err: fs.ErrPermission}
}

func (t *tree) Chown(p string, uid, gid int) error { return t.Lchown(p, uid, gid) }

// Chtimes sets a client-made file's times; on the descriptor and the flat
// file, whose times the server keeps, it is accepted and ignored.
func (t *tree) Chtimes(p string, atime, mtime time.Time) error {
	loc, err := t.locate("chtimes", p)
	if err != nil {
		return err
	}
	if loc.place == atDescriptor || loc.place == atFlat {
		return nil
	}
	local, err := t.onDisk("chtimes", p)
	if err != nil {
		return err
	}
	return os.Chtimes(local, atime, mtime)
}

// dirInfo describes the root and the export directories.
type dirInfo struct {
	name  string
	mtime time.Time
}

func (d dirInfo) Name() string       { return d.name }
func (d dirInfo) Size() int64        { return 4096 }
func (d dirInfo) Mode() fs.FileMode  { return fs.ModeDir | 0o755 }
func (d dirInfo) ModTime() time.Time { return d.mtime }
func (d dirInfo) IsDir() bool        { return true }
func (d dirInfo) Sys() any           { return nil }

// fileInfo describes the descriptor and the flat file.
type fileInfo struct {
	name  string
	size  int64
	mode  fs.FileMode
	mtime time.Time
}

func (f fileInfo) Name() string       { return f.name }
func (f fileInfo) Size() int64        { return f.size }
func (f fileInfo) Mode() fs.FileMode  { return f.mode }
func (f fileInfo) ModTime() time.Time { return f.mtime }
func (f fileInfo) IsDir() bool        { return false }
func (f fileInfo) Sys() any           { return nil }
