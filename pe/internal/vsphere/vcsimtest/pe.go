package vcsimtest

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// Quiet is a logger that drops everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// ReadAll reads a PE's whole data.
func ReadAll(t testing.TB, p pe.ProtectedEntity) []byte {
	t.Helper()
	img, err := p.Data(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

// Repository is a new repository in a temporary directory, closed when
// the test ends.
func Repository(t testing.TB) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	be, err := backend.NewDir(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	opts := repo.Options{Password: "vcsimtest", Logger: Quiet()}
	if err := repo.Init(ctx, be, opts); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}
