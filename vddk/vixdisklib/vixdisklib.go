//go:build vddk

package vixdisklib

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "vixdisklib.h"

// The library's entry points, resolved by dlsym. Those marked optional
// are missing from older VDDKs; the binding then does without.
typedef struct {
	void *dl;
	__typeof__(&VixDiskLib_InitEx) InitEx;
	__typeof__(&VixDiskLib_Exit) Exit;
	__typeof__(&VixDiskLib_ConnectEx) ConnectEx;
	__typeof__(&VixDiskLib_Disconnect) Disconnect;
	__typeof__(&VixDiskLib_Open) Open;
	__typeof__(&VixDiskLib_Close) Close;
	__typeof__(&VixDiskLib_GetInfo) GetInfo;
	__typeof__(&VixDiskLib_FreeInfo) FreeInfo;
	__typeof__(&VixDiskLib_Read) Read;
	__typeof__(&VixDiskLib_Write) Write;
	__typeof__(&VixDiskLib_GetErrorText) GetErrorText;
	__typeof__(&VixDiskLib_FreeErrorText) FreeErrorText;
	__typeof__(&VixDiskLib_GetTransportMode) GetTransportMode;           // optional
	__typeof__(&VixDiskLib_ReadAsync) ReadAsync;                         // optional
	__typeof__(&VixDiskLib_Wait) Wait;                                   // optional
	__typeof__(&VixDiskLib_QueryAllocatedBlocks) QueryAllocatedBlocks;   // optional
	__typeof__(&VixDiskLib_FreeBlockList) FreeBlockList;                 // optional
} vix_lib;

#define VIX_SYM(l, name, required) do { \
	*(void **)&(l)->name = dlsym((l)->dl, "VixDiskLib_" #name); \
	if ((required) && !(l)->name) return "VixDiskLib_" #name; \
} while (0)

// vix_open loads the library; it returns NULL, or what is missing.
static const char *vix_open(vix_lib *l, const char *path) {
	memset(l, 0, sizeof *l);
	l->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!l->dl) return dlerror();
	VIX_SYM(l, InitEx, 1);
	VIX_SYM(l, Exit, 1);
	VIX_SYM(l, ConnectEx, 1);
	VIX_SYM(l, Disconnect, 1);
	VIX_SYM(l, Open, 1);
	VIX_SYM(l, Close, 1);
	VIX_SYM(l, GetInfo, 1);
	VIX_SYM(l, FreeInfo, 1);
	VIX_SYM(l, Read, 1);
	VIX_SYM(l, Write, 1);
	VIX_SYM(l, GetErrorText, 1);
	VIX_SYM(l, FreeErrorText, 1);
	VIX_SYM(l, GetTransportMode, 0);
	VIX_SYM(l, ReadAsync, 0);
	VIX_SYM(l, Wait, 0);
	VIX_SYM(l, QueryAllocatedBlocks, 0);
	VIX_SYM(l, FreeBlockList, 0);
	if (!l->Wait) l->ReadAsync = NULL;
	if (!l->FreeBlockList) l->QueryAllocatedBlocks = NULL;
	return NULL;
}

static void vix_close(vix_lib *l) { if (l->dl) dlclose(l->dl); l->dl = NULL; }

// Calls through the table: cgo cannot call function pointers itself.
static VixError vix_init(vix_lib *l, const char *libDir, const char *config) {
	return l->InitEx(7, 0, NULL, NULL, NULL, libDir, config);
}
static void vix_exit(vix_lib *l) { l->Exit(); }
static VixError vix_connect(vix_lib *l, VixDiskLibConnectParams *p, char ro, const char *snap, const char *transports, VixDiskLibConnection *c) {
	return l->ConnectEx(p, ro, snap, transports, c);
}
static VixError vix_disconnect(vix_lib *l, VixDiskLibConnection c) { return l->Disconnect(c); }
static VixError vix_diskopen(vix_lib *l, VixDiskLibConnection c, const char *path, uint32_t flags, VixDiskLibHandle *h) {
	return l->Open(c, path, flags, h);
}
static VixError vix_diskclose(vix_lib *l, VixDiskLibHandle h) { return l->Close(h); }
static VixError vix_capacity(vix_lib *l, VixDiskLibHandle h, uint64_t *sectors) {
	VixDiskLibInfo *info = NULL;
	VixError err = l->GetInfo(h, &info);
	if (err == VIX_OK) {
		*sectors = info->capacity;
		l->FreeInfo(info);
	}
	return err;
}
static const char *vix_transport(vix_lib *l, VixDiskLibHandle h) {
	return l->GetTransportMode ? l->GetTransportMode(h) : NULL;
}
static VixError vix_read(vix_lib *l, VixDiskLibHandle h, uint64_t s, uint64_t n, uint8_t *b) { return l->Read(h, s, n, b); }
static VixError vix_write(vix_lib *l, VixDiskLibHandle h, uint64_t s, uint64_t n, const uint8_t *b) { return l->Write(h, s, n, b); }
static int vix_has_async(vix_lib *l) { return l->ReadAsync != NULL; }
static int vix_has_qab(vix_lib *l) { return l->QueryAllocatedBlocks != NULL; }

// An asynchronous read's result, set by vix_done when it completes.
typedef struct { VixError err; int done; } vix_req;
static void vix_done(void *data, VixError err) { vix_req *r = data; r->err = err; r->done = 1; }
static VixError vix_read_async(vix_lib *l, VixDiskLibHandle h, uint64_t s, uint64_t n, uint8_t *b, vix_req *r) {
	r->done = 0;
	r->err = VIX_OK;
	return l->ReadAsync(h, s, n, b, vix_done, r);
}
static VixError vix_wait(vix_lib *l, VixDiskLibHandle h) { return l->Wait(h); }

static VixError vix_allocated(vix_lib *l, VixDiskLibHandle h, uint64_t s, uint64_t n, uint64_t chunk, VixDiskLibBlockList **list) {
	return l->QueryAllocatedBlocks(h, s, n, chunk, list);
}
static void vix_free_blocks(vix_lib *l, VixDiskLibBlockList *list) { l->FreeBlockList(list); }
static VixDiskLibBlock vix_block(VixDiskLibBlockList *list, uint32_t i) { return list->blocks[i]; }

// vix_error_text copies the library's text of err into a malloc'd string.
static char *vix_error_text(vix_lib *l, VixError err) {
	char *t = l->GetErrorText(err, NULL);
	char *out = strdup(t ? t : "unknown error");
	if (t) l->FreeErrorText(t);
	return out;
}

static VixDiskLibConnectParams *vix_params(void) { return calloc(1, sizeof(VixDiskLibConnectParams)); }
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/astrolabe-appliance/astrolabe/vddk"
)

const sector = C.VIXDISKLIB_SECTOR_SIZE

// Library is a loaded and initialised libvixDiskLib. VDDK allows one per
// process: load it once and share it.
type Library struct {
	lib  *C.vix_lib
	path string
}

// Load loads libvixDiskLib from path (the .so, or a VDDK distribution's
// directory, whose lib64 holds it) and initialises it. configFile, if not
// empty, is VDDK's own configuration file (logging, transports tuning).
func Load(path, configFile string) (*Library, error) {
	so, libDir, err := findLibrary(path)
	if err != nil {
		return nil, err
	}
	l := &Library{lib: (*C.vix_lib)(C.calloc(1, C.size_t(unsafe.Sizeof(C.vix_lib{})))), path: so}
	cso := C.CString(so)
	defer C.free(unsafe.Pointer(cso))
	if missing := C.vix_open(l.lib, cso); missing != nil {
		msg := C.GoString(missing)
		C.vix_close(l.lib)
		C.free(unsafe.Pointer(l.lib))
		return nil, fmt.Errorf("load VDDK %s: %s", so, msg)
	}
	cdir, ccfg := C.CString(libDir), (*C.char)(nil)
	defer C.free(unsafe.Pointer(cdir))
	if configFile != "" {
		ccfg = C.CString(configFile)
		defer C.free(unsafe.Pointer(ccfg))
	}
	if err := l.check("VixDiskLib_InitEx", C.vix_init(l.lib, cdir, ccfg)); err != nil {
		C.vix_close(l.lib)
		C.free(unsafe.Pointer(l.lib))
		return nil, err
	}
	return l, nil
}

// findLibrary resolves path to the library file and VDDK's directory.
func findLibrary(path string) (so, libDir string, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", "", fmt.Errorf("VDDK library: %w", err)
	}
	if !fi.IsDir() {
		return path, filepath.Dir(filepath.Dir(path)), nil
	}
	for _, name := range []string{"lib64/libvixDiskLib.so", "lib64/libvixDiskLib.so.8", "lib64/libvixDiskLib.so.7", "libvixDiskLib.so", "libvixDiskLib.so.8"} {
		if _, err := os.Stat(filepath.Join(path, name)); err == nil {
			return filepath.Join(path, name), path, nil
		}
	}
	return "", "", fmt.Errorf("VDDK library: no libvixDiskLib.so in %s or its lib64", path)
}

// Close ends the library's use (VixDiskLib_Exit) and unloads it.
func (l *Library) Close() error {
	if l.lib == nil {
		return nil
	}
	C.vix_exit(l.lib)
	C.vix_close(l.lib)
	C.free(unsafe.Pointer(l.lib))
	l.lib = nil
	return nil
}

// Error is a VixError with the library's text for it.
type Error struct {
	Op   string
	Code uint64
	Text string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s (VixError %d)", e.Op, e.Text, e.Code) }

// Code of the error kinds callers tell apart.
const (
	CodeFileNotFound = C.VIX_E_FILE_NOT_FOUND
	CodeReadOnly     = C.VIX_E_FILE_READ_ONLY
)

func (l *Library) check(op string, err C.VixError) error {
	if err == C.VIX_OK {
		return nil
	}
	t := C.vix_error_text(l.lib, err)
	defer C.free(unsafe.Pointer(t))
	// The low 16 bits are the error code; the others may carry details.
	return &Error{Op: op, Code: uint64(err) & 0xffff, Text: strings.TrimSpace(C.GoString(t))}
}

// ConnectParams say which disks a connection reaches and how.
type ConnectParams struct {
	Server     string // vCenter or ESXi host name
	Port       int    // 0: 443
	Thumbprint string // SHA-1 of the server's certificate, "AA:BB:..."
	User       string
	Password   string
	// A First Class Disk (and a snapshot of it), or a VM (and a snapshot).
	FCD, FCDDatastore, FCDSnapshot string // FCD uuid, datastore moref, snapshot id
	VM, VMSnapshot                 string // morefs: "vm-42", "snapshot-7"
	// Transports to try, in order: hotadd, san, nbdssl, nbd. Default
	// nbdssl then nbd.
	Transports []string
	ReadOnly   bool
}

// Conn is a connection to a server for the disks of one FCD or VM.
type Conn struct {
	l      *Library
	c      C.VixDiskLibConnection
	params *C.VixDiskLibConnectParams
	cstrs  []*C.char
}

// Connect opens a connection. The parameters' strings stay allocated
// until Close: VDDK may keep pointers to them.
func (l *Library) Connect(ctx context.Context, p ConnectParams) (*Conn, error) {
	if (p.FCD == "") == (p.VM == "") {
		return nil, errors.New("VDDK connect: name either an FCD or a VM")
	}
	c := &Conn{l: l, params: C.vix_params()}
	str := func(s string) *C.char {
		if s == "" {
			return nil
		}
		cs := C.CString(s)
		c.cstrs = append(c.cstrs, cs)
		return cs
	}
	cp := c.params
	cp.serverName = str(p.Server)
	cp.thumbPrint = str(p.Thumbprint)
	cp.port = C.uint32_t(p.Port)
	cp.credType = C.VIXDISKLIB_CRED_UID
	uid := (*struct{ userName, password *C.char })(unsafe.Pointer(&cp.creds))
	uid.userName, uid.password = str(p.User), str(p.Password)
	var snapshotRef *C.char
	if p.FCD != "" {
		cp.specType = C.VIXDISKLIB_SPEC_VSTORAGE_OBJECT
		spec := (*C.VixDiskLibVStorageObjectSpec)(unsafe.Pointer(&cp.spec))
		spec.id, spec.datastoreMoRef, spec.ssId = str(p.FCD), str(p.FCDDatastore), str(p.FCDSnapshot)
	} else {
		cp.specType = C.VIXDISKLIB_SPEC_VMX
		cp.vmxSpec = str("moref=" + p.VM)
		snapshotRef = str(p.VMSnapshot)
	}
	transports := p.Transports
	if len(transports) == 0 {
		transports = []string{"nbdssl", "nbd"}
	}
	ro := C.char(0)
	if p.ReadOnly {
		ro = 1
	}
	if err := l.check("VixDiskLib_ConnectEx "+p.Server, C.vix_connect(l.lib, cp, ro, snapshotRef, str(strings.Join(transports, ":")), &c.c)); err != nil {
		c.free()
		return nil, err
	}
	return c, nil
}

func (c *Conn) free() {
	for _, s := range c.cstrs {
		C.free(unsafe.Pointer(s))
	}
	c.cstrs = nil
	C.free(unsafe.Pointer(c.params))
	c.params = nil
}

// Close disconnects.
func (c *Conn) Close() error {
	if c.params == nil {
		return nil
	}
	err := c.l.check("VixDiskLib_Disconnect", C.vix_disconnect(c.l.lib, c.c))
	c.free()
	return err
}

// Open opens a disk of the connection: path is the disk's datastore path
// ("[ds] vm/vm.vmdk") for a VM, and is ignored by VDDK for an FCD.
func (c *Conn) Open(ctx context.Context, path string, writable bool) (*Disk, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	flags := C.uint32_t(C.VIXDISKLIB_FLAG_OPEN_READ_ONLY)
	if writable {
		flags = 0
	}
	d := &Disk{l: c.l}
	if err := c.l.check("VixDiskLib_Open "+path, C.vix_diskopen(c.l.lib, c.c, cpath, flags, &d.h)); err != nil {
		return nil, err
	}
	var sectors C.uint64_t
	if err := c.l.check("VixDiskLib_GetInfo "+path, C.vix_capacity(c.l.lib, d.h, &sectors)); err != nil {
		C.vix_diskclose(c.l.lib, d.h)
		return nil, err
	}
	d.size = int64(sectors) * sector
	d.name = path
	return d, nil
}

// Disk is an open disk. VDDK handles are not safe for concurrent use:
// calls are serialised.
type Disk struct {
	l    *Library
	name string
	size int64

	mu sync.Mutex
	h  C.VixDiskLibHandle
}

var _ vddk.Disk = (*Disk)(nil)

// Reads are split into requests of this size, this many in flight.
const (
	requestSectors = 2048 // 1 MiB
	inFlight       = 4
)

// Size implements vddk.Disk.
func (d *Disk) Size() int64 { return d.size }

// TransportMode is the transport VDDK chose (nbdssl, hotadd, ...).
func (d *Disk) TransportMode() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.h == nil {
		return ""
	}
	return C.GoString(C.vix_transport(d.l.lib, d.h))
}

// ReadAt implements vddk.Disk. VDDK reads whole sectors into C memory:
// the range is widened to sectors and copied out.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset", d.name)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), d.size-off)
	first, end := off/sector, (off+want+sector-1)/sector
	buf := C.malloc(C.size_t((end - first) * sector))
	if buf == nil {
		return 0, errors.New("out of memory")
	}
	defer C.free(buf)
	d.mu.Lock()
	err := d.readSectors(uint64(first), uint64(end-first), buf)
	d.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n := copy(p, unsafe.Slice((*byte)(buf), (end-first)*sector)[off-first*sector:])
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// readSectors reads into buf, several requests in flight when the library
// has ReadAsync. d.mu is held.
func (d *Disk) readSectors(first, count uint64, buf unsafe.Pointer) error {
	if d.h == nil {
		return fmt.Errorf("read %s: disk is closed", d.name)
	}
	at := func(s uint64) *C.uint8_t { return (*C.uint8_t)(unsafe.Add(buf, (s-first)*sector)) }
	if C.vix_has_async(d.l.lib) == 0 || count <= requestSectors {
		for s := first; s < first+count; s += requestSectors {
			n := min(requestSectors, first+count-s)
			if err := d.l.check(fmt.Sprintf("VixDiskLib_Read %s at sector %d", d.name, s), C.vix_read(d.l.lib, d.h, C.uint64_t(s), C.uint64_t(n), at(s))); err != nil {
				return err
			}
		}
		return nil
	}
	reqs := (*[inFlight]C.vix_req)(C.calloc(inFlight, C.size_t(unsafe.Sizeof(C.vix_req{}))))
	defer C.free(unsafe.Pointer(reqs))
	for s := first; s < first+count; {
		var issued []uint64
		for i := 0; i < inFlight && s < first+count; i++ {
			n := min(requestSectors, first+count-s)
			err := C.vix_read_async(d.l.lib, d.h, C.uint64_t(s), C.uint64_t(n), at(s), &reqs[i])
			if err != C.VIX_ASYNC && err != C.VIX_OK {
				C.vix_wait(d.l.lib, d.h) // buffers must outlive what was issued
				return d.l.check(fmt.Sprintf("VixDiskLib_ReadAsync %s at sector %d", d.name, s), err)
			}
			issued = append(issued, s)
			s += n
		}
		if err := d.l.check("VixDiskLib_Wait "+d.name, C.vix_wait(d.l.lib, d.h)); err != nil {
			return err
		}
		for i, at := range issued {
			if reqs[i].done == 0 {
				return fmt.Errorf("VixDiskLib_ReadAsync %s at sector %d: not completed after Wait", d.name, at)
			}
			if err := d.l.check(fmt.Sprintf("VixDiskLib_ReadAsync %s at sector %d", d.name, at), reqs[i].err); err != nil {
				return err
			}
		}
	}
	return nil
}

// WriteAt implements vddk.Disk; partial sectors at either end are read,
// merged and written whole.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write %s: [%d, %d) is outside the disk's %d bytes", d.name, off, off+int64(len(p)), d.size)
	}
	if len(p) == 0 {
		return 0, nil
	}
	first, end := off/sector, (off+int64(len(p))+sector-1)/sector
	size := (end - first) * sector
	buf := C.malloc(C.size_t(size))
	if buf == nil {
		return 0, errors.New("out of memory")
	}
	defer C.free(buf)
	b := unsafe.Slice((*byte)(buf), size)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.h == nil {
		return 0, fmt.Errorf("write %s: disk is closed", d.name)
	}
	if off%sector != 0 {
		if err := d.readSectors(uint64(first), 1, buf); err != nil {
			return 0, err
		}
	}
	if tail := (off + int64(len(p))) % sector; tail != 0 && (end-1 > first || off%sector == 0) {
		if err := d.readSectors(uint64(end-1), 1, unsafe.Add(buf, size-sector)); err != nil {
			return 0, err
		}
	}
	copy(b[off-first*sector:], p)
	for s := first; s < end; s += requestSectors {
		n := min(requestSectors, end-s)
		if err := d.l.check(fmt.Sprintf("VixDiskLib_Write %s at sector %d", d.name, s),
			C.vix_write(d.l.lib, d.h, C.uint64_t(s), C.uint64_t(n), (*C.uint8_t)(unsafe.Add(buf, (s-first)*sector)))); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// queryChunk is the granularity of allocation queries (64 KiB), and
// queryPiece the most one call asks about.
const (
	queryChunk = C.VIXDISKLIB_MIN_CHUNK_SIZE
	queryPiece = 1 << 21 // sectors: 1 GiB
)

// Allocated implements vddk.Disk with QueryAllocatedBlocks; a library
// without it reports the whole disk.
func (d *Disk) Allocated(ctx context.Context) ([]vddk.Range, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.h == nil {
		return nil, fmt.Errorf("allocated blocks of %s: disk is closed", d.name)
	}
	total := uint64(d.size / sector)
	if C.vix_has_qab(d.l.lib) == 0 {
		return []vddk.Range{{Offset: 0, Length: d.size}}, nil
	}
	var out []vddk.Range
	add := func(off, n int64) {
		if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length == off {
			out[k-1].Length += n
			return
		}
		out = append(out, vddk.Range{Offset: off, Length: n})
	}
	// The query wants whole chunks; a tail shorter than one is reported
	// allocated.
	aligned := total / queryChunk * queryChunk
	for s := uint64(0); s < aligned; s += queryPiece {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(queryPiece, aligned-s)
		var list *C.VixDiskLibBlockList
		if err := d.l.check(fmt.Sprintf("VixDiskLib_QueryAllocatedBlocks %s at sector %d", d.name, s),
			C.vix_allocated(d.l.lib, d.h, C.uint64_t(s), C.uint64_t(n), queryChunk, &list)); err != nil {
			return nil, err
		}
		for i := C.uint32_t(0); i < list.numBlocks; i++ {
			b := C.vix_block(list, i)
			add(int64(b.offset)*sector, int64(b.length)*sector)
		}
		C.vix_free_blocks(d.l.lib, list)
	}
	if aligned < total {
		add(int64(aligned)*sector, int64(total-aligned)*sector)
	}
	return out, nil
}

// Close implements vddk.Disk.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.h == nil {
		return nil
	}
	err := d.l.check("VixDiskLib_Close "+d.name, C.vix_diskclose(d.l.lib, d.h))
	d.h = nil
	return err
}
