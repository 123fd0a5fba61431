package ivd

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"
)

// sim is an in-process vcsim with the ivd type manager connected to it.
type sim struct {
	t     *testing.T
	model *simulator.Model
	tm    *TypeManager
	c     *govmomi.Client
	ds    *object.Datastore
	dir   string // the datastore's local directory
}

func requireTool(t *testing.T, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s missing: apt-get install -y %s", name, pkg)
	}
}

func startSim(t *testing.T) *sim {
	t.Helper()
	requireTool(t, "qemu-img", "qemu-utils")
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(model.Remove)
	srv := model.Service.NewServer()
	t.Cleanup(srv.Close)
	ctx := context.Background()
	pass, _ := srv.URL.User.Password()
	u := *srv.URL
	u.User = nil
	tm, err := NewTypeManager(Config{VCenter: u.String(), User: srv.URL.User.Username(), Password: pass, Insecure: true},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tm.s.RetryDelay = 10 * time.Millisecond
	c, err := tm.s.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client)
	dc, _ := f.DefaultDatacenter(ctx)
	f.SetDatacenter(dc)
	ds, err := f.DefaultDatastore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mds mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"summary"}, &mds); err != nil {
		t.Fatal(err)
	}
	s := &sim{t: t, model: model, tm: tm, c: c, ds: ds, dir: mds.Summary.Url}
	installSnapshotModel(t, model, s.dir)
	return s
}

// createFCD makes an FCD and writes raw into its backing as a VMDK of the
// given qemu-img subformat; it returns the FCD's uuid.
func (s *sim) createFCD(name string, raw []byte, subformat string) string {
	s.t.Helper()
	ctx := context.Background()
	m := vslm.NewObjectManager(s.c.Client)
	task, err := m.CreateDisk(ctx, types.VslmCreateSpec{
		Name: name, CapacityInMB: int64(len(raw) >> 20),
		BackingSpec: &types.VslmCreateSpecDiskFileBackingSpec{
			VslmCreateSpecBackingSpec: types.VslmCreateSpecBackingSpec{Datastore: s.ds.Reference()},
		},
	})
	if err != nil {
		s.t.Fatal(err)
	}
	res, err := task.WaitForResult(ctx, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	obj := res.Result.(types.VStorageObject)
	rawPath := filepath.Join(s.t.TempDir(), "disk.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		s.t.Fatal(err)
	}
	local := s.local(obj.Config.Backing.(*types.BaseConfigInfoDiskFileBackingInfo).FilePath)
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, rawPath, local).CombinedOutput(); err != nil {
		s.t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	return obj.Config.Id.Id
}

// local maps a datastore path to the simulator's file.
func (s *sim) local(dsPath string) string {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		s.t.Fatalf("datastore path %q", dsPath)
	}
	return filepath.Join(s.dir, p.Path)
}

// randomDisk is size bytes, zero but for random data in [from, to).
func randomDisk(size, from, to int) []byte {
	b := make([]byte, size)
	rand.Read(b[from:to])
	return b
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

func installSnapshotModel(t *testing.T, model *simulator.Model, dir string) {
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
		cmd := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-b", filepath.Base(p.Path), "-F", "vmdk", filepath.Base(delta))
		cmd.Dir = filepath.Join(m.dir, filepath.Dir(p.Path))
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, &types.FileFault{File: fmt.Sprintf("%s: %v %s", delta, err, out)}
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
