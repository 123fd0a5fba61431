package snapdir

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

type info struct {
	Created time.Time `json:"created"`
	Note    string    `json:"note"`
}

func TestTakeListDelete(t *testing.T) {
	s := New(t.TempDir())
	ctx := context.Background()
	build := func(note string) func(context.Context, string, time.Time) (any, error) {
		return func(_ context.Context, dir string, now time.Time) (any, error) {
			return info{Created: now, Note: note}, os.WriteFile(filepath.Join(dir, "data"), []byte(note), 0o600)
		}
	}
	a, err := s.Take(ctx, "pe1", build("a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Take(ctx, "pe1", build("b"))
	if err != nil {
		t.Fatal(err)
	}
	// A failed build leaves nothing behind, not even its temporary directory.
	if _, err := s.Take(ctx, "pe1", func(context.Context, string, time.Time) (any, error) {
		return nil, errors.New("boom")
	}); err == nil {
		t.Fatal("failed build succeeded")
	}
	entries, _ := os.ReadDir(s.Of("pe1"))
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries after a failed build", len(entries))
	}
	snaps, err := s.List("pe1")
	if err != nil || len(snaps) != 2 || snaps[0] != a || snaps[1] != b {
		t.Fatalf("list %v %v; want [%s %s]", snaps, err, a, b)
	}
	var got info
	if err := s.ReadInfo("pe1", b, &got); err != nil || got.Note != "b" || got.Created.IsZero() {
		t.Errorf("info %+v %v", got, err)
	}
	if err := s.Delete("pe1", a); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("pe1", a); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if err := s.ReadInfo("pe1", "../pe1", &got); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("a path as snapshot name: %v", err)
	}
	id, _ := pe.NewID("disk", "pe1")
	ids, err := s.IDs(id)
	if err != nil || len(ids) != 1 || ids[0] != id.WithSnapshot(b) {
		t.Errorf("IDs %v %v", ids, err)
	}
}
