package fs

import (
	"archive/tar"
	"bytes"
	"context"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
)

// FuzzExtract feeds arbitrary bytes as an untrusted tar stream to the
// restore's extraction: it must not panic, create anything outside its
// directory, or restore anything that grants privilege (a device node
// among them). Symlinks may point anywhere: their targets are data.
func FuzzExtract(f *testing.F) {
	ok := tarMember{name: "fine.txt", typ: tar.TypeReg, body: "fine"}
	for _, ms := range [][]tarMember{
		{ok, {name: "d/", typ: tar.TypeDir}, {name: "d/e/f", typ: tar.TypeReg, body: "deep"}},
		{ok, {name: "h", typ: tar.TypeLink, link: "fine.txt"}, {name: "s", typ: tar.TypeSymlink, link: "fine.txt"}},
		{ok, {name: "../evil", typ: tar.TypeReg, body: "x"}},
		{{name: "l", typ: tar.TypeSymlink, link: "/etc"}, {name: "l/passwd", typ: tar.TypeReg, body: "x"}},
		{{name: "y", typ: tar.TypeSymlink, link: "x/s/.."}, {name: "x/s", typ: tar.TypeSymlink, link: ".."}},
		{{name: "d/", typ: tar.TypeDir}, {name: "d", typ: tar.TypeSymlink, link: "/etc"}, {name: "d/passwd", typ: tar.TypeReg, body: "x"}},
		{{name: "sda", typ: tar.TypeBlock}, {name: "h", typ: tar.TypeLink, link: "sda"}},
		{{name: "p", typ: tar.TypeFifo}, {name: "q", typ: tar.TypeLink, link: "p"}},
		{{name: "a", typ: tar.TypeSymlink, link: "/tmp"}, {name: "a/x", typ: tar.TypeReg, body: "x"}},
	} {
		f.Add(buildTar(f, ms...))
	}
	f.Add(privilegedTar(f))
	f.Add(bombTar(f, 64<<10))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ctx := context.Background()
		base := t.TempDir()
		in, out := filepath.Join(base, "in"), filepath.Join(base, "out")
		must(t, os.Mkdir(in, 0o700))
		must(t, os.Mkdir(out, 0o700))
		src := untrustedPE{newTarPE(t, "fuzz", raw), int64(len(raw))}
		b, err := budget.New(ctx, in, src, bytesImage{bytes.NewReader(raw)}, pe.CopyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		extract(ctx, in, bytes.NewReader(raw), extractOptions{dropPrivileges: true, budget: b})

		if entries, err := os.ReadDir(base); err != nil || len(entries) != 2 {
			t.Fatalf("beside the extraction directory: %v, %v", entries, err)
		}
		if entries, err := os.ReadDir(out); err != nil || len(entries) != 0 {
			t.Fatalf("written outside the extraction directory: %v, %v", entries, err)
		}
		checkUnprivileged(t, in)
	})
}

// checkUnprivileged fails if the tree at dir has anything that grants
// privilege.
func checkUnprivileged(t *testing.T, dir string) {
	t.Helper()
	euid := uint32(os.Geteuid())
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR, unix.S_IFREG, unix.S_IFIFO:
		case unix.S_IFLNK:
			return nil
		default:
			t.Fatalf("%s: restored a file of mode %o", p, st.Mode)
		}
		if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 || st.Uid != euid {
			t.Fatalf("%s: mode %o, owner %d from untrusted input", p, st.Mode, st.Uid)
		}
		x, err := listXattrs(p)
		if err != nil {
			return err
		}
		for k := range x {
			if strings.HasPrefix(k, "trusted.") || k == "security.capability" {
				t.Fatalf("%s: xattr %s from untrusted input", p, k)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
