package ivd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

func dataBytes(t *testing.T, p pe.ProtectedEntity) int64 {
	t.Helper()
	ctx := context.Background()
	img, err := p.Data(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	exts, err := img.Extents(ctx, 0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, x := range exts {
		if x.Kind == pe.ExtentData {
			n += x.Length
		}
	}
	return n
}

// TestOnVcsim runs the ivd PE against govmomi's vCenter simulator, with
// real VMDK content written where the simulator keeps the FCD's backing.
func TestOnVcsim(t *testing.T) {
	s := startSim(t)
	ctx := context.Background()
	raw := randomDisk(64<<20, 1<<20, 3<<20)
	uuid := s.createFCD("disk1", raw, "monolithicSparse")

	ids, err := s.tm.List(ctx)
	if err != nil || len(ids) != 1 || ids[0].Name() != uuid {
		t.Fatalf("list: %v %v", ids, err)
	}
	p, err := s.tm.Get(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	info, _ := p.Info(ctx)
	if info.Name != "disk1" || info.Size != 64<<20 {
		t.Errorf("info %+v", info)
	}
	if !bytes.Equal(readAll(t, p), raw) {
		t.Error("FCD data differs from its backing's content")
	}
	if n := dataBytes(t, p); n != 2<<20 {
		t.Errorf("allocated %d bytes, want 2 MiB", n)
	}
	// Metadata: the VStorageObject and its key/value metadata, which
	// vCenter gives through its vslm endpoint.
	c := s.tm.mustClient(t)
	task, err := methods.VCenterUpdateVStorageObjectMetadataEx_Task(ctx, c.Client, &types.VCenterUpdateVStorageObjectMetadataEx_Task{
		This: *c.ServiceContent.VStorageObjectManager, Id: types.ID{Id: uuid}, Datastore: s.DS.Reference(),
		Metadata: []types.KeyValue{{Key: "cns.tag", Value: "pvc-7"}, {Key: "app", Value: "db"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := object.NewTask(c.Client, task.Returnval).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	md, err := p.Metadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Config struct {
			Id   types.ID `json:"id"`
			Name string   `json:"name"`
		} `json:"config"`
		KeyValueMetadata []types.KeyValue `json:"keyValueMetadata"`
	}
	if err := json.NewDecoder(md).Decode(&meta); err != nil {
		t.Fatal(err)
	}
	md.Close()
	if meta.Config.Id.Id != uuid || meta.Config.Name != "disk1" || len(meta.KeyValueMetadata) != 2 || meta.KeyValueMetadata[0] != (types.KeyValue{Key: "cns.tag", Value: "pvc-7"}) {
		t.Errorf("metadata %+v", meta)
	}

	// Snapshots: create, list, info, delete (twice: gone is done).
	snap := s.snapshot(p)
	snaps, err := p.ListSnapshots(ctx)
	if err != nil || len(snaps) != 1 || snaps[0] != snap {
		t.Fatalf("snapshots %v %v", snaps, err)
	}
	sp, err := s.tm.Get(ctx, snap)
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
	if err := s.tm.mustClient(t).SessionManager.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.tm.List(ctx); err != nil || len(ids) != 1 {
		t.Errorf("list after the session was lost: %v %v", ids, err)
	}
}

// TestSnapshotData reads a snapshot after the live disk changed under it:
// the snapshot keeps the old bytes, the live disk (now a delta on top of
// it) shows the new ones.
func TestSnapshotData(t *testing.T) {
	requireTool(t, "qemu-io", "qemu-utils")
	s := startSim(t)
	ctx := context.Background()
	raw := randomDisk(32<<20, 4<<20, 6<<20)
	uuid := s.createFCD("db", raw, "streamOptimized")
	id, _ := pe.NewID(Type, uuid)
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	snap := s.snapshot(p)
	// Write into the live disk, which is now the snapshot's delta.
	live, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	backing := s.Local(mustRef(t, live).Path)
	if out, err := exec.Command("qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 5M 2M", backing).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	want := bytes.Clone(raw)
	for i := 5 << 20; i < 7<<20; i++ {
		want[i] = 0x5a
	}

	sp, err := s.tm.Get(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, sp), raw) {
		t.Error("the snapshot's data changed with the live disk")
	}
	if n := dataBytes(t, sp); n != 2<<20 {
		t.Errorf("snapshot: %d allocated bytes, want 2 MiB", n)
	}
	if !bytes.Equal(readAll(t, live), want) {
		t.Error("live data after the write through the delta is wrong")
	}
	// The live disk holds data in [4, 7) MiB: its own delta and its parent.
	if n := dataBytes(t, live); n != 3<<20 {
		t.Errorf("live: %d allocated bytes, want 3 MiB", n)
	}
}

func mustRef(t testing.TB, p pe.ProtectedEntity) vsphere.DiskRef {
	t.Helper()
	ref, err := p.(*entity).diskRef(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// TestRestore copies a snapshot to a new FCD and then updates that FCD
// from another disk, as backups are restored.
func TestRestore(t *testing.T) {
	s := startSim(t)
	ctx := context.Background()
	a := randomDisk(16<<20, 0, 3<<20)
	b := randomDisk(16<<20, 8<<20, 9<<20)
	big := randomDisk(32<<20, 0, 1<<20)
	ida, _ := pe.NewID(Type, s.createFCD("a", a, "monolithicSparse"))
	idb, _ := pe.NewID(Type, s.createFCD("b", b, "monolithicFlat"))
	idBig, _ := pe.NewID(Type, s.createFCD("big", big, "monolithicSparse"))
	pa, _ := s.tm.Get(ctx, ida)
	snap := s.snapshot(pa)
	src, _ := s.tm.Get(ctx, snap)

	var prog progressCount
	got, err := s.tm.Copy(ctx, src, pe.CopyOptions{Mode: pe.CreateNew, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID().Name() == ida.Name() || got.ID().HasSnapshot() {
		t.Fatalf("create_new gave %s", got.ID())
	}
	fresh, err := s.tm.Get(ctx, got.ID())
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := fresh.Info(ctx); info.Name != "a" || info.Size != 16<<20 {
		t.Errorf("restored FCD info %+v", info)
	}
	if !bytes.Equal(readAll(t, fresh), a) {
		t.Error("restored FCD's data differs from the snapshot's")
	}
	if prog.total != 16<<20 || prog.done != 16<<20 {
		t.Errorf("progress %+v", prog)
	}

	// update: b's bytes into the restored FCD, then a source that is
	// too large is refused and leaves the FCD as it was.
	pb, _ := s.tm.Get(ctx, idb)
	if _, err := s.tm.Copy(ctx, pb, pe.CopyOptions{Mode: pe.Update, Name: got.ID().Name()}); err != nil {
		t.Fatal(err)
	}
	fresh, _ = s.tm.Get(ctx, got.ID())
	if !bytes.Equal(readAll(t, fresh), b) {
		t.Error("updated FCD's data differs from the source's")
	}
	pbig, _ := s.tm.Get(ctx, idBig)
	if _, err := s.tm.Copy(ctx, pbig, pe.CopyOptions{Mode: pe.Update, Name: got.ID().Name()}); err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Errorf("update from a larger disk: %v", err)
	}
	if !bytes.Equal(readAll(t, fresh), b) {
		t.Error("a refused update changed the FCD")
	}
	// create cannot choose the uuid; update of a missing FCD is NotFound.
	if _, err := s.tm.Copy(ctx, pb, pe.CopyOptions{Mode: pe.Create}); !errors.Is(err, pe.ErrNotSupported) {
		t.Errorf("create: %v", err)
	}
	if _, err := s.tm.Copy(ctx, pb, pe.CopyOptions{Mode: pe.Update, Name: "00000000-0000-0000-0000-000000000000"}); !errors.Is(err, pe.ErrNotFound) {
		t.Errorf("update of a missing FCD: %v", err)
	}
	// The live disk of a (now delta-backed) snapshotted FCD cannot be
	// written without VDDK, and says so.
	if _, err := s.tm.Copy(ctx, pb, pe.CopyOptions{Mode: pe.Update, Name: ida.Name()}); !errors.Is(err, pe.ErrNotSupported) {
		t.Errorf("update of a delta-backed FCD: %v", err)
	}
	if !bytes.Equal(readAll(t, pa), a) {
		t.Error("a refused update changed the FCD")
	}
}

type progressCount struct{ total, done int64 }

func (p *progressCount) Start(total int64) { p.total = total }
func (p *progressCount) Add(n int64)       { p.done += n }

// TestRetries injects faults with the simulator: the transient ones are
// retried until the operation goes through, the others fail at once.
func TestRetries(t *testing.T) {
	s := startSim(t)
	ctx := context.Background()
	id, _ := pe.NewID(Type, s.createFCD("busy", randomDisk(8<<20, 0, 1<<20), "monolithicSparse"))
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	s.Model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "VStorageObjectCreateSnapshot_Task", ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeInvalidState, MaxCount: 2, Enabled: true,
	})
	snap, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatalf("snapshot with two InvalidState faults first: %v", err)
	}
	if st := s.Model.Service.GetFaultStats(); st["rule_0_count"] != int64(2) {
		t.Errorf("fault stats %v, want the fault given twice", st)
	}
	if snaps, _ := p.ListSnapshots(ctx); len(snaps) != 1 || snaps[0] != snap {
		t.Errorf("snapshots %v after retries, want just %s", snaps, snap)
	}

	// More busy faults than attempts: it gives up, saying so.
	s.Model.Service.ClearFaultRules()
	s.Model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "DeleteSnapshot_Task", ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeResourceInUse, Enabled: true,
	})
	s.Model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "VStorageObjectCreateSnapshot_Task", ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeInvalidState, Enabled: true,
	})
	if _, err := p.Snapshot(ctx, nil); err == nil || !strings.Contains(err.Error(), "gave up after 5 attempts") {
		t.Errorf("snapshot that stays busy: %v", err)
	}
	// A fault that is not transient is not retried.
	if err := p.DeleteSnapshot(ctx, snap.Snapshot()); err == nil {
		t.Error("delete with ResourceInUse succeeded")
	}
	if st := s.Model.Service.GetFaultStats(); st["rule_0_count"] != int64(1) || st["rule_1_count"] != int64(5) {
		t.Errorf("fault stats %v: want delete tried once, snapshot 5 times", st)
	}
}

// TestRestoreOnSameVCenter restores an FCD snapshot of the same vCenter
// with CreateDiskFromSnapshot: no bytes through the appliance.
func TestRestoreOnSameVCenter(t *testing.T) {
	requireTool(t, "qemu-io", "qemu-utils")
	s := startSim(t)
	s.Answer("CreateDiskFromSnapshot_Task", s.createDiskFromSnapshot)
	ctx := context.Background()
	raw := randomDisk(16<<20, 1<<20, 2<<20)
	id, _ := pe.NewID(Type, s.createFCD("web", raw, "monolithicSparse"))
	p, err := s.tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	kv := []types.KeyValue{{Key: "tier", Value: "gold"}}
	if err := p.(*entity).setKeyValues(ctx, kv); err != nil {
		t.Fatal(err)
	}
	snap := s.snapshot(p)
	live, _ := s.tm.Get(ctx, id)
	if out, err := exec.Command("qemu-io", "-f", "vmdk", "-c", "write -P 0x11 1M 1M", s.Local(mustRef(t, live).Path)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	sp, err := s.tm.Get(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	var prog progressCount
	restored, err := s.tm.Copy(ctx, sp, pe.CopyOptions{Mode: pe.CreateNew, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	if s.fromSnapshot != 1 {
		t.Errorf("CreateDiskFromSnapshot called %d times, want once", s.fromSnapshot)
	}
	if restored.ID() == id || prog.done != 16<<20 {
		t.Errorf("restored %s, progress %+v", restored.ID(), prog)
	}
	fresh, err := s.tm.Get(ctx, restored.ID())
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := fresh.Info(ctx); info.Name != "web" {
		t.Errorf("restored info %+v", info)
	}
	if !bytes.Equal(readAll(t, fresh), raw) {
		t.Error("the disk created from the snapshot differs from it")
	}
	if got, err := fresh.(*entity).keyValues(ctx); err != nil || len(got) != 1 || got[0] != kv[0] {
		t.Errorf("key/value metadata %v %v, want %v", got, err, kv)
	}
}
