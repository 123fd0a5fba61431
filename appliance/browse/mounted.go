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
// flrmount): one directory per mounted partition, by name. Every path
// is looked up through its partition's own os.Root, which no "..",
// absolute path or symlink leaves: not for the directory above, which
// holds the mount's state file, nor for another partition.
type Mounted struct {
	Partitions map[string]*os.Root
	// Names, if set, keeps the sorted names of directories between
	// requests, under Key (the snapshot's ID: its tree never changes)
	// and the directory's path, so that the pages of a large directory
	// do not each read it whole.
	Names DirNames
	Key   string
}

// DirNames keeps directories' sorted names.
type DirNames interface {
	Get(key string) ([]string, bool)
	Put(key string, names []string)
}

// resolve splits p into its partition's root and the path below it
// ("." for the partition itself).
func (m Mounted) resolve(p string) (*os.Root, string, error) {
	first, rest, _ := strings.Cut(p, "/")
	root, ok := m.Partitions[first]
	if !ok {
		return nil, "", fmt.Errorf("partition %s: %w", first, errNotFound)
	}
	if rest == "" {
		rest = "."
	}
	return root, rest, nil
}

func (m Mounted) names() []string {
	names := make([]string, 0, len(m.Partitions))
	for n := range m.Partitions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// List answers up to limit entries of dir after cursor. The first page
// reads the whole directory to sort it; with m.Names the next ones look
// up only their own entries.
func (m Mounted) List(dir, cursor string, limit int) (Page, error) {
	if err := CheckPath(dir); err != nil {
		return Page{}, err
	}
	if dir == "" {
		page, names, err := pageOf(m.names(), cursor, limit)
		for _, n := range names {
			e := Entry{Name: n, Kind: KindDir}
			if fi, err := m.Partitions[n].Stat("."); err == nil {
				e.Modified = fi.ModTime()
			}
			page.Entries = append(page.Entries, e)
		}
		return page, err
	}
	root, rel, err := m.resolve(dir)
	if err != nil {
		return Page{}, err
	}
	names, err := m.sortedNames(root, rel, dir)
	if err != nil {
		return Page{}, err
	}
	page, names, err := pageOf(names, cursor, limit)
	if err != nil {
		return Page{}, err
	}
	for _, n := range names {
		p := rel + "/" + n
		e := Entry{Name: n, Kind: KindOther}
		if fi, err := root.Lstat(p); err == nil {
			e = entry(root, p, fi)
		}
		page.Entries = append(page.Entries, e)
	}
	return page, nil
}

// sortedNames answers the names in directory rel of root (dir in the
// whole tree), sorted, from m.Names when it has them.
func (m Mounted) sortedNames(root *os.Root, rel, dir string) ([]string, error) {
	key := m.Key + "\x00" + dir
	if m.Names != nil {
		if names, ok := m.Names.Get(key); ok {
			return names, nil
		}
	}
	f, err := root.Open(rel)
	if err != nil {
		return nil, notFound(dir, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s: not a directory: %w", dir, ErrBadPath)
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("directory %s: %w", dir, err)
	}
	sort.Strings(names)
	if m.Names != nil {
		m.Names.Put(key, names)
	}
	return names, nil
}

// entry describes fi, at p below root.
func entry(root *os.Root, p string, fi fs.FileInfo) Entry {
	e := Entry{Name: fi.Name(), Kind: KindOther}
	e.Modified = fi.ModTime()
	switch {
	case fi.IsDir():
		e.Kind = KindDir
	case fi.Mode().IsRegular():
		e.Kind, e.Size = KindFile, fi.Size()
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Kind = KindSymlink
		e.LinkTarget, _ = root.Readlink(p)
	}
	return e
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
	root, rel, err := m.resolve(p)
	if err != nil {
		return nil, nil, err
	}
	if rel == "." {
		return nil, nil, fmt.Errorf("%s is a partition: %w", p, ErrNotFile)
	}
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, nil, notFound(p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: %w", p, ErrNotFile)
	}
	f, err := root.Open(rel)
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
		for _, n := range m.names() {
			if err := fn(n, Entry{Name: n, Kind: KindDir}); err != nil {
				return err
			}
			if err := walk(m.Partitions[n], n, ".", fn); err != nil {
				return err
			}
		}
		return nil
	}
	root, rel, err := m.resolve(dir)
	if err != nil {
		return err
	}
	fi, err := root.Lstat(rel)
	if err != nil {
		return notFound(dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory: %w", dir, ErrBadPath)
	}
	return walk(root, dir, rel, fn)
}

// walk walks rel below root, naming what it finds by dir, rel's name in
// the whole tree.
func walk(root *os.Root, dir, rel string, fn func(p string, e Entry) error) error {
	return fs.WalkDir(root.FS(), rel, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == rel {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // gone: not in the tree
		}
		e := entry(root, p, fi)
		if e.Kind == KindDir || e.Kind == KindFile {
			if rel != "." {
				p = strings.TrimPrefix(p, rel+"/")
			}
			return fn(dir+"/"+p, e)
		}
		return nil
	})
}
