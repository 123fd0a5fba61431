package backend

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"gopkg.in/ini.v1"
)

// S3Config locates a repository in an S3 bucket.
type S3Config struct {
	Endpoint  string // host:port
	Bucket    string
	Prefix    string // object names are Prefix/name
	Region    string
	AccessKey string
	SecretKey string
	// Profile names a profile of the AWS shared credentials (or config)
	// file whose keys are used instead of AccessKey and SecretKey: how
	// two repositories, at two sites, are reached with different keys.
	Profile string
	// CredentialsFile is the file Profile is read from; empty for AWS's
	// defaults: AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, and
	// AWS_CONFIG_FILE or ~/.aws/config.
	CredentialsFile string
	Insecure        bool // plain HTTP
	CAFile          string
	// ResponseTimeout bounds the wait for a response's headers once a
	// request is sent (DefaultResponseTimeout if zero): a server that
	// hangs fails the call, retried, rather than holding a backup or a
	// job for ever.
	ResponseTimeout time.Duration
}

// DefaultResponseTimeout is S3Config.ResponseTimeout's default: generous
// for a server storing a pack it was just sent, short enough that a hung
// one is noticed.
const DefaultResponseTimeout = time.Minute

// ParseS3URL reads s3://[host:port/]bucket/prefix (TLS) or
// s3+http://host:port/bucket/prefix (plain HTTP, for test servers); keys
// and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_REGION, a CA bundle from AWS_CA_BUNDLE. Without keys there, or
// with a Profile set afterwards, NewS3 takes them from the AWS shared
// credentials file, as the AWS tools do.
func ParseS3URL(s string) (S3Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		return S3Config{}, fmt.Errorf("repository URL %q: %w", s, err)
	}
	cfg := S3Config{
		AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
		Region: os.Getenv("AWS_REGION"), CAFile: os.Getenv("AWS_CA_BUNDLE"),
	}
	switch u.Scheme {
	case "s3":
	case "s3+http":
		cfg.Insecure = true
	default:
		return S3Config{}, fmt.Errorf("repository URL %q: want s3:// or s3+http://", s)
	}
	parts := strings.Split(strings.Trim(u.Host+u.Path, "/"), "/")
	// A first part with a port or a dot is an endpoint, else a bucket on AWS.
	if strings.ContainsAny(parts[0], ":.") {
		cfg.Endpoint, parts = parts[0], parts[1:]
	} else {
		cfg.Endpoint = "s3.amazonaws.com"
	}
	if len(parts) == 0 || parts[0] == "" {
		return S3Config{}, fmt.Errorf("repository URL %q: no bucket", s)
	}
	cfg.Bucket, cfg.Prefix = parts[0], strings.Join(parts[1:], "/")
	// Told now, once: minio-go checks it before each call, and such an
	// error is not a server's that a retry might mend.
	if err := s3utils.CheckValidBucketName(cfg.Bucket); err != nil {
		return S3Config{}, fmt.Errorf("repository URL %q: bucket %q: %w", s, cfg.Bucket, err)
	}
	return cfg, nil
}

// credentials resolves the keys, in the AWS tools' order: a profile
// named for this repository, else the keys of the environment, else the
// profile AWS_PROFILE names (or "default") in the shared files. They are
// read now, so that a missing profile or file, or a profile without
// keys, is told at once, by name.
func (cfg S3Config) credentials(ctx context.Context) (*credentials.Credentials, error) {
	if cfg.Profile == "" && cfg.CredentialsFile == "" && cfg.AccessKey != "" && cfg.SecretKey != "" {
		return credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""), nil
	}
	files := []string{cfg.CredentialsFile}
	where := cfg.CredentialsFile
	if where == "" {
		files = defaultAWSFiles()
		where = strings.Join(files, " and ")
	}
	profile := cfg.Profile
	if profile == "" {
		profile = cmp.Or(os.Getenv("AWS_PROFILE"), "default")
	}
	creds := credentials.NewFileAWSCredentials(cfg.CredentialsFile, cfg.Profile)
	v, err := creds.GetWithContext(&credentials.CredContext{Client: http.DefaultClient, Context: ctx})
	if err != nil {
		err = credentialsFileError(err, files)
		if cfg.Profile == "" {
			return nil, fmt.Errorf("S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile of the AWS shared credentials file (profile %q of %s: %w)", profile, where, err)
		}
		return nil, fmt.Errorf("S3 keys: profile %q in %s: %w", profile, where, err)
	}
	// A profile without keys reads as anonymous: every request would
	// then be denied, far from the cause.
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("S3 keys: profile %q in %s has no aws_access_key_id and aws_secret_access_key (profiles that assume a role, with role_arn, are not supported)", profile, where)
	}
	return creds, nil
}

// defaultAWSFiles is where the AWS tools read profiles from.
func defaultAWSFiles() []string {
	home, _ := os.UserHomeDir()
	return []string{
		cmp.Or(os.Getenv("AWS_SHARED_CREDENTIALS_FILE"), filepath.Join(home, ".aws", "credentials")),
		cmp.Or(os.Getenv("AWS_CONFIG_FILE"), filepath.Join(home, ".aws", "config")),
	}
}

// credentialsFileError is an error reading keys from the shared files,
// told without their text: a parse error quotes the line it stopped at,
// and that line may hold a secret key. Only errors known to hold no
// value are passed on as they are.
func credentialsFileError(err error, files []string) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return err
	}
	for _, f := range files {
		if _, perr := ini.Load(f); perr != nil && !errors.Is(perr, fs.ErrNotExist) {
			return fmt.Errorf("cannot parse %s%s", f, parseErrorLine(f, perr))
		}
	}
	msg := err.Error()
	// minio-go's own words about a profile (partial keys, SSO), and the
	// INI package's for a profile missing.
	if strings.HasPrefix(msg, "profile has ") || strings.HasPrefix(msg, "section ") && strings.HasSuffix(msg, " does not exist") {
		return err
	}
	return errors.New("the profile's keys cannot be read (its credential_process or SSO login failed)")
}

// parseErrorLine is ", line N" for the line of file an INI parse error
// quotes, if it can be found.
func parseErrorLine(file string, err error) string {
	var delim ini.ErrDelimiterNotFound
	if !errors.As(err, &delim) {
		return ""
	}
	b, rerr := os.ReadFile(file)
	if rerr != nil {
		return ""
	}
	for i, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == strings.TrimSpace(delim.Line) {
			return fmt.Sprintf(", line %d (a key without '=')", i+1)
		}
	}
	return ""
}

// S3 is a repository in an S3 bucket, through minio-go.
type S3 struct {
	c   *minio.Client
	cfg S3Config
}

// NewS3 connects to the bucket, which must exist (it is created if the
// server lets us).
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 16
	tr.ResponseHeaderTimeout = cfg.ResponseTimeout
	if tr.ResponseHeaderTimeout == 0 {
		tr.ResponseHeaderTimeout = DefaultResponseTimeout
	}
	if cfg.CAFile != "" && !cfg.Insecure {
		pemBytes, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("S3 CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemBytes)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	creds, err := cfg.credentials(ctx)
	if err != nil {
		return nil, err
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds: creds, Secure: !cfg.Insecure,
		Region: cfg.Region, BucketLookup: minio.BucketLookupPath, Transport: tr,
		// Retries are ours (retry), with one policy for every call.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("S3 %s: %w", cfg.Endpoint, err)
	}
	s := &S3{c: c, cfg: cfg}
	err = retry(ctx, func() error {
		ok, err := c.BucketExists(ctx, cfg.Bucket)
		if err != nil || ok {
			return err
		}
		return c.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
	})
	if err != nil {
		if httpsToHTTP(err) {
			return nil, fmt.Errorf("S3 bucket %s at %s: %w (a plain HTTP server: give its URL as s3+http://)", cfg.Bucket, cfg.Endpoint, err)
		}
		return nil, fmt.Errorf("S3 bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	return s, nil
}

// Location implements Backend.
func (s *S3) Location() string {
	scheme := "s3"
	if s.cfg.Insecure {
		scheme = "s3+http" // as it must be given again
	}
	return fmt.Sprintf("%s://%s/%s/%s", scheme, s.cfg.Endpoint, s.cfg.Bucket, s.cfg.Prefix)
}

func (s *S3) key(name string) string {
	if s.cfg.Prefix == "" {
		return name
	}
	return s.cfg.Prefix + "/" + name
}

// retry runs op with backoff while it fails with what may be a passing
// network or server problem.
func retry(ctx context.Context, op func() error) error {
	delay := 200 * time.Millisecond
	var err error
	for attempt := range 6 {
		if err = op(); err == nil || !transient(err) {
			return err
		}
		if attempt == 5 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
	return fmt.Errorf("after 6 attempts: %w", err)
}

func transient(err error) bool {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		return resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.Code == "RequestTimeout"
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, ErrNotExist) && !httpsToHTTP(err)
}

// httpsToHTTP tells net/http's error for a TLS request answered in plain
// HTTP: a wrong URL, which no retry mends.
func httpsToHTTP(err error) bool {
	return strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
}

func notFound(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && (resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound)
}

// s3Forbidden reports whether err is an S3 server's refusal (403).
func s3Forbidden(err error) bool {
	var resp minio.ErrorResponse
	return errors.As(err, &resp) && (resp.StatusCode == http.StatusForbidden || resp.Code == "AccessDenied")
}

// Save implements Backend. r must be an io.ReadSeeker to be retried; other
// readers are tried once.
func (s *S3) Save(ctx context.Context, name string, r io.Reader, size int64) error {
	rs, seekable := r.(io.ReadSeeker)
	op := func() error {
		if seekable {
			if _, err := rs.Seek(0, io.SeekStart); err != nil {
				return err
			}
		}
		_, err := s.c.PutObject(ctx, s.cfg.Bucket, s.key(name), r, size, minio.PutObjectOptions{
			ContentType: "application/octet-stream", DisableMultipart: size < 64<<20,
		})
		return err
	}
	if !seekable {
		return op()
	}
	return retry(ctx, op)
}

// Load implements Backend.
func (s *S3) Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	var out io.ReadCloser
	err := retry(ctx, func() error {
		opts := minio.GetObjectOptions{}
		if length >= 0 {
			if err := opts.SetRange(off, off+length-1); err != nil {
				return err
			}
		} else if off > 0 {
			if err := opts.SetRange(off, 0); err != nil {
				return err
			}
		}
		obj, err := s.c.GetObject(ctx, s.cfg.Bucket, s.key(name), opts)
		if err != nil {
			return err
		}
		// GetObject is lazy: Stat makes the request, so errors show here.
		if _, err := obj.Stat(); err != nil {
			obj.Close()
			if notFound(err) {
				return fmt.Errorf("%s: %w", name, ErrNotExist)
			}
			return err
		}
		out = obj
		return nil
	})
	return out, err
}

// Stat implements Backend.
func (s *S3) Stat(ctx context.Context, name string) (int64, error) {
	var size int64
	err := retry(ctx, func() error {
		info, err := s.c.StatObject(ctx, s.cfg.Bucket, s.key(name), minio.StatObjectOptions{})
		if notFound(err) {
			return fmt.Errorf("%s: %w", name, ErrNotExist)
		}
		size = info.Size
		return err
	})
	return size, err
}

// ModTime implements Backend.
func (s *S3) ModTime(ctx context.Context, name string) (time.Time, error) {
	var t time.Time
	err := retry(ctx, func() error {
		info, err := s.c.StatObject(ctx, s.cfg.Bucket, s.key(name), minio.StatObjectOptions{})
		if notFound(err) {
			return fmt.Errorf("%s: %w", name, ErrNotExist)
		}
		t = info.LastModified
		return err
	})
	return t, err
}

// List implements Backend.
func (s *S3) List(ctx context.Context, prefix string, fn func(string, int64) error) error {
	strip := ""
	if s.cfg.Prefix != "" {
		strip = s.cfg.Prefix + "/"
	}
	for o := range s.c.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}) {
		if o.Err != nil {
			return o.Err
		}
		if err := fn(strings.TrimPrefix(o.Key, strip), o.Size); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements Backend.
func (s *S3) Remove(ctx context.Context, name string) error {
	return retry(ctx, func() error {
		return s.c.RemoveObject(ctx, s.cfg.Bucket, s.key(name), minio.RemoveObjectOptions{})
	})
}
