// Package pgtest starts real PostgreSQL servers for tests: Debian's
// postgresql-15, initialised in a temporary directory and listening on a
// free loopback port, stopped when the test ends.
package pgtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// InstallHint says how to get what Start needs.
const InstallHint = "install PostgreSQL 15 with: apt-get install -y postgresql-15 postgresql-contrib (or run scripts/install-test-deps.sh)"

// OSUser is the operating-system account the servers run as: PostgreSQL
// refuses to run as root, and tests run as root.
const OSUser = "postgres"

// Superuser and ReplicationUser are the roles a Server has; both log in
// with Password over TCP.
const (
	Superuser       = "postgres"
	ReplicationUser = "astrolabe"
	Password        = "pgtest-secret"
)

// Server is a running PostgreSQL cluster.
type Server struct {
	// BinDir holds the server's programs (postgres, pg_ctl, psql, ...).
	BinDir string
	// DataDir is the cluster's data directory, owned by OSUser.
	DataDir string
	// SocketDir is where the server's Unix socket lives.
	SocketDir string
	Host      string
	Port      int
}

// Options change what Start sets up.
type Options struct {
	// Settings are extra postgresql.conf lines ("name = value").
	Settings []string
}

// BinDir returns the directory of PostgreSQL 15's programs, or an error
// with the install hint.
func BinDir() (string, error) {
	dir := "/usr/lib/postgresql/15/bin"
	for _, prog := range []string{"initdb", "pg_ctl", "postgres", "psql"} {
		if _, err := os.Stat(filepath.Join(dir, prog)); err != nil {
			return "", fmt.Errorf("PostgreSQL program %s not found in %s: %s", prog, dir, InstallHint)
		}
	}
	if _, err := user.Lookup(OSUser); err != nil {
		return "", fmt.Errorf("no %q account: %s", OSUser, InstallHint)
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		return "", fmt.Errorf("runuser not found (util-linux): %w", err)
	}
	return dir, nil
}

// Start initialises a cluster in a new temporary directory and starts it on
// a free port of 127.0.0.1, with replication allowed for ReplicationUser
// (WAL level replica, walsenders and slots). It is stopped and removed
// when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup(OSUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	// t.TempDir is private to root; the server's account must reach its
	// directory, so it lives in a directory of its own.
	base, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(base, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := &Server{
		BinDir:    bin,
		DataDir:   filepath.Join(base, "data"),
		SocketDir: base,
		Host:      "127.0.0.1",
		Port:      FreePort(t),
	}
	pwfile := filepath.Join(base, "pwfile")
	if err := os.WriteFile(pwfile, []byte(Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pwfile, uid, gid); err != nil {
		t.Fatal(err)
	}
	s.runAsOwner(t, "initdb", "-D", s.DataDir, "-U", Superuser, "--pwfile", pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
	os.Remove(pwfile)

	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"port = " + strconv.Itoa(s.Port),
		"unix_socket_directories = '" + s.SocketDir + "'",
		"wal_level = replica",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = on",
		"shared_buffers = 32MB",
		"log_min_messages = warning",
	}
	conf = append(conf, opts.Settings...)
	appendFile(t, filepath.Join(s.DataDir, "postgresql.conf"), strings.Join(conf, "\n")+"\n")
	appendFile(t, filepath.Join(s.DataDir, "pg_hba.conf"),
		"host replication "+ReplicationUser+" 127.0.0.1/32 scram-sha-256\n")

	s.startServer(t)
	t.Cleanup(func() { s.Stop(t) })
	s.Psql(t, "postgres", fmt.Sprintf("CREATE ROLE %s LOGIN REPLICATION PASSWORD '%s'", ReplicationUser, Password))
	// What a base backup needs beyond REPLICATION: nothing for BASE_BACKUP;
	// pg_read_all_settings and pg_read_all_stats let it describe the cluster.
	s.Psql(t, "postgres", "GRANT pg_read_all_settings, pg_read_all_stats TO "+ReplicationUser)
	return s
}

// ConnString returns a libpq key/value connection string for user (with
// Password) and database db over TCP.
func (s *Server) ConnString(user, db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", s.Host, s.Port, user, Password, db)
}

// Psql runs sql as the superuser over the Unix socket and returns its
// unaligned, tuples-only output, trimmed.
func (s *Server) Psql(t testing.TB, db, sql string) string {
	t.Helper()
	return s.runAsOwner(t, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-h", s.SocketDir, "-p", strconv.Itoa(s.Port), "-U", Superuser, "-d", db, "-c", sql)
}

// Run runs one of the server's programs (pgbench, pg_amcheck, ...) as
// OSUser with the connection settings in the environment, and returns its
// output; a failure fails the test.
func (s *Server) Run(t testing.TB, prog string, args ...string) string {
	t.Helper()
	return s.runAsOwner(t, prog, args...)
}

// Stop stops the server (fast shutdown). Stopping a stopped server does
// nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(s.DataDir, "postmaster.pid")); err != nil {
		return
	}
	cmd := s.command("pg_ctl", "-D", s.DataDir, "-m", "fast", "-w", "-t", "60", "stop")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
}

// Restart starts a stopped server again.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.startServer(t)
}

func (s *Server) startServer(t testing.TB) {
	t.Helper()
	s.runAsOwner(t, "pg_ctl", "-D", s.DataDir, "-l", filepath.Join(s.SocketDir, "server.log"), "-w", "-t", "60", "start")
}

func (s *Server) runAsOwner(t testing.TB, prog string, args ...string) string {
	t.Helper()
	cmd := s.command(prog, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.SocketDir, "server.log"))
		t.Fatalf("%s %s: %v\n%s%s\nserver log:\n%s", prog, strings.Join(args, " "), err, out, stderr.Bytes(), log)
	}
	return strings.TrimSpace(string(out))
}

// Command returns prog (one of the server's programs) as a command run as
// OSUser with the connection settings in the environment, for programs a
// test runs in the background (pgbench under a backup).
func (s *Server) Command(prog string, args ...string) *exec.Cmd { return s.command(prog, args...) }

// command returns prog run as OSUser through runuser, with PGHOST, PGPORT,
// PGUSER and PGPASSWORD set so client programs reach this server.
func (s *Server) command(prog string, args ...string) *exec.Cmd {
	full := append([]string{"-u", OSUser, "--", filepath.Join(s.BinDir, prog)}, args...)
	cmd := exec.Command("runuser", full...)
	cmd.Dir = s.SocketDir
	cmd.Env = append(os.Environ(),
		"PGHOST="+s.SocketDir,
		"PGPORT="+strconv.Itoa(s.Port),
		"PGUSER="+Superuser,
		"PGPASSWORD="+Password,
	)
	return cmd
}

func appendFile(t testing.TB, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitReady waits up to d for the server to accept connections.
func (s *Server) WaitReady(t testing.TB, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		cmd := s.command("pg_isready", "-h", s.Host, "-p", strconv.Itoa(s.Port))
		if cmd.Run() == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server on port %d not ready after %v", s.Port, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StartDataDir starts a server on a data directory made elsewhere (a
// restored base backup, owned by OSUser) on a free port of 127.0.0.1,
// with settings appended to its postgresql.conf, and stops it when the
// test ends. Recovery settings and signal files are the caller's.
func StartDataDir(t testing.TB, dataDir string, settings ...string) *Server {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{BinDir: bin, DataDir: dataDir, SocketDir: filepath.Dir(dataDir), Host: "127.0.0.1", Port: FreePort(t)}
	conf := append([]string{
		"listen_addresses = '127.0.0.1'",
		"port = " + strconv.Itoa(s.Port),
		"unix_socket_directories = '" + s.SocketDir + "'",
	}, settings...)
	appendFile(t, filepath.Join(dataDir, "postgresql.conf"), strings.Join(conf, "\n")+"\n")
	s.startServer(t)
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// OwnedDir makes a new temporary directory owned by OSUser (mode 0700),
// removed when the test ends: where a server's account writes (a base
// backup, a data directory, staged WAL).
func OwnedDir(t testing.TB) string {
	t.Helper()
	u, err := user.Lookup(OSUser)
	if err != nil {
		t.Fatalf("%v: %s", err, InstallHint)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir
}
