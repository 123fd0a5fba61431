//go:build vddk

package vixdisklib

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
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
	__typeof__(&VixDiskLib_WriteAsync) WriteAsync;                       // optional
	__typeof__(&VixDiskLib_Wait) Wait;                                   // optional
	__typeof__(&VixDiskLib_QueryAllocatedBlocks) QueryAllocatedBlocks;   // optional
	__typeof__(&VixDiskLib_FreeBlockList) FreeBlockList;                 // optional
} vix_lib;

#define VIX_SYM(l, name, required) do { \
	*(void **)&(l)->name = dlsym((l)->dl, "VixDiskLib_" #name); \
	if ((required) && !(l)->name) { *missing = "VixDiskLib_" #name; return NULL; } \
} while (0)

// vix_open loads the library. On failure it returns dlerror's text, or
// NULL with *missing naming the first required symbol it lacks.
static const char *vix_open(vix_lib *l, const char *path, const char **missing) {
	memset(l, 0, sizeof *l);
	*missing = NULL;
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
	VIX_SYM(l, WriteAsync, 0);
	VIX_SYM(l, Wait, 0);
	VIX_SYM(l, QueryAllocatedBlocks, 0);
	VIX_SYM(l, FreeBlockList, 0);
	if (!l->Wait) l->ReadAsync = NULL, l->WriteAsync = NULL;
	if (!l->FreeBlockList) l->QueryAllocatedBlocks = NULL;
	return NULL;
}

static void vix_close(vix_lib *l) { if (l->dl) dlclose(l->dl); l->dl = NULL; }

// VDDK's routine logging goes nowhere; its warnings and panics (after
// which it aborts) are worth a line on stderr.
static void vix_log_discard(const char *fmt, va_list args) {}
static void vix_log_stderr(const char *fmt, va_list args) {
	fputs("vixDiskLib: ", stderr);
	vfprintf(stderr, fmt, args);
}

// Calls through the table: cgo cannot call function pointers itself.
static VixError vix_init(vix_lib *l, const char *libDir, const char *config) {
	return l->InitEx(7, 0, vix_log_discard, vix_log_stderr, vix_log_stderr, libDir, config);
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
static VixError vix_io(vix_lib *l, VixDiskLibHandle h, int write, uint64_t s, uint64_t n, uint8_t *b) {
	return write ? l->Write(h, s, n, b) : l->Read(h, s, n, b);
}
static int vix_has_async(vix_lib *l, int write) { return write ? l->WriteAsync != NULL : l->ReadAsync != NULL; }
static int vix_has_qab(vix_lib *l) { return l->QueryAllocatedBlocks != NULL; }

// An asynchronous request's result, set by vix_done (on a thread of the
// library's) when it completes, and read after VixDiskLib_Wait.
typedef struct { VixError err; int done; } vix_req;
static void vix_done(void *data, VixError err) { vix_req *r = data; r->err = err; r->done = 1; }
static VixError vix_io_async(vix_lib *l, VixDiskLibHandle h, int write, uint64_t s, uint64_t n, uint8_t *b, vix_req *r) {
	r->done = 0;
	r->err = VIX_OK;
	return write ? l->WriteAsync(h, s, n, b, vix_done, r) : l->ReadAsync(h, s, n, b, vix_done, r);
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
	path string

	// mu serialises ConnectEx, Disconnect, Open and Close, which VDDK
	// does not make safe to call from several threads at once.
	mu  sync.Mutex
	lib *C.vix_lib
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
	if l.lib == nil {
		return nil, errors.New("load VDDK: out of memory")
	}
	fail := func(err error) (*Library, error) {
		C.vix_close(l.lib)
		C.free(unsafe.Pointer(l.lib))
		return nil, err
	}
	cso := C.CString(so)
	defer C.free(unsafe.Pointer(cso))
	var missing *C.char
	if msg := C.vix_open(l.lib, cso, &missing); msg != nil {
		return fail(fmt.Errorf("load VDDK: %s", C.GoString(msg)))
	}
	if missing != nil {
		return fail(fmt.Errorf("load VDDK %s: no symbol %s: not a VDDK 7 or later libvixDiskLib", so, C.GoString(missing)))
	}
	cdir, ccfg := C.CString(libDir), (*C.char)(nil)
	defer C.free(unsafe.Pointer(cdir))
	if configFile != "" {
		ccfg = C.CString(configFile)
		defer C.free(unsafe.Pointer(ccfg))
	}
	if err := l.check("VixDiskLib_InitEx "+so, C.vix_init(l.lib, cdir, ccfg)); err != nil {
		return fail(err)
	}
	return l, nil
}

// libraryNames are where a VDDK distribution keeps the library, newest
// first; the directory-level names serve stand-ins and copies.
var libraryNames = []string{
	"lib64/libvixDiskLib.so", "lib64/libvixDiskLib.so.9", "lib64/libvixDiskLib.so.8", "lib64/libvixDiskLib.so.7",
	"libvixDiskLib.so", "libvixDiskLib.so.9", "libvixDiskLib.so.8", "libvixDiskLib.so.7",
}

// findLibrary resolves path to the library file and the directory that
// InitEx wants: the distribution's, above lib64.
func findLibrary(path string) (so, libDir string, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", "", fmt.Errorf("VDDK library: %w", err)
	}
	if fi.IsDir() {
		for _, name := range libraryNames {
			if _, err := os.Stat(filepath.Join(path, name)); err == nil {
				return filepath.Join(path, name), path, nil
			}
		}
		return "", "", fmt.Errorf("VDDK library: no libvixDiskLib.so in %s or its lib64", path)
	}
	libDir = filepath.Dir(path)
	if filepath.Base(libDir) == "lib64" {
		libDir = filepath.Dir(libDir)
	}
	return path, libDir, nil
}

// Close ends the library's use (VixDiskLib_Exit) and unloads it. Its
// connections must be closed first.
func (l *Library) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
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
	Code uint64 // the VIX_E_ code: the low 16 bits of the VixError
	Text string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s (VixError %d)", e.Op, e.Text, e.Code) }

// Is makes VDDK's refusal to write a read-only disk vddk.ErrReadOnly.
func (e *Error) Is(target error) bool {
	return target == vddk.ErrReadOnly && e.Code == CodeReadOnly
}

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
	// The bits above the low 16 may carry details the text already gives.
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
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// C memory: the structure holds C pointers and VDDK may keep it.
	c := &Conn{l: l, params: (*C.VixDiskLibConnectParams)(C.calloc(1, C.size_t(unsafe.Sizeof(C.VixDiskLibConnectParams{}))))}
	if c.params == nil {
		return nil, errors.New("VDDK connect: out of memory")
	}
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
	// cgo cannot name a union's members.
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
	ctransports := str(strings.Join(transports, ":"))
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lib == nil {
		c.free()
		return nil, errors.New("VDDK connect: library closed")
	}
	if err := l.check("VixDiskLib_ConnectEx "+p.Server, C.vix_connect(l.lib, cp, ro, snapshotRef, ctransports, &c.c)); err != nil {
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

// Close disconnects. The connection's disks must be closed first.
func (c *Conn) Close() error {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
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
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	flags := C.uint32_t(C.VIXDISKLIB_FLAG_OPEN_READ_ONLY)
	if writable {
		flags = 0
	}
	d := &Disk{l: c.l, name: path}
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.params == nil {
		return nil, fmt.Errorf("open %s: connection closed", path)
	}
	if err := c.l.check("VixDiskLib_Open "+path, C.vix_diskopen(c.l.lib, c.c, cpath, flags, &d.h)); err != nil {
		return nil, err
	}
	var sectors C.uint64_t
	if err := c.l.check("VixDiskLib_GetInfo "+path, C.vix_capacity(c.l.lib, d.h, &sectors)); err != nil {
		C.vix_diskclose(c.l.lib, d.h)
		return nil, err
	}
	d.size = int64(sectors) * sector
	d.reqs = (*[inFlight]C.vix_req)(C.calloc(inFlight, C.size_t(unsafe.Sizeof(C.vix_req{}))))
	if d.reqs == nil {
		C.vix_diskclose(c.l.lib, d.h)
		return nil, fmt.Errorf("open %s: out of memory", path)
	}
	return d, nil
}

// Disk is an open disk. VDDK handles are not safe for concurrent use:
// calls are serialised.
type Disk struct {
	l    *Library
	name string
	size int64

	mu   sync.Mutex
	h    C.VixDiskLibHandle
	reqs *[inFlight]C.vix_req // the asynchronous requests' results
}

var _ vddk.Disk = (*Disk)(nil)

// I/O is split into requests of requestSectors, inFlight of them at a
// time, staged in C memory of at most window sectors: VDDK may use a
// buffer until Wait returns, which Go memory does not allow.
const (
	requestSectors = 2048 // 1 MiB
	inFlight       = 4
	window         = requestSectors * inFlight
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

// stage allocates the C buffer for a transfer of n bytes from off.
func stage(off, n int64) (unsafe.Pointer, []byte) {
	first, end := off/sector, (off+n+sector-1)/sector
	size := min(end-first, window) * sector
	buf := C.malloc(C.size_t(size)) // cgo's malloc does not return nil
	return buf, unsafe.Slice((*byte)(buf), size)
}

// ReadAt implements vddk.Disk. VDDK reads whole sectors: the range is
// widened to sectors, read a window at a time and copied out.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset", d.name)
	}
	if off >= d.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), d.size-off)
	if want == 0 {
		return 0, nil
	}
	buf, b := stage(off, want)
	defer C.free(buf)
	var n int64
	for n < want {
		pos := off + n
		first := pos / sector
		end := min((off+want+sector-1)/sector, first+window)
		d.mu.Lock()
		err := d.transfer(false, uint64(first), uint64(end-first), buf)
		d.mu.Unlock()
		if err != nil {
			return int(n), err
		}
		n += int64(copy(p[n:want], b[pos-first*sector:(end-first)*sector]))
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// WriteAt implements vddk.Disk; partial sectors at either end are read,
// merged and written whole.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if off < 0 || end > d.size {
		return 0, fmt.Errorf("write %s: [%d, %d) is outside the disk's %d bytes", d.name, off, end, d.size)
	}
	if len(p) == 0 {
		return 0, nil
	}
	buf, b := stage(off, int64(len(p)))
	defer C.free(buf)
	var n int64
	for n < int64(len(p)) {
		pos := off + n
		first := pos / sector
		last := min((end+sector-1)/sector, first+window)
		stop := min(end, last*sector) // of this window's bytes of p
		w := b[:(last-first)*sector]
		if err := d.writeWindow(uint64(first), uint64(last-first), buf, w, p[n:n+stop-pos], pos-first*sector); err != nil {
			return int(n), err
		}
		n += stop - pos
	}
	return len(p), nil
}

// writeWindow writes p at byte head of the sectors [first, first+count)
// staged in buf (w), reading first the partial sectors p does not cover.
// The lock spans the read and the write so that no other write comes
// between.
func (d *Disk) writeWindow(first, count uint64, buf unsafe.Pointer, w, p []byte, head int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if head != 0 {
		if err := d.transfer(false, first, 1, buf); err != nil {
			return err
		}
	}
	if tail := head + int64(len(p)); tail%sector != 0 && (count > 1 || head == 0) {
		if err := d.transfer(false, first+count-1, 1, unsafe.Pointer(&w[len(w)-sector])); err != nil {
			return err
		}
	}
	copy(w[head:], p)
	return d.transfer(true, first, count, buf)
}

// transfer reads or writes count sectors from first, with buf, C memory,
// as source or destination; several requests in flight when the library
// can. d.mu is held.
func (d *Disk) transfer(write bool, first, count uint64, buf unsafe.Pointer) error {
	if d.h == nil {
		return fmt.Errorf("%s: disk is closed", d.name)
	}
	op, cwrite := "Read", C.int(0)
	if write {
		op, cwrite = "Write", 1
	}
	at := func(s uint64) *C.uint8_t { return (*C.uint8_t)(unsafe.Add(buf, (s-first)*sector)) }
	if C.vix_has_async(d.l.lib, cwrite) == 0 || count <= requestSectors {
		for s := first; s < first+count; s += requestSectors {
			n := min(requestSectors, first+count-s)
			if err := d.l.check(fmt.Sprintf("VixDiskLib_%s %s at sector %d", op, d.name, s), C.vix_io(d.l.lib, d.h, cwrite, C.uint64_t(s), C.uint64_t(n), at(s))); err != nil {
				return err
			}
		}
		return nil
	}
	for s := first; s < first+count; {
		var issued [inFlight]uint64
		var pending [inFlight]bool
		k := 0
		for ; k < inFlight && s < first+count; k++ {
			n := min(requestSectors, first+count-s)
			switch err := C.vix_io_async(d.l.lib, d.h, cwrite, C.uint64_t(s), C.uint64_t(n), at(s), &d.reqs[k]); err {
			case C.VIX_ASYNC:
				pending[k] = true
			case C.VIX_OK: // done already
			default:
				// What was issued may still use buf: wait before
				// returning, and so before the caller frees it.
				C.vix_wait(d.l.lib, d.h)
				return d.l.check(fmt.Sprintf("VixDiskLib_%sAsync %s at sector %d", op, d.name, s), err)
			}
			issued[k] = s
			s += n
		}
		if err := d.l.check("VixDiskLib_Wait "+d.name, C.vix_wait(d.l.lib, d.h)); err != nil {
			return err
		}
		for i := range k {
			if !pending[i] {
				continue
			}
			if d.reqs[i].done == 0 {
				return fmt.Errorf("VixDiskLib_%sAsync %s at sector %d: not completed after VixDiskLib_Wait", op, d.name, issued[i])
			}
			if err := d.l.check(fmt.Sprintf("VixDiskLib_%sAsync %s at sector %d", op, d.name, issued[i]), d.reqs[i].err); err != nil {
				return err
			}
		}
	}
	return nil
}

// queryChunk is the granularity of allocation queries (64 KiB), and
// queryPiece the most one call asks about, well below VDDK's limit.
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
		if k := len(out); k > 0 && out[k-1].Offset+out[k-1].Length >= off {
			out[k-1].Length = max(out[k-1].Length, off+n-out[k-1].Offset)
			return
		}
		out = append(out, vddk.Range{Offset: off, Length: n})
	}
	// The query wants whole chunks; a tail shorter than one is reported
	// allocated rather than asked about past the disk's end.
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
	d.l.mu.Lock()
	err := d.l.check("VixDiskLib_Close "+d.name, C.vix_diskclose(d.l.lib, d.h))
	d.l.mu.Unlock()
	d.h = nil
	C.free(unsafe.Pointer(d.reqs))
	d.reqs = nil
	return err
}
