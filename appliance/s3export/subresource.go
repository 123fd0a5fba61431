package s3export

import (
	"encoding/xml"
	"net/http"
	"net/url"
	"sort"
)

// S3's sub-resources: query parameters that turn a request on a bucket
// or an object into another operation (GetBucketAcl, PutObjectTagging,
// DeleteObjects ...). S3 ignores query parameters it does not know, and
// so does this server (SDKs add some, e.g. x-id=GetObject), but a known
// sub-resource is never answered with an object's bytes or a listing.
var subresources = map[string]bool{
	"accelerate": true, "acl": true, "analytics": true, "attributes": true, "cors": true,
	"delete": true, "encryption": true, "intelligent-tiering": true, "inventory": true,
	"legal-hold": true, "lifecycle": true, "location": true, "logging": true,
	"metadataConfiguration": true, "metadataTable": true, "metrics": true, "notification": true,
	"object-lock": true, "ownershipControls": true, "policy": true, "policyStatus": true,
	"publicAccessBlock": true, "renameObject": true, "replication": true, "requestPayment": true,
	"restore": true, "retention": true, "select": true, "session": true, "tagging": true,
	"torrent": true, "uploadId": true, "uploads": true, "versionId": true, "versioning": true,
	"versions": true, "website": true,
}

// subresourceOf returns the sub-resource a query names, if any (the
// first by name when it names several). versionId=null is no other
// version: in a bucket without versioning S3 answers with the object.
func subresourceOf(q url.Values) (string, bool) {
	var names []string
	for name := range q {
		if subresources[name] && !(name == "versionId" && q.Get(name) == "null") {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", false
	}
	sort.Strings(names)
	return names[0], true
}

// owner is the one account of this server, owner of every bucket and
// object.
var owner = ownerXML{ID: "astrolabe", DisplayName: "astrolabe"}

// serveSubresource answers a sub-resource of the service, a bucket or an
// object. Reads that clients make before they do anything (s3cmd info,
// mc stat, rclone) get the answers of a plain S3 bucket: a canned ACL of
// the owner's FULL_CONTROL, no tags, the region, versioning never
// enabled. Everything else is 501 NotImplemented: buckets are PE types
// and objects snapshots, with nothing to configure.
func (h *Handler) serveSubresource(w http.ResponseWriter, r *http.Request, bucket, key, name string) *s3Error {
	switch {
	case (name == "uploads" || name == "uploadId") && bucket == CopyBucket:
		// isMultipart took the requests that are multipart uploads.
		return &s3Error{http.StatusMethodNotAllowed, "MethodNotAllowed", "multipart uploads: POST key?uploads starts one, GET " + CopyBucket +
			"?uploads lists them, PUT, GET, POST and DELETE key?uploadId upload a part, list the parts, complete and abort one"}
	case name == "uploads" || name == "uploadId":
		return errNotImplemented("multipart uploads go to the bucket " + CopyBucket + " only")
	case bucket == "" || (r.Method != http.MethodGet && r.Method != http.MethodHead):
		return errNotImplemented("?" + name + " is not supported here")
	}
	if _, serr := h.peType(r.Context(), bucket); serr != nil {
		return serr
	}
	if key == "" {
		switch name {
		case "location":
			return h.bucketLocation(w)
		case "versioning":
			return writeXML(w, versioningXML{NS: s3NS})
		}
	}
	if name != "acl" && name != "tagging" {
		return errNotImplemented("?" + name + " is not supported: buckets are the appliance's PE types, objects their snapshots")
	}
	if key != "" {
		obj, serr := h.findObject(r, bucket, key)
		if serr != nil {
			return serr
		}
		obj.close()
	}
	if name == "tagging" {
		return writeXML(w, taggingXML{NS: s3NS, TagSet: &struct{}{}})
	}
	return writeXML(w, cannedACL())
}

type versioningXML struct {
	XMLName xml.Name `xml:"VersioningConfiguration"`
	NS      string   `xml:"xmlns,attr"`
}

type taggingXML struct {
	XMLName xml.Name  `xml:"Tagging"`
	NS      string    `xml:"xmlns,attr"`
	TagSet  *struct{} `xml:"TagSet"`
}

type accessControlPolicyXML struct {
	XMLName xml.Name   `xml:"AccessControlPolicy"`
	NS      string     `xml:"xmlns,attr"`
	Owner   ownerXML   `xml:"Owner"`
	Grants  []grantXML `xml:"AccessControlList>Grant"`
}

type grantXML struct {
	Grantee    granteeXML `xml:"Grantee"`
	Permission string     `xml:"Permission"`
}

type granteeXML struct {
	XSI         string `xml:"xmlns:xsi,attr"`
	Type        string `xml:"xsi:type,attr"`
	ID          string `xml:"ID"`
	DisplayName string `xml:"DisplayName"`
}

// cannedACL is S3's "private": the owner, and FULL_CONTROL for the owner.
func cannedACL() accessControlPolicyXML {
	return accessControlPolicyXML{NS: s3NS, Owner: owner, Grants: []grantXML{{
		Grantee: granteeXML{
			XSI: "http://www.w3.org/2001/XMLSchema-instance", Type: "CanonicalUser",
			ID: owner.ID, DisplayName: owner.DisplayName,
		},
		Permission: "FULL_CONTROL",
	}}}
}
