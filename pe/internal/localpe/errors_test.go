package localpe_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/disk"
	"github.com/astrolabe-appliance/astrolabe/pe/fs"
)

// typeUnderTest is one PE type over a root, with the live PE "a" and one
// snapshot of it, and a source that is bigger than an untrusted copy may
// write.
type typeUnderTest struct {
	name string
	tm   interface {
		pe.TypeManager
		Root() string
	}
	live, snap pe.ProtectedEntity
	big        pe.ProtectedEntity // 2 MiB of random data; trusted
}

// newTypes makes the fs and the disk type under test, alike but for what
// only one of them has: a tree, an image file.
func newTypes(t *testing.T) []typeUnderTest {
	t.Helper()
	fsRoot, diskRoot := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(fsRoot, "a", "file"), 4096)
	writeFile(t, filepath.Join(fsRoot, "big", "file"), 2<<20)
	writeFile(t, filepath.Join(diskRoot, "a"), 4096)
	writeFile(t, filepath.Join(diskRoot, "big"), 2<<20)
	fsTM, err := fs.NewTypeManager(fsRoot)
	if err != nil {
		t.Fatal(err)
	}
	diskTM, err := disk.NewTypeManager(diskRoot)
	if err != nil {
		t.Fatal(err)
	}
	var types []typeUnderTest
	for _, tm := range []interface {
		pe.TypeManager
		Root() string
	}{fsTM, diskTM} {
		tt := typeUnderTest{name: tm.Type(), tm: tm, live: get(t, tm, tm.Type()+":a"), big: get(t, tm, tm.Type()+":big")}
		sid, err := tt.live.Snapshot(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		tt.snap = get(t, tm, sid.String())
		types = append(types, tt)
	}
	return types
}

func writeFile(t *testing.T, path string, size int) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, tm pe.TypeManager, id string) pe.ProtectedEntity {
	t.Helper()
	pid, err := pe.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tm.Get(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// noData is a source whose data cannot be opened.
type noData struct{ pe.ProtectedEntity }

func (noData) ID() pe.ID { id, _ := pe.NewID("ivd", "gone"); return id }
func (noData) Data(context.Context) (pe.Image, error) {
	return nil, errors.New("connection reset")
}

// untrusted makes a PE look like an uploaded zip that stores its data in
// one byte: an upload that expands beyond any bound.
type untrusted struct{ pe.ProtectedEntity }

func (untrusted) Untrusted() bool   { return true }
func (untrusted) StoredSize() int64 { return 1 }

// TestErrorsAgree drives fs and disk through the same bad requests: each
// must fail with the same sentinel error, in a message of the same shape
// once the type, the root and the snapshot name are taken out.
func TestErrorsAgree(t *testing.T) {
	ctx := context.Background()
	types := newTypes(t)
	cases := []struct {
		what string
		want error
		do   func(tt typeUnderTest) error
	}{
		{"get of another type", pe.ErrNotFound, func(tt typeUnderTest) error {
			id, _ := pe.NewID("ivd", "a")
			_, err := tt.tm.Get(ctx, id)
			return err
		}},
		{"get of a hidden name", pe.ErrNotFound, func(tt typeUnderTest) error {
			id, _ := pe.NewID(tt.name, ".snapshots")
			_, err := tt.tm.Get(ctx, id)
			return err
		}},
		{"get of a name with a slash", pe.ErrNotFound, func(tt typeUnderTest) error {
			id, _ := pe.NewID(tt.name, "a/b")
			_, err := tt.tm.Get(ctx, id)
			return err
		}},
		{"get of a missing PE", pe.ErrNotFound, func(tt typeUnderTest) error {
			id, _ := pe.NewID(tt.name, "missing")
			_, err := tt.tm.Get(ctx, id)
			return err
		}},
		{"get of a missing snapshot", pe.ErrNotFound, func(tt typeUnderTest) error {
			_, err := tt.tm.Get(ctx, tt.live.ID().WithSnapshot("missing"))
			return err
		}},
		{"snapshot of a snapshot", pe.ErrNotSupported, func(tt typeUnderTest) error {
			_, err := tt.snap.Snapshot(ctx, nil)
			return err
		}},
		{"overwrite of a snapshot", pe.ErrNotSupported, func(tt typeUnderTest) error {
			return tt.snap.Overwrite(ctx, tt.snap, false)
		}},
		{"info of a missing snapshot", pe.ErrNotFound, func(tt typeUnderTest) error {
			_, err := tt.live.SnapshotInfo(ctx, "missing")
			return err
		}},
		{"delete of a missing snapshot", pe.ErrNotFound, func(tt typeUnderTest) error {
			return tt.live.DeleteSnapshot(ctx, "missing")
		}},
		{"metadata", pe.ErrNoMetadata, func(tt typeUnderTest) error {
			_, err := tt.live.Metadata(ctx)
			return err
		}},
		{"copy with a bad mode", pe.ErrNotSupported, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{Mode: 7})
			return err
		}},
		{"copy with no mode", pe.ErrNotSupported, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{})
			return err
		}},
		{"create over an existing PE", pe.ErrExists, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{Mode: pe.Create})
			return err
		}},
		{"create of a hidden name", pe.ErrNotSupported, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{Mode: pe.Create, Name: ".x"})
			return err
		}},
		{"create of a name with a slash", pe.ErrNotSupported, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{Mode: pe.Create, Name: "x/y"})
			return err
		}},
		{"update of a missing PE", pe.ErrNotFound, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{Mode: pe.Update, Name: "missing"})
			return err
		}},
		{"update of a hidden name", pe.ErrNotFound, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, tt.snap, pe.CopyOptions{Mode: pe.Update, Name: ".snapshots"})
			return err
		}},
		{"copy of a source without data", pe.ErrInvalidSource, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, noData{}, pe.CopyOptions{Mode: pe.CreateNew})
			return err
		}},
		{"update from a source without data", pe.ErrInvalidSource, func(tt typeUnderTest) error {
			return tt.live.Overwrite(ctx, noData{}, false)
		}},
		{"untrusted copy beyond its bound", pe.ErrLimit, func(tt typeUnderTest) error {
			_, err := tt.tm.Copy(ctx, untrusted{tt.big}, pe.CopyOptions{Mode: pe.CreateNew})
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) { checkAgree(t, types, c.want, c.do) })
	}
	// Every failure above left the roots as they were.
	for _, tt := range types {
		ids, err := tt.tm.List(ctx)
		if err != nil || len(ids) != 2 {
			t.Errorf("%s: PEs after the failed requests: %v %v, want a and big", tt.name, ids, err)
		}
	}
}

// TestErrorsAgreeGone: a PE or snapshot removed behind the back of an
// entity that was got before is not found by either type, whatever is
// asked of it.
func TestErrorsAgreeGone(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		what string
		do   func(tt typeUnderTest) error
	}{
		{"info", func(tt typeUnderTest) error { _, err := tt.live.Info(ctx); return err }},
		{"data", func(tt typeUnderTest) error { _, err := tt.live.Data(ctx); return err }},
		{"snapshot", func(tt typeUnderTest) error { _, err := tt.live.Snapshot(ctx, nil); return err }},
		{"overwrite", func(tt typeUnderTest) error { return tt.live.Overwrite(ctx, tt.snap, false) }},
		{"snapshot's info", func(tt typeUnderTest) error { _, err := tt.snap.Info(ctx); return err }},
		{"snapshot's data", func(tt typeUnderTest) error { _, err := tt.snap.Data(ctx); return err }},
	}
	types := newTypes(t)
	for _, tt := range types {
		if err := os.RemoveAll(filepath.Join(tt.tm.Root(), "a")); err != nil {
			t.Fatal(err)
		}
		if err := tt.live.DeleteSnapshot(ctx, tt.snap.ID().Snapshot()); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cases {
		t.Run(c.what, func(t *testing.T) { checkAgree(t, types, pe.ErrNotFound, c.do) })
	}
}

// checkAgree runs do on every type: each must fail with an error matching
// want, and all messages must have the same shape.
func checkAgree(t *testing.T, types []typeUnderTest, want error, do func(typeUnderTest) error) {
	t.Helper()
	var first string
	for i, tt := range types {
		err := do(tt)
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want an error matching %q", tt.name, err, want)
			continue
		}
		t.Logf("%s: %v", tt.name, err)
		s := shape(err, tt)
		if want == pe.ErrLimit {
			// Where in its data a copy was stopped each type says in
			// its own terms (a tar member, an offset).
			s = s[strings.Index(s, want.Error()):]
		}
		if i == 0 {
			first = s
		} else if s != first {
			t.Errorf("messages differ in shape:\n%s: %s\n%s: %s", types[0].name, first, tt.name, s)
		}
	}
}

// shape is err's message without what differs between the types of
// itself: their names, roots and snapshot names.
func shape(err error, tt typeUnderTest) string {
	return strings.NewReplacer(
		tt.tm.Root(), "<root>",
		tt.snap.ID().Snapshot(), "<snapshot>",
		tt.name+":", "<type>:",
		`"`+tt.name+`"`, `"<type>"`,
	).Replace(err.Error())
}
