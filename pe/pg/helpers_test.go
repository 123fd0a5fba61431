package pg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
)

// testRoot makes a root the restore account can reach: t.TempDir is
// private to root.
func testRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgpe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// archiveDir makes a directory the test server archives its WAL into.
func archiveDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testRoot(t), "archive")
	u, err := user.Lookup(pgtest.OSUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir
}

// clusterOf is the configuration of srv as the cluster name, reached as
// the replication role.
func clusterOf(name string, srv *pgtest.Server) Cluster {
	return Cluster{Name: name, Host: srv.Host, Port: srv.Port, User: pgtest.ReplicationUser,
		Password: pgtest.Password, SSLMode: "disable", DBName: "postgres"}
}

// newManager returns a manager of the clusters under a new root; the
// clusters it restores are stopped and removed when the test ends.
func newManager(t *testing.T, clusters ...Cluster) *TypeManager {
	t.Helper()
	bin, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Root: testRoot(t), Clusters: clusters, Restore: Restore{BinDir: bin}}
	cfg.setDefaults()
	m, err := NewTypeManager(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeRestored(t, m) })
	return m
}

func removeRestored(t *testing.T, m *TypeManager) {
	ctx := context.Background()
	ids, err := m.List(ctx)
	if err != nil {
		t.Error(err)
		return
	}
	for _, id := range ids {
		if _, ok := m.cluster(id.Name()); ok {
			continue
		}
		if err := m.removeRestored(ctx, id.Name()); err != nil {
			t.Errorf("remove %s: %v", id, err)
		}
	}
}

// restoredPort is the port a restored cluster's info gives.
func restoredPort(t *testing.T, p pe.ProtectedEntity) int {
	t.Helper()
	info, err := p.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	port, ok := info.Details["port"].(int)
	if !ok {
		t.Fatalf("info of %s: no port in %v", p.ID(), info.Details)
	}
	return port
}

// psqlAt runs sql as the superuser over TCP on a restored server (whose
// roles and pg_hba.conf are the source's) and returns its output.
func psqlAt(t *testing.T, srv *pgtest.Server, port int, db, sql string) string {
	t.Helper()
	out, err := runAt(srv, port, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runAt runs a client program of srv's installation against the server
// on port of 127.0.0.1 as the superuser.
func runAt(srv *pgtest.Server, port int, prog string, args ...string) (string, error) {
	cmd := srv.Command(prog, append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", pgtest.Superuser}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return "", fmt.Errorf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// leftovers lists what a failed operation may have left in the root:
// hidden temporary entries of snapshots and restores.
func leftovers(t *testing.T, m *TypeManager, name string) []string {
	t.Helper()
	var left []string
	for _, dir := range []string{filepath.Join(m.root, clustersDir), m.snaps.Of(name)} {
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			left = append(left, filepath.Join(dir, e.Name()))
		}
	}
	return left
}

func mustID(t *testing.T, name string) pe.ID {
	t.Helper()
	id, err := pe.NewID(Type, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustServer(t *testing.T, m *TypeManager, name string) server {
	t.Helper()
	srv, err := m.server(name)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}
