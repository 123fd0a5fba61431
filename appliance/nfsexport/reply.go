package nfsexport

import (
	"encoding/binary"
	"net"
)

// go-nfs v0.0.4 serves MOUNT procedures NULL, MNT and UMNT and the 22 of
// NFSv3, whatever the version asked; to anything else it replies
// PROC_UNAVAIL with the code of PROG_MISMATCH, which clients cannot
// decode (libnfs then fails its mount, having asked for the export list).
// The server answers those calls itself, from the connection.

const (
	progPortmap = 100000

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3

	pmapGetPort = 3
	ipProtoTCP  = 6

	nfsProcMknod   = 11
	nfsProcLink    = 15
	nfs3ErrNotSupp = 10004
)

// goNFSServes reports whether go-nfs answers c correctly.
func (c call) goNFSServes() bool {
	switch c.prog {
	case progNFS:
		// go-nfs decodes LINK's arguments as other than RFC 1813 says
		// and allocates a length it never checks: LINK and MKNOD (neither
		// of which the export allows) are answered here.
		return c.vers == 3 && c.proc <= 21 && c.proc != nfsProcMknod && c.proc != nfsProcLink
	case progMount:
		return c.vers == 3 && (c.proc == 0 || c.proc == 1 || c.proc == 3)
	}
	return false
}

// reply returns the record answering c, which go-nfs does not serve.
// local is the address the call came to: a portmapper GETPORT for NFS or
// MOUNT over TCP answers its port, so that clients that ask the
// portmapper (ESXi does) find both on it.
func (c call) reply(local net.Addr) []byte {
	var body []uint32
	stat := uint32(acceptSuccess)
	switch c.prog {
	case progNFS, progMount:
		switch {
		case c.vers != 3:
			stat, body = acceptProgMismatch, []uint32{3, 3}
		case c.prog == progMount && c.proc == 5: // EXPORT: "/", open to all
			body = []uint32{1, 1, '/' << 24, 0, 0}
		case c.prog == progMount && c.proc == 2: // DUMP: no mounts recorded
			body = []uint32{0}
		case c.prog == progMount && c.proc == 4: // UMNTALL
		case c.prog == progNFS && c.proc == nfsProcLink:
			// LINK3resfail: status, file attributes, directory wcc_data.
			body = []uint32{nfs3ErrNotSupp, 0, 0, 0}
		case c.prog == progNFS && c.proc == nfsProcMknod:
			// MKNOD3resfail: status, directory wcc_data.
			body = []uint32{nfs3ErrNotSupp, 0, 0}
		default:
			stat = acceptProcUnavail
		}
	case progPortmap:
		switch {
		case c.vers != 2:
			stat, body = acceptProgMismatch, []uint32{2, 2}
		case c.proc == 0:
		case c.proc == pmapGetPort:
			body = []uint32{0}
			if c.pmapProg == progNFS || c.pmapProg == progMount {
				if a, ok := local.(*net.TCPAddr); ok && c.pmapProt == ipProtoTCP {
					body[0] = uint32(a.Port)
				}
			}
		default:
			stat = acceptProcUnavail
		}
	default:
		stat = acceptProgUnavail
	}
	words := append([]uint32{0, c.xid, 1, 0, 0, 0, stat}, body...)
	rec := make([]byte, 4*len(words))
	for i, w := range words {
		binary.BigEndian.PutUint32(rec[4*i:], w)
	}
	binary.BigEndian.PutUint32(rec, lastFragment|uint32(len(rec)-4))
	return rec
}
