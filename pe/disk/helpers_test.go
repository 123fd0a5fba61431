package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

const (
	kiB = 1 << 10
	miB = 1 << 20
	giB = 1 << 30
)

// newTestRoot returns a type manager over a fresh directory under dir
// (t.TempDir() if dir is "").
func newTestRoot(tb testing.TB, dir string) *TypeManager {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	root := filepath.Join(dir, "disks")
	if err := os.Mkdir(root, 0o755); err != nil {
		tb.Fatal(err)
	}
	tm, err := NewTypeManager(root)
	if err != nil {
		tb.Fatal(err)
	}
	return tm
}

// randomBytes returns n deterministic pseudo-random bytes (never a zero
// block in practice).
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 1, 2, 3})
	_, _ = r.Read(b)
	return b
}

// writeAt writes b into the file at path at off, creating it if needed.
func writeAt(tb testing.TB, path string, b []byte, off int64) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// writeRandomFile writes size pseudo-random bytes to path in 16 MiB pieces.
func writeRandomFile(tb testing.TB, path string, seed uint64, size int64) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{byte(seed), 7})
	if _, err := io.CopyN(f, r, size); err != nil {
		tb.Fatal(err)
	}
	// Sync, so that benchmarks do not pay for writing back their setup.
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

func truncateFile(tb testing.TB, path string, size int64) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
}

func fileSHA(tb testing.TB, path string) string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func imageSHA(tb testing.TB, img pe.Image) string {
	tb.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, pe.NewReader(img)); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// peSHA hashes the data of the PE id.
func peSHA(tb testing.TB, tm *TypeManager, id pe.ID) string {
	tb.Helper()
	img := openData(tb, tm, id)
	defer img.Close()
	return imageSHA(tb, img)
}

func getPE(tb testing.TB, tm *TypeManager, id pe.ID) pe.ProtectedEntity {
	tb.Helper()
	p, err := tm.Get(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func openData(tb testing.TB, tm *TypeManager, id pe.ID) pe.Image {
	tb.Helper()
	img, err := getPE(tb, tm, id).Data(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

func snapshot(tb testing.TB, tm *TypeManager, id pe.ID) pe.ID {
	tb.Helper()
	s, err := getPE(tb, tm, id).Snapshot(context.Background(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func diskID(tb testing.TB, name string) pe.ID {
	tb.Helper()
	id, err := pe.NewID(Type, name)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// allocated is the space a file occupies on disk.
func allocated(tb testing.TB, path string) int64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// snapshotInfoOf reads a snapshot's info.json.
func snapshotInfoOf(tb testing.TB, tm *TypeManager, id pe.ID) snapshotInfo {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(tm.disks.Snapshots().Path(id.Name(), id.Snapshot()), snapdir.InfoFile))
	if err != nil {
		tb.Fatal(err)
	}
	var si snapshotInfo
	if err := json.Unmarshal(b, &si); err != nil {
		tb.Fatal(err)
	}
	return si
}
