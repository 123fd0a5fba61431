package browse

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Mounted is the tree of a disk snapshot's recovery mount (package
// flrmount): its root holds one directory per mounted partition, and
// every path is looked up through an os.Root, which no "..", absolute
// path or symlink leaves.
type Mounted struct {
	Root       *os.Root
	Partitions []string
}

// List answers up to limit entries of dir after cursor. It reads the
// whole directory to sort it: a 100,000-entry directory takes a few
// megabytes for the length of the request, and pages still go out small.
func (m Mounted) List(dir, cursor string, limit int) (Page, error) {
	if err := CheckPath(dir); err != nil {
		return Page{}, err
	}
	if dir == "" {
		names := append([]string(nil), m.Partitions...)
		sort.Strings(names)
		page, names, err := pageOf(names, cursor, limit)
		for _, n := range names {
			e := Entry{Name: n, Kind: KindDir}
			if fi, err := m.Root.Lstat(n); err == nil {
				e.Modified = fi.ModTime()
			}
			page.Entries = append(page.Entries, e)
		}
		return page, err
	}
	if err := m.inPartition(dir); err != nil {
		return Page{}, err
	}
	f, err := m.Root.Open(dir)
	if err != nil {
		return Page{}, notFound(dir, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		return Page{}, fmt.Errorf("%s: not a directory: %w", dir, ErrBadPath)
	}
	all, err := f.ReadDir(-1)
	if err != nil {
		return Page{}, fmt.Errorf("directory %s: %w", dir, err)
	}
	byName := make(map[string]fs.DirEntry, len(all))
	names := make([]string, 0, len(all))
	for _, e := range all {
		byName[e.Name()] = e
		names = append(names, e.Name())
	}
	sort.Strings(names)
	page, names, err := pageOf(names, cursor, limit)
	if err != nil {
		return Page{}, err
	}
	for _, n := range names {
		page.Entries = append(page.Entries, m.entry(dir+"/"+n, byName[n]))
	}
	return page, nil
}

func (m Mounted) entry(p string, d fs.DirEntry) Entry {
	e := Entry{Name: d.Name(), Kind: KindOther}
	fi, err := d.Info()
	if err != nil {
		return e
	}
	e.Modified = fi.ModTime()
	switch {
	case fi.IsDir():
		e.Kind = KindDir
	case fi.Mode().IsRegular():
		e.Kind, e.Size = KindFile, fi.Size()
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Kind = KindSymlink
		e.LinkTarget, _ = m.Root.Readlink(p)
	}
	return e
}

// inPartition refuses paths outside the partitions' directories (the
// mount's state file is beside them).
func (m Mounted) inPartition(p string) error {
	first, _, _ := strings.Cut(p, "/")
	for _, name := range m.Partitions {
		if first == name {
			return nil
		}
	}
	return fmt.Errorf("partition %s: %w", first, errNotFound)
}

var errNotFound = pe.ErrNotFound

func notFound(p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", p, pe.ErrNotFound)
	}
	// A symlink that would leave the tree, a loop: not a path of it.
	return fmt.Errorf("%s: %v: %w", p, err, ErrBadPath)
}

// Open opens the regular file p; the caller closes it.
func (m Mounted) Open(p string) (*os.File, fs.FileInfo, error) {
	if err := CheckPath(p); err != nil {
		return nil, nil, err
	}
	if p == "" || !strings.Contains(p, "/") {
		if err := m.inPartition(p); err != nil {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("%s is a partition: %w", p, ErrNotFile)
	}
	if err := m.inPartition(p); err != nil {
		return nil, nil, err
	}
	fi, err := m.Root.Lstat(p)
	if err != nil {
		return nil, nil, notFound(p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: %w", p, ErrNotFile)
	}
	f, err := m.Root.Open(p)
	if err != nil {
		return nil, nil, notFound(p, err)
	}
	return f, fi, nil
}

// Walk calls fn for dir and every directory and regular file below it,
// parents before children, names in byte order; symlinks and special
// files are left out, and nothing below them is followed.
func (m Mounted) Walk(dir string, fn func(p string, e Entry) error) error {
	if err := CheckPath(dir); err != nil {
		return err
	}
	if dir == "" {
		names := append([]string(nil), m.Partitions...)
		sort.Strings(names)
		for _, n := range names {
			if err := fn(n, Entry{Name: n, Kind: KindDir}); err != nil {
				return err
			}
			if err := m.walk(n, fn); err != nil {
				return err
			}
		}
		return nil
	}
	if err := m.inPartition(dir); err != nil {
		return err
	}
	fi, err := m.Root.Lstat(dir)
	if err != nil {
		return notFound(dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory: %w", dir, ErrBadPath)
	}
	return m.walk(dir, fn)
}

func (m Mounted) walk(dir string, fn func(p string, e Entry) error) error {
	return fs.WalkDir(m.Root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		e := m.entry(p, d)
		if e.Kind == KindDir || e.Kind == KindFile {
			return fn(p, e)
		}
		return nil
	})
}
