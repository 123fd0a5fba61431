package pe

import (
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"strings"
)

// IsLocalName reports whether an ID part (id or snapshot) can name one
// visible entry of a directory. IDs allow "/" and ".", so "a/b", ".." or
// ".snapshots" are valid IDs but must never reach a path; hidden names are
// also where PE types keep their own state (snapshots, temp files).
func IsLocalName(part string) bool {
	if part == "" || strings.HasPrefix(part, ".") || strings.Contains(part, "/") {
		return false
	}
	return validatePart("id", part) == nil
}

// maxLocalBase keeps new names well below NAME_MAX (255 bytes): IDs may be
// 1024 bytes long.
const maxLocalBase = 200

// maxLocalExt bounds what NewLocalName keeps as an extension: ".img",
// ".qcow2" are extensions, ".2026-11-25-backup" is not.
const maxLocalExt = 8

// NewLocalName derives a fresh name that IsLocalName accepts from base (a
// source's name, maybe of another type, with "/" or a leading "."):
// <base>-<8 hex digits>, or <stem>-<8 hex digits><ext> with keepExt.
// fallback (a valid local name) replaces a base that has nothing usable.
// Uniqueness is left to the caller, which creates the entry exclusively.
func NewLocalName(base, fallback string, keepExt bool) string {
	base = strings.TrimLeft(strings.ReplaceAll(base, "/", "_"), ".")
	if len(base) > maxLocalBase {
		base = base[:maxLocalBase]
	}
	if !IsLocalName(base) {
		base = fallback
	}
	stem, ext := base, ""
	if e := filepath.Ext(base); keepExt && len(e) > 1 && len(e) <= maxLocalExt && len(e) < len(base) {
		stem, ext = strings.TrimSuffix(base, e), e
	}
	var r [4]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux
	return stem + "-" + hex.EncodeToString(r[:]) + ext
}
