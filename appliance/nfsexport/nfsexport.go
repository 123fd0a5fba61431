// Package nfsexport serves instant-recovery disks to vSphere over NFSv3
// (github.com/willscott/go-nfs), as datastore files ESXi can boot a VM
// from. The export "/" holds one directory per disk, <name>/, with
//
//   - <name>.vmdk: a VMDK text descriptor (createType "vmfs") of one
//     extent. ESXi rewrites it (a new CID after the first write, ddb
//     lines): clients may write and truncate it, and their version is
//     served from then on, also after an appliance restart; but its
//     extent line stays `RW <sectors> VMFS "<name>-flat.vmdk"`. A WRITE
//     or SETATTR that would change it, add another or cut it inside the
//     file name is refused (NFS3ERR_IO, go-nfs's answer to any refused
//     WRITE; NFS3ERR_ACCES for SETATTR) and the descriptor stays as it
//     was: refused rather than repaired, so that what a client reads is
//     what it wrote, the client learns at once, and no client can point
//     ESXi or a storage vMotion at another file;
//   - <name>-flat.vmdk: the disk's bytes, read and written in place, of
//     a fixed size;
//   - whatever the clients create beside them (the VM's .vmx, .nvram,
//     .log, .vswp files), kept in a scratch directory on local disk and
//     deleted with the export.
//
// After a storage vMotion ESXi removes the source disk's files. REMOVE of
// the descriptor or the flat file succeeds and hides it: no longer listed,
// LOOKUP finds nothing, its handles are stale, its name cannot be made
// again; the Disk is untouched until Remove ends the export. The hiding
// outlives an appliance restart (a marker in the scratch directory), so
// that a migrated VM's host never sees its old disk come back. RENAME of
// either stays refused. The client's descriptor and the markers live in
// the scratch directory's .nfsexport, which clients cannot see.
//
// MOUNT and NFS share one TCP port, and a portmapper GETPORT on it answers
// that same port: clients that take ports as options (libnfs's nfsport
// and mountport) use any port; those that ask a portmapper (ESXi, qemu)
// need Serve on port 111 as well, and ESXi NFS on 2049. Any export
// directory can be mounted ("/" or "/<name>", a datastore per VM).
//
// Only clients whose address is allowed are served. NFS has no
// authentication of its own (AUTH_SYS is the client's word): the address
// list is the access control. go-nfs answers the calls; the server checks
// each record before go-nfs decodes it, and answers itself the few calls
// go-nfs gets wrong (see reply.go).
//
// Every WRITE to a flat file is synced to its Disk before the reply (go-nfs
// replies FILE_SYNC whatever the client asked), so COMMIT has nothing left
// to do.
package nfsexport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
)

// Disk is the writable image of an instant-recovery export
// (pe.WritableImage fits it). ReadAt and WriteAt must be safe for
// concurrent use.
type Disk interface {
	io.ReaderAt
	io.WriterAt
	Size() int64
	Sync() error
}

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	// ScratchDir is where client-made files live, one subdirectory per
	// export.
	ScratchDir string
	// Allow lists the client addresses served; empty means loopback only.
	Allow []netip.Prefix
}

var (
	// ErrExists is returned by Add for a name already exported.
	ErrExists = errors.New("export exists")
	// ErrNotFound is returned by Remove for a name not exported.
	ErrNotFound = errors.New("no such export")
	// errStale is a handle of an export that was removed.
	errStale = errors.New("export removed")
)

// maxConns bounds the connections served at once: each may hold a 16 MiB
// READ reply and a request as large being decoded.
const maxConns = 32

// Server serves the exports added to it.
type Server struct {
	log     *slog.Logger
	scratch string
	allow   []netip.Prefix
	tree    *tree

	mu      sync.RWMutex
	exports map[exportID]*export
	rootMod time.Time
}

// New returns a Server with no exports.
func New(opts Options) (*Server, error) {
	if opts.ScratchDir == "" {
		return nil, errors.New("nfsexport: no scratch directory")
	}
	if err := os.MkdirAll(opts.ScratchDir, 0o700); err != nil {
		return nil, fmt.Errorf("nfsexport: scratch directory: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:     log,
		scratch: opts.ScratchDir,
		allow:   slices.Clone(opts.Allow),
		exports: map[exportID]*export{},
		rootMod: time.Now(),
	}
	s.tree = &tree{s: s}
	routeGoNFS(log)
	return s, nil
}

var validName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Add exports d as the directory name. Files a client made there before
// (the scratch directory survives a restart of the appliance) are kept,
// and so are the descriptor a client wrote and the hiding of the disk
// files a client removed.
func (s *Server) Add(name string, d Disk) error {
	if !validName.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("nfsexport: export name %q: want 1 to 64 of A-Z a-z 0-9 . _ -", name)
	}
	size := d.Size()
	if size <= 0 || size%sectorSize != 0 {
		return fmt.Errorf("nfsexport: export %s: disk size %d is not a positive multiple of %d", name, size, sectorSize)
	}
	id := idOf(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, taken := s.exports[id]; taken {
		return fmt.Errorf("nfsexport: export %s: %w", name, ErrExists)
	}
	dir := filepath.Join(s.scratch, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("nfsexport: export %s: %w", name, err)
	}
	now := time.Now()
	e := &export{
		name:       name,
		disk:       d,
		added:      now,
		scratch:    osfs.New(dir, osfs.WithBoundOS()),
		scratchDir: dir,
		log:        s.log.With("export", name),
	}
	if err := e.loadState(); err != nil {
		return fmt.Errorf("nfsexport: export %s: state: %w", name, err)
	}
	e.modified.Store(now.UnixNano())
	s.exports[id] = e
	s.rootMod = now
	s.log.Info("nfs export added", "export", name, "size", size)
	return nil
}

// Remove stops exporting name and deletes the files clients made in its
// directory, with the state of its descriptor and flat file. Clients' later calls on its handles get NFS3ERR_STALE.
func (s *Server) Remove(name string) error {
	id := idOf(name)
	s.mu.Lock()
	e, ok := s.exports[id]
	if ok && e.name == name {
		delete(s.exports, id)
		s.rootMod = time.Now()
	}
	s.mu.Unlock()
	if !ok || e.name != name {
		return fmt.Errorf("nfsexport: export %s: %w", name, ErrNotFound)
	}
	e.ops.Lock()
	e.removed = true
	e.ops.Unlock()
	if err := os.RemoveAll(e.scratchDir); err != nil {
		return fmt.Errorf("nfsexport: export %s: scratch files: %w", name, err)
	}
	s.log.Info("nfs export removed", "export", name)
	return nil
}

// Discard deletes the files clients made in the directory name of an
// export that is not served and will not be again (they survive a
// restart for an Add of name).
func (s *Server) Discard(name string) error {
	if !validName.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("nfsexport: export name %q: want 1 to 64 of A-Z a-z 0-9 . _ -", name)
	}
	s.mu.Lock()
	e, served := s.exports[idOf(name)]
	served = served && e.name == name
	s.mu.Unlock()
	if served {
		return fmt.Errorf("nfsexport: export %s is served: %w", name, ErrExists)
	}
	if err := os.RemoveAll(filepath.Join(s.scratch, name)); err != nil {
		return fmt.Errorf("nfsexport: export %s: scratch files: %w", name, err)
	}
	return nil
}

// Serve answers MOUNT and NFS calls on l until ctx ends, then closes l
// and every connection and returns nil.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	gl := &guardedListener{Listener: l, s: s, conns: map[*guardedConn]struct{}{}}
	srv := &nfs.Server{Handler: &handler{s: s}, Context: ctx}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		gl.shutdown()
	}()
	err := srv.Serve(gl)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("nfsexport: serve: %w", err)
}

func (s *Server) exportByID(id exportID) *export {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.exports[id]
}

func (s *Server) exportByName(name string) *export {
	e := s.exportByID(idOf(name))
	if e == nil || e.name != name {
		return nil
	}
	return e
}

// exportList returns the exports sorted by name.
func (s *Server) exportList() []*export {
	s.mu.RLock()
	list := slices.Collect(maps.Values(s.exports))
	s.mu.RUnlock()
	slices.SortFunc(list, func(a, b *export) int { return strings.Compare(a.name, b.name) })
	return list
}

func (s *Server) rootModified() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rootMod
}

// allowed reports whether a client at addr is served.
func (s *Server) allowed(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false // not an IP address: a Unix socket or worse
	}
	ip := ap.Addr().Unmap()
	if len(s.allow) == 0 {
		return ip.IsLoopback()
	}
	for _, p := range s.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// export is one added disk.
type export struct {
	name       string
	disk       Disk
	added      time.Time
	modified   atomic.Int64 // the flat file's mtime, in Unix nanoseconds
	scratch    billy.Filesystem
	scratchDir string
	log        *slog.Logger

	mu        sync.Mutex
	longPaths map[pathHash]string // scratch paths too long for a handle

	// fmu guards what clients change of the disk's two files (state.go).
	fmu     sync.Mutex
	desc    []byte // the descriptor served: made by Add, or a client's
	descMod time.Time
	gone    map[string]bool // the disk files a client removed

	// ops is held (read) by calls that make entries in the scratch
	// directory, and (write) by Remove while it marks the export removed,
	// so that none recreates the directory Remove deletes.
	ops     sync.RWMutex
	removed bool
}

// makeInScratch runs f, which makes an entry in the scratch directory,
// unless the export was removed.
func (e *export) makeInScratch(op, p string, f func() error) error {
	e.ops.RLock()
	defer e.ops.RUnlock()
	if e.removed {
		return &fs.PathError{Op: op, Path: p, Err: fs.ErrNotExist}
	}
	return f()
}

// maxLongPaths bounds the long scratch paths an export remembers; past
// it they are forgotten and their handles go stale (a client that made
// that many long-named files is not ESXi running one VM).
const maxLongPaths = 1 << 16

func (e *export) rememberPath(h pathHash, p string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.longPaths == nil || len(e.longPaths) >= maxLongPaths {
		e.longPaths = map[pathHash]string{}
	}
	e.longPaths[h] = p
}

func (e *export) recallPath(h pathHash) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.longPaths[h]
	return p, ok
}

func (e *export) touch() { e.modified.Store(time.Now().UnixNano()) }

func (e *export) descriptorInfo() fileInfo {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	return fileInfo{name: descriptorName(e.name), size: int64(len(e.desc)), mode: 0o644, mtime: e.descMod}
}

func (e *export) flatInfo() fileInfo {
	return fileInfo{name: flatName(e.name), size: e.disk.Size(), mode: 0o644, mtime: time.Unix(0, e.modified.Load())}
}

// guard runs a call into the Disk, turning a panic in it into an error:
// go-nfs serves each connection on a goroutine without a recover, where a
// panic would end the process.
func (e *export) guard(op string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("nfs export: disk panicked", "op", op, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("%s: disk %s panicked: %v", e.name, op, r)
		}
	}()
	return f()
}

// handler is the nfs.Handler of a Server.
type handler struct{ s *Server }

// Mount serves "/" and any directory under it, such as one export's
// "/<name>" (a datastore per VM; libnfs mounts a file's directory).
func (h *handler) Mount(ctx context.Context, c net.Conn, req nfs.MountRequest) (nfs.MountStatus, billy.Filesystem, []nfs.AuthFlavor) {
	client := c.RemoteAddr().String()
	if !h.s.allowed(c.RemoteAddr()) {
		return nfs.MountStatusErrAcces, nil, nil
	}
	p := strings.Trim(string(req.Dirpath), "/")
	fi, err := h.s.tree.Stat(p)
	if err != nil || !fi.IsDir() {
		h.s.log.Info("nfs mount refused: no such directory", "client", client, "path", string(req.Dirpath))
		return nfs.MountStatusErrNoEnt, nil, nil
	}
	h.s.log.Debug("nfs mount", "client", client, "path", string(req.Dirpath))
	var prefix []string
	if p != "" {
		prefix = strings.Split(p, "/")
	}
	return nfs.MountStatusOk, &mountPoint{tree: h.s.tree, prefix: prefix}, []nfs.AuthFlavor{nfs.AuthFlavorUnix, nfs.AuthFlavorNull}
}

// mountPoint is what Mount returns: go-nfs asks the handler for its
// handle (the empty path in it), which is the handle of prefix.
type mountPoint struct {
	*tree
	prefix []string
}

func (h *handler) Change(billy.Filesystem) billy.Change { return h.s.tree }

// FSStat reports the scratch directory's file system, plus the disks, as
// the datastore's capacity: ESXi checks the free space before it makes a
// VM's swap file there.
func (h *handler) FSStat(ctx context.Context, _ billy.Filesystem, st *nfs.FSStat) error {
	var sfs fsStat
	if err := statfs(h.s.scratch, &sfs); err != nil {
		return fmt.Errorf("nfsexport: statfs %s: %w", h.s.scratch, err)
	}
	var disks uint64
	for _, e := range h.s.exportList() {
		disks += uint64(e.disk.Size())
	}
	st.TotalSize = sfs.total + disks
	st.FreeSize = sfs.free
	st.AvailableSize = sfs.avail
	st.TotalFiles = sfs.files
	st.FreeFiles = sfs.freeFiles
	st.AvailableFiles = sfs.freeFiles
	return nil
}

func (h *handler) ToHandle(f billy.Filesystem, path []string) []byte {
	if mp, ok := f.(*mountPoint); ok {
		path = append(slices.Clone(mp.prefix), path...)
	}
	return h.s.encodeHandle(path)
}

func (h *handler) FromHandle(fh []byte) (billy.Filesystem, []string, error) {
	path, err := h.s.decodeHandle(fh)
	if err != nil {
		return nil, nil, err
	}
	return h.s.tree, path, nil
}

// InvalidateHandle has nothing to do: handles are computed, not stored.
func (h *handler) InvalidateHandle(billy.Filesystem, []byte) error { return nil }

// HandleLimit is large: go-nfs stops a READDIRPLUS reply at half of it.
func (h *handler) HandleLimit() int { return 1 << 30 }
