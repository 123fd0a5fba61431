// Package pg makes PostgreSQL clusters PEs of type "pg".
//
// The clusters listed in pes/pg.pe.json are the PEs pg:<name>. A snapshot
// is a physical base backup taken over the replication protocol (with
// the WAL that makes it consistent, so it restores on its own), kept as
// a tar archive with its table of contents under
// root/.snapshots/<name>/<snapshot>/; its metadata is JSON (Metadata).
//
// A copy to pg (TypeManager.Copy) restores a base backup as a new cluster
// under root/clusters/<name>/ (root's; data/, the socket directory and
// the server's log owned by the restore account), started with pg_ctl on a free port of the
// configured range; restored clusters are PEs too. With a recovery target
// (Params["pg"]["toTime"] or ["toLSN"]) it replays archived WAL from a
// WALSource up to the target and promotes.
package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// Type is the PE type name.
const Type = "pg"

// infoTimeout bounds how long Info waits for a configured cluster.
const infoTimeout = 5 * time.Second

// clustersDir, in the root, holds the restored clusters.
const clustersDir = "clusters"

// TypeManager knows the configured and the restored clusters.
type TypeManager struct {
	cfg   Config
	root  string
	snaps snapdir.Store
	wal   WALSource
	// mu serialises the choice of restored servers' ports: a port is
	// recorded in its cluster's record before mu is released.
	mu sync.Mutex
	// onBackupData, if set, is called with each piece of a base backup
	// as it arrives (tests interrupt backups with it).
	onBackupData func(n int)
}

var _ pe.TypeManager = (*TypeManager)(nil)

// NewTypeManager returns the manager of cfg's clusters. wal gives point-
// in-time restores their WAL (the appliance's repository archive), but for
// the clusters with a walArchiveDir, which read theirs from there
// (DirWAL); with wal nil a cluster without one has no archived WAL.
func NewTypeManager(cfg Config, wal WALSource) (*TypeManager, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, clustersDir), 0o711); err != nil {
		return nil, fmt.Errorf("pg root: %w", err)
	}
	dirs := map[string]string{}
	for _, cl := range cfg.Clusters {
		if cl.WALArchiveDir != "" {
			dirs[cl.Name] = cl.WALArchiveDir
		}
	}
	switch {
	case wal == nil:
		wal = DirWAL{Dirs: dirs}
	case len(dirs) > 0:
		wal = clusterWAL{dirs: DirWAL{Dirs: dirs}, other: wal}
	}
	return &TypeManager{cfg: cfg, root: root, snaps: snapdir.New(root), wal: wal}, nil
}

// Type implements pe.TypeManager.
func (m *TypeManager) Type() string { return Type }

// Root is the directory of snapshots and restored clusters.
func (m *TypeManager) Root() string { return m.root }

func (m *TypeManager) cluster(name string) (Cluster, bool) {
	for _, cl := range m.cfg.Clusters {
		if cl.Name == name {
			return cl, true
		}
	}
	return Cluster{}, false
}

// List implements pe.TypeManager: the configured clusters, then the
// restored ones, by name.
func (m *TypeManager) List(ctx context.Context) ([]pe.ID, error) {
	var names []string
	for _, cl := range m.cfg.Clusters {
		names = append(names, cl.Name)
	}
	entries, err := os.ReadDir(filepath.Join(m.root, clustersDir))
	if err != nil {
		return nil, fmt.Errorf("list pg PEs: %w", err)
	}
	for _, e := range entries {
		if _, err := m.readRestored(e.Name()); err == nil && !slices.Contains(names, e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	ids := make([]pe.ID, 0, len(names))
	for _, n := range names {
		id, err := pe.NewID(Type, n)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Get implements pe.TypeManager. A snapshot must exist; its cluster need
// not any more.
func (m *TypeManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.Type() != Type || !pe.IsLocalName(id.Name()) {
		return nil, fmt.Errorf("get %s: %w", id, pe.ErrNotFound)
	}
	if id.HasSnapshot() {
		if _, err := m.readSnapshotInfo(id.Name(), id.Snapshot()); err != nil {
			return nil, fmt.Errorf("get %s: %w", id, err)
		}
		return &entity{m: m, id: id}, nil
	}
	if _, ok := m.cluster(id.Name()); ok {
		return &entity{m: m, id: id}, nil
	}
	if _, err := m.readRestored(id.Name()); err != nil {
		return nil, fmt.Errorf("get %s: %w", id, err)
	}
	return &entity{m: m, id: id}, nil
}

// entity is a cluster, configured or restored, or one of its snapshots.
type entity struct {
	m  *TypeManager
	id pe.ID
}

var (
	_ pe.ProtectedEntity = (*entity)(nil)
	_ pe.Remover         = (*entity)(nil)
)

func (e *entity) ID() pe.ID { return e.id }

// Info implements pe.ProtectedEntity. Details tell a cluster's databases
// and where it listens; a restored one's data directory too.
func (e *entity) Info(ctx context.Context) (pe.Info, error) {
	if e.id.HasSnapshot() {
		return e.SnapshotInfo(ctx, e.id.Snapshot())
	}
	info := pe.Info{ID: e.id, Name: e.id.Name(), Size: pe.SizeUnknown}
	if cl, ok := e.m.cluster(e.id.Name()); ok {
		info.Details = map[string]any{"host": cl.Host, "port": cl.Port}
		// The cluster may be down or unreachable: its info says so
		// rather than fail, and soon.
		dctx, cancel := context.WithTimeout(ctx, infoTimeout)
		defer cancel()
		if md, err := describe(dctx, cl); err != nil {
			info.Details["error"] = err.Error()
		} else {
			info.Details["databases"] = md.Databases
		}
		return info, nil
	}
	rc, err := e.m.readRestored(e.id.Name())
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", e.id, err)
	}
	info.Details = rc.details(e.m.clusterDir(e.id.Name()))
	srv, err := e.m.server(e.id.Name())
	if err == nil {
		info.Details["running"], err = srv.running(ctx)
	}
	if err != nil {
		info.Details["error"] = err.Error()
	}
	return info, nil
}

// Connection tells how to reach a restored cluster's server: host, port,
// data directory (the REST API puts it in a copy task's result).
func (e *entity) Connection(ctx context.Context) (map[string]string, error) {
	rc, err := e.m.readRestored(e.id.Name())
	if err != nil {
		return nil, err
	}
	return map[string]string{"host": rc.Host, "port": strconv.Itoa(rc.Port), "dataDir": filepath.Join(e.m.clusterDir(e.id.Name()), dataDir)}, nil
}

// Snapshot implements pe.ProtectedEntity: a base backup of a configured
// cluster.
func (e *entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if e.id.HasSnapshot() {
		return pe.ID{}, fmt.Errorf("snapshot %s: is a snapshot itself: %w", e.id, pe.ErrNotSupported)
	}
	cl, err := e.m.connection(e.id.Name())
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	snap, err := e.m.takeSnapshot(ctx, e.id.Name(), cl)
	if err != nil {
		return pe.ID{}, fmt.Errorf("snapshot %s: %w", e.id, err)
	}
	return e.id.WithSnapshot(snap), nil
}

// connection is how to reach the cluster name for a base backup. A
// restored cluster has none: the only credentials astrolabe knows for it
// are its origin's, and the superusers of the clone (who can make its
// pg_hba.conf ask for a clear-text password) must not get them.
func (m *TypeManager) connection(name string) (Cluster, error) {
	if cl, ok := m.cluster(name); ok {
		return cl, nil
	}
	rc, err := m.readRestored(name)
	if err != nil {
		return Cluster{}, err
	}
	return Cluster{}, fmt.Errorf("a cluster restored from %s: backing it up would send the credentials of cluster %q to a server whose superusers could capture them; snapshot %q instead: %w", rc.From, rc.Cluster, rc.Cluster, pe.ErrNotSupported)
}

func (e *entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return e.m.snaps.IDs(e.id)
}

func (e *entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	if err := e.m.snaps.Delete(e.id.Name(), snapshot); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", e.id.WithSnapshot(snapshot), err)
	}
	return nil
}

func (e *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	id := e.id.WithSnapshot(snapshot)
	si, err := e.m.readSnapshotInfo(e.id.Name(), snapshot)
	if err != nil {
		return pe.Info{}, fmt.Errorf("info %s: %w", id, err)
	}
	created := si.Created
	md := si.Metadata
	return pe.Info{ID: id, Name: e.id.Name(), Size: si.Size, Created: &created, Details: map[string]any{
		"databases": md.Databases, "serverVersion": md.ServerVersion, "systemIdentifier": md.SystemID,
		"timeline": md.Timeline, "startLSN": md.StartLSN, "stopLSN": md.StopLSN, "backupEnd": md.BackupEnd,
	}}, nil
}

func (e *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }

// Data implements pe.ProtectedEntity: a snapshot's base backup. A live
// cluster's data is read by taking a snapshot.
func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	if !e.id.HasSnapshot() {
		return nil, fmt.Errorf("data of %s: a live cluster is read through a snapshot (a base backup): %w", e.id, pe.ErrNotSupported)
	}
	img, err := openImage(e.m.snaps.Path(e.id.Name(), e.id.Snapshot()))
	if err != nil {
		return nil, fmt.Errorf("data of %s: %w", e.id, err)
	}
	return img, nil
}

// Metadata implements pe.ProtectedEntity: a snapshot's Metadata as JSON.
func (e *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	if !e.id.HasSnapshot() {
		return nil, fmt.Errorf("metadata of %s: %w", e.id, pe.ErrNoMetadata)
	}
	si, err := e.m.readSnapshotInfo(e.id.Name(), e.id.Snapshot())
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", e.id, err)
	}
	return metadataReader(si.Metadata)
}

// Overwrite implements pe.ProtectedEntity as Copy with pe.Update.
func (e *entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("overwrite %s: snapshots are read-only: %w", e.id, pe.ErrNotSupported)
	}
	_, err := e.m.Copy(ctx, src, pe.CopyOptions{Mode: pe.Update, Name: e.id.Name()})
	return err
}

// Remove implements pe.Remover for restored clusters: their server is
// stopped and their directory removed.
func (e *entity) Remove(ctx context.Context) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("remove %s: a snapshot: %w", e.id, pe.ErrNotSupported)
	}
	if _, ok := e.m.cluster(e.id.Name()); ok {
		return fmt.Errorf("remove %s: a configured cluster, not one astrolabe restored: %w", e.id, pe.ErrNotSupported)
	}
	if snaps, err := e.m.snaps.List(e.id.Name()); err != nil || len(snaps) > 0 {
		return errors.Join(err, fmt.Errorf("remove %s: it has %d snapshots: %w", e.id, len(snaps), pe.ErrExists))
	}
	return e.m.removeRestored(ctx, e.id.Name())
}
