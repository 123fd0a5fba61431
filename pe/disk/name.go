package disk

import (
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// validName reports whether name can be a disk PE: a valid PE ID part that
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

// maxExt bounds what newName keeps as an extension: ".img", ".qcow2",
// ".raw" are extensions, ".2026-11-25-backup" is not.
const maxExt = 8

// newName derives a fresh, valid PE name from base (the source's name,
// which may be of another type and hold "/"): <stem>-<8 hex digits><ext>.
// Uniqueness is checked by the caller when it links the file into place.
func newName(base string) string {
	base = strings.ReplaceAll(base, "/", "_")
	base = strings.TrimLeft(base, ".")
	if base == "" || !validName(base) {
		base = "disk"
	}
	stem, ext := base, filepath.Ext(base)
	if len(ext) > 1 && len(ext) <= maxExt && len(ext) < len(base) {
		stem = strings.TrimSuffix(base, ext)
	} else {
		ext = ""
	}
	var r [4]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux
	return stem + "-" + hex.EncodeToString(r[:]) + ext
}
