// Package repotest gives tests of the packages that back up to a
// repository a real one: in a directory, encrypted, quiet.
package repotest

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// Password is the password of the repositories New makes.
const Password = "repotest"

// New returns a new repository in a temporary directory, open and closed
// when the test ends.
func New(t testing.TB) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	be, err := backend.NewDir(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	opts := repo.Options{Password: Password, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := repo.Init(ctx, be, opts); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close the repository: %v", err)
		}
	})
	return r
}
