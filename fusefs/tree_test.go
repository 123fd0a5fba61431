package fusefs

import (
	"encoding/binary"
	"fmt"
	iofs "io/fs"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// A TOC from untrusted input (a repository snapshot) is shown as far as
// it makes a tree: hard links that name nothing, a directory, themselves
// or each other stay what their own member says, names that leave the
// tree are left out, and link counts count the names that remain.
func TestTreeOfOddTOC(t *testing.T) {
	reg := func(name string) pe.TOCEntry { return pe.TOCEntry{Name: name, Mode: 0o644, Size: 3} }
	link := func(name, target string) pe.TOCEntry {
		return pe.TOCEntry{Name: name, Mode: 0o644, HardLink: true, Linkname: target}
	}
	toc := []pe.TOCEntry{
		{Name: "", Mode: iofs.ModeDir | 0o755},
		reg("a/b/file"),                                   // a and a/b are implied
		link("a/second", "./a/b/file"),                    // resolves
		link("third", "a/second"),                         // resolves through a link
		link("to-dir", "a"),                               // a directory: stays itself
		link("to-nothing", "missing"),                     // stays itself
		link("loop1", "loop2"),                            // a loop: both stay themselves
		link("loop2", "loop1"),                            //
		reg("../escape"),                                  // left out
		reg("a/./dot"),                                    // left out
		reg("x//y"),                                       // left out
		{Name: "a/b", Mode: iofs.ModeDir | 0o700, UID: 7}, // the implied a/b gets its member
		{Name: "dev", Mode: iofs.ModeDevice | iofs.ModeCharDevice | 0o600, Devmajor: 1 << 12, Devminor: 1},
	}
	tr := newTree(toc, time.Unix(1e9, 0), 1<<inoBits)
	attr := func(p string) (fuse.Attr, int) {
		t.Helper()
		n, ok := tr.lookup(p)
		if !ok {
			t.Fatalf("%s not in the tree", p)
		}
		var a fuse.Attr
		tr.attr(tr.file(n), &a)
		return a, tr.file(n)
	}
	file, fileNode := attr("a/b/file")
	for _, p := range []string{"a/second", "third"} {
		if a, n := attr(p); n != fileNode || a.Ino != file.Ino || a.Nlink != 3 {
			t.Errorf("%s: node %d ino %d nlink %d, want node %d ino %d nlink 3", p, n, a.Ino, a.Nlink, fileNode, file.Ino)
		}
	}
	if file.Nlink != 3 {
		t.Errorf("a/b/file: nlink %d, want 3", file.Nlink)
	}
	for _, p := range []string{"to-dir", "to-nothing", "loop1", "loop2"} {
		if a, n := attr(p); a.Ino == file.Ino || a.Nlink != 1 || a.Mode != syscall.S_IFREG|0o644 || toc[n].Name != p {
			t.Errorf("%s: %+v (node %d)", p, a, n)
		}
	}
	for _, p := range []string{"../escape", "..", "a/./dot", "a/dot", "x", "x/y"} {
		if _, ok := tr.lookup(p); ok {
			t.Errorf("%s is in the tree", p)
		}
	}
	if a, _ := attr("a"); a.Mode != syscall.S_IFDIR|0o555 || a.Nlink != 3 || a.Mtime != 1e9 {
		t.Errorf("implied a: %+v", a)
	}
	if a, _ := attr("a/b"); a.Mode != syscall.S_IFDIR|0o700 || a.Uid != 7 || a.Nlink != 2 {
		t.Errorf("a/b: %+v", a)
	}
	var root fuse.Attr
	tr.attr(tr.root, &root)
	if root.Nlink != 3 || root.Mode != syscall.S_IFDIR|0o755 {
		t.Errorf("root: %+v", root)
	}
	// A device number the kernel's 32-bit form cannot hold shows as 0.
	if a, _ := attr("dev"); a.Rdev != 0 || a.Mode != syscall.S_IFCHR|0o600 {
		t.Errorf("dev: %+v", a)
	}
	// Inode numbers are distinct.
	seen := map[uint64]string{}
	for dir, children := range tr.dirs {
		for name, n := range children {
			ino := tr.ino(tr.file(n))
			if other, ok := seen[ino]; ok && tr.file(n) != fileNode {
				t.Errorf("%s/%s and %s share inode %d", dir, name, other, ino)
			}
			seen[ino] = dir + "/" + name
		}
	}
}

func TestEncodeDev(t *testing.T) {
	for _, c := range []struct{ major, minor int64 }{{1, 3}, {8, 1}, {254, 70000}, {4095, 1<<20 - 1}} {
		got := encodeDev(c.major, c.minor)
		// new_decode_dev of the kernel.
		major := int64(got&0xfff00) >> 8
		minor := int64(got&0xff) | int64(got>>12)&^0xff
		if major != c.major || minor != c.minor {
			t.Errorf("encodeDev(%d, %d) = %#x, decodes to %d, %d", c.major, c.minor, got, major, minor)
		}
	}
}

// aclXattr encodes ACL entries (tag, perm, id) in the kernel's xattr form.
func aclXattr(entries ...[3]uint32) string {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return string(b)
}

func TestValidACL(t *testing.T) {
	const none = ^uint32(0)
	valid := map[string]string{
		"minimal": aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{aclGroupObj, 4, none}, [3]uint32{aclOther, 4, none}),
		"named": aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{aclUser, 7, 1234}, [3]uint32{aclGroupObj, 4, none},
			[3]uint32{aclGroup, 5, 55}, [3]uint32{aclMask, 7, none}, [3]uint32{aclOther, 4, none}),
		"empty": aclXattr(),
	}
	invalid := map[string]string{
		"short":       "\x02\x00",
		"version 1":   "\x01\x00\x00\x00",
		"ragged":      aclXattr([3]uint32{aclUserObj, 6, none})[:10],
		"no other":    aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{aclGroupObj, 4, none}),
		"no mask":     aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{aclUser, 7, 1}, [3]uint32{aclGroupObj, 4, none}, [3]uint32{aclOther, 4, none}),
		"order":       aclXattr([3]uint32{aclGroupObj, 4, none}, [3]uint32{aclUserObj, 6, none}, [3]uint32{aclOther, 4, none}),
		"perm bits":   aclXattr([3]uint32{aclUserObj, 8, none}, [3]uint32{aclGroupObj, 4, none}, [3]uint32{aclOther, 4, none}),
		"no such id":  aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{aclUser, 7, none}, [3]uint32{aclGroupObj, 4, none}, [3]uint32{aclMask, 7, none}, [3]uint32{aclOther, 4, none}),
		"after other": aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{aclGroupObj, 4, none}, [3]uint32{aclOther, 4, none}, [3]uint32{aclOther, 4, none}),
		"unknown tag": aclXattr([3]uint32{aclUserObj, 6, none}, [3]uint32{0x40, 4, none}, [3]uint32{aclOther, 4, none}),
	}
	for name, v := range valid {
		if !validACL(v) {
			t.Errorf("%s: refused", name)
		}
	}
	for name, v := range invalid {
		if validACL(v) {
			t.Errorf("%s: taken", name)
		}
	}
	// A bad ACL is not shown; a default ACL only on a directory.
	tr := newTree([]pe.TOCEntry{
		{Name: "f", Mode: 0o644, Xattrs: map[string]string{aclAccess: invalid["order"], aclDefault: valid["minimal"], "user.x": "1"}},
		{Name: "d", Mode: iofs.ModeDir | 0o755, Xattrs: map[string]string{aclAccess: valid["named"], aclDefault: valid["minimal"]}},
	}, time.Unix(0, 0), 0)
	if got := tr.xattrNames(0); len(got) != 1 || got[0] != "user.x" {
		t.Errorf("xattrs of f: %v", got)
	}
	if got := tr.xattrNames(1); len(got) != 2 {
		t.Errorf("xattrs of d: %v", got)
	}
}

// A directory's link count is counted when the tree is built, so that a
// stat of a directory of many files does not walk them: it holds after
// the children are gone from the index, and counts only what a later
// member of the same name left a directory.
func TestDirLinksCountedOnce(t *testing.T) {
	toc := []pe.TOCEntry{{Name: "big", Mode: iofs.ModeDir | 0o755}}
	for i := range 1000 {
		toc = append(toc, pe.TOCEntry{Name: fmt.Sprintf("big/f%04d", i), Mode: 0o644})
	}
	toc = append(toc,
		pe.TOCEntry{Name: "big/sub1", Mode: iofs.ModeDir | 0o755},
		pe.TOCEntry{Name: "big/sub2/implied/file", Mode: 0o644},
		pe.TOCEntry{Name: "big/was-dir", Mode: iofs.ModeDir | 0o755},
		pe.TOCEntry{Name: "big/was-dir", Mode: 0o644}, // replaces the directory
	)
	tr := newTree(toc, time.Unix(1e9, 0), 1<<inoBits)
	n, ok := tr.lookup("big")
	if !ok {
		t.Fatal("big not in the tree")
	}
	clear(tr.dirs["big"])
	var a fuse.Attr
	tr.attr(n, &a)
	if a.Nlink != 4 {
		t.Errorf("big: nlink %d, want 4 (., its name, sub1, sub2)", a.Nlink)
	}
}
