// Package rest serves the appliance's REST API (api/openapi.yaml): it
// translates requests into the use cases of package usecase, run as tasks
// where they take long, and their answers into the API's JSON.
package rest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/browse"
	"github.com/astrolabe-appliance/astrolabe/appliance/flrmount"
	"github.com/astrolabe-appliance/astrolabe/appliance/jobs"
	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// NBDExport is one export of the NBD service.
type NBDExport = usecase.Export

// Exports is the NBD service.
type Exports interface {
	Exports() []NBDExport
	StartExport(ctx context.Context, id pe.ID, writable bool) (NBDExport, error)
	// StopExport returns the PE the writes of a writable export were kept
	// in, with keep.
	StopExport(ctx context.Context, id pe.ID, keep bool, progress pe.Progress) (pe.ID, error)
}

// NFSExport is one export of the NFS service.
type NFSExport = usecase.NFSExport

// NFS is the NFS service of instant-recovery disks.
type NFS interface {
	NFSExports() []NFSExport
	StartNFSExport(ctx context.Context, id pe.ID) (NFSExport, error)
	// StopNFSExport returns the PE the writes were kept in, with keep.
	StopNFSExport(ctx context.Context, name string, keep bool, progress pe.Progress) (pe.ID, error)
	InstantVMs() []usecase.InstantVM
	StartInstantVM(ctx context.Context, id pe.ID) (usecase.InstantVM, error)
	MigrateInstantVM(ctx context.Context, name, datastore string) error
	StopInstantVM(ctx context.Context, name string) error
}

// Mount is one FUSE mount.
type Mount = usecase.Mount

// MountRequest asks for a FUSE mount.
type MountRequest = usecase.MountRequest

// Mounts is the FUSE service.
type Mounts interface {
	Mounts() []Mount
	Mount(ctx context.Context, req MountRequest) (Mount, error)
	Unmount(ctx context.Context, id string) error
}

// Repository is the backup repository.
type Repository interface {
	// RepositorySnapshots lists the repository's snapshots, of one PE if
	// filter is not zero.
	RepositorySnapshots(ctx context.Context, filter pe.ID) ([]pe.ID, error)
	// RepositorySnapshotList is RepositorySnapshots with their info.
	RepositorySnapshotList(ctx context.Context, filter pe.ID) ([]repo.Snapshot, error)
	// OpenRepositorySnapshot opens a repository snapshot to read it.
	OpenRepositorySnapshot(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error)
	Backup(ctx context.Context, id pe.ID, progress pe.Progress) (repo.Summary, error)
	Restore(ctx context.Context, id pe.ID, typ string, opts pe.CopyOptions, progress pe.Progress) (pe.ProtectedEntity, error)
	// RestoreInstant makes the restored PE at once and exports it while
	// the restore's Task fills it.
	RestoreInstant(ctx context.Context, id pe.ID, typ string, opts pe.CopyOptions) (*usecase.InstantRestore, error)
}

// RecoveryMounts are the file-level-recovery mounts of disk snapshots
// (package flrmount).
type RecoveryMounts interface {
	// Acquire mounts the partitions of p (or finds them mounted), each
	// with its own os.Root. The caller calls release.
	Acquire(ctx context.Context, p pe.ProtectedEntity) (parts []flrmount.Partition, release func(), err error)
}

// Transports tells where a PE's data can be fetched (S3 URLs, NBD URIs).
type Transports func(id pe.ID) (data, metadata, combined []pe.Transport)

// Config is what the API serves. Exports, Mounts and Repository are the
// optional services (UseCases, where the appliance has them); nil ones
// answer 501.
type Config struct {
	UseCases   *usecase.Service
	Tasks      *tasks.Manager
	Exports    Exports
	NFS        NFS
	Mounts     Mounts
	Repository Repository
	Transports Transports
	Logger     *slog.Logger
	Version    string
	// Token is the bearer token every endpoint but /healthz requires.
	Token string
	// Context bounds the tasks the API starts (the appliance's lifetime).
	Context context.Context
	// SnapshotDeleted, if set, is told of each snapshot the API deleted,
	// so that caches of it (the S3 zips) go with it.
	SnapshotDeleted func(id pe.ID)
	// Jobs is the job scheduler; nil answers 501.
	Jobs Jobs
	// RecoveryMounts mounts the partitions of disk snapshots for
	// browsing their files; nil: disk snapshots have no file tree here.
	RecoveryMounts RecoveryMounts
	// PasswordRoot is the directory password files of jobs created
	// through the API must be in (see checkJobPaths); empty: none may be
	// given.
	PasswordRoot string
}

// maxBody bounds request bodies: no request of this API needs more.
const maxBody = 1 << 20

// pageLimit is the default and largest page of listProtectedEntities.
const pageLimit = 1000

// NewHandler returns the API's http.Handler: authentication, body limits,
// JSON errors, and the generated routes.
func NewHandler(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Context == nil {
		cfg.Context = context.Background()
	}
	s := &server{cfg: cfg, uc: cfg.UseCases, m: cfg.UseCases.Manager(), log: cfg.Logger,
		sessions: newSessions(sessionLifetime, maxSessions), indexes: newLRU(maxIndexes, func(*browse.Index) int { return 1 }),
		dirNames: dirNames{newLRU(maxDirNames, func(names []string) int { return len(names) })}}
	strict := api.NewStrictHandlerWithOptions(s, nil, api.StrictHTTPServerOptions{
		RequestErrorHandlerFunc:  s.requestError,
		ResponseErrorHandlerFunc: s.responseError,
	})
	r := chi.NewRouter()
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on "+r.URL.Path)
	})
	return noRendering(api.HandlerWithOptions(strict, api.ChiServerOptions{
		BaseRouter:       r,
		Middlewares:      []api.MiddlewareFunc{s.authenticate},
		ErrorHandlerFunc: s.requestError,
	}))
}

// noRendering tells browsers that no answer of the API is a page: not
// to sniff one (an error message quoting a client's "<script>") and to
// load and run nothing from one.
func noRendering(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
		next.ServeHTTP(w, r)
	})
}

type server struct {
	cfg      Config
	uc       *usecase.Service
	m        pe.Manager
	log      *slog.Logger
	sessions *sessions
	indexes  *lru[*browse.Index]
	dirNames dirNames
}

var _ api.StrictServerInterface = (*server)(nil)

// authenticate checks the bearer token or the session cookie (with its
// CSRF token on unsafe methods) on every endpoint but /healthz and the
// login, and bounds the request body.
func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if !public(r) {
			if status, msg := s.authorized(r); status != 0 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="astrolabe"`)
				writeError(w, status, msg)
				return
			}
		}
		r, err := keepJobBody(r)
		if err != nil {
			writeError(w, statusOf(err), redact.Error(err))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, r)))
	})
}

// requestKey keeps the HTTP request in the context of the strict
// handlers, for audit lines that name who asked.
type requestKey struct{}

// caller describes the request of ctx for the log.
func caller(ctx context.Context) slog.Attr {
	r, ok := ctx.Value(requestKey{}).(*http.Request)
	if !ok {
		return slog.Group("request")
	}
	return slog.Group("request", "remote", r.RemoteAddr, "method", r.Method, "uri", r.RequestURI, "user_agent", r.UserAgent())
}

// httpError carries the status an error should be answered with.
type httpError struct {
	status int
	err    error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &httpError{http.StatusBadRequest, fmt.Errorf(format, args...)}
}

func notConfigured(what string) error {
	return &httpError{http.StatusNotImplemented, fmt.Errorf("%s is not configured on this appliance", what)}
}

// statusOf maps an error to its HTTP status.
func statusOf(err error) int {
	var he *httpError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		return he.status
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, usecase.ErrNotConfigured):
		return http.StatusNotImplemented
	case errors.Is(err, pe.ErrNotFound), errors.Is(err, tasks.ErrNotFound), errors.Is(err, jobs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, pe.ErrExists), errors.Is(err, pe.ErrIncomplete), errors.Is(err, jobs.ErrExists), errors.Is(err, jobs.ErrRunning):
		return http.StatusConflict
	case errors.Is(err, jobs.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, pe.ErrLimit):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, tasks.ErrTooMany):
		return http.StatusTooManyRequests
	case errors.Is(err, tasks.ErrShutdown):
		return http.StatusServiceUnavailable
	case errors.Is(err, pe.ErrNotSupported), errors.Is(err, pe.ErrInvalidSource),
		// A name longer than a file name can be (IDs may be 1024 bytes).
		errors.Is(err, syscall.ENAMETOOLONG):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func (s *server) requestError(w http.ResponseWriter, r *http.Request, err error) {
	// A job the generated decoder could not read is read as jobs.json
	// reads it, whose error names the field in plain words, not in Go's
	// types (api.Job).
	if b, ok := r.Context().Value(rawBodyKey{}).([]byte); ok {
		if _, jerr := jobs.DecodeJob(b); jerr != nil {
			err = jerr
		}
	}
	status := statusOf(err)
	if status == http.StatusInternalServerError {
		status = http.StatusBadRequest // the request could not be read
	}
	writeError(w, status, redact.Error(err))
}

func (s *server) responseError(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	switch {
	case status >= 500 && status != http.StatusNotImplemented:
		s.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	case errors.Is(err, pe.ErrLimit), errors.Is(err, pe.ErrInvalidSource):
		// The client's input was refused: worth a line, not an alarm.
		s.log.Info("API request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeError(w, status, redact.Error(err))
}

// writeError answers an error; msg must say what failed, not where on
// the appliance (see package redact).
func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Error{Code: int32(status), Message: msg})
}

// parseID parses a PE ID from the request; a bad one is the client's fault.
func parseID(s string) (pe.ID, error) {
	id, err := pe.ParseID(s)
	if err != nil {
		return pe.ID{}, &httpError{http.StatusBadRequest, err}
	}
	return id, nil
}

// serviceID parses a PE ID from the path and checks it belongs to service.
func (s *server) serviceID(ctx context.Context, service, raw string) (pe.ID, error) {
	if _, err := s.m.Type(ctx, service); err != nil {
		return pe.ID{}, err
	}
	id, err := parseID(raw)
	if err != nil {
		return pe.ID{}, err
	}
	if id.Type() != service {
		return pe.ID{}, badRequest("PE %s is not of service %s", id, service)
	}
	return id, nil
}

func (s *server) Health(ctx context.Context, _ api.HealthRequestObject) (api.HealthResponseObject, error) {
	return api.Health200JSONResponse{Status: "ok", Version: s.cfg.Version}, nil
}

func (s *server) ListServices(ctx context.Context, _ api.ListServicesRequestObject) (api.ListServicesResponseObject, error) {
	types, err := s.m.Types(ctx)
	if err != nil {
		return nil, err
	}
	out := api.ListServices200JSONResponse{Services: []string{}}
	for _, tm := range types {
		out.Services = append(out.Services, tm.Type())
	}
	return out, nil
}

func (s *server) ListProtectedEntities(ctx context.Context, req api.ListProtectedEntitiesRequestObject) (api.ListProtectedEntitiesResponseObject, error) {
	tm, err := s.m.Type(ctx, req.Service)
	if err != nil {
		return nil, err
	}
	limit := pageLimit
	if m := req.Params.MaxResults; m != nil {
		if *m < 1 {
			return nil, badRequest("maxResults %d: want at least 1", *m)
		}
		limit = min(limit, int(*m))
	}
	ids, err := tm.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", req.Service, err)
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.String()
	}
	sort.Strings(names)
	if after := req.Params.IdsAfter; after != nil {
		names = names[sort.SearchStrings(names, *after+"\x00"):]
	}
	out := api.ListProtectedEntities200JSONResponse{List: names, Truncated: len(names) > limit}
	if out.Truncated {
		out.List = names[:limit]
	}
	return out, nil
}

func (s *server) GetProtectedEntityInfo(ctx context.Context, req api.GetProtectedEntityInfoRequestObject) (api.GetProtectedEntityInfoResponseObject, error) {
	id, err := s.serviceID(ctx, req.Service, req.ProtectedEntityID)
	if err != nil {
		return nil, err
	}
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	info, err := p.Info(ctx)
	if err != nil {
		return nil, err
	}
	if s.cfg.Transports != nil {
		data, md, combined := s.cfg.Transports(id)
		// Advertise metadata only where there is some.
		if rc, err := p.Metadata(ctx); err == nil {
			rc.Close()
		} else {
			md = nil
		}
		info.DataTransports = append(info.DataTransports, data...)
		info.MetadataTransports = append(info.MetadataTransports, md...)
		info.CombinedTransports = append(info.CombinedTransports, combined...)
	}
	return api.GetProtectedEntityInfo200JSONResponse(toAPIInfo(info)), nil
}

func (s *server) DeleteProtectedEntity(ctx context.Context, req api.DeleteProtectedEntityRequestObject) (api.DeleteProtectedEntityResponseObject, error) {
	id, err := s.serviceID(ctx, req.Service, req.ProtectedEntityID)
	if err != nil {
		return nil, err
	}
	if !id.HasSnapshot() {
		return nil, badRequest("delete %s: only snapshots can be deleted", id)
	}
	if err := s.uc.DeleteSnapshot(ctx, id); err != nil {
		return nil, err
	}
	s.forget(ctx, id)
	return api.DeleteProtectedEntity200JSONResponse(id.String()), nil
}

// forget drops what the appliance serves of a deleted snapshot: its NBD
// export (which could read it no more) and cached zips.
func (s *server) forget(ctx context.Context, id pe.ID) {
	if s.cfg.Exports != nil {
		for _, e := range s.cfg.Exports.Exports() {
			if e.ID != id {
				continue
			}
			if _, err := s.cfg.Exports.StopExport(ctx, id, false, nil); err != nil && !errors.Is(err, pe.ErrNotFound) {
				s.log.Warn("NBD export of a deleted snapshot not stopped", "export", id, "err", err)
			}
		}
	}
	if s.cfg.SnapshotDeleted != nil {
		s.cfg.SnapshotDeleted(id)
	}
}

func (s *server) ListSnapshots(ctx context.Context, req api.ListSnapshotsRequestObject) (api.ListSnapshotsResponseObject, error) {
	id, err := s.serviceID(ctx, req.Service, req.ProtectedEntityID)
	if err != nil {
		return nil, err
	}
	p, err := s.m.Get(ctx, id.Base())
	if err != nil {
		return nil, err
	}
	snaps, err := p.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := api.ListSnapshots200JSONResponse{List: []string{}}
	for _, sn := range snaps {
		out.List = append(out.List, sn.String())
	}
	return out, nil
}

func (s *server) CreateSnapshot(ctx context.Context, req api.CreateSnapshotRequestObject) (api.CreateSnapshotResponseObject, error) {
	id, err := s.serviceID(ctx, req.Service, req.ProtectedEntityID)
	if err != nil {
		return nil, err
	}
	if id.HasSnapshot() {
		return nil, badRequest("snapshot %s: is a snapshot itself", id)
	}
	var params pe.Params
	if req.Body != nil {
		params = toParams(*req.Body)
	}
	snap, err := s.uc.Snapshot(ctx, id, params)
	if err != nil {
		return nil, err
	}
	return api.CreateSnapshot200JSONResponse(snap.String()), nil
}

func (s *server) CopyProtectedEntity(ctx context.Context, req api.CopyProtectedEntityRequestObject) (api.CopyProtectedEntityResponseObject, error) {
	if _, err := s.m.Type(ctx, req.Service); err != nil {
		return nil, err
	}
	mode, err := pe.ParseCopyMode(string(req.Params.Mode))
	if err != nil {
		return nil, &httpError{http.StatusBadRequest, err}
	}
	if req.Body == nil {
		return nil, badRequest("copy: the body must name the source PE")
	}
	src, err := parseID(req.Body.ProtectedEntityInfo.Id)
	if err != nil {
		return nil, err
	}
	if _, err := s.m.Get(ctx, src); err != nil {
		return nil, fmt.Errorf("copy source: %w", err)
	}
	var params pe.Params
	if req.Body.CopyParams != nil {
		params = toParams(*req.Body.CopyParams)
	}
	opts := pe.CopyOptions{Mode: mode, Params: params, KeepPrivileges: deref(req.Body.KeepPrivileges)}
	if opts.KeepPrivileges {
		s.log.LogAttrs(ctx, slog.LevelWarn, "copy keeps privileges (owners, setuid/setgid, capabilities, security xattrs) even from untrusted input, at the API's request",
			slog.String("src", src.String()), slog.String("service", req.Service), caller(ctx))
	}
	info, err := s.cfg.Tasks.Start(s.cfg.Context, "copy", fmt.Sprintf("copy %s to %s (%s)", src, req.Service, mode), deref(req.Params.Nexus),
		func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
			p, release, err := s.uc.ResolveTemporary(ctx, src)
			if err != nil {
				return nil, err
			}
			out, err := s.uc.Copy(ctx, p, req.Service, opts, progress)
			if rerr := release(ctx); rerr != nil {
				s.log.Warn("copy: the snapshot taken for it is left", "pe", src, "err", rerr)
			}
			if err != nil {
				return nil, err
			}
			return copyResult(ctx, out), nil
		})
	if err != nil {
		return nil, err
	}
	return api.CopyProtectedEntity202JSONResponse{TaskID: info.ID}, nil
}

func (s *server) ListTasks(ctx context.Context, _ api.ListTasksRequestObject) (api.ListTasksResponseObject, error) {
	return api.ListTasks200JSONResponse(append([]string{}, s.cfg.Tasks.List()...)), nil
}

func (s *server) GetTaskInfo(ctx context.Context, req api.GetTaskInfoRequestObject) (api.GetTaskInfoResponseObject, error) {
	info, err := s.cfg.Tasks.Get(req.TaskID)
	if err != nil {
		return nil, err
	}
	return api.GetTaskInfo200JSONResponse(toAPITask(info)), nil
}

func (s *server) CancelTask(ctx context.Context, req api.CancelTaskRequestObject) (api.CancelTaskResponseObject, error) {
	info, err := s.cfg.Tasks.Cancel(req.TaskID)
	if err != nil {
		return nil, err
	}
	return api.CancelTask200JSONResponse(toAPITask(info)), nil
}

func (s *server) ListTaskNexus(ctx context.Context, _ api.ListTaskNexusRequestObject) (api.ListTaskNexusResponseObject, error) {
	out := api.ListTaskNexus200JSONResponse{}
	for _, n := range s.cfg.Tasks.Nexus() {
		out = append(out, api.TaskNexusInfo{Id: n.ID, AssociatedTasks: append([]string{}, n.Tasks...)})
	}
	return out, nil
}

func (s *server) CreateTaskNexus(ctx context.Context, _ api.CreateTaskNexusRequestObject) (api.CreateTaskNexusResponseObject, error) {
	id, err := s.cfg.Tasks.NewNexus()
	if err != nil {
		return nil, err
	}
	return api.CreateTaskNexus200JSONResponse(id), nil
}

// maxNexusWait bounds a long poll; clients poll again.
const maxNexusWait = time.Minute

// nexusWait is the wait a client asked for, in milliseconds, bounded
// before it becomes a Duration (which a large count would overflow).
func nexusWait(ms int64) time.Duration {
	if ms >= maxNexusWait.Milliseconds() {
		return maxNexusWait
	}
	return time.Duration(ms) * time.Millisecond
}

func (s *server) WaitTaskNexus(ctx context.Context, req api.WaitTaskNexusRequestObject) (api.WaitTaskNexusResponseObject, error) {
	if req.Params.WaitTime < 0 || req.Params.LastFinishedNS < 0 {
		return nil, badRequest("waitTime and lastFinishedNS must not be negative")
	}
	// A finish time the client rounded through a double stands for the
	// finish time nearest it (see tasks.FinishGrid).
	last := tasks.SnapToGrid(req.Params.LastFinishedNS)
	infos, err := s.cfg.Tasks.WaitNexus(ctx, req.TaskNexusID, time.Unix(0, last), nexusWait(req.Params.WaitTime))
	if err != nil {
		return nil, err
	}
	out := api.WaitTaskNexus200JSONResponse{Id: req.TaskNexusID, Finished: []api.TaskInfo{}}
	for _, i := range infos {
		out.Finished = append(out.Finished, toAPITask(i))
		last = i.Finished.UnixNano()
	}
	out.Cursor = strconv.FormatInt(last, 10)
	return out, nil
}

func (s *server) ListNBDExports(ctx context.Context, _ api.ListNBDExportsRequestObject) (api.ListNBDExportsResponseObject, error) {
	if s.cfg.Exports == nil {
		return nil, notConfigured("NBD")
	}
	out := api.ListNBDExports200JSONResponse{}
	for _, e := range s.cfg.Exports.Exports() {
		out = append(out, toAPIExport(e))
	}
	return out, nil
}

func (s *server) StartNBDExport(ctx context.Context, req api.StartNBDExportRequestObject) (api.StartNBDExportResponseObject, error) {
	if s.cfg.Exports == nil {
		return nil, notConfigured("NBD")
	}
	if req.Body == nil {
		return nil, badRequest("the body must name the PE to export")
	}
	id, err := parseID(req.Body.Id)
	if err != nil {
		return nil, err
	}
	e, err := s.cfg.Exports.StartExport(ctx, id, deref(req.Body.Writable))
	if err != nil {
		return nil, err
	}
	return api.StartNBDExport200JSONResponse(toAPIExport(e)), nil
}

func (s *server) StopNBDExport(ctx context.Context, req api.StopNBDExportRequestObject) (api.StopNBDExportResponseObject, error) {
	if s.cfg.Exports == nil {
		return nil, notConfigured("NBD")
	}
	id, err := parseID(req.ProtectedEntityID)
	if err != nil {
		return nil, err
	}
	keep := deref(req.Params.Keep)
	kept, err := s.cfg.Exports.StopExport(ctx, id, keep, nil)
	if err != nil {
		return nil, err
	}
	if keep {
		return api.StopNBDExport200JSONResponse{Kept: kept.String()}, nil
	}
	return api.StopNBDExport204Response{}, nil
}

func (s *server) ListNFSExports(ctx context.Context, _ api.ListNFSExportsRequestObject) (api.ListNFSExportsResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	out := api.ListNFSExports200JSONResponse{}
	for _, e := range s.cfg.NFS.NFSExports() {
		out = append(out, toAPINFSExport(e))
	}
	return out, nil
}

func (s *server) StartNFSExport(ctx context.Context, req api.StartNFSExportRequestObject) (api.StartNFSExportResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	if req.Body == nil {
		return nil, badRequest("the body must name the snapshot to export")
	}
	id, err := parseID(req.Body.Id)
	if err != nil {
		return nil, err
	}
	e, err := s.cfg.NFS.StartNFSExport(ctx, id)
	if err != nil {
		return nil, err
	}
	return api.StartNFSExport200JSONResponse(toAPINFSExport(e)), nil
}

func (s *server) StopNFSExport(ctx context.Context, req api.StopNFSExportRequestObject) (api.StopNFSExportResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	keep := deref(req.Params.Keep)
	kept, err := s.cfg.NFS.StopNFSExport(ctx, req.Name, keep, nil)
	if err != nil {
		return nil, err
	}
	if keep {
		return api.StopNFSExport200JSONResponse{Kept: kept.String()}, nil
	}
	return api.StopNFSExport204Response{}, nil
}

func (s *server) ListInstantVMs(ctx context.Context, _ api.ListInstantVMsRequestObject) (api.ListInstantVMsResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	out := api.ListInstantVMs200JSONResponse{}
	for _, v := range s.cfg.NFS.InstantVMs() {
		out = append(out, toAPIInstantVM(v))
	}
	return out, nil
}

func (s *server) StartInstantVM(ctx context.Context, req api.StartInstantVMRequestObject) (api.StartInstantVMResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	if req.Body == nil {
		return nil, badRequest("the body must name the VM snapshot")
	}
	id, err := parseID(req.Body.Id)
	if err != nil {
		return nil, err
	}
	v, err := s.cfg.NFS.StartInstantVM(ctx, id)
	if err != nil {
		return nil, err
	}
	return api.StartInstantVM200JSONResponse(toAPIInstantVM(v)), nil
}

func (s *server) MigrateInstantVM(ctx context.Context, req api.MigrateInstantVMRequestObject) (api.MigrateInstantVMResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	var datastore string
	if req.Body != nil {
		datastore = deref(req.Body.Datastore)
	}
	found := false
	for _, v := range s.cfg.NFS.InstantVMs() {
		found = found || v.VM.Name == req.Name
	}
	if !found {
		return nil, fmt.Errorf("instant VM %q: %w", req.Name, pe.ErrNotFound)
	}
	info, err := s.cfg.Tasks.Start(s.cfg.Context, "instant-migrate", fmt.Sprintf("migrate instant VM %s", req.Name), "",
		func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
			return map[string]string{"vm": req.Name}, s.cfg.NFS.MigrateInstantVM(ctx, req.Name, datastore)
		})
	if err != nil {
		return nil, err
	}
	return api.MigrateInstantVM202JSONResponse{TaskID: info.ID}, nil
}

func (s *server) StopInstantVM(ctx context.Context, req api.StopInstantVMRequestObject) (api.StopInstantVMResponseObject, error) {
	if s.cfg.NFS == nil {
		return nil, notConfigured("NFS")
	}
	if err := s.cfg.NFS.StopInstantVM(ctx, req.Name); err != nil {
		return nil, err
	}
	return api.StopInstantVM204Response{}, nil
}

func (s *server) ListMounts(ctx context.Context, _ api.ListMountsRequestObject) (api.ListMountsResponseObject, error) {
	if s.cfg.Mounts == nil {
		return nil, notConfigured("FUSE")
	}
	out := api.ListMounts200JSONResponse{}
	for _, m := range s.cfg.Mounts.Mounts() {
		out = append(out, toAPIMount(m))
	}
	return out, nil
}

func (s *server) StartMount(ctx context.Context, req api.StartMountRequestObject) (api.StartMountResponseObject, error) {
	if s.cfg.Mounts == nil {
		return nil, notConfigured("FUSE")
	}
	if req.Body == nil || req.Body.Path == "" {
		return nil, badRequest("the body must give the mount path")
	}
	m, err := s.cfg.Mounts.Mount(ctx, MountRequest{Path: req.Body.Path, AllowOther: deref(req.Body.AllowOther), Force: deref(req.Body.Force)})
	if err != nil {
		return nil, err
	}
	return api.StartMount200JSONResponse(toAPIMount(m)), nil
}

func (s *server) StopMount(ctx context.Context, req api.StopMountRequestObject) (api.StopMountResponseObject, error) {
	if s.cfg.Mounts == nil {
		return nil, notConfigured("FUSE")
	}
	if err := s.cfg.Mounts.Unmount(ctx, req.MountID); err != nil {
		return nil, err
	}
	return api.StopMount204Response{}, nil
}

func (s *server) ListRepositorySnapshots(ctx context.Context, req api.ListRepositorySnapshotsRequestObject) (api.ListRepositorySnapshotsResponseObject, error) {
	if s.cfg.Repository == nil {
		return nil, notConfigured("the backup repository")
	}
	var filter pe.ID
	if f := deref(req.Params.ProtectedEntityID); f != "" {
		var err error
		if filter, err = parseID(f); err != nil {
			return nil, err
		}
	}
	ids, err := s.cfg.Repository.RepositorySnapshots(ctx, filter)
	if err != nil {
		return nil, err
	}
	out := api.ListRepositorySnapshots200JSONResponse{List: []string{}}
	for _, id := range ids {
		out.List = append(out.List, id.String())
	}
	return out, nil
}

func (s *server) StartBackup(ctx context.Context, req api.StartBackupRequestObject) (api.StartBackupResponseObject, error) {
	if s.cfg.Repository == nil {
		return nil, notConfigured("the backup repository")
	}
	if req.Body == nil {
		return nil, badRequest("the body must name the PE to back up")
	}
	id, err := parseID(req.Body.Id)
	if err != nil {
		return nil, err
	}
	if _, err := s.m.Get(ctx, id); err != nil {
		return nil, err
	}
	info, err := s.cfg.Tasks.Start(s.cfg.Context, "backup", "backup "+id.String(), deref(req.Params.Nexus),
		func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
			sum, err := s.cfg.Repository.Backup(ctx, id, progress)
			if err != nil {
				return nil, err
			}
			return map[string]string{"id": sum.ID.String()}, nil
		})
	if err != nil {
		return nil, err
	}
	return api.StartBackup202JSONResponse{TaskID: info.ID}, nil
}

func (s *server) StartRestore(ctx context.Context, req api.StartRestoreRequestObject) (api.StartRestoreResponseObject, error) {
	if s.cfg.Repository == nil {
		return nil, notConfigured("the backup repository")
	}
	if req.Body == nil {
		return nil, badRequest("the body must name the repository snapshot")
	}
	id, err := parseID(req.Body.Id)
	if err != nil {
		return nil, err
	}
	mode := pe.CreateNew
	if m := req.Body.Mode; m != nil {
		if mode, err = pe.ParseCopyMode(string(*m)); err != nil {
			return nil, &httpError{http.StatusBadRequest, err}
		}
	}
	service := id.Type()
	if sv := deref(req.Body.Service); sv != "" {
		service = sv
	}
	if _, err := s.m.Type(ctx, service); err != nil {
		return nil, err
	}
	opts := pe.CopyOptions{Mode: mode, Name: deref(req.Body.Name)}
	if opts.Name != "" && mode == pe.CreateNew {
		return nil, badRequest("restore %s: a name goes with mode create or update; create_new makes one", id)
	}
	if deref(req.Body.Instant) {
		return s.startInstantRestore(ctx, id, service, opts, deref(req.Params.Nexus))
	}
	info, err := s.cfg.Tasks.Start(s.cfg.Context, "restore", fmt.Sprintf("restore %s to %s (%s)", id, service, mode), deref(req.Params.Nexus),
		func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
			out, err := s.cfg.Repository.Restore(ctx, id, service, opts, progress)
			if err != nil {
				return nil, err
			}
			return map[string]string{"id": out.ID().String()}, nil
		})
	if err != nil {
		return nil, err
	}
	return api.StartRestore202JSONResponse{TaskID: info.ID}, nil
}

// startInstantRestore makes the PE and its export now, and fills it as a
// task.
func (s *server) startInstantRestore(ctx context.Context, id pe.ID, service string, opts pe.CopyOptions, nexus string) (api.StartRestoreResponseObject, error) {
	if s.cfg.Exports == nil {
		return nil, notConfigured("NBD")
	}
	ir, err := s.cfg.Repository.RestoreInstant(ctx, id, service, opts)
	if err != nil {
		return nil, err
	}
	info, err := s.cfg.Tasks.StartAs(s.cfg.Context, ir.TaskID(), "restore", ir.Details(), nexus, ir.Task())
	if err != nil {
		return nil, errors.Join(err, ir.Abort(context.WithoutCancel(ctx)))
	}
	target, export := ir.Target.String(), toAPIExport(ir.Export)
	return api.StartRestore202JSONResponse{TaskID: info.ID, Target: &target, Export: &export}, nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// ValidToken reports whether an Authorization header carries the bearer
// token. It compares in constant time, so the token cannot be guessed
// byte by byte from response times; every endpoint that takes the token
// (the API, /metrics) checks it here.
func ValidToken(header, token string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	return ok && token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// copyResult is the result of a copy task: the new PE's ID and, where
// its type tells them (a restored pg cluster's host, port and data
// directory), how to reach it.
func copyResult(ctx context.Context, p pe.ProtectedEntity) map[string]string {
	res := map[string]string{"id": p.ID().String()}
	if c, ok := p.(interface {
		Connection(context.Context) (map[string]string, error)
	}); ok {
		if conn, err := c.Connection(ctx); err == nil {
			for k, v := range conn {
				if k != "id" {
					res[k] = v
				}
			}
		}
	}
	return res
}
