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
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/astrolabe-appliance/astrolabe/appliance/samples/samplestest"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
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
	_, err = f.core.CompleteMultipartUpload(ctx, CopyBucket, "big.zip", id, parts, minio.PutObjectOptions{})
	if got := s3Code(err); got != "NoSuchUpload 404" {
		t.Errorf("complete again: %s", got)
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
