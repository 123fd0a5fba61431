package ivd

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// TestOnVcsim runs the ivd PE against govmomi's vCenter simulator, with
// real VMDK content written where the simulator keeps the FCD's backing.
func TestOnVcsim(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img missing: apt-get install -y qemu-utils")
	}
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	defer model.Remove()
	srv := model.Service.NewServer()
	defer srv.Close()
	ctx := context.Background()
	pass, _ := srv.URL.User.Password()
	u := *srv.URL
	u.User = nil
	tm, err := NewTypeManager(Config{VCenter: u.String(), User: srv.URL.User.Username(), Password: pass, Insecure: true},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tm.client(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// An FCD of 64 MiB, then real content in its backing files.
	f := find.NewFinder(c.Client)
	dc, _ := f.DefaultDatacenter(ctx)
	f.SetDatacenter(dc)
	ds, err := f.DefaultDatastore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := vslm.NewObjectManager(c.Client)
	task, err := m.CreateDisk(ctx, types.VslmCreateSpec{
		Name: "disk1", CapacityInMB: 64,
		BackingSpec: &types.VslmCreateSpecDiskFileBackingSpec{
			VslmCreateSpecBackingSpec: types.VslmCreateSpecBackingSpec{Datastore: ds.Reference()},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj := res.Result.(types.VStorageObject)
	var mds mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"summary"}, &mds); err != nil {
		t.Fatal(err)
	}
	backing := obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo).FilePath
	local := filepath.Join(mds.Summary.Url, strings.TrimSpace(backing[strings.Index(backing, "]")+1:]))
	raw := make([]byte, 64<<20)
	rand.Read(raw[1<<20 : 3<<20])
	rawPath := filepath.Join(t.TempDir(), "disk.raw")
	os.WriteFile(rawPath, raw, 0o644)
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", rawPath, local).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}

	ids, err := tm.List(ctx)
	if err != nil || len(ids) != 1 || ids[0].Name() != obj.Config.Id.Id {
		t.Fatalf("list: %v %v", ids, err)
	}
	p, err := tm.Get(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	info, _ := p.Info(ctx)
	if info.Name != "disk1" || info.Size != 64<<20 {
		t.Errorf("info %+v", info)
	}
	img, err := p.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(raw))
	if _, err := img.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Error("FCD data differs from its backing's content")
	}
	exts, _ := img.Extents(ctx, 0, img.Size())
	var data int64
	for _, x := range exts {
		if x.Kind == pe.ExtentData {
			data += x.Length
		}
	}
	if data != 2<<20 {
		t.Errorf("allocated %d bytes, want 2 MiB", data)
	}
	img.Close()
	md, _ := p.Metadata(ctx)
	mb, _ := io.ReadAll(md)
	if !strings.Contains(string(mb), obj.Config.Id.Id) {
		t.Errorf("metadata: %.200s", mb)
	}

	// Snapshots: create, list, info, delete (twice: gone is done).
	snap, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := p.ListSnapshots(ctx)
	if err != nil || len(snaps) != 1 || snaps[0] != snap {
		t.Fatalf("snapshots %v %v", snaps, err)
	}
	sp, err := tm.Get(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if si, _ := sp.Info(ctx); si.Created == nil {
		t.Errorf("snapshot info %+v", si)
	}
	if err := p.DeleteSnapshot(ctx, snap.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteSnapshot(ctx, snap.Snapshot()); err != nil {
		t.Errorf("deleting a deleted snapshot: %v", err)
	}

	// A lost session is replaced by a new login.
	if err := c.SessionManager.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, err := tm.List(ctx); err != nil || len(ids) != 1 {
		t.Errorf("list after the session was lost: %v %v", ids, err)
	}
}
