package nfsexport

import (
	"crypto/sha256"
	"errors"
	"strings"
)

// File handles are stateless where they can be: version, kind, the
// export's ID (a hash of its name) and, for a client-made file, its path.
// So the handles ESXi holds stay valid across an appliance restart that
// adds the same exports again, and a removed export's handles find no
// export: NFS3ERR_STALE.
//
//	[0]     handleVersion
//	[1]     kind
//	[2:4]   zero
//	[4:12]  export ID (not in a root handle)
//	[12:]   kindScratch: the path, NUL-padded; kindScratchHashed: 16
//	        bytes of its hash
//
// Every handle is a multiple of 4 bytes long: go-nfs reads a handle
// without the XDR padding after it, and would misread what follows.
const (
	handleVersion = 1
	maxHandle     = 64 // NFSv3's FHSIZE3
	handleHeader  = 12
	// maxInlinePath is the longest scratch path a handle holds itself;
	// longer ones are hashed and remembered by their export.
	maxInlinePath = maxHandle - handleHeader
	hashedPathLen = 16
)

type handleKind byte

const (
	kindRoot handleKind = iota + 1
	kindDir
	kindDescriptor
	kindFlat
	kindScratch
	kindScratchHashed
)

type exportID [8]byte

func idOf(name string) exportID {
	sum := sha256.Sum256([]byte(name))
	return exportID(sum[:8])
}

type pathHash [hashedPathLen]byte

func hashPath(p string) pathHash {
	sum := sha256.Sum256([]byte(p))
	return pathHash(sum[:hashedPathLen])
}

var errBadHandle = errors.New("not a handle of this server")

// encodeHandle makes the handle of path (split in components) in the tree.
func (s *Server) encodeHandle(path []string) []byte {
	if len(path) == 0 {
		return []byte{handleVersion, byte(kindRoot), 0, 0}
	}
	id := idOf(path[0])
	h := make([]byte, handleHeader, maxHandle)
	h[0] = handleVersion
	copy(h[4:], id[:])
	switch {
	case len(path) == 1:
		h[1] = byte(kindDir)
	case len(path) == 2 && path[1] == descriptorName(path[0]):
		h[1] = byte(kindDescriptor)
	case len(path) == 2 && path[1] == flatName(path[0]):
		h[1] = byte(kindFlat)
	default:
		rel := strings.Join(path[1:], "/")
		if len(rel) <= maxInlinePath {
			h[1] = byte(kindScratch)
			h = append(h, rel...)
			for len(h)%4 != 0 {
				h = append(h, 0)
			}
			return h
		}
		h[1] = byte(kindScratchHashed)
		sum := hashPath(rel)
		if e := s.exportByID(id); e != nil {
			e.rememberPath(sum, rel)
		}
		return append(h, sum[:]...)
	}
	return h
}

// decodeHandle returns the path in the tree that h names; an error when
// h is malformed or its export is gone.
func (s *Server) decodeHandle(h []byte) ([]string, error) {
	if len(h) < 4 || h[0] != handleVersion {
		return nil, errBadHandle
	}
	kind := handleKind(h[1])
	if kind == kindRoot {
		if len(h) != 4 {
			return nil, errBadHandle
		}
		return []string{}, nil
	}
	if len(h) < handleHeader || len(h) > maxHandle {
		return nil, errBadHandle
	}
	e := s.exportByID(exportID(h[4:12]))
	if e == nil {
		return nil, errStale
	}
	rest := h[handleHeader:]
	switch kind {
	case kindDir:
		return []string{e.name}, nil
	case kindDescriptor, kindFlat:
		file := descriptorName(e.name)
		if kind == kindFlat {
			file = flatName(e.name)
		}
		if e.hidden(file) { // a client removed it
			return nil, errStale
		}
		return []string{e.name, file}, nil
	case kindScratch:
		return scratchPath(e.name, strings.TrimRight(string(rest), "\x00"))
	case kindScratchHashed:
		if len(rest) != hashedPathLen {
			return nil, errBadHandle
		}
		rel, ok := e.recallPath(pathHash(rest))
		if !ok {
			return nil, errStale
		}
		return scratchPath(e.name, rel)
	}
	return nil, errBadHandle
}

func scratchPath(name, rel string) ([]string, error) {
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if !validComponent(p) {
			return nil, errBadHandle
		}
	}
	return append([]string{name}, parts...), nil
}

// validComponent reports whether p may be one name in a path: not empty,
// not "." or "..", no slash or NUL.
func validComponent(p string) bool {
	return p != "" && p != "." && p != ".." && !strings.ContainsAny(p, "/\x00")
}
