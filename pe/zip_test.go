package pe

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testEntity is a PE held in memory: the input of zip tests.
type testEntity struct {
	id         ID
	data, md   []byte
	components []ProtectedEntity
}

func (e *testEntity) ID() ID { return e.id }
func (e *testEntity) Info(context.Context) (Info, error) {
	info := Info{ID: e.id, Name: e.id.Name(), Size: int64(len(e.data))}
	for _, c := range e.components {
		info.ComponentSpecs = append(info.ComponentSpecs, ComponentSpec{ID: c.ID()})
	}
	return info, nil
}
func (e *testEntity) Snapshot(context.Context, Params) (ID, error) { return ID{}, ErrNotSupported }
func (e *testEntity) ListSnapshots(context.Context) ([]ID, error)  { return nil, nil }
func (e *testEntity) DeleteSnapshot(context.Context, string) error { return ErrNotSupported }
func (e *testEntity) SnapshotInfo(context.Context, string) (Info, error) {
	return Info{}, ErrNotSupported
}
func (e *testEntity) Components(context.Context) ([]ProtectedEntity, error) { return e.components, nil }
func (e *testEntity) Data(context.Context) (Image, error) {
	if e.data == nil {
		return nil, ErrNoData
	}
	return bytesImage{bytes.NewReader(e.data)}, nil
}
func (e *testEntity) Metadata(context.Context) (io.ReadCloser, error) {
	if e.md == nil {
		return nil, ErrNoMetadata
	}
	return io.NopCloser(bytes.NewReader(e.md)), nil
}
func (e *testEntity) Overwrite(context.Context, ProtectedEntity, bool) error { return ErrNotSupported }

type bytesImage struct{ *bytes.Reader }

func (b bytesImage) Close() error { return nil }
func (b bytesImage) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	return AllData(off, length, b.Size()), nil
}

func mustID(t testing.TB, s string) ID {
	t.Helper()
	id, err := ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// sampleEntity is a PE with metadata, 4 MiB of data with long zero runs and
// two components, one of them with metadata of its own.
func sampleEntity(t testing.TB) *testEntity {
	data := make([]byte, 4<<20)
	copy(data[0:], randomBytes(1, 300<<10))
	copy(data[3<<20:], randomBytes(2, 100<<10))
	return &testEntity{
		id: mustID(t, "vm:web01:s1"), data: data, md: []byte(`{"cpus":2}`),
		components: []ProtectedEntity{
			&testEntity{id: mustID(t, "disk:web01-disk0.img:s1"), data: randomBytes(3, 1<<20), md: []byte("disk0 md")},
			&testEntity{id: mustID(t, "disk:web01/disk1.img:s1"), data: randomBytes(4, 70000)},
		},
	}
}

func zipBytes(t testing.TB, p ProtectedEntity) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteZip(context.Background(), &buf, p, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readAll(t testing.TB, p ProtectedEntity) (data, md []byte) {
	t.Helper()
	ctx := context.Background()
	img, err := p.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	data, err = io.ReadAll(NewReader(img))
	if err != nil {
		t.Fatalf("read data of %s: %v", p.ID(), err)
	}
	if rc, err := p.Metadata(ctx); err == nil {
		md, err = io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return data, md
}

func TestZipRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := sampleEntity(t)
	raw := zipBytes(t, src)
	if len(raw) > 2<<20 {
		t.Errorf("zip is %d bytes; the zeros should have compressed", len(raw))
	}
	got, err := OpenZip(ctx, bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var check func(want *testEntity, got ProtectedEntity)
	check = func(want *testEntity, got ProtectedEntity) {
		wantInfo, _ := want.Info(ctx)
		gotInfo, err := got.Info(ctx)
		if err != nil || gotInfo.ID != wantInfo.ID || gotInfo.Size != wantInfo.Size || len(gotInfo.ComponentSpecs) != len(wantInfo.ComponentSpecs) {
			t.Errorf("info %+v, want %+v (%v)", gotInfo, wantInfo, err)
		}
		data, md := readAll(t, got)
		if !bytes.Equal(data, want.data) || !bytes.Equal(md, want.md) {
			t.Errorf("%s: data/metadata differ (%d/%d bytes, want %d/%d)", want.id, len(data), len(md), len(want.data), len(want.md))
		}
		comps, _ := got.Components(ctx)
		if len(comps) != len(want.components) {
			t.Fatalf("%s: %d components, want %d", want.id, len(comps), len(want.components))
		}
		for i, c := range comps {
			check(want.components[i].(*testEntity), c)
		}
	}
	check(src, got)

	zr, _ := zip.NewReader(bytes.NewReader(raw), int64(len(raw)))
	ncomp := 0
	for _, f := range zr.File {
		if strings.HasPrefix(f.Name, "components/") {
			ncomp++
			if f.Method != zip.Store {
				t.Errorf("component %s is not stored", f.Name)
			}
		}
	}
	if ncomp != 2 {
		t.Errorf("%d component entries, want 2", ncomp)
	}
}

func TestZipUnzipTool(t *testing.T) {
	if _, err := exec.LookPath("unzip"); err != nil {
		t.Fatal("unzip missing: apt-get install -y unzip")
	}
	path := filepath.Join(t.TempDir(), "pe.zip")
	if err := os.WriteFile(path, zipBytes(t, sampleEntity(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("unzip", "-t", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors detected") {
		t.Fatalf("unzip -t: %v\n%s", err, out)
	}
	out, _ = exec.Command("unzip", "-l", path).CombinedOutput()
	for _, name := range []string{"vm:web01:s1.peinfo", "vm:web01:s1.md", "vm:web01:s1.data", "components/disk:web01-disk0.img:s1.zip"} {
		if !strings.Contains(string(out), name) {
			t.Errorf("unzip -l lacks %s:\n%s", name, out)
		}
	}
}

func TestZipRandomReads(t *testing.T) {
	ctx := context.Background()
	src := sampleEntity(t)
	raw := zipBytes(t, src)
	p, err := OpenZip(ctx, bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	comps, _ := p.Components(ctx)
	// The top PE's data is deflated; a stored data entry is tested through
	// a hand-made zip below.
	stored := storedDataZip(t, src.data)
	sp, err := OpenZip(ctx, bytes.NewReader(stored), int64(len(stored)))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	for _, tc := range []struct {
		p    ProtectedEntity
		want []byte
	}{{p, src.data}, {comps[0], src.components[0].(*testEntity).data}, {sp, src.data}} {
		img, err := tc.p.Data(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 200 {
			off := r.Int64N(int64(len(tc.want)) + 10)
			buf := make([]byte, r.IntN(100000))
			n, err := img.ReadAt(buf, off)
			end := min(off+int64(len(buf)), int64(len(tc.want)))
			if off >= int64(len(tc.want)) {
				if n != 0 || err != io.EOF {
					t.Fatalf("ReadAt past end: %d, %v", n, err)
				}
				continue
			}
			if !bytes.Equal(buf[:n], tc.want[off:end]) || int64(n) != end-off || (n < len(buf) && err != io.EOF) {
				t.Fatalf("ReadAt(%d, %d) = %d, %v: wrong bytes", off, len(buf), n, err)
			}
		}
		img.Close()
	}
}

// storedDataZip builds a valid PE zip whose data entry is stored.
func storedDataZip(t testing.TB, data []byte) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("disk:x:s.peinfo")
	fmt.Fprintf(w, `{"id":"disk:x:s","name":"x","size":%d}`, len(data))
	w, _ = zw.CreateHeader(&zip.FileHeader{Name: "disk:x:s.data", Method: zip.Store})
	w.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type zipEntry struct {
	name   string
	body   string
	method uint16
}

func buildZip(t testing.TB, entries ...zipEntry) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, e.body)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestZipRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	info := zipEntry{"fs:a:s.peinfo", `{"id":"fs:a:s","name":"a"}`, zip.Deflate}
	valid := zipBytes(t, sampleEntity(t))
	nest := buildZip(t, info)
	for range 17 {
		nest = buildZip(t, info, zipEntry{"components/fs:a:s.zip", string(nest), zip.Store})
	}
	flipped := append([]byte(nil), valid...)
	zr, _ := zip.NewReader(bytes.NewReader(valid), int64(len(valid)))
	for _, f := range zr.File {
		if strings.HasSuffix(f.Name, ".data") && !strings.HasPrefix(f.Name, "components/") {
			off, _ := f.DataOffset()
			flipped[off+1000] ^= 0xff
		}
	}

	for _, tc := range []struct {
		name, want string
		raw        []byte
	}{
		{"garbage", "not a valid zip", []byte("this is not a zip file at all")},
		{"truncated", "zip", valid[:len(valid)/2]},
		{"escape", `"../evil.data"`, buildZip(t, info, zipEntry{"../evil.data", "x", zip.Deflate})},
		{"absolute", `absolute`, buildZip(t, zipEntry{"/abs.peinfo", "{}", zip.Deflate})},
		{"component escape", `'..'`, buildZip(t, info, zipEntry{"components/../../x.zip", "x", zip.Store})},
		{"unknown entry", `not part of the PE zip layout`, buildZip(t, info, zipEntry{"fs:a:s.exe", "x", zip.Deflate})},
		{"no peinfo", "no .peinfo", buildZip(t, zipEntry{"fs:a:s.data", "x", zip.Deflate})},
		{"two peinfos", "two peinfo", buildZip(t, info, zipEntry{"fs:b:s.peinfo", info.body, zip.Deflate})},
		{"foreign data", "does not belong", buildZip(t, info, zipEntry{"fs:b:s.data", "x", zip.Deflate})},
		{"peinfo mismatch", "holds the info", buildZip(t, zipEntry{"fs:b:s.peinfo", info.body, zip.Deflate})},
		{"huge peinfo", "at most 1048576", buildZip(t, zipEntry{"fs:a:s.peinfo", strings.Repeat(" ", 10<<20), zip.Deflate})},
		{"bad json", "fs:a:s.peinfo", buildZip(t, zipEntry{"fs:a:s.peinfo", "{", zip.Deflate})},
		{"deflated component", "must be stored", buildZip(t, info, zipEntry{"components/fs:c:s.zip", string(buildZip(t, zipEntry{"fs:c:s.peinfo", `{"id":"fs:c:s"}`, zip.Deflate})), zip.Deflate})},
		{"deep nesting", "nested deeper than 16", nest},
	} {
		_, err := OpenZip(ctx, bytes.NewReader(tc.raw), int64(len(tc.raw)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", tc.name, err, tc.want)
		}
	}

	// A declared size of 2^62 is refused before anything is read.
	huge := hugeDeclaredZip(t, 1<<62)
	if _, err := OpenZip(ctx, bytes.NewReader(huge), int64(len(huge))); err == nil || !strings.Contains(err.Error(), "declares") {
		t.Errorf("2^62 declared size: error %v", err)
	}

	// Corrupt data in a deflated entry surfaces as an error on read.
	p, err := OpenZip(ctx, bytes.NewReader(flipped), int64(len(flipped)))
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(NewReader(img)); err == nil {
		t.Error("flipped byte in data read without error")
	}
}

// hugeDeclaredZip is a zip whose data entry declares size bytes but holds
// four, as a hostile writer would make it.
func hugeDeclaredZip(t *testing.T, size uint64) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("fs:a:s.peinfo")
	io.WriteString(w, `{"id":"fs:a:s","name":"a"}`)
	w, err := zw.CreateRaw(&zip.FileHeader{Name: "fs:a:s.data", Method: zip.Store, UncompressedSize64: size, CompressedSize64: 4})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "tiny")
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
