// Package daemon is `astrolabe serve`: one process with the REST API, the
// NBD server, the task manager and, where configured, the S3 data path,
// FUSE mounts and the backup repository, all over one config directory.
// Exports and mounts it starts are recorded in the config directory and
// restored when it starts again.
package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/appliance/s3export"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Options configure the daemon. Addresses are host:port; an empty one
// turns that service off.
type Options struct {
	ConfigDir string
	APIAddr   string
	S3Addr    string
	NBDAddr   string
	// NBD offers TLS with the API's certificate, and requires it and a
	// client certificate (see IssueNBDClientCert) off loopback. On
	// loopback NBDAnonymousRead lets clients without a certificate read
	// read-only exports; writable exports always need one.
	NBDAnonymousRead bool
	// NBDClientCA is a PEM file of more CAs whose client certificates
	// authenticate, besides the config directory's own.
	NBDClientCA string
	// NBDMemory bounds the bytes of NBD requests and replies in flight
	// (0: the nbd package's default); NBDMaxConns and
	// NBDMaxConnsPerClient bound connections, NBDIdleTimeout closes idle
	// ones, NBDWriteStallTimeout those whose replies make no progress
	// (0: defaults; negative timeouts: never).
	NBDMemory            int64
	NBDMaxConns          int
	NBDMaxConnsPerClient int
	NBDIdleTimeout       time.Duration
	NBDWriteStallTimeout time.Duration
	// MountDir, if set, gets a FUSE mount of all PEs at start. The
	// operator chose it: it may be anywhere.
	MountDir string
	// MountRoot is the directory API mounts must be under (default
	// <ConfigDir>/mounts, made at start).
	MountRoot string
	// HTTP bounds the API's and the S3 data path's connections.
	HTTP HTTPLimits
	// MaxExpansion bounds what the restore of a zip uploaded over S3
	// writes (pe.CopyOptions.MaxExpansion).
	MaxExpansion int
	// InsecureHTTP serves the API without TLS; only on loopback.
	InsecureHTTP bool
	// Token is the API bearer token; empty means the stored or a new one.
	Token string
	// S3 data-path credentials.
	S3AccessKey, S3SecretKey string
	// Repository, if set, is the backup repository the API backs up to
	// and restores from.
	Repository *repo.Repository
	Version    string
	Logger     *slog.Logger
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
	// S3Keys are set when the S3 credentials were made at this start.
	S3Keys   *S3Keys
	CertFile string
	// NBDClientCA is the CA of NBD client certificates.
	NBDClientCA string
}

// DefaultMountRoot is where API mounts go, in the config directory: it is
// the appliance's own, lasts across restarts (mounts are restored) and
// differs between appliances on one host.
const DefaultMountRoot = "mounts"

// DefaultDrain is how long running tasks may finish at shutdown.
const DefaultDrain = 30 * time.Second

// Files in the config directory.
const (
	tokenFile = "api-token"
	stateFile = "state.json"
	tlsDir    = "tls"
	s3TempDir = "tmp"
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
	for _, addr := range []string{opts.APIAddr, opts.S3Addr} {
		if opts.InsecureHTTP && addr != "" && !IsLoopback(addr) {
			return fmt.Errorf("--insecure-http is only allowed on loopback addresses, not %q", addr)
		}
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
		servers []*http.Server
	)
	fail := func(err error) {
		errMu.Lock()
		runErrs = append(runErrs, err)
		errMu.Unlock()
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()

	var s3h *s3export.Handler
	var s3l, apil net.Listener
	if opts.S3Addr != "" {
		if s3l, err = net.Listen("tcp", opts.S3Addr); err != nil {
			return fmt.Errorf("S3 listener: %w", err)
		}
		defer s3l.Close()
		keys, generated, err := loadS3Keys(opts.ConfigDir, opts.S3AccessKey, opts.S3SecretKey)
		if err != nil {
			return err
		}
		if generated {
			ep.S3Keys = &keys
		}
		// Uploads and built zips in the config directory: the appliance's
		// own (0700), not /tmp shared with other appliances on the host.
		tmp := filepath.Join(opts.ConfigDir, s3TempDir)
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return fmt.Errorf("S3 temporary directory: %w", err)
		}
		s3h, err = s3export.New(s3export.Config{Manager: m, AccessKey: keys.AccessKey, SecretKey: keys.SecretKey, Logger: log, TempDir: tmp, MaxExpansion: opts.MaxExpansion})
		if err != nil {
			return err
		}
	}
	if opts.APIAddr != "" {
		if apil, err = net.Listen("tcp", opts.APIAddr); err != nil {
			return fmt.Errorf("API listener: %w", err)
		}
		defer apil.Close()
	}
	var nbdl net.Listener
	if opts.NBDAddr != "" {
		if nbdl, err = net.Listen("tcp", opts.NBDAddr); err != nil {
			return fmt.Errorf("NBD listener: %w", err)
		}
		defer nbdl.Close()
	}

	// One certificate for every listener, naming all their addresses:
	// NBD always offers TLS, HTTP unless --insecure-http.
	var addrs []net.Addr
	for _, l := range []net.Listener{s3l, apil, nbdl} {
		if l != nil {
			addrs = append(addrs, l.Addr())
		}
	}
	var certFile, keyFile string
	if len(addrs) > 0 {
		if certFile, keyFile, err = ensureCert(log, filepath.Join(opts.ConfigDir, tlsDir), addrs...); err != nil {
			return err
		}
	}
	var tlsCfg *tls.Config
	if !opts.InsecureHTTP && (s3l != nil || apil != nil) {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		tlsCfg, ep.CertFile = tlsConfig(pair), certFile
	}
	var exports *nbdService
	if nbdl != nil {
		l := nbdl
		nopts, err := nbdOptions(opts, l.Addr(), certFile, keyFile, log)
		if err != nil {
			return err
		}
		src := nbdexport.NewSource(m)
		ep.NBD, ep.NBDClientCA = "nbd://"+advertised(l.Addr()), nopts.clientCA
		if nopts.TLSRequired {
			ep.NBD = "nbds://" + advertised(l.Addr())
		}
		exports = &nbdService{m: m, src: src, hostPort: advertised(l.Addr()), tlsRequired: nopts.TLSRequired, state: st, log: log}
		if err := exports.restore(ctx); err != nil {
			return err
		}
		srv := nbd.NewServer(src, nopts.Options)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx, l); err != nil {
				fail(err)
				stop()
			}
		}()
	}
	met := newMetrics(tm, exports, s3h)

	// serve runs handler on l, with the appliance's TLS certificate
	// unless --insecure-http, and returns the listener's URL.
	serve := func(name string, l net.Listener, handler http.Handler) (string, error) {
		srv, l := newHTTPServer(l, handler, tlsCfg, opts.HTTP, log)
		scheme := "http"
		if tlsCfg != nil {
			scheme = "https"
		}
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fail(fmt.Errorf("%s server: %w", name, err))
				stop()
			}
		}()
		return scheme + "://" + advertised(l.Addr()), nil
	}
	if s3h != nil {
		if ep.S3, err = serve("S3", s3l, met.instrumentS3(s3h)); err != nil {
			return err
		}
	}

	cfg := rest.Config{
		Manager: m, Tasks: tm, Logger: log, Version: opts.Version, Token: token, Context: taskCtx,
		Transports: func(id pe.ID) (data, md, combined []pe.Transport) {
			if s3h != nil {
				data, md, combined = s3export.Transports(ep.S3, id)
			}
			if exports != nil {
				data = append(data, exports.transports(id)...)
			}
			return data, md, combined
		},
	}
	if exports != nil {
		cfg.Exports = exports
	}
	if s3h != nil {
		cfg.SnapshotDeleted = s3h.Forget
	}
	mountRoot := opts.MountRoot
	if mountRoot == "" {
		mountRoot = filepath.Join(opts.ConfigDir, DefaultMountRoot)
	}
	mounts, err := newMountService(m, st, log, mountRoot)
	if err != nil {
		return err
	}
	if err := mounts.restore(); err != nil {
		return err
	}
	defer mounts.close() // on early returns; a no-op after shutdown
	if opts.MountDir != "" && !mountedAt(mounts, opts.MountDir) {
		if err := mounts.mount("mount-main", opts.MountDir, false); err != nil {
			return err
		}
	}
	cfg.Mounts = mounts
	if opts.Repository != nil {
		cfg.Repository = &repoService{r: opts.Repository, m: m}
	}
	apiHandler := met.instrument(rest.NewHandler(cfg))
	mux := http.NewServeMux()
	mux.Handle("/metrics", requireToken(token, met.handler()))
	mux.Handle("/", apiHandler)
	if apil != nil {
		if ep.API, err = serve("API", apil, mux); err != nil {
			return err
		}
	}

	if opts.Ready != nil {
		opts.Ready(ep)
	}
	log.Info("astrolabe serving", "api", ep.API, "s3", ep.S3, "nbd", ep.NBD)

	<-ctx.Done()
	log.Info("shutting down: draining tasks", "timeout", opts.DrainTimeout)
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.DrainTimeout+10*time.Second)
	defer cancel()
	if err := tm.Shutdown(shutCtx, opts.DrainTimeout); err != nil {
		fail(err)
	}
	if err := mounts.close(); err != nil {
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
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
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

// IsLoopback reports whether addr (host:port) is on a loopback address.
func IsLoopback(addr string) bool {
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

// advertised is how clients reach a listener: its address, or this host's
// name where it listens on all addresses.
func advertised(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a.String()
	}
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return net.JoinHostPort(host, strconv.Itoa(tcp.Port))
}

// S3Keys are the S3 data path's credentials.
type S3Keys struct {
	AccessKey string `json:"accessKey"`
	SecretKey string `json:"secretKey"`
}

const s3KeysFile = "s3-credentials.json"

// loadS3Keys returns the given keys, else the stored ones, else new ones
// that are stored (0600) and reported as generated.
func loadS3Keys(dir, access, secret string) (S3Keys, bool, error) {
	if access != "" || secret != "" {
		if access == "" || secret == "" {
			return S3Keys{}, false, errors.New("S3 data path: give both the access key and the secret key")
		}
		return S3Keys{access, secret}, false, nil
	}
	path := filepath.Join(dir, s3KeysFile)
	var k S3Keys
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &k); err != nil || k.AccessKey == "" || k.SecretKey == "" {
			return S3Keys{}, false, fmt.Errorf("S3 credentials %s: malformed (fix or remove it)", path)
		}
		return k, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return S3Keys{}, false, fmt.Errorf("S3 credentials: %w", err)
	}
	var a [10]byte
	var sk [30]byte
	rand.Read(a[:])
	rand.Read(sk[:])
	k = S3Keys{AccessKey: "AST" + strings.ToUpper(hex.EncodeToString(a[:])), SecretKey: base64.RawURLEncoding.EncodeToString(sk[:])}
	err := atomicfile.Write(path, 0o600, func(w io.Writer) error { return json.NewEncoder(w).Encode(k) })
	if err != nil {
		return S3Keys{}, false, fmt.Errorf("store S3 credentials: %w", err)
	}
	return k, true, nil
}

// mountedAt reports whether the service has a mount at dir already (one
// restored from the state).
func mountedAt(s *mountService, dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for _, m := range s.List() {
		if m.Path == abs {
			return true
		}
	}
	return false
}
