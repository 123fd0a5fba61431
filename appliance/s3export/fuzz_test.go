package s3export

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/samples/samplestest"
)

// fuzzNow is the clock of the fuzz targets: signatures are made for it.
var fuzzNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// sign signs r for the handler's keys at fuzzNow (header form), as an
// S3 client does, so that the fuzzed request reaches the parser behind
// the signature check.
func sign(r *http.Request, access, secret, payload string) {
	signAt(r, access, secret, payload, fuzzNow)
}

// signAt signs r as a client does at time now.
func signAt(r *http.Request, access, secret, payload string, now time.Time) {
	amzDate := now.Format(amzDateFormat)
	r.Header.Set("X-Amz-Date", amzDate)
	r.Header.Set("X-Amz-Content-Sha256", payload)
	signed := []string{"host", "x-amz-content-sha256", "x-amz-date"}
	canonical, err := canonicalRequest(r, signed, payload, "")
	if err != nil {
		panic(err)
	}
	h := &Handler{cfg: Config{AccessKey: access, SecretKey: secret}}
	scope, key, serr := h.scope(access+"/"+now.Format("20060102")+"/us-east-1/s3/aws4_request", now)
	if serr != nil {
		panic(serr)
	}
	r.Header.Set("Authorization", fmt.Sprintf("%s Credential=%s/%s, SignedHeaders=%s, Signature=%s",
		sigAlgorithm, access, scope, strings.Join(signed, ";"), signString(key, amzDate, scope, canonical)))
}

// FuzzS3Request sends signed requests with fuzzed methods, paths, queries,
// ranges and bodies through the whole handler: routing, bucket and key
// parsing, ranges, uploads. Nothing may panic, every answer is a valid
// status, and only the copy bucket ever takes a write.
func FuzzS3Request(f *testing.F) {
	_, m := samplestest.Config(f)
	snap := samplestest.Snapshot(f, m, "disk:sample.img")
	h, err := New(Config{Manager: m, AccessKey: accessKey, SecretKey: secretKey, TempDir: f.TempDir(), MaxUpload: 1 << 20,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint8(0), "/disk/"+snap.String(), "", "bytes=0-99", []byte(nil))
	f.Add(uint8(0), "/disk/"+snap.String()+".peinfo", "", "bytes=-10", []byte(nil))
	f.Add(uint8(0), "/disk", "list-type=2&prefix=disk&max-keys=1&continuation-token=x", "", []byte(nil))
	f.Add(uint8(0), "/", "", "", []byte(nil))
	f.Add(uint8(0), "/fs-pe", "location", "", []byte(nil))
	f.Add(uint8(1), "/disk/"+snap.String()+".md", "", "bytes=5-", []byte(nil))
	f.Add(uint8(2), "/copy/a.zip", "", "", []byte("PK\x03\x04not a zip"))
	f.Add(uint8(2), "/copy/a.zip", "uploadId=1&partNumber=2", "", []byte("x"))
	f.Add(uint8(3), "/copy/a.zip", "uploads", "", []byte(nil))
	f.Add(uint8(4), "/disk/"+snap.String(), "", "", []byte(nil))
	f.Add(uint8(2), "/disk/%2e%2e/x", "", "", []byte("x"))
	f.Add(uint8(0), "/disk/"+strings.Repeat("a", 300)+":x", "", "", []byte(nil))
	methods := []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodDelete}
	f.Fuzz(func(t *testing.T, method uint8, path, query, rng string, body []byte) {
		u := &url.URL{Scheme: "http", Host: "s3.test", Path: path, RawQuery: query}
		r, err := http.NewRequest(methods[int(method)%len(methods)], u.String(), bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		sign(r, accessKey, secretKey, unsignedPayload)
		w := httptest.NewRecorder()
		sig, serr := h.verify(r, fuzzNow)
		if serr == nil {
			serr = h.serve(w, r, sig, "fuzz")
		}
		if serr != nil {
			writeError(w, r, serr, "fuzz")
		}
		code := w.Code
		if code < 200 || code > 599 {
			t.Fatalf("%s %s?%s: status %d", r.Method, path, query, code)
		}
		// Writes: uploads to the copy bucket, and CreateBucket of a
		// bucket that exists, which changes nothing.
		bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		write := r.Method == http.MethodPut || r.Method == http.MethodPost || r.Method == http.MethodDelete
		if code < 300 && write && bucket != CopyBucket && !(r.Method == http.MethodPut && key == "") {
			t.Fatalf("%s %s answered %d", r.Method, path, code)
		}
		if code >= 500 && code != http.StatusNotImplemented {
			t.Fatalf("%s %s?%s (range %q): %d %s", r.Method, path, query, rng, code, w.Body)
		}
	})
}

// FuzzSigV4 gives the signature check fuzzed Authorization headers,
// dates, presigned queries and paths under a secret the fuzzer does not
// know: none may pass, and none may panic.
func FuzzSigV4(f *testing.F) {
	h := &Handler{cfg: Config{AccessKey: accessKey, SecretKey: secretKey, Region: "us-east-1"}}
	// Seeds are well-formed requests signed with another secret.
	seed := func(path, query string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "http://s3.test"+path+"?"+query, nil)
		sign(r, accessKey, "not-the-secret", emptySHA256)
		return r
	}
	for _, r := range []*http.Request{seed("/disk/x", ""), seed("/", "a=b&a=c"), seed("/copy/a%20b.zip", "x=%2F")} {
		f.Add(r.URL.Path, r.URL.RawQuery, r.Header.Get("Authorization"), r.Header.Get("X-Amz-Date"), r.Header.Get("X-Amz-Content-Sha256"))
	}
	f.Add("/disk/x", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="+accessKey+"%2F20261125%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261125T120000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature="+hex.EncodeToString(make([]byte, 32)), "", "", "")
	f.Add("/", "", "AWS4-HMAC-SHA256 Credential=a/b/c/s3/aws4_request,SignedHeaders=,Signature=", "20261125T120000Z", "UNSIGNED-PAYLOAD")
	f.Add("/", "", "AWS4-HMAC-SHA256 ,,,=", "", "")
	f.Fuzz(func(t *testing.T, path, query, auth, date, payload string) {
		u := &url.URL{Scheme: "http", Host: "s3.test", Path: path, RawQuery: query}
		r, err := http.NewRequest(http.MethodGet, u.String(), nil)
		if err != nil {
			return
		}
		r.Header.Set("Authorization", auth)
		r.Header.Set("X-Amz-Date", date)
		r.Header.Set("X-Amz-Content-Sha256", payload)
		sig, serr := h.verify(r, fuzzNow)
		if serr == nil {
			t.Fatalf("signature accepted without the secret: %+v (auth %q, query %q)", sig, auth, query)
		}
		if serr.status != http.StatusForbidden && serr.status != http.StatusBadRequest {
			t.Fatalf("refused with %d %s", serr.status, serr.code)
		}
	})
}

// chunkBody encodes data as a signed aws-chunked body of chunk-byte
// chunks, as an SDK does, chaining from the request's seed signature.
func chunkBody(sig *signedRequest, data []byte, chunk int) []byte {
	var b bytes.Buffer
	prev := sig.seedSignature
	emit := func(p []byte) {
		sum := sha256.Sum256(p)
		toSign := "AWS4-HMAC-SHA256-PAYLOAD\n" + sig.amzDate + "\n" + sig.scope + "\n" + prev + "\n" + emptySHA256 + "\n" + hex.EncodeToString(sum[:])
		s := hex.EncodeToString(hmacSHA256(sig.signingKey, toSign))
		fmt.Fprintf(&b, "%x;chunk-signature=%s\r\n", len(p), s)
		b.Write(p)
		b.WriteString("\r\n")
		prev = s
	}
	for len(data) > 0 {
		n := min(chunk, len(data))
		emit(data[:n])
		data = data[n:]
	}
	emit(nil)
	return b.Bytes()
}

// FuzzChunked decodes fuzzed aws-chunked bodies, signed and unsigned
// (nothing may panic or read without end), and checks that data encoded
// as signed chunks decodes to itself while one flipped byte of the body
// never decodes to other data unnoticed.
func FuzzChunked(f *testing.F) {
	sig := &signedRequest{seedSignature: strings.Repeat("ab", 32), signingKey: []byte("0123456789abcdef0123456789abcdef"),
		amzDate: "20261125T120000Z", scope: "20261125/us-east-1/s3/aws4_request"}
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), []byte("hello world"), uint16(4), uint16(3))
	f.Add([]byte("ffffffffffffffff\r\n"), []byte(""), uint16(1), uint16(0))
	f.Add([]byte("3;chunk-signature=00\r\nabc\r\n0;chunk-signature=00\r\nx-amz-checksum-crc32:AAAA\r\n\r\n"), []byte("x"), uint16(0), uint16(9))
	f.Add([]byte("-1\r\n"), []byte("data"), uint16(64), uint16(100))
	f.Fuzz(func(t *testing.T, body, data []byte, chunk, flip uint16) {
		// Small inputs keep the fuzzer fast: a megabyte in one-byte
		// chunks is a million signatures and tests nothing more.
		data = data[:min(len(data), 4<<10)]
		for _, s := range []*signedRequest{nil, sig} {
			n, _ := io.Copy(io.Discard, io.LimitReader(newChunkedReader(bytes.NewReader(body), s, nil), 1<<20))
			if n > int64(len(body)) {
				t.Fatalf("decoded %d bytes from a body of %d", n, len(body))
			}
		}
		enc := chunkBody(sig, data, int(chunk)+1)
		got, err := io.ReadAll(newChunkedReader(bytes.NewReader(enc), sig, nil))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round trip of %d bytes in %d-byte chunks: %d bytes, %v", len(data), int(chunk)+1, len(got), err)
		}
		if len(enc) > 0 {
			bad := bytes.Clone(enc)
			bad[int(flip)%len(bad)] ^= 0x01
			got, err := io.ReadAll(newChunkedReader(bytes.NewReader(bad), sig, nil))
			if err == nil && !bytes.Equal(got, data) {
				t.Fatalf("a flipped byte at %d decoded to other data without an error", int(flip)%len(bad))
			}
		}
	})
}
