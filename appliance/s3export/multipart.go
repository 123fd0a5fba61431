package s3export

// Multipart upload into the copy bucket, as S3 does it: awscli, s3cmd and
// mc upload anything past 8-15 MiB so. Parts stream into files under the
// store's directory (in the appliance's config directory), one directory
// per upload; CompleteMultipartUpload reads the parts in place as one zip
// and restores it as a task (upload.go). Uploads are bounded in number,
// part numbers and sizes, and by the room on the store's filesystem;
// AbortMultipartUpload removes one, the janitor those idle for
// UploadOptions.Idle. Uploads left by an earlier run are removed when the
// appliance starts: their clients lost them with the connection anyway
// (awscli, mc and s3cmd start a new upload when run again).

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// S3's bounds of multipart uploads.
const (
	minPartSize   = 5 << 20 // all parts but the last
	maxPartSize   = 5 << 30
	maxPartNumber = 10000
	maxListed     = 1000 // parts or uploads per listing page
	// maxCompleteBody bounds the part list of CompleteMultipartUpload:
	// 10000 parts with checksums fit well.
	maxCompleteBody = 8 << 20
	// janitorInterval is how often the janitor looks for idle uploads.
	janitorInterval = time.Hour
	// maxCompleted bounds the completed uploads remembered for clients
	// that retry CompleteMultipartUpload.
	maxCompleted = 1000
	// maxRestores bounds the restores of uploads that run at once; more
	// wait as tasks.
	maxRestores = 2
	// roomCheckInterval is how often a receive checks the room left on
	// the store's filesystem, in bytes written.
	roomCheckInterval = 64 << 20
)

// multipartStore keeps the multipart uploads in progress.
type multipartStore struct {
	dir  string
	opts UploadOptions

	restores chan struct{} // a token per restore running
	// free is the room on the store's filesystem: bytes available to
	// the appliance and its total size (statfs; tests replace it).
	free func() (avail, total int64, err error)
	// abortTaken, if set, runs after an Abort has taken its upload and
	// before it removes the parts: tests send other requests there.
	abortTaken func()

	mu        sync.Mutex
	uploads   map[string]*mpUpload
	completed map[string]*completion // by upload ID
	reserved  int64                  // bytes receives in flight announced and have not written yet
}

// completion is the outcome of a CompleteMultipartUpload, replayed to a
// client that sends it again (S3 answers a repeated Complete as the
// first).
type completion struct {
	key  string
	done chan struct{} // closed once the fields below are set
	at   time.Time     // when it was done

	serr                 *s3Error
	etag, location       string
	taskID, restoredPEID string
}

// mpUpload is one multipart upload in progress.
type mpUpload struct {
	id, key   string
	dir       string
	initiated time.Time
	used      time.Time     // last request, for the janitor
	parts     map[int]*part // received parts by number
	total     int64         // bytes of parts
	receiving int           // parts being received
	closed    bool          // completed or aborted: takes no more parts
}

// part is a received part, in its own file.
type part struct {
	number   int
	file     string
	size     int64
	md5      []byte
	modified time.Time
}

func (p *part) etag() string { return `"` + hex.EncodeToString(p.md5) + `"` }

// newMultipartStore makes the store's directory, empty.
func newMultipartStore(dir string, m pe.Manager, opts UploadOptions) (*multipartStore, error) {
	opts, err := opts.withDefaults(m)
	if err != nil {
		return nil, fmt.Errorf("S3 uploads: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("S3 uploads: remove those of an earlier run: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("S3 uploads: %w", err)
	}
	s := &multipartStore{dir: dir, opts: opts, restores: make(chan struct{}, maxRestores),
		uploads: map[string]*mpUpload{}, completed: map[string]*completion{}}
	s.free = s.statfs
	return s, nil
}

// isMultipart tells the requests of the copy bucket that belong to
// multipart uploads.
func isMultipart(method, key string, q url.Values) bool {
	switch {
	case key == "":
		return method == http.MethodGet && q.Has("uploads")
	case q.Has("uploadId"):
		return method == http.MethodPut || method == http.MethodGet || method == http.MethodPost || method == http.MethodDelete
	}
	return method == http.MethodPost && q.Has("uploads")
}

func (h *Handler) serveMultipart(w http.ResponseWriter, r *http.Request, key string, sig *signedRequest) *s3Error {
	q := r.URL.Query()
	switch {
	case key == "":
		return h.listUploads(w, q)
	case r.Method == http.MethodPost && q.Has("uploads"):
		return h.createUpload(w, key)
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		return errNotImplemented("UploadPartCopy is not supported: upload the part's bytes")
	case r.Method == http.MethodPut:
		return h.uploadPart(w, r, key, sig)
	case r.Method == http.MethodGet:
		return h.listParts(w, key, q)
	case r.Method == http.MethodDelete:
		return h.abortUpload(w, key, q.Get("uploadId"))
	}
	return h.completeUpload(w, r, key, sig)
}

type initiateXML struct {
	XMLName  xml.Name `xml:"InitiateMultipartUploadResult"`
	NS       string   `xml:"xmlns,attr"`
	Bucket   string   `xml:"Bucket"`
	Key      string   `xml:"Key"`
	UploadID string   `xml:"UploadId"`
}

func (h *Handler) createUpload(w http.ResponseWriter, key string) *s3Error {
	if serr := checkZipKey(key); serr != nil {
		return serr
	}
	s := h.mp
	s.expire()
	var raw [16]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	now := s.opts.Now()
	u := &mpUpload{id: id, key: key, dir: filepath.Join(s.dir, id), initiated: now, used: now, parts: map[int]*part{}}
	s.mu.Lock()
	if len(s.uploads) >= s.opts.MaxOpen {
		s.mu.Unlock()
		return &s3Error{http.StatusServiceUnavailable, "SlowDown", fmt.Sprintf("%d multipart uploads are in progress, the most this appliance takes: complete or abort some", s.opts.MaxOpen)}
	}
	s.uploads[id] = u
	s.mu.Unlock()
	if err := os.Mkdir(u.dir, 0o700); err != nil {
		s.mu.Lock()
		s.take(u)
		s.mu.Unlock()
		h.log.Error("S3 create multipart upload", "key", key, "err", err)
		return errInternal()
	}
	h.log.Info("S3 multipart upload started", "key", key, "upload", id)
	return writeXML(w, initiateXML{NS: s3NS, Bucket: CopyBucket, Key: key, UploadID: id})
}

func errNoSuchUpload(id string) *s3Error {
	return &s3Error{http.StatusNotFound, "NoSuchUpload", "the specified multipart upload does not exist (it may have been completed, aborted or expired): " + id}
}

// lookup returns the open upload id of key; s.mu held.
func (s *multipartStore) lookup(key, id string) (*mpUpload, *s3Error) {
	u := s.uploads[id]
	if u == nil || u.key != key || u.closed {
		return nil, errNoSuchUpload(id)
	}
	return u, nil
}

// take closes u and forgets it: whoever took an upload owns its parts
// (to remove them, or to restore them); s.mu held.
func (s *multipartStore) take(u *mpUpload) {
	u.closed = true
	delete(s.uploads, u.id)
}

// expire removes the uploads idle for longer than opts.Idle, and forgets
// the completions as old.
func (s *multipartStore) expire() {
	cutoff := s.opts.Now().Add(-s.opts.Idle)
	var idle []*mpUpload
	s.mu.Lock()
	for _, u := range s.uploads {
		if !u.closed && u.receiving == 0 && u.used.Before(cutoff) {
			s.take(u)
			idle = append(idle, u)
		}
	}
	for id, c := range s.completed {
		if c.finished() && c.at.Before(cutoff) {
			delete(s.completed, id)
		}
	}
	s.mu.Unlock()
	for _, u := range idle {
		os.RemoveAll(u.dir)
	}
}

// Janitor removes multipart uploads left idle (UploadOptions.Idle), every
// hour until ctx is done.
func (h *Handler) Janitor(ctx context.Context) {
	t := time.NewTicker(janitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.mp.expire()
		}
	}
}

func (s *multipartStore) statfs() (avail, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

func errNoRoom() *s3Error {
	return &s3Error{http.StatusInsufficientStorage, "InsufficientStorage", "the appliance ran out of room for uploads"}
}

// hasRoom tells whether the store's filesystem has room for n more bytes
// besides those the receives in flight announced, keeping 1% of it
// (1 MiB to 1 GiB) free; s.mu held.
func (s *multipartStore) hasRoom(n int64) bool {
	avail, total, err := s.free()
	if err != nil {
		return true // the write will tell
	}
	reserve := min(max(total/100, 1<<20), 1<<30)
	return n <= avail-s.reserved-reserve
}

// room is a receive's claim on the store's filesystem.
type room struct {
	s         *multipartStore
	left      int64 // bytes announced and not written yet
	unchecked int64 // bytes written since room was last checked
}

// claim reserves room for a payload of n bytes (-1: unknown, checked
// while it is written).
func (s *multipartStore) claim(n int64) (*room, *s3Error) {
	n = max(n, 0)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hasRoom(n) {
		return nil, &s3Error{http.StatusInsufficientStorage, "InsufficientStorage", fmt.Sprintf("the appliance has no room for %d more bytes of uploads", n)}
	}
	s.reserved += n
	return &room{s: s, left: n}, nil
}

// wrote accounts for n bytes written, and checks every
// roomCheckInterval bytes that the filesystem still has room: a payload
// of unknown size, or many at once, may not fill it.
func (c *room) wrote(n int64) error {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	done := min(n, c.left)
	c.left -= done
	s.reserved -= done
	c.unchecked += n
	if c.unchecked < roomCheckInterval {
		return nil
	}
	c.unchecked = 0
	if !s.hasRoom(0) {
		return fmt.Errorf("uploads: less room left than reserved: %w", syscall.ENOSPC)
	}
	return nil
}

// release gives back what c reserved and was not written.
func (c *room) release() {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.reserved -= c.left
	c.left = 0
}

// roomWriter writes to w within a room claim.
type roomWriter struct {
	w    io.Writer
	room *room
}

func (rw roomWriter) Write(p []byte) (int, error) {
	n, err := rw.w.Write(p)
	if err == nil {
		err = rw.room.wrote(int64(n))
	}
	return n, err
}

func (h *Handler) uploadPart(w http.ResponseWriter, r *http.Request, key string, sig *signedRequest) *s3Error {
	q := r.URL.Query()
	number, err := strconv.Atoi(q.Get("partNumber"))
	if err != nil || number < 1 || number > maxPartNumber {
		return errInvalidArgument(fmt.Sprintf("partNumber must be an integer from 1 to %d", maxPartNumber))
	}
	size := declaredLength(r)
	switch {
	case size < 0:
		return &s3Error{http.StatusLengthRequired, "MissingContentLength", "a part needs Content-Length (or x-amz-decoded-content-length)"}
	case size > maxPartSize:
		return &s3Error{http.StatusBadRequest, "EntityTooLarge", fmt.Sprintf("a part may have at most %d bytes", int64(maxPartSize))}
	}
	s := h.mp
	room, serr := s.claim(size)
	if serr != nil {
		return serr
	}
	defer room.release()
	s.mu.Lock()
	u, serr := s.lookup(key, q.Get("uploadId"))
	if serr == nil {
		u.receiving++
		u.used = s.opts.Now()
	}
	s.mu.Unlock()
	if serr != nil {
		return serr
	}
	p, serr := h.receivePart(r, sig, u, number, room)
	s.mu.Lock()
	defer s.mu.Unlock()
	u.receiving--
	u.used = s.opts.Now()
	if serr == nil && u.closed {
		serr = errNoSuchUpload(u.id)
	}
	if serr == nil && u.total+p.size-u.partSize(number) > h.cfg.MaxUpload {
		serr = &s3Error{http.StatusBadRequest, "EntityTooLarge", fmt.Sprintf("uploads are limited to %d bytes", h.cfg.MaxUpload)}
	}
	if serr != nil {
		if p != nil {
			os.Remove(p.file)
		}
		if u.closed && u.receiving == 0 {
			// An abort's RemoveAll may have raced with this part's file.
			os.Remove(u.dir)
		}
		return serr
	}
	if old := u.parts[number]; old != nil {
		os.Remove(old.file)
	}
	u.total += p.size - u.partSize(number)
	u.parts[number] = p
	w.Header().Set("ETag", p.etag())
	w.WriteHeader(http.StatusOK)
	return nil
}

// receivePart writes a part's body to a file of its own in u's directory.
func (h *Handler) receivePart(r *http.Request, sig *signedRequest, u *mpUpload, number int, room *room) (*part, *s3Error) {
	f, err := os.CreateTemp(u.dir, fmt.Sprintf("part-%05d-*", number))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, errNoSuchUpload(u.id) // aborted or expired meanwhile
	case errors.Is(err, syscall.ENOSPC):
		return nil, errNoRoom()
	case err != nil:
		h.log.Error("S3 upload part", "key", u.key, "upload", u.id, "err", err)
		return nil, errInternal()
	}
	p := &part{number: number, file: f.Name()}
	n, sum, serr := receiveBody(r, sig, roomWriter{f, room}, maxPartSize)
	if err := f.Close(); err != nil && serr == nil {
		h.log.Error("S3 upload part", "key", u.key, "upload", u.id, "err", err)
		serr = errInternal()
	}
	if serr != nil {
		os.Remove(f.Name())
		return nil, serr
	}
	p.size, p.md5, p.modified = n, sum, h.mp.opts.Now().UTC()
	return p, nil
}

// partSize is the size of part number, 0 if it has none; s.mu held.
func (u *mpUpload) partSize(number int) int64 {
	if p := u.parts[number]; p != nil {
		return p.size
	}
	return 0
}

type partXML struct {
	PartNumber   int    `xml:"PartNumber"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
}

type listPartsXML struct {
	XMLName              xml.Name  `xml:"ListPartsResult"`
	NS                   string    `xml:"xmlns,attr"`
	Bucket               string    `xml:"Bucket"`
	Key                  string    `xml:"Key"`
	UploadID             string    `xml:"UploadId"`
	Initiator            ownerXML  `xml:"Initiator"`
	Owner                ownerXML  `xml:"Owner"`
	StorageClass         string    `xml:"StorageClass"`
	PartNumberMarker     int       `xml:"PartNumberMarker"`
	NextPartNumberMarker int       `xml:"NextPartNumberMarker"`
	MaxParts             int       `xml:"MaxParts"`
	IsTruncated          bool      `xml:"IsTruncated"`
	Parts                []partXML `xml:"Part"`
}

// pageSize reads a listing's max-parts or max-uploads: S3's 1000 at most.
func pageSize(q url.Values, name string) (int, *s3Error) {
	v := q.Get(name)
	if v == "" {
		return maxListed, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, errInvalidArgument(name + " must be a non-negative integer")
	}
	return min(n, maxListed), nil
}

func (h *Handler) listParts(w http.ResponseWriter, key string, q url.Values) *s3Error {
	limit, serr := pageSize(q, "max-parts")
	if serr != nil {
		return serr
	}
	marker := 0
	if v := q.Get("part-number-marker"); v != "" {
		var err error
		if marker, err = strconv.Atoi(v); err != nil || marker < 0 {
			return errInvalidArgument("part-number-marker must be a part number")
		}
	}
	s := h.mp
	s.mu.Lock()
	u, serr := s.lookup(key, q.Get("uploadId"))
	var parts []*part
	if serr == nil {
		for _, p := range u.parts {
			if p.number > marker {
				parts = append(parts, p)
			}
		}
	}
	s.mu.Unlock()
	if serr != nil {
		return serr
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].number < parts[j].number })
	out := listPartsXML{NS: s3NS, Bucket: CopyBucket, Key: key, UploadID: u.id, Initiator: owner, Owner: owner,
		StorageClass: "STANDARD", PartNumberMarker: marker, MaxParts: limit}
	if len(parts) > limit {
		// A page of none is not truncated: it would never advance.
		parts, out.IsTruncated = parts[:limit], limit > 0
	}
	for _, p := range parts {
		out.Parts = append(out.Parts, partXML{PartNumber: p.number, LastModified: p.modified.Format(s3Time), ETag: p.etag(), Size: p.size})
		out.NextPartNumberMarker = p.number
	}
	return writeXML(w, out)
}

type uploadXML struct {
	Key          string   `xml:"Key"`
	UploadID     string   `xml:"UploadId"`
	Initiator    ownerXML `xml:"Initiator"`
	Owner        ownerXML `xml:"Owner"`
	StorageClass string   `xml:"StorageClass"`
	Initiated    string   `xml:"Initiated"`
}

type listUploadsXML struct {
	XMLName            xml.Name    `xml:"ListMultipartUploadsResult"`
	NS                 string      `xml:"xmlns,attr"`
	Bucket             string      `xml:"Bucket"`
	KeyMarker          string      `xml:"KeyMarker"`
	UploadIDMarker     string      `xml:"UploadIdMarker"`
	NextKeyMarker      string      `xml:"NextKeyMarker"`
	NextUploadIDMarker string      `xml:"NextUploadIdMarker"`
	Prefix             string      `xml:"Prefix"`
	MaxUploads         int         `xml:"MaxUploads"`
	IsTruncated        bool        `xml:"IsTruncated"`
	Uploads            []uploadXML `xml:"Upload"`
}

// listUploads answers ListMultipartUploads, sorted by key, then by upload
// ID (S3 sorts a key's uploads by initiation time: with IDs the page
// markers stay simple). Delimiters are not supported: keys are flat.
func (h *Handler) listUploads(w http.ResponseWriter, q url.Values) *s3Error {
	limit, serr := pageSize(q, "max-uploads")
	if serr != nil {
		return serr
	}
	prefix, keyMarker, idMarker := q.Get("prefix"), q.Get("key-marker"), q.Get("upload-id-marker")
	after := func(u *mpUpload) bool {
		return u.key > keyMarker || (idMarker != "" && u.key == keyMarker && u.id > idMarker)
	}
	s := h.mp
	s.expire()
	var ups []*mpUpload
	s.mu.Lock()
	for _, u := range s.uploads {
		if strings.HasPrefix(u.key, prefix) && after(u) {
			ups = append(ups, u)
		}
	}
	s.mu.Unlock()
	sort.Slice(ups, func(i, j int) bool {
		if ups[i].key != ups[j].key {
			return ups[i].key < ups[j].key
		}
		return ups[i].id < ups[j].id
	})
	out := listUploadsXML{NS: s3NS, Bucket: CopyBucket, KeyMarker: keyMarker, UploadIDMarker: idMarker, Prefix: prefix, MaxUploads: limit}
	if len(ups) > limit {
		ups, out.IsTruncated = ups[:limit], limit > 0
	}
	for _, u := range ups {
		out.Uploads = append(out.Uploads, uploadXML{Key: u.key, UploadID: u.id, Initiator: owner, Owner: owner,
			StorageClass: "STANDARD", Initiated: u.initiated.UTC().Format(s3Time)})
		out.NextKeyMarker, out.NextUploadIDMarker = u.key, u.id
	}
	return writeXML(w, out)
}

func (h *Handler) abortUpload(w http.ResponseWriter, key, id string) *s3Error {
	s := h.mp
	s.mu.Lock()
	u, serr := s.lookup(key, id)
	if serr == nil {
		s.take(u)
	}
	s.mu.Unlock()
	if serr != nil {
		return serr
	}
	if s.abortTaken != nil {
		s.abortTaken()
	}
	os.RemoveAll(u.dir)
	h.log.Info("S3 multipart upload aborted", "key", key, "upload", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type completeXML struct {
	XMLName xml.Name `xml:"CompleteMultipartUpload"`
	Parts   []struct {
		PartNumber int    `xml:"PartNumber"`
		ETag       string `xml:"ETag"`
	} `xml:"Part"`
}

type completeResultXML struct {
	XMLName  xml.Name `xml:"CompleteMultipartUploadResult"`
	NS       string   `xml:"xmlns,attr"`
	Location string   `xml:"Location"`
	Bucket   string   `xml:"Bucket"`
	Key      string   `xml:"Key"`
	ETag     string   `xml:"ETag"`
}

func (h *Handler) completeUpload(w http.ResponseWriter, r *http.Request, key string, sig *signedRequest) *s3Error {
	s := h.mp
	id := r.URL.Query().Get("uploadId")
	// The upload is looked up before its part list is read: an unknown
	// one costs no body.
	s.mu.Lock()
	c, serr := s.completedOrOpen(key, id)
	s.mu.Unlock()
	if c != nil {
		return c.replay(w, r)
	}
	if serr != nil {
		return serr
	}
	var body bytes.Buffer
	if _, _, serr := receiveBody(r, sig, &body, maxCompleteBody); serr != nil {
		return serr
	}
	var req completeXML
	if err := xml.Unmarshal(body.Bytes(), &req); err != nil || len(req.Parts) == 0 {
		return &s3Error{http.StatusBadRequest, "MalformedXML", "want a CompleteMultipartUpload with at least one Part"}
	}
	s.mu.Lock()
	c, serr = s.completedOrOpen(key, id) // again: another Complete may have come first
	u := s.uploads[id]
	var parts []*part
	if c == nil && serr == nil {
		parts, serr = u.choose(req)
	}
	if c == nil && serr == nil && sumSizes(parts) > h.cfg.MaxUpload {
		serr = &s3Error{http.StatusBadRequest, "EntityTooLarge", fmt.Sprintf("uploads are limited to %d bytes", h.cfg.MaxUpload)}
	}
	mine := c == nil && serr == nil
	if mine {
		// The parts are the restore's now; a retry waits for its outcome.
		s.take(u)
		c = s.complete(key, id)
	}
	s.mu.Unlock()
	if serr != nil {
		return serr
	}
	if !mine {
		return c.replay(w, r)
	}
	defer s.finish(c)
	c.etag = multipartETag(parts)
	c.location = objectURL(baseURL(r), CopyBucket, key)
	src := newPartsReader(parts)
	release := func() {
		src.Close()
		os.RemoveAll(u.dir)
	}
	h.log.Info("S3 multipart upload complete: restoring", "key", key, "upload", u.id, "parts", len(parts), "bytes", src.size)
	c.serr = h.restoreUpload(w, r, key, src, src.size, c.etag, release)
	c.taskID, c.restoredPEID = w.Header().Get(TaskIDHeader), w.Header().Get(PEIDHeader)
	if c.serr != nil {
		return c.serr
	}
	return writeXML(w, c.result())
}

// completedOrOpen returns the completion of upload id of key, or checks
// that it is open; s.mu held.
func (s *multipartStore) completedOrOpen(key, id string) (*completion, *s3Error) {
	if c := s.completed[id]; c != nil && c.key == key {
		return c, nil
	}
	_, serr := s.lookup(key, id)
	return nil, serr
}

// complete records that upload id of key is being completed, forgetting
// the oldest completion past maxCompleted; s.mu held.
func (s *multipartStore) complete(key, id string) *completion {
	if len(s.completed) >= maxCompleted {
		var oldest string
		for id, c := range s.completed {
			if c.finished() && (oldest == "" || c.at.Before(s.completed[oldest].at)) {
				oldest = id
			}
		}
		delete(s.completed, oldest)
	}
	c := &completion{key: key, done: make(chan struct{})}
	s.completed[id] = c
	return c
}

// finish records that c is done and wakes the retries waiting for it.
func (s *multipartStore) finish(c *completion) {
	s.mu.Lock()
	c.at = s.opts.Now()
	s.mu.Unlock()
	close(c.done)
}

func (c *completion) finished() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *completion) result() completeResultXML {
	return completeResultXML{NS: s3NS, Location: c.location, Bucket: CopyBucket, Key: c.key, ETag: c.etag}
}

// replay answers a repeated CompleteMultipartUpload as the first was
// answered, once it is.
func (c *completion) replay(w http.ResponseWriter, r *http.Request) *s3Error {
	select {
	case <-c.done:
	case <-r.Context().Done():
		return nil // the client is gone
	}
	if c.taskID != "" {
		w.Header().Set(TaskIDHeader, c.taskID)
	}
	if c.restoredPEID != "" {
		w.Header().Set(PEIDHeader, c.restoredPEID)
	}
	if c.serr != nil {
		return c.serr
	}
	return writeXML(w, c.result())
}

// choose checks a CompleteMultipartUpload's part list against the parts
// received, as S3 does, and returns the parts it names; s.mu held.
func (u *mpUpload) choose(req completeXML) ([]*part, *s3Error) {
	parts := make([]*part, 0, len(req.Parts))
	for i, rp := range req.Parts {
		if i > 0 && rp.PartNumber <= req.Parts[i-1].PartNumber {
			return nil, &s3Error{http.StatusBadRequest, "InvalidPartOrder", "the list of parts was not in ascending order: list each part once, by part number"}
		}
		p := u.parts[rp.PartNumber]
		if p == nil || !sameETag(p.etag(), rp.ETag) {
			return nil, &s3Error{http.StatusBadRequest, "InvalidPart", fmt.Sprintf("part %d was not uploaded or its ETag is not %s", rp.PartNumber, rp.ETag)}
		}
		parts = append(parts, p)
	}
	for _, p := range parts[:len(parts)-1] {
		if p.size < minPartSize {
			return nil, &s3Error{http.StatusBadRequest, "EntityTooSmall", fmt.Sprintf("part %d has %d bytes: all parts but the last need at least %d", p.number, p.size, minPartSize)}
		}
	}
	return parts, nil
}

// sameETag compares ETags as clients send them: quoted or not.
func sameETag(a, b string) bool {
	return strings.EqualFold(strings.Trim(a, `"`), strings.Trim(strings.TrimSpace(b), `"`))
}

func sumSizes(parts []*part) int64 {
	var n int64
	for _, p := range parts {
		n += p.size
	}
	return n
}

// multipartETag is S3's ETag of a multipart upload: the MD5 of the parts'
// binary MD5s, and their number.
func multipartETag(parts []*part) string {
	sum := md5.New()
	for _, p := range parts {
		sum.Write(p.md5)
	}
	return fmt.Sprintf(`"%s-%d"`, hexSum(sum), len(parts))
}

// partsReader reads the parts of an upload as the one file they make,
// keeping a few of them open.
type partsReader struct {
	files  []string
	starts []int64 // offset of each part; starts[len(files)] is the size
	size   int64

	mu   sync.Mutex
	open map[int]*os.File
	lru  []int // open parts, least recently used first
}

// maxOpenParts bounds the part files a partsReader keeps open.
const maxOpenParts = 8

func newPartsReader(parts []*part) *partsReader {
	pr := &partsReader{open: map[int]*os.File{}}
	for _, p := range parts {
		pr.files = append(pr.files, p.file)
		pr.starts = append(pr.starts, pr.size)
		pr.size += p.size
	}
	pr.starts = append(pr.starts, pr.size)
	return pr
}

func (pr *partsReader) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("parts: negative offset %d", off)
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	n := 0
	for n < len(b) && off < pr.size {
		// The part holding off: the last whose start is at or before it.
		i := sort.Search(len(pr.files), func(i int) bool { return pr.starts[i+1] > off }) // skips empty parts
		f, err := pr.file(i)
		if err != nil {
			return n, err
		}
		want := int(min(int64(len(b)-n), pr.starts[i+1]-off))
		m, err := f.ReadAt(b[n:n+want], off-pr.starts[i])
		n, off = n+m, off+int64(m)
		if m < want {
			if err == nil || err == io.EOF {
				// Not io.ErrUnexpectedEOF: the zip is not at fault, the
				// store is (copyError answers 500).
				err = errPartShort
			}
			return n, fmt.Errorf("part %s: %w", filepath.Base(f.Name()), storeError{err})
		}
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

var errPartShort = errors.New("shorter than received")

// file returns part i open; pr.mu held.
func (pr *partsReader) file(i int) (*os.File, error) {
	for j, k := range pr.lru {
		if k == i {
			pr.lru = append(append(pr.lru[:j:j], pr.lru[j+1:]...), i)
			return pr.open[i], nil
		}
	}
	f, err := os.Open(pr.files[i])
	if err != nil {
		return nil, fmt.Errorf("parts: %w", storeError{err})
	}
	if len(pr.lru) == maxOpenParts {
		pr.open[pr.lru[0]].Close()
		delete(pr.open, pr.lru[0])
		pr.lru = pr.lru[1:]
	}
	pr.open[i] = f
	pr.lru = append(pr.lru, i)
	return f, nil
}

func (pr *partsReader) Close() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for _, f := range pr.open {
		f.Close()
	}
	pr.open, pr.lru = map[int]*os.File{}, nil
}
