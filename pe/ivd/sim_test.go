package ivd

import (
	// The vslm endpoint, for FCD key/value metadata.
	"context"
	"fmt"
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

	mu      sync.Mutex
	details map[string]string // snapshot id → datastore path of its backing
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
