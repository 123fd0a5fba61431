// Package ivd makes vSphere First Class Disks (improved virtual disks) PEs
// of type "ivd", named ivd:<FCD uuid>, through govmomi.
//
// It lists FCDs, gives their info, takes, lists and deletes snapshots
// (retrying the transient faults vCenter gives; NotFound on delete is
// done), gives metadata (the VStorageObject as JSON), and the data of the
// live disk and of its snapshots (RetrieveSnapshotDetails names a
// snapshot's backing). Restores make a new FCD (create_new) or overwrite
// one (update). Bytes move through a diskAccess: the datastore's HTTP file
// access and the pure-Go VMDK reader by default, VDDK when configured.
package ivd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"
	vslmmethods "github.com/vmware/govmomi/vslm/methods"
	vslmtypes "github.com/vmware/govmomi/vslm/types"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// Type is the PE type name.
const Type = "ivd"

// Config is pes/ivd.pe.json.
type Config = vsphere.Config

// TypeManager knows the FCDs of one vCenter datacenter.
type TypeManager struct {
	s *vsphere.Session
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the FCDs of cfg's vCenter. It
// connects on first use, so that a vCenter that is down does not keep the
// other PE types from working.
func NewTypeManager(cfg Config, log *slog.Logger) (*TypeManager, error) {
	s, err := vsphere.NewSession(Type, cfg, log)
	if err != nil {
		return nil, err
	}
	return &TypeManager{s: s}, nil
}

// Type implements pe.TypeManager.
func (tm *TypeManager) Type() string { return Type }

// datastores lists the datacenter's datastores.
func (tm *TypeManager) datastores(ctx context.Context) (*govmomi.Client, []*object.Datastore, error) {
	c, _, f, err := tm.s.Finder(ctx)
	if err != nil {
		return nil, nil, err
	}
	dss, err := f.DatastoreList(ctx, "*")
	if err != nil {
		return nil, nil, err
	}
	return c, dss, nil
}

// List implements pe.TypeManager.
func (tm *TypeManager) List(ctx context.Context) ([]pe.ID, error) {
	c, dss, err := tm.datastores(ctx)
	if err != nil {
		return nil, err
	}
	m := vslm.NewObjectManager(c.Client)
	var out []pe.ID
	for _, ds := range dss {
		ids, err := m.List(ctx, ds)
		if err != nil {
			return nil, fmt.Errorf("list FCDs of %s: %w", ds.Name(), err)
		}
		for _, id := range ids {
			pid, err := pe.NewID(Type, id.Id)
			if err != nil {
				return nil, err
			}
			out = append(out, pid)
		}
	}
	return out, nil
}

// Get implements pe.TypeManager: it finds the datastore holding the FCD.
func (tm *TypeManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	c, dss, err := tm.datastores(ctx)
	if err != nil {
		return nil, err
	}
	m := vslm.NewObjectManager(c.Client)
	for _, ds := range dss {
		obj, err := m.Retrieve(ctx, ds, id.Name())
		if err != nil {
			continue // not on this datastore
		}
		e := &entity{tm: tm, id: id, ds: ds, obj: obj}
		if id.HasSnapshot() {
			if _, err := e.snapshot(ctx, id.Snapshot()); err != nil {
				return nil, err
			}
		}
		return e, nil
	}
	return nil, fmt.Errorf("%s: %w", id.Base(), pe.ErrNotFound)
}

// entity is one FCD, or a snapshot of it.
type entity struct {
	tm  *TypeManager
	id  pe.ID
	ds  *object.Datastore
	obj *types.VStorageObject
}

func (e *entity) ID() pe.ID { return e.id }

func (e *entity) Info(ctx context.Context) (pe.Info, error) {
	info := pe.Info{ID: e.id, Name: e.obj.Config.Name, Size: e.obj.Config.CapacityInMB << 20}
	if e.id.HasSnapshot() {
		s, err := e.snapshot(ctx, e.id.Snapshot())
		if err != nil {
			return pe.Info{}, err
		}
		t := s.CreateTime
		info.Created = &t
	}
	return info, nil
}

func (e *entity) manager(ctx context.Context) (*vslm.ObjectManager, error) {
	c, err := e.tm.s.Client(ctx)
	if err != nil {
		return nil, err
	}
	return vslm.NewObjectManager(c.Client), nil
}

// Snapshot creates an FCD snapshot, retrying the faults vCenter gives
// while another operation holds the disk.
func (e *entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if e.id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself: %w", e.id, pe.ErrNotSupported)
	}
	var sid string
	err := e.tm.s.Retry(ctx, "snapshot "+e.id.String(), func() error {
		m, err := e.manager(ctx)
		if err != nil {
			return err
		}
		task, err := m.CreateSnapshot(ctx, e.ds, e.id.Name(), "astrolabe "+time.Now().UTC().Format(time.RFC3339))
		if err != nil {
			return err
		}
		res, err := task.WaitForResult(ctx, nil)
		if err != nil {
			return err
		}
		id, ok := res.Result.(types.ID)
		if !ok {
			return fmt.Errorf("snapshot task returned %T", res.Result)
		}
		sid = id.Id
		return nil
	})
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	return e.id.WithSnapshot(sid), nil
}

func (e *entity) snapshots(ctx context.Context) ([]types.VStorageObjectSnapshotInfoVStorageObjectSnapshot, error) {
	m, err := e.manager(ctx)
	if err != nil {
		return nil, err
	}
	info, err := m.RetrieveSnapshotInfo(ctx, e.ds, e.id.Name())
	if err != nil {
		return nil, fmt.Errorf("snapshots of %s: %w", e.id.Base(), err)
	}
	return info.Snapshots, nil
}

func (e *entity) snapshot(ctx context.Context, sid string) (types.VStorageObjectSnapshotInfoVStorageObjectSnapshot, error) {
	snaps, err := e.snapshots(ctx)
	if err != nil {
		return types.VStorageObjectSnapshotInfoVStorageObjectSnapshot{}, err
	}
	for _, s := range snaps {
		if s.Id != nil && s.Id.Id == sid {
			return s, nil
		}
	}
	return types.VStorageObjectSnapshotInfoVStorageObjectSnapshot{}, fmt.Errorf("%s: %w", e.id.WithSnapshot(sid), pe.ErrNotFound)
}

func (e *entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	snaps, err := e.snapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]pe.ID, 0, len(snaps))
	for _, s := range snaps {
		if s.Id != nil {
			out = append(out, e.id.WithSnapshot(s.Id.Id))
		}
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot; one that is gone already is done.
func (e *entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	err := e.tm.s.Retry(ctx, "delete snapshot "+snapshot, func() error {
		m, err := e.manager(ctx)
		if err != nil {
			return err
		}
		task, err := m.DeleteSnapshot(ctx, e.ds, e.id.Name(), snapshot)
		if err != nil {
			return err
		}
		return task.Wait(ctx)
	})
	if err != nil && !vsphere.IsFault[*types.NotFound](err) && !vsphere.IsFault[*types.InvalidArgument](err) {
		return fmt.Errorf("delete snapshot %s: %w", e.id.WithSnapshot(snapshot), err)
	}
	return nil
}

func (e *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	return (&entity{tm: e.tm, id: e.id.WithSnapshot(snapshot), ds: e.ds, obj: e.obj}).Info(ctx)
}

func (e *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }

// Metadata is the FCD's VStorageObject as JSON, with its key/value
// metadata (of the snapshot, for a snapshot) as "keyValueMetadata".
func (e *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	kv, err := e.keyValues(ctx)
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", e.id, err)
	}
	b, err := json.MarshalIndent(struct {
		*types.VStorageObject
		KeyValueMetadata []types.KeyValue `json:"keyValueMetadata,omitempty"`
	}{e.obj, kv}, "", "  ")
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// keyValues reads the FCD's key/value metadata. vCenter serves it only
// through its storage lifecycle (vslm) endpoint; a server without one has
// none to give.
func (e *entity) keyValues(ctx context.Context) ([]types.KeyValue, error) {
	c, err := e.tm.s.Client(ctx)
	if err != nil {
		return nil, err
	}
	vc, err := vslm.NewClient(ctx, c.Client)
	if err != nil {
		e.tm.s.Log.Warn("no vslm endpoint: FCD key/value metadata left out", "id", e.id, "err", err)
		return nil, nil
	}
	req := vslmtypes.VslmRetrieveVStorageObjectMetadata{This: vc.ServiceContent.VStorageObjectManager, Id: types.ID{Id: e.id.Name()}}
	if e.id.HasSnapshot() {
		req.SnapshotId = &types.ID{Id: e.id.Snapshot()}
	}
	res, err := vslmmethods.VslmRetrieveVStorageObjectMetadata(ctx, vc, &req)
	if err != nil {
		return nil, fmt.Errorf("key/value metadata: %w", err)
	}
	return res.Returnval, nil
}
