// Package browse lists and reads the files inside the tree of an fs
// snapshot (its table of contents) for the web page's file-level
// recovery: directories a page at a time, whatever their size, and paths
// checked before anything is looked up.
package browse

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// ErrBadPath marks a path that no tree has ("..", ".", empty elements,
// leading or trailing slashes, NUL): the client's fault.
var ErrBadPath = errors.New("invalid path")

// ErrNotFile marks a path that names no regular file.
var ErrNotFile = errors.New("not a regular file")

// CheckPath refuses a path that is not a clean slash-separated path
// relative to the root; "" is the root.
func CheckPath(p string) error {
	if p == "" {
		return nil
	}
	// The messages do not quote p: the API cuts absolute paths in its
	// errors to their last element (package redact), and the client
	// knows what it sent.
	switch {
	case len(p) > 4096:
		return fmt.Errorf("path of %d bytes: at most 4096: %w", len(p), ErrBadPath)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path starts with a slash: paths are relative to the snapshot's root (empty for the root): %w", ErrBadPath)
	case strings.HasSuffix(p, "/"):
		return fmt.Errorf("path ends with a slash: %w", ErrBadPath)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("path holds a NUL byte: %w", ErrBadPath)
	}
	for _, elem := range strings.Split(p, "/") {
		switch elem {
		case "":
			return fmt.Errorf("path holds an empty element (two slashes in a row): %w", ErrBadPath)
		case ".", "..":
			return fmt.Errorf("path holds a %q element: paths name entries down from the snapshot's root: %w", elem, ErrBadPath)
		}
	}
	return nil
}

// Kind is what an entry is.
type Kind string

const (
	KindFile    Kind = "file"
	KindDir     Kind = "dir"
	KindSymlink Kind = "symlink"
	KindOther   Kind = "other"
)

// Entry is one name in a directory.
type Entry struct {
	Name       string
	Kind       Kind
	Size       int64
	Modified   time.Time
	LinkTarget string
}

// Index is the directories of one snapshot's tree. It is read-only once
// built and safe for concurrent use.
type Index struct {
	toc []pe.TOCEntry
	// dirs maps a directory's path to its children's names, sorted, and
	// each name to its TOC entry (-1: a directory no member names).
	dirs     map[string][]string
	children map[string]map[string]int
	mtime    time.Time
}

// maxLinkHops bounds how many hard links are followed to their file.
const maxLinkHops = 8

// NewIndex indexes toc; mtime stands for directories no member names.
// Members with names no tree has are left out; a later member of the
// same name replaces an earlier one, as tar extraction does.
func NewIndex(toc []pe.TOCEntry, mtime time.Time) *Index {
	x := &Index{toc: toc, children: map[string]map[string]int{"": {}}, dirs: map[string][]string{}, mtime: mtime}
	for i, e := range toc {
		if e.Name == "" || e.Name == "." || CheckPath(e.Name) != nil {
			continue
		}
		parent, base := split(e.Name)
		x.ensureDir(parent)
		x.children[parent][base] = i
		if e.Mode.IsDir() {
			x.ensureDir(e.Name)
		}
	}
	for dir, kids := range x.children {
		names := make([]string, 0, len(kids))
		for name := range kids {
			names = append(names, name)
		}
		sort.Strings(names)
		x.dirs[dir] = names
	}
	return x
}

func split(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// ensureDir makes dir and its ancestors known directories.
func (x *Index) ensureDir(dir string) {
	if _, ok := x.children[dir]; ok {
		return
	}
	x.children[dir] = map[string]int{}
	parent, base := split(dir)
	x.ensureDir(parent)
	if _, ok := x.children[parent][base]; !ok {
		x.children[parent][base] = -1
	}
}

// isDir tells whether the child n (a TOC index or -1) is a directory.
func (x *Index) isDir(n int) bool { return n < 0 || x.toc[n].Mode.IsDir() }

func (x *Index) entry(name string, n int) Entry {
	if n < 0 {
		return Entry{Name: name, Kind: KindDir, Modified: x.mtime}
	}
	e := x.toc[n]
	out := Entry{Name: name, Modified: e.ModTime}
	switch {
	case e.Mode.IsDir():
		out.Kind = KindDir
	case e.Mode&fs.ModeSymlink != 0:
		out.Kind, out.LinkTarget = KindSymlink, e.Linkname
	case e.HardLink:
		if f, ok := x.resolve(n); ok {
			out.Kind, out.Size = KindFile, x.toc[f].Size
		} else {
			out.Kind = KindOther
		}
	case e.Mode.IsRegular():
		out.Kind, out.Size = KindFile, e.Size
	default:
		out.Kind = KindOther
	}
	return out
}

// resolve follows hard links from TOC entry n to a regular file.
func (x *Index) resolve(n int) (int, bool) {
	for range maxLinkHops {
		e := x.toc[n]
		if !e.HardLink {
			return n, e.Mode.IsRegular()
		}
		target := pe.CleanTarName(e.Linkname)
		if CheckPath(target) != nil {
			return 0, false
		}
		parent, base := split(target)
		m, ok := x.children[parent][base]
		if !ok || m < 0 {
			return 0, false
		}
		n = m
	}
	return 0, false
}

// Page is one page of a directory.
type Page struct {
	Entries []Entry
	// Next is the cursor of the following page, "" at the end.
	Next string
}

// List answers up to limit entries of dir after cursor (a Page's Next,
// or "" for the first page).
func (x *Index) List(dir, cursor string, limit int) (Page, error) {
	if err := CheckPath(dir); err != nil {
		return Page{}, err
	}
	names, ok := x.dirs[dir]
	if !ok {
		if x.exists(dir) {
			return Page{}, fmt.Errorf("%s: not a directory: %w", dir, ErrBadPath)
		}
		return Page{}, fmt.Errorf("directory %s: %w", dir, pe.ErrNotFound)
	}
	page, names, err := pageOf(names, cursor, limit)
	if err != nil {
		return Page{}, err
	}
	for _, name := range names {
		page.Entries = append(page.Entries, x.entry(name, x.children[dir][name]))
	}
	return page, nil
}

// pageOf picks the names of one page from sorted names: those after
// cursor, at most limit; the page has its Next cursor set.
func pageOf(names []string, cursor string, limit int) (Page, []string, error) {
	start := 0
	if cursor != "" {
		after, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil {
			return Page{}, nil, fmt.Errorf("cursor: %w", ErrBadPath)
		}
		start = sort.SearchStrings(names, string(after))
		if start < len(names) && names[start] == string(after) {
			start++
		}
	}
	end := min(len(names), start+limit)
	page := Page{Entries: make([]Entry, 0, end-start)}
	if end < len(names) {
		page.Next = base64.RawURLEncoding.EncodeToString([]byte(names[end-1]))
	}
	return page, names[start:end], nil
}

func (x *Index) exists(p string) bool {
	parent, base := split(p)
	_, ok := x.children[parent][base]
	return ok
}

// File returns where the regular file p lies in the image: its content's
// offset and size, and its modification time.
func (x *Index) File(p string) (off, size int64, mtime time.Time, err error) {
	if err := CheckPath(p); err != nil {
		return 0, 0, time.Time{}, err
	}
	if p == "" {
		return 0, 0, time.Time{}, fmt.Errorf("the root: %w", ErrNotFile)
	}
	parent, base := split(p)
	n, ok := x.children[parent][base]
	if !ok {
		return 0, 0, time.Time{}, fmt.Errorf("file %s: %w", p, pe.ErrNotFound)
	}
	if x.isDir(n) {
		return 0, 0, time.Time{}, fmt.Errorf("%s is a directory: %w", p, ErrNotFile)
	}
	f, ok := x.resolve(n)
	if !ok {
		return 0, 0, time.Time{}, fmt.Errorf("%s: %w", p, ErrNotFile)
	}
	e := x.toc[f]
	return e.Offset, e.Size, x.toc[n].ModTime, nil
}

// Match is one entry Search found.
type Match struct {
	Path  string
	Entry Entry
}

// Search finds up to limit entries whose name contains q, without regard
// to case, in TOC order from cursor (a previous answer's next, or "");
// next is "" when the tree has no more.
func (x *Index) Search(q, cursor string, limit int) (matches []Match, next string, err error) {
	start := 0
	if cursor != "" {
		if start, err = strconv.Atoi(cursor); err != nil || start < 0 || start > len(x.toc) {
			return nil, "", fmt.Errorf("cursor %q: %w", cursor, ErrBadPath)
		}
	}
	q = strings.ToLower(q)
	for i := start; i < len(x.toc); i++ {
		name := x.toc[i].Name
		parent, base := split(name)
		if !strings.Contains(strings.ToLower(base), q) || CheckPath(name) != nil {
			continue
		}
		// A member a later one of the same name replaced is not in the tree.
		if n, ok := x.children[parent][base]; !ok || n != i {
			continue
		}
		if len(matches) == limit {
			return matches, strconv.Itoa(i), nil
		}
		matches = append(matches, Match{Path: name, Entry: x.entry(base, i)})
	}
	return matches, "", nil
}

// Walk calls fn for dir and every directory and regular file below it
// (hard links as the files they name), parents before children, names in
// byte order. Symlinks and special files are left out.
func (x *Index) Walk(dir string, fn func(p string, e Entry) error) error {
	if err := CheckPath(dir); err != nil {
		return err
	}
	if _, ok := x.dirs[dir]; !ok {
		if x.exists(dir) {
			return fmt.Errorf("%s: not a directory: %w", dir, ErrBadPath)
		}
		return fmt.Errorf("directory %s: %w", dir, pe.ErrNotFound)
	}
	return x.walk(dir, fn)
}

func (x *Index) walk(dir string, fn func(p string, e Entry) error) error {
	for _, name := range x.dirs[dir] {
		p := name
		if dir != "" {
			p = dir + "/" + name
		}
		e := x.entry(name, x.children[dir][name])
		switch e.Kind {
		case KindDir:
			if err := fn(p, e); err != nil {
				return err
			}
			if err := x.walk(p, fn); err != nil {
				return err
			}
		case KindFile:
			if err := fn(p, e); err != nil {
				return err
			}
		}
	}
	return nil
}
