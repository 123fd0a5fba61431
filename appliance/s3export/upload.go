package s3export

import (
	"archive/tar"
	"archive/zip"
	"compress/flate"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// TaskIDHeader carries the ID of the task that restores an uploaded zip
// (single PUT and CompleteMultipartUpload); clients follow it with the
// REST API's /v1/astrolabe/tasks/{id}. PEIDHeader carries the restored
// PE's ID once the restore is done.
const (
	TaskIDHeader = "X-Astrolabe-Task-Id"
	PEIDHeader   = "X-Astrolabe-Pe-Id"
)

// DefaultRestoreWait is how long an upload's response waits for its
// restore: long enough that most restores answer with their outcome (a
// refused zip with 400 and the reason), short enough for the read
// timeouts of clients (awscli's is 60 s).
const DefaultRestoreWait = 50 * time.Second

// UploadOptions configure how uploads into the copy bucket are received
// and restored; zero values mean the defaults.
type UploadOptions struct {
	// Restorer restores an uploaded zip: the appliance's use cases
	// (default a usecase.Service over Config.Manager).
	Restorer Restorer
	// Tasks runs the restores (default a Manager of the Handler's own);
	// TaskContext is their context (default context.Background).
	Tasks       *tasks.Manager
	TaskContext context.Context
	// RestoreWait bounds how long a response waits for its restore
	// (default DefaultRestoreWait); a restore that takes longer goes on
	// as its task, and the response says success with the task's ID.
	RestoreWait time.Duration
	// MaxOpen bounds the multipart uploads in progress (default 64).
	MaxOpen int
	// Idle is how long an unfinished multipart upload may go without a
	// request before the janitor removes it (default 24 h).
	Idle time.Duration
	// Now is the janitor's clock (default time.Now).
	Now func() time.Time
}

// Restorer restores a PE from a zip; usecase.Service is one.
type Restorer interface {
	Copy(ctx context.Context, src pe.ProtectedEntity, typ string, opts pe.CopyOptions, progress pe.Progress) (pe.ProtectedEntity, error)
}

func (o UploadOptions) withDefaults(m pe.Manager) (UploadOptions, error) {
	if o.Restorer == nil {
		uc, err := usecase.New(usecase.Config{Manager: m})
		if err != nil {
			return o, err
		}
		o.Restorer = uc
	}
	if o.Tasks == nil {
		o.Tasks = tasks.NewManager(tasks.Options{})
	}
	if o.TaskContext == nil {
		o.TaskContext = context.Background()
	}
	if o.RestoreWait <= 0 {
		o.RestoreWait = DefaultRestoreWait
	}
	if o.MaxOpen <= 0 {
		o.MaxOpen = 64
	}
	if o.Idle <= 0 {
		o.Idle = 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// upload receives a zip in one PUT and restores it as a new PE.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request, key string, sig *signedRequest) *s3Error {
	if serr := checkZipKey(key); serr != nil {
		return serr
	}
	room, serr := h.mp.claim(declaredLength(r))
	if serr != nil {
		return serr
	}
	defer room.release()
	f, err := os.CreateTemp(h.mp.dir, "put-*.zip")
	if errors.Is(err, syscall.ENOSPC) {
		return errNoRoom()
	}
	if err != nil {
		h.log.Error("S3 upload", "err", err)
		return errInternal()
	}
	release := func() {
		f.Close()
		os.Remove(f.Name())
	}
	n, sum, serr := receiveBody(r, sig, roomWriter{f, room}, h.cfg.MaxUpload)
	if serr != nil {
		release()
		return serr
	}
	etag := `"` + hex.EncodeToString(sum) + `"`
	if serr := h.restoreUpload(w, r, key, f, n, etag, release); serr != nil {
		return serr
	}
	w.Header().Set("ETag", etag)
	w.WriteHeader(http.StatusOK)
	return nil
}

func checkZipKey(key string) *s3Error {
	if !strings.HasSuffix(strings.ToLower(key), ".zip") {
		return errInvalidArgument("upload a PE zip (a key ending in .zip) to the bucket " + CopyBucket)
	}
	return nil
}

// receiveBody copies a request body to w, decoded as its signature says
// (a signed or unsigned payload, aws-chunked with or without chunk
// signatures), at most limit bytes. It checks x-amz-content-sha256,
// Content-MD5 and x-amz-decoded-content-length where sent, and returns
// the size and MD5 of what it wrote.
func receiveBody(r *http.Request, sig *signedRequest, w io.Writer, limit int64) (int64, []byte, *s3Error) {
	var body io.Reader = r.Body
	var wantSHA string
	switch sig.payloadHash {
	case streamingPayload:
		body = newChunkedReader(r.Body, sig, nil)
	case streamingUnsignedTrailer:
		checksum, err := newTrailerChecksum(r.Header.Get("X-Amz-Trailer"))
		if err != nil {
			return 0, nil, &s3Error{http.StatusBadRequest, "InvalidRequest", err.Error()}
		}
		body = newChunkedReader(r.Body, nil, checksum)
	case streamingSignedTrailer:
		return 0, nil, errNotImplemented(streamingSignedTrailer + " (signed chunks with a signed trailer) is not supported: sign the chunks without a trailer (" +
			streamingPayload + ") or send the trailer unsigned (" + streamingUnsignedTrailer + ")")
	case unsignedPayload:
	default:
		wantSHA = sig.payloadHash
	}
	var wantMD5 []byte
	if v := r.Header.Get("Content-MD5"); v != "" {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(b) != md5.Size {
			return 0, nil, &s3Error{http.StatusBadRequest, "InvalidDigest", "Content-MD5 is not the base64 of an MD5"}
		}
		wantMD5 = b
	}
	md5sum, shasum := md5.New(), sha256.New()
	hashes := io.MultiWriter(md5sum, shasum)
	if wantSHA == "" {
		hashes = md5sum
	}
	n, err := io.CopyBuffer(io.MultiWriter(storeWriter{w}, hashes), io.LimitReader(body, limit+1), make([]byte, 1<<20))
	var serr storeError
	switch {
	case errors.As(err, &serr) && errors.Is(err, syscall.ENOSPC):
		return n, nil, errNoRoom()
	case errors.As(err, &serr):
		// The message is logged; redacted in the answer.
		return n, nil, &s3Error{http.StatusInternalServerError, "InternalError", "storing the upload: " + err.Error()}
	case errors.Is(err, errChunkSignature):
		return n, nil, errSignature()
	case errors.Is(err, errBadChecksum):
		return n, nil, &s3Error{http.StatusBadRequest, "BadDigest", err.Error()}
	case errors.Is(err, errBadChunk):
		return n, nil, &s3Error{http.StatusBadRequest, "IncompleteBody", err.Error()}
	case err != nil:
		return n, nil, &s3Error{http.StatusBadRequest, "IncompleteBody", "upload ended early: " + err.Error()}
	case n > limit:
		return n, nil, &s3Error{http.StatusBadRequest, "EntityTooLarge", fmt.Sprintf("uploads are limited to %d bytes", limit)}
	case wantSHA != "" && !strings.EqualFold(wantSHA, hexSum(shasum)):
		return n, nil, &s3Error{http.StatusBadRequest, "XAmzContentSHA256Mismatch", "the body does not match x-amz-content-sha256"}
	}
	if d := r.Header.Get("X-Amz-Decoded-Content-Length"); d != "" && d != strconv.FormatInt(n, 10) {
		return n, nil, &s3Error{http.StatusBadRequest, "IncompleteBody", fmt.Sprintf("got %d bytes, x-amz-decoded-content-length says %s", n, d)}
	}
	got := md5sum.Sum(nil)
	if wantMD5 != nil && string(wantMD5) != string(got) {
		return n, nil, &s3Error{http.StatusBadRequest, "BadDigest", "the body does not match Content-MD5"}
	}
	return n, got, nil
}

// storeWriter tells the errors of storing a body from those of reading
// it: the first are ours, the second the client's.
type storeWriter struct{ w io.Writer }

type storeError struct{ error }

func (e storeError) Unwrap() error { return e.error }

func (s storeWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		err = storeError{err}
	}
	return n, err
}

// declaredLength is the size of the payload a request announces, -1 if
// it does not say.
func declaredLength(r *http.Request) int64 {
	if d := r.Header.Get("X-Amz-Decoded-Content-Length"); d != "" {
		if n, err := strconv.ParseInt(d, 10, 64); err == nil && n >= 0 {
			return n
		}
		return -1
	}
	if strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") {
		return -1
	}
	return r.ContentLength
}

// restoreUpload restores the zip in src (size bytes, received with the
// given ETag) as a task, and answers with the task's ID. It waits for the
// restore up to RestoreWait, so that a refused zip is answered with 400
// and why; a restore that takes longer goes on, answered as a success.
// release is called once src is no longer needed.
func (h *Handler) restoreUpload(w http.ResponseWriter, r *http.Request, key string, src io.ReaderAt, size int64, etag string, release func()) *s3Error {
	p, err := pe.OpenZip(r.Context(), src, size)
	if err != nil {
		release()
		if errors.As(err, new(storeError)) {
			h.log.Error("S3 copy-by-upload: read the upload", "key", key, "err", err)
			return copyError(err)
		}
		return errInvalidArgument("not a PE zip: " + redact.Error(err))
	}
	typ := p.ID().Type()
	if _, err := h.cfg.Manager.Type(r.Context(), typ); err != nil {
		release()
		return errInvalidArgument(fmt.Sprintf("the zip holds %s, a PE type this appliance does not have", p.ID()))
	}
	opts := h.mp.opts
	type outcome struct {
		restored pe.ID
		err      error
	}
	done := make(chan outcome, 1)
	info, err := opts.Tasks.Start(opts.TaskContext, "copy", fmt.Sprintf("restore %s uploaded to s3 %s/%s", p.ID(), CopyBucket, key), "",
		func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
			// A few restores at a time: the others wait their turn.
			select {
			case h.mp.restores <- struct{}{}:
				defer func() { <-h.mp.restores }()
			case <-ctx.Done():
				release()
				done <- outcome{err: ctx.Err()}
				return nil, ctx.Err()
			}
			// An upload is untrusted input: it never keeps privileges
			// (owners, setuid, capabilities, devices); an administrator
			// who trusts a zip restores it with 'astrolabe cp
			// --keep-privileges'.
			out, err := opts.Restorer.Copy(ctx, p, typ, pe.CopyOptions{Mode: pe.CreateNew, MaxExpansion: h.cfg.MaxExpansion}, progress)
			release()
			if err != nil {
				done <- outcome{err: err}
				return nil, err
			}
			h.log.Info("S3 copy-by-upload restored a PE", "key", key, "src", p.ID(), "pe", out.ID(), "bytes", size)
			h.recordUpload(upload{object{key: key, size: size, modified: time.Now().UTC(), etag: etag}, out.ID()})
			done <- outcome{restored: out.ID()}
			return map[string]string{"id": out.ID().String()}, nil
		})
	if err != nil {
		release()
		h.log.Error("S3 copy-by-upload: start task", "key", key, "err", err)
		return errInternal()
	}
	w.Header().Set(TaskIDHeader, info.ID)
	timer := time.NewTimer(opts.RestoreWait)
	defer timer.Stop()
	select {
	case o := <-done:
		// The task's end is recorded for clients that follow it.
		opts.Tasks.Wait(r.Context(), info.ID)
		if serr := copyError(o.err); serr != nil {
			if serr.status >= 500 {
				h.log.Error("S3 copy-by-upload", "key", key, "src", p.ID(), "task", info.ID, "err", o.err)
			} else {
				h.log.Info("S3 copy-by-upload refused", "key", key, "src", p.ID(), "task", info.ID, "status", serr.status, "err", o.err)
			}
			return serr
		}
		w.Header().Set(PEIDHeader, o.restored.String())
	case <-timer.C:
		h.log.Info("S3 copy-by-upload: restore goes on as a task", "key", key, "task", info.ID)
	case <-r.Context().Done():
		return nil // the client is gone; the task goes on
	}
	return nil
}

func (h *Handler) recordUpload(u upload) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.uploads = append(h.uploads, u)
	if len(h.uploads) > maxUploadRecords {
		h.uploads = h.uploads[1:]
	}
}

// copyError is the answer to a failed restore of an upload: a zip the
// appliance refuses (unsafe paths, devices, corrupt data, too large an
// expansion) is the client's fault and answered with 400 and why, so that
// clients do not retry it as they retry 500s; anything else is ours.
func copyError(err error) *s3Error {
	var corrupt flate.CorruptInputError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC):
		return errNoRoom()
	case errors.As(err, new(storeError)):
		return errInternal() // reading what was received failed
	case errors.Is(err, pe.ErrLimit):
		return &s3Error{http.StatusBadRequest, "EntityTooLarge", "the zip was refused: " + redact.Error(err)}
	case errors.Is(err, pe.ErrInvalidSource), errors.Is(err, pe.ErrNotSupported), errors.Is(err, pe.ErrExists):
		return errInvalidArgument("the zip was refused: " + redact.Error(err))
	case errors.Is(err, zip.ErrChecksum), errors.Is(err, zip.ErrFormat), errors.Is(err, zip.ErrAlgorithm),
		errors.As(err, &corrupt), errors.Is(err, tar.ErrHeader), errors.Is(err, io.ErrUnexpectedEOF):
		return errInvalidArgument("the zip is corrupt: " + redact.Error(err))
	case errors.Is(err, syscall.ENAMETOOLONG):
		return errKeyTooLong()
	}
	return errInternal()
}
