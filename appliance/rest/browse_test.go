package rest

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/api"
)

// TestBrowseFiles lists an fs snapshot's tree a page at a time and reads
// its files whole and in ranges, through the generated client (every
// answer checked against the spec); bad paths, cursors and snapshots
// without a tree are the client's errors.
func TestBrowseFiles(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	snapResp, err := f.client.CreateSnapshotWithResponse(ctx, "fs", "fs:a", api.CreateSnapshotJSONRequestBody{})
	if err != nil || snapResp.JSON200 == nil {
		t.Fatalf("snapshot: %v %s", err, body(snapResp))
	}
	snap := *snapResp.JSON200

	list, err := f.client.ListBrowseSnapshotsWithResponse(ctx, "fs:a")
	if err != nil || list.JSON200 == nil || len(list.JSON200.Snapshots) != 1 || list.JSON200.Snapshots[0].Id != snap ||
		list.JSON200.Snapshots[0].Location != api.Local || list.JSON200.Snapshots[0].Created == nil {
		t.Fatalf("browse snapshots: %v %s", err, body(list))
	}

	// The root a name per page: the pages together are the directory.
	var names []string
	var cursor *string
	one := int32(1)
	for range 20 {
		r, err := f.client.ListSnapshotFilesWithResponse(ctx, snap, &api.ListSnapshotFilesParams{Limit: &one, Cursor: cursor})
		if err != nil || r.JSON200 == nil || len(r.JSON200.Entries) != 1 {
			t.Fatalf("list the root: %v %s", err, body(r))
		}
		names = append(names, r.JSON200.Entries[0].Name+":"+string(r.JSON200.Entries[0].Kind))
		if cursor = r.JSON200.NextCursor; cursor == nil {
			break
		}
	}
	if strings.Join(names, " ") != "README.txt:file data:dir docs:dir empty-dir:dir etc:dir" {
		t.Errorf("root, a page at a time: %v", names)
	}
	docs := "docs"
	r, err := f.client.ListSnapshotFilesWithResponse(ctx, snap, &api.ListSnapshotFilesParams{Path: &docs})
	if err != nil || r.JSON200 == nil || len(r.JSON200.Entries) != 3 || r.JSON200.Entries[0].Name != "README-link" ||
		r.JSON200.Entries[0].LinkTarget == nil || *r.JSON200.Entries[0].LinkTarget != "../README.txt" {
		t.Fatalf("docs: %v %s", err, body(r))
	}

	found, err := f.client.SearchSnapshotFilesWithResponse(ctx, snap, &api.SearchSnapshotFilesParams{Q: "READ"})
	if err != nil || found.JSON200 == nil || len(found.JSON200.Matches) != 2 || found.JSON200.NextCursor != nil {
		t.Fatalf("search READ: %v %s", err, body(found))
	}
	for _, m := range found.JSON200.Matches {
		if m.Path != "README.txt" && m.Path != "docs/README-link" {
			t.Errorf("search READ found %s", m.Path)
		}
	}

	want, err := os.ReadFile(filepath.Join(f.cfgDir, "fs", "a", "data", "random.bin"))
	if err != nil {
		t.Fatal(err)
	}
	p := "data/random.bin"
	whole, err := f.client.DownloadSnapshotFile(ctx, snap, &api.DownloadSnapshotFileParams{Path: &p})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(whole.Body)
	whole.Body.Close()
	if whole.StatusCode != 200 || string(got) != string(want) || !strings.Contains(whole.Header.Get("Content-Disposition"), `filename=random.bin`) {
		t.Errorf("download: %d, %d bytes, %q", whole.StatusCode, len(got), whole.Header.Get("Content-Disposition"))
	}
	part, err := f.client.DownloadSnapshotFile(ctx, snap, &api.DownloadSnapshotFileParams{Path: &p}, func(ctx context.Context, r *http.Request) error {
		r.Header.Set("Range", "bytes=-10")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(part.Body)
	part.Body.Close()
	if part.StatusCode != 206 || string(got) != string(want[len(want)-10:]) {
		t.Errorf("the last 10 bytes: %d, %q", part.StatusCode, got)
	}

	// A folder as a zip, and the whole tree.
	zr := fetchZip(t, f, snap, "docs")
	var zipped []string
	for _, zf := range zr.File {
		zipped = append(zipped, zf.Name)
	}
	if strings.Join(zipped, " ") != "docs/ docs/notes/ docs/notes/todo.md docs/report-2026.txt" {
		t.Errorf("zip of docs: %v", zipped)
	}
	zr = fetchZip(t, f, snap, "")
	rc, err := zr.Open("snapshot/data/random.bin")
	if err != nil {
		t.Fatalf("zip of the root: %v", err)
	}
	got, _ = io.ReadAll(rc)
	if string(got) != string(want) {
		t.Errorf("zip of the root: data/random.bin differs (%d bytes)", len(got))
	}

	base := f.url + "/v1/appliance/browse/" + url.PathEscape(snap)
	for _, c := range []struct {
		path   string
		status int
	}{
		{"/files?path=..", 400},
		{"/files?path=" + url.QueryEscape("docs/../.."), 400},
		{"/files?path=" + url.QueryEscape("/etc"), 400},
		{"/files?path=docs%2F", 400},
		{"/files?path=README.txt", 400}, // not a directory
		{"/files?path=nothing", 404},
		{"/files?cursor=%21%21", 400},
		{"/files?limit=0", 400},
		{"/files?location=elsewhere", 400},
		{"/files?location=repository", 501}, // no repository here
		{"/content?path=" + url.QueryEscape("../../../../etc/passwd"), 400},
		{"/content?path=docs", 400},               // a directory
		{"/content?path=docs%2FREADME-link", 400}, // a symlink
		{"/content?path=docs%2Fnothing", 404},
		{"/content", 400}, // the root
		{"/zip?path=README.txt", 400},
		{"/zip?path=..", 400},
		{"/zip?path=nothing", 404},
		{"/search", 400}, // no q
		{"/search?q=" + strings.Repeat("x", 256), 400},
		{"/search?q=x&cursor=zz", 400},
	} {
		resp := f.get(t, base+c.path)
		if resp.StatusCode != c.status {
			t.Errorf("GET %s: %d, want %d", c.path, resp.StatusCode, c.status)
		}
	}
	// A live PE's ID and a disk snapshot have no tree to browse.
	if resp := f.get(t, f.url+"/v1/appliance/browse/fs%3Aa/files"); resp.StatusCode != 400 {
		t.Errorf("files of a live PE: %d, want 400", resp.StatusCode)
	}
	disk, err := f.client.CreateSnapshotWithResponse(ctx, "disk", "disk:sample.img", api.CreateSnapshotJSONRequestBody{})
	if err != nil || disk.JSON200 == nil {
		t.Fatalf("snapshot the disk: %v %s", err, body(disk))
	}
	if resp := f.get(t, f.url+"/v1/appliance/browse/"+url.PathEscape(*disk.JSON200)+"/files"); resp.StatusCode != 400 {
		t.Errorf("files of a disk snapshot: %d, want 400", resp.StatusCode)
	}
	if resp := f.get(t, f.url+"/v1/appliance/browse/fs%3Anone/snapshots"); resp.StatusCode != 404 {
		t.Errorf("snapshots of no PE: %d, want 404", resp.StatusCode)
	}
}

// get makes a GET with the bearer token and reads the answer.
func (f *fixture) get(t *testing.T, u string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := f.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestSessions: the token logs in to a session cookie with the flags,
// the cookie opens the API for safe methods and, with the CSRF token, for
// the others; logout ends it.
func TestSessions(t *testing.T) {
	f := newFixture(t)
	do := func(method, path, body string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, f.url+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := f.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, b := range []string{`{"token":"wrong"}`, `{"token":""}`, `{}`, `not json`} {
		if resp := do("POST", "/v1/session", b); resp.StatusCode/100 != 4 || resp.Header.Get("Set-Cookie") != "" {
			t.Errorf("login with %s: %d, Set-Cookie %q", b, resp.StatusCode, resp.Header.Get("Set-Cookie"))
		}
	}
	resp := do("POST", "/v1/session", `{"token":"`+token+`"}`)
	if resp.StatusCode != 200 || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	c := resp.Cookies()[0]
	if c.Name != "__Host-astrolabe_session" || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" {
		t.Errorf("session cookie %+v: want __Host-astrolabe_session, Secure, HttpOnly, SameSite=Strict, Path=/, no Domain", c)
	}
	cookie := c.Name + "=" + c.Value

	sess := do("GET", "/v1/session", "", "Cookie", cookie)
	var s api.Session
	if err := json.NewDecoder(sess.Body).Decode(&s); err != nil || s.CsrfToken == "" || s.Expires.Before(time.Now().Add(7*time.Hour)) {
		t.Fatalf("get session: %d %v %+v", sess.StatusCode, err, s)
	}
	if resp := do("GET", "/v1/astrolabe", "", "Cookie", cookie); resp.StatusCode != 200 {
		t.Errorf("GET with the cookie: %d", resp.StatusCode)
	}
	if resp := do("GET", "/v1/astrolabe", "", "Cookie", sessionCookie+"=forged"); resp.StatusCode != 401 {
		t.Errorf("GET with a forged cookie: %d, want 401", resp.StatusCode)
	}
	// The bearer token still opens the API; a wrong one is not saved by
	// a good cookie.
	if resp := do("GET", "/v1/astrolabe", "", "Authorization", "Bearer wrong", "Cookie", cookie); resp.StatusCode != 401 {
		t.Errorf("a wrong bearer token beside the cookie: %d, want 401", resp.StatusCode)
	}
	if resp := do("GET", "/v1/session", "", "Authorization", "Bearer "+token); resp.StatusCode != 401 {
		t.Errorf("get session with the bearer token alone: %d, want 401", resp.StatusCode)
	}
	for _, csrf := range []string{"", "wrong"} {
		if resp := do("POST", "/v1/astrolabe/fs/fs%3Aa/snapshots", "", "Cookie", cookie, csrfHeader, csrf); resp.StatusCode != 403 {
			t.Errorf("POST with the cookie and CSRF token %q: %d, want 403", csrf, resp.StatusCode)
		}
	}
	if resp := do("POST", "/v1/astrolabe/fs/fs%3Aa/snapshots", "", "Cookie", cookie, csrfHeader, s.CsrfToken); resp.StatusCode != 200 {
		t.Errorf("POST with the cookie and its CSRF token: %d", resp.StatusCode)
	}
	if resp := do("DELETE", "/v1/session", "", "Cookie", cookie); resp.StatusCode != 403 {
		t.Errorf("logout without the CSRF token: %d, want 403", resp.StatusCode)
	}
	out := do("DELETE", "/v1/session", "", "Cookie", cookie, csrfHeader, s.CsrfToken)
	if out.StatusCode != 204 || len(out.Cookies()) != 1 || out.Cookies()[0].MaxAge >= 0 {
		t.Errorf("logout: %d, cookies %v", out.StatusCode, out.Cookies())
	}
	if resp := do("GET", "/v1/astrolabe", "", "Cookie", cookie); resp.StatusCode != 401 {
		t.Errorf("GET with the cookie after logout: %d, want 401", resp.StatusCode)
	}
}

func TestSessionsExpireAndAreBounded(t *testing.T) {
	ss := newSessions(time.Hour, 3)
	now := time.Unix(1_700_000_000, 0)
	first, _ := ss.create(now)
	if _, ok := ss.get(first, now.Add(59*time.Minute)); !ok {
		t.Fatal("a session is gone before its hour")
	}
	if _, ok := ss.get(first, now.Add(time.Hour)); ok {
		t.Fatal("a session outlived its hour")
	}
	var ids []string
	for i := range 4 {
		id, _ := ss.create(now.Add(time.Duration(i) * time.Second))
		ids = append(ids, id)
	}
	if _, ok := ss.get(ids[0], now.Add(5*time.Second)); ok || len(ss.byID) != 3 {
		t.Errorf("over the bound: the oldest session stays (%d kept)", len(ss.byID))
	}
	if _, ok := ss.get(ids[3], now.Add(5*time.Second)); !ok {
		t.Error("the newest session is gone")
	}
}

// fetchZip downloads a folder of snapshot snap as a zip.
func fetchZip(t *testing.T, f *fixture, snap, dir string) *zip.Reader {
	t.Helper()
	resp, err := f.client.DownloadSnapshotFolder(context.Background(), snap, &api.DownloadSnapshotFolderParams{Path: &dir})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/zip" {
		t.Fatalf("zip of %q: %d %v", dir, resp.StatusCode, err)
	}
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("zip of %q: %v", dir, err)
	}
	return zr
}

// TestZipLeavesOutUnsafeNames: names legal on Linux that Windows
// extractors would take for separators, drives or streams ("\", ":"),
// and names with control characters, are left out of a folder's zip,
// with what is below them; the rest of the folder is there.
func TestZipLeavesOutUnsafeNames(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tree := filepath.Join(f.cfgDir, "fs", "b")
	for _, p := range []string{`sub/..\..\evil.bat`, "sub/c:evil.txt", "sub/bell\a.txt", `bad\dir/inside.txt`, "sub/kept.txt"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tree, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snapResp, err := f.client.CreateSnapshotWithResponse(ctx, "fs", "fs:b", api.CreateSnapshotJSONRequestBody{})
	if err != nil || snapResp.JSON200 == nil {
		t.Fatalf("snapshot: %v %s", err, body(snapResp))
	}
	var names []string
	for _, zf := range fetchZip(t, f, *snapResp.JSON200, "").File {
		if strings.ContainsAny(zf.Name, "\\:\a") {
			t.Errorf("zip entry %q", zf.Name)
		}
		names = append(names, zf.Name)
	}
	joined := strings.Join(names, " ")
	if !strings.Contains(joined, "snapshot/sub/kept.txt") || !strings.Contains(joined, "snapshot/README.txt") {
		t.Errorf("zip of the root: %v", names)
	}
	if strings.Contains(joined, "inside.txt") {
		t.Errorf("what is below a directory left out is in the zip: %v", names)
	}
	// A folder whose own name is unsafe: its zip is named snapshot.
	var inside []string
	for _, zf := range fetchZip(t, f, *snapResp.JSON200, `bad\dir`).File {
		inside = append(inside, zf.Name)
	}
	if strings.Join(inside, " ") != "snapshot/ snapshot/inside.txt" {
		t.Errorf(`zip of bad\dir: %v`, inside)
	}
}

// TestLRUBound: the cache keeps what was used last within its bound in
// cost, and keeps nothing costlier than the bound.
func TestLRUBound(t *testing.T) {
	c := newLRU(5, func(names []string) int { return len(names) })
	c.put("a", []string{"1", "2"})
	c.put("b", []string{"1", "2"})
	c.get("a")
	c.put("c", []string{"1", "2"}) // over 5: b, the least recently used, goes
	if _, ok := c.get("b"); ok {
		t.Error("b stayed over the bound")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.get(k); !ok {
			t.Errorf("%s went", k)
		}
	}
	c.put("huge", make([]string, 6))
	if _, ok := c.get("huge"); ok || c.total != 4 {
		t.Errorf("an entry over the bound: kept %v, total %d", ok, c.total)
	}
}

// TestBadPathMessages: a bad path's error says what is wrong with the
// path the client sent, whole (not an absolute path cut to its last
// element by the API's redaction).
func TestBadPathMessages(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	snapResp, err := f.client.CreateSnapshotWithResponse(ctx, "fs", "fs:a", api.CreateSnapshotJSONRequestBody{})
	if err != nil || snapResp.JSON200 == nil {
		t.Fatalf("snapshot: %v %s", err, body(snapResp))
	}
	for p, want := range map[string]string{
		"/etc/passwd":      "path starts with a slash",
		"docs/":            "path ends with a slash",
		"docs//notes":      "empty element",
		"docs/../../etc":   `a ".." element`,
		"./docs":           `a "." element`,
		"docs/\x00/passwd": "NUL byte",
	} {
		r, err := f.client.DownloadSnapshotFileWithResponse(ctx, *snapResp.JSON200, &api.DownloadSnapshotFileParams{Path: &p})
		if err != nil || r.StatusCode() != 400 || r.JSON400 == nil {
			t.Fatalf("path %q: %v %d", p, err, r.StatusCode())
		}
		if !strings.Contains(r.JSON400.Message, want) {
			t.Errorf("path %q: %q, want %q in it", p, r.JSON400.Message, want)
		}
	}
}
