package fusefs

import (
	"context"
	"encoding/binary"
	"sort"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The extended attributes of a tree's node are its TOC entry's: the PAX
// SCHILY.xattr.* records of its tar member, as the fs PE and GNU tar
// (--xattrs --xattrs-include='*') write them. POSIX ACLs are among them in
// the kernel's binary form (system.posix_acl_access and _default), and
// the kernel enforces them (the mount has FUSE_POSIX_ACL).

const (
	aclAccess  = "system.posix_acl_access"
	aclDefault = "system.posix_acl_default"
)

// xattrSizeMax is the kernel's XATTR_SIZE_MAX and XATTR_LIST_MAX: it asks
// for no more, so a larger value or list (a crafted PAX header can hold
// one) would fail getxattr and listxattr with ERANGE however large the
// caller's buffer, and getfattr or rsync -X with them.
const xattrSizeMax = 65536

// trustedPrefix names the xattrs only CAP_SYS_ADMIN may see; the kernel
// refuses to read them for others, and local filesystems leave them out
// of others' lists.
const trustedPrefix = "trusted."

// xattr returns the value of the xattr name of node n.
func (t *tree) xattr(n int, name string) (string, bool) {
	if !t.isEntry(n) {
		return "", false
	}
	v, ok := t.entries[n].Xattrs[name]
	if !ok || !t.shownXattr(n, name, v) {
		return "", false
	}
	return v, true
}

// xattrNames lists the xattrs of node n, sorted.
func (t *tree) xattrNames(n int) []string {
	if !t.isEntry(n) {
		return nil
	}
	var names []string
	for name, v := range t.entries[n].Xattrs {
		if t.shownXattr(n, name, v) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// shownXattr reports whether the view shows the xattr name of node n. A
// value over xattrSizeMax is left out (no caller could read it), and a
// POSIX ACL the kernel would not take: the kernel would fail every
// permission check of the file with EIO, even root's. So is a default
// ACL of anything but a directory, which no filesystem keeps.
func (t *tree) shownXattr(n int, name, v string) bool {
	if len(v) > xattrSizeMax {
		return false
	}
	switch name {
	case aclAccess:
		return validACL(v)
	case aclDefault:
		return t.isDir(n) && validACL(v)
	}
	return true
}

// callerSees reports whether the caller of a FUSE request may see the
// xattr name: trusted.* is root's alone (uid 0 standing for CAP_SYS_ADMIN),
// as ext4 lists it.
func callerSees(ctx context.Context, name string) bool {
	if !strings.HasPrefix(name, trustedPrefix) {
		return true
	}
	c, ok := fuse.FromContext(ctx)
	return ok && c.Uid == 0
}

// xattrList is the list listxattr(2) returns of names: each followed by
// a NUL, as many as fit in xattrSizeMax, in order. Names past that
// cannot be listed (as on a local filesystem), but can still be read.
func xattrList(names []string) string {
	var b strings.Builder
	for _, name := range names {
		if b.Len()+len(name)+1 > xattrSizeMax {
			break
		}
		b.WriteString(name)
		b.WriteByte(0)
	}
	return b.String()
}

// Tags of POSIX ACL entries (linux/posix_acl.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

// validACL checks an ACL in the kernel's xattr form (posix_acl_xattr.h: a
// version 2 header, then 8-byte entries of tag, permissions and id) as
// the kernel's posix_acl_valid does: owner, named users, owning group,
// named groups, mask (required with named entries), other, in that order.
func validACL(v string) bool {
	b := []byte(v)
	const header, entry = 4, 8
	if len(b) < header || binary.LittleEndian.Uint32(b) != 2 || (len(b)-header)%entry != 0 {
		return false
	}
	if len(b) == header {
		return true // no entries: no ACL
	}
	const done = 0
	state, named := aclUserObj, false
	for e := b[header:]; len(e) > 0; e = e[entry:] {
		tag, perm := binary.LittleEndian.Uint16(e), binary.LittleEndian.Uint16(e[2:])
		id := binary.LittleEndian.Uint32(e[4:])
		if perm&^7 != 0 {
			return false
		}
		switch {
		case tag == aclUserObj && state == aclUserObj:
			state = aclUser
		case tag == aclUser && state == aclUser, tag == aclGroup && state == aclGroup:
			if id == ^uint32(0) {
				return false // no such user or group
			}
			named = true
		case tag == aclGroupObj && state == aclUser:
			state = aclGroup
		case tag == aclMask && state == aclGroup:
			state = aclOther
		case tag == aclOther && (state == aclOther || state == aclGroup && !named):
			state = done
		default:
			return false
		}
	}
	return state == done
}
