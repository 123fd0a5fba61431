package pg

import (
	"context"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg/pgtest"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
)

// A second base backup of an unchanged pgbench database stores under 5%
// new bytes in a repository, and what the repository gives back restores.
func TestRepositoryDedup(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t, pgtest.Options{})
	srv.Run(t, "pgbench", "-i", "-q", "-s", "10", "postgres")
	srv.Psql(t, "postgres", "CHECKPOINT")
	m := newManager(t, clusterOf("main", srv))
	r := repotest.New(t)
	p, err := m.Get(ctx, mustID(t, "main"))
	if err != nil {
		t.Fatal(err)
	}
	var sums []int64
	var last pe.ID
	for i := range 2 {
		snap, err := p.Snapshot(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		sp, err := m.Get(ctx, snap)
		if err != nil {
			t.Fatal(err)
		}
		s, err := r.Backup(ctx, sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("backup %d: read %d, new %d, stored %d", i+1, s.Read, s.New, s.Stored)
		sums = append(sums, s.New)
		last = s.ID
	}
	if sums[1]*20 >= sums[0] {
		t.Errorf("second backup of an unchanged database: %d new bytes, the first %d: want under 5%%", sums[1], sums[0])
	}

	back, err := r.OpenSnapshot(ctx, last)
	if err != nil {
		t.Fatal(err)
	}
	restored, err := m.Copy(ctx, back, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	if got := psqlAt(t, srv, restoredPort(t, restored), "postgres", "SELECT count(*) FROM pgbench_accounts"); got != "1000000" {
		t.Errorf("restored from the repository: %s accounts, want 1000000", got)
	}
}
