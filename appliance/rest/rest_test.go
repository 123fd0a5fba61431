package rest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

const token = "test-token"

type fixture struct {
	cfgDir string
	m      pe.Manager
	tasks  *tasks.Manager
	url    string
	client *api.ClientWithResponses
	// http is the client of the tests that make their own requests; it
	// and client check every answer against the spec.
	http *http.Client
	spec *specChecker
}

// useCases are the use cases over m, without repository, NBD or mounts.
func useCases(t *testing.T, m pe.Manager) *usecase.Service {
	t.Helper()
	uc, err := usecase.New(usecase.Config{Manager: m})
	if err != nil {
		t.Fatal(err)
	}
	return uc
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, tasks.Options{})
}

// newFixtureWith is newFixture with a task manager of the given options.
func newFixtureWith(t *testing.T, opts tasks.Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	if err := config.Init(dir); err != nil {
		t.Fatal(err)
	}
	// Five small trees for paging, and the sample disk for copies.
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		if err := samples.WriteTree(filepath.Join(dir, "fs", n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := samples.WriteDisk(context.Background(), filepath.Join(dir, "disk", "sample.img"), filepath.Join(dir, "fs", "a")); err != nil {
		t.Fatal(err)
	}
	m, err := config.Load(dir, config.Factories())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Logger = log
	tm := tasks.NewManager(opts)
	srv := httptest.NewServer(NewHandler(Config{UseCases: useCases(t, m), Tasks: tm, Logger: log, Version: "test", Token: token}))
	t.Cleanup(srv.Close)
	spec := newSpecChecker(t)
	t.Cleanup(func() { spec.report(t) })
	hc := &http.Client{Transport: spec}
	c, err := api.NewClientWithResponses(srv.URL, api.WithHTTPClient(hc), api.WithRequestEditorFn(func(ctx context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+token)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{cfgDir: dir, m: m, tasks: tm, url: srv.URL, client: c, http: hc, spec: spec}
}

// waitTask polls a task until it finishes.
func (f *fixture) waitTask(t *testing.T, id string) api.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		r, err := f.client.GetTaskInfoWithResponse(context.Background(), id)
		if err != nil || r.JSON200 == nil {
			t.Fatalf("get task %s: %v %s", id, err, body(r))
		}
		if r.JSON200.Completed {
			return *r.JSON200
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("task %s did not finish", id)
	return api.TaskInfo{}
}

func body(r any) string {
	if r == nil {
		return ""
	}
	switch v := r.(type) {
	case *api.GetTaskInfoResponse:
		if v != nil {
			return string(v.Body)
		}
	}
	return fmt.Sprintf("%+v", r)
}

func TestAPI(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client

	h, err := c.HealthWithResponse(ctx)
	if err != nil || h.JSON200 == nil || h.JSON200.Status != "ok" {
		t.Fatalf("health: %v %+v", err, h)
	}
	sv, err := c.ListServicesWithResponse(ctx)
	if err != nil || sv.JSON200 == nil || strings.Join(sv.JSON200.Services, ",") != "disk,fs" {
		t.Fatalf("services: %v %+v", err, sv)
	}

	// Paging: 2 at a time through a..e.
	var all []string
	after := ""
	for page := 0; page < 10; page++ {
		max := int32(2)
		params := &api.ListProtectedEntitiesParams{MaxResults: &max}
		if after != "" {
			params.IdsAfter = &after
		}
		r, err := c.ListProtectedEntitiesWithResponse(ctx, "fs", params)
		if err != nil || r.JSON200 == nil {
			t.Fatalf("list: %v %s", err, r.Body)
		}
		all = append(all, r.JSON200.List...)
		if !r.JSON200.Truncated {
			break
		}
		if len(r.JSON200.List) != 2 {
			t.Fatalf("truncated page of %d", len(r.JSON200.List))
		}
		after = r.JSON200.List[len(r.JSON200.List)-1]
	}
	if got := strings.Join(all, " "); got != "fs:a fs:b fs:c fs:d fs:e" {
		t.Errorf("paged list: %s", got)
	}

	// Snapshots: create, list, info, delete.
	sn, err := c.CreateSnapshotWithResponse(ctx, "fs", "fs:a", nil)
	if err != nil || sn.JSON200 == nil {
		t.Fatalf("snapshot: %v %s", err, sn.Body)
	}
	snap := *sn.JSON200
	ls, err := c.ListSnapshotsWithResponse(ctx, "fs", "fs:a")
	if err != nil || ls.JSON200 == nil || len(ls.JSON200.List) != 1 || ls.JSON200.List[0] != snap {
		t.Fatalf("list snapshots: %v %s", err, ls.Body)
	}
	info, err := c.GetProtectedEntityInfoWithResponse(ctx, "fs", snap)
	if err != nil || info.JSON200 == nil || info.JSON200.Id != snap || info.JSON200.Created == nil || info.JSON200.Size <= 0 {
		t.Fatalf("info: %v %s", err, info.Body)
	}

	// Copy with each mode, waited for through a nexus.
	nx, err := c.CreateTaskNexusWithResponse(ctx)
	if err != nil || nx.JSON200 == nil {
		t.Fatalf("nexus: %v", err)
	}
	nexus := *nx.JSON200
	cp, err := c.CopyProtectedEntityWithResponse(ctx, "fs", &api.CopyProtectedEntityParams{Mode: "create_new", Nexus: &nexus},
		api.CopyParameters{ProtectedEntityInfo: api.ProtectedEntityInfo{Id: snap}})
	if err != nil || cp.JSON202 == nil {
		t.Fatalf("copy: %v %s", err, cp.Body)
	}
	w, err := c.WaitTaskNexusWithResponse(ctx, nexus, &api.WaitTaskNexusParams{WaitTime: 30000, LastFinishedNS: 0})
	if err != nil || w.JSON200 == nil || len(w.JSON200.Finished) != 1 {
		t.Fatalf("nexus wait: %v %s", err, w.Body)
	}
	done := w.JSON200.Finished[0]
	if done.Id != cp.JSON202.TaskID || done.Status != api.Success || done.Result == nil || !strings.HasPrefix((*done.Result)["id"], "fs:a-") {
		t.Fatalf("copy task: %+v", done)
	}
	// Nothing newer: the long poll waits, then returns nothing.
	start := time.Now()
	w, err = c.WaitTaskNexusWithResponse(ctx, nexus, &api.WaitTaskNexusParams{WaitTime: 200, LastFinishedNS: *done.FinishedTimeNS})
	if err != nil || w.JSON200 == nil || len(w.JSON200.Finished) != 0 || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("empty nexus wait: %v %s after %v", err, w.Body, time.Since(start))
	}
	nl, err := c.ListTaskNexusWithResponse(ctx)
	if err != nil || nl.JSON200 == nil || len(*nl.JSON200) != 1 || (*nl.JSON200)[0].AssociatedTasks[0] != done.Id {
		t.Fatalf("nexus list: %v %s", err, nl.Body)
	}

	// create from a live PE: snapshotted first; the name exists, so it fails.
	cp, _ = c.CopyProtectedEntityWithResponse(ctx, "fs", &api.CopyProtectedEntityParams{Mode: "create"},
		api.CopyParameters{ProtectedEntityInfo: api.ProtectedEntityInfo{Id: "fs:b"}})
	if ti := f.waitTask(t, cp.JSON202.TaskID); ti.Status != api.Failed || !strings.Contains(*ti.Details, "exists") {
		t.Errorf("create over an existing PE: %+v", ti)
	}
	// update overwrites fs:b with fs:a's snapshot.
	os.WriteFile(filepath.Join(f.cfgDir, "fs", "b", "extra.txt"), []byte("goes away"), 0o644)
	cp, _ = c.CopyProtectedEntityWithResponse(ctx, "fs", &api.CopyProtectedEntityParams{Mode: "update"},
		api.CopyParameters{ProtectedEntityInfo: api.ProtectedEntityInfo{Id: snap}, CopyParams: &api.OperationParamList{}})
	if cp.JSON202 == nil {
		t.Fatalf("update copy: %s", cp.Body)
	}
	// update targets the source's name: fs:a itself here.
	if ti := f.waitTask(t, cp.JSON202.TaskID); ti.Status != api.Success || (*ti.Result)["id"] != "fs:a" {
		t.Errorf("update: %+v", ti)
	}
	// Disk copy with progress reported.
	cp, _ = c.CopyProtectedEntityWithResponse(ctx, "disk", &api.CopyProtectedEntityParams{Mode: "create_new"},
		api.CopyParameters{ProtectedEntityInfo: api.ProtectedEntityInfo{Id: "disk:sample.img"}})
	if ti := f.waitTask(t, cp.JSON202.TaskID); ti.Status != api.Success || ti.Progress != 100 {
		t.Errorf("disk copy: %+v", ti)
	}

	// Cancel really stops the work.
	started := make(chan struct{})
	ti, err := f.tasks.Start(context.Background(), "test", "waits for cancel", "", func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if r, err := c.CancelTaskWithResponse(ctx, ti.ID); err != nil || r.JSON200 == nil {
		t.Fatalf("cancel: %v %s", err, r.Body)
	}
	if got := f.waitTask(t, ti.ID); got.Status != api.Cancelled {
		t.Errorf("cancelled task: %+v", got)
	}
	tl, err := c.ListTasksWithResponse(ctx)
	if err != nil || tl.JSON200 == nil || len(*tl.JSON200) != 5 {
		t.Errorf("task list: %v %s", err, tl.Body)
	}

	del, err := c.DeleteProtectedEntityWithResponse(ctx, "fs", snap)
	if err != nil || del.JSON200 == nil || *del.JSON200 != snap {
		t.Fatalf("delete: %v %s", err, del.Body)
	}
	if info, _ := c.GetProtectedEntityInfoWithResponse(ctx, "fs", snap); info.StatusCode() != http.StatusNotFound || info.JSON404 == nil || info.JSON404.Code != 404 {
		t.Errorf("info of a deleted snapshot: %d %s", info.StatusCode(), info.Body)
	}
}

func TestAPIErrors(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	do := func(method, path, tok, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, f.url+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := f.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s %s: content type %q: %s", method, path, ct, b)
		}
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		method, path, token, body string
		status                    int
		msg                       string
	}{
		{"GET", "/v1/astrolabe", "", "", 401, "bearer token"},
		{"GET", "/v1/astrolabe", "wrong", "", 401, "bearer token"},
		{"GET", "/healthz", "", "", 200, "ok"},
		{"GET", "/v1/astrolabe/nosuch", token, "", 404, "nosuch"},
		{"GET", "/v1/astrolabe/fs/" + url.PathEscape("fs:a:b:c"), token, "", 400, "invalid PE ID"},
		{"GET", "/v1/astrolabe/fs/" + url.PathEscape("disk:sample.img"), token, "", 400, "not of service"},
		{"GET", "/v1/astrolabe/fs/" + url.PathEscape("fs:zzz"), token, "", 404, "not found"},
		{"GET", "/v1/astrolabe/fs?maxResults=0", token, "", 400, "maxResults"},
		{"GET", "/v1/astrolabe/fs?maxResults=abc", token, "", 400, "maxResults"},
		{"DELETE", "/v1/astrolabe/fs/" + url.PathEscape("fs:a"), token, "", 400, "only snapshots"},
		{"POST", "/v1/astrolabe/fs?mode=create_new", token, "{not json", 400, ""},
		{"POST", "/v1/astrolabe/fs?mode=sideways", token, `{"protectedEntityInfo":{"id":"fs:a"}}`, 400, "mode"},
		{"POST", "/v1/astrolabe/fs?mode=create_new", token, `{"protectedEntityInfo":{"id":"fs:nope"}}`, 404, "not found"},
		{"POST", "/v1/astrolabe/fs?mode=create_new", token, `{"protectedEntityInfo":{"id":"` + strings.Repeat("x", 2<<20) + `"}}`, 413, "too large"},
		{"GET", "/v1/astrolabe/tasks/task-nope", token, "", 404, "not found"},
		{"GET", "/v1/astrolabe/tasks/nexus/nexus-nope?waitTime=1&lastFinishedNS=0", token, "", 404, "not found"},
		{"GET", "/v1/appliance/nbd/exports", token, "", 501, "not configured"},
		{"PATCH", "/v1/astrolabe", token, "", 405, "not allowed"},
		{"GET", "/nothing/here", token, "", 404, "no such endpoint"},
	} {
		status, b := do(tc.method, tc.path, tc.token, tc.body)
		if status != tc.status || !strings.Contains(b, tc.msg) || (status >= 400 && !strings.Contains(b, `"code":`)) {
			t.Errorf("%s %.60s: %d %.200s; want %d with %q", tc.method, tc.path, status, b, tc.status, tc.msg)
		}
	}
	// The server still serves.
	if status, _ := do("GET", "/v1/astrolabe/fs", token, ""); status != 200 {
		t.Errorf("after bad requests: %d", status)
	}
}

// TestAPILoad runs 50 clients for 20 s (2 s with -short) against info and
// list calls: no errors. Requests per second are logged for the record.
func TestAPILoad(t *testing.T) {
	f := newFixture(t)
	const clients = 50
	duration := 20 * time.Second
	if testing.Short() {
		duration = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var (
		mu       sync.Mutex
		requests int
		errs     []error
		wg       sync.WaitGroup
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for ctx.Err() == nil && n < 100000 {
				var err error
				if i%2 == 0 {
					var r *api.ListProtectedEntitiesResponse
					r, err = f.client.ListProtectedEntitiesWithResponse(ctx, "fs", nil)
					if err == nil && r.JSON200 == nil {
						err = fmt.Errorf("list: %d", r.StatusCode())
					}
				} else {
					var r *api.GetProtectedEntityInfoResponse
					r, err = f.client.GetProtectedEntityInfoWithResponse(ctx, "disk", "disk:sample.img")
					if err == nil && r.JSON200 == nil {
						err = fmt.Errorf("info: %d", r.StatusCode())
					}
				}
				if err != nil && ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
					break
				}
				mu.Lock()
				requests++
				if err != nil && len(errs) < 10 {
					errs = append(errs, err)
				}
				mu.Unlock()
				n++
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d clients: errors: %v", clients, errs)
	}
	t.Logf("%d clients: %d requests in %v (%.0f/s)", clients, requests, duration, float64(requests)/duration.Seconds())
	if requests == 0 {
		t.Error("no request completed")
	}
}
