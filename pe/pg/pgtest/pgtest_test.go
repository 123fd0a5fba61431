package pgtest

import (
	"strings"
	"testing"
)

func TestStart(t *testing.T) {
	s := Start(t, Options{})
	if got := s.Psql(t, "postgres", "SHOW wal_level"); got != "replica" {
		t.Errorf("wal_level = %q, want replica", got)
	}
	s.Psql(t, "postgres", "CREATE TABLE t(x int); INSERT INTO t VALUES (42)")
	if got := s.Psql(t, "postgres", "SELECT x FROM t"); got != "42" {
		t.Errorf("SELECT = %q, want 42", got)
	}
	out := s.Run(t, "pgbench", "-i", "-s", "1", "-q", "postgres")
	_ = out
	if got := s.Psql(t, "postgres", "SELECT count(*) FROM pgbench_accounts"); got != "100000" {
		t.Errorf("pgbench_accounts rows = %q", got)
	}
	s.Stop(t)
	s.Restart(t)
	if got := s.Psql(t, "postgres", "SELECT rolreplication FROM pg_roles WHERE rolname = '"+ReplicationUser+"'"); !strings.HasPrefix(got, "t") {
		t.Errorf("replication role: %q", got)
	}
}
