package ivd

import (
	// The vslm endpoint, for FCD key/value metadata.
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	_ "github.com/vmware/govmomi/vslm/simulator"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
)

var (
	requireTool = vcsimtest.RequireTool
	randomDisk  = vcsimtest.RandomDisk
	readAll     = vcsimtest.ReadAll
)

// sim is an in-process vcsim with the ivd type manager connected to it.
type sim struct {
	*vcsimtest.Sim
	tm *TypeManager

	mu           sync.Mutex
	details      map[string]string // snapshot id → datastore path of its backing
	fromSnapshot int               // CreateDiskFromSnapshot calls answered
}

func startSim(t testing.TB) *sim {
	t.Helper()
	vs := vcsimtest.Start(t)
	tm, err := NewTypeManager(vs.Config, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	tm.s.RetryDelay = 10 * time.Millisecond
	s := &sim{Sim: vs, tm: tm, details: map[string]string{}}
	vs.Answer("RetrieveSnapshotDetails", s.retrieveSnapshotDetails)
	return s
}

// createFCD makes an FCD and writes raw into its backing as a VMDK of the
// given qemu-img subformat; it returns the FCD's uuid.
func (s *sim) createFCD(name string, raw []byte, subformat string) string {
	s.T.Helper()
	ctx := context.Background()
	m := vslm.NewObjectManager(s.Client.Client)
	task, err := m.CreateDisk(ctx, types.VslmCreateSpec{
		Name: name, CapacityInMB: int64(len(raw) >> 20),
		BackingSpec: &types.VslmCreateSpecDiskFileBackingSpec{
			VslmCreateSpecBackingSpec: types.VslmCreateSpecBackingSpec{Datastore: s.DS.Reference()},
		},
	})
	if err != nil {
		s.T.Fatal(err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		s.T.Fatal(err)
	}
	obj := res.Result.(types.VStorageObject)
	s.WriteVMDK(obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo).FilePath, raw, subformat)
	return obj.Config.Id.Id
}

// snapshot takes a snapshot of an FCD through the PE, then does on the
// datastore what vSphere does and vcsim (govmomi v0.56) does not: the
// current backing file is frozen as the snapshot's and the FCD gets a new
// delta disk on top of it (made with qemu-img, so the chain is a real VMDK
// one). RetrieveSnapshotDetails, which vcsim lacks, is answered from what
// this records.
func (s *sim) snapshot(p pe.ProtectedEntity) pe.ID {
	s.T.Helper()
	id, err := p.Snapshot(context.Background(), nil)
	if err != nil {
		s.T.Fatal(err)
	}
	var obj *simulator.VStorageObject
	for _, objs := range s.Model.Map().VStorageObjectManager().Catalog() {
		if o := objs[types.ID{Id: id.Name()}]; o != nil {
			obj = o
		}
	}
	if obj == nil {
		s.T.Fatalf("%s is not in the simulator's catalog", id)
	}
	b := obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo)
	var path object.DatastorePath
	path.FromString(b.FilePath)
	delta := fmt.Sprintf("%s/%s-%06d.vmdk", filepath.Dir(path.Path), id.Name(), len(obj.Snapshots))
	if err := vcsimtest.MakeDelta(filepath.Join(s.Dir, filepath.Dir(path.Path)), filepath.Base(path.Path), filepath.Base(delta)); err != nil {
		s.T.Fatal(err)
	}
	s.mu.Lock()
	s.details[id.Snapshot()] = b.FilePath
	s.mu.Unlock()
	b.FilePath = (&object.DatastorePath{Datastore: path.Datastore, Path: delta}).String()
	return id
}

func (s *sim) retrieveSnapshotDetails(req any) (any, types.BaseMethodFault) {
	r := req.(*types.RetrieveSnapshotDetails)
	s.mu.Lock()
	p, ok := s.details[r.SnapshotId.Id]
	s.mu.Unlock()
	if !ok {
		return nil, &types.NotFound{}
	}
	return types.VStorageObjectSnapshotDetails{Path: p}, nil
}

func (tm *TypeManager) mustClient(t testing.TB) *govmomi.Client {
	t.Helper()
	c, err := tm.s.Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// createDiskFromSnapshot answers CreateDiskFromSnapshot_Task, which vcsim
// lacks, as vSphere does: a new FCD on the snapshot's datastore holding the
// snapshot's bytes. It makes the FCD through the simulator itself, fills
// its backing with qemu-img, and returns the simulator's (finished) task.
func (s *sim) createDiskFromSnapshot(req any) (any, types.BaseMethodFault) {
	r := req.(*types.CreateDiskFromSnapshot_Task)
	s.mu.Lock()
	p, ok := s.details[r.SnapshotId.Id]
	s.fromSnapshot++
	s.mu.Unlock()
	var capMB int64
	for _, objs := range s.Model.Map().VStorageObjectManager().Catalog() {
		if o := objs[r.Id]; o != nil {
			capMB = o.Config.CapacityInMB
		}
	}
	if !ok || capMB == 0 {
		return nil, &types.NotFound{}
	}
	ctx := context.Background()
	task, err := vslm.NewObjectManager(s.Client.Client).CreateDisk(ctx, types.VslmCreateSpec{
		Name: r.Name, CapacityInMB: capMB,
		BackingSpec: &types.VslmCreateSpecDiskFileBackingSpec{
			VslmCreateSpecBackingSpec: types.VslmCreateSpecBackingSpec{Datastore: r.Datastore},
		},
	})
	if err != nil {
		return nil, &types.FileFault{File: err.Error()}
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return nil, &types.FileFault{File: err.Error()}
	}
	backing := res.Result.(types.VStorageObject).Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo).FilePath
	out, err := exec.Command("qemu-img", "convert", "-f", "vmdk", "-O", "vmdk", "-o", "subformat=monolithicFlat", s.Local(p), s.Local(backing)).CombinedOutput()
	if err != nil {
		return nil, &types.FileFault{File: fmt.Sprintf("qemu-img: %v %s", err, out)}
	}
	return task.Reference(), nil
}
