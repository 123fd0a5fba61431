package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	applianceconfig "github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

const mib = 1 << 20

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is a configuration with PEs to back up and a repository.
type env struct {
	t   testing.TB
	dir string
	m   pe.Manager
	be  backend.Backend
	r   *Repository
}

func newEnv(t testing.TB, be backend.Backend, opts Options) *env {
	t.Helper()
	dir := t.TempDir()
	if err := applianceconfig.Init(dir); err != nil {
		t.Fatal(err)
	}
	m, err := applianceconfig.Load(dir, applianceconfig.Factories())
	if err != nil {
		t.Fatal(err)
	}
	if be == nil {
		if be, err = backend.NewDir(filepath.Join(t.TempDir(), "repo")); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	opts.Logger = quiet()
	if err := Init(ctx, be, opts); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &env{t: t, dir: dir, m: m, be: be, r: r}
}

// disk writes a sparse disk image of size bytes with random data in the
// given ranges, as disk PE name.
func (e *env) disk(name string, size int64, data map[int64]int64) string {
	e.t.Helper()
	path := filepath.Join(e.dir, "disk", name)
	f, err := os.Create(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(size)
	for off, n := range data {
		b := make([]byte, n)
		rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			e.t.Fatal(err)
		}
	}
	return path
}

func (e *env) snap(id string) pe.ProtectedEntity {
	e.t.Helper()
	ctx := context.Background()
	pid, _ := pe.ParseID(id)
	p, err := e.m.Get(ctx, pid)
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := p.Snapshot(ctx, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	sp, err := e.m.Get(ctx, s)
	if err != nil {
		e.t.Fatal(err)
	}
	return sp
}

// restore copies a repository snapshot into a new PE and returns its ID.
func (e *env) restore(id pe.ID) (pe.ID, error) {
	ctx := context.Background()
	src, err := e.r.OpenSnapshot(ctx, id)
	if err != nil {
		return pe.ID{}, err
	}
	tm, _ := e.m.Type(ctx, id.Type())
	out, err := tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		return pe.ID{}, err
	}
	return out.ID(), nil
}

// fileSum hashes a file as it reads it: the disks of these tests are
// up to 4 GiB, too many to hold at once under the race detector.
func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	sum, err := sumFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func sumFile(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

func TestDiskRoundTripAndIncremental(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "correct horse"})
	ctx := context.Background()
	const size = 4 << 30
	path := e.disk("vm.img", size, map[int64]int64{0: 200 * mib, 3 << 30: 56 * mib})
	p := e.snap("disk:vm.img")
	s, err := e.r.Backup(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Only the 256 MiB of data is read and stored (random: incompressible).
	if s.Read != 256*mib || s.New != 256*mib || s.Stored < 256*mib || s.Stored > 258*mib {
		t.Errorf("full backup: %+v", s)
	}
	st, _ := e.r.Stats(ctx)
	if st.PackBytes > 258*mib {
		t.Errorf("repository holds %d bytes for 256 MiB of data in a 4 GiB image", st.PackBytes)
	}
	if _, err := e.r.Backup(ctx, p, nil); !errors.Is(err, ErrExists) {
		t.Errorf("second backup of the same snapshot: %v", err)
	}

	restored, err := e.restore(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, filepath.Join(e.dir, "disk", restored.Name())) != fileSum(t, path) {
		t.Fatal("restored disk differs")
	}

	// Change 1% of the data: the next backup reads and stores about that.
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	for _, off := range []int64{10 * mib, 100 * mib, 3<<30 + 5*mib} {
		b := make([]byte, 850<<10)
		rand.Read(b)
		f.WriteAt(b, off)
	}
	f.Close()
	p2 := e.snap("disk:vm.img")
	s2, err := e.r.Backup(ctx, p2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Read > 6*mib || s2.New > 6*mib || s2.New < 2*mib || s2.Reused < 250*mib {
		t.Errorf("incremental backup after changing 2.5 MiB: %+v", s2)
	}
	// Forget the first: the second is a full snapshot on its own.
	if err := e.r.Forget(ctx, p.ID()); err != nil {
		t.Fatal(err)
	}
	ps, err := e.r.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prune: %+v", ps)
	restored2, err := e.restore(p2.ID())
	if err != nil {
		t.Fatal(err)
	}
	if fileSum(t, filepath.Join(e.dir, "disk", restored2.Name())) != fileSum(t, path) {
		t.Fatal("restore of the incremental snapshot differs")
	}
	if probs, err := e.r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
		t.Errorf("check: %v %v", probs, err)
	}

	// Random access without restoring, as NBD and FUSE use it.
	src, _ := e.r.OpenSnapshot(ctx, p2.ID())
	img, _ := src.Data(ctx)
	want := make([]byte, 4096)
	live, _ := os.Open(path)
	live.ReadAt(want, 3<<30+5*mib+777)
	live.Close()
	got := make([]byte, 4096)
	if _, err := img.ReadAt(got, 3<<30+5*mib+777); err != nil || !bytes.Equal(got, want) {
		t.Errorf("random read: %v", err)
	}
	exts, _ := img.Extents(ctx, 0, size)
	var data int64
	for _, x := range exts {
		if x.Kind == pe.ExtentData {
			data += x.Length
		}
	}
	if data != 256*mib {
		t.Errorf("extents: %d bytes of data", data)
	}
}

func TestFSRoundTripUnencrypted(t *testing.T) {
	e := newEnv(t, nil, Options{Insecure: true})
	ctx := context.Background()
	tree := filepath.Join(e.dir, "fs", "home")
	if err := samples.WriteTree(tree); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 5*mib)
	rand.Read(big)
	os.WriteFile(filepath.Join(tree, "big.bin"), big, 0o644)
	p := e.snap("fs:home")
	if _, err := e.r.Backup(ctx, p, nil); err != nil {
		t.Fatal(err)
	}
	restored, err := e.restore(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	if a, b := treeSums(t, tree), treeSums(t, filepath.Join(e.dir, "fs", restored.Name())); a != b {
		t.Error("restored tree differs")
	}
	// The table of contents comes along: files can be listed unread.
	src, _ := e.r.OpenSnapshot(ctx, p.ID())
	img, _ := src.Data(ctx)
	toc, err := img.(pe.TableOfContents).TOC(ctx)
	if err != nil || len(toc) < 5 {
		t.Errorf("TOC: %d entries, %v", len(toc), err)
	}
	// A second snapshot with one file changed adds little.
	os.WriteFile(filepath.Join(tree, "README.txt"), []byte("changed\n"), 0o644)
	s2, err := e.r.Backup(ctx, e.snap("fs:home"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s2.New > 2*mib {
		t.Errorf("second fs backup stored %d new bytes", s2.New)
	}
}

func treeSums(t *testing.T, root string) string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			out = append(out, rel+" "+hexSum(b))
		} else {
			out = append(out, rel+" "+d.Type().String())
		}
		return nil
	})
	return strings.Join(out, "\n")
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return string(s[:])
}

func TestWrongPasswordAndCorruption(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "right"})
	ctx := context.Background()
	if _, err := Open(ctx, e.be, Options{Password: "wrong", Logger: quiet()}); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := Open(ctx, e.be, Options{Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "password") {
		t.Errorf("no password: %v", err)
	}
	e.disk("a.img", 64*mib, map[int64]int64{0: 8 * mib})
	e.disk("b.img", 64*mib, map[int64]int64{0: 8 * mib})
	pa, pb := e.snap("disk:a.img"), e.snap("disk:b.img")
	// Two backups at once into one repository.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, p := range []pe.ProtectedEntity{pa, pb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.r.Backup(ctx, p, nil)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("concurrent backups: %v", errs)
	}
	if probs, err := e.r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
		t.Fatalf("check after concurrent backups: %v %v", probs, err)
	}

	// Flip a byte in one pack.
	var pack string
	filepath.WalkDir(filepath.Join(e.be.Location(), "data"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && pack == "" {
			pack = p
		}
		return nil
	})
	b, _ := os.ReadFile(pack)
	b[100] ^= 0xFF
	os.WriteFile(pack, b, 0o644)
	probs, err := e.r.Check(ctx, false, nil)
	if err != nil || len(probs) != 0 {
		t.Errorf("structure check of a flipped byte: %v %v", probs, err)
	}
	probs, err = e.r.Check(ctx, true, nil)
	if err != nil || len(probs) != 1 || probs[0].Chunk == "" || len(probs[0].Snapshots) == 0 || !strings.Contains(probs[0].Detail, "damaged") {
		t.Fatalf("check --read-data: %v %v", probs, err)
	}
	damaged, _ := pe.ParseID(probs[0].Snapshots[0])
	if _, err := e.restore(damaged); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("restore of a damaged snapshot: %v", err)
	}
}

// TestCDCStable checks that content-defined cuts survive an insertion:
// most chunks of the shifted stream are the same as before.
func TestCDCStable(t *testing.T) {
	data := make([]byte, 32*mib)
	rng := mrand.New(mrand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	cut := func(b []byte) map[string]bool {
		out := map[string]bool{}
		c := newChunker(bytes.NewReader(b))
		for {
			chunk, err := c.next(nil)
			if err != nil {
				return out
			}
			if len(chunk) > cdcMax {
				t.Fatalf("chunk of %d bytes", len(chunk))
			}
			out[chunkID(chunk)] = true
		}
	}
	a := cut(data)
	shifted := append(append(append([]byte{}, data[:10*mib]...), []byte("inserted bytes")...), data[10*mib:]...)
	b := cut(shifted)
	same := 0
	for id := range b {
		if a[id] {
			same++
		}
	}
	if len(a) < 16 || same < len(a)-3 {
		t.Errorf("%d chunks, %d unchanged after an insertion", len(a), same)
	}
}
