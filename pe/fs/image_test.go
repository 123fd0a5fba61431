package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

// snapshotImage makes a tree, snapshots it and opens the snapshot's data.
func snapshotImage(t *testing.T) (*TypeManager, pe.Image, string) {
	t.Helper()
	tm := newTestRoot(t, t.TempDir())
	live := filepath.Join(tm.Root(), "data")
	makeTree(t, live)
	sid := snapshot(t, getPE(t, tm, fsID(t, "data")))
	return tm, openData(t, getPE(t, tm, sid)), tm.trees.treePath("data", sid.Snapshot())
}

func TestImageMatchesTree(t *testing.T) {
	_, img, tree := snapshotImage(t)
	got, gotLinks := tarEntries(t, pe.NewReader(img))
	want, wantLinks := treeEntries(t, tree)
	compareEntries(t, "tar image", got, want)
	if !reflect.DeepEqual(gotLinks, wantLinks) {
		t.Errorf("hard links %v, want %v", gotLinks, wantLinks)
	}
	if img.Size()%512 != 0 {
		t.Errorf("size %d not a multiple of 512", img.Size())
	}
	// A second image of the same snapshot has the same bytes.
	again, err := openImage(context.Background(), tree)
	must(t, err)
	defer again.Close()
	if !bytes.Equal(readImage(t, img), readImage(t, again)) {
		t.Error("two images of one snapshot differ")
	}
}

func TestGNUTarReadsImage(t *testing.T) {
	petest.RequireTool(t, "tar", "tar")
	_, img, tree := snapshotImage(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "image.tar")
	must(t, os.WriteFile(archive, readImage(t, img), 0o644))

	list := petest.Run(t, "tar", "-tvf", archive)
	for _, want := range []string{"./", "a.txt", "sub/nested/deep.txt", "link -> a.txt", "sub/hl2 link to hl1", longName} {
		if !strings.Contains(list, want) {
			t.Errorf("tar -tvf does not show %q:\n%s", want, list)
		}
	}

	out := filepath.Join(dir, "out")
	must(t, os.Mkdir(out, 0o755))
	petest.Run(t, "tar", "-xf", archive, "-C", out, "--xattrs", "--xattrs-include=user.*", "--xattrs-include=system.posix_acl_*", "--numeric-owner")
	got, gotLinks := treeEntries(t, out)
	want, wantLinks := treeEntries(t, tree)
	compareEntries(t, "extracted by GNU tar", got, want)
	if !reflect.DeepEqual(gotLinks, wantLinks) {
		t.Errorf("hard links %v, want %v", gotLinks, wantLinks)
	}
}

func TestTOC(t *testing.T) {
	ctx := context.Background()
	_, img, tree := snapshotImage(t)
	toc, err := img.(pe.TableOfContents).TOC(ctx)
	must(t, err)
	scanned, err := pe.ScanTar(ctx, pe.NewReader(img))
	must(t, err)
	if len(toc) != len(scanned) {
		t.Fatalf("TOC has %d entries, ScanTar %d", len(toc), len(scanned))
	}
	for i := range toc {
		a, b := toc[i], scanned[i]
		if !a.ModTime.Equal(b.ModTime) {
			t.Errorf("entry %d %q: mtime %v, ScanTar %v", i, a.Name, a.ModTime, b.ModTime)
		}
		a.ModTime = b.ModTime
		// pe.ScanTar's Header is where the previous member's content
		// starts (tar.Reader skips that content inside Next); ours is
		// checked below by parsing the tar from it.
		a.Header = b.Header
		if !reflect.DeepEqual(a, b) {
			t.Errorf("entry %d:\n TOC     %+v\n ScanTar %+v", i, a, b)
		}
	}
	for _, e := range toc {
		tr := tar.NewReader(io.NewSectionReader(img, e.Header, img.Size()-e.Header))
		h, err := tr.Next()
		if err != nil || pe.CleanTarName(h.Name) != e.Name {
			t.Errorf("tar at Header %d of %q: %v, %v", e.Header, e.Name, h, err)
		}
	}
	files := 0
	for _, e := range toc {
		if !e.Mode.IsRegular() || e.HardLink {
			continue
		}
		files++
		want, err := os.ReadFile(filepath.Join(tree, filepath.FromSlash(e.Name)))
		must(t, err)
		got := make([]byte, e.Size)
		if _, err := img.ReadAt(got, e.Offset); err != nil {
			t.Fatalf("ReadAt %q: %v", e.Name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%q read at its TOC offset differs from the file", e.Name)
		}
	}
	if files < 8 {
		t.Errorf("only %d regular files in the TOC", files)
	}
	if toc[0].Name != "" || !toc[0].Mode.IsDir() {
		t.Errorf("first entry %+v, want the root", toc[0])
	}
}

func TestReadAtRandom(t *testing.T) {
	_, img, _ := snapshotImage(t)
	whole := readImage(t, img)
	size := int64(len(whole))

	check := func(r *rand.Rand) {
		off := r.Int64N(size + 100)
		n := r.IntN(3000)
		if r.IntN(10) == 0 {
			n = r.IntN(3 << 20)
		}
		p := make([]byte, n)
		k, err := img.ReadAt(p, off)
		end := min(off+int64(n), size)
		want := []byte{}
		if off < size {
			want = whole[off:end]
		}
		if k != len(want) || !bytes.Equal(p[:k], want) {
			t.Errorf("ReadAt(%d, %d) = %d bytes, want %d (or wrong bytes)", n, off, k, len(want))
		}
		switch {
		case k < n && !errors.Is(err, io.EOF):
			t.Errorf("ReadAt(%d, %d): short read with %v, want EOF", n, off, err)
		case k == n && err != nil && !errors.Is(err, io.EOF):
			t.Errorf("ReadAt(%d, %d): %v", n, off, err)
		}
	}
	// Concurrent readers share the open files.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 42))
			for range 300 {
				check(r)
			}
		}()
	}
	wg.Wait()

	if k, err := img.ReadAt(make([]byte, 10), size); k != 0 || err != io.EOF {
		t.Errorf("ReadAt at Size = %d, %v; want 0, EOF", k, err)
	}
	if _, err := img.ReadAt(make([]byte, 10), -1); err == nil {
		t.Error("ReadAt at -1 succeeded")
	}

	exts, err := img.Extents(context.Background(), 0, size)
	must(t, err)
	var pos int64
	for _, e := range exts {
		if e.Offset != pos {
			t.Fatalf("extents not contiguous at %d: %+v", pos, e)
		}
		if e.Kind.ReadsZero() && !pe.IsZero(whole[e.Offset:e.End()]) {
			t.Errorf("extent %+v is not zero", e)
		}
		pos = e.End()
	}
	if pos != size {
		t.Errorf("extents end at %d, size %d", pos, size)
	}

	must(t, img.Close())
	if _, err := img.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
}

// TestLiveDataDetectsChange: the image of a live tree fails rather than
// return content that does not match its headers.
func TestLiveDataDetectsChange(t *testing.T) {
	tm := newTestRoot(t, t.TempDir())
	live := filepath.Join(tm.Root(), "data")
	makeTree(t, live)
	img := openData(t, getPE(t, tm, fsID(t, "data")))
	toc, err := img.(pe.TableOfContents).TOC(context.Background())
	must(t, err)
	offsets := map[string]pe.TOCEntry{}
	for _, e := range toc {
		offsets[e.Name] = e
	}

	// Grown, shrunk, replaced.
	f, err := os.OpenFile(filepath.Join(live, "a.txt"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString("more")
	must(t, err)
	must(t, f.Close())
	must(t, os.Truncate(filepath.Join(live, "big.bin"), 100))
	must(t, os.Remove(filepath.Join(live, "sub", "nested", "deep.txt")))
	writeFile(t, filepath.Join(live, "sub", "nested", "deep.txt"), []byte("deep\n"), 0o644)

	for _, name := range []string{"a.txt", "big.bin", "sub/nested/deep.txt"} {
		e := offsets[name]
		if _, err := img.ReadAt(make([]byte, e.Size), e.Offset); !errors.Is(err, errChanged) {
			t.Errorf("read of changed %s: %v, want errChanged", name, err)
		}
	}
	if _, err := io.ReadAll(pe.NewReader(img)); !errors.Is(err, errChanged) {
		t.Errorf("sequential read of a changed tree: %v, want errChanged", err)
	}
}
