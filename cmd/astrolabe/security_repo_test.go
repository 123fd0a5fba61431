package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// secRepo is a configuration with the sample PEs and a repository, driven
// through the CLI as an administrator (or an attacker with access to the
// repository's files) would.
type secRepo struct {
	t    *testing.T
	dir  string
	cfg  string
	repo string
	args []string // --repo and the password
}

func newSecRepo(t *testing.T, encrypted bool) *secRepo {
	t.Helper()
	dir := t.TempDir()
	s := &secRepo{t: t, dir: dir, cfg: filepath.Join(dir, "cfg"), repo: filepath.Join(dir, "repo")}
	mustRun(t, s.cfg, "init", "--samples", s.cfg)
	s.args = []string{"--repo", s.repo}
	init := []string{"repo", "init", "--insecure-no-password"}
	if encrypted {
		pw := filepath.Join(dir, "pw")
		if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s.args = append(s.args, "--password-file", pw)
		init = init[:2]
	}
	mustRun(t, s.cfg, s.cmd(init...)...)
	return s
}

// cmd puts the repository flags after the verb words (urfave/cli takes
// flags before the arguments).
func (s *secRepo) cmd(words ...string) []string {
	n := 1
	if words[0] == "repo" {
		n = 2
	}
	return append(append(append([]string{}, words[:n]...), s.args...), words[n:]...)
}

func (s *secRepo) run(words ...string) result {
	s.t.Helper()
	return mustRun(s.t, s.cfg, s.cmd(words...)...)
}

func (s *secRepo) fail(want string, words ...string) result {
	s.t.Helper()
	r := astrolabe(s.t, s.cfg, s.cmd(words...)...)
	if r.code == 0 {
		s.t.Fatalf("astrolabe %v succeeded, want a failure mentioning %q\nstdout: %s\nstderr: %s", words, want, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout+r.stderr, want) {
		s.t.Fatalf("astrolabe %v: want %q in the output\nstdout: %s\nstderr: %s", words, want, r.stdout, r.stderr)
	}
	return r
}

// disk writes a disk PE of random bytes.
func (s *secRepo) disk(name string, size int) []byte {
	s.t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(filepath.Join(s.cfg, "disk", name), b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	return b
}

// restored restores a repository snapshot and returns the restored disk.
func (s *secRepo) restored(id string) []byte {
	s.t.Helper()
	out := s.run("restore", id).lastLine()
	b, err := os.ReadFile(filepath.Join(s.cfg, "disk", strings.TrimPrefix(out, "disk:")))
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

func (s *secRepo) snapshotDir(id string) string {
	return filepath.Join(s.repo, "snapshots", url.PathEscape(id))
}

// objects lists the repository's files under a top-level directory.
func (s *secRepo) objects(top string) []string {
	s.t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(s.repo, top), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".tmp-") {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// TestSecuritySnapshotMoved: a snapshot copied, renamed or swapped under
// another ID must not restore as that ID (it did: big2's bytes came back
// as rand1). Encrypted repositories bind the ID into the seal; unencrypted
// ones compare the ID written inside the snapshot.
func TestSecuritySnapshotMoved(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			s := newSecRepo(t, encrypted)
			rand1 := s.disk("rand1.img", 3<<20)
			big2 := s.disk("big2.img", 5<<20)
			r1 := s.run("backup", "disk:rand1.img").lastLine()
			b2 := s.run("backup", "disk:big2.img").lastLine()
			b2snap := b2[strings.LastIndex(b2, ":")+1:]

			// The attack of the issue: big2's snapshot copied as rand1's.
			fake := "disk:rand1.img:" + b2snap
			if out, err := exec.Command("cp", "-a", s.snapshotDir(b2), s.snapshotDir(fake)).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			s.fail("moved, renamed or swapped", "restore", fake)
			if out := s.run("repo", "snapshots").stdout; strings.Contains(out, fake) {
				t.Errorf("repo snapshots lists the copied snapshot:\n%s", out)
			}
			r := s.fail("1 problem(s) found", "repo", "check")
			if !strings.Contains(r.stdout, fake) || !strings.Contains(r.stdout, "moved, renamed or swapped") {
				t.Errorf("check does not name the copied snapshot:\n%s", r.stdout)
			}
			// The genuine snapshots are untouched.
			if !bytes.Equal(s.restored(r1), rand1) || !bytes.Equal(s.restored(b2), big2) {
				t.Fatal("a genuine snapshot restores different bytes")
			}
			os.RemoveAll(s.snapshotDir(fake))

			// Renamed: the same, moved rather than copied.
			if err := os.Rename(s.snapshotDir(b2), s.snapshotDir(fake)); err != nil {
				t.Fatal(err)
			}
			s.fail("moved, renamed or swapped", "restore", fake)
			s.fail("1 problem(s) found", "repo", "check", "--read-data")
			if err := os.Rename(s.snapshotDir(fake), s.snapshotDir(b2)); err != nil {
				t.Fatal(err)
			}

			// Swapped index: a later snapshot of rand1 given the chunk map
			// of the earlier one (its info stays its own).
			s.disk("rand1.img", 3<<20)
			r1b := s.run("backup", "disk:rand1.img").lastLine()
			orig, _ := os.ReadFile(filepath.Join(s.snapshotDir(r1b), "index"))
			old, _ := os.ReadFile(filepath.Join(s.snapshotDir(r1), "index"))
			os.WriteFile(filepath.Join(s.snapshotDir(r1b), "index"), old, 0o600)
			s.fail("moved, renamed or swapped", "restore", r1b)
			s.fail("1 problem(s) found", "repo", "check")
			os.WriteFile(filepath.Join(s.snapshotDir(r1b), "index"), orig, 0o600)
			s.run("repo", "check", "--read-data")
		})
	}
}

// TestSecurityLegacyRepository: a repository written before snapshots
// were bound to their IDs stays readable, check says which snapshots are
// not bound, and repo migrate binds them.
func TestSecurityLegacyRepository(t *testing.T) {
	for _, kind := range []string{"enc", "plain"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "cfg")
			mustRun(t, cfg, "init", "--samples", cfg)
			repoDir := filepath.Join(dir, "repo")
			if out, err := exec.Command("cp", "-a", filepath.Join("..", "..", "repo", "testdata", "v1", kind), repoDir).CombinedOutput(); err != nil {
				t.Fatalf("cp: %v %s", err, out)
			}
			s := &secRepo{t: t, dir: dir, cfg: cfg, repo: repoDir, args: []string{"--repo", repoDir}}
			if kind == "enc" {
				pw := filepath.Join(dir, "pw")
				os.WriteFile(pw, []byte("legacy\n"), 0o600)
				s.args = append(s.args, "--password-file", pw)
			}
			snaps := strings.Fields(s.run("repo", "snapshots").stdout)
			var legacy, other string
			for _, w := range snaps {
				switch {
				case strings.HasPrefix(w, "disk:legacy.img:"):
					legacy = w
				case strings.HasPrefix(w, "disk:other.img:"):
					other = w
				}
			}
			if legacy == "" || other == "" {
				t.Fatalf("repo snapshots of the old repository: %v", snaps)
			}
			// Readable as it is.
			if b := s.restored(legacy); fmt.Sprintf("%x", sha256.Sum256(b)) != "237a1524357993ca7e88237316439936020b2bbba70535027cdaeca5bf31af22" {
				t.Fatal("legacy snapshot restores different bytes")
			}
			// Its snapshots copied under another ID are caught too (the ID
			// written inside them).
			fake := "disk:legacy.img:" + other[strings.LastIndex(other, ":")+1:]
			exec.Command("cp", "-a", s.snapshotDir(other), s.snapshotDir(fake)).Run()
			s.fail("moved, renamed or swapped", "restore", fake)
			r := s.fail("3 problem(s) found", "repo", "check")
			if n := strings.Count(r.stdout, "not bound to its ID (written by an older version)"); n != 2 {
				t.Errorf("check of an old repository: %d snapshots reported not bound, want 2:\n%s", n, r.stdout)
			}
			// migrate binds the genuine ones and refuses to launder the copy.
			s.fail(fake, "repo", "migrate")
			os.RemoveAll(s.snapshotDir(fake))
			s.run("repo", "migrate")
			s.run("repo", "check", "--read-data")
			if b := s.restored(other); fmt.Sprintf("%x", sha256.Sum256(b)) != "92397f4b82b73f557e0fa2bb95e4befff29b48889f91972931f0df79942ec647" {
				t.Fatal("migrated snapshot restores different bytes")
			}
			// New backups go into the migrated repository.
			s.run("backup", "disk:sample.img")
			s.run("repo", "check")
		})
	}
}

// TestSecurityDamagedIndex: a truncated index file made every later backup
// and prune fail while check said "no problems found".
func TestSecurityDamagedIndex(t *testing.T) {
	s := newSecRepo(t, true)
	data := s.disk("a.img", 6<<20)
	a := s.run("backup", "disk:a.img").lastLine()
	truncate := func() string {
		idx := s.objects("index")
		if len(idx) == 0 {
			t.Fatal("no index file")
		}
		fi, _ := os.Stat(idx[0])
		if err := os.Truncate(idx[0], fi.Size()/2); err != nil {
			t.Fatal(err)
		}
		return filepath.Base(idx[0])
	}
	name := truncate()
	for _, args := range [][]string{{"repo", "check"}, {"repo", "check", "--read-data"}} {
		r := s.fail("problem(s) found", args...)
		if !strings.Contains(r.stdout, "index/"+name) {
			t.Errorf("%v does not name the damaged index file %s:\n%s", args, name, r.stdout)
		}
	}
	r := s.run("repo", "check", "--repair-index")
	if !strings.Contains(r.stdout, "repaired") {
		t.Errorf("check --repair-index said:\n%s", r.stdout)
	}
	s.run("repo", "check", "--read-data")
	for _, p := range s.objects("index") {
		if filepath.Base(p) == name {
			t.Error("the damaged index file is still there")
		}
	}
	// Nothing was lost: the same data again is all known already.
	os.WriteFile(filepath.Join(s.cfg, "disk", "b.img"), data, 0o644)
	if r := s.run("backup", "disk:b.img"); !strings.Contains(r.stderr, "new 0 B") {
		t.Errorf("backup of known data after the repair: %s", r.stderr)
	}
	s.run("repo", "prune")

	// The next backup repairs it too, with a warning.
	name = truncate()
	s.disk("c.img", 2<<20)
	r = s.run("backup", "disk:c.img")
	if !strings.Contains(r.stderr, "index/"+name) || !strings.Contains(r.stderr, "damaged") {
		t.Errorf("backup over a damaged index gave no warning:\n%s", r.stderr)
	}
	s.run("repo", "check")
	s.run("repo", "prune")
	if !bytes.Equal(s.restored(a), data) {
		t.Error("restore after the repairs differs")
	}
}

// TestSecurityPackHeaderFlip: check --read-data must cover every byte of
// a pack, its header included.
func TestSecurityPackHeaderFlip(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		t.Run(fmt.Sprintf("encrypted=%v", encrypted), func(t *testing.T) {
			s := newSecRepo(t, encrypted)
			s.disk("a.img", 3<<20)
			s.run("backup", "disk:a.img")
			s.run("repo", "check", "--read-data")
			packs := s.objects("data")
			if len(packs) != 1 {
				t.Fatalf("%d packs", len(packs))
			}
			pack := packs[0]
			orig, _ := os.ReadFile(pack)
			for _, c := range []struct {
				name   string
				damage func([]byte) []byte
			}{
				{"header", func(b []byte) []byte { b[len(b)-20] ^= 1; return b }},
				{"header length", func(b []byte) []byte { b[len(b)-4] ^= 1; return b }},
				{"first header byte", func(b []byte) []byte {
					hlen := int(b[len(b)-4]) | int(b[len(b)-3])<<8 | int(b[len(b)-2])<<16
					b[len(b)-4-hlen] ^= 0x80
					return b
				}},
				{"appended byte", func(b []byte) []byte { return append(b, 0) }},
			} {
				if err := os.WriteFile(pack, c.damage(bytes.Clone(orig)), 0o600); err != nil {
					t.Fatal(err)
				}
				r := s.fail("problem(s) found", "repo", "check", "--read-data")
				if !strings.Contains(r.stdout, filepath.Base(pack)) {
					t.Errorf("%s: check does not name the pack:\n%s", c.name, r.stdout)
				}
			}
			os.WriteFile(pack, orig, 0o600)
			s.run("repo", "check", "--read-data")
		})
	}
}

// TestSecurityDeadLock: locks of processes killed with -9 on this host are
// removed by unlock and by the next lock, and those of live ones are not.
func TestSecurityDeadLock(t *testing.T) {
	s := newSecRepo(t, true)
	s.run("backup", "disk:sample.img")
	// A FIFO among the index files holds whoever reads the index (after it
	// took its lock) until it is killed.
	fifo := filepath.Join(s.repo, "index", "fifo")
	hold := func(words ...string) *exec.Cmd {
		t.Helper()
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(astrolabeBin, append([]string{"--config", s.cfg}, s.cmd(words...)...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		deadline := time.Now().Add(time.Minute)
		for len(s.objects("locks")) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%v took no lock in a minute", words)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		t.Helper()
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		os.Remove(fifo)
		if n := len(s.objects("locks")); n != 1 {
			t.Fatalf("%d locks after kill -9, want 1", n)
		}
	}

	// A backup killed with -9 while it holds its shared lock.
	cmd := hold("backup", "disk:sample.img")
	if r := s.run("repo", "unlock"); !strings.Contains(r.stderr, "removed 0 lock(s)") {
		t.Errorf("unlock removed the lock of a live process: %s", r.stderr)
	}
	kill(cmd)
	if r := s.run("repo", "unlock"); !strings.Contains(r.stderr, "removed 1 lock(s)") {
		t.Errorf("unlock after kill -9: %s", r.stderr)
	}
	if n := len(s.objects("locks")); n != 0 {
		t.Errorf("%d locks left after unlock", n)
	}

	// A prune killed with -9 holding its exclusive lock: the next backup
	// takes its place.
	kill(hold("repo", "prune"))
	r := s.run("backup", "disk:sample.img")
	if !strings.Contains(r.stderr, "dead") {
		t.Errorf("backup removed the dead lock silently:\n%s", r.stderr)
	}
	// And a dead shared lock does not stop a prune.
	kill(hold("backup", "disk:sample.img"))
	s.run("repo", "prune")
	if n := len(s.objects("locks")); n != 0 {
		t.Errorf("%d locks left", n)
	}
	s.run("repo", "check")
}
