package s3export

import (
	"encoding/xml"
	"net/http"

	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
)

// s3Error is an error answer in S3's XML form.
type s3Error struct {
	status  int
	code    string
	message string
}

func (e *s3Error) Error() string { return e.code + ": " + e.message }

func errAccessDenied(msg string) *s3Error {
	return &s3Error{http.StatusForbidden, "AccessDenied", msg}
}

func errSignature() *s3Error {
	return &s3Error{http.StatusForbidden, "SignatureDoesNotMatch",
		"the request signature we calculated does not match the signature you provided; check your key and signing method"}
}

func errInvalidArgument(msg string) *s3Error {
	return &s3Error{http.StatusBadRequest, "InvalidArgument", msg}
}

func errNoSuchBucket(bucket string) *s3Error {
	return &s3Error{http.StatusNotFound, "NoSuchBucket", "the specified bucket does not exist: " + bucket}
}

func errNoSuchKey(key string) *s3Error {
	return &s3Error{http.StatusNotFound, "NoSuchKey", "the specified key does not exist: " + key}
}

func errKeyTooLong() *s3Error {
	return &s3Error{http.StatusBadRequest, "KeyTooLongError", "your key is too long: a PE ID part must fit a file name (255 bytes)"}
}

func errNotImplemented(msg string) *s3Error {
	return &s3Error{http.StatusNotImplemented, "NotImplemented", msg}
}

func errPreconditionFailed(header string) *s3Error {
	return &s3Error{http.StatusPreconditionFailed, "PreconditionFailed", "at least one of the preconditions you specified did not hold: " + header}
}

func errInternal() *s3Error {
	return &s3Error{http.StatusInternalServerError, "InternalError", "we encountered an internal error; see the appliance's log"}
}

type errorXML struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource,omitempty"`
	RequestID string   `xml:"RequestId"`
}

func writeError(w http.ResponseWriter, r *http.Request, e *s3Error, requestID string) {
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("X-Amz-Request-Id", requestID)
	w.WriteHeader(e.status)
	if r.Method == http.MethodHead {
		return
	}
	w.Write([]byte(xml.Header))
	// What failed, not where on the appliance.
	xml.NewEncoder(w).Encode(errorXML{Code: e.code, Message: redact.Message(e.message), Resource: r.URL.Path, RequestID: requestID})
}
