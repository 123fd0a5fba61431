package usecase

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/disk"
	pefs "github.com/astrolabe-appliance/astrolabe/pe/fs"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// env is a Service over real fs and disk PEs in temporary directories,
// with a repository in a directory, an NBD export source and a mount
// root, and a journal that records what it is told.
type env struct {
	fsRoot, diskRoot string
	m                pe.Manager
	r                *repo.Repository
	src              *nbdexport.Source
	journal          *journal
	uc               *Service
}

const diskSize = 3<<20 + 4096

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	e := &env{fsRoot: filepath.Join(dir, "fs"), diskRoot: filepath.Join(dir, "disk"), journal: &journal{}}
	for _, d := range []string{e.fsRoot, e.diskRoot, filepath.Join(dir, "repo")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// An fs PE with a few files, and a disk PE of random data with a hole.
	rnd := rand.New(rand.NewPCG(1, 2))
	tree := filepath.Join(e.fsRoot, "home")
	must(t, os.MkdirAll(filepath.Join(tree, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(tree, "a.txt"), []byte("hello\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(tree, "sub", "b.bin"), randomBytes(rnd, 200<<10), 0o600))
	img := randomBytes(rnd, diskSize)
	clear(img[1<<20 : 2<<20])
	must(t, os.WriteFile(filepath.Join(e.diskRoot, "vm1.img"), img, 0o644))

	fstm, err := pefs.NewTypeManager(e.fsRoot)
	must(t, err)
	dtm, err := disk.NewTypeManager(e.diskRoot)
	must(t, err)
	m, err := pe.NewManager(fstm, dtm)
	must(t, err)
	e.m = m
	be, err := backend.NewDir(filepath.Join(dir, "repo"))
	must(t, err)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := repo.Options{Insecure: true, Logger: quiet}
	must(t, repo.Init(ctx, be, opts))
	if e.r, err = repo.Open(ctx, be, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.r.Close() })
	e.src = nbdexport.NewSource(m, filepath.Join(t.TempDir(), "overlays"))
	e.uc, err = New(Config{
		Manager: m, Repository: e.r, Exports: e.src, MountRoot: filepath.Join(dir, "mounts"), Journal: e.journal, Logger: quiet,
		ExportURI: func(name string, writable bool) string {
			if writable {
				return "nbds://test/" + name
			}
			return "nbd://test/" + name
		},
	})
	must(t, err)
	t.Cleanup(func() { e.uc.Close() })
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func id(t *testing.T, s string) pe.ID {
	t.Helper()
	x, err := pe.ParseID(s)
	must(t, err)
	return x
}

func snapshots(t *testing.T, m pe.Manager, x pe.ID) []pe.ID {
	t.Helper()
	p, err := m.Get(context.Background(), x.Base())
	must(t, err)
	snaps, err := p.ListSnapshots(context.Background())
	must(t, err)
	return snaps
}

// journal records what a Service tells it, one line an event.
type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) record(event string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, event)
	return nil
}

func (j *journal) recorded() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.events)
}

func (j *journal) InstantVMStarted(v InstantVM) error {
	return j.record(fmt.Sprintf("instant %s %s %v", v.ID, v.VM.Name, v.Disks))
}

func (j *journal) InstantVMStopped(name string) error { return j.record("instant stop " + name) }

func (j *journal) NFSExportStarted(e NFSExport) error {
	return j.record(fmt.Sprintf("nfs %s %s", e.ID, e.Name))
}

func (j *journal) NFSExportStopped(name string) error { return j.record("nfs stop " + name) }

func (j *journal) ExportUpdated(e Export) error {
	return j.record(fmt.Sprintf("update %s %s %s %v", e.ID, e.Name, e.Target, e.Live))
}

func (j *journal) ExportStarted(e Export) error {
	return j.record(fmt.Sprintf("export %s %s %s %v", e.ID, e.Name, e.Target, e.Writable))
}
func (j *journal) ExportStopped(id pe.ID) error { return j.record("stop " + id.String()) }
func (j *journal) MountStarted(m Mount) error {
	return j.record(fmt.Sprintf("mount %s %s %v %v", m.ID, m.Path, m.AllowOther, m.Force))
}
func (j *journal) MountStopped(id string) error { return j.record("unmount " + id) }

// TestResolveSnapshotsLive: a live PE is snapshotted, once per Resolve; a
// snapshot is returned as it is.
func TestResolveSnapshotsLive(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, live := range []pe.ID{id(t, "fs:home"), id(t, "disk:vm1.img")} {
		p, err := e.uc.Resolve(ctx, live)
		must(t, err)
		snap := p.ID()
		if !snap.HasSnapshot() || snap.Base() != live {
			t.Fatalf("Resolve(%s) = %s, want a snapshot of it", live, snap)
		}
		if got := snapshots(t, e.m, live); !slices.Equal(got, []pe.ID{snap}) {
			t.Fatalf("%s has snapshots %v, want [%s]", live, got, snap)
		}
		again, err := e.uc.Resolve(ctx, snap)
		must(t, err)
		if again.ID() != snap {
			t.Errorf("Resolve(%s) = %s", snap, again.ID())
		}
		if got := snapshots(t, e.m, live); len(got) != 1 {
			t.Errorf("resolving a snapshot took another: %v", got)
		}
	}
}

// TestErrorsWrap: what is missing is ErrNotFound, a part the Service lacks
// ErrNotConfigured, a snapshot of a snapshot ErrNotSupported.
func TestErrorsWrap(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	bare, err := New(Config{Manager: e.m})
	must(t, err)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"resolve missing PE", second(e.uc.Resolve(ctx, id(t, "fs:nope"))), pe.ErrNotFound},
		{"resolve missing snapshot", second(e.uc.Resolve(ctx, id(t, "fs:home:20260101T000000.000Z-00000000"))), pe.ErrNotFound},
		{"resolve missing type", second(e.uc.Resolve(ctx, id(t, "vm:x"))), pe.ErrNotFound},
		{"snapshot missing PE", second(e.uc.Snapshot(ctx, id(t, "disk:nope.img"), nil)), pe.ErrNotFound},
		{"snapshot of a snapshot", second(e.uc.Snapshot(ctx, id(t, "disk:vm1.img:x"), nil)), pe.ErrNotSupported},
		{"backup missing PE", second(e.uc.Backup(ctx, id(t, "disk:nope.img"), nil)), pe.ErrNotFound},
		{"restore missing snapshot", second(e.uc.Restore(ctx, id(t, "disk:vm1.img:20260101T000000.000Z-00000000"), "disk", pe.CopyOptions{}, nil)), pe.ErrNotFound},
		{"restore into missing type", second(e.uc.Restore(ctx, id(t, "disk:vm1.img:x"), "vm", pe.CopyOptions{}, nil)), pe.ErrNotFound},
		{"stop missing export", second(e.uc.StopExport(ctx, id(t, "disk:vm1.img:x"), false, nil)), pe.ErrNotFound},
		{"unmount missing mount", e.uc.Unmount(ctx, "mount-x"), pe.ErrNotFound},
		{"backup without repository", second(bare.Backup(ctx, id(t, "fs:home"), nil)), ErrNotConfigured},
		{"restore without repository", second(bare.Restore(ctx, id(t, "fs:home:x"), "fs", pe.CopyOptions{}, nil)), ErrNotConfigured},
		{"snapshots without repository", second(bare.RepositorySnapshots(ctx, pe.ID{})), ErrNotConfigured},
		{"export without NBD", second(bare.StartExport(ctx, id(t, "fs:home"), false)), ErrNotConfigured},
		{"mount without root", second(bare.Mount(ctx, MountRequest{Path: "x"})), ErrNotConfigured},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if got := snapshots(t, e.m, id(t, "fs:home")); len(got) != 0 {
		t.Errorf("failed use cases left snapshots %v", got)
	}
}

func second[T any](_ T, err error) error { return err }

// TestBackupRestoreRoundTrip: a live PE is backed up as a new snapshot and
// restored from the repository byte for byte, even after the live PE
// changed.
func TestBackupRestoreRoundTrip(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	want, err := os.ReadFile(filepath.Join(e.diskRoot, "vm1.img"))
	must(t, err)
	wantTree := readTree(t, filepath.Join(e.fsRoot, "home"))

	var sums []repo.Summary
	for _, live := range []string{"disk:vm1.img", "fs:home"} {
		sum, err := e.uc.Backup(ctx, id(t, live), nil)
		must(t, err)
		// The snapshot taken to back it up is gone: nightly backups
		// must not pile snapshots up on the PE's storage.
		if got := snapshots(t, e.m, id(t, live)); len(got) != 0 || sum.ID.Base() != id(t, live) || !sum.ID.HasSnapshot() {
			t.Fatalf("backup of %s is %s, the PE's snapshots left %v", live, sum.ID, got)
		}
		sums = append(sums, sum)
	}
	listed, err := e.uc.RepositorySnapshots(ctx, pe.ID{})
	must(t, err)
	byName := func(a, b pe.ID) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(listed, byName)
	wantListed := []pe.ID{sums[0].ID, sums[1].ID}
	slices.SortFunc(wantListed, byName)
	if !slices.Equal(listed, wantListed) {
		t.Fatalf("repository snapshots %v, want %v", listed, wantListed)
	}
	if one, err := e.uc.RepositorySnapshots(ctx, id(t, "fs:home")); err != nil || !slices.Equal(one, []pe.ID{sums[1].ID}) {
		t.Fatalf("repository snapshots of fs:home: %v, %v", one, err)
	}

	// The live PEs change; the backups do not.
	must(t, os.WriteFile(filepath.Join(e.diskRoot, "vm1.img"), make([]byte, diskSize), 0o644))
	must(t, os.WriteFile(filepath.Join(e.fsRoot, "home", "a.txt"), []byte("changed\n"), 0o644))

	var prog counter
	out, err := e.uc.Restore(ctx, sums[0].ID, "disk", pe.CopyOptions{Mode: pe.CreateNew}, &prog)
	must(t, err)
	got, err := os.ReadFile(filepath.Join(e.diskRoot, out.ID().Name()))
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Errorf("restored %s differs from the backed-up disk", out.ID())
	}
	if prog.added() == 0 {
		t.Error("restore reported no progress")
	}
	out, err = e.uc.Restore(ctx, sums[1].ID, "fs", pe.CopyOptions{Mode: pe.CreateNew}, nil)
	must(t, err)
	if gotTree := readTree(t, filepath.Join(e.fsRoot, out.ID().Name())); !maps.Equal(gotTree, wantTree) {
		t.Errorf("restored %s differs from the backed-up tree:\n got %v\nwant %v", out.ID(), slices.Sorted(maps.Keys(gotTree)), slices.Sorted(maps.Keys(wantTree)))
	}
	// Restoring onto the existing name is refused, as the mode says.
	_, err = e.uc.Restore(ctx, sums[1].ID, "fs", pe.CopyOptions{Mode: pe.Create}, nil)
	if !errors.Is(err, pe.ErrExists) {
		t.Errorf("restore create onto fs:home: %v, want ErrExists", err)
	}
}

// TestCopy: a snapshot copies into a new PE of the same bytes; a copy
// onto an existing name in create mode is refused with ErrExists.
func TestCopy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	want, err := os.ReadFile(filepath.Join(e.diskRoot, "vm1.img"))
	must(t, err)
	src, err := e.uc.Resolve(ctx, id(t, "disk:vm1.img"))
	must(t, err)
	out, err := e.uc.Copy(ctx, src, "disk", pe.CopyOptions{Mode: pe.Create, Name: "copy.img"}, nil)
	must(t, err)
	if out.ID() != id(t, "disk:copy.img") {
		t.Fatalf("copy is %s", out.ID())
	}
	got, err := os.ReadFile(filepath.Join(e.diskRoot, "copy.img"))
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Error("copy differs from its source")
	}
	_, err = e.uc.Copy(ctx, src, "disk", pe.CopyOptions{Mode: pe.Create, Name: "copy.img"}, nil)
	if !errors.Is(err, pe.ErrExists) {
		t.Errorf("second copy: %v, want ErrExists", err)
	}
}

// TestExports: an export of a live PE is of a new snapshot, reads its
// bytes, is journaled, and goes on StopExport; a writable one is made at
// once, comes back after a restart, and keeps its writes as a new PE on
// request.
func TestExports(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	want, err := os.ReadFile(filepath.Join(e.diskRoot, "vm1.img"))
	must(t, err)
	x, err := e.uc.StartExport(ctx, id(t, "disk:vm1.img"), false)
	must(t, err)
	if !x.ID.HasSnapshot() || x.Name != x.ID.String() || x.URI != "nbd://test/"+x.ID.String() || x.Writable {
		t.Fatalf("export %+v", x)
	}
	if got := e.uc.ExportTransports(x.ID); len(got) != 1 || got[0].Params["url"] != x.URI {
		t.Errorf("transports %v", got)
	}
	exp, err := e.src.Open(ctx, x.Name)
	must(t, err)
	got := make([]byte, exp.Size())
	if _, err := exp.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the export reads other bytes than the disk")
	}

	w, err := e.uc.StartExport(ctx, x.ID, true)
	if !errors.Is(err, pe.ErrExists) {
		t.Fatalf("writable export of an exported snapshot: %+v, %v", w, err)
	}
	snap2, err := e.uc.Snapshot(ctx, id(t, "disk:vm1.img"), nil)
	must(t, err)
	tm, err := e.m.Type(ctx, "disk")
	must(t, err)
	pes, err := tm.List(ctx)
	must(t, err)
	w, err = e.uc.StartExport(ctx, snap2, true)
	must(t, err)
	if !w.Writable || !w.Target.IsZero() || w.URI != "nbds://test/"+w.Name {
		t.Fatalf("writable export %+v", w)
	}
	if after, _ := tm.List(ctx); len(after) != len(pes) {
		t.Errorf("a writable export made PEs: %v, before %v", after, pes)
	}
	if got := e.uc.ExportTransports(w.ID); got != nil {
		t.Errorf("a writable export is advertised: %v", got)
	}
	wx, err := e.src.Open(ctx, w.Name)
	must(t, err)
	_, err = wx.(nbd.Writer).WriteAt([]byte("instant"), 3)
	must(t, err)
	copy(want[3:], "instant")
	must(t, wx.(interface{ Flush() error }).Flush())
	wx.(io.Closer).Close()
	wantJournal := []string{fmt.Sprintf("export %s %s  false", x.ID, x.Name), fmt.Sprintf("export %s %s  true", w.ID, w.Name)}
	if n := len(e.uc.Exports()); n != 2 || !slices.Equal(e.journal.recorded(), wantJournal) {
		t.Fatalf("%d exports, journal %q, want %q", n, e.journal.recorded(), wantJournal)
	}
	must(t, second(e.uc.StopExport(ctx, x.ID, false, nil)))
	wantJournal = append(wantJournal, "stop "+x.ID.String())
	if ex := e.uc.Exports(); len(ex) != 1 || ex[0].ID != snap2 || !slices.Equal(e.journal.recorded(), wantJournal) {
		t.Errorf("after stop: exports %+v, journal %q", ex, e.journal.recorded())
	}
	// A restarted appliance resumes the writable export under its name,
	// with its writes.
	must(t, e.uc.Close())
	fresh, err := New(Config{Manager: e.m, Exports: e.src})
	must(t, err)
	r, err := fresh.ResumeExport(ctx, Export{ID: w.ID, Name: w.Name, Writable: true})
	must(t, err)
	if r.Name != w.Name || !r.Writable {
		t.Errorf("resumed %+v, want %+v", r, w)
	}
	kept, err := fresh.StopExport(ctx, w.ID, true, nil)
	must(t, err)
	if got, err := os.ReadFile(filepath.Join(e.diskRoot, kept.Name())); err != nil || !bytes.Equal(got, want) {
		t.Errorf("kept PE %s does not hold the snapshot with the write: %v", kept, err)
	}
	if len(fresh.Exports()) != 0 {
		t.Errorf("exports after stop: %+v", fresh.Exports())
	}
}

// TestMounts: a mount under the root shows the PEs, one outside is
// refused, and Unmount takes it away. Needs /dev/fuse (root).
func TestMounts(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("FUSE mounts need /dev/fuse (modprobe fuse; apt-get install fuse3): %v", err)
	}
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.uc.Mount(ctx, MountRequest{Path: "../out"}); !errors.Is(err, pe.ErrInvalidSource) {
		t.Errorf("mount outside the root: %v", err)
	}
	m, err := e.uc.Mount(ctx, MountRequest{Path: "m"})
	must(t, err)
	wantJournal := []string{fmt.Sprintf("mount %s %s false false", m.ID, m.Path)}
	if filepath.Base(m.Path) != "m" || !slices.Equal(e.journal.recorded(), wantJournal) {
		t.Fatalf("mount %+v, journal %q", m, e.journal.recorded())
	}
	entries, err := os.ReadDir(m.Path)
	must(t, err)
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
	}
	if !slices.Equal(names, []string{"disk", "fs"}) {
		t.Errorf("mount root lists %v", names)
	}
	must(t, e.uc.Unmount(ctx, m.ID))
	if entries, err := os.ReadDir(m.Path); err != nil || len(entries) != 0 {
		t.Errorf("after unmount: %v, %v", entries, err)
	}
	wantJournal = append(wantJournal, "unmount "+m.ID)
	if len(e.uc.Mounts()) != 0 || !slices.Equal(e.journal.recorded(), wantJournal) {
		t.Errorf("after unmount: mounts %v, journal %q", e.uc.Mounts(), e.journal.recorded())
	}
}

// TestMountsRace asks for one path many times at once: one mount wins,
// the others are refused, and after Close nothing can mount.
func TestMountsRace(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("FUSE mounts need /dev/fuse (modprobe fuse; apt-get install fuse3): %v", err)
	}
	e := newEnv(t)
	ctx := context.Background()
	const n = 6
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := e.uc.Mount(ctx, MountRequest{Path: "same"})
			errs <- err
		}()
	}
	var won int
	for range n {
		if err := <-errs; err == nil {
			won++
		} else if !errors.Is(err, pe.ErrExists) && !errors.Is(err, pe.ErrInvalidSource) {
			t.Errorf("a losing mount: %v", err)
		}
	}
	if won != 1 || len(e.uc.Mounts()) != 1 {
		t.Fatalf("%d mounts of one path succeeded, %d listed; want 1", won, len(e.uc.Mounts()))
	}
	must(t, e.uc.Close())
	if _, err := e.uc.Mount(ctx, MountRequest{Path: "after"}); err == nil {
		t.Errorf("a mount after Close succeeded")
	}
	if len(e.uc.Mounts()) != 0 {
		t.Errorf("after Close: %v", e.uc.Mounts())
	}
}

type counter struct {
	mu sync.Mutex
	n  int64
}

func (c *counter) Start(int64) {}
func (c *counter) Add(n int64) {
	c.mu.Lock()
	c.n += n
	c.mu.Unlock()
}
func (c *counter) added() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// readTree maps each path under dir to its mode and content.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		v := info.Mode().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		}
		out[rel] = v
		return nil
	})
	must(t, err)
	return out
}
