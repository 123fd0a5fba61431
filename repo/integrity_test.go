package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// files lists the repository's files under a directory, in name order.
func (e *env) files(top string) []string {
	e.t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(e.be.Location(), top), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".tmp-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func (e *env) backup(id string) pe.ID {
	e.t.Helper()
	p := e.snap(id)
	if _, err := e.r.Backup(context.Background(), p, nil); err != nil {
		e.t.Fatal(err)
	}
	return p.ID()
}

func (e *env) check(readData bool) []Problem {
	e.t.Helper()
	probs, err := e.r.Check(context.Background(), readData, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return probs
}

func (e *env) snapDir(id pe.ID) string { return filepath.Join(e.be.Location(), snapshotDir(id)) }

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v %s", err, out)
	}
}

func TestSnapshotBoundToID(t *testing.T) {
	for _, opts := range []Options{{Password: "pw"}, {Insecure: true}} {
		t.Run(fmt.Sprintf("encrypted=%v", opts.Password != ""), func(t *testing.T) {
			e := newEnv(t, nil, opts)
			ctx := context.Background()
			e.disk("rand1.img", 4*mib, map[int64]int64{0: 2 * mib})
			e.disk("big2.img", 4*mib, map[int64]int64{0: 3 * mib})
			r1, b2 := e.backup("disk:rand1.img"), e.backup("disk:big2.img")
			fake := r1.WithSnapshot(b2.Snapshot())
			copyDir(t, e.snapDir(b2), e.snapDir(fake))

			_, err := e.r.OpenSnapshot(ctx, fake)
			if !errors.Is(err, errMisplaced) || !strings.Contains(err.Error(), "moved, renamed or swapped") {
				t.Fatalf("open of a copied snapshot: %v", err)
			}
			snaps, err := e.r.Snapshots(ctx, pe.ID{})
			if err != nil || len(snaps) != 2 {
				t.Errorf("snapshots with a copied one: %v %v", snaps, err)
			}
			probs := e.check(false)
			if len(probs) != 1 || probs[0].Snapshot != fake.String() || !strings.Contains(probs[0].String(), "moved, renamed or swapped") {
				t.Errorf("check of a copied snapshot: %v", probs)
			}
			// Forget removes it whatever it holds.
			if err := e.r.Forget(ctx, fake); err != nil {
				t.Fatal(err)
			}

			// Info and index of two snapshots of one PE, swapped.
			r1b := e.backup("disk:rand1.img")
			for _, obj := range []string{"index", "info"} {
				a, _ := os.ReadFile(filepath.Join(e.snapDir(r1), obj))
				b, _ := os.ReadFile(filepath.Join(e.snapDir(r1b), obj))
				os.WriteFile(filepath.Join(e.snapDir(r1), obj), b, 0o600)
				os.WriteFile(filepath.Join(e.snapDir(r1b), obj), a, 0o600)
				for _, id := range []pe.ID{r1, r1b} {
					if _, err := e.r.OpenSnapshot(ctx, id); !errors.Is(err, errMisplaced) {
						t.Errorf("open with swapped %s: %v", obj, err)
					}
				}
				if probs := e.check(false); len(probs) != 2 {
					t.Errorf("check with swapped %s: %v", obj, probs)
				}
				os.WriteFile(filepath.Join(e.snapDir(r1), obj), a, 0o600)
				os.WriteFile(filepath.Join(e.snapDir(r1b), obj), b, 0o600)
			}
			if probs := e.check(true); len(probs) != 0 {
				t.Errorf("check after putting them back: %v", probs)
			}

			// Other objects sealed with the key but no ID (index files)
			// do not pass for a snapshot's info written before format 2.
			info := filepath.Join(e.snapDir(r1), "info")
			orig, _ := os.ReadFile(info)
			idxFile, _ := os.ReadFile(e.files("index")[0])
			os.WriteFile(info, idxFile, 0o600)
			if _, err := e.r.OpenSnapshot(ctx, r1); !errors.Is(err, errBadObject) {
				t.Errorf("open with an index file as info: %v", err)
			}
			os.WriteFile(info, orig, 0o600)
		})
	}
}

// openFixture copies a repository of the older format from testdata.
func openFixture(t *testing.T, kind string) (*Repository, backend.Backend) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	copyDir(t, filepath.Join("testdata", "v1", kind), dir)
	be, err := backend.NewDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Logger: quiet()}
	if kind == "enc" {
		opts.Password = "legacy"
	}
	r, err := Open(context.Background(), be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, be
}

func readData(t *testing.T, r *Repository, id pe.ID) [32]byte {
	t.Helper()
	ctx := context.Background()
	p, err := r.OpenSnapshot(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestLegacySnapshotsAndMigrate(t *testing.T) {
	for _, kind := range []string{"enc", "plain"} {
		t.Run(kind, func(t *testing.T) {
			r, be := openFixture(t, kind)
			ctx := context.Background()
			snaps, err := r.Snapshots(ctx, pe.ID{})
			if err != nil || len(snaps) != 2 {
				t.Fatalf("snapshots of a format 1 repository: %v %v", snaps, err)
			}
			legacy, other := snaps[0].ID, snaps[1].ID
			if fmt.Sprintf("%x", readData(t, r, legacy)) != "237a1524357993ca7e88237316439936020b2bbba70535027cdaeca5bf31af22" {
				t.Fatal("format 1 snapshot reads different bytes")
			}
			// Copied under another ID: the ID written inside catches it.
			fake := legacy.WithSnapshot(other.Snapshot())
			copyDir(t, filepath.Join(be.Location(), snapshotDir(other)), filepath.Join(be.Location(), snapshotDir(fake)))
			if _, err := r.OpenSnapshot(ctx, fake); !errors.Is(err, errMisplaced) {
				t.Errorf("open of a copied format 1 snapshot: %v", err)
			}
			probs, err := r.Check(ctx, true, nil)
			if err != nil || len(probs) != 3 {
				t.Fatalf("check of a format 1 repository: %v %v", probs, err)
			}
			legacyProbs := 0
			for _, p := range probs {
				if p.Detail == legacyDetail {
					legacyProbs++
				}
			}
			if legacyProbs != 2 {
				t.Errorf("check reports %d snapshots not bound, want 2: %v", legacyProbs, probs)
			}
			// Migrate refuses to bind the copy, binds the rest.
			if n, err := r.Migrate(ctx); n != 2 || err == nil || !strings.Contains(err.Error(), fake.String()) {
				t.Errorf("migrate with a copied snapshot: %d %v", n, err)
			}
			if err := r.Forget(ctx, fake); err != nil {
				t.Fatal(err)
			}
			if n, err := r.Migrate(ctx); n != 0 || err != nil {
				t.Errorf("second migrate: %d %v", n, err)
			}
			if probs, err := r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
				t.Errorf("check after migrate: %v %v", probs, err)
			}
			cfg, _ := backend.ReadAll(ctx, be, "config")
			var c config
			json.Unmarshal(cfg, &c)
			if c.Version != formatVersion {
				t.Errorf("config version %d after migrate", c.Version)
			}
			if fmt.Sprintf("%x", readData(t, r, other)) != "92397f4b82b73f557e0fa2bb95e4befff29b48889f91972931f0df79942ec647" {
				t.Fatal("migrated snapshot reads different bytes")
			}
			// Now bound: copied again, it does not open.
			os.RemoveAll(filepath.Join(be.Location(), snapshotDir(fake)))
			copyDir(t, filepath.Join(be.Location(), snapshotDir(other)), filepath.Join(be.Location(), snapshotDir(fake)))
			if _, err := r.OpenSnapshot(ctx, fake); !errors.Is(err, errMisplaced) {
				t.Errorf("open of a copied migrated snapshot: %v", err)
			}
		})
	}
}

// TestBackupUpgradesConfig: the first backup into a format 1 repository
// raises its version, so that older versions refuse it clearly.
func TestBackupUpgradesConfig(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	b, _ := backend.ReadAll(ctx, e.be, "config")
	b = bytes.Replace(b, []byte(`"version": 2`), []byte(`"version": 1`), 1)
	e.be.Save(ctx, "config", bytes.NewReader(b), int64(len(b)))
	r, err := Open(ctx, e.be, Options{Password: "pw", Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e.r = r
	e.disk("a.img", mib, map[int64]int64{0: mib})
	e.backup("disk:a.img")
	b, _ = backend.ReadAll(ctx, e.be, "config")
	if !bytes.Contains(b, []byte(`"version": 2`)) {
		t.Errorf("config after a backup:\n%s", b)
	}
	b = bytes.Replace(b, []byte(`"version": 2`), []byte(`"version": 4`), 1)
	e.be.Save(ctx, "config", bytes.NewReader(b), int64(len(b)))
	if _, err := Open(ctx, e.be, Options{Password: "pw", Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "format 4") {
		t.Errorf("open of a newer format: %v", err)
	}
}

func TestDamagedIndex(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	e.disk("a.img", 8*mib, map[int64]int64{0: 5 * mib})
	a := e.backup("disk:a.img")
	idx := e.files("index")
	if len(idx) != 1 {
		t.Fatalf("%d index files", len(idx))
	}
	orig, _ := os.ReadFile(idx[0])
	name := "index/" + filepath.Base(idx[0])
	os.Truncate(idx[0], int64(len(orig)/2))

	for _, readData := range []bool{false, true} {
		probs := e.check(readData)
		if len(probs) != 1 || !strings.Contains(probs[0].String(), name) || !strings.Contains(probs[0].String(), "damaged") {
			t.Errorf("check (read data %v) of a truncated index file: %v", readData, probs)
		}
	}
	s, err := e.r.RepairIndex(ctx)
	if err != nil || s.Damaged != 1 || s.Read != 1 || len(s.BadPacks) != 0 {
		t.Fatalf("repair: %+v %v", s, err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check after repair: %v", probs)
	}
	if s, err := e.r.RepairIndex(ctx); err != nil || s.Repaired() {
		t.Errorf("second repair: %+v %v", s, err)
	}
	// Nothing lost: the same data is known, not stored again.
	e.disk("b.img", 8*mib, nil)
	data, _ := os.ReadFile(filepath.Join(e.dir, "disk", "a.img"))
	os.WriteFile(filepath.Join(e.dir, "disk", "b.img"), data, 0o644)
	if s, err := e.r.Backup(ctx, e.snap("disk:b.img"), nil); err != nil || s.New != 0 {
		t.Errorf("backup of known data after repair: %+v %v", s, err)
	}

	// A backup over a damaged index repairs it.
	for _, f := range e.files("index") {
		os.WriteFile(f, []byte("garbage"), 0o600)
	}
	e.disk("c.img", 2*mib, map[int64]int64{0: 2 * mib})
	e.backup("disk:c.img")
	if probs := e.check(false); len(probs) != 0 {
		t.Errorf("check after a backup over a damaged index: %v", probs)
	}
	if _, err := e.r.Prune(ctx); err != nil {
		t.Fatal(err)
	}

	// So does a prune.
	for _, f := range e.files("index") {
		os.Truncate(f, 10)
	}
	if _, err := e.r.Prune(ctx); err != nil {
		t.Fatalf("prune over a damaged index: %v", err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check after a prune over a damaged index: %v", probs)
	}

	// An index naming a pack that is gone: check says so, backups do not
	// refer to it, repair drops it.
	e.disk("d.img", 2*mib, map[int64]int64{0: 2 * mib})
	d := e.backup("disk:d.img")
	idxD, _, err := e.r.loadSnapshot(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	pack := idxD.Data.Chunks[0].Pack
	os.Remove(filepath.Join(e.be.Location(), packName(pack)))
	e.r.Forget(ctx, d)
	probs := e.check(false)
	if len(probs) != 1 || probs[0].Pack != pack || !strings.Contains(probs[0].Detail, "missing") {
		t.Errorf("check of an index naming a missing pack: %v", probs)
	}
	e.backup("disk:d.img")
	if probs := e.check(true); len(probs) != 1 {
		t.Errorf("backup over an index naming a missing pack: %v", probs)
	}
	if s, err := e.r.RepairIndex(ctx); err != nil || s.Dropped != 1 {
		t.Errorf("repair: %+v %v", s, err)
	}
	if probs := e.check(true); len(probs) != 0 {
		t.Errorf("check after dropping a missing pack: %v", probs)
	}
	if _, err := e.restore(a); err != nil {
		t.Error(err)
	}
}

// TestCheckEveryPackByte flips each byte of a pack in turn: check
// --read-data must report every one.
func TestCheckEveryPackByte(t *testing.T) {
	for _, opts := range []Options{{Password: "pw"}, {Insecure: true}} {
		t.Run(fmt.Sprintf("encrypted=%v", opts.Password != ""), func(t *testing.T) {
			e := newEnv(t, nil, opts)
			// Two small, compressible chunks: a pack of a few hundred bytes.
			path := e.disk("a.img", 2*mib, nil)
			os.WriteFile(path, bytes.Repeat([]byte("astrolabe "), 2*mib/10), 0o644)
			e.backup("disk:a.img")
			packs := e.files("data")
			if len(packs) != 1 {
				t.Fatalf("%d packs", len(packs))
			}
			orig, _ := os.ReadFile(packs[0])
			t.Logf("pack of %d bytes", len(orig))
			if len(orig) > 4096 {
				t.Fatalf("pack of %d bytes: too long to flip each", len(orig))
			}
			missed := 0
			for i := range orig {
				b := bytes.Clone(orig)
				b[i] ^= 1 << (i % 8)
				os.WriteFile(packs[0], b, 0o600)
				if probs := e.check(true); len(probs) == 0 {
					missed++
					t.Errorf("a flipped byte at %d of %d is not reported", i, len(orig))
				}
			}
			for _, b := range [][]byte{orig[:len(orig)-1], append(bytes.Clone(orig), 0), append([]byte{0}, orig...)} {
				os.WriteFile(packs[0], b, 0o600)
				if probs := e.check(true); len(probs) == 0 {
					t.Errorf("a pack of %d bytes instead of %d is not reported", len(b), len(orig))
				}
			}
			os.WriteFile(packs[0], orig, 0o600)
			if probs := e.check(true); len(probs) != 0 {
				t.Errorf("check of the intact pack: %v", probs)
			}
		})
	}
}

func TestDeadLocks(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	self := thisProcess()
	if self.BootID == "" || self.PIDNS == "" || self.StartTime == 0 {
		t.Fatalf("this process: %+v", self)
	}
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	write := func(li lockInfo) string {
		li.Time = time.Now().UTC()
		name := "locks/" + randomName()
		if err := e.r.saveJSON(ctx, name, li); err != nil {
			t.Fatal(err)
		}
		return name
	}
	with := func(f func(*lockInfo)) lockInfo {
		li := self
		f(&li)
		return li
	}
	cases := []struct {
		name string
		li   lockInfo
		dead bool
	}{
		{"exited process", with(func(l *lockInfo) { l.PID = exited.ProcessState.Pid() }), true},
		{"PID reused", with(func(l *lockInfo) { l.StartTime++ }), true},
		{"live process", self, false},
		{"other host", with(func(l *lockInfo) { l.Host += "-other"; l.PID = exited.ProcessState.Pid() }), false},
		{"other boot", with(func(l *lockInfo) { l.BootID = "other"; l.PID = exited.ProcessState.Pid() }), false},
		{"other PID namespace", with(func(l *lockInfo) { l.PIDNS = "pid:[1]"; l.PID = exited.ProcessState.Pid() }), false},
		{"older lock", lockInfo{Host: self.Host, PID: exited.ProcessState.Pid()}, false},
	}
	for _, c := range cases {
		if got := c.li.dead(self); got != c.dead {
			t.Errorf("%s: dead = %v", c.name, got)
		}
	}
	// Unlock removes the dead ones only.
	for _, c := range cases {
		write(c.li)
	}
	n, err := e.r.Unlock(ctx, false)
	if err != nil || n != 2 {
		t.Errorf("unlock removed %d locks, want 2: %v", n, err)
	}
	if n := len(e.files("locks")); n != len(cases)-2 {
		t.Errorf("%d locks left", n)
	}
	e.r.Unlock(ctx, true)

	// A dead exclusive lock does not block a backup, a live one does.
	dead := write(with(func(l *lockInfo) { l.Exclusive = true; l.StartTime++ }))
	e.disk("a.img", mib, map[int64]int64{0: mib})
	e.backup("disk:a.img")
	if _, err := e.be.Stat(ctx, dead); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("the dead exclusive lock is still there: %v", err)
	}
	write(with(func(l *lockInfo) { l.Exclusive = true }))
	if _, err := e.r.Backup(ctx, e.snap("disk:a.img"), nil); !errors.Is(err, ErrLocked) {
		t.Errorf("backup beside a live exclusive lock: %v", err)
	}
}

func TestProcessStart(t *testing.T) {
	// A command name with spaces and parentheses does not shift the fields.
	dir := t.TempDir()
	bin := filepath.Join(dir, "a b) (c")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(sleep, bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	got, err := processStart(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := processStart(os.Getpid())
	if got < self {
		t.Errorf("start of a child %d before its parent's %d", got, self)
	}
	if _, err := processStart(1 << 30); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("start of no process: %v", err)
	}
}
