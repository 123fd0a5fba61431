package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/petest"
)

// makeSparseSource writes a 256 MiB image with 12 MiB of data in three
// ranges and 4 MiB of written zeros, which a restore must leave as a hole.
func makeSparseSource(t *testing.T, path string) {
	t.Helper()
	truncateFile(t, path, 256*miB)
	writeAt(t, path, randomBytes(1, 4*miB), 0)
	writeAt(t, path, make([]byte, 4*miB), 50*miB)
	writeAt(t, path, randomBytes(2, 4*miB), 100*miB+4*kiB)
	writeAt(t, path, randomBytes(3, 4*miB), 252*miB)
}

// checkRestored checks that the image at path equals the source snapshot
// and occupies about as much as the source's data.
func checkRestored(t *testing.T, tm *TypeManager, path string, want string, data int64) {
	t.Helper()
	if got := fileSHA(t, path); got != want {
		t.Errorf("%s: sha %s, want %s", path, got, want)
	}
	if used := allocated(t, path); used < data || used > data+data/16 {
		t.Errorf("%s occupies %.1f MiB, want about %.1f MiB (sparse)", path, float64(used)/miB, float64(data)/miB)
	}
}

// leftovers lists hidden temporary files in the root.
func leftovers(t *testing.T, tm *TypeManager) []string {
	t.Helper()
	entries, err := os.ReadDir(tm.Root())
	if err != nil {
		t.Fatal(err)
	}
	var tmp []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp") {
			tmp = append(tmp, e.Name())
		}
	}
	return tmp
}

func TestRestore(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, "")
	src := filepath.Join(tm.Root(), "src.img")
	makeSparseSource(t, src)
	const data = 12 * miB
	want := fileSHA(t, src)
	id := diskID(t, "src.img")
	snap := snapshot(t, tm, id)
	sp := getPE(t, tm, snap)

	t.Run("create_new", func(t *testing.T) {
		prog := &petest.Progress{}
		p, err := tm.Copy(ctx, sp, pe.CopyOptions{Mode: pe.CreateNew, Progress: prog})
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^src-[0-9a-f]{8}\.img$`).MatchString(p.ID().Name()) {
			t.Errorf("new name %q", p.ID().Name())
		}
		checkRestored(t, tm, filepath.Join(tm.Root(), p.ID().Name()), want, data)
		if done, total := prog.Counts(); total != 256*miB || done != 256*miB {
			t.Errorf("progress %s, want all of 256 MiB", prog)
		}
		if _, err := tm.Get(ctx, p.ID()); err != nil {
			t.Errorf("Get of the new PE: %v", err)
		}
	})

	t.Run("create", func(t *testing.T) {
		opts := pe.CopyOptions{Mode: pe.Create, Name: "restored.img"}
		p, err := tm.Copy(ctx, sp, opts)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID().String() != "disk:restored.img" {
			t.Errorf("ID %s", p.ID())
		}
		checkRestored(t, tm, filepath.Join(tm.Root(), "restored.img"), want, data)
		if _, err := tm.Copy(ctx, sp, opts); !errors.Is(err, pe.ErrExists) {
			t.Errorf("second create: error %v, want ErrExists", err)
		}
		// Without a name the source's is used, and that exists.
		if _, err := tm.Copy(ctx, sp, pe.CopyOptions{Mode: pe.Create}); !errors.Is(err, pe.ErrExists) {
			t.Errorf("create over the source: error %v, want ErrExists", err)
		}
		if _, err := tm.Copy(ctx, sp, pe.CopyOptions{Mode: pe.Create, Name: ".sneaky"}); err == nil {
			t.Error("create of a hidden name succeeded")
		}
	})

	t.Run("update", func(t *testing.T) {
		// Change the live image, then restore the snapshot over it.
		writeAt(t, src, randomBytes(9, 8*miB), 20*miB)
		truncateFile(t, src, 300*miB)
		if err := os.Chmod(src, 0o640); err != nil {
			t.Fatal(err)
		}
		p, err := tm.Copy(ctx, sp, pe.CopyOptions{Mode: pe.Update})
		if err != nil {
			t.Fatal(err)
		}
		if p.ID() != id {
			t.Errorf("ID %s, want %s", p.ID(), id)
		}
		checkRestored(t, tm, src, want, data)
		if fi, err := os.Stat(src); err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("mode after update: %v, %v", fi.Mode(), err)
		}
		if _, err := tm.Copy(ctx, sp, pe.CopyOptions{Mode: pe.Update, Name: "missing.img"}); !errors.Is(err, pe.ErrNotFound) {
			t.Errorf("update of a missing PE: error %v, want ErrNotFound", err)
		}
	})

	t.Run("overwrite", func(t *testing.T) {
		writeAt(t, src, randomBytes(10, 1*miB), 0)
		if err := getPE(t, tm, id).Overwrite(ctx, sp, true); err != nil {
			t.Fatal(err)
		}
		checkRestored(t, tm, src, want, data)
	})

	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := tm.Copy(cctx, sp, pe.CopyOptions{Mode: pe.Create, Name: "never.img"}); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled copy: error %v", err)
		}
		if _, err := os.Lstat(filepath.Join(tm.Root(), "never.img")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cancelled copy left its target: %v", err)
		}
		before := fileSHA(t, src)
		if _, err := tm.Copy(cctx, getPE(t, tm, diskID(t, "restored.img")), pe.CopyOptions{Mode: pe.Update, Name: "src.img"}); err == nil {
			t.Error("cancelled update succeeded")
		}
		if fileSHA(t, src) != before {
			t.Error("cancelled update changed the target")
		}
	})

	if tmp := leftovers(t, tm); len(tmp) != 0 {
		t.Errorf("temporary files left in the root: %v", tmp)
	}
}
