package s3export

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/astrolabe-appliance/astrolabe/appliance/samples/samplestest"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// mpFixture is a Handler over the samples with its uploads' options in
// reach, driven by minio-go's low-level client.
type mpFixture struct {
	dir  string
	m    pe.Manager
	h    *Handler
	opts UploadOptions
	core *minio.Core

	mu      sync.Mutex
	headers map[string]http.Header // the last response headers, by method and path
}

func newMPFixture(t *testing.T, opts UploadOptions) *mpFixture {
	t.Helper()
	dir, m := samplestest.Config(t)
	f := &mpFixture{dir: dir, m: m, headers: map[string]http.Header{}}
	if opts.Tasks == nil {
		opts.Tasks = tasks.NewManager(tasks.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}
	if opts.RestoreWait == 0 {
		// The tests read what a restore did when its response comes.
		opts.RestoreWait = 10 * time.Minute
	}
	f.opts = opts
	var err error
	f.h, err = New(Config{Manager: m, AccessKey: accessKey, SecretKey: secretKey, TempDir: filepath.Join(dir, "tmp"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Uploads: opts})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.h.ServeHTTP(w, r)
		f.mu.Lock()
		f.headers[r.Method+" "+r.URL.Path] = w.Header().Clone()
		f.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	c, err := minio.NewCore(strings.TrimPrefix(srv.URL, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(accessKey, secretKey, ""), BucketLookup: minio.BucketLookupPath, MaxRetries: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.core = c
	return f
}

func (f *mpFixture) header(method, path string) http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.headers[method+" "+path]
}

// randomDiskZip makes a disk PE of size incompressible bytes and returns
// its image and the zip of a snapshot of it.
func (f *mpFixture) randomDiskZip(t *testing.T, size int) (image, z []byte) {
	t.Helper()
	image = make([]byte, size)
	rand.NewChaCha8([32]byte{2}).Read(image)
	if err := os.WriteFile(filepath.Join(f.dir, "disk", "random.img"), image, 0o600); err != nil {
		t.Fatal(err)
	}
	return image, f.zipOf(t, samplestest.Snapshot(t, f.m, "disk:random.img"))
}

func (f *mpFixture) zipOf(t *testing.T, id pe.ID) []byte {
	t.Helper()
	p, err := f.m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := pe.WriteZip(context.Background(), &buf, p, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

// s3Code is the S3 error code and status of err.
func s3Code(err error) string {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return fmt.Sprint(err)
	}
	return fmt.Sprintf("%s %d", resp.Code, resp.StatusCode)
}

// uploadParts uploads the parts of b, of partSize bytes each, all at once.
func (f *mpFixture) uploadParts(t *testing.T, key, id string, b []byte, partSize int) []minio.CompletePart {
	t.Helper()
	var parts []minio.CompletePart
	for off, n := 0, 1; off < len(b); off, n = off+partSize, n+1 {
		parts = append(parts, minio.CompletePart{PartNumber: n})
	}
	var wg sync.WaitGroup
	errs := make([]error, len(parts))
	for i := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chunk := b[i*partSize : min((i+1)*partSize, len(b))]
			p, err := f.core.PutObjectPart(context.Background(), CopyBucket, key, id, i+1, bytes.NewReader(chunk), int64(len(chunk)), minio.PutObjectPartOptions{})
			parts[i].ETag, errs[i] = p.ETag, err
			if err == nil && p.ETag != md5Hex(chunk) {
				errs[i] = fmt.Errorf("part %d: ETag %s, want its MD5", i+1, p.ETag)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return parts
}

// restoredDisk is the image of the disk PE the task named in a
// response's header restored.
func (f *mpFixture) restoredDisk(t *testing.T, h http.Header) []byte {
	t.Helper()
	id := h.Get(TaskIDHeader)
	info, err := f.opts.Tasks.Wait(context.Background(), id)
	if err != nil || info.Status != tasks.Success {
		t.Fatalf("restore task %q: %+v %v", id, info, err)
	}
	if h.Get(PEIDHeader) != info.Result["id"] {
		t.Errorf("response names PE %q, the task %q", h.Get(PEIDHeader), info.Result["id"])
	}
	b, err := os.ReadFile(filepath.Join(f.dir, "disk", strings.TrimPrefix(info.Result["id"], "disk:")))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *mpFixture) uploadsLeft(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(f.h.mp.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestMultipartUpload uploads a zip in three parts sent at once, lists
// them, and completes it: the restore runs as a task named in the
// response, and restores the disk as it was.
func TestMultipartUpload(t *testing.T) {
	f := newMPFixture(t, UploadOptions{})
	ctx := context.Background()
	image, z := f.randomDiskZip(t, 12<<20)
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "big.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := f.uploadParts(t, "big.zip", id, z, minPartSize)
	if len(parts) != 3 {
		t.Fatalf("%d parts", len(parts))
	}

	ups, err := f.core.ListMultipartUploads(ctx, CopyBucket, "", "", "", "", 0)
	if err != nil || len(ups.Uploads) != 1 || ups.Uploads[0].UploadID != id || ups.Uploads[0].Key != "big.zip" {
		t.Errorf("ListMultipartUploads: %+v %v", ups, err)
	}
	page, err := f.core.ListObjectParts(ctx, CopyBucket, "big.zip", id, 0, 2)
	if err != nil || len(page.ObjectParts) != 2 || !page.IsTruncated || page.NextPartNumberMarker != 2 {
		t.Fatalf("ListParts, first page: %+v %v", page, err)
	}
	page, err = f.core.ListObjectParts(ctx, CopyBucket, "big.zip", id, 2, 2)
	if err != nil || len(page.ObjectParts) != 1 || page.IsTruncated || page.ObjectParts[0].PartNumber != 3 ||
		page.ObjectParts[0].Size != int64(len(z)-2*minPartSize) || strings.Trim(page.ObjectParts[0].ETag, `"`) != parts[2].ETag {
		t.Fatalf("ListParts, second page: %+v %v", page, err)
	}

	info, err := f.core.CompleteMultipartUpload(ctx, CopyBucket, "big.zip", id, parts, minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var sums []byte
	for off := 0; off < len(z); off += minPartSize {
		s := md5.Sum(z[off:min(off+minPartSize, len(z))])
		sums = append(sums, s[:]...)
	}
	if want := md5Hex(sums) + "-3"; info.ETag != want {
		t.Errorf("ETag %s, want %s", info.ETag, want)
	}
	h := f.header("POST", "/copy/big.zip")
	if got := f.restoredDisk(t, h); !bytes.Equal(got, image) {
		t.Error("the restored disk differs")
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left after the restore: %v", left)
	}
	st, err := f.core.Client.StatObject(ctx, CopyBucket, "big.zip", minio.StatObjectOptions{})
	if err != nil || st.ETag != info.ETag || st.Size != int64(len(z)) {
		t.Errorf("HEAD after the upload: %+v %v", st, err)
	}
	// A retried Complete is answered as the first, restoring nothing more.
	again, err := f.core.CompleteMultipartUpload(ctx, CopyBucket, "big.zip", id, parts, minio.PutObjectOptions{})
	h2 := f.header("POST", "/copy/big.zip")
	if err != nil || again.ETag != info.ETag || h2.Get(TaskIDHeader) != h.Get(TaskIDHeader) || h2.Get(PEIDHeader) != h.Get(PEIDHeader) {
		t.Errorf("complete again: %+v %v, task %q PE %q", again, err, h2.Get(TaskIDHeader), h2.Get(PEIDHeader))
	}
	if n := len(f.opts.Tasks.List()); n != 1 {
		t.Errorf("%d tasks after a retried Complete, want 1", n)
	}

	// A single PUT is restored as a task too.
	if _, err := f.core.PutObject(ctx, CopyBucket, "one.zip", bytes.NewReader(z), int64(len(z)), "", "", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := f.restoredDisk(t, f.header("PUT", "/copy/one.zip")); !bytes.Equal(got, image) {
		t.Error("the disk restored from a single PUT differs")
	}
}

// TestRestoreGoesOn: a restore longer than the response waits for is
// answered as a success with its task's ID, and goes on.
func TestRestoreGoesOn(t *testing.T) {
	f := newMPFixture(t, UploadOptions{RestoreWait: time.Nanosecond})
	ctx := context.Background()
	image, z := f.randomDiskZip(t, 6<<20)
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "slow.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := f.uploadParts(t, "slow.zip", id, z, minPartSize)
	if _, err := f.core.CompleteMultipartUpload(ctx, CopyBucket, "slow.zip", id, parts, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	h := f.header("POST", "/copy/slow.zip")
	info, err := f.opts.Tasks.Wait(ctx, h.Get(TaskIDHeader))
	if err != nil || info.Status != tasks.Success {
		t.Fatalf("restore task: %+v %v", info, err)
	}
	b, err := os.ReadFile(filepath.Join(f.dir, "disk", strings.TrimPrefix(info.Result["id"], "disk:")))
	if err != nil || !bytes.Equal(b, image) {
		t.Errorf("the disk restored by the task differs: %v", err)
	}
}

// TestMultipartErrors drives the protocol's edges; each error is S3's.
func TestMultipartErrors(t *testing.T) {
	f := newMPFixture(t, UploadOptions{MaxOpen: 3})
	ctx := context.Background()
	big := make([]byte, minPartSize)
	rand.NewChaCha8([32]byte{3}).Read(big)
	small := []byte("the last part may be small")
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "x.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(n int, b []byte, opts minio.PutObjectPartOptions) (minio.ObjectPart, error) {
		return f.core.PutObjectPart(ctx, CopyBucket, "x.zip", id, n, bytes.NewReader(b), int64(len(b)), opts)
	}
	p1, err := put(1, big, minio.PutObjectPartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A signed payload (x-amz-content-sha256 of the body, not chunks).
	sha := sum(small)
	p2, err := put(2, small, minio.PutObjectPartOptions{Sha256Hex: hex.EncodeToString(sha[:]), DisableContentSha256: true})
	if err != nil {
		t.Fatal(err)
	}
	wrongMD5 := md5.Sum([]byte("other"))
	wrongSHA := sum([]byte("other"))
	complete := func(parts ...minio.CompletePart) error {
		_, err := f.core.CompleteMultipartUpload(ctx, CopyBucket, "x.zip", id, parts, minio.PutObjectOptions{})
		return err
	}
	cp := func(n int, etag string) minio.CompletePart { return minio.CompletePart{PartNumber: n, ETag: etag} }
	for _, tc := range []struct {
		what string
		err  error
		want string
	}{
		{"part 0", func() error { _, err := put(0, small, minio.PutObjectPartOptions{}); return err }(), "InvalidArgument 400"},
		{"part 10001", func() error { _, err := put(10001, small, minio.PutObjectPartOptions{}); return err }(), "InvalidArgument 400"},
		{"wrong Content-MD5", func() error {
			_, err := put(4, small, minio.PutObjectPartOptions{Md5Base64: base64.StdEncoding.EncodeToString(wrongMD5[:])})
			return err
		}(), "BadDigest 400"},
		{"wrong x-amz-content-sha256", func() error {
			_, err := put(4, small, minio.PutObjectPartOptions{Sha256Hex: hex.EncodeToString(wrongSHA[:]), DisableContentSha256: true})
			return err
		}(), "XAmzContentSHA256Mismatch 400"},
		{"UploadPartCopy", func() error {
			_, err := f.core.CopyObjectPart(ctx, "disk", "x", CopyBucket, "x.zip", id, 4, 0, -1, nil)
			return err
		}(), "NotImplemented 501"},
		{"wrong ETag", complete(cp(1, p1.ETag), cp(2, md5Hex(big))), "InvalidPart 400"},
		{"part not uploaded", complete(cp(1, p1.ETag), cp(5, p2.ETag)), "InvalidPart 400"},
		{"descending", complete(cp(2, p2.ETag), cp(1, p1.ETag)), "InvalidPartOrder 400"},
		{"twice", complete(cp(1, p1.ETag), cp(1, p1.ETag)), "InvalidPartOrder 400"},
		{"unknown upload", func() error {
			_, err := f.core.PutObjectPart(ctx, CopyBucket, "x.zip", "nope", 1, bytes.NewReader(small), int64(len(small)), minio.PutObjectPartOptions{})
			return err
		}(), "NoSuchUpload 404"},
		{"another key's upload", func() error {
			_, err := f.core.ListObjectParts(ctx, CopyBucket, "y.zip", id, 0, 0)
			return err
		}(), "NoSuchUpload 404"},
		{"not a zip key", func() error {
			_, err := f.core.NewMultipartUpload(ctx, CopyBucket, "notes.txt", minio.PutObjectOptions{})
			return err
		}(), "InvalidArgument 400"},
	} {
		if got := s3Code(tc.err); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.what, got, tc.want)
		}
	}

	// All parts but the last need 5 MiB.
	p4, err := put(4, small, minio.PutObjectPartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s3Code(complete(cp(2, p2.ETag), cp(4, p4.ETag))); got != "EntityTooSmall 400" {
		t.Errorf("small part before the last: %s", got)
	}
	// None of these closed the upload; the parts are not a zip.
	if got := s3Code(complete(cp(1, p1.ETag), cp(2, p2.ETag))); !strings.HasPrefix(got, "InvalidArgument 400") {
		t.Errorf("parts that are no zip: %s", got)
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left after a refused zip: %v", left)
	}

	// The number of open uploads is bounded.
	for i := range 3 {
		if _, err := f.core.NewMultipartUpload(ctx, CopyBucket, fmt.Sprintf("u%d.zip", i), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = f.core.NewMultipartUpload(ctx, CopyBucket, "u3.zip", minio.PutObjectOptions{})
	if got := s3Code(err); got != "SlowDown 503" {
		t.Errorf("upload past the bound: %s", got)
	}
}

// TestMultipartRefusedZip: a zip whose restore is refused (a tar member
// that would escape the tree) answers 400 with the reason, and its task
// failed.
func TestMultipartRefusedZip(t *testing.T) {
	f := newMPFixture(t, UploadOptions{})
	ctx := context.Background()
	z := unsafeFSZip(t, f)
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "evil.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := f.uploadParts(t, "evil.zip", id, z, minPartSize)
	_, err = f.core.CompleteMultipartUpload(ctx, CopyBucket, "evil.zip", id, parts, minio.PutObjectOptions{})
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.StatusCode != 400 || !strings.Contains(resp.Message, `"../escape"`) {
		t.Fatalf("complete of an unsafe zip: %v", err)
	}
	taskID := f.header("POST", "/copy/evil.zip").Get(TaskIDHeader)
	if info, err := f.opts.Tasks.Get(taskID); err != nil || info.Status != tasks.Failed {
		t.Errorf("task %q: %+v %v", taskID, info, err)
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left after a refused zip: %v", left)
	}
}

// TestCorruptZipUpload: a zip whose data fails its CRC is refused with
// 400, found by the restore (a single PUT).
func TestCorruptZipUpload(t *testing.T) {
	f := newMPFixture(t, UploadOptions{})
	_, z := f.randomDiskZip(t, 1<<20)
	z[len(z)/2] ^= 0xff
	_, err := f.core.PutObject(context.Background(), CopyBucket, "corrupt.zip", bytes.NewReader(z), int64(len(z)), "", "", minio.PutObjectOptions{})
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.StatusCode != 400 || !strings.HasPrefix(resp.Message, "the zip is corrupt") || !strings.Contains(resp.Message, "checksum") {
		t.Fatalf("upload of a corrupt zip: %v", err)
	}
	if f.header("PUT", "/copy/corrupt.zip").Get(TaskIDHeader) == "" {
		t.Error("no task ID in the answer")
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left after a refused zip: %v", left)
	}
}

// unsafeFSZip is the zip of the fs sample's snapshot with a tar holding
// a member "../escape" as its data.
func unsafeFSZip(t *testing.T, f *mpFixture) []byte {
	t.Helper()
	snap := samplestest.Snapshot(t, f.m, "fs:sample")
	orig := f.zipOf(t, snap)
	zr, err := zip.NewReader(bytes.NewReader(orig), int64(len(orig)))
	if err != nil {
		t.Fatal(err)
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: "../escape", Mode: 0o644, Size: 4, Typeflag: tar.TypeReg})
	tw.Write([]byte("evil"))
	tw.Close()
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	for _, e := range zr.File {
		w, err := zw.Create(e.Name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(e.Name, ".data") {
			w.Write(tarBuf.Bytes())
			continue
		}
		rc, _ := e.Open()
		io.Copy(w, rc)
		rc.Close()
	}
	zw.Close()
	return out.Bytes()
}

// TestMultipartAbortAndJanitor: Abort removes an upload's parts; the
// janitor those of uploads idle for a day; a new Handler those of an
// earlier run.
func TestMultipartAbortAndJanitor(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	f := newMPFixture(t, UploadOptions{Now: clock})
	ctx := context.Background()
	start := func(key string) string {
		id, err := f.core.NewMultipartUpload(ctx, CopyBucket, key, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.core.PutObjectPart(ctx, CopyBucket, key, id, 1, strings.NewReader("part"), 4, minio.PutObjectPartOptions{}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	aborted := start("a.zip")
	if err := f.core.AbortMultipartUpload(ctx, CopyBucket, "a.zip", aborted); err != nil {
		t.Fatal(err)
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left after abort: %v", left)
	}
	if got := s3Code(f.core.AbortMultipartUpload(ctx, CopyBucket, "a.zip", aborted)); got != "NoSuchUpload 404" {
		t.Errorf("abort again: %s", got)
	}

	idle := start("idle.zip")
	advance(12 * time.Hour)
	busy := start("busy.zip")
	advance(13 * time.Hour) // idle.zip: 25 h without a request; busy.zip 13 h
	f.h.mp.expire()
	_, err := f.core.ListObjectParts(ctx, CopyBucket, "idle.zip", idle, 0, 0)
	if got := s3Code(err); got != "NoSuchUpload 404" {
		t.Errorf("idle upload after the janitor: %s", got)
	}
	if _, err := f.core.ListObjectParts(ctx, CopyBucket, "busy.zip", busy, 0, 0); err != nil {
		t.Errorf("busy upload after the janitor: %v", err)
	}
	if left := f.uploadsLeft(t); len(left) != 1 || left[0] != busy {
		t.Errorf("left after the janitor: %v, want %s", left, busy)
	}

	// A restart starts without the uploads of the run before.
	if _, err := New(Config{Manager: f.m, AccessKey: accessKey, SecretKey: secretKey, TempDir: filepath.Join(f.dir, "tmp")}); err != nil {
		t.Fatal(err)
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left after a restart: %v", left)
	}
}

// do sends a request signed with payload as x-amz-content-sha256 straight
// to the handler.
func (f *mpFixture) do(method, target string, header map[string]string, body io.Reader, payload string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, body)
	for k, v := range header {
		r.Header.Set(k, v)
	}
	if v, ok := header["Content-Length"]; ok {
		fmt.Sscan(v, &r.ContentLength)
	}
	signAt(r, accessKey, secretKey, payload, time.Now())
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func answer(w *httptest.ResponseRecorder) string {
	if w.Code < 300 {
		return fmt.Sprint(w.Code)
	}
	return fmt.Sprintf("%s %d", errorCode(w.Body.Bytes()), w.Code)
}

// gateRestorer restores with the appliance's use cases once a test lets
// it, counting the restores.
type gateRestorer struct {
	Restorer
	entered chan struct{}
	proceed chan struct{}
}

// newGatedFixture is an mpFixture whose restores wait at a gate; the
// gate restores into the fixture's samples (f.dir, f.m), the handler's
// own Manager only tells the PE types.
func newGatedFixture(t *testing.T, entered int) (*mpFixture, *gateRestorer) {
	t.Helper()
	dir, m := samplestest.Config(t)
	uc, err := usecase.New(usecase.Config{Manager: m})
	if err != nil {
		t.Fatal(err)
	}
	gate := &gateRestorer{Restorer: uc, entered: make(chan struct{}, entered), proceed: make(chan struct{})}
	f := newMPFixture(t, UploadOptions{Restorer: gate})
	f.dir, f.m = dir, m
	return f, gate
}

func (g *gateRestorer) Copy(ctx context.Context, src pe.ProtectedEntity, typ string, opts pe.CopyOptions, progress pe.Progress) (pe.ProtectedEntity, error) {
	g.entered <- struct{}{}
	<-g.proceed
	return g.Restorer.Copy(ctx, src, typ, opts, progress)
}

// TestCompleteRetriedWhileRestoring: a Complete sent again while the
// first one's restore runs waits for it and gets the same answer; the
// zip is restored once.
func TestCompleteRetriedWhileRestoring(t *testing.T) {
	f, gate := newGatedFixture(t, 2)
	ctx := context.Background()
	image, z := f.randomDiskZip(t, 6<<20)
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "twice.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := f.uploadParts(t, "twice.zip", id, z, minPartSize)
	type result struct {
		info minio.UploadInfo
		err  error
	}
	results := make(chan result, 2)
	complete := func() {
		info, err := f.core.CompleteMultipartUpload(ctx, CopyBucket, "twice.zip", id, parts, minio.PutObjectOptions{})
		results <- result{info, err}
	}
	go complete()
	<-gate.entered
	go complete()
	// The second Complete must not start a restore of its own: the
	// first's goes on only now, and the gate counts.
	close(gate.proceed)
	first, second := <-results, <-results
	if first.err != nil || second.err != nil || first.info.ETag != second.info.ETag {
		t.Fatalf("completes: %+v, %+v", first, second)
	}
	if len(gate.entered) != 0 || len(f.opts.Tasks.List()) != 1 {
		t.Errorf("%d more restores, %d tasks: want 1 restore", len(gate.entered), len(f.opts.Tasks.List()))
	}
	if got := f.restoredDisk(t, f.header("POST", "/copy/twice.zip")); !bytes.Equal(got, image) {
		t.Error("the restored disk differs")
	}
}

// TestAbortRacesComplete: a Complete that comes while an Abort is
// under way finds no upload, so that the Abort never removes the parts
// of a restore.
func TestAbortRacesComplete(t *testing.T) {
	f, gate := newGatedFixture(t, 1)
	ctx := context.Background()
	_, z := f.randomDiskZip(t, 64<<10)
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "race.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := f.uploadParts(t, "race.zip", id, z, minPartSize)
	body := fmt.Sprintf("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>%s</ETag></Part></CompleteMultipartUpload>", parts[0].ETag)
	completed := make(chan string, 1)
	f.h.mp.abortTaken = func() {
		go func() {
			completed <- answer(f.do("POST", "/copy/race.zip?uploadId="+id, nil, strings.NewReader(body), unsignedPayload))
		}()
		select {
		case got := <-completed: // refused at once
			completed <- got
		case <-gate.entered: // the restore has the parts
		}
	}
	abort := answer(f.do("DELETE", "/copy/race.zip?uploadId="+id, nil, nil, unsignedPayload))
	close(gate.proceed)
	if complete := <-completed; abort != "204" || complete != "NoSuchUpload 404" {
		t.Errorf("abort %s, complete during the abort %s", abort, complete)
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
}

// TestUploadRoom: receives in flight count against the room on the
// store's filesystem, and a payload of unknown size is stopped when it
// would eat into the reserve.
func TestUploadRoom(t *testing.T) {
	f := newMPFixture(t, UploadOptions{})
	ctx := context.Background()
	// A filesystem of 100 MiB (1 MiB reserve) with 40 MiB free besides
	// what the store holds.
	f.h.mp.free = func() (int64, int64, error) {
		used := int64(0)
		filepath.WalkDir(f.h.mp.dir, func(_ string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					used += fi.Size()
				}
			}
			return nil
		})
		return 40<<20 - used, 100 << 20, nil
	}
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "room.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := func(n int) string { return fmt.Sprintf("/copy/room.zip?partNumber=%d&uploadId=%s", n, id) }
	// Part 1 announces 30 MiB and sends one byte, then waits.
	pr, pw := io.Pipe()
	first := make(chan string, 1)
	go func() {
		first <- answer(f.do("PUT", part(1), map[string]string{"Content-Length": fmt.Sprint(30 << 20)}, pr, unsignedPayload))
	}()
	if _, err := pw.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	// 30 MiB announced + 10 MiB > 40 MiB - 1 MiB reserve.
	ten := make([]byte, 10<<20)
	if got := answer(f.do("PUT", part(2), nil, bytes.NewReader(ten), unsignedPayload)); got != "InsufficientStorage 507" {
		t.Errorf("part past the room others announced: %s", got)
	}
	if got := answer(f.do("PUT", part(2), nil, bytes.NewReader(ten[:8<<20]), unsignedPayload)); got != "200" {
		t.Errorf("part within the room: %s", got)
	}
	pw.CloseWithError(errors.New("client gone"))
	if got := <-first; got != "IncompleteBody 400" {
		t.Errorf("part 1: %s", got)
	}
	if err := f.core.AbortMultipartUpload(ctx, CopyBucket, "room.zip", id); err != nil {
		t.Fatal(err)
	}

	// An aws-chunked PUT that does not say its size is stopped at the
	// first check past the room, and leaves nothing.
	big := make([]byte, roomCheckInterval+(1<<20))
	var body bytes.Buffer
	for off := 0; off < len(big); off += 1 << 20 {
		fmt.Fprintf(&body, "%x\r\n", 1<<20)
		body.Write(big[off : off+1<<20])
		body.WriteString("\r\n")
	}
	body.WriteString("0\r\n\r\n")
	got := answer(f.do("PUT", "/copy/unknown.zip", map[string]string{"Content-Encoding": "aws-chunked"}, &body, streamingUnsignedTrailer))
	if got != "InsufficientStorage 507" {
		t.Errorf("PUT of unknown size past the room: %s", got)
	}
	if left := f.uploadsLeft(t); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
	if f.h.mp.reserved != 0 {
		t.Errorf("%d bytes still reserved", f.h.mp.reserved)
	}
}

// TestMultipartListingsAndErrors: empty pages, S3's dates, and the
// status classes of what is not the client's fault.
func TestMultipartListingsAndErrors(t *testing.T) {
	f := newMPFixture(t, UploadOptions{})
	ctx := context.Background()
	_, z := f.randomDiskZip(t, 6<<20)
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "l.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := f.uploadParts(t, "l.zip", id, z, minPartSize)

	for _, target := range []string{"/copy/l.zip?max-parts=0&uploadId=" + id, "/copy?max-uploads=0&uploads"} {
		w := f.do("GET", target, nil, nil, emptySHA256)
		if b := w.Body.String(); w.Code != 200 || !strings.Contains(b, "<IsTruncated>false</IsTruncated>") || strings.Contains(b, "<Part>") || strings.Contains(b, "<Upload>") {
			t.Errorf("GET %s: %d %s", target, w.Code, b)
		}
	}
	w := f.do("GET", "/copy/l.zip?uploadId="+id, nil, nil, emptySHA256)
	w2 := f.do("GET", "/copy?uploads", nil, nil, emptySHA256)
	for _, b := range []string{w.Body.String(), w2.Body.String()} {
		for _, tag := range []string{"LastModified", "Initiated"} {
			_, rest, ok := strings.Cut(b, "<"+tag+">")
			if !ok {
				continue
			}
			v, _, _ := strings.Cut(rest, "<")
			if _, err := time.Parse(s3Time, v); err != nil {
				t.Errorf("%s %q is not S3's form: %v", tag, v, err)
			}
		}
	}

	// Not the multipart requests: wrong methods on the copy bucket.
	for _, tc := range []struct{ method, target string }{{"GET", "/copy/l.zip?uploads"}, {"POST", "/copy?uploads"}} {
		if got := answer(f.do(tc.method, tc.target, nil, nil, emptySHA256)); got != "MethodNotAllowed 405" {
			t.Errorf("%s %s: %s", tc.method, tc.target, got)
		}
	}

	// Complete of an unknown upload does not read its body.
	bad := io.MultiReader(strings.NewReader("<Complete"), iotestErr{})
	if got := answer(f.do("POST", "/copy/l.zip?uploadId=nope", nil, bad, unsignedPayload)); got != "NoSuchUpload 404" {
		t.Errorf("complete of an unknown upload: %s", got)
	}

	// A part shorter on disk than received is the appliance's fault.
	f.h.mp.mu.Lock()
	file := f.h.mp.uploads[id].parts[1].file
	f.h.mp.mu.Unlock()
	if err := os.Truncate(file, 100); err != nil {
		t.Fatal(err)
	}
	_, err = f.core.CompleteMultipartUpload(ctx, CopyBucket, "l.zip", id, parts, minio.PutObjectOptions{})
	if got := s3Code(err); got != "InternalError 500" {
		t.Errorf("complete with a part cut short: %s", got)
	}
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errors.New("body read") }

// failRestorer fails every restore with err.
type failRestorer struct{ err error }

func (r failRestorer) Copy(context.Context, pe.ProtectedEntity, string, pe.CopyOptions, pe.Progress) (pe.ProtectedEntity, error) {
	return nil, r.err
}

// TestRestoreOutOfRoom: a restore that runs out of room is 507, as S3
// says InsufficientStorage, not a refused zip.
func TestRestoreOutOfRoom(t *testing.T) {
	f := newMPFixture(t, UploadOptions{Restorer: failRestorer{fmt.Errorf("write disk: %w", &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC})}})
	_, z := f.randomDiskZip(t, 64<<10)
	_, err := f.core.PutObject(context.Background(), CopyBucket, "full.zip", bytes.NewReader(z), int64(len(z)), "", "", minio.PutObjectOptions{})
	if got := s3Code(err); got != "InsufficientStorage 507" {
		t.Errorf("restore out of room: %s", got)
	}
}

// TestChecksumTrailer: aws-chunked bodies with an unsigned checksum
// trailer are checked against it, in every algorithm S3 has.
func TestChecksumTrailer(t *testing.T) {
	f := newMPFixture(t, UploadOptions{})
	ctx := context.Background()
	id, err := f.core.NewMultipartUpload(ctx, CopyBucket, "t.zip", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 100<<10)
	rand.NewChaCha8([32]byte{6}).Read(data)
	chunked := func(trailer, value string) io.Reader {
		var b bytes.Buffer
		for off := 0; off < len(data); off += 64 << 10 {
			chunk := data[off:min(off+64<<10, len(data))]
			fmt.Fprintf(&b, "%x\r\n", len(chunk))
			b.Write(chunk)
			b.WriteString("\r\n")
		}
		fmt.Fprintf(&b, "0\r\n%s:%s\r\n\r\n", trailer, value)
		return &b
	}
	header := func(trailer string) map[string]string {
		return map[string]string{"Content-Encoding": "aws-chunked", "X-Amz-Trailer": trailer, "X-Amz-Decoded-Content-Length": fmt.Sprint(len(data))}
	}
	for _, name := range []string{"x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme", "x-amz-checksum-sha1", "x-amz-checksum-sha256"} {
		h := checksumAlgorithms[name]()
		h.Write(data)
		good := base64.StdEncoding.EncodeToString(h.Sum(nil))
		target := "/copy/t.zip?partNumber=1&uploadId=" + id
		if got := answer(f.do("PUT", target, header(name), chunked(name, good), streamingUnsignedTrailer)); got != "200" {
			t.Errorf("%s right: %s", name, got)
		}
		h.Write([]byte{0})
		wrong := base64.StdEncoding.EncodeToString(h.Sum(nil))
		if got := answer(f.do("PUT", target, header(name), chunked(name, wrong), streamingUnsignedTrailer)); got != "BadDigest 400" {
			t.Errorf("%s wrong: %s", name, got)
		}
	}
	target := "/copy/t.zip?partNumber=2&uploadId=" + id
	if got := answer(f.do("PUT", target, header("x-amz-checksum-md4"), chunked("x-amz-checksum-md4", "x"), streamingUnsignedTrailer)); got != "InvalidRequest 400" {
		t.Errorf("unknown checksum: %s", got)
	}
	if got := answer(f.do("PUT", target, header("x-amz-checksum-crc32"), chunked("x-other", "x"), streamingUnsignedTrailer)); got != "IncompleteBody 400" {
		t.Errorf("checksum trailer missing: %s", got)
	}
	if got := answer(f.do("PUT", target, header("x-amz-checksum-crc32"), chunked("x-amz-checksum-crc32", "x"), streamingSignedTrailer)); got != "NotImplemented 501" {
		t.Errorf("signed trailer: %s", got)
	}
}

// TestJanitorRacesComplete runs the janitor over many idle uploads while
// each is completed: an upload is either expired (Complete: 404) or
// restored whole, never removed under its restore.
func TestJanitorRacesComplete(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f := newMPFixture(t, UploadOptions{Now: clock})
	ctx := context.Background()
	_, z := f.randomDiskZip(t, 16<<10)
	const uploads = 30
	bodies := map[string]string{}
	for i := range uploads {
		key := fmt.Sprintf("idle%d.zip", i)
		id, err := f.core.NewMultipartUpload(ctx, CopyBucket, key, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		parts := f.uploadParts(t, key, id, z, minPartSize)
		bodies["/copy/"+key+"?uploadId="+id] = fmt.Sprintf("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>%s</ETag></Part></CompleteMultipartUpload>", parts[0].ETag)
	}
	mu.Lock()
	now = now.Add(25 * time.Hour)
	mu.Unlock()
	var wg sync.WaitGroup
	answers := make(chan string, uploads)
	wg.Add(1)
	go func() { defer wg.Done(); f.h.mp.expire() }()
	for target, body := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers <- answer(f.do("POST", target, nil, strings.NewReader(body), unsignedPayload))
		}()
	}
	wg.Wait()
	close(answers)
	for a := range answers {
		if a != "200" && a != "NoSuchUpload 404" {
			t.Errorf("complete beside the janitor: %s", a)
		}
	}
	for _, id := range f.opts.Tasks.List() {
		if info, err := f.opts.Tasks.Wait(ctx, id); err != nil || info.Status != tasks.Success {
			t.Errorf("restore %s: %+v %v", id, info, err)
		}
	}
}
