package nfsexport

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	progNFS   = 100003
	progMount = 100005

	maxAuthBody = 400  // RFC 5531
	maxName     = 255  // a file name
	maxPath     = 1024 // MNTPATHLEN, a symlink's target
)

// An argument of a call, as checkCall reads it.
type field int

const (
	fHandle field = iota // nfs_fh3: opaque of at most 64 bytes
	fName                // filename3
	fPath                // dirpath, nfspath3
	fData                // opaque data: only as long as the record
	fSattr               // sattr3
	fSkip4               // a fixed 4 bytes
	fSkip8               // a fixed 8 bytes
)

// callArgs lists, per NFSv3 procedure, its arguments up to its last
// variable-length one (what follows is fixed-size).
var callArgs = map[uint32][]field{
	1: {fHandle}, 2: {fHandle}, 3: {fHandle, fName}, 4: {fHandle},
	5: {fHandle}, 6: {fHandle}, 7: {fHandle, fSkip8, fSkip4, fSkip4, fData},
	8: {fHandle, fName}, 9: {fHandle, fName},
	10: {fHandle, fName, fSattr, fPath},
	11: {fHandle, fName}, 12: {fHandle, fName}, 13: {fHandle, fName},
	14: {fHandle, fName, fHandle, fName}, 15: {fHandle, fHandle, fName},
	16: {fHandle}, 17: {fHandle}, 18: {fHandle}, 19: {fHandle},
	20: {fHandle}, 21: {fHandle},
}

// checkCall checks an RPC call's length fields against the record's
// length and the protocol's limits, so that decoding it allocates no more
// than the record holds. Procedures go-nfs does not serve pass: it answers
// them PROC_UNAVAIL without reading their arguments.
func checkCall(rec []byte) (call, error) {
	r := xdrReader{b: rec}
	xid := r.uint32()
	if dir := r.uint32(); r.err == nil && dir != 0 {
		return call{}, errors.New("RPC record is not a call")
	}
	r.skip(4) // rpcvers
	prog, vers, proc := r.uint32(), r.uint32(), r.uint32()
	c := call{xid: xid, prog: prog, vers: vers, proc: proc}
	r.opaque(4+maxAuthBody, "credential") // flavor and body
	r.opaque(4+maxAuthBody, "verifier")
	var args []field
	switch prog {
	case progMount:
		if proc == 1 || proc == 3 { // MNT, UMNT
			args = []field{fPath}
		}
	case progNFS:
		args = callArgs[proc]
	case progPortmap:
		if proc == pmapGetPort {
			c.pmapProg = r.uint32()
			r.skip(4) // version
			c.pmapProt = r.uint32()
		}
	}
	for _, f := range args {
		switch f {
		case fHandle:
			r.variable(maxHandle, "file handle")
		case fName:
			r.variable(maxName, "file name")
		case fPath:
			r.variable(maxPath, "path")
		case fData:
			r.variable(len(rec), "data")
		case fSattr:
			r.sattr()
		case fSkip4:
			r.skip(4)
		case fSkip8:
			r.skip(8)
		}
	}
	if prog == progNFS && proc == procCreate {
		r.createMode(&c, len(rec))
	}
	if r.err != nil {
		return c, fmt.Errorf("RPC call (program %d, procedure %d): %w", prog, proc, r.err)
	}
	return c, nil
}

// createMode notes where an EXCLUSIVE CREATE's mode is, once its handle
// and name are read.
func (r *xdrReader) createMode(c *call, recLen int) {
	at := recLen - len(r.b)
	if r.uint32() == createExclusive {
		r.skip(8) // the verifier
		if r.err == nil {
			c.exclusiveAt = at
		}
	}
}

// call is what the server needs of an RPC call's header.
type call struct {
	xid, prog, vers, proc uint32
	pmapProg, pmapProt    uint32 // a portmapper GETPORT's arguments
	// exclusiveAt is the offset in the record of an EXCLUSIVE CREATE's
	// mode; 0 for other calls.
	exclusiveAt int
}

const (
	procCreate      = 8
	createGuarded   = 1
	createExclusive = 2
)

// guardedCreate rewrites an EXCLUSIVE CREATE (rec without its mark) as a
// GUARDED one with no attributes: go-nfs refuses EXCLUSIVE (NOTSUPP), and
// clients use it to make lock files (ESXi's .lck files on NFSv3). GUARDED
// also fails when the file exists; what is lost is only EXCLUSIVE's
// idempotence on a retransmitted call, which TCP makes rare.
func guardedCreate(rec []byte, at int) []byte {
	out := make([]byte, 0, len(rec)+16)
	out = append(out, rec[:at]...)
	out = binary.BigEndian.AppendUint32(out, createGuarded)
	out = append(out, make([]byte, 24)...) // sattr3: nothing set
	return append(out, rec[at+4+8:]...)
}

// xdrReader reads XDR from a byte slice; its first error sticks.
type xdrReader struct {
	b   []byte
	err error
}

func (r *xdrReader) skip(n int) {
	if r.err != nil {
		return
	}
	if n > len(r.b) {
		r.err = errors.New("truncated")
		return
	}
	r.b = r.b[n:]
}

func (r *xdrReader) uint32() uint32 {
	if r.err != nil || len(r.b) < 4 {
		r.skip(4)
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// variable skips a variable-length opaque or string of at most limit
// bytes that the record must hold.
func (r *xdrReader) variable(limit int, what string) {
	n := r.uint32()
	if r.err != nil {
		return
	}
	if uint64(n) > uint64(limit) {
		r.err = fmt.Errorf("%s of %d bytes (at most %d)", what, n, limit)
		return
	}
	r.skip(int(n+3) &^ 3)
}

// opaque skips an opaque_auth: a flavor and a body.
func (r *xdrReader) opaque(limit int, what string) {
	r.skip(4)
	r.variable(limit-4, what)
}

// sattr skips a sattr3: mode, uid, gid (optional uint32s), size (an
// optional uint64) and atime, mtime (a set_time discriminant, a time if 2).
func (r *xdrReader) sattr() {
	for _, size := range []int{4, 4, 4, 8} {
		if r.uint32() != 0 {
			r.skip(size)
		}
	}
	for range 2 {
		if r.uint32() == 2 {
			r.skip(8)
		}
	}
}
