package backend

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// writeFile writes a test's file, or fails it.
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestS3ProfileWithoutKeys: a profile without keys of its own (one that
// assumes a role, or a [default] with only a region) is an error naming
// the profile and the file, not anonymous requests denied later.
func TestS3ProfileWithoutKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "credentials")
	writeFile(t, file, "[nokeys]\nregion = us-east-1\n"+
		"[rolebased]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = base\n"+
		"[base]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
	if _, err := (S3Config{Profile: "base", CredentialsFile: file}).credentials(ctx); err != nil {
		t.Fatalf("a profile with keys: %v", err)
	}
	for _, p := range []string{"nokeys", "rolebased"} {
		_, err := S3Config{Profile: p, CredentialsFile: file}.credentials(ctx)
		t.Logf("%s: %v", p, err)
		if err == nil || !strings.Contains(err.Error(), `profile "`+p+`" in `+file+" has no aws_access_key_id") || !strings.Contains(err.Error(), "role_arn") {
			t.Errorf("profile %s, without keys: %v", p, err)
		}
	}

	// No keys anywhere: the AWS config file's [default] has a region only.
	home := t.TempDir()
	if err := os.Mkdir(filepath.Join(home, ".aws"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(home, ".aws", "config"), "[default]\nregion = eu-west-1\n")
	t.Setenv("HOME", home)
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	_, err := S3Config{}.credentials(ctx)
	t.Logf("no keys, a config file with a region: %v", err)
	if err == nil || !strings.Contains(err.Error(), `profile "default"`) || !strings.Contains(err.Error(), filepath.Join(home, ".aws", "config")) {
		t.Errorf("no keys, a config file with a region only: %v", err)
	}
}

// TestS3CredentialsFileUnparsed: a credentials file that cannot be
// parsed is told by its name and line, never with its text: the line
// may hold the secret key (a typo, "=" left out).
func TestS3CredentialsFileUnparsed(t *testing.T) {
	ctx := context.Background()
	const secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	bad := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, bad, "[site2]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key "+secret+"\n")
	_, err := S3Config{Profile: "site2", CredentialsFile: bad}.credentials(ctx)
	t.Logf("malformed file: %v", err)
	if err == nil || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "wJalr") {
		t.Fatalf("malformed credentials file: %v; want an error without the secret", err)
	}
	if !strings.Contains(err.Error(), "cannot parse "+bad+", line 3") {
		t.Errorf("malformed credentials file: %v; want its name and line", err)
	}
	// Through the default files too.
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", bad)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	_, err = S3Config{}.credentials(ctx)
	t.Logf("malformed default file: %v", err)
	if err == nil || strings.Contains(err.Error(), "wJalr") || !strings.Contains(err.Error(), "cannot parse "+bad) {
		t.Errorf("malformed default credentials file: %v", err)
	}
	// A profile missing is still told as such.
	good := filepath.Join(t.TempDir(), "credentials")
	writeFile(t, good, "[site1]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
	_, err = S3Config{Profile: "site3", CredentialsFile: good}.credentials(ctx)
	t.Logf("missing profile: %v", err)
	if err == nil || !strings.Contains(err.Error(), `"site3" does not exist`) {
		t.Errorf("missing profile: %v", err)
	}
}

// A server that accepts a request and never answers fails the call, after
// the retries, rather than holding a backup or a job for ever.
func TestS3HungServerTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	cfg := S3Config{Endpoint: ln.Addr().String(), Bucket: "bkt", AccessKey: "k", SecretKey: "s", Insecure: true,
		ResponseTimeout: 100 * time.Millisecond}
	// Bounded: without the timeout the call would never return.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err = NewS3(ctx, cfg)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "timeout awaiting response headers") {
		t.Fatalf("NewS3 on a hung server: %v (context: %v)", err, ctx.Err())
	}
}

// s3:// (TLS) given for a plain HTTP server says to use s3+http://, at
// once: no retry mends a wrong URL.
func TestS3PlainHTTPServerHint(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusForbidden)
	}))
	defer srv.Close()
	cfg := S3Config{Endpoint: strings.TrimPrefix(srv.URL, "http://"), Bucket: "bkt", AccessKey: "k", SecretKey: "s"}
	_, err := NewS3(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "give its URL as s3+http://") || strings.Contains(err.Error(), "attempts") {
		t.Fatalf("NewS3 with TLS on a plain HTTP server: %v", err)
	}
}

// A bucket name S3 refuses is told by ParseS3URL, once, not after six
// attempts of every call.
func TestParseS3URLBucketName(t *testing.T) {
	for _, u := range []string{"s3+http://127.0.0.1:9000/b", "s3://127.0.0.1:9000/-bucket/p", "s3://host.example/a..b"} {
		if _, err := ParseS3URL(u); err == nil || !strings.Contains(err.Error(), "bucket") {
			t.Errorf("ParseS3URL(%q): %v, want the bucket name refused", u, err)
		}
	}
	if cfg, err := ParseS3URL("s3+http://127.0.0.1:9000/my-bucket/a/b"); err != nil || cfg.Bucket != "my-bucket" || cfg.Prefix != "a/b" {
		t.Errorf("a good URL: %+v %v", cfg, err)
	}
}
