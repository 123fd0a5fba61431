package fusefs

import (
	iofs "io/fs"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// tree indexes the table of contents of an fs snapshot by directory, so
// that lookups in any directory cost a map access, and numbers its nodes.
//
// A node is an entry of the TOC (0 ≤ node < len(entries)) or a directory
// the TOC implies by its members' names but lacks (node len(entries)+k is
// implied[k]). Node numbers make the inode numbers: stable for as long as
// the mount lives, whatever the kernel forgets, so that find -inum and
// rsync -H see one file where they saw it before.
type tree struct {
	entries []pe.TOCEntry
	implied []string                  // paths of implied directories
	dirs    map[string]map[string]int // dir path → child name → node
	root    int                       // the node of the tree's own directory
	// links maps a hard link's node to the node of the file it names;
	// names counts the names of each file that has more than one.
	links map[int]int
	names map[int]uint32
	// subdirs counts the subdirectories of each directory path that has
	// any, for its link count: counted once, as a stat must not walk a
	// directory of a million files.
	subdirs map[string]uint32
	// mtime is that of implied directories: the snapshot's.
	mtime time.Time
	// inoBase numbers this tree's nodes apart from every other tree of
	// the mount; 0 leaves the numbering to go-fuse.
	inoBase uint64
}

// inoBits is the width of a tree's node numbers in its inode numbers: a
// TOC has at most 50 million members, and members imply directories only
// along their names.
const inoBits = 40

func newTree(toc []pe.TOCEntry, mtime time.Time, inoBase uint64) *tree {
	t := &tree{entries: toc, dirs: map[string]map[string]int{"": {}}, root: -1, mtime: mtime, inoBase: inoBase}
	for i := range toc {
		e := &toc[i]
		if e.Name == "" || e.Name == "." {
			// Its owner and mode guard the whole tree, as they did on
			// the live PE (a 0700 home directory).
			if e.Mode.IsDir() {
				t.root = i
			}
			continue
		}
		if !cleanName(e.Name) {
			continue // not a name a tree has: "a/../b", "a//b"
		}
		parent, base := splitPath(e.Name)
		t.ensureDir(parent)
		t.dirs[parent][base] = i
		if e.Mode.IsDir() {
			t.ensureDir(e.Name)
		}
	}
	if t.root < 0 {
		t.root = t.addImplied("")
	}
	t.linkHardLinks()
	t.countSubdirs()
	return t
}

// countSubdirs fills subdirs, once the tree's children are final (a later
// member may replace a directory of the same name).
func (t *tree) countSubdirs() {
	t.subdirs = map[string]uint32{}
	for dir, children := range t.dirs {
		for _, c := range children {
			if t.isDir(c) {
				t.subdirs[dir]++
			}
		}
	}
}

// ensureDir makes dir a known directory, linked into its parent, and so
// its ancestors; those no member names are implied. Every known directory
// but the root is linked into its parent.
func (t *tree) ensureDir(dir string) {
	if _, ok := t.dirs[dir]; ok {
		return
	}
	t.dirs[dir] = map[string]int{}
	for dir != "" {
		parent, base := splitPath(dir)
		siblings, known := t.dirs[parent]
		if !known {
			siblings = map[string]int{}
			t.dirs[parent] = siblings
		}
		if _, ok := siblings[base]; !ok {
			siblings[base] = t.addImplied(dir)
		}
		if known {
			return
		}
		dir = parent
	}
}

func (t *tree) addImplied(dir string) int {
	t.implied = append(t.implied, dir)
	return len(t.entries) + len(t.implied) - 1
}

// maxLinkHops bounds how many hard links are followed to the file: tar
// writers name the first member of a file, so one hop is the rule.
const maxLinkHops = 8

// linkHardLinks resolves every hard link that names a file of the tree to
// that file, and counts the names of each such file. A link to nothing,
// to a directory or in a loop stays what its own member says.
func (t *tree) linkHardLinks() {
	for _, children := range t.dirs {
		for _, n := range children {
			if !t.isEntry(n) || !t.entries[n].HardLink {
				continue
			}
			if target, ok := t.resolveLink(n); ok {
				if t.links == nil {
					t.links, t.names = map[int]int{}, map[int]uint32{}
				}
				t.links[n] = target
			}
		}
	}
	for _, children := range t.dirs {
		for _, n := range children {
			if target, ok := t.links[n]; ok {
				t.names[target]++
			}
		}
	}
	// The file's own name, where it still names it (a later member of
	// the same name replaces it).
	for target := range t.names {
		parent, base := splitPath(t.entries[target].Name)
		if n, ok := t.dirs[parent][base]; ok && n == target {
			t.names[target]++
		}
	}
}

func (t *tree) resolveLink(n int) (int, bool) {
	for range maxLinkHops {
		target, ok := t.lookup(pe.CleanTarName(t.entries[n].Linkname))
		if !ok || !t.isEntry(target) || t.entries[target].Mode.IsDir() || target == n {
			return 0, false
		}
		if !t.entries[target].HardLink {
			return target, true
		}
		n = target
	}
	return 0, false
}

func (t *tree) isEntry(n int) bool { return n < len(t.entries) }

// file is the node whose attributes and content n shows: the file a hard
// link names, else n itself.
func (t *tree) file(n int) int {
	if target, ok := t.links[n]; ok {
		return target
	}
	return n
}

// lookup finds the node of a path.
func (t *tree) lookup(p string) (int, bool) {
	dir, base := splitPath(p)
	n, ok := t.dirs[dir][base]
	return n, ok
}

// cleanName reports whether name is a path below the root with no empty,
// "." or ".." element: a TOC from untrusted input may hold others.
func cleanName(name string) bool {
	for _, elem := range strings.Split(name, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
	}
	return true
}

func splitPath(p string) (dir, base string) {
	dir, base = path.Split(p)
	return strings.TrimSuffix(dir, "/"), base
}

// ino is the inode number of node n (after file).
func (t *tree) ino(n int) uint64 {
	if t.inoBase == 0 || uint64(n)+1 >= 1<<inoBits {
		return 0
	}
	return t.inoBase + uint64(n) + 1
}

// dirPath is the path of a directory node.
func (t *tree) dirPath(n int) string {
	if t.isEntry(n) {
		if n == t.root {
			return ""
		}
		return t.entries[n].Name
	}
	return t.implied[n-len(t.entries)]
}

// isDir reports whether node n is a directory.
func (t *tree) isDir(n int) bool {
	return !t.isEntry(n) || t.entries[n].Mode.IsDir()
}

// typeBits are the S_IFMT bits of node n (after file).
func (t *tree) typeBits(n int) uint32 {
	if !t.isEntry(n) {
		return syscall.S_IFDIR
	}
	return unixMode(t.entries[n].Mode) & syscall.S_IFMT
}

// attr describes node n (after file) as stat(2) shows it. Blocks are
// those of a regular file's size; the caller may know better.
func (t *tree) attr(n int, out *fuse.Attr) {
	out.Ino = t.ino(n)
	// Set, so that go-fuse leaves Blocks as we say.
	out.Blksize = blockSize
	if !t.isEntry(n) {
		dirAttr(out)
		out.Nlink = t.dirLinks(t.dirPath(n))
		out.SetTimes(nil, &t.mtime, &t.mtime)
		return
	}
	e := &t.entries[n]
	out.Mode = unixMode(e.Mode)
	out.Uid, out.Gid = uint32(e.UID), uint32(e.GID)
	out.SetTimes(nil, &e.ModTime, &e.ModTime)
	out.Nlink = 1
	if k, ok := t.names[n]; ok {
		out.Nlink = k
	}
	switch out.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		out.Nlink = t.dirLinks(t.dirPath(n))
	case syscall.S_IFREG:
		out.Size = uint64(e.Size)
		out.Blocks = sizeBlocks(e.Size)
	case syscall.S_IFLNK:
		out.Size = uint64(len(e.Linkname))
	case syscall.S_IFCHR, syscall.S_IFBLK:
		out.Rdev = encodeDev(e.Devmajor, e.Devminor)
	}
}

// blockSize is the st_blksize of the view's files: the page size, which
// the kernel reads in.
const blockSize = 4096

// sizeBlocks is st_blocks of a file of size bytes without holes, in
// 512-byte units of whole blocks, as a local filesystem reports it.
func sizeBlocks(size int64) uint64 {
	return uint64((size+blockSize-1)/blockSize) * (blockSize / 512)
}

// dirLinks is a directory's link count as Linux filesystems report it:
// its name, its ".", and the ".." of each subdirectory.
func (t *tree) dirLinks(dir string) uint32 {
	return 2 + t.subdirs[dir]
}

// unixMode is the st_mode of a Go file mode: type, permissions and the
// setuid, setgid and sticky bits.
func unixMode(m iofs.FileMode) uint32 {
	mode := uint32(m.Perm())
	if m&iofs.ModeSetuid != 0 {
		mode |= syscall.S_ISUID
	}
	if m&iofs.ModeSetgid != 0 {
		mode |= syscall.S_ISGID
	}
	if m&iofs.ModeSticky != 0 {
		mode |= syscall.S_ISVTX
	}
	switch {
	case m.IsDir():
		return mode | syscall.S_IFDIR
	case m&iofs.ModeSymlink != 0:
		return mode | syscall.S_IFLNK
	case m&iofs.ModeNamedPipe != 0:
		return mode | syscall.S_IFIFO
	case m&iofs.ModeSocket != 0:
		return mode | syscall.S_IFSOCK
	case m&iofs.ModeCharDevice != 0:
		return mode | syscall.S_IFCHR
	case m&iofs.ModeDevice != 0:
		return mode | syscall.S_IFBLK
	}
	return mode | syscall.S_IFREG
}

// encodeDev is a device number in the 32-bit form the kernel decodes
// from FUSE attributes (new_decode_dev): 12 bits of major, 20 of minor.
// Larger numbers do not fit; they show as 0.
func encodeDev(major, minor int64) uint32 {
	if major < 0 || major >= 1<<12 || minor < 0 || minor >= 1<<20 {
		return 0
	}
	return uint32(minor&0xff | major<<8 | (minor&^0xff)<<12)
}
