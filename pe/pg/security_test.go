package pg

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// untrustedSource is a snapshot as if read from a zip or an upload.
type untrustedSource struct{ pe.ProtectedEntity }

func (untrustedSource) Untrusted() bool { return true }

// A restored cluster's directory is root's: the restore account (a
// clone's superuser runs code as it) can plant no link where root writes
// or reads; only data/, the socket directory and the log are the
// account's. Every restore promotes onto a new timeline. An untrusted
// backup brings none of its configuration but sizes and locale: no
// library, no command, no trust rule.
func TestRestoreConfinesTheAccount(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t, pgtest.Options{})
	m := newManager(t, clusterOf("main", srv))
	acct, err := lookupAccount(pgtest.OSUser)
	if err != nil {
		t.Fatal(err)
	}
	restore := func(t *testing.T, untrusted bool) (string, int) {
		t.Helper()
		p, err := m.Get(ctx, mustID(t, "main"))
		if err != nil {
			t.Fatal(err)
		}
		snap, err := p.Snapshot(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var src pe.ProtectedEntity
		if src, err = m.Get(ctx, snap); err != nil {
			t.Fatal(err)
		}
		if untrusted {
			src = untrustedSource{src}
		}
		restored, err := m.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew})
		if err != nil {
			t.Fatal(err)
		}
		return m.clusterDir(restored.ID().Name()), restoredPort(t, restored)
	}
	timeline := func(port int) string {
		return psqlAt(t, srv, port, "postgres", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
	}

	t.Run("layout", func(t *testing.T) {
		dir, port := restore(t, false)
		for rel, want := range map[string]struct {
			uid  int
			mode os.FileMode
		}{
			".": {0, 0o711 | os.ModeDir}, recordFile: {0, 0o644}, dataDir: {acct.uid, 0o700 | os.ModeDir},
			logFile: {acct.uid, 0o600}, socketDir: {acct.uid, 0o700 | os.ModeDir},
		} {
			fi, err := os.Lstat(filepath.Join(dir, rel))
			if err != nil {
				t.Fatal(err)
			}
			if uid := int(fi.Sys().(*syscall.Stat_t).Uid); uid != want.uid || fi.Mode() != want.mode {
				t.Errorf("%s: uid %d mode %v, want %d %v", rel, uid, fi.Mode(), want.uid, want.mode)
			}
		}
		// The account plants a link where root writes the record.
		plant := exec.Command("runuser", "-u", acct.name, "--", "/bin/ln", "-s", "/etc/shadow", filepath.Join(dir, "planted"))
		if out, err := plant.CombinedOutput(); err == nil {
			t.Errorf("the restore account could plant a link in %s", dir)
		} else {
			t.Logf("planting refused: %s", strings.TrimSpace(string(out)))
		}
		if got, origin := timeline(port), srv.Psql(t, "postgres", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); got <= origin {
			t.Errorf("restored cluster writes WAL on timeline %s, its origin on %s: want a new timeline", got, origin)
		}
	})

	t.Run("server log through a link", func(t *testing.T) {
		secret := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(secret, []byte("root's secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "server.log")
		if err := os.Symlink(secret, link); err != nil {
			t.Fatal(err)
		}
		s := server{acct: acct, logFile: link}
		if tail := s.logTail(); strings.Contains(tail, "secret") {
			t.Errorf("the log's tail read through a link: %q", tail)
		}
		// A file of root's is not the account's log either.
		s.logFile = secret
		if tail := s.logTail(); strings.Contains(tail, "secret") {
			t.Errorf("the log's tail read a file of root's: %q", tail)
		}
	})

	t.Run("metadata without secrets", func(t *testing.T) {
		srv.Psql(t, "postgres", "ALTER SYSTEM SET primary_conninfo = 'host=elsewhere password=hunter2'")
		srv.Psql(t, "postgres", "ALTER SYSTEM SET work_mem = '5MB'")
		srv.Psql(t, "postgres", "SELECT pg_reload_conf()")
		defer func() {
			srv.Psql(t, "postgres", "ALTER SYSTEM RESET ALL")
			srv.Psql(t, "postgres", "SELECT pg_reload_conf()")
		}()
		md, err := describe(ctx, clusterOf("main", srv))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := md.Settings["primary_conninfo"]; ok || md.Settings["work_mem"] != "5120" {
			t.Errorf("metadata settings %v: want work_mem, no primary_conninfo", md.Settings)
		}
	})

	t.Run("untrusted configuration", func(t *testing.T) {
		srv.Psql(t, "postgres", "ALTER SYSTEM SET work_mem = '7MB'")
		srv.Psql(t, "postgres", "ALTER SYSTEM SET shared_preload_libraries = './evil'")
		srv.Psql(t, "postgres", "ALTER SYSTEM SET ssl_passphrase_command = 'touch /tmp/astrolabe-evil'")
		hba := filepath.Join(srv.DataDir, "pg_hba.conf")
		old, err := os.ReadFile(hba)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hba, append([]byte("host all all all trust\n"), old...), 0o600); err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(hba, old, 0o600)
			srv.Psql(t, "postgres", "ALTER SYSTEM RESET ALL")
		}()
		dir, port := restore(t, true)
		for setting, want := range map[string]string{"work_mem": "7MB", "shared_preload_libraries": "", "ssl_passphrase_command": ""} {
			if got := psqlAt(t, srv, port, "postgres", "SHOW "+setting); got != want {
				t.Errorf("restored from an untrusted backup: %s = %q, want %q", setting, got, want)
			}
		}
		if got := psqlAt(t, srv, port, "postgres", "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'trust' AND type = 'host'"); got != "0" {
			t.Errorf("restored from an untrusted backup: %s TCP trust rules", got)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, dataDir, "postgresql.conf")); strings.Contains(string(b), "include") {
			t.Errorf("postgresql.conf of an untrusted restore includes: %s", b)
		}
		if got := timeline(port); got == "00000001" {
			t.Errorf("restored cluster writes WAL on its origin's timeline %s", got)
		}
	})
}
