package s3export

import (
	"encoding/xml"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type listBucketsAnswer struct {
	Buckets []struct {
		Name         string
		CreationDate string
	} `xml:"Buckets>Bucket"`
	ContinuationToken *string
	Prefix            *string
}

// ListBuckets pages with max-buckets and continuation-token, filters by
// prefix, and gives each bucket a creation date that stays across
// restarts.
func TestListBuckets(t *testing.T) {
	f := newFixture(t, 0)
	started := time.Now().UTC().Truncate(time.Millisecond)
	list := func(endpoint, query string) listBucketsAnswer {
		t.Helper()
		resp, body := doAt(t, endpoint, http.MethodGet, "/", query, nil)
		var out listBucketsAnswer
		if err := xml.Unmarshal(body, &out); resp.StatusCode != 200 || err != nil {
			t.Fatalf("ListBuckets?%s: %d %s", query, resp.StatusCode, body)
		}
		return out
	}
	all := list(f.endpoint, "")
	var names []string
	dates := map[string]string{}
	for _, b := range all.Buckets {
		names = append(names, b.Name)
		dates[b.Name] = b.CreationDate
		created, err := time.Parse(s3Time, b.CreationDate)
		if err != nil || created.Before(started.Add(-time.Minute)) || created.After(time.Now()) {
			t.Errorf("bucket %s created %s, want when the appliance first served it (%s)", b.Name, b.CreationDate, started)
		}
	}
	if strings.Join(names, " ") != "copy disk fs fs-pe" || all.ContinuationToken != nil || all.Prefix != nil {
		t.Fatalf("ListBuckets: %+v", all)
	}

	// One by one: every bucket once, in order, then no token.
	var paged []string
	query := "max-buckets=1"
	for range 10 {
		page := list(f.endpoint, query)
		for _, b := range page.Buckets {
			paged = append(paged, b.Name)
		}
		if len(page.Buckets) != 1 && page.ContinuationToken != nil {
			t.Fatalf("page of %d buckets with a token", len(page.Buckets))
		}
		if page.ContinuationToken == nil {
			break
		}
		query = "max-buckets=1&continuation-token=" + url.QueryEscape(*page.ContinuationToken)
	}
	if strings.Join(paged, " ") != strings.Join(names, " ") {
		t.Errorf("paged one by one: %v", paged)
	}
	if p := list(f.endpoint, "prefix=fs&max-buckets=10"); len(p.Buckets) != 2 || p.Buckets[0].Name != "fs" || p.Buckets[1].Name != "fs-pe" || p.Prefix == nil || *p.Prefix != "fs" {
		t.Errorf("prefix=fs: %+v", p)
	}
	for _, q := range []string{"max-buckets=0", "max-buckets=10001", "max-buckets=x", "continuation-token=%21%21"} {
		resp, body := f.do(t, http.MethodGet, "/", q, nil)
		if resp.StatusCode != 400 || errorCode(body) != "InvalidArgument" {
			t.Errorf("ListBuckets?%s: %d %s", q, resp.StatusCode, body)
		}
	}

	// After a restart, the same dates.
	if _, err := os.Stat(filepath.Join(f.stateDir, bucketDatesFile)); err != nil {
		t.Errorf("creation dates not kept: %v", err)
	}
	_, endpoint := f.start(t, 0)
	for _, b := range list(endpoint, "").Buckets {
		if b.CreationDate != dates[b.Name] {
			t.Errorf("bucket %s created %s after a restart, was %s", b.Name, b.CreationDate, dates[b.Name])
		}
	}
}

type listObjectsAnswer struct {
	IsTruncated       bool
	KeyCount          *int
	ContinuationToken *string
	Contents          []struct {
		Key   string
		Owner *struct{ ID, DisplayName string }
	}
}

// ListObjects: max-keys=0 is not truncated, an empty continuation-token
// is echoed, and Owner is in V1 and in V2 with fetch-owner=true.
func TestListObjectsDetails(t *testing.T) {
	f := newFixture(t, 0)
	list := func(query string) (listObjectsAnswer, string) {
		t.Helper()
		resp, body := f.do(t, http.MethodGet, "/disk", query, nil)
		var out listObjectsAnswer
		if err := xml.Unmarshal(body, &out); resp.StatusCode != 200 || err != nil {
			t.Fatalf("ListObjects?%s: %d %s", query, resp.StatusCode, body)
		}
		return out, string(body)
	}
	for _, q := range []string{"max-keys=0", "list-type=2&max-keys=0"} {
		if out, body := list(q); out.IsTruncated || len(out.Contents) != 0 {
			t.Errorf("?%s: %s", q, body)
		}
	}
	out, body := list("list-type=2&continuation-token=")
	if out.ContinuationToken == nil || *out.ContinuationToken != "" || len(out.Contents) != 2 {
		t.Errorf("empty continuation-token not echoed: %s", body)
	}
	if out, _ := list("list-type=2"); out.ContinuationToken != nil {
		t.Error("a continuation-token not asked for is echoed")
	}
	for _, tc := range []struct {
		query string
		owner bool
	}{
		{"", true},
		{"list-type=2", false},
		{"list-type=2&fetch-owner=true", true},
		{"list-type=2&fetch-owner=false", false},
	} {
		out, body := list(tc.query)
		for _, c := range out.Contents {
			if got := c.Owner != nil && c.Owner.ID == owner.ID; got != tc.owner {
				t.Errorf("?%s: owner of %s %v, want %v\n%s", tc.query, c.Key, got, tc.owner, body)
			}
		}
	}
}

// A bucket, key or query that is not valid UTF-8 is 400, and the server
// goes on serving.
func TestInvalidUTF8(t *testing.T) {
	f := newFixture(t, 0)
	for _, tc := range []struct {
		method, path, query string
		code                string
	}{
		{"GET", "/disk/\xff", "", "InvalidURI"},
		{"HEAD", "/disk/disk:sample.img:\xc3", "", ""},
		{"GET", "/disk/" + f.diskSnap.String() + "\xfe", "acl", "InvalidURI"},
		{"GET", "/\xffdisk", "", "InvalidURI"},
		{"PUT", "/copy/\xff.zip", "", "InvalidURI"},
		{"GET", "/disk", "prefix=%FF", "InvalidArgument"},
		{"GET", "/disk", "marker=%C3", "InvalidArgument"},
		{"GET", "/disk", "list-type=2&start-after=a%80", "InvalidArgument"},
		{"GET", "/disk", "list-type=2&delimiter=%FF", "InvalidArgument"},
		{"GET", "/", "prefix=%FF", "InvalidArgument"},
		{"GET", "/disk/" + f.diskSnap.String(), "response-content-type=%FF", "InvalidArgument"},
	} {
		resp, body := f.do(t, tc.method, tc.path, tc.query, nil)
		if resp.StatusCode != 400 || (tc.method != "HEAD" && errorCode(body) != tc.code) {
			t.Errorf("%s %q?%s: %d %.200s, want 400 %s", tc.method, tc.path, tc.query, resp.StatusCode, body, tc.code)
		}
	}
	if resp, _ := f.do(t, "GET", "/disk/disk:sample.img:\u00e9", "", nil); resp.StatusCode != 404 {
		t.Errorf("a valid UTF-8 key that is not there: %d", resp.StatusCode)
	}
	if resp, _ := f.do(t, "HEAD", "/disk/"+f.diskSnap.String(), "", nil); resp.StatusCode != 200 {
		t.Errorf("after the invalid requests: %d", resp.StatusCode)
	}
}
