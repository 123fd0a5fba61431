package s3export

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Sub-resources are never answered with an object's bytes or a listing:
// the reads clients make get a plain bucket's answers, everything else
// 501 NotImplemented; unknown query parameters are ignored as S3 does.
func TestSubresources(t *testing.T) {
	f := newFixture(t, 0)
	image, err := os.ReadFile(filepath.Join(f.dir, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}
	obj := "/disk/" + f.diskSnap.String()
	zip := "/disk/" + f.diskSnap.String() + ".zip"
	for _, tc := range []struct {
		method, path, query string
		status              int
		want                string // the root element, the error code, or "object"
	}{
		{"GET", "/disk", "acl", 200, "AccessControlPolicy"},
		{"GET", obj, "acl", 200, "AccessControlPolicy"},
		{"GET", zip, "acl", 200, "AccessControlPolicy"},
		{"GET", "/copy", "acl", 200, "AccessControlPolicy"},
		{"GET", "/fs-pe", "acl", 200, "AccessControlPolicy"},
		{"GET", "/disk", "tagging", 200, "Tagging"},
		{"GET", obj, "tagging", 200, "Tagging"},
		{"GET", "/disk", "location", 200, "LocationConstraint"},
		{"GET", "/disk", "versioning", 200, "VersioningConfiguration"},
		{"GET", "/disk/disk:sample.img:nope", "acl", 404, "NoSuchKey"},
		{"GET", "/tape", "acl", 404, "NoSuchBucket"},
		{"GET", "/tape", "cors", 404, "NoSuchBucket"},
		{"GET", "/disk", "cors", 501, "NotImplemented"},
		{"GET", "/disk", "lifecycle", 501, "NotImplemented"},
		{"GET", "/disk", "policy", 501, "NotImplemented"},
		{"GET", "/disk", "website", 501, "NotImplemented"},
		{"GET", "/disk", "logging", 501, "NotImplemented"},
		{"GET", "/disk", "notification", 501, "NotImplemented"},
		{"GET", "/disk", "replication", 501, "NotImplemented"},
		{"GET", "/disk", "encryption", 501, "NotImplemented"},
		{"GET", "/disk", "object-lock", 501, "NotImplemented"},
		{"GET", "/disk", "requestPayment", 501, "NotImplemented"},
		{"GET", "/disk", "versions", 501, "NotImplemented"},
		{"GET", "/disk", "uploads", 501, "NotImplemented"},
		{"GET", "/disk", "list-type=2&acl", 200, "AccessControlPolicy"},
		{"GET", obj, "attributes", 501, "NotImplemented"},
		{"GET", obj, "torrent", 501, "NotImplemented"},
		{"GET", obj, "uploadId=abc", 501, "NotImplemented"},
		{"GET", obj, "retention", 501, "NotImplemented"},
		{"GET", obj, "legal-hold", 501, "NotImplemented"},
		{"GET", obj, "versionId=3HL4kqtJlcpXroDTDmJ", 501, "NotImplemented"},
		{"GET", obj, "location", 501, "NotImplemented"},
		{"GET", obj, "versioning", 501, "NotImplemented"},
		{"HEAD", obj, "torrent", 501, ""},
		{"POST", obj, "restore", 501, "NotImplemented"},
		{"POST", obj, "select&select-type=2", 501, "NotImplemented"},
		{"POST", "/disk", "delete", 501, "NotImplemented"},
		{"PUT", "/disk", "acl", 501, "NotImplemented"},
		{"PUT", "/disk", "versioning", 501, "NotImplemented"},
		{"PUT", obj, "tagging", 501, "NotImplemented"},
		{"DELETE", "/disk", "cors", 501, "NotImplemented"},
		{"GET", "/", "acl", 501, "NotImplemented"},
		// Not sub-resources: the object itself.
		{"GET", obj, "versionId=null", 200, "object"},
		{"GET", obj, "x-id=GetObject", 200, "object"},
		{"GET", obj, "partNumber=1", 206, "object"},
		{"GET", obj, "partNumber=2", 416, "InvalidPartNumber"},
		{"GET", obj, "partNumber=0", 400, "InvalidArgument"},
	} {
		resp, body := f.do(t, tc.method, tc.path, tc.query, nil)
		name := tc.method + " " + tc.path + "?" + tc.query
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d: %.200s", name, resp.StatusCode, tc.status, body)
			continue
		}
		switch {
		case tc.want == "object":
			if !bytes.Equal(body, image) {
				t.Errorf("%s: %d bytes, not the object", name, len(body))
			}
		case tc.want == "":
			if len(body) != 0 {
				t.Errorf("%s: a body to HEAD", name)
			}
		case resp.StatusCode >= 300:
			if errorCode(body) != tc.want {
				t.Errorf("%s: %s, want %s", name, body, tc.want)
			}
		default:
			var root struct{ XMLName xml.Name }
			if err := xml.Unmarshal(body, &root); err != nil || root.XMLName.Local != tc.want || resp.Header.Get("Content-Type") != "application/xml" {
				t.Errorf("%s: %s, want <%s>", name, body, tc.want)
			}
		}
	}

	// The ACL is the owner's FULL_CONTROL, as S3 answers for a private
	// bucket, with the grantee's type in the XMLSchema-instance namespace.
	_, body := f.do(t, "GET", obj, "acl", nil)
	var acl struct {
		Owner  struct{ ID string }
		Grants []struct {
			Grantee struct {
				Type string `xml:"http://www.w3.org/2001/XMLSchema-instance type,attr"`
				ID   string
			}
			Permission string
		} `xml:"AccessControlList>Grant"`
	}
	if err := xml.Unmarshal(body, &acl); err != nil || len(acl.Grants) != 1 || acl.Grants[0].Permission != "FULL_CONTROL" ||
		acl.Grants[0].Grantee.Type != "CanonicalUser" || acl.Grants[0].Grantee.ID != acl.Owner.ID || acl.Owner.ID == "" {
		t.Errorf("ACL: %+v %v\n%s", acl, err, body)
	}
	_, body = f.do(t, "GET", "/disk", "tagging", nil)
	if !strings.Contains(string(body), "<TagSet></TagSet>") {
		t.Errorf("tagging: %s", body)
	}
	_, body = f.do(t, "GET", "/disk", "location", nil)
	if !strings.Contains(string(body), "<LocationConstraint") || strings.Contains(string(body), "us-east-1") {
		t.Errorf("location of us-east-1: %s", body)
	}
}
