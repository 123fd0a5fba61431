package nbd

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// stuckSource's exports take a context and block every read until it ends,
// as a repository read waiting on a dead S3 server does.
type stuckSource struct {
	fileSource
	started, givenUp chan error
}

func (s stuckSource) Open(ctx context.Context, name string) (Export, error) {
	e, err := s.fileSource.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	return stuckExport{e.(*fileExport), s}, nil
}

type stuckExport struct {
	*fileExport
	s stuckSource
}

func (e stuckExport) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	e.s.started <- nil
	<-ctx.Done()
	e.s.givenUp <- ctx.Err()
	return 0, ctx.Err()
}

// TestReadGivenUpWithConnection: a read of an export that takes a context
// stops when its client disconnects, instead of holding the export's
// backend (and the server's memory) until it answers.
func TestReadGivenUpWithConnection(t *testing.T) {
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "a.img"), 4*mib, map[int64]int{0: mib})
	src := stuckSource{fileSource{dir}, make(chan error, 1), make(chan error, 1)}
	addr := serveWith(t, src, Options{})
	rc := &rawClient{t, rawHandshake(t, addr)}
	rc.goExport("a.img")
	if _, err := rc.c.Write(readRequest(1, 0, 4096)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.started:
	case <-time.After(20 * time.Second):
		t.Fatal("the read did not reach the export within 20 s")
	}
	rc.c.Close()
	select {
	case err := <-src.givenUp:
		if err == nil {
			t.Error("the read's context ended without an error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the read was not given up within 20 s of the client leaving")
	}
}
