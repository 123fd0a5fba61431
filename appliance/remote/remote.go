// Package remote is a pe.Manager backed by a running appliance's REST API,
// through the client generated from api/openapi.yaml: the CLI's verbs act on
// a remote appliance by using it in place of the local configuration.
// Control operations (info, list, snapshots, copy as a task) work; data and
// metadata streams do not travel over the REST API (use the S3 or NBD data
// paths) and say so.
package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Options say how to reach the appliance.
type Options struct {
	URL   string // e.g. https://appliance:8443
	Token string
	// CAFile is a PEM file of certificates to trust (the appliance's
	// self-signed tls/cert.pem); empty means the system's roots.
	CAFile string
	// Timeout bounds each request (default 1 minute).
	Timeout time.Duration
}

// Manager is a pe.Manager over the REST API.
type Manager struct {
	c *api.ClientWithResponses
}

var _ pe.Manager = (*Manager)(nil)

// New returns a Manager for the appliance at opts.URL.
func New(opts Options) (*Manager, error) {
	if opts.URL == "" {
		return nil, errors.New("remote appliance: no URL")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if opts.CAFile != "" {
		pemBytes, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("server CA %s: no PEM certificate in it", opts.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	hc := &http.Client{Transport: tr, Timeout: opts.Timeout}
	c, err := api.NewClientWithResponses(strings.TrimSuffix(opts.URL, "/"), api.WithHTTPClient(hc),
		api.WithRequestEditorFn(func(ctx context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+opts.Token)
			return nil
		}))
	if err != nil {
		return nil, fmt.Errorf("remote appliance %s: %w", opts.URL, err)
	}
	return &Manager{c: c}, nil
}

// apiError turns a non-2xx answer into an error that wraps the pe error of
// its status, so callers can tell "not found" from "exists". The body is
// read here rather than from the generated JSON<status> fields, which
// differ per operation and status.
func apiError(status int, body []byte) error {
	msg := strings.TrimSpace(string(body))
	var e api.Error
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		msg = e.Message
	}
	var kind error
	switch status {
	case http.StatusNotFound:
		kind = pe.ErrNotFound
	case http.StatusConflict:
		kind = pe.ErrExists
	case http.StatusBadRequest:
		kind = pe.ErrInvalidSource
	default:
		return fmt.Errorf("appliance: %d %s: %s", status, http.StatusText(status), msg)
	}
	return fmt.Errorf("appliance: %s (%w)", msg, kind)
}

// Types implements pe.Manager.
func (m *Manager) Types(ctx context.Context) ([]pe.TypeManager, error) {
	names, err := m.services(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]pe.TypeManager, 0, len(names))
	for _, s := range names {
		out = append(out, &typeManager{m: m, name: s})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type() < out[j].Type() })
	return out, nil
}

// Type implements pe.Manager.
func (m *Manager) Type(ctx context.Context, name string) (pe.TypeManager, error) {
	names, err := m.services(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range names {
		if s == name {
			return &typeManager{m: m, name: s}, nil
		}
	}
	return nil, fmt.Errorf("PE type %q: %w (appliance has: %v)", name, pe.ErrNotFound, names)
}

// services lists the appliance's PE types.
func (m *Manager) services(ctx context.Context) ([]string, error) {
	r, err := m.c.ListServicesWithResponse(ctx)
	if err != nil {
		return nil, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return nil, apiError(r.StatusCode(), r.Body)
	}
	return r.JSON200.Services, nil
}

// Get implements pe.Manager: it checks the PE exists.
func (m *Manager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	e := &entity{m: m, id: id}
	if _, err := e.Info(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

type typeManager struct {
	m    *Manager
	name string
}

func (t *typeManager) Type() string { return t.name }

func (t *typeManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	return t.m.Get(ctx, id)
}

// List pages through the PEs of the service.
func (t *typeManager) List(ctx context.Context) ([]pe.ID, error) {
	var out []pe.ID
	var after *string
	for {
		r, err := t.m.c.ListProtectedEntitiesWithResponse(ctx, t.name, &api.ListProtectedEntitiesParams{IdsAfter: after})
		if err != nil {
			return nil, fmt.Errorf("appliance: %w", err)
		}
		if r.JSON200 == nil {
			return nil, apiError(r.StatusCode(), r.Body)
		}
		for _, s := range r.JSON200.List {
			id, err := pe.ParseID(s)
			if err != nil {
				return nil, fmt.Errorf("appliance listed %w", err)
			}
			out = append(out, id)
		}
		if !r.JSON200.Truncated || len(r.JSON200.List) == 0 {
			return out, nil
		}
		last := r.JSON200.List[len(r.JSON200.List)-1]
		after = &last
	}
}

// Copy runs the copy as a task on the appliance and waits for it.
func (t *typeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	if _, ok := src.(*entity); !ok {
		return nil, fmt.Errorf("copy %s: only PEs of the appliance can be copied through its API (upload zips over its S3 data path): %w", src.ID(), pe.ErrNotSupported)
	}
	if opts.Name != "" && opts.Name != src.ID().Name() {
		return nil, fmt.Errorf("copy %s: the API copies under the source's name (or a new one): %w", src.ID(), pe.ErrNotSupported)
	}
	r, err := t.m.c.CopyProtectedEntityWithResponse(ctx, t.name,
		&api.CopyProtectedEntityParams{Mode: api.CopyProtectedEntityParamsMode(opts.Mode.String())},
		api.CopyParameters{ProtectedEntityInfo: api.ProtectedEntityInfo{Id: src.ID().String()}})
	if err != nil {
		return nil, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON202 == nil {
		return nil, apiError(r.StatusCode(), r.Body)
	}
	// Task progress is a percentage, not bytes: it is not passed on.
	task, err := t.m.WaitTask(ctx, r.JSON202.TaskID)
	if err != nil {
		return nil, err
	}
	id, err := pe.ParseID(deref(task.Result)["id"])
	if err != nil {
		return nil, fmt.Errorf("task %s result: %w", task.Id, err)
	}
	return &entity{m: t.m, id: id}, nil
}

// WaitTask polls a task until it finishes and returns it; a failed or
// cancelled task is an error. Cancelling ctx cancels the task.
func (m *Manager) WaitTask(ctx context.Context, id string) (api.TaskInfo, error) {
	for {
		r, err := m.c.GetTaskInfoWithResponse(context.WithoutCancel(ctx), id)
		if err != nil {
			return api.TaskInfo{}, fmt.Errorf("appliance: %w", err)
		}
		if r.JSON200 == nil {
			return api.TaskInfo{}, apiError(r.StatusCode(), r.Body)
		}
		ti := *r.JSON200
		switch ti.Status {
		case api.Success:
			return ti, nil
		case api.Failed, api.Cancelled:
			return ti, fmt.Errorf("task %s %s: %s", ti.Id, ti.Status, deref(ti.Details))
		}
		select {
		case <-ctx.Done():
			m.c.CancelTaskWithResponse(context.WithoutCancel(ctx), id)
			return ti, fmt.Errorf("task %s: %w (cancelled on the appliance)", id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type entity struct {
	m  *Manager
	id pe.ID
}

func (e *entity) ID() pe.ID { return e.id }

func (e *entity) Info(ctx context.Context) (pe.Info, error) {
	r, err := e.m.c.GetProtectedEntityInfoWithResponse(ctx, e.id.Type(), e.id.String())
	if err != nil {
		return pe.Info{}, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return pe.Info{}, apiError(r.StatusCode(), r.Body)
	}
	return fromAPIInfo(*r.JSON200)
}

func (e *entity) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	if len(params) != 0 {
		return pe.ID{}, fmt.Errorf("snapshot %s: parameters over the API: %w", e.id, pe.ErrNotSupported)
	}
	r, err := e.m.c.CreateSnapshotWithResponse(ctx, e.id.Type(), e.id.String(), nil)
	if err != nil {
		return pe.ID{}, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return pe.ID{}, apiError(r.StatusCode(), r.Body)
	}
	return pe.ParseID(*r.JSON200)
}

func (e *entity) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	r, err := e.m.c.ListSnapshotsWithResponse(ctx, e.id.Type(), e.id.Base().String())
	if err != nil {
		return nil, fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return nil, apiError(r.StatusCode(), r.Body)
	}
	out := make([]pe.ID, 0, len(r.JSON200.List))
	for _, s := range r.JSON200.List {
		id, err := pe.ParseID(s)
		if err != nil {
			return nil, fmt.Errorf("appliance listed %w", err)
		}
		out = append(out, id)
	}
	return out, nil
}

func (e *entity) DeleteSnapshot(ctx context.Context, snapshot string) error {
	id := e.id.WithSnapshot(snapshot)
	r, err := e.m.c.DeleteProtectedEntityWithResponse(ctx, id.Type(), id.String())
	if err != nil {
		return fmt.Errorf("appliance: %w", err)
	}
	if r.JSON200 == nil {
		return apiError(r.StatusCode(), r.Body)
	}
	return nil
}

func (e *entity) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	return (&entity{m: e.m, id: e.id.WithSnapshot(snapshot)}).Info(ctx)
}

func (e *entity) Components(ctx context.Context) ([]pe.ProtectedEntity, error) {
	info, err := e.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []pe.ProtectedEntity
	for _, c := range info.ComponentSpecs {
		out = append(out, &entity{m: e.m, id: c.ID})
	}
	return out, nil
}

func (e *entity) Data(ctx context.Context) (pe.Image, error) {
	return nil, fmt.Errorf("data of %s: not carried by the REST API; use the appliance's S3 or NBD data path: %w", e.id, pe.ErrNotSupported)
}

func (e *entity) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, fmt.Errorf("metadata of %s: not carried by the REST API; use the appliance's S3 data path: %w", e.id, pe.ErrNotSupported)
}

func (e *entity) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	return fmt.Errorf("overwrite %s: use copy with mode update: %w", e.id, pe.ErrNotSupported)
}

func fromAPIInfo(a api.ProtectedEntityInfo) (pe.Info, error) {
	id, err := pe.ParseID(a.Id)
	if err != nil {
		return pe.Info{}, fmt.Errorf("appliance sent %w", err)
	}
	info := pe.Info{
		ID: id, Name: a.Name, Size: a.Size, Created: a.Created,
		DataTransports:     fromAPITransports(a.DataTransports),
		MetadataTransports: fromAPITransports(a.MetadataTransports),
		CombinedTransports: fromAPITransports(a.CombinedTransports),
		Details:            deref(a.Details),
	}
	for _, c := range a.ComponentSpecs {
		cid, err := pe.ParseID(c.Id)
		if err != nil {
			return pe.Info{}, fmt.Errorf("appliance sent component %w", err)
		}
		info.ComponentSpecs = append(info.ComponentSpecs, pe.ComponentSpec{ID: cid, Server: deref(c.Server)})
	}
	return info, nil
}

func fromAPITransports(ts []api.DataTransport) []pe.Transport {
	var out []pe.Transport
	for _, t := range ts {
		out = append(out, pe.Transport{Type: t.TransportType, Params: deref(t.Params)})
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
