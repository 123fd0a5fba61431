package pe

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"strings"
	"testing"
	"time"
)

func TestScanTarOffsets(t *testing.T) {
	long := strings.Repeat("d/", 80) + "file.txt" // forces a PAX long-name record
	files := []struct {
		name, body string
		xattr      bool
	}{
		{"./a.txt", "hello", false},
		{long, strings.Repeat("x", 1000), false},
		{"b/c.bin", strings.Repeat("\x00\x01", 3000), true},
		{"empty", "", false},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	if err := tw.WriteHeader(&tar.Header{Name: "b/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		h := &tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o640, Size: int64(len(f.body)), ModTime: mtime, Uid: 1000, Gid: 100}
		if f.xattr {
			h.PAXRecords = map[string]string{"SCHILY.xattr.user.test": "v1"}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "a.txt", ModTime: mtime}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()

	toc, err := ScanTar(context.Background(), bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(toc) != len(files)+2 {
		t.Fatalf("%d entries, want %d", len(toc), len(files)+2)
	}
	if toc[0].Name != "b" || !toc[0].Mode.IsDir() {
		t.Errorf("entry 0 = %+v", toc[0])
	}
	for i, f := range files {
		e := toc[i+1]
		if e.Name != CleanTarName(f.name) || e.Size != int64(len(f.body)) || e.UID != 1000 || e.Mode.Perm() != 0o640 {
			t.Errorf("entry %d = %+v", i+1, e)
		}
		// Header must point at a header from which a tar reader reads this member.
		if h, err := tar.NewReader(bytes.NewReader(raw[e.Header:])).Next(); err != nil || CleanTarName(h.Name) != e.Name {
			t.Errorf("%s: Header offset %d does not start its header (%v)", f.name, e.Header, err)
		}
		if got := string(raw[e.Offset : e.Offset+e.Size]); got != f.body {
			t.Errorf("%s: bytes at offset %d are not the file's", f.name, e.Offset)
		}
		if f.xattr && e.Xattrs["user.test"] != "v1" {
			t.Errorf("%s: xattrs %v", f.name, e.Xattrs)
		}
	}
	if l := toc[len(toc)-1]; l.Linkname != "a.txt" || l.Mode&fs.ModeSymlink == 0 {
		t.Errorf("symlink entry = %+v", l)
	}
	if _, err := ScanTar(context.Background(), bytes.NewReader(raw[:700])); err == nil {
		t.Error("truncated tar scanned without error")
	}
}

func TestCleanTarName(t *testing.T) {
	for in, want := range map[string]string{"./a/b/": "a/b", "/abs": "abs", "././x": "x", "a": "a", "./": ""} {
		if got := CleanTarName(in); got != want {
			t.Errorf("CleanTarName(%q) = %q, want %q", in, got, want)
		}
	}
}
