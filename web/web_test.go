package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHandler: the page's files are in the binary, each with the CSP,
// and nothing else is served.
func TestHandler(t *testing.T) {
	h := Handler()
	for _, p := range Paths() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if rec.Code != http.StatusOK || rec.Body.Len() == 0 {
			t.Errorf("GET %s: %d, %d bytes", p, rec.Code, rec.Body.Len())
		}
		if got := rec.Header().Get("Content-Security-Policy"); got != ContentSecurityPolicy {
			t.Errorf("GET %s: CSP %q", p, got)
		}
	}
	for _, p := range []string{"/index.html", "/../web.go", "/static/index.html", "/dist/app.js", "/app.js.map"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, rec.Code)
		}
	}
	if strings.Contains(ContentSecurityPolicy, "unsafe") || !strings.Contains(ContentSecurityPolicy, "default-src 'none'") {
		t.Errorf("CSP %q allows more than the appliance's own files", ContentSecurityPolicy)
	}
}
