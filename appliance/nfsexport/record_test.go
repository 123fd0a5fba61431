package nfsexport

import (
	"bytes"
	"testing"
)

// FuzzCheckCall: whatever a client sends, checking it (and rewriting an
// EXCLUSIVE CREATE) neither panics nor lets through a length field larger
// than the record; handles decode or fail, never panic.
func FuzzCheckCall(f *testing.F) {
	dir := []byte{handleVersion, byte(kindDir), 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}
	f.Add(bytes.Join([][]byte{callHeader(1, progNFS, 3, procLookup), opaque(dir), str("vm.vmx")}, nil))
	f.Add(bytes.Join([][]byte{callHeader(2, progNFS, 3, procWrite), opaque(dir), u64(0), u32(4), u32(2), opaque([]byte("abcd"))}, nil))
	f.Add(bytes.Join([][]byte{callHeader(3, progNFS, 3, procCreate), opaque(dir), str(".lck"), u32(createExclusive), u64(7)}, nil))
	f.Add(bytes.Join([][]byte{callHeader(4, progMount, 3, 1), str("/vm1")}, nil))
	f.Add(bytes.Join([][]byte{callHeader(5, progPortmap, 2, pmapGetPort), u32(progNFS), u32(3), u32(ipProtoTCP), u32(0)}, nil))
	f.Add(bytes.Join([][]byte{callHeader(6, progNFS, 3, 10), opaque(dir), str("l"), sattrSize(1), str("/etc")}, nil))
	f.Add([]byte{0, 0, 0, 1})
	s, err := New(Options{ScratchDir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		c, err := checkCall(rec)
		if err == nil && c.exclusiveAt > 0 {
			if _, err := checkCall(guardedCreate(rec, c.exclusiveAt)); err != nil {
				t.Errorf("the GUARDED rewrite of a valid EXCLUSIVE CREATE fails its check: %v", err)
			}
		}
		_ = c.reply(nil)
		if len(rec) >= 4 {
			_, _ = s.decodeHandle(rec[:min(len(rec), maxHandle)])
		}
	})
}
