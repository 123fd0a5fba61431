// Package daemon is `astrolabe serve`: one process with the REST API, the
// NBD server, the task manager and, where configured, the S3 data path,
// FUSE mounts and the backup repository, all over one config directory.
// Exports and mounts it starts are recorded in the config directory and
// restored when it starts again.
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/flrmount"
	"github.com/astrolabe-appliance/astrolabe/appliance/jobs"
	"github.com/astrolabe-appliance/astrolabe/appliance/rest"
	"github.com/astrolabe-appliance/astrolabe/appliance/s3export"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/web"
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
	// ones, NBDWriteStallTimeout those whose replies (or WRITE payloads)
	// make no progress
	// (0: defaults; negative timeouts: never).
	NBDMemory            int64
	NBDMaxConns          int
	NBDMaxConnsPerClient int
	NBDIdleTimeout       time.Duration
	NBDWriteStallTimeout time.Duration
	// NFSAddr serves snapshots writable over NFSv3 as datastore files for
	// vSphere (instant recovery) to the clients of NFSAllow (loopback
	// only if empty: NFSv3 has no authentication of its own).
	NFSAddr  string
	NFSAllow []netip.Prefix
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
	API, S3, NBD, NFS string
	Token             string
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
	// OverlayDir, under the configuration's state directory, keeps the
	// overlays of writable NBD exports.
	OverlayDir = "overlays"
	tokenFile  = "api-token"
	stateFile  = "state.json"
	tlsDir     = "tls"
	s3TempDir  = "tmp"
	// passwordDir holds the password files jobs created through the
	// API may name.
	passwordDir = "passwords"
)

// Run serves until ctx is cancelled, then drains and returns.
func Run(ctx context.Context, opts Options) error {
	opts = opts.withDefaults()
	log := opts.Logger
	if err := opts.checkInsecure(); err != nil {
		return err
	}
	m, err := config.Load(opts.ConfigDir, factories(opts.Repository))
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
	ls, err := listen(opts)
	if err != nil {
		return err
	}
	defer ls.close()
	ep := Endpoints{Token: token, TokenGenerated: generated}
	certs, err := ls.certificate(opts, &ep)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	run := &servers{stop: stop}
	defer run.wait() // on early returns; at once after shutdown
	nbds, err := newNBD(ctx, opts, m, ls.nbd, certs, &ep, run)
	if err != nil {
		return err
	}
	src := nbds.src
	nfs, err := newNFS(ctx, opts, ls.nfs, &ep, run)
	if err != nil {
		return err
	}
	uc, err := usecase.New(usecase.Config{
		Manager: m, Repository: opts.Repository, Exports: src, ExportURI: nbds.uri,
		NFS: nfs.srv, NFSAddr: nfs.addr, OverlayDir: overlayDir(opts),
		MountRoot: opts.MountRoot, Journal: st, Logger: log,
		StateDir: filepath.Join(opts.ConfigDir, config.StateDir),
	})
	if err != nil {
		return err
	}
	defer uc.Close() // on early returns; a no-op after shutdown
	if err := resume(ctx, uc, st, src != nil, nfs.srv != nil, opts.Repository != nil, log); err != nil {
		return err
	}
	sweepOverlays(overlayDir(opts), st.snapshot(), log)
	nbds.serve()
	nfs.serve()
	if err := mountMain(ctx, uc, opts.MountDir); err != nil {
		return err
	}

	// Tasks outlive the requests that start them, not the daemon.
	taskCtx, cancelTasks := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelTasks()
	tm := tasks.NewManager(tasks.Options{Logger: log})
	for _, ir := range uc.ResumedRestores() {
		if _, err := tm.StartAs(taskCtx, ir.TaskID(), "restore", ir.Details(), "", ir.Task()); err != nil {
			return err
		}
	}
	sched, jobsDone, err := startJobs(ctx, taskCtx, opts, m, tm)
	if err != nil {
		return err
	}
	wal, err := startWAL(ctx, opts)
	if err != nil {
		return err
	}
	// Each receiver stores what it received of its open segment before
	// the repository is closed; on an early return they are stopped.
	defer func() {
		stop()
		wal.wait()
	}()
	// Uploads into the S3 copy bucket are restored as tasks of tm.
	uploads := s3export.UploadOptions{Restorer: uc, Tasks: tm, TaskContext: taskCtx}
	s3h, err := newS3Handler(opts, m, ls.s3, &ep, uploads)
	if err != nil {
		return err
	}
	if s3h != nil {
		go s3h.Janitor(ctx)
	}
	met := newMetrics(tm, src, s3h)
	wal.register(met.reg)
	if s3h != nil {
		ep.S3 = run.serveHTTP("S3", ls.s3, met.instrumentS3(s3h), certs.http, opts.HTTP, log)
	}
	if ls.api != nil {
		// The web page's browsing of disk snapshots mounts their
		// partitions; they go when idle, and all when serve stops.
		rm, err := flrmount.New(ctx, filepath.Join(opts.ConfigDir, config.StateDir, recoveryMountDir), recoveryMountIdle, log)
		if err != nil {
			return err
		}
		defer rm.Close()
		api := apiHandler(taskCtx, opts, uc, tm, sched, token, ep.S3, s3h, src != nil, met, rm)
		ep.API = run.serveHTTP("API", ls.api, api, certs.http, opts.HTTP, log)
	}
	if opts.Ready != nil {
		opts.Ready(ep)
	}
	log.Info("astrolabe serving", "api", ep.API, "s3", ep.S3, "nbd", ep.NBD, "nfs", ep.NFS)

	<-ctx.Done()
	// The scheduler may be starting a task: it must have stopped before
	// the tasks are drained.
	<-jobsDone
	return drain(ctx, opts, tm, uc, run)
}

// startJobs runs the jobs of <ConfigDir>/jobs.json (none if it is
// absent: jobs may be created through the API) as tasks of tm until ctx
// is done, and makes the password directory of jobs created through the
// API. The channel returned is closed once the scheduler has stopped
// starting tasks.
func startJobs(ctx, taskCtx context.Context, opts Options, m pe.Manager, tm *tasks.Manager) (*jobs.Scheduler, <-chan struct{}, error) {
	js, _, err := jobs.Load(opts.ConfigDir)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(opts.ConfigDir, passwordDir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("password directory: %w", err)
	}
	sched, err := jobs.New(jobs.Options{Jobs: js, ConfigDir: opts.ConfigDir, Manager: m, Tasks: tm, TaskContext: taskCtx, Logger: opts.Logger})
	if err != nil {
		return nil, nil, err
	}
	opts.Logger.Info("running jobs", "jobs", len(js))
	done := make(chan struct{})
	go func() {
		defer close(done)
		sched.Run(ctx)
	}()
	return sched, done, nil
}

// drain lets running tasks finish (up to opts.DrainTimeout), unmounts
// and stops the servers.
func drain(ctx context.Context, opts Options, tm *tasks.Manager, uc *usecase.Service, run *servers) error {
	opts.Logger.Info("shutting down: draining tasks", "timeout", opts.DrainTimeout)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.DrainTimeout+10*time.Second)
	defer cancel()
	if err := tm.Shutdown(ctx, opts.DrainTimeout); err != nil {
		run.fail(err)
	}
	if err := uc.Close(); err != nil {
		run.fail(err)
	}
	return run.shutdown(ctx)
}

// withDefaults fills in the options left zero.
func (opts Options) withDefaults() Options {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrain
	}
	if opts.MountRoot == "" {
		opts.MountRoot = filepath.Join(opts.ConfigDir, DefaultMountRoot)
	}
	return opts
}

// checkInsecure refuses plain HTTP off loopback.
func (opts Options) checkInsecure() error {
	for _, addr := range []string{opts.APIAddr, opts.S3Addr} {
		if opts.InsecureHTTP && addr != "" && !IsLoopback(addr) {
			return fmt.Errorf("--insecure-http is only allowed on loopback addresses, not %q", addr)
		}
	}
	if opts.NFSAddr != "" && !IsLoopback(opts.NFSAddr) && len(opts.NFSAllow) == 0 {
		return fmt.Errorf("--nfs %s is not loopback: name the hosts that may use it with --nfs-allow (NFSv3 has no authentication of its own)", opts.NFSAddr)
	}
	return nil
}

// recoveryMountDir (in the state directory) holds the recovery mounts of
// disk snapshots the web page browses; they are taken down once idle for
// recoveryMountIdle.
const (
	recoveryMountDir  = "flr"
	recoveryMountIdle = 5 * time.Minute
)

// apiHandler is the REST API over the use cases, with /metrics beside it.
func apiHandler(taskCtx context.Context, opts Options, uc *usecase.Service, tm *tasks.Manager, sched *jobs.Scheduler, token, s3URL string, s3h *s3export.Handler, nbd bool, met *metrics, rm *flrmount.Manager) http.Handler {
	cfg := rest.Config{
		UseCases: uc, Mounts: uc, Tasks: tm, Logger: opts.Logger, Version: opts.Version, Token: token, Context: taskCtx,
		RecoveryMounts: rm,
		Jobs:           sched, PasswordRoot: filepath.Join(opts.ConfigDir, passwordDir),
		Transports: func(id pe.ID) (data, md, combined []pe.Transport) {
			if s3h != nil {
				data, md, combined = s3export.Transports(s3URL, id)
			}
			return append(data, uc.ExportTransports(id)...), md, combined
		},
	}
	if nbd {
		cfg.Exports = uc
	}
	if opts.NFSAddr != "" {
		cfg.NFS = uc
	}
	if opts.Repository != nil {
		cfg.Repository = uc
	}
	if s3h != nil {
		cfg.SnapshotDeleted = s3h.Forget
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", requireToken(token, met.handler()))
	mux.Handle("/", met.instrument(rest.NewHandler(cfg)))
	page := web.Handler()
	for _, p := range web.Paths() {
		if p == "/" {
			p = "/{$}"
		}
		mux.Handle("GET "+p, page)
	}
	return mux
}

// newS3Handler makes the S3 data path's handler if it has a listener,
// with the given, stored or new credentials.
func newS3Handler(opts Options, m pe.Manager, l net.Listener, ep *Endpoints, uploads s3export.UploadOptions) (*s3export.Handler, error) {
	if l == nil {
		return nil, nil
	}
	keys, generated, err := loadS3Keys(opts.ConfigDir, opts.S3AccessKey, opts.S3SecretKey)
	if err != nil {
		return nil, err
	}
	if generated {
		ep.S3Keys = &keys
	}
	// Uploads and built zips in the config directory: the appliance's
	// own (0700), not /tmp shared with other appliances on the host.
	tmp := filepath.Join(opts.ConfigDir, s3TempDir)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("S3 temporary directory: %w", err)
	}
	state := filepath.Join(opts.ConfigDir, config.StateDir)
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, fmt.Errorf("S3 state directory: %w", err)
	}
	return s3export.New(s3export.Config{Manager: m, AccessKey: keys.AccessKey, SecretKey: keys.SecretKey, Logger: opts.Logger,
		TempDir: tmp, StateDir: state, MaxExpansion: opts.MaxExpansion, Uploads: uploads})
}

// requireToken guards handlers outside the generated API (metrics).
func requireToken(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !rest.ValidToken(r.Header.Get("Authorization"), token) {
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
	var sk [20]byte
	rand.Read(a[:])
	rand.Read(sk[:])
	// Hex, not base64: a secret that starts with '-' is taken for a flag
	// by the clients it is typed into (mc alias set refused one).
	k = S3Keys{AccessKey: "AST" + strings.ToUpper(hex.EncodeToString(a[:])), SecretKey: hex.EncodeToString(sk[:])}
	err := atomicfile.Write(path, 0o600, func(w io.Writer) error { return json.NewEncoder(w).Encode(k) })
	if err != nil {
		return S3Keys{}, false, fmt.Errorf("store S3 credentials: %w", err)
	}
	return k, true, nil
}
