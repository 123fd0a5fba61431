// Package web is the appliance's web page for file-level recovery: a
// TypeScript page (src/) on the client generated from api/openapi.yaml,
// bundled by esbuild into dist/ (`make web`; committed, so that go build
// needs no npm) and served by `astrolabe serve` at / beside the API.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static dist
var assets embed.FS

// ContentSecurityPolicy lets the page load only the appliance's own
// scripts, styles and images and talk only to the appliance; it may not be
// framed.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// files maps the page's URL paths to the embedded files.
var files = map[string]struct{ name, contentType string }{
	"/":           {"static/index.html", "text/html; charset=utf-8"},
	"/style.css":  {"static/style.css", "text/css; charset=utf-8"},
	"/app.js":     {"dist/app.js", "text/javascript; charset=utf-8"},
	"/robots.txt": {"static/robots.txt", "text/plain; charset=utf-8"},
}

// Paths are the URL paths Handler serves.
func Paths() []string {
	out := make([]string, 0, len(files))
	for p := range files {
		out = append(out, p)
	}
	return out
}

// Handler serves the page's files with the Content-Security-Policy.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		b, err := fs.ReadFile(assets, f.name)
		if err != nil {
			http.Error(w, "asset missing from the build", http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.contentType)
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		if r.Method == http.MethodHead {
			return
		}
		w.Write(b)
	})
}
