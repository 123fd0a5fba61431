package pe

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// NewSnapshotName returns a snapshot ID part that sorts by creation time and
// is unique without coordination: 20261125T000104.123Z-1a2b3c4d.
func NewSnapshotName(t time.Time) string {
	var r [4]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails on Linux
	return t.UTC().Format("20060102T150405.000Z") + "-" + hex.EncodeToString(r[:])
}
