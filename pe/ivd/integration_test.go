package ivd

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo/repotest"
	"github.com/vmware/govmomi/vim25/types"
)

// TestBackupRestoreAndExport backs an FCD snapshot up into a repository,
// restores it as a new FCD, and exports the snapshot over NBD, where
// nbdinfo's base:allocation map comes from the VMDK's allocated grains.
func TestBackupRestoreAndExport(t *testing.T) {
	requireTool(t, "nbdinfo", "libnbd-bin")
	s := startSim(t)
	ctx := context.Background()
	raw := randomDisk(64<<20, 0, 1<<20)
	copy(raw[40<<20:], randomDisk(1<<20, 0, 1<<20))
	id, _ := pe.NewID(Type, s.createFCD("app", raw, "monolithicSparse"))
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	kv := []types.KeyValue{{Key: "app", Value: "billing"}}
	if err := p.(*entity).setKeyValues(ctx, kv); err != nil {
		t.Fatal(err)
	}
	snapID := s.snapshot(p)
	snap, err := s.tm.Get(ctx, snapID)
	if err != nil {
		t.Fatal(err)
	}

	r := repotest.New(t)
	sum, err := r.Backup(ctx, snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Only the allocated grains are read, and the metadata.
	md, err := snap.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mdb, _ := io.ReadAll(md)
	md.Close()
	if sum.Read != 2<<20+int64(len(mdb)) {
		t.Errorf("backup read %d bytes, want the 2 MiB allocated and %d of metadata", sum.Read, len(mdb))
	}
	backup, err := r.OpenSnapshot(ctx, sum.ID)
	if err != nil {
		t.Fatal(err)
	}
	restored, err := s.tm.Copy(ctx, backup, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	if restored.ID().Name() == id.Name() {
		t.Fatalf("restore gave the source's id %s", restored.ID())
	}
	if !bytes.Equal(readAll(t, restored), raw) {
		t.Error("the FCD restored from the repository differs from the snapshot")
	}
	if got, err := restored.(*entity).keyValues(ctx); err != nil || len(got) != 1 || got[0] != kv[0] {
		t.Errorf("restored key/value metadata %v %v, want %v", got, err, kv)
	}

	m, err := pe.NewManager(s.tm)
	if err != nil {
		t.Fatal(err)
	}
	src := nbdexport.NewSource(m, t.TempDir())
	if err := src.Add(snapID); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- nbd.NewServer(src, nbd.Options{Logger: s.tm.s.Log}).Serve(sctx, l) }()
	defer func() { stop(); <-done }()
	uri := "nbd://" + l.Addr().String() + "/" + snapID.String()
	out, err := exec.Command("nbdinfo", "--map", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	// Lines: offset length type description.
	var data int64
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "0" {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				data += n
			}
		}
	}
	if data != 2<<20 {
		t.Errorf("base:allocation marks %d bytes as data, want 2 MiB:\n%s", data, out)
	}
	dump := filepath.Join(t.TempDir(), "dump.raw")
	if out, err := exec.Command("nbdcopy", uri, dump).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(dump); err != nil || !bytes.Equal(got, raw) {
		t.Error("nbdcopy of the snapshot differs from its data")
	}
}
