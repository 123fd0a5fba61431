package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// recorder wraps a manager and records the options of the copies made.
type recorder struct {
	pe.Manager
	mu   sync.Mutex
	opts []pe.CopyOptions
}

type recordingType struct {
	pe.TypeManager
	r *recorder
}

func (r *recorder) Type(ctx context.Context, name string) (pe.TypeManager, error) {
	tm, err := r.Manager.Type(ctx, name)
	if err != nil {
		return nil, err
	}
	return recordingType{tm, r}, nil
}

func (t recordingType) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	t.r.mu.Lock()
	t.r.opts = append(t.r.opts, opts)
	t.r.mu.Unlock()
	return t.TypeManager.Copy(ctx, src, opts)
}

// fakeExports records the exports stopped.
type fakeExports struct {
	mu      sync.Mutex
	exports []NBDExport
	stopped []pe.ID
}

func (e *fakeExports) Exports() []NBDExport {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]NBDExport(nil), e.exports...)
}

func (e *fakeExports) StartExport(ctx context.Context, id pe.ID, writable bool) (NBDExport, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x := NBDExport{ID: id, URI: "nbd://x/" + id.String()}
	e.exports = append(e.exports, x)
	return x, nil
}

func (e *fakeExports) StopExport(ctx context.Context, id pe.ID, keep bool, _ pe.Progress) (pe.ID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopped = append(e.stopped, id)
	return pe.ID{}, nil
}

// fakeMounts records the mount requests.
type fakeMounts struct{ reqs []MountRequest }

func (m *fakeMounts) Mounts() []Mount { return nil }
func (m *fakeMounts) Mount(ctx context.Context, req MountRequest) (Mount, error) {
	m.reqs = append(m.reqs, req)
	return Mount{ID: "m", Path: req.Path, AllowOther: req.AllowOther}, nil
}
func (m *fakeMounts) Unmount(ctx context.Context, id string) error { return nil }

type secFixture struct {
	*fixture
	rec     *recorder
	exports *fakeExports
	mounts  *fakeMounts
	deleted []pe.ID
	logs    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newSecFixture(t *testing.T) *secFixture {
	t.Helper()
	base := newFixture(t)
	sf := &secFixture{rec: &recorder{Manager: base.m}, exports: &fakeExports{}, mounts: &fakeMounts{}, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(sf.logs, nil))
	tm := tasks.NewManager(tasks.Options{Logger: log})
	srv := httptest.NewServer(NewHandler(Config{UseCases: useCases(t, sf.rec), Tasks: tm, Logger: log, Token: token,
		Exports: sf.exports, Mounts: sf.mounts, SnapshotDeleted: func(id pe.ID) { sf.deleted = append(sf.deleted, id) }}))
	t.Cleanup(srv.Close)
	c, err := api.NewClientWithResponses(srv.URL, api.WithHTTPClient(base.http), api.WithRequestEditorFn(func(ctx context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+token)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	base.url, base.client, base.tasks = srv.URL, c, tm
	sf.fixture = base
	return sf
}

func (f *secFixture) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSecurityKeepPrivileges(t *testing.T) {
	f := newSecFixture(t)
	ctx := context.Background()
	p, _ := f.m.Get(ctx, mustID(t, "fs:a"))
	snap, err := p.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []bool{false, true} {
		body, _ := json.Marshal(api.CopyParameters{ProtectedEntityInfo: api.ProtectedEntityInfo{Id: snap.String()}, KeepPrivileges: &keep})
		code, out := f.do(t, http.MethodPost, "/v1/astrolabe/fs?mode=create_new", string(body))
		if code != http.StatusAccepted {
			t.Fatalf("copy: %d %s", code, out)
		}
		var r api.CreateInProgressResponse
		json.Unmarshal([]byte(out), &r)
		if ti := f.waitTask(t, r.TaskID); ti.Status != api.Success {
			t.Fatalf("copy task: %+v", ti)
		}
	}
	if len(f.rec.opts) != 2 || f.rec.opts[0].KeepPrivileges || !f.rec.opts[1].KeepPrivileges {
		t.Errorf("copy options: %+v", f.rec.opts)
	}
	logs := f.logs.String()
	if n := strings.Count(logs, "keeps privileges"); n != 1 || !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "request.remote=127.0.0.1") {
		t.Errorf("want one WARN line naming the caller, got %d in:\n%s", n, logs)
	}
}

func TestSecurityLongIDAndPaths(t *testing.T) {
	f := newSecFixture(t)
	long := "disk:" + strings.Repeat("a", 300) + ".img"
	for _, path := range []string{"/v1/astrolabe/disk/" + long, "/v1/astrolabe/disk/" + long + "/snapshots"} {
		code, out := f.do(t, http.MethodGet, path, "")
		if code != http.StatusBadRequest {
			t.Errorf("GET %s...: %d %s, want 400", path[:40], code, out)
		}
		if strings.Contains(out, f.cfgDir) || strings.Contains(out, "/tmp/") {
			t.Errorf("error shows a server path: %s", out)
		}
	}
}

// The long poll's waitTime is capped before it becomes a duration: the
// largest int64 waits (for the task) instead of overflowing to no wait.
func TestSecurityNexusWaitOverflow(t *testing.T) {
	f := newSecFixture(t)
	code, out := f.do(t, http.MethodPost, "/v1/astrolabe/tasks/nexus", "")
	if code != http.StatusOK {
		t.Fatal(code, out)
	}
	var nx string
	json.Unmarshal([]byte(out), &nx)
	release := make(chan struct{})
	waited := make(chan string)
	go func() {
		_, out := f.do(t, http.MethodGet, "/v1/astrolabe/tasks/nexus/"+nx+"?lastFinishedNS=0&waitTime=9223372036854775807", "")
		waited <- out
	}()
	if _, err := f.tasks.Start(context.Background(), "t", "", nx, func(ctx context.Context, _ pe.Progress) (map[string]string, error) {
		<-release
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	close(release)
	var r api.TaskNexusResponse
	if err := json.Unmarshal([]byte(<-waited), &r); err != nil || len(r.Finished) != 1 {
		t.Errorf("long poll with waitTime=MaxInt64 returned %+v %v before the task finished", r, err)
	}
	if nexusWait(math.MaxInt64) != maxNexusWait || nexusWait(10) != 10*1e6 {
		t.Error("nexusWait")
	}
}

func TestSecurityDeleteStopsExport(t *testing.T) {
	f := newSecFixture(t)
	ctx := context.Background()
	p, _ := f.m.Get(ctx, mustID(t, "disk:sample.img"))
	snap, _ := p.Snapshot(ctx, nil)
	f.exports.StartExport(ctx, snap, false)
	code, out := f.do(t, http.MethodDelete, "/v1/astrolabe/disk/"+snap.String(), "")
	if code != http.StatusOK {
		t.Fatal(code, out)
	}
	if len(f.exports.stopped) != 1 || f.exports.stopped[0] != snap || len(f.deleted) != 1 || f.deleted[0] != snap {
		t.Errorf("after delete: stopped %v, forgotten %v", f.exports.stopped, f.deleted)
	}
}

func TestSecurityMountForce(t *testing.T) {
	f := newSecFixture(t)
	for _, body := range []string{`{"path":"a"}`, `{"path":"b","force":true,"allowOther":true}`} {
		if code, out := f.do(t, http.MethodPost, "/v1/appliance/mounts", body); code != http.StatusOK {
			t.Fatal(code, out)
		}
	}
	want := []MountRequest{{Path: "a"}, {Path: "b", Force: true, AllowOther: true}}
	if len(f.mounts.reqs) != 2 || f.mounts.reqs[0] != want[0] || f.mounts.reqs[1] != want[1] {
		t.Errorf("mount requests %+v, want %+v", f.mounts.reqs, want)
	}
}

func mustID(t *testing.T, s string) pe.ID {
	t.Helper()
	id, err := pe.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestStatusOfRefusedInput(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("copy: %w", pe.ErrLimit), http.StatusRequestEntityTooLarge},
		{fmt.Errorf("copy: %w", pe.ErrInvalidSource), http.StatusBadRequest},
		{fmt.Errorf("get: %w", syscall.ENAMETOOLONG), http.StatusBadRequest},
		{fmt.Errorf("nexus: %w", tasks.ErrTooMany), http.StatusTooManyRequests},
	} {
		if got := statusOf(tc.err); got != tc.want {
			t.Errorf("%v: %d, want %d", tc.err, got, tc.want)
		}
	}
}

// TestSecurityErrorsAreNotPages: the API's answers, errors included
// (refused credentials, no such endpoint, a bad path), tell browsers not
// to sniff them and to load nothing from them.
func TestSecurityErrorsAreNotPages(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		path, auth string
		status     int
	}{
		{"/v1/astrolabe", "", 401},
		{"/v1/no-such-endpoint", "Bearer " + token, 404},
		{"/v1/appliance/browse/fs:a@x/content?path=%2Fetc%2Fpasswd", "Bearer " + token, 400},
	} {
		req, _ := http.NewRequest("GET", f.url+c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status || resp.Header.Get("X-Content-Type-Options") != "nosniff" ||
			!strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("GET %s: %d, nosniff %q, CSP %q", c.path, resp.StatusCode,
				resp.Header.Get("X-Content-Type-Options"), resp.Header.Get("Content-Security-Policy"))
		}
	}
}
