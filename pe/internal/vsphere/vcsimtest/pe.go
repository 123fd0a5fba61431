package vcsimtest

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
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
