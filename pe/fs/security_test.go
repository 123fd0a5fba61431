package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/ziptest"
)

// untrustedPE is a tarPE that says it comes from outside, as a zip does,
// stored in stored bytes.
type untrustedPE struct {
	*tarPE
	stored int64
}

func (u untrustedPE) Untrusted() bool   { return true }
func (u untrustedPE) StoredSize() int64 { return u.stored }

// capSetuid is a security.capability value (VFS_CAP_REVISION_2) granting
// cap_setuid=ep, what `setcap cap_setuid=ep` writes.
func capSetuid() string {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|1) // revision 2, effective
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_SETUID)
	return string(b)
}

// privilegedTar is a tar stream of what grants privilege: a setuid-root
// file, a setgid directory, a file with a capability, trusted.*,
// security.* and user.* xattrs, files of another owner.
func privilegedTar(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1e9, 0)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt},
		{Name: "sgid/", Typeflag: tar.TypeDir, Mode: 0o2775, Uid: 1234, Gid: 1234, ModTime: mt},
		{Name: "sgid/suid", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 4, ModTime: mt},
		{Name: "cap", Typeflag: tar.TypeReg, Mode: 0o755, Size: 4, ModTime: mt, Uid: 1234, Gid: 5678,
			PAXRecords: map[string]string{
				"SCHILY.xattr.security.capability": capSetuid(),
				"SCHILY.xattr.trusted.x":           "root only",
				"SCHILY.xattr.user.note":           "kept",
			}},
		{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "cap", ModTime: mt,
			PAXRecords: map[string]string{"SCHILY.xattr.trusted.l": "on a symlink"}},
	} {
		h.Format = tar.FormatPAX
		must(t, tw.WriteHeader(h))
		if h.Size > 0 {
			_, err := tw.Write([]byte("#!x\n"))
			must(t, err)
		}
	}
	must(t, tw.Close())
	return buf.Bytes()
}

// privileges describes what of privilegedTar a restored tree at dir has.
type privileges struct {
	suidMode, sgidMode uint32
	capOwner           int
	xattrs             []string // of cap, sorted, user.* security.capability trusted.*
	linkXattr          bool     // trusted.l on the symlink link
}

func (p privileges) equal(q privileges) bool {
	return p.suidMode == q.suidMode && p.sgidMode == q.sgidMode && p.capOwner == q.capOwner && p.linkXattr == q.linkXattr &&
		strings.Join(p.xattrs, " ") == strings.Join(q.xattrs, " ")
}

func privilegesOf(t *testing.T, dir string) privileges {
	t.Helper()
	var p privileges
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, "sgid", "suid"), &st))
	p.suidMode = st.Mode & 0o7777
	must(t, unix.Lstat(filepath.Join(dir, "sgid"), &st))
	p.sgidMode = st.Mode & 0o7777
	must(t, unix.Lstat(filepath.Join(dir, "cap"), &st))
	p.capOwner = int(st.Uid)
	x, err := listXattrs(filepath.Join(dir, "cap"))
	must(t, err)
	for _, k := range []string{"security.capability", "trusted.x", "user.note"} {
		if _, ok := x[k]; ok {
			p.xattrs = append(p.xattrs, k)
		}
	}
	x, err = listXattrs(filepath.Join(dir, "link"))
	must(t, err)
	_, p.linkXattr = x["trusted.l"]
	return p
}

// TestSecurityRestoreUntrustedDropsPrivileges: a tree from untrusted
// input is restored without setuid/setgid bits, capabilities, trusted.*
// and security.* xattrs and owners; KeepPrivileges and trusted sources
// restore them (issue 22, item 1).
func TestSecurityRestoreUntrustedDropsPrivileges(t *testing.T) {
	petest.RequireRoot(t, "sets trusted.* xattrs and capabilities")
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	tr := privilegedTar(t)
	untrusted := untrustedPE{newTarPE(t, "upload", tr), int64(len(tr))}
	all := privileges{suidMode: 0o4755, sgidMode: 0o2775, capOwner: 1234, xattrs: []string{"security.capability", "trusted.x", "user.note"}, linkXattr: true}

	for _, tt := range []struct {
		what string
		src  pe.ProtectedEntity
		keep bool
		want privileges
	}{
		{"untrusted", untrusted, false, privileges{suidMode: 0o755, sgidMode: 0o775, capOwner: 0, xattrs: []string{"user.note"}}},
		{"untrusted with KeepPrivileges", untrusted, true, all},
		{"trusted", newTarPE(t, "snapshot", tr), false, all},
	} {
		p, err := tm.Copy(ctx, tt.src, pe.CopyOptions{Mode: pe.CreateNew, KeepPrivileges: tt.keep})
		if err != nil {
			t.Fatalf("%s: %v", tt.what, err)
		}
		if got := privilegesOf(t, filepath.Join(tm.Root(), p.ID().Name())); !got.equal(tt.want) {
			t.Errorf("%s: restored %+v, want %+v", tt.what, got, tt.want)
		}
	}
}

// TestSecuritySnapshotRestoreKeepsPrivileges: the appliance's own
// snapshots are trusted: a restore gives back setuid bits, capabilities
// and trusted.* xattrs.
func TestSecuritySnapshotRestoreKeepsPrivileges(t *testing.T) {
	petest.RequireRoot(t, "restores owners, setuid bits and capabilities")
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	live := filepath.Join(tm.Root(), "data")
	must(t, extract(ctx, mkdir(t, live), bytes.NewReader(privilegedTar(t)), extractOptions{}))
	want := privilegesOf(t, live)
	if want.suidMode != 0o4755 || len(want.xattrs) != 3 || !want.linkXattr {
		t.Fatalf("the source tree lacks its privileges: %+v", want)
	}
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))
	p, err := tm.Copy(ctx, getPE(t, tm, sid), pe.CopyOptions{Mode: pe.CreateNew})
	must(t, err)
	if got := privilegesOf(t, filepath.Join(tm.Root(), p.ID().Name())); !got.equal(want) {
		t.Errorf("restored snapshot %+v, want %+v", got, want)
	}
}

func mkdir(t *testing.T, p string) string {
	t.Helper()
	must(t, os.Mkdir(p, 0o755))
	return p
}

// bombTar is a tar of one file of n bytes of a repeated non-zero pattern,
// plus one of n zero bytes.
func bombTar(t testing.TB, n int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must(t, tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: n}))
	chunk := bytes.Repeat([]byte("BOOM"), 1<<16)
	for left := n; left > 0; {
		k := min(left, int64(len(chunk)))
		_, err := tw.Write(chunk[:k])
		must(t, err)
		left -= k
	}
	must(t, tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: n}))
	_, err := tw.Write(make([]byte, n))
	must(t, err)
	must(t, tw.Close())
	return buf.Bytes()
}

// TestSecurityRestoreExpansionLimit: a restore of untrusted input stops at
// MaxExpansion × its stored size with pe.ErrLimit and leaves nothing; an
// update keeps the old tree; zeros (holes) do not count; a negative
// MaxExpansion lifts the bound, as does trust (issue 22, item 8).
func TestSecurityRestoreExpansionLimit(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	writeFile(t, filepath.Join(tm.Root(), "old", "keep.txt"), []byte("old content"), 0o644)
	const size = 8 << 20
	tr := bombTar(t, size)
	// As if 10 KiB of zip: 800:1, over the default 100× (and the 1 MiB
	// floor).
	bomb := untrustedPE{newTarPE(t, "old", tr), 10 << 10}

	for _, opts := range []pe.CopyOptions{
		{Mode: pe.CreateNew},
		{Mode: pe.Create, Name: "new"},
		{Mode: pe.Update, Name: "old"},
		{Mode: pe.CreateNew, MaxExpansion: 500},
	} {
		_, err := tm.Copy(ctx, bomb, opts)
		if !errors.Is(err, pe.ErrLimit) || !strings.Contains(err.Error(), "--max-expansion") {
			t.Errorf("%v: %v, want pe.ErrLimit naming --max-expansion", opts.Mode, err)
		}
	}
	ids, err := tm.List(ctx)
	must(t, err)
	if len(ids) != 1 || ids[0].Name() != "old" {
		t.Errorf("PEs after refused restores: %v, want only fs:old", ids)
	}
	if b, err := os.ReadFile(filepath.Join(tm.Root(), "old", "keep.txt")); err != nil || string(b) != "old content" {
		t.Errorf("fs:old after a refused update: %q, %v", b, err)
	}
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}

	// 8 MiB of pattern from 10 KiB is 819×: allowed at 1000×, and the 8
	// MiB of zeros cost nothing.
	for _, tt := range []struct {
		what string
		src  pe.ProtectedEntity
		x    int
	}{
		{"MaxExpansion 1000", bomb, 1000},
		{"MaxExpansion -1", bomb, -1},
		{"trusted", newTarPE(t, "trusted", tr), 0},
	} {
		p, err := tm.Copy(ctx, tt.src, pe.CopyOptions{Mode: pe.CreateNew, MaxExpansion: tt.x})
		if err != nil {
			t.Fatalf("%s: %v", tt.what, err)
		}
		if fi, err := os.Stat(filepath.Join(tm.Root(), p.ID().Name(), "bomb")); err != nil || fi.Size() != size {
			t.Errorf("%s: restored %v, %v", tt.what, fi, err)
		}
	}
}

// lyingPE declares its data all zeros (Extents) while it reads as the
// tar: only the checks while writing can stop it.
type lyingPE struct{ *tarPE }

func (l lyingPE) Data(ctx context.Context) (pe.Image, error) {
	return zeroExtents{bytesImage{bytes.NewReader(l.tar)}}, nil
}

type zeroExtents struct{ bytesImage }

func (z zeroExtents) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	return []pe.Extent{{Offset: off, Length: length, Kind: pe.ExtentZero}}, nil
}

// TestSecurityRestoreFreeSpace: a restore that does not fit the target
// filesystem is refused before it writes, and one that fills it while
// writing stops, with pe.ErrLimit, leaving nothing (issue 22, item 8).
func TestSecurityRestoreFreeSpace(t *testing.T) {
	petest.RequireRoot(t, "mounts a tmpfs")
	ctx := context.Background()
	dir := t.TempDir()
	must(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "size=48m"))
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	tm := newTestRoot(t, dir)
	tr := bombTar(t, 64<<20)

	_, err := tm.Copy(ctx, newTarPE(t, "big", tr), pe.CopyOptions{Mode: pe.CreateNew})
	if !errors.Is(err, pe.ErrLimit) || !strings.Contains(err.Error(), "free space") {
		t.Errorf("restore of 64 MiB into 48 MiB: %v, want pe.ErrLimit about free space", err)
	}
	_, err = tm.Copy(ctx, lyingPE{newTarPE(t, "lying", tr)}, pe.CopyOptions{Mode: pe.CreateNew})
	if !errors.Is(err, pe.ErrLimit) {
		t.Errorf("restore that fills the filesystem: %v, want pe.ErrLimit", err)
	}
	if ids, err := tm.List(ctx); err != nil || len(ids) != 0 {
		t.Errorf("PEs after refused restores: %v, %v", ids, err)
	}

	// A snapshot of a sparse file larger than the filesystem fits: its
	// holes stay holes, and the check counts what the files take.
	sparse := filepath.Join(tm.Root(), "sparse", "holes")
	writeFile(t, sparse, []byte("data"), 0o644)
	must(t, os.Truncate(sparse, 256<<20))
	sid := snapshot(t, getPE(t, tm, fsID(t, "sparse")))
	p, err := tm.Copy(ctx, getPE(t, tm, sid), pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatalf("restore of a 256 MiB sparse file into 48 MiB: %v", err)
	}
	must(t, os.RemoveAll(filepath.Join(tm.Root(), p.ID().Name())))
	must(t, os.RemoveAll(filepath.Join(tm.Root(), "sparse")))
	must(t, getPE(t, tm, sid).DeleteSnapshot(ctx, sid.Snapshot()))
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}
	var st unix.Statfs_t
	must(t, unix.Statfs(dir, &st))
	if free := int64(st.Bavail) * st.Bsize; free < 47<<20 {
		t.Errorf("%d bytes free after the refused restores, want the 48 MiB back", free)
	}
}

// TestSecurityRestoreSparseBomb: a few KiB of tar can describe a file of
// 64 GiB of holes (GNU tar --sparse); from untrusted input that is bounded
// too, before the restore spends minutes producing zeros.
func TestSecurityRestoreSparseBomb(t *testing.T) {
	petest.RequireTool(t, "tar", "tar")
	ctx := context.Background()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFile(t, filepath.Join(src, "holes"), []byte("x"), 0o644)
	must(t, os.Truncate(filepath.Join(src, "holes"), 64<<30))
	archive := filepath.Join(dir, "sparse.tar")
	petest.Run(t, "tar", "--sparse", "-C", src, "-cf", archive, ".")
	tr, err := os.ReadFile(archive)
	must(t, err)
	if len(tr) > 1<<20 {
		t.Fatalf("GNU tar wrote %d bytes for a sparse file; want a few KiB", len(tr))
	}
	tm := newTestRoot(t, dir)
	start := time.Now()
	_, err = tm.Copy(ctx, untrustedPE{newTarPE(t, "sparse", tr), int64(len(tr))}, pe.CopyOptions{Mode: pe.CreateNew})
	if !errors.Is(err, pe.ErrLimit) || !strings.Contains(err.Error(), "holes and zeros included") {
		t.Errorf("restore of a 64 GiB sparse member: %v, want pe.ErrLimit", err)
	}
	t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}
}

// TestSecurityRestoreZipDeclaredSizeBomb: a zip of a few KiB whose data
// entry declares 1 PiB and holds a tar with one sparse member of 8 TiB of
// holes. The declared size is no allowance (archive/zip checks it only at
// the end of the stream): the restore fails with pe.ErrLimit at once, not
// after hours of producing zeros. On the old bound (the larger of the
// declared size and the expansion bound) the 60 s deadline ends it
// instead.
func TestSecurityRestoreZipDeclaredSizeBomb(t *testing.T) {
	petest.RequireTool(t, "tar", "tar")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFile(t, filepath.Join(src, "holes"), []byte("x"), 0o644)
	must(t, os.Truncate(filepath.Join(src, "holes"), 8<<40))
	archive := filepath.Join(dir, "sparse.tar")
	petest.Run(t, "tar", "--sparse", "-C", src, "-cf", archive, ".")
	must(t, os.Remove(filepath.Join(src, "holes")))
	tr, err := os.ReadFile(archive)
	must(t, err)
	// archive/zip drops the last chunk of an entry shorter than declared:
	// zeros after the end of the archive keep the tar itself well before
	// that end (and cost a few KiB of deflate).
	tr = append(tr, make([]byte, 8<<20)...)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var zbuf bytes.Buffer
	must(t, pe.WriteZip(ctx, &zbuf, newTarPE(t, "sparse", tr), nil))
	bomb := ziptest.DeclareDataSize(t, zbuf.Bytes(), 1<<50)
	if len(bomb) > 64<<10 {
		t.Fatalf("the bomb zip has %d bytes; want a few KiB", len(bomb))
	}
	z, err := pe.OpenZip(ctx, bytes.NewReader(bomb), int64(len(bomb)))
	must(t, err)
	img, err := z.Data(ctx)
	must(t, err)
	if img.Size() != 1<<50 {
		t.Fatalf("the zip's data declares %d bytes, want 1 PiB", img.Size())
	}
	img.Close()

	tm := newTestRoot(t, mkdir(t, filepath.Join(dir, "root")))
	_, err = tm.Copy(ctx, z, pe.CopyOptions{Mode: pe.CreateNew})
	if !errors.Is(err, pe.ErrLimit) || !strings.Contains(err.Error(), "holes and zeros included") {
		t.Fatalf("restore of a zip declaring 1 PiB of a tar of 8 TiB of holes: %v, want pe.ErrLimit", err)
	}
	if ids, err := tm.List(ctx); err != nil || len(ids) != 0 {
		t.Errorf("PEs after the refused restore: %v, %v", ids, err)
	}
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}
}

// mkdeep makes depth nested directories "d" below dir, holding one
// descriptor at a time, as an unprivileged user of a live tree can.
func mkdeep(t *testing.T, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for range depth {
		must(t, unix.Mkdirat(fd, "d", 0o755))
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		must(t, err)
		fd = next
	}
	unix.Close(fd)
}

// atDepth runs f on the directory depth levels of "d" below dir: deeper
// than a path can name.
func atDepth(t *testing.T, dir string, depth int, f func(fd int) error) error {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for range depth {
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		must(t, err)
		fd = next
	}
	defer unix.Close(fd)
	return f(fd)
}

// TestSecurityDeepTree: the walks of a live tree (its size for Info, the
// copy of a snapshot) hold a descriptor per level, so they stop at
// maxTreeDepth levels with an error naming where, instead of running the
// process out of descriptors on a tree 100,000 levels deep; a tree of
// exactly maxTreeDepth levels is still snapshotted.
func TestSecurityDeepTree(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	top := mkdir(t, filepath.Join(tm.Root(), "deep"))
	mkdeep(t, top, maxTreeDepth+1)
	p := getPE(t, tm, fsID(t, "deep"))
	const want = "d/d/d/d/… is nested more than 2048 levels deep"
	if _, err := p.Info(ctx); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("info of a tree %d levels deep: %v, want an error saying %q", maxTreeDepth+1, err, want)
	}
	if _, err := p.Snapshot(ctx, nil); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("snapshot of a tree %d levels deep: %v, want an error saying %q", maxTreeDepth+1, err, want)
	}
	if snaps, err := p.ListSnapshots(ctx); err != nil || len(snaps) != 0 {
		t.Errorf("snapshots after the refused one: %v, %v", snaps, err)
	}
	if h := hiddenEntries(t, tm.Root()); len(h) != 0 {
		t.Errorf("leftovers in the root: %v", h)
	}

	// One level less is within the bound.
	must(t, atDepth(t, top, maxTreeDepth, func(fd int) error { return unix.Unlinkat(fd, "d", unix.AT_REMOVEDIR) }))
	if _, err := p.Info(ctx); err != nil {
		t.Errorf("info of a tree %d levels deep: %v", maxTreeDepth, err)
	}
	sid, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatalf("snapshot of a tree %d levels deep: %v", maxTreeDepth, err)
	}
	must(t, p.DeleteSnapshot(ctx, sid.Snapshot()))
}
