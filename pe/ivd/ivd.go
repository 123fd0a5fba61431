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
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vslm"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Type is the PE type name.
const Type = "ivd"

// Config is pes/ivd.pe.json.
type Config struct {
	VCenter      string `json:"vcenter"` // https://host:port/sdk
	User         string `json:"user"`
	Password     string `json:"password,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty"`
	Insecure     bool   `json:"insecure,omitempty"`
	Thumbprint   string `json:"thumbprint,omitempty"`
	CAFile       string `json:"caFile,omitempty"`
	Datacenter   string `json:"datacenter,omitempty"`
	Datastore    string `json:"datastore,omitempty"` // for restores
	// VDDK, when set, moves the bytes with VMware's libvixDiskLib (a
	// build with the tag vddk) instead of the datastore's file access.
	VDDK *VDDKConfig `json:"vddk,omitempty"`
}

// VDDKConfig says where libvixDiskLib is and how it reaches disks.
type VDDKConfig struct {
	Library    string   `json:"library"`              // libvixDiskLib.so path, or the directory holding it
	Transports []string `json:"transports,omitempty"` // tried in order; default nbdssl, nbd
}

// TypeManager knows the FCDs of one vCenter datacenter.
type TypeManager struct {
	cfg        Config
	log        *slog.Logger
	access     diskAccess
	retryDelay time.Duration // the first backoff; it doubles per attempt

	mu sync.Mutex
	c  *govmomi.Client
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of the FCDs of cfg's vCenter. It
// connects on first use, so that a vCenter that is down does not keep the
// other PE types from working.
func NewTypeManager(cfg Config, log *slog.Logger) (*TypeManager, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("ivd password file: %w", err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
	}
	if cfg.VCenter == "" || cfg.User == "" {
		return nil, errors.New("ivd: vcenter and user must be set")
	}
	if _, err := soap.ParseURL(cfg.VCenter); err != nil {
		return nil, fmt.Errorf("ivd: vcenter URL: %w", err)
	}
	tm := &TypeManager{cfg: cfg, log: log, access: httpAccess{}, retryDelay: time.Second}
	if cfg.VDDK != nil {
		a, err := newVDDKAccess(cfg, log)
		if err != nil {
			return nil, fmt.Errorf("ivd: %w", err)
		}
		tm.access = a
	}
	return tm, nil
}

// Type implements pe.TypeManager.
func (tm *TypeManager) Type() string { return Type }

// client returns a logged-in client, logging in again when the session
// was lost (expiry, restart of vCenter, a changed password).
func (tm *TypeManager) client(ctx context.Context) (*govmomi.Client, error) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if tm.c != nil {
		if ok, err := tm.c.SessionManager.SessionIsActive(ctx); err == nil && ok {
			return tm.c, nil
		}
		tm.log.Info("vCenter session lost; logging in again", "vcenter", tm.cfg.VCenter)
		tm.c = nil
	}
	u, err := soap.ParseURL(tm.cfg.VCenter)
	if err != nil {
		return nil, fmt.Errorf("vcenter URL: %w", err)
	}
	u.User = url.UserPassword(tm.cfg.User, tm.cfg.Password)
	sc := soap.NewClient(u, tm.cfg.Insecure)
	if tm.cfg.Thumbprint != "" {
		sc.SetThumbprint(u.Host, tm.cfg.Thumbprint)
	}
	if tm.cfg.CAFile != "" {
		if err := sc.SetRootCAs(tm.cfg.CAFile); err != nil {
			return nil, fmt.Errorf("vcenter CA: %w", err)
		}
	}
	c, err := govmomi.NewClient(ctx, u, tm.cfg.Insecure)
	if err != nil {
		return nil, fmt.Errorf("vcenter %s: %w", u.Host, err)
	}
	// Keep the session alive between operations.
	c.Client.RoundTripper = keepalive.NewHandlerSOAP(c.Client.RoundTripper, 5*time.Minute, nil)
	tm.c = c
	return c, nil
}

// datastores lists the datacenter's datastores.
func (tm *TypeManager) datastores(ctx context.Context) (*govmomi.Client, []*object.Datastore, error) {
	c, err := tm.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	f := find.NewFinder(c.Client)
	dc, err := f.DatacenterOrDefault(ctx, tm.cfg.Datacenter)
	if err != nil {
		return nil, nil, err
	}
	f.SetDatacenter(dc)
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
	c, err := e.tm.client(ctx)
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
	err := e.tm.retry(ctx, "snapshot "+e.id.String(), func() error {
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
	err := e.tm.retry(ctx, "delete snapshot "+snapshot, func() error {
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
	if err != nil && !isFault[*types.NotFound](err) && !isFault[*types.InvalidArgument](err) {
		return fmt.Errorf("delete snapshot %s: %w", e.id.WithSnapshot(snapshot), err)
	}
	return nil
}

func (e *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	return (&entity{tm: e.tm, id: e.id.WithSnapshot(snapshot), ds: e.ds, obj: e.obj}).Info(ctx)
}

func (e *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }

// Metadata is the FCD's VStorageObject as JSON.
func (e *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	b, err := json.MarshalIndent(e.obj, "", "  ")
	if err != nil {
		return nil, err
	}
	return io.NopCloser(strings.NewReader(string(b))), nil
}

// retryAttempts bounds retry: with a 1 s first delay the last attempt
// starts 15 s after the first.
const retryAttempts = 5

// retry runs op until it succeeds, fails with a fault that does not pass,
// or attempts run out, with doubling backoff.
func (tm *TypeManager) retry(ctx context.Context, what string, op func() error) error {
	delay := tm.retryDelay
	var err error
	for attempt := 1; attempt <= retryAttempts; attempt++ {
		if err = op(); err == nil || !transient(err) {
			return err
		}
		if attempt == retryAttempts {
			break
		}
		tm.log.Warn("vCenter: retrying", "op", what, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
	return fmt.Errorf("gave up after %d attempts: %w", retryAttempts, err)
}

// transient tells the faults that pass: the disk is busy or the
// connection dropped.
func transient(err error) bool {
	return isFault[*types.InvalidState](err) || isFault[*types.TaskInProgress](err) ||
		isFault[*types.FileLocked](err) || strings.Contains(err.Error(), "connection reset")
}

// isFault reports whether err is a vSphere fault of type T.
func isFault[T types.BaseMethodFault](err error) bool {
	if err == nil {
		return false
	}
	if soap.IsSoapFault(err) {
		if _, ok := soap.ToSoapFault(err).VimFault().(T); ok {
			return true
		}
	}
	if soap.IsVimFault(err) {
		if _, ok := soap.ToVimFault(err).(T); ok {
			return true
		}
	}
	var te interface{ Fault() types.BaseMethodFault }
	if errors.As(err, &te) {
		_, ok := te.Fault().(T)
		return ok
	}
	return false
}
