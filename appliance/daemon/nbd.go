package daemon

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// nbdServerOptions are the NBD server's options and the client CA file.
type nbdServerOptions struct {
	nbd.Options
	clientCA string
}

// nbdService is the NBD server of a new export source, not serving yet.
type nbdService struct {
	src *nbdexport.Source
	// uri tells where clients reach an export of a name.
	uri func(name string, writable bool) string
	// serve starts answering clients.
	serve func()
}

// newNBD makes the NBD server of a new source for l, if there is an NBD
// listener. It serves only once serve is called: after the exports of
// the last run are resumed, so that a client reconnecting after a restart
// waits in the listen backlog instead of finding its export unknown.
func newNBD(ctx context.Context, opts Options, m pe.Manager, l net.Listener, c certs, ep *Endpoints, run *servers) (nbdService, error) {
	if l == nil {
		return nbdService{serve: func() {}}, nil
	}
	nopts, err := nbdOptions(opts, l.Addr(), c.certFile, c.keyFile, opts.Logger)
	if err != nil {
		return nbdService{}, err
	}
	hostPort := advertised(l.Addr())
	ep.NBD, ep.NBDClientCA = "nbd://"+hostPort, nopts.clientCA
	if nopts.TLSRequired {
		ep.NBD = "nbds://" + hostPort
	}
	if opts.Repository != nil {
		// Snapshots in the repository are exported as the local ones.
		m = pe.WithSnapshots(m, opts.Repository.Manager())
	}
	src := nbdexport.NewSource(m, overlayDir(opts))
	srv := nbd.NewServer(src, nopts.Options)
	serve := func() { run.serve(func() error { return srv.Serve(ctx, l) }) }
	// Clients must use TLS off loopback, and to a writable export.
	uri := func(name string, writable bool) string {
		scheme := "nbd"
		if nopts.TLSRequired || writable {
			scheme = "nbds"
		}
		return scheme + "://" + hostPort + "/" + name
	}
	return nbdService{src: src, uri: uri, serve: serve}, nil
}

// nbdOptions configures the NBD server listening on addr: TLS with the
// appliance's certificate always; off loopback TLS and a client
// certificate for everything; on loopback, without a certificate, reads
// of read-only exports if opts.NBDAnonymousRead.
func nbdOptions(opts Options, addr net.Addr, certFile, keyFile string, log *slog.Logger) (nbdServerOptions, error) {
	dir := filepath.Join(opts.ConfigDir, tlsDir)
	pool, caFile, err := nbdClientCAs(dir, opts.NBDClientCA)
	if err != nil {
		return nbdServerOptions{}, err
	}
	loopback := IsLoopback(addr.String())
	cfg, err := nbdTLSConfig(certFile, keyFile, pool, !loopback)
	if err != nil {
		return nbdServerOptions{}, err
	}
	o := nbd.Options{
		Logger: log, TLSConfig: cfg, TLSRequired: !loopback, Anonymous: nbd.AnonymousNone,
		MemoryBudget: opts.NBDMemory, MaxConns: opts.NBDMaxConns, MaxConnsPerClient: opts.NBDMaxConnsPerClient,
		IdleTimeout: opts.NBDIdleTimeout, WriteStallTimeout: opts.NBDWriteStallTimeout,
	}
	if loopback && opts.NBDAnonymousRead {
		o.Anonymous = nbd.AnonymousReadOnly
	}
	if err := o.Check(); err != nil {
		return nbdServerOptions{}, err
	}
	log.Info("NBD access", "tlsRequired", o.TLSRequired, "clientCA", caFile, "anonymous", o.Anonymous.String())
	return nbdServerOptions{o, caFile}, nil
}
