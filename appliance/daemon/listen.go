package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
)

// listeners are the daemon's sockets; a nil one is a service turned off.
type listeners struct {
	api, s3, nbd, nfs net.Listener
}

// listen opens the listeners of the addresses opts gives.
func listen(opts Options) (*listeners, error) {
	ls := &listeners{}
	for _, l := range []struct {
		name, addr string
		to         *net.Listener
	}{{"S3", opts.S3Addr, &ls.s3}, {"API", opts.APIAddr, &ls.api}, {"NBD", opts.NBDAddr, &ls.nbd}, {"NFS", opts.NFSAddr, &ls.nfs}} {
		if l.addr == "" {
			continue
		}
		var err error
		if *l.to, err = net.Listen("tcp", l.addr); err != nil {
			ls.close()
			return nil, fmt.Errorf("%s listener: %w", l.name, err)
		}
	}
	return ls, nil
}

func (ls *listeners) all() []net.Listener {
	var out []net.Listener
	for _, l := range []net.Listener{ls.s3, ls.api, ls.nbd, ls.nfs} {
		if l != nil {
			out = append(out, l)
		}
	}
	return out
}

func (ls *listeners) close() {
	for _, l := range ls.all() {
		l.Close()
	}
}

// certs are the appliance's TLS certificate files, and the TLS
// configuration of its HTTP listeners (nil: plain HTTP).
type certs struct {
	certFile, keyFile string
	http              *tls.Config
}

// certificate makes sure of one certificate for every listener, naming
// all their addresses: NBD always offers TLS, HTTP unless --insecure-http.
func (ls *listeners) certificate(opts Options, ep *Endpoints) (certs, error) {
	var c certs
	var addrs []net.Addr
	for _, l := range ls.all() {
		addrs = append(addrs, l.Addr())
	}
	if len(addrs) == 0 {
		return c, nil
	}
	var err error
	if c.certFile, c.keyFile, err = ensureCert(opts.Logger, filepath.Join(opts.ConfigDir, tlsDir), addrs...); err != nil {
		return c, err
	}
	if opts.InsecureHTTP || (ls.s3 == nil && ls.api == nil) {
		return c, nil
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return c, fmt.Errorf("TLS certificate: %w", err)
	}
	c.http, ep.CertFile = tlsConfig(pair), c.certFile
	return c, nil
}

// servers are the servers Run started: their goroutines, the errors they
// ended with, and the HTTP ones to shut down. The first to fail stops
// the daemon.
type servers struct {
	stop context.CancelFunc
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
	http []*http.Server
}

func (s *servers) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// serve runs fn in a goroutine; its error stops the daemon.
func (s *servers) serve(fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil {
			s.fail(err)
			s.stop()
		}
	}()
}

// serveHTTP serves handler on l, with TLS unless tlsCfg is nil, and
// returns the listener's URL.
func (s *servers) serveHTTP(name string, l net.Listener, handler http.Handler, tlsCfg *tls.Config, limits HTTPLimits, log *slog.Logger) string {
	srv, l := newHTTPServer(l, handler, tlsCfg, limits, log)
	s.mu.Lock()
	s.http = append(s.http, srv)
	s.mu.Unlock()
	s.serve(func() error {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s server: %w", name, err)
		}
		return nil
	})
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	return scheme + "://" + advertised(l.Addr())
}

// wait stops the daemon's context and waits for every server.
func (s *servers) wait() {
	s.stop()
	s.wg.Wait()
}

// shutdown stops the HTTP servers, waits for every server and returns
// the errors met.
func (s *servers) shutdown(ctx context.Context) error {
	for _, srv := range s.http {
		if err := srv.Shutdown(ctx); err != nil {
			s.fail(fmt.Errorf("API shutdown: %w", err))
		}
	}
	s.wg.Wait()
	return errors.Join(s.errs...)
}
