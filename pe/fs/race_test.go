package fs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// outsideSecret is the content of the files outside the PE: no snapshot
// or image may ever hold it.
const outsideSecret = "OUTSIDE-THE-PE-SECRET"

// swapTree makes the PE data with a directory d of many files and a
// symlink s to a directory outside the root whose files have the same
// names, and starts exchanging d and s (renameat2 RENAME_EXCHANGE) until
// the returned stop is called. It returns stop and how many swaps ran.
func swapTree(t *testing.T, tm *TypeManager) (stop func() int) {
	t.Helper()
	live := filepath.Join(tm.Root(), "data")
	outside := filepath.Join(filepath.Dir(tm.Root()), "outside")
	const files = 64
	for i := range files {
		name := fmt.Sprintf("f%03d", i)
		writeFile(t, filepath.Join(live, "d", name), []byte("inside the PE"), 0o644)
		writeFile(t, filepath.Join(outside, name), []byte(outsideSecret), 0o644)
		must(t, os.Mkdir(filepath.Join(live, "d", "sub"+name), 0o755))
		writeFile(t, filepath.Join(outside, "sub"+name, "g"), []byte(outsideSecret), 0o644)
		writeFile(t, filepath.Join(live, "d", "sub"+name, "g"), []byte("inside the PE"), 0o644)
	}
	must(t, os.Symlink(outside, filepath.Join(live, "s")))

	done := make(chan struct{})
	var wg sync.WaitGroup
	swaps := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		d, s := filepath.Join(live, "d"), filepath.Join(live, "s")
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, s, unix.RENAME_EXCHANGE); err != nil {
				t.Errorf("renameat2 exchange: %v", err)
				return
			}
			swaps++
		}
	}()
	var once sync.Once
	return func() int {
		once.Do(func() { close(done) })
		wg.Wait()
		return swaps
	}
}

// treeHolds reports the first regular file under dir (not following
// symlinks) whose content contains secret.
func treeHolds(t *testing.T, dir, secret string) string {
	t.Helper()
	found := ""
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil || found != "" || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) {
			found = p
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestSecuritySnapshotSymlinkSwap: snapshots and the tar image of a live
// tree never read outside the PE while a directory and a symlink to a
// directory outside are exchanged under them (issue 22, item 5). Bounded:
// 200 rounds or 20 seconds, whichever comes first.
func TestSecuritySnapshotSymlinkSwap(t *testing.T) {
	ctx := context.Background()
	tm := newTestRoot(t, t.TempDir())
	stop := swapTree(t, tm)
	defer stop()
	p := getPE(t, tm, fsID(t, "data"))

	deadline := time.Now().Add(20 * time.Second)
	rounds, imageErrs := 0, 0
	for ; rounds < 200 && time.Now().Before(deadline); rounds++ {
		id, err := p.Snapshot(ctx, nil)
		if err != nil {
			t.Fatalf("round %d: snapshot: %v", rounds, err)
		}
		if f := treeHolds(t, tm.trees.treePath("data", id.Snapshot()), outsideSecret); f != "" {
			t.Fatalf("round %d: snapshot %s holds a file from outside the PE: %s", rounds, id, f)
		}
		must(t, p.DeleteSnapshot(ctx, id.Snapshot()))

		// The live image: it may fail (the tree changed under it), but
		// it must never carry outside bytes.
		img, err := p.Data(ctx)
		if err != nil {
			imageErrs++
			continue
		}
		b, err := io.ReadAll(pe.NewReader(img))
		img.Close()
		if bytes.Contains(b, []byte(outsideSecret)) {
			t.Fatalf("round %d: the tar image of the live tree holds a file from outside the PE", rounds)
		}
		if err != nil {
			imageErrs++
		}
	}
	swaps := stop()
	t.Logf("%d rounds of snapshot + live image against %d swaps; %d live images failed as changed", rounds, swaps, imageErrs)
	if swaps == 0 {
		t.Fatal("the swapper never ran")
	}
}
