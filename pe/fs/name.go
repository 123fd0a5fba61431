package fs

import (
	"crypto/rand"
	"encoding/hex"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// validName reports whether name can be an fs PE: a valid PE ID part that
// is one visible entry of the root. PE IDs allow "/" and ".", so "a/b",
// ".." or ".snapshots" are valid IDs but must never reach a path.
func validName(name string) bool {
	if name == "" || strings.HasPrefix(name, ".") || strings.Contains(name, "/") {
		return false
	}
	_, err := pe.NewID(Type, name)
	return err == nil
}

// validSnapName is validName for snapshot parts; hidden names are the
// temporary directories of snapshots being taken or deleted.
func validSnapName(snap string) bool {
	if snap == "" || strings.HasPrefix(snap, ".") || strings.Contains(snap, "/") {
		return false
	}
	return pe.ValidateSnapshotName(snap) == nil
}

// maxBaseLen keeps new names well below NAME_MAX (255 bytes): IDs may be
// 1024 bytes long.
const maxBaseLen = 200

// newName derives a fresh, valid PE name from base (the source's name,
// which may be of another type and hold "/" or start with "."):
// <base>-<8 hex digits>. Uniqueness is checked by the caller when it
// renames the tree into place.
func newName(base string) string {
	base = strings.ReplaceAll(base, "/", "_")
	base = strings.TrimLeft(base, ".")
	if len(base) > maxBaseLen {
		base = base[:maxBaseLen]
	}
	if !validName(base) {
		base = Type
	}
	var r [4]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux
	return base + "-" + hex.EncodeToString(r[:])
}
