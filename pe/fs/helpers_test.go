package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
	"golang.org/x/sys/unix"
)

// newTestRoot returns a manager over a fresh root inside dir.
func newTestRoot(tb testing.TB, dir string) *TypeManager {
	tb.Helper()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		tb.Fatal(err)
	}
	tm, err := NewTypeManager(root)
	if err != nil {
		tb.Fatal(err)
	}
	return tm
}

func fsID(tb testing.TB, name string) pe.ID {
	tb.Helper()
	id, err := pe.NewID(Type, name)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

func getPE(tb testing.TB, tm *TypeManager, id pe.ID) pe.ProtectedEntity {
	tb.Helper()
	p, err := tm.Get(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func openData(tb testing.TB, p pe.ProtectedEntity) pe.Image {
	tb.Helper()
	img, err := p.Data(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { img.Close() })
	return img
}

func snapshot(tb testing.TB, p pe.ProtectedEntity) pe.ID {
	tb.Helper()
	id, err := p.Snapshot(context.Background(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

func readImage(tb testing.TB, img pe.Image) []byte {
	tb.Helper()
	b, err := io.ReadAll(pe.NewReader(img))
	if err != nil {
		tb.Fatal(err)
	}
	if int64(len(b)) != img.Size() {
		tb.Fatalf("read %d bytes, Size says %d", len(b), img.Size())
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func writeFile(tb testing.TB, p string, b []byte, mode os.FileMode) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask
		tb.Fatal(err)
	}
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

func setXattr(tb testing.TB, p, name, value string) {
	tb.Helper()
	if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
		tb.Fatalf("setxattr %s on %s: %v (the test directory's filesystem needs user xattrs: run the tests with TMPDIR on ext4, xfs or btrfs)", name, p, err)
	}
}

// longName is a path of more than 100 bytes: it needs a PAX path record.
var longName = strings.Repeat("long-directory-name/", 6) + strings.Repeat("x", 40) + ".txt"

// makeTree fills dir with what a tree can hold: files of several sizes,
// nested, read-only, setgid and sticky directories, a sparse file,
// relative, absolute and dangling symlinks, hard links, a fifo (and, as
// root, a device node), a long name, an xattr, other owners, nanosecond
// mtimes.
func makeTree(tb testing.TB, dir string) {
	tb.Helper()
	writeFile(tb, filepath.Join(dir, "a.txt"), []byte("hello\n"), 0o644)
	writeFile(tb, filepath.Join(dir, "empty"), nil, 0o600)
	writeFile(tb, filepath.Join(dir, "big.bin"), randomBytes(1, 3<<19+123), 0o640) // > 1 MiB
	writeFile(tb, filepath.Join(dir, "sub", "nested", "deep.txt"), []byte("deep\n"), 0o644)
	writeFile(tb, filepath.Join(dir, "sub", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o4755)
	writeFile(tb, filepath.Join(dir, ".hidden"), []byte("dotfiles are content"), 0o644)
	writeFile(tb, filepath.Join(dir, longName), randomBytes(2, 777), 0o644)
	writeFile(tb, filepath.Join(dir, "hl1"), []byte("linked twice\n"), 0o644)
	must(tb, os.Link(filepath.Join(dir, "hl1"), filepath.Join(dir, "sub", "hl2")))
	must(tb, os.Symlink("a.txt", filepath.Join(dir, "link")))
	must(tb, os.Symlink("../a.txt", filepath.Join(dir, "sub", "up")))
	must(tb, os.Symlink("missing", filepath.Join(dir, "dangling")))
	must(tb, os.Symlink("/etc/passwd", filepath.Join(dir, "abs")))
	must(tb, os.Symlink("../../../../..", filepath.Join(dir, "sub", "far-up")))
	must(tb, unix.Mkfifo(filepath.Join(dir, "pipe"), 0o640))
	must(tb, os.Mkdir(filepath.Join(dir, "shared"), 0o755))
	must(tb, os.Chmod(filepath.Join(dir, "shared"), 0o3777)) // setgid and sticky
	if os.Geteuid() == 0 {
		must(tb, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(tb, unix.Mknod(filepath.Join(dir, "sub", "loop"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 200))))
		must(tb, os.Link(filepath.Join(dir, "null"), filepath.Join(dir, "null2")))
	}

	sparse := filepath.Join(dir, "sparse.img")
	f, err := os.Create(sparse)
	must(tb, err)
	_, err = f.WriteAt([]byte("data in the middle"), 1<<20)
	must(tb, err)
	must(tb, f.Truncate(4<<20))
	must(tb, f.Close())

	must(tb, os.Mkdir(filepath.Join(dir, "ro"), 0o755))
	writeFile(tb, filepath.Join(dir, "ro", "f"), []byte("in a read-only dir"), 0o444)
	must(tb, os.Chmod(filepath.Join(dir, "ro"), 0o555))

	setXattr(tb, filepath.Join(dir, "a.txt"), "user.test", "v1")
	// What setfacl -m u:1234:r writes, and a default ACL.
	setXattr(tb, filepath.Join(dir, "a.txt"), "system.posix_acl_access", posixACL(0o6, 1234, 0o4, 0o4, 0o4))
	setXattr(tb, filepath.Join(dir, "shared"), "system.posix_acl_default", posixACL(0o7, 1234, 0o5, 0o5, 0o5))
	setXattr(tb, filepath.Join(dir, "sub"), "user.dir", "d\x00binary")
	if os.Geteuid() == 0 {
		must(tb, os.Lchown(filepath.Join(dir, "empty"), 1234, 5678))
		must(tb, os.Lchown(filepath.Join(dir, "link"), 4321, 8765))
	}

	// Distinct nanosecond mtimes, directories last as their contents
	// changed them.
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	var paths []string
	must(tb, filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for i, p := range paths {
		mt := t0.Add(time.Duration(i) * 1001 * time.Millisecond)
		ts := []unix.Timespec{timespec(mt), timespec(mt)}
		must(tb, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// posixACL is the system.posix_acl_* xattr value of the ACL
// user::owner, user:uid:named, group::group, mask::group|named, other::other.
func posixACL(owner uint16, uid uint32, named, group, other uint16) string {
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, owner, ^uint32(0)}, {0x02, named, uid}, {0x04, group, ^uint32(0)}, {0x10, group | named, ^uint32(0)}, {0x20, other, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return string(b)
}

// entry is what a test compares of a tree member.
type entry struct {
	Type   string // dir, file, symlink, fifo, char, block
	Mode   uint32 // permission, setuid, setgid, sticky
	UID    int
	GID    int
	Size   int64
	SHA    string
	Link   string
	MTime  int64 // Unix nanoseconds
	Xattrs map[string]string
	Dev    [2]int64 // major and minor of a device node
}

// treeEntries describes the tree at dir by slash-separated names, "." for
// dir itself, and groups hard links: links maps each name of a multiply
// linked file to the first one in lexical order.
func treeEntries(tb testing.TB, dir string) (map[string]entry, map[string]string) {
	tb.Helper()
	out := map[string]entry{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{
			Mode:  st.Mode & 0o7777,
			UID:   int(st.Uid),
			GID:   int(st.Gid),
			MTime: st.Mtim.Nano(),
		}
		x, err := listXattrs(p)
		if err != nil {
			return err
		}
		e.Xattrs = userXattrs(x)
		switch {
		case fi.IsDir():
			e.Type = "dir"
		case fi.Mode().IsRegular():
			e.Type = "file"
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Size, e.SHA = int64(len(b)), sha(b)
		case fi.Mode()&iofs.ModeSymlink != 0:
			e.Type = "symlink"
			e.Mode = 0
			if e.Link, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode()&iofs.ModeNamedPipe != 0:
			e.Type = "fifo"
		case fi.Mode()&iofs.ModeDevice != 0:
			e.Type = "block"
			if fi.Mode()&iofs.ModeCharDevice != 0 {
				e.Type = "char"
			}
			e.Dev = [2]int64{int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))}
		default:
			return nil
		}
		if !fi.IsDir() && st.Nlink > 1 {
			inodes[st.Ino] = append(inodes[st.Ino], rel)
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	links := map[string]string{}
	for _, names := range inodes {
		sort.Strings(names)
		for _, n := range names {
			links[n] = names[0]
		}
	}
	return out, links
}

// userXattrs keeps the user.* xattrs and POSIX ACLs: others
// (security.selinux) depend on the machine, not on what was copied.
func userXattrs(x map[string]string) map[string]string {
	var out map[string]string
	for k, v := range x {
		if strings.HasPrefix(k, "user.") || strings.HasPrefix(k, "system.posix_acl_") {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// tarEntries parses a tar stream like treeEntries describes a tree; hard
// link members become the files they link to.
func tarEntries(tb testing.TB, r io.Reader) (map[string]entry, map[string]string) {
	tb.Helper()
	out := map[string]entry{}
	links := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		name := path.Clean(h.Name)
		e := entry{
			Mode:  uint32(h.Mode & 0o7777),
			UID:   h.Uid,
			GID:   h.Gid,
			MTime: h.ModTime.UnixNano(),
		}
		x := map[string]string{}
		for k, v := range h.PAXRecords {
			if n, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				x[n] = v
			}
		}
		e.Xattrs = userXattrs(x)
		switch h.Typeflag {
		case tar.TypeDir:
			e.Type = "dir"
		case tar.TypeReg:
			e.Type = "file"
			b, err := io.ReadAll(tr)
			if err != nil {
				tb.Fatal(err)
			}
			e.Size, e.SHA = int64(len(b)), sha(b)
		case tar.TypeLink:
			target := path.Clean(h.Linkname)
			e = out[target]
			links[target] = target
			links[name] = target
		case tar.TypeSymlink:
			e.Type = "symlink"
			e.Mode = 0
			e.Link = h.Linkname
		case tar.TypeFifo:
			e.Type = "fifo"
		case tar.TypeChar, tar.TypeBlock:
			e.Type = map[byte]string{tar.TypeChar: "char", tar.TypeBlock: "block"}[h.Typeflag]
			e.Dev = [2]int64{h.Devmajor, h.Devminor}
		default:
			tb.Fatalf("unexpected member %q of type %q", h.Name, h.Typeflag)
		}
		if _, dup := out[name]; dup {
			tb.Fatalf("member %q twice", name)
		}
		out[name] = e
	}
	return out, links
}

// compareEntries reports the differences of got from want; ignore lists
// fields ("MTime", "UID") not to compare for some types ("symlink:MTime").
func compareEntries(tb testing.TB, what string, got, want map[string]entry, ignore ...string) {
	tb.Helper()
	skip := func(typ, field string) bool {
		for _, ig := range ignore {
			if ig == field || ig == typ+":"+field {
				return true
			}
		}
		return false
	}
	var names []string
	for n := range want {
		names = append(names, n)
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	bad := 0
	for _, n := range names {
		g, gok := got[n]
		w, wok := want[n]
		if !gok || !wok {
			tb.Errorf("%s: %q: present %v, want %v", what, n, gok, wok)
			bad++
			continue
		}
		gv, wv := reflect.ValueOf(g), reflect.ValueOf(w)
		for i := range gv.NumField() {
			f := gv.Type().Field(i).Name
			if skip(w.Type, f) {
				continue
			}
			if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
				tb.Errorf("%s: %q: %s = %v, want %v", what, n, f, gv.Field(i).Interface(), wv.Field(i).Interface())
				bad++
			}
		}
		if bad > 20 {
			tb.Fatalf("%s: too many differences", what)
		}
	}
}

// tarPE is a PE whose data is a tar stream in memory: the source of
// restore tests.
type tarPE struct {
	id  pe.ID
	tar []byte
}

func newTarPE(tb testing.TB, name string, b []byte) *tarPE {
	tb.Helper()
	id, err := pe.NewID("tar", name)
	if err != nil {
		tb.Fatal(err)
	}
	return &tarPE{id: id, tar: b}
}

func (t *tarPE) ID() pe.ID { return t.id }
func (t *tarPE) Info(ctx context.Context) (pe.Info, error) {
	return pe.Info{ID: t.id, Name: t.id.Name(), Size: int64(len(t.tar))}, nil
}
func (t *tarPE) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	return pe.ID{}, pe.ErrNotSupported
}
func (t *tarPE) ListSnapshots(ctx context.Context) ([]pe.ID, error) { return nil, nil }
func (t *tarPE) DeleteSnapshot(ctx context.Context, snapshot string) error {
	return pe.ErrNotFound
}
func (t *tarPE) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	return pe.Info{}, pe.ErrNotFound
}
func (t *tarPE) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }
func (t *tarPE) Data(ctx context.Context) (pe.Image, error) {
	return bytesImage{bytes.NewReader(t.tar)}, nil
}
func (t *tarPE) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, pe.ErrNoMetadata
}
func (t *tarPE) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	return pe.ErrNotSupported
}

type bytesImage struct{ *bytes.Reader }

func (b bytesImage) Close() error { return nil }
func (b bytesImage) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	return pe.AllData(off, length, b.Size()), nil
}

// member is one entry of a tar stream a test builds.
type tarMember struct {
	name, link string
	typ        byte
	body       string
}

func buildTar(tb testing.TB, members ...tarMember) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Linkname: m.link, Typeflag: m.typ, Mode: 0o644, ModTime: time.Unix(1e9, 0)}
		if m.typ == tar.TypeReg {
			h.Size = int64(len(m.body))
		}
		if m.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.WriteString(tw, m.body); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// hiddenEntries lists the names starting with "." in dir except the
// snapshot directory: leftovers of snapshots or restores.
func hiddenEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && e.Name() != snapdir.Dir {
			out = append(out, e.Name())
		}
	}
	return out
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// listXattrs returns the xattrs of path, not following a symlink.
func listXattrs(path string) (map[string]string, error) {
	return readXattrs(
		func(b []byte) (int, error) { return unix.Llistxattr(path, b) },
		func(name string, b []byte) (int, error) { return unix.Lgetxattr(path, name, b) })
}
