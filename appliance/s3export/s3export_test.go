package s3export

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/astrolabe-appliance/astrolabe/appliance/samples/samplestest"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

const (
	accessKey = "astrolabe-test"
	secretKey = "secret-of-the-test-0123456789"
)

type fixture struct {
	dir      string
	m        pe.Manager
	h        *Handler
	endpoint string // host:port
	diskSnap pe.ID
	fsSnap   pe.ID
	mc       *minio.Client
	stateDir string // the handlers' StateDir, kept across restarts
}

func newFixture(t *testing.T, maxUpload int64) *fixture {
	t.Helper()
	dir, m := samplestest.Config(t)
	f := &fixture{dir: dir, m: m, diskSnap: samplestest.Snapshot(t, m, "disk:sample.img"), fsSnap: samplestest.Snapshot(t, m, "fs:sample"),
		stateDir: t.TempDir()}
	f.h, f.endpoint = f.start(t, maxUpload)
	f.mc = f.client(t, secretKey)
	return f
}

// start serves the fixture's PEs with a new handler, as the appliance
// does after a restart: the same PEs and state, nothing else kept.
func (f *fixture) start(t *testing.T, maxUpload int64) (*Handler, string) {
	t.Helper()
	h, err := New(Config{Manager: f.m, AccessKey: accessKey, SecretKey: secretKey, TempDir: t.TempDir(), StateDir: f.stateDir,
		MaxUpload: maxUpload, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, strings.TrimPrefix(srv.URL, "http://")
}

// do sends a request signed as a client does to the fixture's server
// and returns the answer and its body.
func (f *fixture) do(t *testing.T, method, path, query string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	return doAt(t, f.endpoint, method, path, query, header)
}

func doAt(t *testing.T, endpoint, method, path, query string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: endpoint, Path: path, RawQuery: query}
	r, err := http.NewRequest(method, u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		r.Header.Set(k, v)
	}
	signAt(r, accessKey, secretKey, emptySHA256, time.Now().UTC())
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("%s %s?%s: %v", method, path, query, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s?%s: %v", method, path, query, err)
	}
	return resp, body
}

// errorCode is the Code of an S3 error answer.
func errorCode(body []byte) string {
	var e struct{ Code string }
	xml.Unmarshal(body, &e)
	return e.Code
}

func (f *fixture) client(t *testing.T, secret string) *minio.Client {
	t.Helper()
	mc, err := minio.New(f.endpoint, &minio.Options{Creds: credentials.NewStaticV4(accessKey, secret, ""), Secure: false, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

func TestMinioClient(t *testing.T) {
	f := newFixture(t, 0)
	ctx := context.Background()
	image, err := os.ReadFile(filepath.Join(f.dir, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}

	buckets, err := f.mc.ListBuckets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range buckets {
		names = append(names, b.Name)
	}
	if strings.Join(names, " ") != "copy disk fs fs-pe" {
		t.Errorf("buckets: %v", names)
	}

	var keys []string
	for o := range f.mc.ListObjects(ctx, "disk", minio.ListObjectsOptions{Recursive: true, MaxKeys: 1}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
		if o.Key == f.diskSnap.String() && o.Size != int64(len(image)) {
			t.Errorf("listed size %d, want %d", o.Size, len(image))
		}
	}
	want := []string{f.diskSnap.String(), f.diskSnap.String() + ".peinfo"}
	if strings.Join(keys, " ") != strings.Join(want, " ") {
		t.Errorf("keys (paged one by one): %v, want %v", keys, want)
	}
	var prefixes []string
	for o := range f.mc.ListObjects(ctx, "disk", minio.ListObjectsOptions{Prefix: "disk:sample.img:", Recursive: false}) {
		prefixes = append(prefixes, o.Key)
	}
	sort.Strings(prefixes)
	if len(prefixes) != 2 {
		t.Errorf("with delimiter /: %v", prefixes)
	}

	// GetObject, whole and a range, and StatObject.
	obj, err := f.mc.GetObject(ctx, "disk", f.diskSnap.String(), minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(obj)
	if err != nil || sum(got) != sum(image) {
		t.Fatalf("GetObject: %d bytes, %v; differs from the image", len(got), err)
	}
	opts := minio.GetObjectOptions{}
	opts.SetRange(1<<20+7, 3<<20)
	obj, _ = f.mc.GetObject(ctx, "disk", f.diskSnap.String(), opts)
	got, err = io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, image[1<<20+7:3<<20+1]) {
		t.Errorf("ranged GetObject: %d bytes, %v", len(got), err)
	}
	st, err := f.mc.StatObject(ctx, "disk", f.diskSnap.String(), minio.StatObjectOptions{})
	if err != nil || st.Size != int64(len(image)) || st.ETag == "" || st.LastModified.IsZero() {
		t.Errorf("StatObject: %+v %v", st, err)
	}
	info, _ := f.mc.GetObject(ctx, "disk", f.diskSnap.String()+".peinfo", minio.GetObjectOptions{})
	ib, _ := io.ReadAll(info)
	if !strings.Contains(string(ib), `"transportType": "s3"`) || !strings.Contains(string(ib), f.diskSnap.String()) {
		t.Errorf("peinfo: %s", ib)
	}

	// A presigned URL works for any HTTP client.
	u, err := f.mc.PresignedGetObject(ctx, "disk", f.diskSnap.String(), time.Hour, url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || sum(got) != sum(image) {
		t.Errorf("presigned GET: %d, %d bytes", resp.StatusCode, len(got))
	}
	// Tampering with a presigned URL breaks it.
	resp, _ = http.Get(strings.Replace(u.String(), "X-Amz-Expires=3600", "X-Amz-Expires=3601", 1))
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("tampered presigned URL: %d", resp.StatusCode)
	}

	// The zip of the fs snapshot opens as that snapshot.
	zobj, err := f.mc.GetObject(ctx, "fs-pe", f.fsSnap.String()+".zip", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zb, err := io.ReadAll(zobj)
	if err != nil {
		t.Fatal(err)
	}
	zp, err := pe.OpenZip(ctx, bytes.NewReader(zb), int64(len(zb)))
	if err != nil || zp.ID() != f.fsSnap {
		t.Fatalf("zip object: %v %v", zp, err)
	}

	// Errors are S3's.
	checkErr := func(err error, code string, status int) {
		t.Helper()
		var resp minio.ErrorResponse
		if !errors.As(err, &resp) || resp.Code != code || resp.StatusCode != status {
			t.Errorf("want %s (%d), got %v", code, status, err)
		}
	}
	_, err = f.client(t, "wrong-secret").ListBuckets(ctx)
	checkErr(err, "SignatureDoesNotMatch", 403)
	_, err = f.mc.StatObject(ctx, "disk", "disk:sample.img:nope", minio.StatObjectOptions{})
	checkErr(err, "NoSuchKey", 404)
	_, err = f.mc.StatObject(ctx, "disk", "fs:sample", minio.StatObjectOptions{})
	checkErr(err, "NoSuchKey", 404)
	_, err = f.mc.StatObject(ctx, "tape", "x", minio.StatObjectOptions{})
	checkErr(err, "NoSuchBucket", 404)
	opts = minio.GetObjectOptions{}
	opts.SetRange(int64(len(image))+10, 0)
	obj, _ = f.mc.GetObject(ctx, "disk", f.diskSnap.String(), opts)
	_, err = io.ReadAll(obj)
	checkErr(err, "InvalidRange", 416)
	if f.h.BytesServed() < int64(2*len(image)) {
		t.Errorf("bytes served: %d", f.h.BytesServed())
	}

	// Copy-by-upload: the disk zip put back in restores a new PE.
	dz, err := f.mc.GetObject(ctx, "disk", f.diskSnap.String()+".zip", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dzb, _ := io.ReadAll(dz)
	if _, err := f.mc.PutObject(ctx, "copy", "restore.zip", bytes.NewReader(dzb), int64(len(dzb)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("upload: %v", err)
	}
	restored := restoredDisks(t, f)
	if len(restored) != 1 {
		t.Fatalf("after upload: disks %v", restored)
	}
	if b, _ := os.ReadFile(filepath.Join(f.dir, "disk", restored[0])); sum(b) != sum(image) {
		t.Error("the restored disk differs")
	}
	_, err = f.mc.PutObject(ctx, "copy", "notes.txt", strings.NewReader("hello"), 5, minio.PutObjectOptions{})
	checkErr(err, "InvalidArgument", 400)
	_, err = f.mc.PutObject(ctx, "copy", "junk.zip", strings.NewReader("not a zip"), 9, minio.PutObjectOptions{})
	checkErr(err, "InvalidArgument", 400)
	_, err = f.mc.PutObject(ctx, "disk", "x", strings.NewReader("x"), 1, minio.PutObjectOptions{})
	checkErr(err, "MethodNotAllowed", 405)
}

// restoredDisks lists the disk PEs other than the sample.
func restoredDisks(t *testing.T, f *fixture) []string {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(f.dir, "disk"))
	var out []string
	for _, e := range entries {
		if !e.IsDir() && e.Name() != "sample.img" && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestUploadLimit(t *testing.T) {
	f := newFixture(t, 1000)
	_, err := f.mc.PutObject(context.Background(), "copy", "big.zip", bytes.NewReader(make([]byte, 5000)), 5000, minio.PutObjectOptions{})
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.Code != "EntityTooLarge" {
		t.Errorf("oversize upload: %v", err)
	}
	if got := restoredDisks(t, f); len(got) != 0 {
		t.Errorf("oversize upload left %v", got)
	}
}

// TestRclone uses rclone from Debian: ls, cat, and copy-by-upload.
func TestRclone(t *testing.T) {
	if _, err := exec.LookPath("rclone"); err != nil {
		t.Fatal("rclone missing: apt-get install -y rclone")
	}
	f := newFixture(t, 0)
	rclone := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "rclone", args...)
		env := []string{
			"RCLONE_CONFIG=/dev/null",
			"RCLONE_CONFIG_AP_TYPE=s3", "RCLONE_CONFIG_AP_PROVIDER=Other",
			"RCLONE_CONFIG_AP_ACCESS_KEY_ID=" + accessKey, "RCLONE_CONFIG_AP_SECRET_ACCESS_KEY=" + secretKey,
			"RCLONE_CONFIG_AP_ENDPOINT=http://" + f.endpoint, "RCLONE_CONFIG_AP_FORCE_PATH_STYLE=true",
		}
		for _, e := range os.Environ() {
			// rclone refuses to start with AWS_CA_BUNDLE set.
			if !strings.HasPrefix(e, "AWS_") && !strings.HasPrefix(e, "RCLONE_") {
				env = append(env, e)
			}
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("rclone %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := rclone("ls", "ap:disk")
	if !strings.Contains(out, f.diskSnap.String()) || !strings.Contains(out, "67108864") {
		t.Errorf("rclone ls:\n%s", out)
	}
	image, _ := os.ReadFile(filepath.Join(f.dir, "disk", "sample.img"))
	if got := rclone("cat", "ap:disk/"+f.diskSnap.String()); sum([]byte(got)) != sum(image) {
		t.Errorf("rclone cat: %d bytes differ from the image", len(got))
	}
	zipPath := filepath.Join(t.TempDir(), "disk.zip")
	rclone("copyto", "ap:disk/"+f.diskSnap.String()+".zip", zipPath)
	rclone("copyto", zipPath, "ap:copy/from-rclone.zip")
	restored := restoredDisks(t, f)
	if len(restored) != 1 {
		t.Fatalf("after rclone upload: %v", restored)
	}
	if b, _ := os.ReadFile(filepath.Join(f.dir, "disk", restored[0])); sum(b) != sum(image) {
		t.Error("the disk restored from rclone's upload differs")
	}
}

// Refused restores of uploads are the client's: 400 with the reason (S3's
// EntityTooLarge for limits); only other failures are 500.
func TestCopyError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("restore fs:x: expansion 1000x: %w", pe.ErrLimit), http.StatusBadRequest},
		{fmt.Errorf("tar stream refused: %w", pe.ErrInvalidSource), http.StatusBadRequest},
		{fmt.Errorf("create /srv/pes/%s: %w", strings.Repeat("a", 300), syscall.ENAMETOOLONG), http.StatusBadRequest},
		{errors.New("disk on fire"), http.StatusInternalServerError},
	} {
		got := copyError(tc.err)
		if got.status != tc.want {
			t.Errorf("%v: %d, want %d", tc.err, got.status, tc.want)
		}
		if strings.Contains(got.message, "/srv/") {
			t.Errorf("%v: message %q shows a path", tc.err, got.message)
		}
	}
}
