package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/nfsexport"
	"github.com/astrolabe-appliance/astrolabe/pe/overlay"
)

// nfsService is the NFS server of instant-recovery disks, if the daemon
// has one (srv nil otherwise).
type nfsService struct {
	srv   *nfsexport.Server
	addr  string // host:port clients reach
	serve func()
}

// newNFS makes the NFS server on l; like NBD it serves only once serve is
// called, after the exports of the last run are resumed.
func newNFS(ctx context.Context, opts Options, l net.Listener, ep *Endpoints, run *servers) (nfsService, error) {
	if l == nil {
		return nfsService{serve: func() {}}, nil
	}
	srv, err := nfsexport.New(nfsexport.Options{
		Logger:     opts.Logger,
		ScratchDir: filepath.Join(opts.ConfigDir, config.StateDir, "nfs"),
		Allow:      opts.NFSAllow,
	})
	if err != nil {
		return nfsService{}, err
	}
	addr := advertised(l.Addr())
	ep.NFS = "nfs://" + addr
	return nfsService{srv: srv, addr: addr, serve: func() {
		run.serve(func() error { return srv.Serve(ctx, l) })
	}}, nil
}

// overlayDir keeps the overlays of writable exports.
func overlayDir(opts Options) string {
	return filepath.Join(opts.ConfigDir, config.StateDir, OverlayDir)
}

// sweepOverlays removes the overlays in dir that no recorded export uses
// and no process has open: left by a crash between making an overlay and
// recording its export, or by a client that outlived a stop, or by a CLI
// run killed. Those made in the last minute may be a CLI run's, being
// made.
func sweepOverlays(dir string, d stateData, log *slog.Logger) {
	used := map[string]bool{}
	for _, e := range d.Exports {
		if i := strings.LastIndex(e.Name, "/"); i >= 0 {
			used[e.Name[i+1:]] = true
		}
	}
	for _, e := range d.NFSExports {
		used["nfs-"+e.Name] = true
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("overlays not swept", "dir", dir, "err", err)
		}
		return
	}
	for _, ent := range entries {
		info, err := ent.Info()
		if err != nil || !ent.IsDir() || used[ent.Name()] || time.Since(info.ModTime()) < time.Minute {
			continue
		}
		path := filepath.Join(dir, ent.Name())
		removed, err := overlay.RemoveUnused(path)
		switch {
		case err != nil:
			log.Warn("overlay of no export not removed", "dir", path, "err", err)
		case removed:
			log.Info("overlay of no export removed, with its writes", "dir", path)
		}
	}
}
