// Package usecase is what the appliance does, written once: resolve a PE
// to a point in time (resolve.go), snapshot it (snapshot.go), copy it
// (copy.go), back it up (backup.go), restore it (restore.go), export it
// over NBD (export.go) and mount the PE tree with FUSE (mount.go). The
// CLI's local mode and the REST handlers call it; they only translate
// arguments and answers. A Service works over a pe.Manager and, where it
// has them, a backup repository, an NBD export source and a mount root.
package usecase

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/nfsexport"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Config is what a Service works over; only Manager is required.
type Config struct {
	Manager pe.Manager
	// Repository is the backup repository of Backup, Restore and
	// RepositorySnapshots.
	Repository *repo.Repository
	// Exports is the NBD export source of StartExport and StopExport;
	// ExportURI tells where clients reach an export of a name.
	Exports   *nbdexport.Source
	ExportURI func(name string, writable bool) string
	// NFS is the NFS server of StartNFSExport, reached at NFSAddr
	// (host:port); its exports' overlays are kept in OverlayDir.
	NFS        *nfsexport.Server
	NFSAddr    string
	OverlayDir string
	// MountRoot is the directory Mount's mounts must be under; it is made
	// if missing.
	MountRoot string
	// Journal is told of the exports and mounts started and stopped, so
	// that they can be resumed after a restart.
	Journal Journal
	// StateDir keeps the record of the snapshots backups of live PEs
	// took (BasesFile): the newest of each PE is kept for the next
	// backup's change tracking. Without it each is deleted after its
	// backup, and every backup reads its PE whole.
	StateDir string
	Logger   *slog.Logger
}

// Journal records the exports and mounts a Service started and stopped
// (the daemon's state file). Resumed ones are not recorded again.
type Journal interface {
	ExportStarted(Export) error
	// ExportUpdated replaces the record of the export of e.ID.
	ExportUpdated(e Export) error
	ExportStopped(id pe.ID) error
	MountStarted(Mount) error
	MountStopped(id string) error
	NFSExportStarted(NFSExport) error
	NFSExportStopped(name string) error
	InstantVMStarted(InstantVM) error
	InstantVMStopped(name string) error
}

// Service runs the use cases. Its methods are safe for concurrent use.
type Service struct {
	m         pe.Manager
	repo      *repo.Repository
	exports   *nbdexport.Source
	exportURI func(name string, writable bool) string
	nfs       *nfsexport.Server
	nfsAddr   string
	// overlayDir keeps the overlays of NFS exports.
	overlayDir string
	mountRoot  string
	journal    Journal
	bases      *bases // nil without a state directory
	log        *slog.Logger

	mu       sync.Mutex
	resumed  []*InstantRestore // taken up by ResumeExport, to be filled on
	nfsDisks map[string]*nfsDisk
	instant  map[string]InstantVM // by VM name
	mounts   map[string]*mounted
	mounting map[string]bool // paths being mounted
	closed   bool            // no more mounts
}

// New returns a Service over cfg, making the mount root (0755: users that
// mounts with allowOther serve must reach them) if one is given.
func New(cfg Config) (*Service, error) {
	s := &Service{
		m: cfg.Manager, repo: cfg.Repository, exports: cfg.Exports, exportURI: cfg.ExportURI,
		nfs: cfg.NFS, nfsAddr: cfg.NFSAddr, overlayDir: cfg.OverlayDir, nfsDisks: map[string]*nfsDisk{}, instant: map[string]InstantVM{},
		journal: cfg.Journal, log: cfg.Logger, mounts: map[string]*mounted{}, mounting: map[string]bool{},
	}
	if s.nfs != nil && s.overlayDir == "" {
		return nil, errors.New("usecase: an NFS server needs an overlay directory")
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.exportURI == nil {
		s.exportURI = func(name string, _ bool) string { return name }
	}
	if s.journal == nil {
		s.journal = noJournal{}
	}
	if cfg.StateDir != "" {
		s.bases = &bases{path: filepath.Join(cfg.StateDir, BasesFile)}
	}
	if cfg.MountRoot != "" {
		root, err := filepath.Abs(cfg.MountRoot)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, fmt.Errorf("mount root: %w", err)
		}
		if s.mountRoot, err = filepath.EvalSymlinks(root); err != nil {
			return nil, fmt.Errorf("mount root: %w", err)
		}
	}
	return s, nil
}

// Manager is the PEs the Service works on.
func (s *Service) Manager() pe.Manager { return s.m }

// ErrNotConfigured marks a use case whose part (repository, NBD, FUSE
// mount root) this Service lacks.
var ErrNotConfigured = errors.New("not configured")

// notConfigured is the error of a missing part, named as the API names it.
type notConfigured string

func (e notConfigured) Error() string        { return string(e) + " is not configured on this appliance" }
func (e notConfigured) Is(target error) bool { return target == ErrNotConfigured }

type noJournal struct{}

func (noJournal) ExportStarted(Export) error       { return nil }
func (noJournal) ExportUpdated(Export) error       { return nil }
func (noJournal) ExportStopped(pe.ID) error        { return nil }
func (noJournal) MountStarted(Mount) error         { return nil }
func (noJournal) MountStopped(id string) error     { return nil }
func (noJournal) NFSExportStarted(NFSExport) error { return nil }
func (noJournal) NFSExportStopped(string) error    { return nil }
func (noJournal) InstantVMStarted(InstantVM) error { return nil }
func (noJournal) InstantVMStopped(string) error    { return nil }
