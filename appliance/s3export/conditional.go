package s3export

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// checkPreconditions evaluates a GET's or HEAD's conditional headers
// against an object's validators in the order of RFC 9110 §13.2.2, which
// S3 follows: If-Match, or else If-Unmodified-Since, fails with 412;
// then If-None-Match, or else If-Modified-Since, answers 304. So a
// matching If-Match wins over a failing If-Unmodified-Since, and a
// matching If-None-Match gives 304 whatever If-Modified-Since says.
// It returns the header that decided and its status, or 0 to go on.
func checkPreconditions(hdr http.Header, etag string, modified time.Time) (string, int) {
	// Last-Modified has whole seconds: compare what the client saw.
	lastModified := modified.Truncate(time.Second)
	if list := headerList(hdr, "If-Match"); list != "" {
		if !etagListMatches(list, etag, false) {
			return "If-Match", http.StatusPreconditionFailed
		}
	} else if t, ok := httpDate(hdr.Get("If-Unmodified-Since")); ok && lastModified.After(t) {
		return "If-Unmodified-Since", http.StatusPreconditionFailed
	}
	if list := headerList(hdr, "If-None-Match"); list != "" {
		if etagListMatches(list, etag, true) {
			return "If-None-Match", http.StatusNotModified
		}
	} else if t, ok := httpDate(hdr.Get("If-Modified-Since")); ok && !lastModified.After(t) {
		return "If-Modified-Since", http.StatusNotModified
	}
	return "", 0
}

// rangeStillValid is If-Range: a Range applies only while the object is
// the one the client names by ETag (strong comparison) or Last-Modified.
func rangeStillValid(ifRange, etag string, modified time.Time) bool {
	switch {
	case ifRange == "":
		return true
	case strings.HasPrefix(ifRange, `"`) || strings.HasPrefix(ifRange, "W/"):
		return etagListMatches(ifRange, etag, false)
	}
	t, ok := httpDate(ifRange)
	return ok && modified.Truncate(time.Second).Equal(t)
}

// headerList joins the values of a list header sent more than once.
func headerList(hdr http.Header, name string) string {
	return strings.TrimSpace(strings.Join(hdr.Values(name), ","))
}

// etagListMatches tells whether a list of entity tags ("*" for any)
// names etag. Weak comparison ignores W/; strong never matches a weak
// tag. S3 also takes tags without their quotes.
func etagListMatches(list, etag string, weak bool) bool {
	want := strings.Trim(etag, `"`)
	for _, tag := range strings.Split(list, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" {
			return true
		}
		if rest, ok := strings.CutPrefix(tag, "W/"); ok {
			if !weak {
				continue
			}
			tag = rest
		}
		if strings.Trim(tag, `"`) == want {
			return true
		}
	}
	return false
}

// httpDate parses an HTTP date; an invalid one is ignored, as S3 does.
func httpDate(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	t, err := http.ParseTime(s)
	return t, err == nil
}

// responseHeaders are the query parameters of a GET or HEAD that set the
// answer's headers, e.g. for a browser's download through a presigned
// URL. S3 takes them only in signed requests, which all requests here are.
var responseHeaders = map[string]string{
	"response-content-type":        "Content-Type",
	"response-content-language":    "Content-Language",
	"response-expires":             "Expires",
	"response-cache-control":       "Cache-Control",
	"response-content-disposition": "Content-Disposition",
	"response-content-encoding":    "Content-Encoding",
}

// responseOverrides returns the headers the query sets.
func responseOverrides(q url.Values) (map[string]string, *s3Error) {
	out := map[string]string{}
	for param, header := range responseHeaders {
		v := q.Get(param)
		if v == "" {
			continue
		}
		if !validHeaderValue(v) {
			return nil, errInvalidArgument(param + ": control characters are not allowed in a header")
		}
		out[header] = v
	}
	return out, nil
}

// validHeaderValue refuses what would break or split a header (RFC 9110
// field-value: visible characters, spaces, tabs and obs-text).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// objectVariant checks partNumber, with which S3 reads one part of a
// multipart upload's object (versionId=null, the other such parameter,
// names the object itself in a bucket without versioning). Objects here
// are one part: part 1 is the whole object, and part says it was asked
// for.
func objectVariant(r *http.Request) (part bool, _ *s3Error) {
	q := r.URL.Query()
	if !q.Has("partNumber") {
		return false, nil
	}
	n, err := strconv.Atoi(q.Get("partNumber"))
	switch {
	case err != nil || n < 1 || n > 10000:
		return false, errInvalidArgument("partNumber: want an integer from 1 to 10000")
	case r.Header.Get("Range") != "":
		return false, &s3Error{http.StatusBadRequest, "InvalidRequest", "cannot specify both a Range header and partNumber"}
	case n != 1:
		return false, &s3Error{http.StatusRequestedRangeNotSatisfiable, "InvalidPartNumber", "the requested part number is not satisfiable: objects here have one part"}
	}
	return true, nil
}

// hasMultipartForm tells whether an ETag has the form of a multipart
// upload's ("<hex>-<parts>"), which the objects' ETags that are not
// their MD5 take.
func hasMultipartForm(etag string) bool {
	return strings.Contains(etag, "-")
}

// checkUTF8 refuses a request whose bucket, key or query is not valid
// UTF-8, which S3 keys must be: InvalidURI for the path, InvalidArgument
// for a query parameter (prefix, marker, start-after ...), as S3 answers.
func checkUTF8(bucket, key string, q url.Values) *s3Error {
	if !utf8.ValidString(bucket) || !utf8.ValidString(key) {
		return &s3Error{http.StatusBadRequest, "InvalidURI", "could not parse the specified URI: the key is not valid UTF-8"}
	}
	for name, values := range q {
		if !utf8.ValidString(name) {
			return errInvalidArgument("a query parameter's name is not valid UTF-8")
		}
		for _, v := range values {
			if !utf8.ValidString(v) {
				return errInvalidArgument(name + ": not valid UTF-8")
			}
		}
	}
	return nil
}
