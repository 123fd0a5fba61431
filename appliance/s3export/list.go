package s3export

import (
	"encoding/base64"
	"encoding/xml"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const s3NS = "http://s3.amazonaws.com/doc/2006-03-01/"

// maxKeys is S3's page limit, and the default.
const maxKeys = 1000

type bucketXML struct {
	Name         string `xml:"Name"`
	CreationDate string `xml:"CreationDate"`
	BucketRegion string `xml:"BucketRegion"`
}

type listBucketsXML struct {
	XMLName           xml.Name    `xml:"ListAllMyBucketsResult"`
	NS                string      `xml:"xmlns,attr"`
	Owner             ownerXML    `xml:"Owner"`
	Buckets           []bucketXML `xml:"Buckets>Bucket"`
	ContinuationToken string      `xml:"ContinuationToken,omitempty"`
	Prefix            *string     `xml:"Prefix"`
}

type ownerXML struct {
	ID          string `xml:"ID"`
	DisplayName string `xml:"DisplayName"`
}

// maxBuckets is S3's limit of max-buckets.
const maxBuckets = 10000

// s3Time is the form of S3's dates in listings.
const s3Time = "2006-01-02T15:04:05.000Z"

// listBuckets answers ListBuckets, sorted by name as S3 does, with
// prefix and paging (max-buckets, continuation-token).
func (h *Handler) listBuckets(w http.ResponseWriter, r *http.Request) *s3Error {
	q := r.URL.Query()
	limit := maxBuckets
	if s := q.Get("max-buckets"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxBuckets {
			return errInvalidArgument("max-buckets: want a number from 1 to 10000")
		}
		limit = n
	}
	after, serr := decodeToken(q.Get("continuation-token"))
	if serr != nil {
		return serr
	}
	types, err := h.cfg.Manager.Types(r.Context())
	if err != nil {
		h.log.Error("S3 list buckets", "err", err)
		return errInternal()
	}
	names := []string{CopyBucket}
	for _, tm := range types {
		names = append(names, tm.Type())
		if len(tm.Type()) < 3 {
			names = append(names, tm.Type()+shortAlias)
		}
	}
	sort.Strings(names)
	created, err := h.bucketDates.dates(names, time.Now())
	if err != nil {
		h.log.Warn("S3 bucket creation dates may not last", "err", err)
	}
	out := listBucketsXML{NS: s3NS, Owner: owner}
	prefix := q.Get("prefix")
	if q.Has("prefix") {
		out.Prefix = &prefix
	}
	for _, name := range names {
		if !strings.HasPrefix(name, prefix) || name <= after {
			continue
		}
		if len(out.Buckets) == limit {
			out.ContinuationToken = encodeToken(out.Buckets[limit-1].Name)
			break
		}
		out.Buckets = append(out.Buckets, bucketXML{Name: name, CreationDate: created[name].Format(s3Time), BucketRegion: h.cfg.Region})
	}
	return writeXML(w, out)
}

// A continuation token is the last name of the page before, opaque to
// clients.
func encodeToken(last string) string { return base64.RawURLEncoding.EncodeToString([]byte(last)) }

func decodeToken(token string) (string, *s3Error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || !utf8.Valid(b) {
		return "", errInvalidArgument("continuation-token is not one this server gave")
	}
	return string(b), nil
}

func (h *Handler) bucketLocation(w http.ResponseWriter) *s3Error {
	type location struct {
		XMLName xml.Name `xml:"LocationConstraint"`
		NS      string   `xml:"xmlns,attr"`
		Region  string   `xml:",chardata"`
	}
	region := h.cfg.Region
	if region == "us-east-1" {
		region = "" // as AWS answers for its default region
	}
	return writeXML(w, location{NS: s3NS, Region: region})
}

type contentXML struct {
	Key          string    `xml:"Key"`
	LastModified string    `xml:"LastModified"`
	ETag         string    `xml:"ETag"`
	Size         int64     `xml:"Size"`
	StorageClass string    `xml:"StorageClass"`
	Owner        *ownerXML `xml:"Owner,omitempty"`
}

type prefixXML struct {
	Prefix string `xml:"Prefix"`
}

type listObjectsXML struct {
	XMLName               xml.Name     `xml:"ListBucketResult"`
	NS                    string       `xml:"xmlns,attr"`
	Name                  string       `xml:"Name"`
	Prefix                string       `xml:"Prefix"`
	Delimiter             string       `xml:"Delimiter,omitempty"`
	MaxKeys               int          `xml:"MaxKeys"`
	EncodingType          string       `xml:"EncodingType,omitempty"`
	IsTruncated           bool         `xml:"IsTruncated"`
	KeyCount              *int         `xml:"KeyCount,omitempty"`
	Marker                *string      `xml:"Marker,omitempty"`
	NextMarker            string       `xml:"NextMarker,omitempty"`
	ContinuationToken     *string      `xml:"ContinuationToken"`
	NextContinuationToken string       `xml:"NextContinuationToken,omitempty"`
	StartAfter            string       `xml:"StartAfter,omitempty"`
	Contents              []contentXML `xml:"Contents"`
	CommonPrefixes        []prefixXML  `xml:"CommonPrefixes"`
}

// listObjects answers ListObjectsV2 (list-type=2) and the original
// ListObjects, with prefix, delimiter and paging.
func (h *Handler) listObjects(w http.ResponseWriter, r *http.Request, bucket, typ string) *s3Error {
	q := r.URL.Query()
	v2 := q.Get("list-type") == "2"
	prefix, delim := q.Get("prefix"), q.Get("delimiter")
	limit := maxKeys
	if s := q.Get("max-keys"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return errInvalidArgument("max-keys: want a number from 0 to 1000")
		}
		limit = min(n, maxKeys)
	}
	encodeURL := q.Get("encoding-type") == "url"
	if et := q.Get("encoding-type"); et != "" && !encodeURL {
		return errInvalidArgument("encoding-type: only url is supported")
	}
	// Everything sorting at or before after is skipped.
	after := ""
	if v2 {
		after = q.Get("start-after")
		if tok := q.Get("continuation-token"); tok != "" {
			var serr *s3Error
			if after, serr = decodeToken(tok); serr != nil {
				return serr
			}
		}
	} else {
		after = q.Get("marker")
	}

	objs, err := h.bucketObjects(r.Context(), typ, baseURL(r))
	if err != nil {
		h.log.Error("S3 list", "bucket", bucket, "err", err)
		return errInternal()
	}
	enc := func(s string) string {
		if encodeURL {
			return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
		}
		return s
	}
	out := listObjectsXML{NS: s3NS, Name: bucket, Prefix: enc(prefix), Delimiter: enc(delim), MaxKeys: limit}
	if encodeURL {
		out.EncodingType = "url"
	}
	// V1 always names the owner; V2 when asked.
	var objOwner *ownerXML
	if !v2 || q.Get("fetch-owner") == "true" {
		objOwner = &owner
	}
	seenPrefix := map[string]bool{}
	count, last := 0, ""
	if limit == 0 {
		objs = nil // S3 lists nothing, and says there is no more
	}
	for _, o := range objs {
		if !strings.HasPrefix(o.key, prefix) || o.key <= after {
			continue
		}
		// Keys under a common prefix are rolled up into it.
		if delim != "" {
			if i := strings.Index(o.key[len(prefix):], delim); i >= 0 {
				cp := o.key[:len(prefix)+i+len(delim)]
				if cp <= after || seenPrefix[cp] {
					continue
				}
				if count == limit {
					out.IsTruncated = true
					break
				}
				seenPrefix[cp] = true
				out.CommonPrefixes = append(out.CommonPrefixes, prefixXML{enc(cp)})
				count++
				// Paging resumes after everything under the prefix.
				last = cp + "\xff"
				continue
			}
		}
		if count == limit {
			out.IsTruncated = true
			break
		}
		out.Contents = append(out.Contents, contentXML{
			Key: enc(o.key), LastModified: o.modified.Format(s3Time),
			ETag: o.etag, Size: o.size, StorageClass: "STANDARD", Owner: objOwner,
		})
		count++
		last = o.key
	}
	if v2 {
		out.KeyCount = &count
		if q.Has("continuation-token") {
			token := q.Get("continuation-token")
			out.ContinuationToken = &token
		}
		out.StartAfter = enc(q.Get("start-after"))
		if out.IsTruncated {
			out.NextContinuationToken = encodeToken(last)
		}
	} else {
		marker := enc(q.Get("marker"))
		out.Marker = &marker
		if out.IsTruncated && delim != "" {
			out.NextMarker = enc(strings.TrimSuffix(last, "\xff"))
		}
	}
	return writeXML(w, out)
}

func writeXML(w http.ResponseWriter, v any) *s3Error {
	b, err := xml.Marshal(v)
	if err != nil {
		return errInternal()
	}
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(xml.Header)+len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(xml.Header))
	w.Write(b)
	return nil
}
