package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// nbdService starts and stops NBD exports for the API and records them.
type nbdService struct {
	m           pe.Manager
	src         *nbdexport.Source
	hostPort    string
	tlsRequired bool
	state       *state
	log         *slog.Logger
}

// nbdServerOptions are the NBD server's options and the client CA file.
type nbdServerOptions struct {
	nbd.Options
	clientCA string
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

var _ rest.Exports = (*nbdService)(nil)

// restore re-adds the exports recorded in the state. One that cannot come
// back (its snapshot was deleted) is logged and dropped, not fatal.
func (s *nbdService) restore(ctx context.Context) error {
	var keep []exportState
	for _, e := range s.state.snapshot().Exports {
		name, err := s.readd(ctx, e)
		if err != nil {
			s.log.Warn("NBD export not restored", "export", e.ID, "err", err)
			continue
		}
		if e.Target != "" {
			e.Name = name
		}
		keep = append(keep, e)
	}
	return s.state.update(func(d *stateData) { d.Exports = keep })
}

// readd adds a recorded export again and returns its name.
func (s *nbdService) readd(ctx context.Context, e exportState) (string, error) {
	id, err := pe.ParseID(e.ID)
	if err != nil {
		return "", err
	}
	if _, err := s.m.Get(ctx, id); err != nil {
		return "", err
	}
	if e.Target == "" {
		return id.String(), s.src.Add(id)
	}
	target, err := pe.ParseID(e.Target)
	if err != nil {
		return "", err
	}
	if e.Name == "" {
		// Recorded before writable exports had secret names: the old
		// name was guessable, so the export gets a new one.
		s.log.Warn("NBD writable export renamed: its name had no token", "export", e.ID)
	}
	x, err := s.src.AddTarget(id, target, e.Name)
	return x.Name, err
}

func (s *nbdService) List() []rest.NBDExport {
	var out []rest.NBDExport
	for _, e := range s.src.Exports() {
		out = append(out, s.describe(e))
	}
	return out
}

func (s *nbdService) describe(e nbdexport.Export) rest.NBDExport {
	return rest.NBDExport{ID: e.ID, URI: s.uri(e.Name, !e.Target.IsZero()), Writable: !e.Target.IsZero(), Target: e.Target}
}

// uri is the URI of an export: nbds:// where clients must use TLS, off
// loopback or to a writable export.
func (s *nbdService) uri(name string, writable bool) string {
	scheme := "nbd"
	if s.tlsRequired || writable {
		scheme = "nbds"
	}
	return scheme + "://" + s.hostPort + "/" + name
}

// Start exports id, snapshotting a live PE first.
func (s *nbdService) Start(ctx context.Context, id pe.ID, writable bool) (rest.NBDExport, error) {
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return rest.NBDExport{}, err
	}
	if !id.HasSnapshot() {
		if id, err = p.Snapshot(ctx, nil); err != nil {
			return rest.NBDExport{}, fmt.Errorf("snapshot %s: %w", p.ID(), err)
		}
	}
	x := nbdexport.Export{ID: id, Name: id.String()}
	if writable {
		x, err = s.src.AddWritable(ctx, id, nil)
	} else {
		err = s.src.Add(id)
	}
	if err != nil {
		return rest.NBDExport{}, err
	}
	rec := exportState{ID: id.String()}
	if !x.Target.IsZero() {
		rec.Target, rec.Name = x.Target.String(), x.Name
	}
	if err := s.state.update(func(d *stateData) { d.Exports = append(d.Exports, rec) }); err != nil {
		s.src.Remove(id)
		if !x.Target.IsZero() {
			err = errors.Join(err, s.src.Discard(ctx, x.Target))
		}
		return rest.NBDExport{}, err
	}
	s.log.Info("NBD export started", "export", id, "target", x.Target)
	return s.describe(x), nil
}

func (s *nbdService) Stop(ctx context.Context, id pe.ID) error {
	if err := s.src.Remove(id); err != nil {
		return err
	}
	s.log.Info("NBD export stopped", "export", id)
	return s.state.update(func(d *stateData) {
		keep := d.Exports[:0]
		for _, e := range d.Exports {
			if e.ID != id.String() {
				keep = append(keep, e)
			}
		}
		d.Exports = keep
	})
}

// transports advertises the NBD URI of a snapshot exported read-only in
// its info; a writable export's name is told only to who started it.
func (s *nbdService) transports(id pe.ID) []pe.Transport {
	for _, e := range s.src.Exports() {
		if e.ID == id && e.Target.IsZero() {
			return []pe.Transport{{Type: "nbd", Params: map[string]string{"url": s.uri(e.Name, false)}}}
		}
	}
	return nil
}
