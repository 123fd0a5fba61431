// Package daemon is `astrolabe serve`: one process with the REST API, the
// NBD server, the task manager and, where configured, the S3 data path,
// FUSE mounts and the backup repository, all over one config directory.
// Exports and mounts it starts are recorded in the config directory and
// restored when it starts again.
package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Options configure the daemon. Addresses are host:port; an empty one
// turns that service off.
type Options struct {
	ConfigDir string
	APIAddr   string
	S3Addr    string
	NBDAddr   string
	// MountDir, if set, gets a FUSE mount of all PEs at start.
	MountDir string
	// InsecureHTTP serves the API without TLS; only on loopback.
	InsecureHTTP bool
	// Token is the API bearer token; empty means the stored or a new one.
	Token string
	// S3 data-path credentials.
	S3AccessKey, S3SecretKey string
	Version                  string
	Logger                   *slog.Logger
	// Ready, if set, is called once every listener is up.
	Ready func(Endpoints)
	// DrainTimeout bounds how long running tasks may finish at shutdown
	// before they are cancelled (default DefaultDrain).
	DrainTimeout time.Duration
}

// Endpoints are the addresses the daemon listens on, as URLs.
type Endpoints struct {
	API, S3, NBD string
	Token        string
	// TokenGenerated is set when the token was made at this start.
	TokenGenerated bool
	CertFile       string
}

// DefaultDrain is how long running tasks may finish at shutdown.
const DefaultDrain = 30 * time.Second

// Files in the config directory.
const (
	tokenFile = "api-token"
	stateFile = "state.json"
	tlsDir    = "tls"
)

// Run serves until ctx is cancelled, then drains and returns.
func Run(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrain
	}
	log := opts.Logger
	if opts.InsecureHTTP && !isLoopback(opts.APIAddr) {
		return fmt.Errorf("--insecure-http is only allowed on a loopback address, not %q", opts.APIAddr)
	}
	m, err := config.Load(opts.ConfigDir, config.Factories())
	if err != nil {
		return err
	}
	token, generated, err := loadToken(opts.ConfigDir, opts.Token)
	if err != nil {
		return err
	}
	st, err := openState(filepath.Join(opts.ConfigDir, stateFile))
	if err != nil {
		return err
	}

	// Tasks outlive the requests that start them, not the daemon.
	taskCtx, cancelTasks := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelTasks()
	tm := tasks.NewManager(tasks.Options{Logger: log})
	ep := Endpoints{Token: token, TokenGenerated: generated}
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		runErrs []error
	)
	fail := func(err error) {
		errMu.Lock()
		runErrs = append(runErrs, err)
		errMu.Unlock()
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()

	var exports *nbdService
	if opts.NBDAddr != "" {
		l, err := net.Listen("tcp", opts.NBDAddr)
		if err != nil {
			return fmt.Errorf("NBD listener: %w", err)
		}
		src := nbdexport.NewSource(m)
		ep.NBD = "nbd://" + l.Addr().String()
		exports = &nbdService{m: m, src: src, base: ep.NBD, state: st, log: log}
		if err := exports.restore(ctx); err != nil {
			l.Close()
			return err
		}
		srv := nbd.NewServer(src, nbd.Options{Logger: log})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx, l); err != nil {
				fail(err)
				stop()
			}
		}()
	}
	met := newMetrics(tm, exports)

	cfg := rest.Config{
		Manager: m, Tasks: tm, Logger: log, Version: opts.Version, Token: token, Context: taskCtx,
		Transports: func(id pe.ID) (data, md, combined []pe.Transport) {
			if exports != nil {
				data = exports.transports(id)
			}
			return data, nil, nil
		},
	}
	if exports != nil {
		cfg.Exports = exports
	}
	apiHandler := met.instrument(rest.NewHandler(cfg))
	mux := http.NewServeMux()
	mux.Handle("/metrics", requireToken(token, met.handler()))
	mux.Handle("/", apiHandler)

	var servers []*http.Server
	if opts.APIAddr != "" {
		l, err := net.Listen("tcp", opts.APIAddr)
		if err != nil {
			return fmt.Errorf("API listener: %w", err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		scheme := "http"
		if !opts.InsecureHTTP {
			certFile, keyFile, err := ensureCert(filepath.Join(opts.ConfigDir, tlsDir), l.Addr())
			if err != nil {
				l.Close()
				return err
			}
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				l.Close()
				return fmt.Errorf("API certificate: %w", err)
			}
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
			l = tls.NewListener(l, srv.TLSConfig)
			scheme, ep.CertFile = "https", certFile
		}
		ep.API = scheme + "://" + l.Addr().String()
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fail(fmt.Errorf("API server: %w", err))
				stop()
			}
		}()
	}
	if opts.S3Addr != "" {
		// The S3 data path lands with appliance/s3export; until then the
		// address is refused rather than silently ignored.
		log.Warn("the S3 data path is not built yet; --s3 ignored", "addr", opts.S3Addr)
	}
	if opts.MountDir != "" {
		log.Warn("FUSE mounts are not built yet; --mount ignored", "dir", opts.MountDir)
	}
	if opts.Ready != nil {
		opts.Ready(ep)
	}
	log.Info("astrolabe serving", "api", ep.API, "nbd", ep.NBD)

	<-ctx.Done()
	log.Info("shutting down: draining tasks", "timeout", opts.DrainTimeout)
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.DrainTimeout+10*time.Second)
	defer cancel()
	if err := tm.Shutdown(shutCtx, opts.DrainTimeout); err != nil {
		fail(err)
	}
	for _, srv := range servers {
		if err := srv.Shutdown(shutCtx); err != nil {
			fail(fmt.Errorf("API shutdown: %w", err))
		}
	}
	wg.Wait()
	return errors.Join(runErrs...)
}

// requireToken guards handlers outside the generated API (metrics).
func requireToken(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", `Bearer realm="astrolabe"`)
			http.Error(w, `{"code":401,"message":"missing or wrong bearer token"}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// loadToken returns the token to use: the given one, else the stored one,
// else a new one that is stored (0600) and reported as generated.
func loadToken(dir, given string) (token string, generated bool, err error) {
	if given != "" {
		return given, false, nil
	}
	path := filepath.Join(dir, tokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("API token: %w", err)
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", false, err
	}
	token = hex.EncodeToString(raw[:])
	err = atomicfile.Write(path, 0o600, func(w io.Writer) error {
		_, err := io.WriteString(w, token+"\n")
		return err
	})
	if err != nil {
		return "", false, fmt.Errorf("store API token: %w", err)
	}
	return token, true, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
