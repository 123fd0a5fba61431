package pg

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

type member struct {
	name string
	typ  byte
	body string
	link string
}

func tarOf(t *testing.T, members ...member) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Typeflag: m.typ, Mode: 0o600, Size: int64(len(m.body)), Linkname: m.link}
		if m.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(m.body))
		}
	}
	tw.Close()
	return b.Bytes()
}

// A base backup's archive is extracted private to root, then handed over
// to the server's account; names that leave the data directory, links and archives
// past the expansion bound are refused as invalid input, writing nothing
// outside the directory.
func TestUntar(t *testing.T) {
	ctx := context.Background()
	acct, err := lookupAccount(pgtest.OSUser)
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	good := tarOf(t, member{name: "./global/", typ: tar.TypeDir}, member{name: "base/1/1259", typ: tar.TypeReg, body: "relation"},
		member{name: "PG_VERSION", typ: tar.TypeReg, body: "15\n"})
	if err := untar(ctx, bytes.NewReader(good), dir, -1); err != nil {
		t.Fatal(err)
	}
	owners := func(uid int) {
		t.Helper()
		for _, rel := range []string{".", "global", "base", "base/1", "base/1/1259", "PG_VERSION"} {
			fi, err := os.Lstat(filepath.Join(dir, rel))
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			want := os.FileMode(0o600)
			if fi.IsDir() {
				want = 0o700 | os.ModeDir
			}
			if int(st.Uid) != uid || fi.Mode() != want {
				t.Errorf("%s: uid %d mode %v, want %d %v", rel, st.Uid, fi.Mode(), uid, want)
			}
		}
	}
	// root's while root writes in it, then the account's
	owners(0)
	if err := handOver(dir, acct); err != nil {
		t.Fatal(err)
	}
	owners(acct.uid)

	for name, tc := range map[string]struct {
		archive []byte
		limit   int64
		want    error
	}{
		"parent":    {tarOf(t, member{name: "../evil", typ: tar.TypeReg, body: "x"}), -1, pe.ErrInvalidSource},
		"deep":      {tarOf(t, member{name: "pg_wal/../../evil", typ: tar.TypeReg, body: "x"}), -1, pe.ErrInvalidSource},
		"absolute":  {tarOf(t, member{name: "/../evil", typ: tar.TypeReg, body: "x"}), -1, pe.ErrInvalidSource},
		"symlink":   {tarOf(t, member{name: "pg_tblspc/16384", typ: tar.TypeSymlink, link: "/"}), -1, pe.ErrInvalidSource},
		"hard link": {tarOf(t, member{name: "a", typ: tar.TypeLink, link: "/etc/passwd"}), -1, pe.ErrInvalidSource},
		"expansion": {tarOf(t, member{name: "big", typ: tar.TypeReg, body: strings.Repeat("x", 4096)}), 1000, pe.ErrLimit},
		"garbage":   {[]byte(strings.Repeat("not a tar ", 100)), -1, pe.ErrInvalidSource},
	} {
		d := filepath.Join(base, name)
		err := untar(ctx, bytes.NewReader(tc.archive), d, tc.limit)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if _, err := os.Lstat(filepath.Join(base, "evil")); err == nil {
		t.Error("an archive wrote outside its directory")
	}
}
