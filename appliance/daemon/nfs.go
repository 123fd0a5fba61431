package daemon

import (
	"context"
	"net"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/nfsexport"
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
