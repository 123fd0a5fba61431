package main

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// webPE writes the fs PE the web test browses: a file of a few MiB at the
// end of a directory longer than one page of the page's listing.
func webPE(t *testing.T, cfg string) (target []byte) {
	t.Helper()
	root := filepath.Join(cfg, "fs", "docs")
	big := filepath.Join(root, "big")
	if err := os.MkdirAll(big, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 450 {
		if err := os.WriteFile(filepath.Join(big, fmt.Sprintf("f%03d", i)), []byte(fmt.Sprintln(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	target = make([]byte, 3<<20+12345)
	rng := rand.New(rand.NewPCG(19, 19))
	for i := range target {
		target[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(big, "target.bin"), target, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "readme.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return target
}

// chromium is Debian's, the browser the web test drives.
func chromium(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium missing: run scripts/deps.d/web.sh (apt-get install chromium)")
	}
	return p
}

// screenshots is where the web test saves a screenshot of each step:
// $ASTROLABE_WEB_SCREENSHOTS (CI keeps it as an artifact), else a new
// directory under the system's temporary one, kept after the test.
func screenshots(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ASTROLABE_WEB_SCREENSHOTS")
	var err error
	if dir == "" {
		dir, err = os.MkdirTemp("", "astrolabe-web-screenshots-")
	} else {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots of each step in %s", dir)
	return dir
}

// TestWebFileRecovery drives the web page in Debian's chromium against a
// running appliance: a wrong token stays on the login; the right one
// browses PE types, PEs, snapshots and the paged directory of a snapshot
// in an S3 repository (versitygw) down to a file and downloads it (its
// sha256 is the source's) and its folder as a zip (the listing is the
// source's), finds it by name, then downloads a file inside the ext4
// partition of a disk snapshot, and logs out. Beside the browser, a plain client checks what
// the page relies on: the cookie's flags, CSRF, Range, path traversal and
// the CSP.
func TestWebFileRecovery(t *testing.T) {
	exe := chromium(t)
	shots := screenshots(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	target := webPE(t, cfg)
	disk := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	// The repository on a real S3 server (versitygw).
	s3 := startVersitygw(t)
	repo := "s3+http://" + s3.endpoint + "/backups/web"
	mustRun(t, cfg, "repo", "init", "--repo", repo, "--insecure-no-password")
	backedUp := mustRun(t, cfg, "backup", "--repo", repo, "fs:docs").lastLine()
	local := mustRun(t, cfg, "snap", "fs:docs").lastLine()
	a := startServe(t, cfg, "--repo", repo)
	token := a.info["token"]
	checkWebAPI(t, a, token, backedUp, target)

	alloc, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1200, 900), chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.Flag("disable-dev-shm-usage", true))
	defer cancel()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	go func() {
		for ev, err := range chromedp.Events(ctx, runtime.ExceptionThrown) {
			if err != nil {
				return
			}
			t.Errorf("the page threw: %+v", ev.ExceptionDetails)
		}
	}()
	// Each step is bounded; the whole walk takes seconds.
	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("%s: screenshot: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	visible := func(sel string) bool {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { const e = document.querySelector(`+jsString(sel)+`); return e !== null && e.getClientRects().length > 0; })()`))
		if err != nil {
			t.Fatalf("is %s visible: %v", sel, err)
		}
		return v
	}

	start := time.Now()
	step("01-login", chromedp.Navigate(a.base()+"/"), chromedp.WaitVisible(chromedp.ID("token")))

	step("02-wrong-token",
		chromedp.SendKeys(chromedp.ID("token"), "not-the-token"),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#login-error:not(:empty)")))
	if msg := text("#login-error"); !strings.Contains(msg, "Login refused") || visible("#browser") || !visible("#token") {
		t.Fatalf("a wrong token: message %q, browser shown %v", msg, visible("#browser"))
	}

	step("03-pe-types",
		chromedp.Clear(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login-submit")),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="fs"] button`)))
	if visible("#login") {
		t.Fatal("logged in, the page still shows the login form")
	}
	step("04-pes",
		chromedp.Click(chromedp.CSS(`li[data-name="fs"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="fs:docs"] button`)))
	step("05-snapshots",
		chromedp.Click(chromedp.CSS(`li[data-name="fs:docs"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-location="repository"] button`)))
	// Newest first: the local snapshot was taken after the backup.
	if !visible(`#list li:first-child[data-name=`+jsString(local)+`][data-location="local"]`) ||
		!visible(`#list li:nth-child(2)[data-name=`+jsString(backedUp)+`][data-location="repository"]`) {
		t.Fatalf("snapshots: want the local %s, then the repository's %s; list: %s", local, backedUp, text("#list"))
	}
	step("06-snapshot-root",
		chromedp.Click(chromedp.CSS(`li[data-location="repository"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="big"] button`)))
	step("07-directory-first-page",
		chromedp.Click(chromedp.CSS(`li[data-name="big"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="f000"]`)))
	if n := countItems(t, ctx); n != 200 {
		t.Fatalf("first page of big/: %d entries, want 200 (a page)", n)
	}
	// Scrolling to the end loads the next page, until target.bin, the
	// last name, is there.
	for range 10 {
		if visible(`li[data-name="target.bin"] a`) {
			break
		}
		n := countItems(t, ctx)
		step("08-directory-scrolled",
			chromedp.ScrollIntoView(chromedp.ID("more")),
			chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#list li:nth-child(%d)`, n+1))))
	}
	if n := countItems(t, ctx); n != 451 {
		t.Fatalf("big/ after scrolling: %d entries, want 451", n)
	}

	downloads := filepath.Join(dir, "downloads")
	yes := true
	// download clicks the link of sel and reads the file the browser
	// saved.
	download := func(name, sel string) []byte {
		t.Helper()
		progress := chromedp.Events(ctx, browser.DownloadProgress)
		step(name,
			chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
				_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
					Behavior: browser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: downloads, EventsEnabled: &yes})
				return err
			}),
			chromedp.ScrollIntoView(chromedp.CSS(sel)),
			chromedp.Click(chromedp.CSS(sel)))
		for ev, err := range progress {
			if err != nil {
				t.Fatalf("download: %v", err)
			}
			if ev.State == browser.DownloadProgressStateCanceled {
				t.Fatalf("download cancelled: %+v", ev)
			}
			if ev.State == browser.DownloadProgressStateCompleted {
				b, err := os.ReadFile(filepath.Join(downloads, ev.GUID))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
		}
		t.Fatal("download: no end")
		return nil
	}
	got := download("09-download", `li[data-name="target.bin"] a`)
	if sha256.Sum256(got) != sha256.Sum256(target) {
		t.Fatalf("downloaded %d bytes, sha256 %x; the source: %d bytes, %x", len(got), sha256.Sum256(got), len(target), sha256.Sum256(target))
	}

	// The folder as a zip: its listing is the source's.
	zipped := download("10-zip", "#zip")
	zr, err := zip.NewReader(bytes.NewReader(zipped), int64(len(zipped)))
	if err != nil {
		t.Fatalf("the folder's zip: %v", err)
	}
	var names, wantNames []string
	for _, zf := range zr.File {
		names = append(names, zf.Name)
	}
	srcEntries, _ := os.ReadDir(filepath.Join(cfg, "fs", "docs", "big"))
	wantNames = append(wantNames, "big/")
	for _, e := range srcEntries {
		wantNames = append(wantNames, "big/"+e.Name())
	}
	if strings.Join(names, "\n") != strings.Join(wantNames, "\n") {
		t.Errorf("the zip of big/ holds %d names, the source %d; first %v", len(names), len(wantNames), names[:min(3, len(names))])
	}
	if rc, err := zr.Open("big/target.bin"); err != nil {
		t.Errorf("zip: %v", err)
	} else if b, _ := io.ReadAll(rc); sha256.Sum256(b) != sha256.Sum256(target) {
		t.Errorf("zip: big/target.bin differs from the source")
	}

	// Search by name, within the snapshot.
	step("11-search",
		chromedp.SendKeys(chromedp.ID("search-q"), "TARGET"),
		chromedp.Click(chromedp.ID("search-submit")),
		chromedp.WaitVisible(chromedp.CSS(`li[data-path="big/target.bin"] a`)))
	if n := countItems(t, ctx); n != 1 {
		t.Fatalf("search TARGET: %d matches, want 1: %s", n, text("#list"))
	}

	// A file inside the ext4 partition of a disk snapshot.
	step("12-disk-pes",
		chromedp.Click(chromedp.CSS(`#crumbs button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="disk"] button`)),
		chromedp.Click(chromedp.CSS(`li[data-name="disk"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="disk:sample.img"] button`)),
		chromedp.Click(chromedp.CSS(`li[data-name="disk:sample.img"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name=`+jsString(disk)+`] button`)))
	step("13-disk-partitions",
		chromedp.Click(chromedp.CSS(`li[data-name=`+jsString(disk)+`] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="p1"] button`)),
		chromedp.Click(chromedp.CSS(`li[data-name="p1"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="data"] button`)),
		chromedp.Click(chromedp.CSS(`li[data-name="data"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`li[data-name="random.bin"] a`)))
	want, err := os.ReadFile(filepath.Join(cfg, "fs", "sample", "data", "random.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if got := download("14-disk-download", `li[data-name="random.bin"] a`); sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("downloaded p1/data/random.bin: %d bytes, sha256 %x; the source: %d bytes, %x", len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}

	step("15-logged-out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))
	step("16-reloaded", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("token")))
	if visible("#browser") {
		t.Fatal("after logout and a reload the page shows the browser")
	}
	t.Logf("the browser's walk: %s", time.Since(start).Round(time.Millisecond))
	a.stop()
}

func countItems(t *testing.T, ctx context.Context) int {
	t.Helper()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#list li").length`))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// checkWebAPI checks, with a plain HTTP client, what the page relies on.
func checkWebAPI(t *testing.T, a *appliance, token, snap string, target []byte) {
	t.Helper()
	do := func(method, path string, body string, hdr map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, a.base()+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := a.client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	// The page, with a CSP of the appliance's own assets.
	resp := do("GET", "/", "", nil)
	if csp := resp.Header.Get("Content-Security-Policy"); resp.StatusCode != 200 || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Errorf("GET /: %d, CSP %q", resp.StatusCode, csp)
	}

	// Login: a wrong token makes no session; the right one a cookie
	// with the flags, and a CSRF token.
	if resp := do("POST", "/v1/session", `{"token":"wrong"}`, map[string]string{"Content-Type": "application/json"}); resp.StatusCode != 401 || len(resp.Cookies()) != 0 {
		t.Errorf("login with a wrong token: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	resp = do("POST", "/v1/session", `{"token":"`+token+`"}`, map[string]string{"Content-Type": "application/json"})
	var sess struct{ CsrfToken string }
	json.NewDecoder(resp.Body).Decode(&sess)
	setCookie := resp.Header.Get("Set-Cookie")
	if resp.StatusCode != 200 || sess.CsrfToken == "" || !strings.Contains(setCookie, "Secure") || !strings.Contains(setCookie, "HttpOnly") || !strings.Contains(setCookie, "SameSite=Strict") || !strings.HasPrefix(setCookie, "__Host-astrolabe_session=") {
		t.Fatalf("login: %d, Set-Cookie %q", resp.StatusCode, setCookie)
	}
	cookie := resp.Cookies()[0]
	withCookie := map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}
	if resp := do("GET", "/v1/astrolabe", "", withCookie); resp.StatusCode != 200 {
		t.Errorf("GET with the session cookie: %d", resp.StatusCode)
	}
	// An unsafe method needs the CSRF token beside the cookie.
	if resp := do("POST", "/v1/astrolabe/fs/fs%3Adocs/snapshots", "", withCookie); resp.StatusCode != 403 {
		t.Errorf("POST with the cookie and no CSRF token: %d, want 403", resp.StatusCode)
	}

	content := "/v1/appliance/browse/" + url.PathEscape(snap) + "/content?location=repository&path="
	bearer := map[string]string{"Authorization": "Bearer " + token}
	resp = do("GET", content+"big/target.bin", "", map[string]string{"Authorization": "Bearer " + token, "Range": "bytes=1000000-1000099"})
	part, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 206 || !bytes.Equal(part, target[1000000:1000100]) {
		t.Errorf("a range of the file: %d, %d bytes", resp.StatusCode, len(part))
	}
	for _, p := range []string{"../../../etc/passwd", "big/../../x", "/etc/passwd", "big//target.bin"} {
		if resp := do("GET", content+url.QueryEscape(p), "", bearer); resp.StatusCode != 400 {
			t.Errorf("path %q: %d, want 400", p, resp.StatusCode)
		}
	}
	if resp := do("GET", content+"nothing", "", bearer); resp.StatusCode != 404 {
		t.Errorf("a missing file: %d, want 404", resp.StatusCode)
	}
	if resp := do("GET", content+"big/target.bin", "", nil); resp.StatusCode != 401 {
		t.Errorf("download without credentials: %d, want 401", resp.StatusCode)
	}

	// Logout ends the session: the cookie no longer opens anything.
	if resp := do("DELETE", "/v1/session", "", map[string]string{"Cookie": withCookie["Cookie"], "X-CSRF-Token": sess.CsrfToken}); resp.StatusCode != 204 {
		t.Errorf("logout: %d", resp.StatusCode)
	}
	if resp := do("GET", "/v1/astrolabe", "", withCookie); resp.StatusCode != 401 {
		t.Errorf("GET with the cookie after logout: %d, want 401", resp.StatusCode)
	}
}

// TestWebDiskPartitions browses the ext4 partition of a disk snapshot
// through the API the page uses: the appliance mounts it for recovery
// (read-only, through appliance/flr), lists and serves its files, refuses
// paths that leave it, and takes the mount down when it stops.
func TestWebDiskPartitions(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	a := startServe(t, cfg)
	token := a.info["token"]
	base := "/v1/appliance/browse/" + url.PathEscape(snap)

	list := func(p string) []string {
		t.Helper()
		status, body := a.call("GET", base+"/files?path="+url.QueryEscape(p), token, "")
		var fl struct {
			Entries []struct{ Name, Kind string }
		}
		if err := json.Unmarshal([]byte(body), &fl); status != 200 || err != nil {
			t.Fatalf("files of %q: %d %s", p, status, body)
		}
		var out []string
		for _, e := range fl.Entries {
			out = append(out, e.Name+":"+e.Kind)
		}
		return out
	}
	if got := strings.Join(list(""), " "); got != "p1:dir" {
		t.Fatalf("the snapshot's root: %s, want its one partition", got)
	}
	if got := strings.Join(list("p1/docs"), " "); got != "README-link:symlink notes:dir report-2026.txt:file" {
		t.Errorf("p1/docs: %s", got)
	}
	want, err := os.ReadFile(filepath.Join(cfg, "fs", "sample", "data", "random.bin"))
	if err != nil {
		t.Fatal(err)
	}
	status, got := a.call("GET", base+"/content?path=p1%2Fdata%2Frandom.bin", token, "")
	if status != 200 || sha256.Sum256([]byte(got)) != sha256.Sum256(want) {
		t.Errorf("download p1/data/random.bin: %d, %d bytes (want %d)", status, len(got), len(want))
	}
	status, zipped := a.call("GET", base+"/zip?path=p1%2Fdocs", token, "")
	zr, err := zip.NewReader(strings.NewReader(zipped), int64(len(zipped)))
	if status != 200 || err != nil {
		t.Fatalf("zip of p1/docs: %d %v", status, err)
	}
	var names []string
	for _, zf := range zr.File {
		names = append(names, zf.Name)
	}
	// The symlink is left out.
	if got := strings.Join(names, " "); got != "docs/ docs/notes/ docs/notes/todo.md docs/report-2026.txt" {
		t.Errorf("zip of p1/docs: %s", got)
	}
	for p, wantStatus := range map[string]int{
		"p1/../../../etc/passwd": 400,
		"p1/docs/README-link":    400, // a symlink
		"p1/docs":                400, // a directory
		"p1":                     400, // a partition
		".astrolabe-flr.json":    404, // the mount's state, beside the partitions
		"p9/x":                   404,
		"p1/nothing":             404,
	} {
		if status, body := a.call("GET", base+"/content?path="+url.QueryEscape(p), token, ""); status != wantStatus {
			t.Errorf("content of %q: %d %s, want %d", p, status, body, wantStatus)
		}
	}
	a.stop()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), cfg) {
		t.Errorf("after serve stopped, mounts remain under %s:\n%s", cfg, mounts)
	}
	if left, _ := os.ReadDir(filepath.Join(cfg, "state", "flr")); len(left) != 0 {
		t.Errorf("after serve stopped, state/flr holds %v", left)
	}
}
