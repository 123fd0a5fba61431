package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// uploadDataSize is the incompressible data of the zip the clients upload:
// past every client's multipart threshold (rclone's is 200 MiB).
const uploadDataSize = 200 << 20

// TestS3UploadClients uploads one 200 MiB zip of a disk snapshot into the
// copy bucket of a running 'astrolabe serve' with each S3 client people
// use, at its default settings (all of them upload it in parts, several
// at a time), and compares each restored disk with the source byte for
// byte.
func TestS3UploadClients(t *testing.T) {
	mc := needS3Clients(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	source := filepath.Join(cfg, "disk", "big.img")
	uploadWriteRandom(t, source, uploadDataSize)
	snap := mustRun(t, cfg, "snap", "disk:big.img").lastLine()
	zipPath := filepath.Join(dir, "big.zip")
	mustRun(t, cfg, "cp", snap, zipPath)
	a := startServe(t, cfg)
	up := &s3Uploader{a: a, cfg: cfg, dir: dir, zip: zipPath, mc: mc}
	up.keys()
	for _, v := range [][]string{{"aws", "--version"}, {"s3cmd", "--version"}, {mc, "--version"}, {"rclone", "version"}} {
		out, _ := exec.Command(v[0], v[1:]...).CombinedOutput()
		t.Logf("%s", strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	}

	for _, c := range []struct {
		name   string
		upload func(t *testing.T, key string)
	}{
		{"awscli", up.awscli},
		{"s3cmd", up.s3cmd},
		{"mc", up.minioMC},
		{"minio-go", up.minioGo},
		{"rclone", up.rclone},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := c.name + ".zip"
			start := time.Now()
			c.upload(t, key)
			uploaded := time.Since(start)
			restored := up.restored(t, key)
			uploadSameFile(t, filepath.Join(cfg, "disk", strings.TrimPrefix(restored, "disk:")), source)
			parts := up.parts(t, key)
			t.Logf("%s: uploaded in %d parts in %v, restored as %s in %v", c.name, parts, uploaded.Round(time.Millisecond), restored, time.Since(start).Round(time.Millisecond))
			// Room for the next client's restore.
			os.Remove(filepath.Join(cfg, "disk", strings.TrimPrefix(restored, "disk:")))
		})
	}
	// A multipart upload of what is no PE zip is refused with the reason,
	// which the client shows, not retried as a 500 would be.
	t.Run("refused", func(t *testing.T) {
		junk := filepath.Join(dir, "junk.zip")
		uploadWriteRandom(t, junk, 12<<20)
		out, err := up.awscliCmd(t, junk, "junk.zip").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "InvalidArgument") || !strings.Contains(string(out), "not a PE zip") {
			t.Errorf("aws s3 cp of a junk zip: %v\n%s", err, out)
		}
	})
	// No upload is left behind, and no part.
	if entries, _ := os.ReadDir(filepath.Join(cfg, "tmp", "astrolabe-s3-uploads")); len(entries) != 0 {
		t.Errorf("left in the uploads directory: %v", entries)
	}
	a.stop()
}

// uploadWriteRandom writes size bytes that do not compress.
func uploadWriteRandom(t *testing.T, path string, size int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rnd := rand.NewChaCha8([32]byte{13})
	buf := make([]byte, 1<<20)
	for range size / len(buf) {
		rnd.Read(buf)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
}

// uploadSameFile compares two files byte for byte.
func uploadSameFile(t *testing.T, got, want string) {
	t.Helper()
	g, err := os.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	w, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	gb, wb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(gb)) {
		n, gerr := io.ReadFull(g, gb)
		m, werr := io.ReadFull(w, wb)
		if n != m || !bytes.Equal(gb[:n], wb[:m]) {
			t.Fatalf("%s differs from %s in the MiB at %d", got, want, off)
		}
		if gerr != nil || werr != nil {
			if gerr != werr {
				t.Fatalf("%s and %s: %v, %v", got, want, gerr, werr)
			}
			return
		}
	}
}

// s3Uploader runs the clients against the appliance's S3 data path.
type s3Uploader struct {
	a                    *appliance
	cfg, dir, zip, mc    string
	access, secret, host string // host: 127.0.0.1:port
}

func (u *s3Uploader) keys() {
	keys := map[string]string{}
	b, err := os.ReadFile(filepath.Join(u.cfg, "s3-credentials.json"))
	if err != nil || json.Unmarshal(b, &keys) != nil {
		u.a.t.Fatalf("S3 credentials: %v", err)
	}
	u.access, u.secret = keys["accessKey"], keys["secretKey"]
	u.host = strings.TrimPrefix(u.a.info["s3"], "https://")
}

func (u *s3Uploader) ca() string { return filepath.Join(u.cfg, "tls", "cert.pem") }

// command is a client's command, with env added to an environment
// without the caller's AWS_ and RCLONE_ settings, killed after 5 minutes.
func (u *s3Uploader) command(t *testing.T, env []string, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, name, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_") && !strings.HasPrefix(e, "RCLONE_") {
			env = append(env, e)
		}
	}
	cmd.Env = env
	return cmd
}

// run runs a client's command and returns its output; a failure fails
// the test.
func (u *s3Uploader) run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := u.command(t, env, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func (u *s3Uploader) awscli(t *testing.T, key string) {
	if out, err := u.awscliCmd(t, u.zip, key).CombinedOutput(); err != nil {
		t.Fatalf("aws s3 cp: %v\n%s", err, out)
	}
}

func (u *s3Uploader) awscliCmd(t *testing.T, file, key string) *exec.Cmd {
	env := []string{"AWS_ACCESS_KEY_ID=" + u.access, "AWS_SECRET_ACCESS_KEY=" + u.secret, "AWS_DEFAULT_REGION=us-east-1",
		"AWS_CA_BUNDLE=" + u.ca(), "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
	return u.command(t, env, "aws", "--endpoint-url", "https://"+u.host, "s3", "cp", "--no-progress", file, "s3://copy/"+key)
}

func (u *s3Uploader) s3cmd(t *testing.T, key string) {
	conf := filepath.Join(t.TempDir(), "s3cfg")
	err := os.WriteFile(conf, []byte(fmt.Sprintf("[default]\naccess_key = %s\nsecret_key = %s\nhost_base = %s\nhost_bucket = %s\nuse_https = True\nca_certs_file = %s\n",
		u.access, u.secret, u.host, u.host, u.ca())), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	u.run(t, nil, "s3cmd", "-c", conf, "--no-progress", "put", u.zip, "s3://copy/"+key)
}

func (u *s3Uploader) minioMC(t *testing.T, key string) {
	conf := t.TempDir()
	if err := os.MkdirAll(filepath.Join(conf, "certs", "CAs"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(u.ca())
	if err := os.WriteFile(filepath.Join(conf, "certs", "CAs", "appliance.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	u.run(t, nil, u.mc, "--config-dir", conf, "alias", "set", "ap", "https://"+u.host, u.access, u.secret, "--api", "S3v4", "--path", "on")
	u.run(t, nil, u.mc, "--config-dir", conf, "--quiet", "cp", u.zip, "ap/copy/"+key)
}

func (u *s3Uploader) minioClient(t *testing.T) *minio.Client {
	t.Helper()
	c, err := minio.New(u.host, &minio.Options{
		Creds: credentials.NewStaticV4(u.access, u.secret, ""), Secure: true,
		Transport: u.a.client.Transport, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// parts checks that the copy bucket lists the upload of key with the ETag
// of a multipart upload, "<md5 of the parts' md5s>-<parts>", and returns
// the number of parts.
func (u *s3Uploader) parts(t *testing.T, key string) int {
	t.Helper()
	st, err := u.minioClient(t).StatObject(context.Background(), "copy", key, minio.StatObjectOptions{})
	if err != nil {
		t.Fatalf("HEAD copy/%s: %v", key, err)
	}
	var sum string
	var n int
	if _, err := fmt.Sscanf(strings.Replace(st.ETag, "-", " ", 1), "%32s %d", &sum, &n); err != nil || n < 2 {
		t.Errorf("HEAD copy/%s: ETag %q is not a multipart upload's", key, st.ETag)
	}
	return n
}

func (u *s3Uploader) minioGo(t *testing.T, key string) {
	c := u.minioClient(t)
	f, err := os.Open(u.zip)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if _, err := c.PutObject(context.Background(), "copy", key, f, st.Size(), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("minio-go PutObject: %v", err)
	}
}

func (u *s3Uploader) rclone(t *testing.T, key string) {
	env := []string{
		"RCLONE_CONFIG=/dev/null",
		"RCLONE_CONFIG_AP_TYPE=s3", "RCLONE_CONFIG_AP_PROVIDER=Other",
		"RCLONE_CONFIG_AP_ACCESS_KEY_ID=" + u.access, "RCLONE_CONFIG_AP_SECRET_ACCESS_KEY=" + u.secret,
		"RCLONE_CONFIG_AP_ENDPOINT=https://" + u.host, "RCLONE_CONFIG_AP_FORCE_PATH_STYLE=true",
	}
	u.run(t, env, "rclone", "--ca-cert", u.ca(), "copyto", u.zip, "ap:copy/"+key)
}

// restored waits for the task that restores the upload of key, through
// the REST API's tasks, and returns the PE it restored.
func (u *s3Uploader) restored(t *testing.T, key string) string {
	t.Helper()
	token := u.a.info["token"]
	_, body := u.a.call("GET", "/v1/astrolabe/tasks", token, "")
	var ids []string
	if err := json.Unmarshal([]byte(body), &ids); err != nil {
		t.Fatalf("tasks: %s", body)
	}
	var found []string
	for _, id := range ids {
		_, body := u.a.call("GET", "/v1/astrolabe/tasks/"+id, token, "")
		if strings.Contains(body, " uploaded to s3 copy/"+key) {
			found = append(found, id)
		}
	}
	if len(found) != 1 {
		t.Fatalf("tasks restoring %s: %v, want one", key, found)
	}
	var ti map[string]any
	for range 3000 { // 5 minutes: the restore of 200 MiB on a busy machine
		_, body := u.a.call("GET", "/v1/astrolabe/tasks/"+found[0], token, "")
		ti = map[string]any{}
		json.Unmarshal([]byte(body), &ti)
		if ti["completed"] == true {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res, _ := ti["result"].(map[string]any)
	id, _ := res["id"].(string)
	if ti["status"] != "success" || !strings.Contains(id, ":") {
		t.Fatalf("restore task of %s: %v", key, ti)
	}
	return id
}
