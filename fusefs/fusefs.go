// Package fusefs mounts the PEs of a pe.Manager as a read-only tree with
// go-fuse, for browsing snapshots and recovering single files:
//
//	MOUNT/<type>/<pe-id>/snapshots/<snapshot>/
//	    info.json     the snapshot's PE info JSON
//	    metadata      its metadata stream, where the PE has one
//	    data          its data image (disk-like PEs), sparse-aware
//	    files/        fs-like PEs: the tree, from the tar table of contents
//	    partitions/   disk-like PEs: p1, p2, ... of its partition table
//	MOUNT/<type>/<pe-id>/components/   symlinks to the component PEs
//
// A PE is fs-like when its data image offers a table of contents
// (pe.TableOfContents). PE IDs that contain '/' are shown with it escaped
// as %2F ('%' as %25). Nothing is listed or read before a lookup asks for
// it; snapshots never change, so their entries and attributes are cached
// by the kernel, while listings of PEs and snapshots are fresh on each
// lookup. Where the data is a local file, reads are passed through to it
// by the kernel (FUSE passthrough).
//
// files/ shows the tree as it was: every file type (regular, directory,
// symlink, hard links as one inode with its link count, FIFO, device),
// modes with setuid, setgid and sticky bits, owners, nanosecond mtimes,
// xattrs and POSIX ACLs, which the kernel enforces. rsync -aHAX from the
// source to files/ finds nothing to change. The mount is nosuid and nodev:
// a setuid program of a snapshot runs without its privileges, a device
// node opens nothing.
package fusefs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"weak"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Options configure a mount.
type Options struct {
	Logger     *slog.Logger
	AllowOther bool
	// Debug logs every FUSE request (very verbose).
	Debug bool
}

// Timeouts of the kernel's caches: snapshot content never changes; the
// lists of types, PEs and snapshots may, so their entries expire soon and
// missing names are never cached.
const (
	stableTimeout = time.Hour
	listTimeout   = time.Second
)

// Mount mounts the tree of m at dir and returns the running server; call
// Unmount on it, then Wait.
func Mount(m pe.Manager, dir string, opts Options) (*fuse.Server, error) {
	srv, _, err := mountRoot(m, dir, opts)
	return srv, err
}

// mountRoot is Mount, with the root node of the mount (for tests).
func mountRoot(m pe.Manager, dir string, opts Options) (*fuse.Server, *rootNode, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := checkMountpoint(dir); err != nil {
		return nil, nil, err
	}
	self := owner{uid: uint32(os.Getuid()), gid: uint32(os.Getgid()), perm: 0o400}
	root := &rootNode{fsys: &fsys{m: m, log: opts.Logger, ownerOnly: self}}
	stable, zero := stableTimeout, time.Duration(0)
	srv, err := fs.Mount(dir, root, &fs.Options{
		EntryTimeout:    &stable,
		AttrTimeout:     &stable,
		NegativeTimeout: &zero,
		// Mode 0000 is a mode (a file nobody but root may read), not
		// "unset" for go-fuse to make 0644.
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther:   opts.AllowOther,
			FsName:       "astrolabe",
			Name:         "astrolabe",
			MaxReadAhead: 1 << 20,
			MaxWrite:     1 << 20,
			Debug:        opts.Debug,
			// Several readers of one file at once, as NBD and backup
			// tools do.
			MaxBackground: 64,
			// Snapshots hold setuid files and device nodes: running
			// or opening them from the view must give nothing.
			Options: []string{"ro", "default_permissions", "nosuid", "nodev"},
			// The kernel checks POSIX ACLs as the source's filesystem
			// did: a mount other users see lets them read what the
			// PE let them, no more.
			EnableAcl: true,
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	return srv, root, nil
}

// checkMountpoint refuses a missing, non-directory or busy mountpoint with
// a message that says which.
func checkMountpoint(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mountpoint %s: not a directory", dir)
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil // cannot tell; mount will say
	}
	abs := dir
	if r, err := realpath(dir); err == nil {
		abs = r
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == abs {
			return fmt.Errorf("mountpoint %s is busy: something is already mounted there (umount it first)", dir)
		}
	}
	return nil
}

func realpath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space, ...).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// fsys is what all nodes share.
type fsys struct {
	m   pe.Manager
	log *slog.Logger
	// ownerOnly is the owner of data whose own owner is unknown: the
	// safe default is the mounting user (the appliance's: root) alone.
	ownerOnly owner

	mu sync.Mutex
	// inoBases number the trees of fs snapshots (see tree): one range
	// of inode numbers per snapshot, kept for the mount's life, so that
	// a tree the kernel forgot and looks up again keeps its numbers.
	inoBases map[string]uint64
	// trees are the fs snapshots' trees being built or shown, by
	// snapshot ID (see snapshotTree).
	trees map[string]*treeLoad
}

// treeLoad is a snapshot's tree: being built until done is closed, then
// the tree, weakly held, or the error.
type treeLoad struct {
	done chan struct{}
	tree weak.Pointer[tree]
	err  error
}

// snapshotTree returns the tree of snapshot id, which build makes from
// its table of contents. Every lookup of the snapshot's files/ while a
// node still shows its tree gets that tree: lookups at once wait for one
// build, and a lookup after the kernel forgot files/ while a file below
// it stays open takes the tree that file shows, so a huge table of
// contents is read and held once. The tree goes, and its entry with it,
// when no node shows it any more.
func (f *fsys) snapshotTree(ctx context.Context, id pe.ID, build func() (*tree, error)) (*tree, error) {
	key := id.String()
	for {
		f.mu.Lock()
		l := f.trees[key]
		if l == nil {
			return f.buildTree(key, build)
		}
		f.mu.Unlock()
		select {
		case <-l.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if l.err != nil && !errors.Is(l.err, context.Canceled) {
			return nil, l.err
		}
		if t := l.tree.Value(); t != nil {
			return t, nil
		}
		// Collected, or the builder's request interrupted: build anew.
		f.mu.Lock()
		if f.trees[key] == l {
			delete(f.trees, key)
		}
		f.mu.Unlock()
	}
}

// buildTree builds the tree of snapshot key for snapshotTree, which holds
// f.mu; it releases it while build runs.
func (f *fsys) buildTree(key string, build func() (*tree, error)) (*tree, error) {
	l := &treeLoad{done: make(chan struct{})}
	if f.trees == nil {
		f.trees = map[string]*treeLoad{}
	}
	f.trees[key] = l
	f.mu.Unlock()
	t, err := build()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		l.err = err
		delete(f.trees, key)
	} else {
		l.tree = weak.Make(t)
		runtime.AddCleanup(t, f.forgetTree, treeKey{key, l})
	}
	close(l.done)
	return t, err
}

type treeKey struct {
	key  string
	load *treeLoad
}

// forgetTree drops the entry of a tree that was collected.
func (f *fsys) forgetTree(k treeKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.trees[k.key] == k.load {
		delete(f.trees, k.key)
	}
}

// inoBase returns the base of the inode numbers of the tree of snapshot
// id, or 0 once the ranges below go-fuse's own numbers (from 1<<63) are
// used up: then go-fuse numbers its nodes.
func (f *fsys) inoBase(id pe.ID) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.inoBases[id.String()]; ok {
		return b
	}
	b := uint64(len(f.inoBases)+1) << inoBits
	if b >= 1<<63 {
		return 0
	}
	if f.inoBases == nil {
		f.inoBases = map[string]uint64{}
	}
	f.inoBases[id.String()] = b
	return b
}

// eio logs an error met while serving a request and answers EIO: the
// caller sees an I/O error, never a hang.
func (f *fsys) eio(what string, err error) syscall.Errno {
	// A snapshot deleted while the kernel still knows its nodes: its
	// files are gone, which is ENOENT, not an I/O error.
	if errors.Is(err, pe.ErrNotFound) || errors.Is(err, iofs.ErrNotExist) {
		return syscall.ENOENT
	}
	if errors.Is(err, context.Canceled) {
		return syscall.EINTR
	}
	f.log.Error("fuse: "+what, "err", err)
	return syscall.EIO
}

// escapeName makes a PE ID a file name: '/' cannot be in one.
func escapeName(s string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(s)
}

func unescapeName(s string) string {
	return strings.NewReplacer("%2F", "/", "%2f", "/", "%25", "%").Replace(s)
}

func dirAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
}

// owner is who may read a file: the kernel checks it (default_permissions)
// against the caller, so that a mount other users see (allowOther) shows
// them only what they could read of the PE itself.
type owner struct {
	uid, gid uint32
	perm     uint32 // permission bits only: no setuid, setgid or sticky
}

// everyone is the owner of what describes a snapshot without its content
// (info.json).
var everyone = owner{perm: 0o444}

func (o owner) set(out *fuse.Attr, typ uint32) {
	out.Mode = typ | o.perm
	out.Uid, out.Gid = o.uid, o.gid
}

// staticFileAttr describes a read-only regular file.
func staticFileAttr(out *fuse.Attr, size int64, mtime time.Time, o owner) {
	o.set(out, syscall.S_IFREG)
	out.Size = uint64(size)
	out.Nlink = 1
	out.Blocks = (uint64(size) + 511) / 512
	out.SetTimes(nil, &mtime, &mtime)
}

// rootNode lists the PE types.
type rootNode struct {
	fs.Inode
	fsys *fsys
}

var (
	_ fs.NodeReaddirer = (*rootNode)(nil)
	_ fs.NodeLookuper  = (*rootNode)(nil)
	_ fs.NodeGetattrer = (*rootNode)(nil)
)

func (n *rootNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	return 0
}

func (n *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	types, err := n.fsys.m.Types(ctx)
	if err != nil {
		return nil, n.fsys.eio("list types", err)
	}
	var entries []fuse.DirEntry
	for _, tm := range types {
		entries = append(entries, fuse.DirEntry{Name: tm.Type(), Mode: syscall.S_IFDIR})
	}
	return fs.NewListDirStream(entries), 0
}

func (n *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	tm, err := n.fsys.m.Type(ctx, name)
	if err != nil {
		return nil, syscall.ENOENT
	}
	dirAttr(&out.Attr)
	return n.NewInode(ctx, &typeNode{fsys: n.fsys, tm: tm}, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

// typeNode lists the PEs of a type.
type typeNode struct {
	fs.Inode
	fsys *fsys
	tm   pe.TypeManager
}

var (
	_ fs.NodeReaddirer = (*typeNode)(nil)
	_ fs.NodeLookuper  = (*typeNode)(nil)
	_ fs.NodeGetattrer = (*typeNode)(nil)
)

func (n *typeNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	out.SetTimeout(listTimeout)
	return 0
}

func (n *typeNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ids, err := n.tm.List(ctx)
	if err != nil {
		return nil, n.fsys.eio("list "+n.tm.Type(), err)
	}
	entries := make([]fuse.DirEntry, 0, len(ids))
	for _, id := range ids {
		entries = append(entries, fuse.DirEntry{Name: escapeName(id.String()), Mode: syscall.S_IFDIR})
	}
	return fs.NewListDirStream(entries), 0
}

func (n *typeNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	id, err := pe.ParseID(unescapeName(name))
	if err != nil || id.Type() != n.tm.Type() || id.HasSnapshot() {
		return nil, syscall.ENOENT
	}
	p, err := n.tm.Get(ctx, id)
	if err != nil {
		return nil, n.fsys.eio("lookup "+id.String(), err)
	}
	dirAttr(&out.Attr)
	out.SetEntryTimeout(listTimeout)
	return n.NewInode(ctx, &peNode{fsys: n.fsys, p: p}, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

// peNode is one live PE: its snapshots and components.
type peNode struct {
	fs.Inode
	fsys *fsys
	p    pe.ProtectedEntity
}

var (
	_ fs.NodeReaddirer = (*peNode)(nil)
	_ fs.NodeLookuper  = (*peNode)(nil)
	_ fs.NodeGetattrer = (*peNode)(nil)
)

func (n *peNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	return 0
}

func (n *peNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream([]fuse.DirEntry{
		{Name: "snapshots", Mode: syscall.S_IFDIR},
		{Name: "components", Mode: syscall.S_IFDIR},
	}), 0
}

func (n *peNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	var child fs.InodeEmbedder
	switch name {
	case "snapshots":
		child = &snapshotsNode{fsys: n.fsys, p: n.p}
	case "components":
		child = &componentsNode{fsys: n.fsys, p: n.p}
	default:
		return nil, syscall.ENOENT
	}
	dirAttr(&out.Attr)
	return n.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

// snapshotsNode lists a PE's snapshots; a new one is found by the next
// lookup, without remounting.
type snapshotsNode struct {
	fs.Inode
	fsys *fsys
	p    pe.ProtectedEntity
}

var (
	_ fs.NodeReaddirer = (*snapshotsNode)(nil)
	_ fs.NodeLookuper  = (*snapshotsNode)(nil)
	_ fs.NodeGetattrer = (*snapshotsNode)(nil)
)

func (n *snapshotsNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	out.SetTimeout(listTimeout)
	return 0
}

func (n *snapshotsNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	snaps, err := n.p.ListSnapshots(ctx)
	if err != nil {
		return nil, n.fsys.eio("list snapshots of "+n.p.ID().String(), err)
	}
	entries := make([]fuse.DirEntry, 0, len(snaps))
	for _, s := range snaps {
		entries = append(entries, fuse.DirEntry{Name: escapeName(s.Snapshot()), Mode: syscall.S_IFDIR})
	}
	return fs.NewListDirStream(entries), 0
}

func (n *snapshotsNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	id := n.p.ID().WithSnapshot(unescapeName(name))
	if _, err := pe.ParseID(id.String()); err != nil {
		return nil, syscall.ENOENT
	}
	sp, err := n.fsys.m.Get(ctx, id)
	if err != nil {
		return nil, n.fsys.eio("lookup "+id.String(), err)
	}
	info, err := sp.Info(ctx)
	if err != nil {
		return nil, n.fsys.eio("info "+id.String(), err)
	}
	sn := &snapNode{fsys: n.fsys, p: sp, info: info}
	sn.attr(&out.Attr)
	return n.NewInode(ctx, sn, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

// componentsNode holds symlinks to the component PEs.
type componentsNode struct {
	fs.Inode
	fsys *fsys
	p    pe.ProtectedEntity
}

var (
	_ fs.NodeReaddirer = (*componentsNode)(nil)
	_ fs.NodeLookuper  = (*componentsNode)(nil)
	_ fs.NodeGetattrer = (*componentsNode)(nil)
)

func (n *componentsNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr)
	out.SetTimeout(listTimeout)
	return 0
}

func (n *componentsNode) components(ctx context.Context) ([]pe.ID, syscall.Errno) {
	cs, err := n.p.Components(ctx)
	if err != nil {
		return nil, n.fsys.eio("components of "+n.p.ID().String(), err)
	}
	ids := make([]pe.ID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID()
	}
	return ids, 0
}

func (n *componentsNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	ids, errno := n.components(ctx)
	if errno != 0 {
		return nil, errno
	}
	entries := make([]fuse.DirEntry, 0, len(ids))
	for _, id := range ids {
		entries = append(entries, fuse.DirEntry{Name: escapeName(id.String()), Mode: syscall.S_IFLNK})
	}
	return fs.NewListDirStream(entries), 0
}

func (n *componentsNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ids, errno := n.components(ctx)
	if errno != 0 {
		return nil, errno
	}
	for _, id := range ids {
		if escapeName(id.String()) != name {
			continue
		}
		// From MOUNT/<type>/<pe>/components/ up to MOUNT.
		target := "../../../" + id.Type() + "/" + escapeName(id.Base().String())
		if id.HasSnapshot() {
			target += "/snapshots/" + escapeName(id.Snapshot())
		}
		out.Attr.Mode = syscall.S_IFLNK | 0o777
		out.Attr.Size = uint64(len(target))
		return n.NewInode(ctx, &fs.MemSymlink{Data: []byte(target)}, fs.StableAttr{Mode: syscall.S_IFLNK}), 0
	}
	return nil, syscall.ENOENT
}

// snapNode is one snapshot. Its data image is opened on first need and
// kept while the kernel keeps the node.
type snapNode struct {
	fs.Inode
	fsys *fsys
	p    pe.ProtectedEntity
	info pe.Info

	mu    sync.Mutex
	img   pe.Image
	owner *owner // of the data, once known
}

var (
	_ fs.NodeReaddirer   = (*snapNode)(nil)
	_ fs.NodeLookuper    = (*snapNode)(nil)
	_ fs.NodeGetattrer   = (*snapNode)(nil)
	_ fs.NodeOnForgetter = (*snapNode)(nil)
)

func (n *snapNode) mtime() time.Time {
	if n.info.Created != nil {
		return *n.info.Created
	}
	return time.Unix(0, 0)
}

func (n *snapNode) attr(out *fuse.Attr) {
	dirAttr(out)
	t := n.mtime()
	out.SetTimes(nil, &t, &t)
}

func (n *snapNode) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

// image opens the snapshot's data once.
func (n *snapNode) image(ctx context.Context) (pe.Image, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.img == nil {
		img, err := n.p.Data(ctx)
		if err != nil {
			return nil, err
		}
		n.img = img
	}
	return n.img, nil
}

// dataOwner is the owner and mode of the snapshot's data: those of the
// file that holds it, where one does (a disk snapshot's image, which the
// disk type keeps 0600), else the mounting user alone (0400). A PE type whose data is not a
// local file (ivd, vm, repository snapshots) says nothing about who may
// read it, so only the appliance's user may.
func (n *snapNode) dataOwner(ctx context.Context, img pe.Image) owner {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.owner != nil {
		return *n.owner
	}
	o := n.fsys.ownerOnly
	if b, ok := img.(pe.BackingFiler); ok && img.Size() > 0 {
		if f, err := b.OpenBacking(ctx, 0, img.Size()); err == nil {
			if fi, err := f.Stat(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					o = owner{uid: st.Uid, gid: st.Gid, perm: uint32(fi.Mode().Perm())}
				}
			}
			f.Close()
		}
	}
	n.owner = &o
	return o
}

func (n *snapNode) OnForget() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.img != nil {
		n.img.Close()
		n.img = nil
	}
}

// entries are the names in the snapshot directory: they depend on whether
// it has data, metadata and a table of contents.
func (n *snapNode) entries(ctx context.Context) ([]fuse.DirEntry, syscall.Errno) {
	out := []fuse.DirEntry{{Name: "info.json", Mode: syscall.S_IFREG}}
	if rc, err := n.p.Metadata(ctx); err == nil {
		rc.Close()
		out = append(out, fuse.DirEntry{Name: "metadata", Mode: syscall.S_IFREG})
	} else if !errors.Is(err, pe.ErrNoMetadata) {
		return nil, n.fsys.eio("metadata of "+n.p.ID().String(), err)
	}
	img, err := n.image(ctx)
	if errors.Is(err, pe.ErrNoData) {
		return out, 0
	}
	if err != nil {
		return nil, n.fsys.eio("data of "+n.p.ID().String(), err)
	}
	if _, ok := img.(pe.TableOfContents); ok {
		return append(out, fuse.DirEntry{Name: "files", Mode: syscall.S_IFDIR}), 0
	}
	return append(out,
		fuse.DirEntry{Name: "data", Mode: syscall.S_IFREG},
		fuse.DirEntry{Name: "partitions", Mode: syscall.S_IFDIR}), 0
}

func (n *snapNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	entries, errno := n.entries(ctx)
	if errno != 0 {
		return nil, errno
	}
	return fs.NewListDirStream(entries), 0
}

func (n *snapNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	entries, errno := n.entries(ctx)
	if errno != 0 {
		return nil, errno
	}
	found := false
	for _, e := range entries {
		found = found || e.Name == name
	}
	if !found {
		return nil, syscall.ENOENT
	}
	mtime := n.mtime()
	switch name {
	case "info.json":
		b, err := json.MarshalIndent(n.info, "", "  ")
		if err != nil {
			return nil, n.fsys.eio("info of "+n.p.ID().String(), err)
		}
		b = append(b, '\n')
		staticFileAttr(&out.Attr, int64(len(b)), mtime, everyone)
		return n.NewInode(ctx, &bytesFile{data: b, mtime: mtime, owner: everyone}, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	case "metadata":
		rc, err := n.p.Metadata(ctx)
		if err != nil {
			return nil, n.fsys.eio("metadata of "+n.p.ID().String(), err)
		}
		b, err := io.ReadAll(io.LimitReader(rc, 1<<30))
		rc.Close()
		if err != nil {
			return nil, n.fsys.eio("metadata of "+n.p.ID().String(), err)
		}
		// Metadata says what the data holds: it is guarded as the data.
		o := n.fsys.ownerOnly
		if img, err := n.image(ctx); err == nil {
			o = n.dataOwner(ctx, img)
		}
		staticFileAttr(&out.Attr, int64(len(b)), mtime, o)
		return n.NewInode(ctx, &bytesFile{data: b, mtime: mtime, owner: o}, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	}
	img, err := n.image(ctx)
	if err != nil {
		return nil, n.fsys.eio("data of "+n.p.ID().String(), err)
	}
	switch name {
	case "data":
		f := &rangeFile{fsys: n.fsys, img: img, off: 0, size: img.Size(), mtime: mtime, name: n.p.ID().String(),
			snap: n.p.ID(), owner: n.dataOwner(ctx, img)}
		f.attr(&out.Attr)
		return n.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	case "files":
		t, err := n.fsys.snapshotTree(ctx, n.p.ID(), func() (*tree, error) {
			toc, err := img.(pe.TableOfContents).TOC(ctx)
			if err != nil {
				return nil, err
			}
			return newTree(toc, mtime, n.fsys.inoBase(n.p.ID())), nil
		})
		if err != nil {
			return nil, n.fsys.eio("table of contents of "+n.p.ID().String(), err)
		}
		d := &treeDir{treeNode: treeNode{tree: t, n: t.root}, fsys: n.fsys, img: img, snap: n.p.ID()}
		t.attr(t.root, &out.Attr)
		return n.NewInode(ctx, d, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: t.ino(t.root)}), 0
	case "partitions":
		d := &partitionsDir{fsys: n.fsys, img: img, mtime: mtime, name: n.p.ID().String(), snap: n.p.ID(), owner: n.dataOwner(ctx, img)}
		dirAttr(&out.Attr)
		return n.NewInode(ctx, d, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
	}
	return nil, syscall.ENOENT
}

// bytesFile is a small file held in memory.
type bytesFile struct {
	fs.Inode
	data  []byte
	mtime time.Time
	owner owner
}

var (
	_ fs.NodeGetattrer = (*bytesFile)(nil)
	_ fs.NodeOpener    = (*bytesFile)(nil)
	_ fs.NodeReader    = (*bytesFile)(nil)
)

func (f *bytesFile) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	staticFileAttr(&out.Attr, int64(len(f.data)), f.mtime, f.owner)
	return 0
}

func (f *bytesFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *bytesFile) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(f.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(f.data[off:min(int64(len(f.data)), off+int64(len(dest)))]), 0
}

// Unmount unmounts srv at dir. A mount still in use (a reader has a file
// open, a shell sits in it) is detached lazily: it disappears from the
// namespace at once and goes away when the last user leaves.
func Unmount(srv *fuse.Server, dir string) error {
	err := srv.Unmount()
	if err == nil {
		return nil
	}
	if derr := syscall.Unmount(dir, syscall.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmount %s: %w (lazy unmount: %v)", dir, err, derr)
	}
	return nil
}
