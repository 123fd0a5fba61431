package s3export

import (
	"bytes"
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// Conditional GET and HEAD answer 412 and 304 as S3 does, in S3's order
// of precedence, and If-Range decides whether a Range applies.
func TestConditionalGet(t *testing.T) {
	f := newFixture(t, 0)
	image, err := os.ReadFile(filepath.Join(f.dir, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}
	// The disk image: its ETag and bytes.
	data := "/disk/" + f.diskSnap.String()
	head, _ := f.do(t, http.MethodHead, data, "", nil)
	for _, tc := range []struct {
		header map[string]string
		status int
	}{
		{map[string]string{"If-None-Match": head.Header.Get("ETag")}, 304},
		{map[string]string{"If-Match": `"0123"`}, 412},
		{map[string]string{"If-Match": head.Header.Get("ETag")}, 200},
	} {
		resp, body := f.do(t, http.MethodGet, data, "", tc.header)
		if resp.StatusCode != tc.status || (tc.status == 200 && !bytes.Equal(body, image)) {
			t.Errorf("GET of the image with %v: %d, %d bytes", tc.header, resp.StatusCode, len(body))
		}
	}

	// S3's rules, on a small object.
	path := "/disk/" + f.diskSnap.String() + ".peinfo"
	_, content := f.do(t, http.MethodGet, path, "", nil)
	head, _ = f.do(t, http.MethodHead, path, "", nil)
	etag := head.Header.Get("ETag")
	modified, err := http.ParseTime(head.Header.Get("Last-Modified"))
	if err != nil || !strings.HasPrefix(etag, `"`) {
		t.Fatalf("HEAD: ETag %q, Last-Modified %q", etag, head.Header.Get("Last-Modified"))
	}
	date := func(d time.Duration) string { return modified.Add(d).Format(http.TimeFormat) }
	unquoted := strings.Trim(etag, `"`)

	for _, tc := range []struct {
		name   string
		header map[string]string
		status int
	}{
		{"If-Match its ETag", map[string]string{"If-Match": etag}, 200},
		{"If-Match unquoted", map[string]string{"If-Match": unquoted}, 200},
		{"If-Match in a list", map[string]string{"If-Match": `"other", ` + etag}, 200},
		{"If-Match *", map[string]string{"If-Match": "*"}, 200},
		{"If-Match another", map[string]string{"If-Match": `"0123"`}, 412},
		{"If-Match weak never matches", map[string]string{"If-Match": "W/" + etag}, 412},
		{"If-None-Match its ETag", map[string]string{"If-None-Match": etag}, 304},
		{"If-None-Match weak", map[string]string{"If-None-Match": "W/" + etag}, 304},
		{"If-None-Match *", map[string]string{"If-None-Match": "*"}, 304},
		{"If-None-Match another", map[string]string{"If-None-Match": `"0123"`}, 200},
		{"If-Modified-Since its date", map[string]string{"If-Modified-Since": date(0)}, 304},
		{"If-Modified-Since later", map[string]string{"If-Modified-Since": date(time.Hour)}, 304},
		{"If-Modified-Since earlier", map[string]string{"If-Modified-Since": date(-time.Second)}, 200},
		{"If-Modified-Since invalid is ignored", map[string]string{"If-Modified-Since": "yesterday"}, 200},
		{"If-Unmodified-Since its date", map[string]string{"If-Unmodified-Since": date(0)}, 200},
		{"If-Unmodified-Since earlier", map[string]string{"If-Unmodified-Since": date(-time.Second)}, 412},
		{"If-Unmodified-Since invalid is ignored", map[string]string{"If-Unmodified-Since": "tomorrow"}, 200},
		// S3's precedence: If-Match true wins over If-Unmodified-Since
		// false; If-None-Match decides over If-Modified-Since.
		{"If-Match true, If-Unmodified-Since false", map[string]string{"If-Match": etag, "If-Unmodified-Since": date(-time.Hour)}, 200},
		{"If-Match false, If-Unmodified-Since true", map[string]string{"If-Match": `"0123"`, "If-Unmodified-Since": date(time.Hour)}, 412},
		{"If-None-Match false, If-Modified-Since true", map[string]string{"If-None-Match": etag, "If-Modified-Since": date(-time.Hour)}, 304},
		{"If-None-Match true, If-Modified-Since false", map[string]string{"If-None-Match": `"0123"`, "If-Modified-Since": date(time.Hour)}, 200},
		{"412 before 304", map[string]string{"If-Match": `"0123"`, "If-None-Match": etag}, 412},
		{"If-Match true, If-None-Match false", map[string]string{"If-Match": etag, "If-None-Match": etag}, 304},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := f.do(t, method, path, "", tc.header)
			if resp.StatusCode != tc.status {
				t.Errorf("%s %s: %d, want %d", method, tc.name, resp.StatusCode, tc.status)
				continue
			}
			switch {
			case tc.status == 304:
				if len(body) != 0 || resp.Header.Get("ETag") != etag || resp.Header.Get("Last-Modified") == "" {
					t.Errorf("%s %s: 304 with %d bytes, ETag %q", method, tc.name, len(body), resp.Header.Get("ETag"))
				}
			case tc.status == 412 && method == http.MethodGet:
				if errorCode(body) != "PreconditionFailed" {
					t.Errorf("%s %s: %s", method, tc.name, body)
				}
			case tc.status == 200 && method == http.MethodGet:
				if !bytes.Equal(body, content) {
					t.Errorf("%s %s: %d bytes differ from the object", method, tc.name, len(body))
				}
			}
		}
	}

	// If-Range: the range applies while the object is the one named.
	for _, tc := range []struct {
		ifRange string
		status  int
	}{
		{etag, 206},
		{date(0), 206},
		{`"0123"`, 200},
		{date(-time.Second), 200},
		{"W/" + etag, 200},
	} {
		resp, body := f.do(t, http.MethodGet, path, "", map[string]string{"Range": "bytes=10-19", "If-Range": tc.ifRange})
		want := content
		if tc.status == 206 {
			want = content[10:20]
		}
		if resp.StatusCode != tc.status || !bytes.Equal(body, want) {
			t.Errorf("If-Range %s: %d with %d bytes, want %d", tc.ifRange, resp.StatusCode, len(body), tc.status)
		}
	}
}

// A zip's conditional GET is answered before the zip is built, and a
// snapshot's objects keep their ETags and bytes across a restart.
func TestETagStableAcrossRestarts(t *testing.T) {
	f := newFixture(t, 0)
	keys := []string{"/disk/" + f.diskSnap.String(), "/disk/" + f.diskSnap.String() + ".zip", "/fs-pe/" + f.fsSnap.String() + ".zip",
		"/fs/" + f.fsSnap.String()}
	etags := map[string]string{}
	for _, k := range keys {
		resp, _ := f.do(t, http.MethodHead, k, "", nil)
		if resp.StatusCode != 200 || resp.Header.Get("ETag") == "" {
			t.Fatalf("HEAD %s: %d", k, resp.StatusCode)
		}
		etags[k] = resp.Header.Get("ETag")
	}
	_, zip1 := f.do(t, http.MethodGet, keys[1], "", nil)

	h, endpoint := f.start(t, 0)
	z := keys[2]
	resp, _ := doAt(t, endpoint, http.MethodGet, z, "", map[string]string{"If-None-Match": etags[z]})
	if resp.StatusCode != 304 {
		t.Errorf("GET %s If-None-Match after a restart: %d", z, resp.StatusCode)
	}
	h.zips.mu.Lock()
	built := len(h.zips.built)
	h.zips.mu.Unlock()
	if built != 0 {
		t.Errorf("a 304 built %d zips", built)
	}
	for _, k := range keys {
		resp, _ := doAt(t, endpoint, http.MethodHead, k, "", nil)
		if got := resp.Header.Get("ETag"); got != etags[k] {
			t.Errorf("%s: ETag %s after a restart, was %s", k, got, etags[k])
		}
	}
	resp, zip2 := doAt(t, endpoint, http.MethodGet, keys[1], "", map[string]string{"If-Match": etags[keys[1]]})
	if resp.StatusCode != 200 || md5.Sum(zip1) != md5.Sum(zip2) {
		t.Errorf("the zip rebuilt after a restart: %d, %d bytes, differs from the first build: %v", resp.StatusCode, len(zip2), md5.Sum(zip1) != md5.Sum(zip2))
	}
}

// response-* query parameters set the answer's headers, in signed
// requests and presigned URLs alike; a header they would break is 400.
func TestResponseHeaderOverrides(t *testing.T) {
	f := newFixture(t, 0)
	path := "/disk/" + f.diskSnap.String() + ".peinfo"
	want := map[string]string{
		"Content-Type":        "text/plain; charset=utf-8",
		"Content-Disposition": `attachment; filename="sample ü.json"`,
		"Cache-Control":       "no-cache",
		"Expires":             "Thu, 01 Dec 1994 16:00:00 GMT",
		"Content-Language":    "de",
		"Content-Encoding":    "identity",
	}
	q := url.Values{}
	for h, v := range want {
		q.Set("response-"+strings.ToLower(h), v)
	}
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp, _ := f.do(t, method, path, q.Encode(), nil)
		for h, v := range want {
			if got := resp.Header.Get(h); got != v {
				t.Errorf("%s: %s %q, want %q", method, h, got, v)
			}
		}
	}
	resp, _ := f.do(t, http.MethodGet, path, "", nil)
	if resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Content-Disposition") != "" {
		t.Errorf("without overrides: %v", resp.Header)
	}

	u, err := f.mc.PresignedGetObject(context.Background(), "disk", f.diskSnap.String()+".peinfo", time.Hour,
		url.Values{"response-content-disposition": {`attachment; filename="x.json"`}, "response-content-type": {"application/x-peinfo"}})
	if err != nil {
		t.Fatal(err)
	}
	presigned, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	presigned.Body.Close()
	if presigned.StatusCode != 200 || presigned.Header.Get("Content-Disposition") != `attachment; filename="x.json"` || presigned.Header.Get("Content-Type") != "application/x-peinfo" {
		t.Errorf("presigned with overrides: %d %v", presigned.StatusCode, presigned.Header)
	}

	opts := minio.GetObjectOptions{}
	opts.AddReqParam("response-cache-control", "max-age=60")
	st, err := f.mc.StatObject(context.Background(), "disk", f.diskSnap.String()+".peinfo", minio.StatObjectOptions(opts))
	if err != nil || st.Metadata.Get("Cache-Control") != "max-age=60" {
		t.Errorf("minio-go StatObject with response-cache-control: %v %v", st.Metadata, err)
	}

	resp, body := f.do(t, http.MethodGet, path, "response-content-type=text%2Fplain%0D%0AX-Evil%3A+1", nil)
	if resp.StatusCode != 400 || errorCode(body) != "InvalidArgument" || resp.Header.Get("X-Evil") != "" {
		t.Errorf("override with CRLF: %d %s", resp.StatusCode, body)
	}
}

// partNumber=1 reads the whole object as its one part, answered as S3
// answers a part: 206 with the part's range, and, for objects whose ETag
// says multipart, the number of parts, which part-by-part downloaders
// read first. GET and HEAD alike, and through minio-go.
func TestPartNumberOne(t *testing.T) {
	f := newFixture(t, 0)
	ctx := context.Background()
	snap := f.diskSnap.String()
	for _, key := range []string{snap, snap + ".zip", snap + ".peinfo"} {
		path := "/disk/" + key
		_, whole := f.do(t, http.MethodGet, path, "", nil)
		n := len(whole)
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := f.do(t, method, path, "partNumber=1", nil)
			name := method + " " + key + "?partNumber=1"
			etag := resp.Header.Get("ETag")
			wantParts := ""
			if strings.HasSuffix(etag, `-1"`) {
				wantParts = "1"
			}
			if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 0-%d/%d", n-1, n) ||
				resp.Header.Get("Content-Length") != strconv.Itoa(n) || resp.Header.Get("X-Amz-Mp-Parts-Count") != wantParts {
				t.Errorf("%s: %d, Content-Range %q, Content-Length %q, x-amz-mp-parts-count %q (ETag %s); want 206, bytes 0-%d/%d, %d, %q",
					name, resp.StatusCode, resp.Header.Get("Content-Range"), resp.Header.Get("Content-Length"),
					resp.Header.Get("X-Amz-Mp-Parts-Count"), etag, n-1, n, n, wantParts)
			}
			if method == http.MethodGet && !bytes.Equal(body, whole) {
				t.Errorf("%s: %d bytes, not the object's %d", name, len(body), n)
			}
		}
		// Without partNumber: the whole object, 200, no part count.
		resp, _ := f.do(t, http.MethodHead, path, "", nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Range") != "" || resp.Header.Get("X-Amz-Mp-Parts-Count") != "" {
			t.Errorf("HEAD %s: %d, Content-Range %q, x-amz-mp-parts-count %q", key, resp.StatusCode,
				resp.Header.Get("Content-Range"), resp.Header.Get("X-Amz-Mp-Parts-Count"))
		}

		opts := minio.GetObjectOptions{PartNumber: 1}
		obj, err := f.mc.GetObject(ctx, "disk", key, opts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(obj)
		obj.Close()
		if err != nil || !bytes.Equal(got, whole) {
			t.Errorf("minio-go GetObject %s part 1: %d bytes, %v", key, len(got), err)
		}
	}
}
