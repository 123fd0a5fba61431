package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

func TestWALStoreReadPrune(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	seg := make([]byte, 16*mib)
	rand.Read(seg[:3*mib]) // the rest zeros, as the end of a switched segment
	f := WALFile{Cluster: "main db", SystemID: 7311, Name: "000000010000000000000003", StartLSN: 3 << 24, EndLSN: 4 << 24}

	partial := f
	partial.Partial = true
	if stored, err := e.r.PutWAL(ctx, partial, seg[:mib]); err != nil || !stored {
		t.Fatalf("put partial: %v %v", stored, err)
	}
	got, data, err := e.r.ReadWAL(ctx, f.Cluster, f.SystemID, f.Name, true)
	if err != nil || !got.Partial || !bytes.Equal(data, seg[:mib]) {
		t.Fatalf("read partial: %+v %d bytes %v", got, len(data), err)
	}
	if _, _, err := e.r.ReadWAL(ctx, f.Cluster, f.SystemID, f.Name, false); !errors.Is(err, ErrWALNotFound) {
		t.Fatalf("read complete before it is stored: %v", err)
	}
	if stored, err := e.r.PutWAL(ctx, f, seg); err != nil || !stored {
		t.Fatalf("put: %v %v", stored, err)
	}
	// Again: nothing stored twice.
	if stored, err := e.r.PutWAL(ctx, f, seg); err != nil || stored {
		t.Fatalf("put again: %v %v", stored, err)
	}
	files, err := e.r.WALFiles(ctx, f.Cluster, f.SystemID)
	if err != nil || len(files) != 1 || files[0].Partial || files[0].Size != 16*mib {
		t.Fatalf("files: %+v %v (want the complete segment only: it replaced the partial one)", files, err)
	}
	if _, data, err = e.r.ReadWAL(ctx, f.Cluster, f.SystemID, f.Name, false); err != nil || !bytes.Equal(data, seg) {
		t.Fatalf("read: %v", err)
	}
	st, err := e.r.Stats(ctx)
	if err != nil || st.PackBytes > 4*mib+mib/2 {
		t.Fatalf("a 16 MiB segment of 3 MiB data stored in %d bytes: %v", st.PackBytes, err)
	}

	// Prune keeps what WAL uses; check finds it sound.
	if _, err := e.r.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if probs, err := e.r.Check(ctx, true, nil); err != nil || len(probs) != 0 {
		t.Fatalf("check: %v %v", probs, err)
	}
	if _, data, err = e.r.ReadWAL(ctx, f.Cluster, f.SystemID, f.Name, false); err != nil || !bytes.Equal(data, seg) {
		t.Fatalf("read after prune: %v", err)
	}

	// A segment moved under another name does not open as that one.
	other := "000000010000000000000004"
	raw, err := backend.ReadAll(ctx, e.be, walObjectName(f.Cluster, f.SystemID, f.Name, false))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.r.saveObject(ctx, walObjectName(f.Cluster, f.SystemID, other, false), raw); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.r.ReadWAL(ctx, f.Cluster, f.SystemID, other, false); err == nil || !strings.Contains(err.Error(), "damaged or not this file's") {
		t.Fatalf("moved segment: %v", err)
	}
	if _, err := e.r.Prune(ctx); err == nil {
		t.Fatal("prune went on past a WAL object it cannot read")
	}

	if n, err := e.r.ForgetWAL(ctx, f.Cluster, f.SystemID, "000000010000000000000004"); err != nil || n != 1 {
		t.Fatalf("forget: %d %v", n, err)
	}
	if _, err := e.r.PutWAL(ctx, WALFile{Cluster: "a/b", Name: f.Name}, seg); err == nil {
		t.Fatal("a cluster name with '/' was taken")
	}
	if _, err := e.r.PutWAL(ctx, WALFile{Cluster: "a", Name: "../config"}, seg); err == nil {
		t.Fatal("a bad WAL name was taken")
	}
}

// TestWALConflict: a segment stored again under its name with other
// bytes (another history wrote it) is refused, not taken as stored.
func TestWALConflict(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	seg := make([]byte, mib)
	rand.Read(seg)
	f := WALFile{Cluster: "main", SystemID: 1, Name: "000000010000000000000004"}
	if _, err := e.r.PutWAL(ctx, f, seg); err != nil {
		t.Fatal(err)
	}
	other := bytes.Clone(seg)
	other[len(other)/2] ^= 1
	if _, err := e.r.PutWAL(ctx, f, other); !errors.Is(err, ErrWALConflict) {
		t.Fatalf("other bytes under a stored name: %v, want ErrWALConflict", err)
	}
	partial := f
	partial.Partial = true
	if _, err := e.r.PutWAL(ctx, partial, other[:len(other)*3/4]); !errors.Is(err, ErrWALConflict) {
		t.Fatalf("a partial segment of other bytes: %v, want ErrWALConflict", err)
	}
	if stored, err := e.r.PutWAL(ctx, partial, seg[:len(seg)/4]); err != nil || stored {
		t.Fatalf("the start of the stored segment: %v %v", stored, err)
	}
	if stored, err := e.r.PutWAL(ctx, f, seg); err != nil || stored {
		t.Fatalf("the same bytes again: %v %v", stored, err)
	}
}

// TestWALRaisesFormat: the first WAL file raises the repository to the
// WAL format, which versions before WAL archiving refuse (their prune
// would delete the WAL's packs); this version still opens it.
func TestWALRaisesFormat(t *testing.T) {
	e := newEnv(t, nil, Options{Password: "pw"})
	ctx := context.Background()
	version := func() int {
		b, err := backend.ReadAll(ctx, e.be, "config")
		if err != nil {
			t.Fatal(err)
		}
		var c config
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return c.Version
	}
	if v := version(); v != formatVersion {
		t.Fatalf("new repository at format %d", v)
	}
	if _, err := e.r.PutWAL(ctx, WALFile{Cluster: "main", SystemID: 1, Name: "00000002.history"}, []byte("1\t0/4000058\tno recovery target specified\n")); err != nil {
		t.Fatal(err)
	}
	if v := version(); v != walFormatVersion || walFormatVersion <= formatVersion {
		t.Fatalf("format %d after the first WAL file, want %d", v, walFormatVersion)
	}
	r, err := Open(ctx, e.be, Options{Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if files, err := r.WALFiles(ctx, "main", 1); err != nil || len(files) != 1 {
		t.Fatalf("WAL after reopening: %v %v", files, err)
	}
}

// walLoads counts the loads of WAL objects.
type walLoads struct {
	backend.Backend
	mu sync.Mutex
	n  int
}

func (b *walLoads) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if strings.HasPrefix(name, "wal/") {
		b.mu.Lock()
		b.n++
		b.mu.Unlock()
	}
	return b.Backend.Load(ctx, name, off, length)
}

func (b *walLoads) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// TestWALListingCached: listing a cluster's WAL again reads only the
// objects new or rewritten since (partial ones always), not every
// segment's object again; a forgotten segment is gone from the list.
func TestWALListingCached(t *testing.T) {
	dir, err := backend.NewDir(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	be := &walLoads{Backend: dir}
	e := newEnv(t, be, Options{Password: "pw"})
	ctx := context.Background()
	seg := make([]byte, 64<<10)
	put := func(name string, partial bool) {
		t.Helper()
		rand.Read(seg)
		if _, err := e.r.PutWAL(ctx, WALFile{Cluster: "main", SystemID: 1, Name: name, Partial: partial}, seg); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"000000010000000000000001", "000000010000000000000002", "000000010000000000000003"} {
		put(n, false)
	}
	put("000000010000000000000004", true)
	list := func() int {
		t.Helper()
		before := be.count()
		files, err := e.r.WALFiles(ctx, "main", 1)
		if err != nil {
			t.Fatal(err)
		}
		return be.count() - before + 100*len(files)
	}
	list()
	if got := list(); got != 401 {
		t.Fatalf("listed again: %d files, %d objects read; want 4 and 1 (the partial one)", got/100, got%100)
	}
	put("000000010000000000000005", false)
	if got := list(); got != 502 {
		t.Fatalf("after a new segment: %d files, %d objects read; want 5 and 2", got/100, got%100)
	}
	if _, err := e.r.ForgetWAL(ctx, "main", 1, "000000010000000000000002"); err != nil {
		t.Fatal(err)
	}
	if got := list(); got != 401 {
		t.Fatalf("after forgetting one: %d files, %d objects read; want 4 and 1", got/100, got%100)
	}
}
