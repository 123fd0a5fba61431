package ivd

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"

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
}

func startSim(t testing.TB) *sim {
	t.Helper()
	vs := vcsimtest.Start(t)
	tm, err := NewTypeManager(vs.Config, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	tm.s.RetryDelay = 10 * time.Millisecond
	installSnapshotModel(vs.Model, vs.Dir)
	return &sim{Sim: vs, tm: tm}
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

// snapshotModel makes the simulator's FCD snapshots behave as vSphere's
// do on the datastore, which vcsim (govmomi v0.56) does not model: taking
// a snapshot freezes the current backing file and gives the FCD a new
// delta disk on top of it (made with qemu-img, so the delta chain is a
// real VMDK one), and RetrieveSnapshotDetails, which vcsim does not have,
// names the frozen file.
type snapshotModel struct {
	*simulator.VcenterVStorageObjectManager
	dir string

	mu      sync.Mutex
	details map[string]string // snapshot id → datastore path of its backing
}

func installSnapshotModel(model *simulator.Model, dir string) {
	// Registry.VStorageObjectManager asserts the original type, which the
	// simulator does only when attaching FCDs to VMs: not done here.
	reg := model.Map()
	orig := reg.VStorageObjectManager()
	reg.Put(&snapshotModel{VcenterVStorageObjectManager: orig, dir: dir, details: map[string]string{}})
}

func (m *snapshotModel) VStorageObjectCreateSnapshotTask(ctx *simulator.Context, req *types.VStorageObjectCreateSnapshot_Task) soap.HasFault {
	task := simulator.CreateTask(m, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		obj := m.Catalog()[req.Datastore][req.Id]
		if obj == nil {
			return nil, new(types.InvalidArgument)
		}
		b := obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo)
		var p object.DatastorePath
		p.FromString(b.FilePath)
		n := len(obj.Snapshots) + 1
		delta := fmt.Sprintf("%s/%s-%06d.vmdk", filepath.Dir(p.Path), req.Id.Id, n)
		if err := vcsimtest.MakeDelta(filepath.Join(m.dir, filepath.Dir(p.Path)), filepath.Base(p.Path), filepath.Base(delta)); err != nil {
			return nil, &types.FileFault{File: err.Error()}
		}
		sid := types.ID{Id: fmt.Sprintf("snap-%s-%d", req.Id.Id[:8], n)}
		m.mu.Lock()
		m.details[sid.Id] = b.FilePath
		m.mu.Unlock()
		b.FilePath = (&object.DatastorePath{Datastore: p.Datastore, Path: delta}).String()
		obj.Snapshots = append(obj.Snapshots, types.VStorageObjectSnapshotInfoVStorageObjectSnapshot{
			Id: &sid, BackingObjectId: sid.Id, CreateTime: time.Now(), Description: req.Description,
		})
		return sid, nil
	})
	return &methods.VStorageObjectCreateSnapshot_TaskBody{
		Res: &types.VStorageObjectCreateSnapshot_TaskResponse{Returnval: task.Run(ctx)},
	}
}

func (m *snapshotModel) RetrieveSnapshotDetails(ctx *simulator.Context, req *types.RetrieveSnapshotDetails) soap.HasFault {
	body := new(methods.RetrieveSnapshotDetailsBody)
	m.mu.Lock()
	p, ok := m.details[req.SnapshotId.Id]
	m.mu.Unlock()
	if !ok || !strings.Contains(req.SnapshotId.Id, req.Id.Id[:8]) {
		body.Fault_ = simulator.Fault("", &types.NotFound{})
		return body
	}
	body.Res = &types.RetrieveSnapshotDetailsResponse{Returnval: types.VStorageObjectSnapshotDetails{Path: p}}
	return body
}

func (tm *TypeManager) mustClient(t testing.TB) *govmomi.Client {
	t.Helper()
	c, err := tm.s.Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
