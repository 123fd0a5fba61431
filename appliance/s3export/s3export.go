// Package s3export is the appliance's S3 data path: PE snapshots served as
// S3 objects that real S3 clients read, and zips uploaded into the bucket
// "copy" restored as new PEs (the Astrolabe spec's copy-by-upload).
//
// Buckets are PE types. In bucket <type>, each snapshot <peid> has:
//
//	<peid>          its data image (GET with Range, HEAD)
//	<peid>.md       its metadata stream, where the PE has one
//	<peid>.peinfo   its PE info JSON, with these URLs as transports
//	<peid>.zip      the reference's zip of the PE and its components,
//	                built on first request and cached (not listed: its
//	                size is unknown until it is built)
//
// Only snapshots are objects: a live PE changes under a reader.
//
// The S3 subset is written here rather than taken from a library: the
// Go S3 server libraries on offer either verify no signatures and buffer
// uploads in memory (gofakes3) or are whole gateways with a 60-method
// backend interface and their own web framework (versitygw). Serving a
// few read paths from random-access images, SigV4 and a streamed upload
// are a small, testable amount of code.
package s3export

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// CopyBucket is the bucket that takes zip uploads to restore.
const CopyBucket = "copy"

// Config configures a Handler.
type Config struct {
	Manager pe.Manager
	// AccessKey and SecretKey are the credentials requests must be
	// signed with (SigV4).
	AccessKey, SecretKey string
	// Region is reported by GetBucketLocation (default us-east-1).
	Region string
	// TempDir holds uploads being received and the zip cache (default
	// the system's temporary directory).
	TempDir string
	// StateDir keeps what must outlive a restart: the buckets' creation
	// dates. It should be the appliance's own (0700); with none, they are
	// kept in memory and change at a restart.
	StateDir string
	// MaxUpload bounds an uploaded zip (default 1 TiB).
	MaxUpload int64
	// MaxExpansion bounds what the restore of an uploaded zip writes, as
	// a multiple of its compressed data (pe.CopyOptions.MaxExpansion).
	MaxExpansion int
	Logger       *slog.Logger
	// Uploads configures the restores of uploads and multipart uploads
	// (upload.go, multipart.go).
	Uploads UploadOptions
}

// Handler serves the S3 data path.
type Handler struct {
	cfg    Config
	log    *slog.Logger
	served atomic.Int64
	zips   *zipCache
	mp     *multipartStore // multipart.go
	// bucketDates are the buckets' creation dates.
	bucketDates *bucketDates
	// zipWriter is hashed into the zips' ETags (zipWriter()).
	zipWriter string

	mu      sync.Mutex
	uploads []upload // recent copy-by-uploads, oldest first
}

// upload records a restored zip: clients check an upload with HEAD (rclone
// does), and list the bucket. The zip itself is not kept.
type upload struct {
	object
	pe pe.ID
}

// maxUploadRecords bounds the uploads remembered.
const maxUploadRecords = 1000

// New returns a Handler; the credentials must be set.
func New(cfg Config) (*Handler, error) {
	if cfg.AccessKey == "" || cfg.SecretKey == "" {
		return nil, errors.New("S3 data path: access key and secret key must be set")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.TempDir == "" {
		cfg.TempDir = os.TempDir()
	}
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = 1 << 40
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	zc, err := newZipCache(filepath.Join(cfg.TempDir, "astrolabe-s3-zips"), cfg.Manager)
	if err != nil {
		return nil, err
	}
	mp, err := newMultipartStore(filepath.Join(cfg.TempDir, "astrolabe-s3-uploads"), cfg.Manager, cfg.Uploads)
	if err != nil {
		return nil, err
	}
	return &Handler{cfg: cfg, log: cfg.Logger, zips: zc, mp: mp, bucketDates: newBucketDates(cfg.StateDir),
		zipWriter: zipWriter()}, nil
}

// Forget drops what the handler keeps of a deleted snapshot (its zip).
// Zips of snapshots deleted otherwise go at the cache's next trim.
func (h *Handler) Forget(id pe.ID) { h.zips.remove(id) }

// BytesServed is the number of object bytes sent to clients.
func (h *Handler) BytesServed() int64 { return h.served.Load() }

// Transports are the URLs of a snapshot's objects under base (e.g.
// http://appliance:9000), for its PE info.
func Transports(base string, id pe.ID) (data, metadata, combined []pe.Transport) {
	if !id.HasSnapshot() {
		return nil, nil, nil
	}
	mk := func(key string) []pe.Transport {
		return []pe.Transport{{Type: "s3", Params: map[string]string{
			"url": objectURL(base, id.Type(), key), "bucket": id.Type(), "key": key,
		}}}
	}
	return mk(id.String()), mk(id.String() + ".md"), mk(id.String() + ".zip")
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	reqID := newRequestID()
	sig, serr := h.verify(r, time.Now())
	if serr == nil {
		serr = h.serve(w, r, sig, reqID)
	}
	if serr != nil {
		if serr.status >= 500 {
			h.log.Error("S3 request failed", "method", r.Method, "path", r.URL.Path, "code", serr.code, "err", serr.message)
		} else {
			h.log.Debug("S3 request refused", "method", r.Method, "path", r.URL.Path, "code", serr.code, "err", serr.message)
		}
		writeError(w, r, serr, reqID)
	}
}

// serve routes a verified request. Path-style only: /bucket/key.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, sig *signedRequest, reqID string) *s3Error {
	w.Header().Set("X-Amz-Request-Id", reqID)
	bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	if serr := checkUTF8(bucket, key, q); serr != nil {
		return serr
	}

	// Multipart uploads into the copy bucket (multipart.go), before the
	// sub-resources: POST ?uploads, PUT ?partNumber&uploadId, GET
	// ?uploadId, GET bucket?uploads, DELETE ?uploadId, POST ?uploadId.
	if bucket == CopyBucket && isMultipart(r.Method, key, q) {
		return h.serveMultipart(w, r, key, sig)
	}

	// Sub-resources (?acl, ?tagging, ?cors ...) are never answered with
	// an object's bytes or a listing (subresource.go).
	if name, ok := subresourceOf(q); ok {
		return h.serveSubresource(w, r, bucket, key, name)
	}
	switch {
	case bucket == "" && r.Method == http.MethodGet:
		return h.listBuckets(w, r)
	case bucket == "":
		return &s3Error{http.StatusMethodNotAllowed, "MethodNotAllowed", "only GET on the service"}
	case key == "" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		typ, err := h.peType(r.Context(), bucket)
		if err != nil {
			return err
		}
		if r.Method == http.MethodHead {
			return nil
		}
		return h.listObjects(w, r, bucket, typ)
	case key == "" && r.Method == http.MethodPut:
		// CreateBucket of a bucket that exists: clients (rclone) make
		// sure of the bucket before they upload; in us-east-1 S3 says
		// yes to its owner.
		if _, err := h.peType(r.Context(), bucket); err != nil {
			return &s3Error{http.StatusForbidden, "AccessDenied", "buckets are the appliance's PE types and " + CopyBucket + ": no others can be created"}
		}
		return nil
	case key == "":
		return &s3Error{http.StatusMethodNotAllowed, "MethodNotAllowed", "buckets are the appliance's PE types: they cannot be removed or changed"}
	case bucket == CopyBucket && r.Method == http.MethodPut:
		return h.upload(w, r, key, sig)
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		return h.getObject(w, r, bucket, key)
	}
	return &s3Error{http.StatusMethodNotAllowed, "MethodNotAllowed", "objects of the appliance are read-only; upload zips to the bucket " + CopyBucket}
}

// shortAlias names the alias bucket of PE types with names shorter than
// S3's 3-character minimum, which some clients (minio-go) enforce: "fs"
// is also the bucket "fs-pe".
const shortAlias = "-pe"

// peType resolves a bucket name to its PE type ("" for the copy bucket).
func (h *Handler) peType(ctx context.Context, bucket string) (string, *s3Error) {
	if bucket == CopyBucket {
		return "", nil
	}
	if _, err := h.cfg.Manager.Type(ctx, bucket); err == nil {
		return bucket, nil
	}
	if t, ok := strings.CutSuffix(bucket, shortAlias); ok && len(t) < 3 {
		if _, err := h.cfg.Manager.Type(ctx, t); err == nil {
			return t, nil
		}
	}
	return "", errNoSuchBucket(bucket)
}

// objectKind is what an object key refers to.
type objectKind int

const (
	kindData objectKind = iota
	kindMetadata
	kindInfo
	kindZip
)

var suffixes = map[objectKind]string{kindMetadata: ".md", kindInfo: ".peinfo", kindZip: ".zip"}

// parseKey splits a key into the snapshot it names and the kind of object.
func parseKey(typ, key string) (pe.ID, objectKind, *s3Error) {
	kind := kindData
	for k, suffix := range suffixes {
		if s, ok := strings.CutSuffix(key, suffix); ok {
			key, kind = s, k
			break
		}
	}
	id, err := pe.ParseID(key)
	if err != nil || id.Type() != typ {
		return pe.ID{}, 0, errNoSuchKey(key)
	}
	if !id.HasSnapshot() {
		return pe.ID{}, 0, &s3Error{http.StatusNotFound, "NoSuchKey", key + " is a live PE; only its snapshots are objects"}
	}
	return id, kind, nil
}

// object is one object's description.
type object struct {
	key      string
	size     int64
	modified time.Time
	etag     string
}

// etagOf is a stable ETag for an immutable snapshot image. It is not an MD5
// of the content (that would mean reading whole disks to list them), so it
// has the form of a multipart upload's ETag ("<hex>-1"), which clients
// know not to compare with the MD5 of what they read.
func etagOf(key string, size int64, modified time.Time) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d", key, size, modified.UnixNano()))
	return `"` + hex.EncodeToString(sum[:16]) + `-1"`
}

// md5ETag is the ETag of small objects and zips: their real MD5.
func md5ETag(b []byte) string {
	sum := md5.Sum(b)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

func baseURL(r *http.Request) string {
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// peInfoJSON is a snapshot's info with the S3 transports of this server.
func peInfoJSON(ctx context.Context, p pe.ProtectedEntity, base string) ([]byte, pe.Info, error) {
	info, err := p.Info(ctx)
	if err != nil {
		return nil, info, err
	}
	data, md, combined := Transports(base, p.ID())
	info.DataTransports = append(info.DataTransports, data...)
	info.MetadataTransports = append(info.MetadataTransports, md...)
	info.CombinedTransports = append(info.CombinedTransports, combined...)
	b, err := json.MarshalIndent(info, "", "  ")
	return b, info, err
}

// maxListedMetadata bounds how much metadata is read to learn its size.
const maxListedMetadata = 64 << 20

// snapshotObjects describes the listed objects of one snapshot.
func snapshotObjects(ctx context.Context, p pe.ProtectedEntity, base string) ([]object, error) {
	b, info, err := peInfoJSON(ctx, p, base)
	if err != nil {
		return nil, err
	}
	modified := time.Unix(0, 0).UTC()
	if info.Created != nil {
		modified = info.Created.UTC()
	}
	id := p.ID().String()
	size := info.Size
	if size < 0 {
		img, err := p.Data(ctx)
		if err != nil {
			return nil, err
		}
		size = img.Size()
		img.Close()
	}
	out := []object{
		{key: id, size: size, modified: modified, etag: etagOf(id, size, modified)},
		{key: id + ".peinfo", size: int64(len(b)), modified: modified, etag: md5ETag(b)},
	}
	md, err := readMetadata(ctx, p)
	switch {
	case err == nil:
		out = append(out, object{key: id + ".md", size: int64(len(md)), modified: modified, etag: md5ETag(md)})
	case !errors.Is(err, pe.ErrNoMetadata):
		return nil, err
	}
	return out, nil
}

// readMetadata reads a snapshot's metadata stream, which is small.
func readMetadata(ctx context.Context, p pe.ProtectedEntity) ([]byte, error) {
	rc, err := p.Metadata(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxListedMetadata+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxListedMetadata {
		return nil, fmt.Errorf("metadata of %s: larger than %d bytes", p.ID(), maxListedMetadata)
	}
	return b, nil
}

// bucketObjects lists every object of a bucket, sorted by key.
func (h *Handler) bucketObjects(ctx context.Context, typ, base string) ([]object, error) {
	if typ == "" {
		// The copy bucket: the latest upload of each key.
		h.mu.Lock()
		latest := map[string]object{}
		for _, u := range h.uploads {
			latest[u.key] = u.object
		}
		h.mu.Unlock()
		var out []object
		for _, o := range latest {
			out = append(out, o)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
		return out, nil
	}
	tm, err := h.cfg.Manager.Type(ctx, typ)
	if err != nil {
		return nil, err
	}
	ids, err := tm.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []object
	for _, id := range ids {
		p, err := tm.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		snaps, err := p.ListSnapshots(ctx)
		if err != nil {
			return nil, err
		}
		for _, s := range snaps {
			sp, err := tm.Get(ctx, s)
			if errors.Is(err, pe.ErrNotFound) {
				continue // deleted while we listed
			}
			if err != nil {
				return nil, err
			}
			objs, err := snapshotObjects(ctx, sp, base)
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", s, err)
			}
			out = append(out, objs...)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, nil
}

// objectReply is an object found for a GET or HEAD: what is known of it
// before its bytes are read, and how to read them.
type objectReply struct {
	etag        string
	modified    time.Time
	contentType string
	restoredAs  pe.ID // of an upload to the copy bucket
	// open returns the bytes; a zip is built at its first open, so
	// conditional requests are answered before it.
	open  func() (io.ReaderAt, int64, *s3Error)
	close func()
}

// findObject resolves bucket/key to an object; the caller closes it.
func (h *Handler) findObject(r *http.Request, bucket, key string) (*objectReply, *s3Error) {
	typ, serr := h.peType(r.Context(), bucket)
	if serr != nil {
		return nil, serr
	}
	if bucket == CopyBucket {
		return h.findUploadObject(r, key)
	}
	ctx := r.Context()
	id, kind, serr := parseKey(typ, key)
	if serr != nil {
		return nil, serr
	}
	p, err := h.cfg.Manager.Get(ctx, id)
	if errors.Is(err, pe.ErrNotFound) {
		return nil, errNoSuchKey(key)
	}
	if errors.Is(err, syscall.ENAMETOOLONG) {
		return nil, errKeyTooLong()
	}
	if err != nil {
		h.log.Error("S3 get", "key", key, "err", err)
		return nil, errInternal()
	}
	info, err := p.Info(ctx)
	if err != nil {
		h.log.Error("S3 get", "key", key, "err", err)
		return nil, errInternal()
	}
	modified := time.Unix(0, 0).UTC()
	if info.Created != nil {
		modified = info.Created.UTC()
	}
	inMemory := func(b []byte, contentType string) (*objectReply, *s3Error) {
		return &objectReply{etag: md5ETag(b), modified: modified, contentType: contentType, close: func() {},
			open: func() (io.ReaderAt, int64, *s3Error) { return bytesImage(b), int64(len(b)), nil }}, nil
	}
	switch kind {
	case kindData:
		img, err := p.Data(ctx)
		if err != nil {
			h.log.Error("S3 get data", "key", key, "err", err)
			return nil, errInternal()
		}
		return &objectReply{etag: etagOf(key, img.Size(), modified), modified: modified, contentType: "application/octet-stream",
			open:  func() (io.ReaderAt, int64, *s3Error) { return img, img.Size(), nil },
			close: func() { img.Close() }}, nil
	case kindInfo:
		b, _, err := peInfoJSON(ctx, p, baseURL(r))
		if err != nil {
			h.log.Error("S3 get info", "key", key, "err", err)
			return nil, errInternal()
		}
		return inMemory(b, "application/json")
	case kindMetadata:
		b, err := readMetadata(ctx, p)
		if errors.Is(err, pe.ErrNoMetadata) {
			return nil, &s3Error{http.StatusNotFound, "NoSuchKey", id.String() + " has no metadata"}
		}
		if err != nil {
			h.log.Error("S3 get metadata", "key", key, "err", err)
			return nil, errInternal()
		}
		return inMemory(b, "application/octet-stream")
	}
	// The zip's ETag is a hash of what it is built from, not its MD5:
	// it is known without a build, stays the same across rebuilds and
	// restarts, and changes when the zip's bytes would.
	src, err := readZipSource(ctx, p, 0)
	if err != nil {
		h.log.Error("S3 get zip", "key", key, "err", err)
		return nil, errInternal()
	}
	etag := src.etag(h.zipWriter)
	rep := &objectReply{etag: etag, modified: modified, contentType: "application/zip", close: func() {}}
	rep.open = func() (io.ReaderAt, int64, *s3Error) {
		z, err := h.zips.get(ctx, src, etag)
		if err != nil {
			h.log.Error("S3 get zip", "key", key, "err", err)
			return nil, 0, errInternal()
		}
		rep.close = func() { z.f.Close() }
		return z.f, z.size, nil
	}
	return rep, nil
}

// findUploadObject finds an upload to the copy bucket: it answers HEAD
// (clients check what they uploaded), but the zip itself is not kept.
func (h *Handler) findUploadObject(r *http.Request, key string) (*objectReply, *s3Error) {
	u, ok := h.findUpload(key)
	if !ok {
		return nil, errNoSuchKey(key)
	}
	return &objectReply{etag: u.etag, modified: u.modified, contentType: "application/zip", restoredAs: u.pe, close: func() {},
		open: func() (io.ReaderAt, int64, *s3Error) {
			if r.Method != http.MethodHead {
				return nil, 0, &s3Error{http.StatusNotFound, "NoSuchKey", fmt.Sprintf("%s was restored as %s; uploaded zips are not kept", key, u.pe)}
			}
			return bytesImage(nil), u.size, nil
		}}, nil
}

// getObject answers GET and HEAD of an object: conditional, with a
// single byte range when one is asked for, with the response headers the
// query overrides.
func (h *Handler) getObject(w http.ResponseWriter, r *http.Request, bucket, key string) *s3Error {
	overrides, serr := responseOverrides(r.URL.Query())
	if serr != nil {
		return serr
	}
	obj, serr := h.findObject(r, bucket, key)
	if serr != nil {
		return serr
	}
	defer func() { obj.close() }() // open may set another close
	part, serr := objectVariant(r)
	if serr != nil {
		return serr
	}
	hd := w.Header()
	validators := func() {
		hd.Set("ETag", obj.etag)
		hd.Set("Last-Modified", obj.modified.Format(http.TimeFormat))
	}
	switch failed, status := checkPreconditions(r.Header, obj.etag, obj.modified); status {
	case http.StatusPreconditionFailed:
		return errPreconditionFailed(failed)
	case http.StatusNotModified:
		validators()
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	src, size, serr := obj.open()
	if serr != nil {
		return serr
	}
	rangeSpec := r.Header.Get("Range")
	if part || !rangeStillValid(r.Header.Get("If-Range"), obj.etag, obj.modified) {
		rangeSpec = ""
	}
	start, length, partial, serr := parseRange(rangeSpec, size)
	if serr != nil {
		hd.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		return serr
	}
	validators()
	if obj.restoredAs != (pe.ID{}) {
		hd.Set("X-Astrolabe-Pe-Id", obj.restoredAs.String())
	}
	hd.Set("Content-Type", obj.contentType)
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("Content-Length", strconv.FormatInt(length, 10))
	for name, value := range overrides {
		hd.Set(name, value)
	}
	if part {
		// S3 answers a part as a range of the object, here all of it,
		// and says how many parts there are to clients that download
		// objects with multipart ETags part by part.
		partial = size > 0
		if hasMultipartForm(obj.etag) {
			hd.Set("X-Amz-Mp-Parts-Count", "1")
		}
	}
	status := http.StatusOK
	if partial {
		hd.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(w, io.NewSectionReader(src, start, length), buf)
	h.served.Add(n)
	if err != nil {
		// Headers are out: all we can do is cut the connection short,
		// which the client sees as a short body.
		h.log.Warn("S3 send", "path", r.URL.Path, "sent", n, "of", length, "err", err)
	}
	return nil
}

// parseRange parses a single "bytes=" range; anything else S3 would ignore
// is answered with the whole object.
func parseRange(spec string, size int64) (start, length int64, partial bool, _ *s3Error) {
	rs, ok := strings.CutPrefix(spec, "bytes=")
	if spec == "" || !ok || strings.Contains(rs, ",") {
		return 0, size, false, nil
	}
	invalid := &s3Error{http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "the requested range is not satisfiable"}
	first, last, ok := strings.Cut(rs, "-")
	if !ok {
		return 0, size, false, nil
	}
	if first == "" {
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, invalid
		}
		n = min(n, size)
		return size - n, n, true, nil
	}
	s, err := strconv.ParseInt(first, 10, 64)
	if err != nil || s < 0 {
		return 0, size, false, nil
	}
	if s >= size {
		return 0, 0, false, invalid
	}
	e := size - 1
	if last != "" {
		if e, err = strconv.ParseInt(last, 10, 64); err != nil || e < s {
			return 0, size, false, nil
		}
		e = min(e, size-1)
	}
	return s, e - s + 1, true, nil
}

// bytesImage serves a small object from memory.
type bytesImage []byte

func (b bytesImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func (h *Handler) findUpload(key string) (upload, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.uploads) - 1; i >= 0; i-- {
		if h.uploads[i].key == key {
			return h.uploads[i], true
		}
	}
	return upload{}, false
}

func newRequestID() string {
	var b [8]byte
	rand.Read(b[:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

// zipCache keeps the zips built for GET, one file per snapshot, with the
// ETag of what each was built from: a zip is rebuilt when its snapshot's
// info (a VM's name) has changed since.
type zipCache struct {
	dir   string
	m     pe.Manager // to drop zips of deleted snapshots
	mu    sync.Mutex
	locks map[pe.ID]*idLock
	built map[pe.ID]string // ETags
}

// idLock makes the GETs of one snapshot build its zip once. It stays in
// zipCache.locks while anyone holds or waits for it, so that all of them
// share it.
type idLock struct {
	sync.Mutex
	refs int // holders and waiters, under zipCache.mu
}

// cachedZip is an open zip of the cache.
type cachedZip struct {
	f    *os.File
	size int64
}

// maxCachedZips bounds the cache; the oldest are removed first.
const maxCachedZips = 16

func newZipCache(dir string, m pe.Manager) (*zipCache, error) {
	// Zips of an earlier run may belong to deleted snapshots: start empty.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("zip cache: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("zip cache: %w", err)
	}
	return &zipCache{dir: dir, m: m, locks: map[pe.ID]*idLock{}, built: map[pe.ID]string{}}, nil
}

func (z *zipCache) path(id pe.ID) string {
	return filepath.Join(z.dir, hex.EncodeToString([]byte(id.String()))+".zip")
}

// remove drops the zip of id; a reader that has it open keeps reading,
// and a GET building it still returns what it built.
func (z *zipCache) remove(id pe.ID) {
	z.mu.Lock()
	delete(z.built, id)
	z.mu.Unlock()
	os.Remove(z.path(id))
}

// lock takes the lock of id and returns its unlock.
func (z *zipCache) lock(id pe.ID) (unlock func()) {
	z.mu.Lock()
	l := z.locks[id]
	if l == nil {
		l = &idLock{}
		z.locks[id] = l
	}
	l.refs++
	z.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		z.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(z.locks, id)
		}
		z.mu.Unlock()
	}
}

// get returns the zip of p with the given ETag, built now if the cache
// has none or one of another ETag.
func (z *zipCache) get(ctx context.Context, p pe.ProtectedEntity, etag string) (cachedZip, error) {
	id := p.ID()
	unlock := z.lock(id)
	defer unlock()

	z.mu.Lock()
	built := z.built[id]
	z.mu.Unlock()
	if built == etag {
		if c, err := openCached(z.path(id)); err == nil {
			return c, nil
		}
	}
	c, err := z.build(ctx, p, etag)
	if err != nil {
		return cachedZip{}, err
	}
	z.trim(ctx)
	return c, nil
}

// build writes the zip of p into the cache and returns it open: trim may
// remove the file (for another GET) before this one reads it.
func (z *zipCache) build(ctx context.Context, p pe.ProtectedEntity, etag string) (cachedZip, error) {
	id := p.ID()
	tmp, err := os.CreateTemp(z.dir, ".building-*")
	if err != nil {
		return cachedZip{}, err
	}
	fail := func(err error) (cachedZip, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return cachedZip{}, err
	}
	if err := pe.WriteZip(ctx, tmp, p, nil); err != nil {
		return fail(fmt.Errorf("zip %s: %w", id, err))
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return fail(err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), z.path(id)); err != nil {
		return fail(err)
	}
	z.mu.Lock()
	z.built[id] = etag
	z.mu.Unlock()
	return cachedZip{f: tmp, size: size}, nil
}

func openCached(path string) (cachedZip, error) {
	f, err := os.Open(path)
	if err != nil {
		return cachedZip{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return cachedZip{}, err
	}
	return cachedZip{f: f, size: fi.Size()}, nil
}

// trim removes the zips of snapshots deleted since they were built, then
// the oldest beyond maxCachedZips; open readers keep theirs until they
// close it.
func (z *zipCache) trim(ctx context.Context) {
	entries, err := os.ReadDir(z.dir)
	if err != nil {
		return
	}
	type aged struct {
		id  pe.ID
		mod time.Time
	}
	var zips []aged
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".zip")
		fi, err := e.Info()
		if !ok || err != nil {
			continue
		}
		raw, err := hex.DecodeString(name)
		id, perr := pe.ParseID(string(raw))
		if err != nil || perr != nil {
			os.Remove(filepath.Join(z.dir, e.Name()))
			continue
		}
		if _, err := z.m.Get(ctx, id); errors.Is(err, pe.ErrNotFound) {
			z.remove(id)
			continue
		}
		zips = append(zips, aged{id, fi.ModTime()})
	}
	sort.Slice(zips, func(i, j int) bool { return zips[i].mod.Before(zips[j].mod) })
	for len(zips) > maxCachedZips {
		z.remove(zips[0].id)
		zips = zips[1:]
	}
}
