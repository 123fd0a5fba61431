package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Env is a running appliance and what the S3 clients need to use it.
type s3Env struct {
	a          *appliance
	dir        string // the clients' own files
	endpoint   string // https://127.0.0.1:port
	access     string
	secret     string
	caFile     string
	snap       string    // the key of the disk snapshot
	image      []byte    // its bytes
	etag       string    // its ETag, quoted
	rangeStart int64     // a range that is not aligned to anything
	rangeEnd   int64     // inclusive
	started    time.Time // before the appliance first served its buckets
}

// checkCreated checks a bucket's creation date: when the appliance first
// served the bucket, so after the test started (S3 dates have whole
// milliseconds) and not in the future.
func (s *s3Env) checkCreated(t *testing.T, bucket string, created time.Time) {
	t.Helper()
	if created.Before(s.started.Truncate(time.Millisecond)) || created.After(time.Now()) {
		t.Errorf("bucket %s created %v, want when the appliance first served it: from %v to now", bucket, created, s.started)
	}
}

func (s *s3Env) host() string { return strings.TrimPrefix(s.endpoint, "https://") }

// wantRange is the bytes of the range the clients read.
func (s *s3Env) wantRange() []byte { return s.image[s.rangeStart : s.rangeEnd+1] }

var bytesServedRe = regexp.MustCompile(`astrolabe_data_bytes_served_total\{path="s3"\} (\S+)`)

// bytesServed is the appliance's count of object bytes sent over S3.
func (s *s3Env) bytesServed(t *testing.T) int64 {
	t.Helper()
	status, body := s.a.call("GET", "/metrics", s.a.info["token"], "")
	m := bytesServedRe.FindStringSubmatch(body)
	if status != 200 || m == nil {
		t.Fatalf("metrics: %d %.300s", status, body)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return int64(n)
}

// tool runs a client; it fails the test only if the client does not end.
func tool(t *testing.T, env []string, name string, args ...string) (stdout []byte, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not end: %s", name, args, errb.String())
	}
	return out.Bytes(), errb.String(), err
}

// mustTool runs a client that must succeed and returns its output.
func mustTool(t *testing.T, env []string, name string, args ...string) []byte {
	t.Helper()
	out, stderr, err := tool(t, env, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr)
	}
	return out
}

// refused runs a client that must fail with an error whose text has all
// of want, and checks that the appliance sent it no object bytes.
func (s *s3Env) refused(t *testing.T, env []string, want []string, name string, args ...string) {
	t.Helper()
	before := s.bytesServed(t)
	out, stderr, err := tool(t, env, name, args...)
	if err == nil {
		t.Fatalf("%s %v succeeded (%d bytes), want %v", name, args, len(out), want)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("%s %v: %q does not say %q", name, args, stderr, w)
		}
	}
	if n := s.bytesServed(t) - before; n != 0 {
		t.Errorf("%s %v: %d object bytes served, want none", name, args, n)
	}
}

// sameBytes compares what a client read with what it should have.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes differ from the %d of the snapshot", what, len(got), len(want))
	}
}

// cleanEnv is the test's environment without the settings of S3 clients
// that would take over (a developer's AWS_PROFILE, RCLONE_CONFIG ...).
func cleanEnv(home string) []string {
	env := []string{"HOME=" + home}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_") && !strings.HasPrefix(e, "RCLONE_") && !strings.HasPrefix(e, "MC_") &&
			!strings.HasPrefix(e, "S3CMD") && !strings.HasPrefix(e, "HOME=") {
			env = append(env, e)
		}
	}
	return env
}

// mcPath finds minio's mc, which Debian does not package (its "mc" is
// Midnight Commander): scripts/deps.d/s3-clients.sh builds it.
func mcPath(t *testing.T) string {
	t.Helper()
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "mc")
		if out, err := exec.Command(p, "--version").Output(); err == nil && strings.HasPrefix(string(out), "mc version") {
			return p
		}
	}
	t.Fatal("minio's mc missing: scripts/deps.d/s3-clients.sh installs it (GOFLAGS= go install github.com/minio/mc@v0.0.0-20250313080218-cf909e1063a9)")
	return ""
}

func needS3Clients(t *testing.T) string {
	t.Helper()
	for _, c := range []string{"aws", "s3cmd", "rclone"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s missing: scripts/deps.d/s3-clients.sh installs the S3 clients (apt-get install -y awscli s3cmd rclone)", c)
		}
	}
	return mcPath(t)
}

// TestS3Clients drives the S3 clients people use against a running
// 'astrolabe serve' over TLS: awscli, s3cmd, minio's mc, minio-go and
// rclone each list the buckets and a bucket, read a snapshot whole and a
// range of it (bytes compared), read it conditionally (If-None-Match
// with its ETag: 304, nothing sent; If-Match with another: 412) and read
// its ACL (s3cmd info). After a restart the ETags and the buckets'
// creation dates are the same.
func TestS3Clients(t *testing.T) {
	mc := needS3Clients(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	image, err := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	a := startServe(t, cfg)
	s := &s3Env{a: a, dir: dir, started: started, endpoint: a.info["s3"], access: a.info["s3-access-key"], secret: a.info["s3-secret-key"],
		caFile: filepath.Join(cfg, "tls", "cert.pem"), snap: snap, image: image,
		rangeStart: 1<<20 + 7, rangeEnd: 3<<20 + 11}
	mcl := s.minioClient(t)
	st, err := mcl.StatObject(context.Background(), "disk", snap, minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.etag = `"` + strings.Trim(st.ETag, `"`) + `"`

	for _, c := range []struct {
		name string
		run  func(*testing.T, *s3Env)
	}{
		{"awscli", testAWSCLI},
		{"s3cmd", testS3cmd},
		{"mc", func(t *testing.T, s *s3Env) { testMC(t, s, mc) }},
		{"minio-go", testMinioGo},
		{"rclone", testRcloneClient},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, s) })
	}

	t.Run("restart", func(t *testing.T) {
		buckets, err := mcl.ListBuckets(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		zipETag, err := mcl.StatObject(context.Background(), "disk", snap+".zip", minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a.stop()
		s.a = startServe(t, cfg)
		s.endpoint = s.a.info["s3"]
		mcl := s.minioClient(t)
		for _, key := range []string{snap, snap + ".zip"} {
			want := st.ETag
			if key != snap {
				want = zipETag.ETag
			}
			if got, err := mcl.StatObject(context.Background(), "disk", key, minio.StatObjectOptions{}); err != nil || got.ETag != want {
				t.Errorf("ETag of %s after a restart: %q %v, was %q", key, got.ETag, err, want)
			}
		}
		after, err := mcl.ListBuckets(context.Background())
		if err != nil || len(after) != len(buckets) {
			t.Fatalf("buckets after a restart: %v %v", after, err)
		}
		for i := range after {
			s.checkCreated(t, after[i].Name, after[i].CreationDate)
			if !after[i].CreationDate.Equal(buckets[i].CreationDate) {
				t.Errorf("bucket %s created %v after a restart, was %v", after[i].Name, after[i].CreationDate, buckets[i].CreationDate)
			}
		}
		// The dates are kept in the appliance's own state directory, not
		// with its temporary files.
		if fi, err := os.Stat(filepath.Join(cfg, "state")); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("S3 state directory: %v %v, want mode 0700", fi, err)
		}
		if _, err := os.Stat(filepath.Join(cfg, "state", "s3-bucket-dates.json")); err != nil {
			t.Errorf("bucket dates not kept in the state directory: %v", err)
		}
		// A client that kept the ETag gets 304 from the restarted server.
		s.refused(t, s.awsEnv(), []string{"304", "Not Modified"}, "aws", s.awsArgs("s3api", "get-object", "--bucket", "disk", "--key", snap,
			"--if-none-match", s.etag, filepath.Join(dir, "after-restart.bin"))...)
	})
}

func (s *s3Env) minioClient(t *testing.T) *minio.Client {
	t.Helper()
	c, err := minio.New(s.host(), &minio.Options{Creds: credentials.NewStaticV4(s.access, s.secret, ""), Secure: true,
		Transport: s.a.client.Transport, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (s *s3Env) awsEnv() []string {
	home := filepath.Join(s.dir, "aws-home")
	return append(cleanEnv(home), "AWS_ACCESS_KEY_ID="+s.access, "AWS_SECRET_ACCESS_KEY="+s.secret, "AWS_DEFAULT_REGION=us-east-1",
		"AWS_CA_BUNDLE="+s.caFile, "AWS_CONFIG_FILE="+filepath.Join(home, "none"), "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(home, "none"),
		"AWS_PAGER=", "AWS_EC2_METADATA_DISABLED=true")
}

func (s *s3Env) awsArgs(args ...string) []string {
	return append([]string{"--endpoint-url", s.endpoint, "--output", "json"}, args...)
}

// testAWSCLI uses the aws on PATH: Debian's awscli v2 or a v1 from pip.
func testAWSCLI(t *testing.T, s *s3Env) {
	env := s.awsEnv()
	aws := func(t *testing.T, args ...string) []byte {
		t.Helper()
		return mustTool(t, env, "aws", s.awsArgs(args...)...)
	}
	version, _, _ := tool(t, env, "aws", "--version")
	t.Logf("%s", bytes.TrimSpace(version))
	t.Run("list-buckets", func(t *testing.T) {
		var out struct {
			Buckets []struct{ Name, CreationDate string }
		}
		json.Unmarshal(aws(t, "s3api", "list-buckets"), &out)
		var names []string
		for _, b := range out.Buckets {
			names = append(names, b.Name)
			created, err := time.Parse(time.RFC3339, b.CreationDate)
			if err != nil {
				t.Errorf("bucket %s created %q: %v", b.Name, b.CreationDate, err)
			}
			s.checkCreated(t, b.Name, created)
		}
		if strings.Join(names, " ") != "copy disk fs fs-pe" {
			t.Errorf("buckets: %v", names)
		}
	})
	t.Run("list-objects", func(t *testing.T) {
		if out := aws(t, "s3", "ls", "s3://disk/"); !bytes.Contains(out, []byte(fmt.Sprintf("%d %s\n", len(s.image), s.snap))) {
			t.Errorf("aws s3 ls:\n%s", out)
		}
		var v1 struct {
			Contents []struct {
				Key   string
				Owner struct{ ID string }
			}
		}
		json.Unmarshal(aws(t, "s3api", "list-objects", "--bucket", "disk"), &v1)
		if len(v1.Contents) != 2 || v1.Contents[0].Key != s.snap || v1.Contents[0].Owner.ID == "" {
			t.Errorf("list-objects: %+v", v1)
		}
	})
	t.Run("read-whole", func(t *testing.T) {
		// aws s3 cp reads a large object in parallel ranges.
		path := filepath.Join(s.dir, "aws-whole.bin")
		aws(t, "s3", "cp", "--only-show-errors", "s3://disk/"+s.snap, path)
		got, _ := os.ReadFile(path)
		sameBytes(t, "aws s3 cp", got, s.image)
	})
	t.Run("read-range", func(t *testing.T) {
		path := filepath.Join(s.dir, "aws-range.bin")
		aws(t, "s3api", "get-object", "--bucket", "disk", "--key", s.snap, "--range", fmt.Sprintf("bytes=%d-%d", s.rangeStart, s.rangeEnd), path)
		got, _ := os.ReadFile(path)
		sameBytes(t, "aws s3api get-object --range", got, s.wantRange())
	})
	t.Run("part-number", func(t *testing.T) {
		// The ETag says multipart ("-1"): part 1 is the whole object.
		var head struct {
			PartsCount    int
			ContentRange  string
			ContentLength int64
		}
		json.Unmarshal(aws(t, "s3api", "head-object", "--bucket", "disk", "--key", s.snap, "--part-number", "1"), &head)
		n := int64(len(s.image))
		if head.PartsCount != 1 || head.ContentLength != n || head.ContentRange != fmt.Sprintf("bytes 0-%d/%d", n-1, n) {
			t.Errorf("head-object --part-number 1: %+v, want 1 part of %d bytes", head, n)
		}
		path := filepath.Join(s.dir, "aws-part1.bin")
		aws(t, "s3api", "get-object", "--bucket", "disk", "--key", s.snap, "--part-number", "1", path)
		got, _ := os.ReadFile(path)
		sameBytes(t, "aws s3api get-object --part-number 1", got, s.image)
	})
	t.Run("if-none-match", func(t *testing.T) {
		var head struct{ ETag string }
		json.Unmarshal(aws(t, "s3api", "head-object", "--bucket", "disk", "--key", s.snap), &head)
		if head.ETag != s.etag {
			t.Fatalf("head-object ETag %q, want %q", head.ETag, s.etag)
		}
		path := filepath.Join(s.dir, "aws-304.bin")
		s.refused(t, env, []string{"304", "Not Modified"}, "aws", s.awsArgs("s3api", "get-object", "--bucket", "disk", "--key", s.snap, "--if-none-match", head.ETag, path)...)
		if _, err := os.Stat(path); err == nil {
			t.Error("a 304 wrote the file")
		}
	})
	t.Run("if-match-wrong", func(t *testing.T) {
		s.refused(t, env, []string{"PreconditionFailed"}, "aws", s.awsArgs("s3api", "get-object", "--bucket", "disk", "--key", s.snap,
			"--if-match", `"0123456789abcdef"`, filepath.Join(s.dir, "aws-412.bin"))...)
	})
	t.Run("acl", func(t *testing.T) {
		for _, args := range [][]string{{"get-bucket-acl", "--bucket", "disk"}, {"get-object-acl", "--bucket", "disk", "--key", s.snap}} {
			var acl struct{ Grants []struct{ Permission string } }
			json.Unmarshal(aws(t, append([]string{"s3api"}, args...)...), &acl)
			if len(acl.Grants) != 1 || acl.Grants[0].Permission != "FULL_CONTROL" {
				t.Errorf("%s: %+v", args[0], acl)
			}
		}
		var tags struct{ TagSet []any }
		if out := aws(t, "s3api", "get-object-tagging", "--bucket", "disk", "--key", s.snap); json.Unmarshal(out, &tags) != nil || len(tags.TagSet) != 0 {
			t.Errorf("get-object-tagging: %s", out)
		}
	})
}

// testS3cmd uses Debian's s3cmd, which cannot send conditional headers:
// its way not to read again what it has is sync, which compares the
// listing with the local file.
func testS3cmd(t *testing.T, s *s3Env) {
	conf := filepath.Join(s.dir, "s3cfg")
	os.WriteFile(conf, []byte(fmt.Sprintf(`[default]
access_key = %s
secret_key = %s
host_base = %s
host_bucket = %s
use_https = True
ca_certs_file = %s
check_ssl_certificate = True
signature_v2 = False
bucket_location = us-east-1
`, s.access, s.secret, s.host(), s.host(), s.caFile)), 0o600)
	env := cleanEnv(filepath.Join(s.dir, "s3cmd-home"))
	args := func(a ...string) []string { return append([]string{"-c", conf, "--no-progress"}, a...) }
	s3cmd := func(t *testing.T, a ...string) []byte { t.Helper(); return mustTool(t, env, "s3cmd", args(a...)...) }
	t.Run("list-buckets", func(t *testing.T) {
		out := string(s3cmd(t, "ls"))
		for _, b := range []string{"s3://copy\n", "s3://disk\n", "s3://fs\n", "s3://fs-pe\n"} {
			if !strings.Contains(out, b) {
				t.Errorf("s3cmd ls has no %s:\n%s", b, out)
			}
		}
	})
	t.Run("list-objects", func(t *testing.T) {
		if out := s3cmd(t, "ls", "s3://disk"); !bytes.Contains(out, []byte(fmt.Sprintf("%d  s3://disk/%s\n", len(s.image), s.snap))) {
			t.Errorf("s3cmd ls s3://disk:\n%s", out)
		}
	})
	t.Run("read-whole", func(t *testing.T) {
		path := filepath.Join(s.dir, "s3cmd-whole.bin")
		s3cmd(t, "get", "s3://disk/"+s.snap, path)
		got, _ := os.ReadFile(path)
		sameBytes(t, "s3cmd get", got, s.image)
	})
	t.Run("read-range", func(t *testing.T) {
		// get --continue reads the rest of a partial file with a Range.
		path := filepath.Join(s.dir, "s3cmd-continue.bin")
		os.WriteFile(path, s.image[:s.rangeStart], 0o600)
		before := s.bytesServed(t)
		s3cmd(t, "get", "--continue", "s3://disk/"+s.snap, path)
		got, _ := os.ReadFile(path)
		sameBytes(t, "s3cmd get --continue", got, s.image)
		if n := s.bytesServed(t) - before; n != int64(len(s.image))-s.rangeStart {
			t.Errorf("s3cmd get --continue read %d bytes, want the %d after the partial file", n, int64(len(s.image))-s.rangeStart)
		}
	})
	t.Run("sync-not-read-again", func(t *testing.T) {
		syncDir := filepath.Join(s.dir, "s3cmd-sync") + "/"
		s3cmd(t, "sync", "s3://disk/"+s.snap, syncDir)
		before := s.bytesServed(t)
		s3cmd(t, "sync", "s3://disk/"+s.snap, syncDir)
		if n := s.bytesServed(t) - before; n != 0 {
			t.Errorf("a second sync read %d bytes again", n)
		}
		got, _ := os.ReadFile(filepath.Join(syncDir, s.snap))
		sameBytes(t, "s3cmd sync", got, s.image)
	})
	t.Run("info", func(t *testing.T) {
		bucket := string(s3cmd(t, "info", "s3://disk"))
		object := string(s3cmd(t, "info", "s3://disk/"+s.snap))
		for _, want := range []string{"ACL:       astrolabe: FULL_CONTROL", "Location:  us-east-1"} {
			if !strings.Contains(bucket, want) {
				t.Errorf("s3cmd info s3://disk has no %q:\n%s", want, bucket)
			}
		}
		for _, want := range []string{"ACL:       astrolabe: FULL_CONTROL", fmt.Sprintf("File size: %d", len(s.image)), "MD5 sum:   " + strings.Trim(s.etag, `"`)} {
			if !strings.Contains(object, want) {
				t.Errorf("s3cmd info of the snapshot has no %q:\n%s", want, object)
			}
		}
	})
}

// testMC uses minio's mc with the appliance's certificate in its
// configuration directory.
func testMC(t *testing.T, s *s3Env, mc string) {
	conf := filepath.Join(s.dir, "mc")
	if err := os.MkdirAll(filepath.Join(conf, "certs", "CAs"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(s.caFile)
	os.WriteFile(filepath.Join(conf, "certs", "CAs", "appliance.pem"), ca, 0o600)
	env := cleanEnv(filepath.Join(s.dir, "mc-home"))
	args := func(a ...string) []string {
		return append([]string{"--config-dir", conf, "--quiet", "--no-color", "--disable-pager"}, a...)
	}
	run := func(t *testing.T, a ...string) []byte { t.Helper(); return mustTool(t, env, mc, args(a...)...) }
	run(t, "alias", "set", "ap", s.endpoint, s.access, s.secret, "--api", "S3v4", "--path", "on")
	obj := "ap/disk/" + s.snap
	t.Run("list-buckets", func(t *testing.T) {
		out := string(run(t, "ls", "ap"))
		for _, b := range []string{" copy/\n", " disk/\n", " fs-pe/\n"} {
			if !strings.Contains(out, b) {
				t.Errorf("mc ls has no %s:\n%s", b, out)
			}
		}
	})
	t.Run("list-objects", func(t *testing.T) {
		var keys []string
		for _, line := range strings.Split(strings.TrimSpace(string(run(t, "ls", "--json", "ap/disk"))), "\n") {
			var o struct {
				Key  string
				Size int64
			}
			json.Unmarshal([]byte(line), &o)
			keys = append(keys, fmt.Sprintf("%s %d", o.Key, o.Size))
		}
		if len(keys) != 2 || keys[0] != fmt.Sprintf("%s %d", s.snap, len(s.image)) {
			t.Errorf("mc ls ap/disk: %v", keys)
		}
	})
	t.Run("read-whole", func(t *testing.T) {
		sameBytes(t, "mc cat", run(t, "cat", obj), s.image)
	})
	t.Run("read-range", func(t *testing.T) {
		sameBytes(t, "mc cat --offset", run(t, "cat", "--offset", strconv.FormatInt(s.rangeStart, 10), obj), s.image[s.rangeStart:])
		sameBytes(t, "mc cat --tail", run(t, "cat", "--tail", "1000", obj), s.image[len(s.image)-1000:])
	})
	t.Run("if-none-match", func(t *testing.T) {
		var st struct{ ETag string }
		if err := json.Unmarshal(run(t, "stat", "--json", "--no-list", obj), &st); err != nil || `"`+st.ETag+`"` != s.etag {
			t.Fatalf("mc stat ETag %q, want %s (%v)", st.ETag, s.etag, err)
		}
		s.refused(t, env, []string{"304 Not Modified"}, mc, args("cat", "-H", "If-None-Match: "+s.etag, obj)...)
		path := filepath.Join(s.dir, "mc-304.bin")
		s.refused(t, env, []string{"304 Not Modified"}, mc, args("get", "-H", "If-None-Match: "+s.etag, obj, path)...)
		if _, err := os.Stat(path); err == nil {
			t.Error("a 304 wrote the file")
		}
	})
	t.Run("if-match-wrong", func(t *testing.T) {
		s.refused(t, env, []string{"pre-conditions"}, mc, args("cat", "-H", `If-Match: "0123456789abcdef"`, obj)...)
		sameBytes(t, "mc cat with If-Match of its ETag", run(t, "cat", "-H", "If-Match: "+s.etag, obj), s.image)
	})
}

func testMinioGo(t *testing.T, s *s3Env) {
	ctx := context.Background()
	c := s.minioClient(t)
	t.Run("list-buckets", func(t *testing.T) {
		buckets, err := c.ListBuckets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, b := range buckets {
			names = append(names, b.Name)
			s.checkCreated(t, b.Name, b.CreationDate)
		}
		if strings.Join(names, " ") != "copy disk fs fs-pe" {
			t.Errorf("buckets: %v", names)
		}
	})
	t.Run("list-objects", func(t *testing.T) {
		var keys []string
		for o := range c.ListObjects(ctx, "disk", minio.ListObjectsOptions{WithMetadata: false, Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			keys = append(keys, o.Key)
			if o.Key == s.snap && (o.Size != int64(len(s.image)) || `"`+o.ETag+`"` != s.etag) {
				t.Errorf("listed %s: %d bytes, ETag %s", o.Key, o.Size, o.ETag)
			}
		}
		if len(keys) != 2 {
			t.Errorf("keys: %v", keys)
		}
	})
	get := func(t *testing.T, opts minio.GetObjectOptions) ([]byte, error) {
		obj, err := c.GetObject(ctx, "disk", s.snap, opts)
		if err != nil {
			return nil, err
		}
		defer obj.Close()
		return io.ReadAll(obj)
	}
	t.Run("read-whole", func(t *testing.T) {
		got, err := get(t, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, "GetObject", got, s.image)
	})
	t.Run("read-range", func(t *testing.T) {
		opts := minio.GetObjectOptions{}
		opts.SetRange(s.rangeStart, s.rangeEnd)
		got, err := get(t, opts)
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, "GetObject with a range", got, s.wantRange())
	})
	checkStatus := func(t *testing.T, err error, status int) {
		t.Helper()
		var resp minio.ErrorResponse
		if !errors.As(err, &resp) || resp.StatusCode != status {
			t.Errorf("want status %d, got %v", status, err)
		}
	}
	t.Run("if-none-match", func(t *testing.T) {
		before := s.bytesServed(t)
		opts := minio.GetObjectOptions{}
		opts.SetMatchETagExcept(strings.Trim(s.etag, `"`))
		got, err := get(t, opts)
		checkStatus(t, err, 304)
		if n := s.bytesServed(t) - before; n != 0 || len(got) != 0 {
			t.Errorf("304 sent %d bytes", n)
		}
		stOpts := minio.StatObjectOptions{}
		stOpts.SetModified(time.Now().Add(time.Hour))
		_, err = c.StatObject(ctx, "disk", s.snap, stOpts)
		checkStatus(t, err, 304)
	})
	t.Run("if-match-wrong", func(t *testing.T) {
		opts := minio.GetObjectOptions{}
		opts.SetMatchETag("0123456789abcdef")
		_, err := get(t, opts)
		checkStatus(t, err, 412)
		opts = minio.GetObjectOptions{}
		opts.SetMatchETag(strings.Trim(s.etag, `"`))
		opts.SetRange(s.rangeStart, s.rangeEnd)
		got, err := get(t, opts)
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, "GetObject with If-Match of its ETag and a range", got, s.wantRange())
	})
	t.Run("acl", func(t *testing.T) {
		acl, err := c.GetObjectACL(ctx, "disk", s.snap)
		if err != nil || len(acl.Grant) != 1 || acl.Grant[0].Permission != "FULL_CONTROL" {
			t.Errorf("GetObjectACL: %+v %v", acl, err)
		}
		tags, err := c.GetObjectTagging(ctx, "disk", s.snap, minio.GetObjectTaggingOptions{})
		if err != nil || len(tags.ToMap()) != 0 {
			t.Errorf("GetObjectTagging: %v %v", tags, err)
		}
	})
}

// testRcloneClient uses Debian's rclone; conditional reads go through
// its --header-download.
func testRcloneClient(t *testing.T, s *s3Env) {
	env := append(cleanEnv(filepath.Join(s.dir, "rclone-home")), "RCLONE_CONFIG=/dev/null",
		"RCLONE_CONFIG_AP_TYPE=s3", "RCLONE_CONFIG_AP_PROVIDER=Other",
		"RCLONE_CONFIG_AP_ACCESS_KEY_ID="+s.access, "RCLONE_CONFIG_AP_SECRET_ACCESS_KEY="+s.secret,
		"RCLONE_CONFIG_AP_ENDPOINT="+s.endpoint, "RCLONE_CONFIG_AP_FORCE_PATH_STYLE=true")
	args := func(a ...string) []string { return append([]string{"--ca-cert", s.caFile}, a...) }
	rclone := func(t *testing.T, a ...string) []byte { t.Helper(); return mustTool(t, env, "rclone", args(a...)...) }
	obj := "ap:disk/" + s.snap
	t.Run("list-buckets", func(t *testing.T) {
		var dirs []struct{ Name, ModTime string }
		json.Unmarshal(rclone(t, "lsjson", "ap:"), &dirs)
		var names []string
		for _, d := range dirs {
			names = append(names, d.Name)
		}
		if strings.Join(names, " ") != "copy disk fs fs-pe" {
			t.Errorf("rclone lsjson ap: %v", dirs)
		}
	})
	t.Run("list-objects", func(t *testing.T) {
		if out := rclone(t, "ls", "ap:disk"); !bytes.Contains(out, []byte(fmt.Sprintf("%d %s\n", len(s.image), s.snap))) {
			t.Errorf("rclone ls:\n%s", out)
		}
	})
	t.Run("read-whole", func(t *testing.T) {
		sameBytes(t, "rclone cat", rclone(t, "cat", obj), s.image)
	})
	t.Run("read-range", func(t *testing.T) {
		got := rclone(t, "cat", "--offset", strconv.FormatInt(s.rangeStart, 10), "--count", strconv.FormatInt(s.rangeEnd-s.rangeStart+1, 10), obj)
		sameBytes(t, "rclone cat --offset --count", got, s.wantRange())
	})
	t.Run("if-none-match", func(t *testing.T) {
		s.refused(t, env, []string{"304", "NotModified"}, "rclone", args("cat", "--header-download", "If-None-Match: "+s.etag, obj)...)
	})
	t.Run("if-match-wrong", func(t *testing.T) {
		s.refused(t, env, []string{"412", "PreconditionFailed"}, "rclone", args("cat", "--header-download", `If-Match: "0123456789abcdef"`, obj)...)
	})
}
