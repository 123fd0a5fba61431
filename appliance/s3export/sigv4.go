package s3export

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// AWS Signature Version 4, as S3 checks it: the header form
// (Authorization: AWS4-HMAC-SHA256 ...) and the presigned-URL form
// (X-Amz-Signature in the query).
const (
	sigAlgorithm     = "AWS4-HMAC-SHA256"
	amzDateFormat    = "20060102T150405Z"
	unsignedPayload  = "UNSIGNED-PAYLOAD"
	streamingPayload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	// Newer SDKs send aws-chunked bodies without chunk signatures, with a
	// checksum trailer.
	streamingUnsignedTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
	emptySHA256              = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	maxClockSkew             = 15 * time.Minute
	maxPresignExpiry         = 7 * 24 * time.Hour
)

// signedRequest is what a verified signature tells about a request.
type signedRequest struct {
	payloadHash string // x-amz-content-sha256 (or UNSIGNED-PAYLOAD)
	// For streaming uploads: what chunk signatures chain from.
	seedSignature string
	signingKey    []byte
	amzDate       string
	scope         string
}

// verify checks the request's signature against the configured keys.
func (h *Handler) verify(r *http.Request, now time.Time) (*signedRequest, *s3Error) {
	if r.URL.Query().Get("X-Amz-Signature") != "" {
		return h.verifyPresigned(r, now)
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return nil, errAccessDenied("anonymous access is not allowed: sign requests with AWS Signature Version 4")
	}
	rest, ok := strings.CutPrefix(auth, sigAlgorithm+" ")
	if !ok {
		return nil, errInvalidArgument("Authorization: only " + sigAlgorithm + " signatures are accepted")
	}
	fields := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, errInvalidArgument("Authorization: malformed field " + part)
		}
		fields[k] = v
	}
	cred, signedHeaders, signature := fields["Credential"], fields["SignedHeaders"], fields["Signature"]
	if cred == "" || signedHeaders == "" || signature == "" {
		return nil, errInvalidArgument("Authorization: want Credential, SignedHeaders and Signature")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		amzDate = r.Header.Get("Date")
	}
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return nil, errAccessDenied("X-Amz-Date missing or malformed")
	}
	if d := now.Sub(t); d > maxClockSkew || d < -maxClockSkew {
		return nil, &s3Error{http.StatusForbidden, "RequestTimeTooSkewed", "the difference between the request time and the server's time is too large"}
	}
	scope, key, serr := h.scope(cred, t)
	if serr != nil {
		return nil, serr
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	if payload == "" {
		// Only presigned URLs may leave the payload out of the signature.
		return nil, errInvalidArgument("x-amz-content-sha256 header missing")
	}
	canonical, err := canonicalRequest(r, strings.Split(signedHeaders, ";"), payload, "")
	if err != nil {
		return nil, errInvalidArgument(err.Error())
	}
	want := signString(key, amzDate, scope, canonical)
	if !hmac.Equal([]byte(want), []byte(signature)) {
		return nil, errSignature()
	}
	return &signedRequest{payloadHash: payload, seedSignature: signature, signingKey: key, amzDate: amzDate, scope: scope}, nil
}

func (h *Handler) verifyPresigned(r *http.Request, now time.Time) (*signedRequest, *s3Error) {
	q := r.URL.Query()
	if q.Get("X-Amz-Algorithm") != sigAlgorithm {
		return nil, errInvalidArgument("X-Amz-Algorithm: want " + sigAlgorithm)
	}
	amzDate := q.Get("X-Amz-Date")
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return nil, errAccessDenied("X-Amz-Date missing or malformed")
	}
	expires, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	if err != nil || expires < 0 || time.Duration(expires)*time.Second > maxPresignExpiry {
		return nil, errInvalidArgument("X-Amz-Expires: want seconds up to 7 days")
	}
	if now.Before(t.Add(-maxClockSkew)) {
		return nil, errAccessDenied("request is not valid yet")
	}
	if now.After(t.Add(time.Duration(expires) * time.Second)) {
		return nil, errAccessDenied("request has expired")
	}
	scope, key, serr := h.scope(q.Get("X-Amz-Credential"), t)
	if serr != nil {
		return nil, serr
	}
	canonical, err := canonicalRequest(r, strings.Split(q.Get("X-Amz-SignedHeaders"), ";"), unsignedPayload, "X-Amz-Signature")
	if err != nil {
		return nil, errInvalidArgument(err.Error())
	}
	want := signString(key, amzDate, scope, canonical)
	if !hmac.Equal([]byte(want), []byte(q.Get("X-Amz-Signature"))) {
		return nil, errSignature()
	}
	return &signedRequest{payloadHash: unsignedPayload}, nil
}

// scope checks a credential "AKID/20261125/us-east-1/s3/aws4_request" and
// returns the scope string and the signing key derived for it.
func (h *Handler) scope(cred string, t time.Time) (string, []byte, *s3Error) {
	parts := strings.Split(cred, "/")
	if len(parts) != 5 || parts[3] != "s3" || parts[4] != "aws4_request" {
		return "", nil, errInvalidArgument("malformed credential " + cred)
	}
	if !hmac.Equal([]byte(parts[0]), []byte(h.cfg.AccessKey)) {
		return "", nil, &s3Error{http.StatusForbidden, "InvalidAccessKeyId", "the access key ID does not exist here"}
	}
	if parts[1] != t.UTC().Format("20060102") {
		return "", nil, errSignature()
	}
	key := hmacSHA256([]byte("AWS4"+h.cfg.SecretKey), parts[1])
	key = hmacSHA256(key, parts[2])
	key = hmacSHA256(key, "s3")
	key = hmacSHA256(key, "aws4_request")
	return strings.Join(parts[1:], "/"), key, nil
}

func signString(key []byte, amzDate, scope, canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	toSign := sigAlgorithm + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	return hex.EncodeToString(hmacSHA256(key, toSign))
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

// canonicalRequest builds SigV4's canonical request. The path is encoded
// again from its decoded form, as S3 does (no double encoding).
func canonicalRequest(r *http.Request, signedHeaders []string, payloadHash, skipQuery string) (string, error) {
	var b strings.Builder
	b.WriteString(r.Method + "\n")
	b.WriteString(uriEncode(r.URL.Path, false) + "\n")

	q := r.URL.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		if k != skipQuery {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var pairs []string
	for _, k := range keys {
		vals := append([]string(nil), q[k]...)
		sort.Strings(vals)
		for _, v := range vals {
			pairs = append(pairs, uriEncode(k, true)+"="+uriEncode(v, true))
		}
	}
	b.WriteString(strings.Join(pairs, "&") + "\n")

	sort.Strings(signedHeaders)
	hasHost := false
	for _, name := range signedHeaders {
		name = strings.ToLower(name)
		var value string
		switch name {
		case "host":
			hasHost, value = true, r.Host
		case "content-length":
			value = strconv.FormatInt(r.ContentLength, 10)
			if v := r.Header.Get("Content-Length"); v != "" {
				value = v
			}
		default:
			vals := r.Header.Values(name)
			for i, v := range vals {
				vals[i] = strings.Join(strings.Fields(v), " ")
			}
			value = strings.Join(vals, ",")
		}
		b.WriteString(name + ":" + value + "\n")
	}
	if !hasHost {
		return "", fmt.Errorf("the host header must be signed")
	}
	b.WriteString("\n" + strings.Join(signedHeaders, ";") + "\n")
	b.WriteString(payloadHash)
	return b.String(), nil
}

// uriEncode is SigV4's URI encoding: everything but unreserved characters
// (and '/' in paths) as %XX with upper-case hex.
func uriEncode(s string, encodeSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// objectURL is the path-style URL of an object, encoded as clients do.
func objectURL(base, bucket, key string) string {
	return strings.TrimSuffix(base, "/") + "/" + url.PathEscape(bucket) + "/" + uriEncode(key, false)
}
