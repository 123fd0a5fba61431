package main

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Attacks on the daemon's HTTP side, mounts and data paths against a
// running 'astrolabe serve' (issue 22).

// sharedDir is a directory every local user can reach (t.TempDir is
// 0700), for what other users must be shown or refused by the mount's
// own modes.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "astrolabe-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// secNoPaths fails when an answer shows where things are on the server.
func secNoPaths(t *testing.T, cfg, what, body string) {
	t.Helper()
	for _, p := range []string{cfg, "/tmp/", os.TempDir() + "/"} {
		if strings.Contains(body, p) {
			t.Errorf("%s shows the server path %s: %s", what, p, body)
		}
	}
}

func secSnapDir(mnt, snap string) string {
	parts := strings.SplitN(snap, ":", 3)
	return filepath.Join(mnt, parts[0], parts[0]+":"+parts[1], "snapshots", parts[2])
}

// API mounts only go under the mount root, into empty directories unless
// forced; with allowOther, other users read only what the PE lets them;
// a deleted snapshot's files are ENOENT.
func TestSecurityServeMounts(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatal("/dev/fuse missing: run as root with the fuse module loaded")
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		t.Fatal("runuser missing: install util-linux")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	root := filepath.Join(sharedDir(t), "mounts")
	a := startServe(t, cfg, "--mount-root", root)
	token := a.info["token"]
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	mount := func(body string) (int, string) {
		return a.call("POST", "/v1/appliance/mounts", token, body)
	}

	// Outside the root: refused, whatever the path.
	outside := filepath.Join(dir, "elsewhere")
	os.Mkdir(outside, 0o755)
	escape := filepath.Join(root, "escape")
	if err := os.Symlink(outside, escape); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{outside, "/etc", root, filepath.Join(root, "..", "x"), "../x", escape, filepath.Join(escape, "sub")} {
		status, body := mount(`{"path":"` + p + `"}`)
		if status != http.StatusBadRequest {
			t.Errorf("mount at %s: %d %s, want 400", p, status, body)
		}
		secNoPaths(t, cfg, "mount refusal", body)
	}
	if isMounted(outside) || isMounted("/etc") {
		t.Fatal("mounted outside the mount root")
	}

	// A directory with content is not hidden, unless forced.
	full := filepath.Join(root, "full")
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "precious.txt"), []byte("keep"), 0o644)
	if status, body := mount(`{"path":"` + full + `"}`); status != http.StatusBadRequest || !strings.Contains(body, "not empty") {
		t.Errorf("mount over a non-empty directory: %d %s", status, body)
	}
	if _, err := os.Stat(filepath.Join(full, "precious.txt")); err != nil || isMounted(full) {
		t.Errorf("non-empty directory hidden: %v", err)
	}
	status, body := mount(`{"path":"` + full + `","force":true}`)
	if status != http.StatusOK || !isMounted(full) {
		t.Fatalf("forced mount: %d %s", status, body)
	}
	var forced struct{ ID string }
	json.Unmarshal([]byte(body), &forced)
	if status, body := a.call("DELETE", "/v1/appliance/mounts/"+forced.ID, token, ""); status != 204 {
		t.Fatalf("stop forced mount: %d %s", status, body)
	}

	// A new directory under the root, shared with other users.
	status, body = mount(`{"path":"shared","allowOther":true}`)
	mnt := filepath.Join(root, "shared")
	if status != http.StatusOK || !isMounted(mnt) {
		t.Fatalf("mount under the root: %d %s", status, body)
	}
	sd := secSnapDir(mnt, snap)
	nobody := func(path string) (string, error) {
		out, err := exec.Command("runuser", "-u", "nobody", "--", "cat", path).CombinedOutput()
		return string(out), err
	}
	if out, err := nobody(filepath.Join(sd, "info.json")); err != nil || !strings.Contains(out, snap) {
		t.Fatalf("nobody cannot reach the shared mount: %v %s", err, out)
	}
	for _, f := range []string{"data", "partitions/p1"} {
		if out, err := nobody(filepath.Join(sd, f)); err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("nobody read the disk snapshot's %s: %v %.100q", f, err, out)
		}
	}
	image, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	if b, err := os.ReadFile(filepath.Join(sd, "data")); err != nil || !bytes.Equal(b, image) {
		t.Errorf("root reads data: %d bytes, %v", len(b), err)
	}

	// The snapshot deleted through the API: its files are gone, not broken.
	if status, body := a.call("DELETE", "/v1/astrolabe/disk/"+snap, token, ""); status != 200 {
		t.Fatalf("delete snapshot: %d %s", status, body)
	}
	if _, err := os.ReadFile(filepath.Join(sd, "data")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("read data of a deleted snapshot: %v, want ENOENT", err)
	}
	a.stop()
	if isMounted(mnt) {
		t.Error("mount left after stop")
	}
}

// tlsConn opens a TLS connection to addr trusting only the appliance's
// pinned certificate, and sends one keep-alive request on it.
func tlsConn(t *testing.T, addr string, pool *x509.CertPool) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Any answer will do (the S3 listener wants a signature): the
	// connection is now an idle keep-alive one.
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c, br
}

// Idle keep-alive connections and connections that send nothing are
// closed, and no more than --http-max-conns are served at once: the next
// client is served only once one of them is gone.
func TestSecurityServeHTTPLimits(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	const maxConns, silent = 40, 4
	a := startServe(t, cfg, "--nbd", "", "--http-idle-timeout", "1s", "--http-header-timeout", "1s",
		"--http-max-conns", fmt.Sprint(maxConns), "--http-max-conns-per-client", fmt.Sprint(maxConns+1))
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(filepath.Join(cfg, "tls", "cert.pem"))
	pool.AppendCertsFromPEM(pem)

	for _, listener := range []string{a.info["api"], a.info["s3"]} {
		addr := strings.TrimPrefix(strings.TrimSuffix(listener, "/v1/astrolabe"), "https://")
		var readers []io.Reader
		var conns []net.Conn
		for range maxConns - silent {
			c, br := tlsConn(t, addr, pool)
			conns, readers = append(conns, c), append(readers, br)
		}
		for range silent {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conns, readers = append(conns, c), append(readers, c)
		}
		// Every held connection is closed by the server. Each is watched
		// on its own, so the first close is seen when it happens.
		closedAt := make([]time.Time, len(conns))
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.SetReadDeadline(time.Now().Add(time.Minute))
				_, err := io.Copy(io.Discard, readers[i])
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Errorf("%s: connection %d still open after a minute", addr, i)
				}
				closedAt[i] = time.Now()
				c.Close()
			}()
		}
		// One more client, past the cap.
		served := make(chan time.Time, 1)
		go func() {
			c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
			if err != nil {
				served <- time.Time{}
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				served <- time.Time{}
				return
			}
			resp.Body.Close()
			served <- time.Now()
		}()
		wg.Wait()
		firstClosed := slices.MinFunc(closedAt, time.Time.Compare)
		at := <-served
		if at.IsZero() {
			t.Fatalf("%s: the client past the cap was never served", addr)
		}
		// The held connections go at the 1 s idle timeout; a client
		// past the cap served at once would be served about a second
		// before. The slack is for watchers that a loaded machine
		// wakes late.
		if at.Before(firstClosed.Add(-250 * time.Millisecond)) {
			t.Errorf("%s: the client past the cap of %d was served before any held connection closed", addr, maxConns)
		}
		t.Logf("%s: %d held connections closed by the server; the client past the cap waited for them", addr, len(conns))
	}
	a.stop()
}

// evilZip is a PE zip of an fs PE whose tar stream writes outside the
// target.
func evilZip(t *testing.T) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "../escaped.txt", Mode: 0o644, Size: 4, Typeflag: tar.TypeReg, ModTime: time.Now()})
	tw.Write([]byte("pwnd"))
	tw.Close()
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	w, _ := zw.Create("fs:evil.peinfo")
	fmt.Fprintf(w, `{"id":"fs:evil","name":"evil","size":%d,"dataTransports":[],"metadataTransports":[],"combinedTransports":[],"componentSpecs":[]}`, tb.Len())
	w, _ = zw.Create("fs:evil.data")
	w.Write(tb.Bytes())
	zw.Close()
	return zb.Bytes()
}

// Refused uploads and IDs too long for a file name are the client's
// fault (4xx with the reason, not 500), and no answer shows server paths.
func TestSecurityServeRefusedInput(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	a := startServe(t, cfg, "--nbd", "")
	token := a.info["token"]
	keys := map[string]string{}
	kb, _ := os.ReadFile(filepath.Join(cfg, "s3-credentials.json"))
	json.Unmarshal(kb, &keys)
	mc, err := minio.New(strings.TrimPrefix(a.info["s3"], "https://"), &minio.Options{
		Creds: credentials.NewStaticV4(keys["accessKey"], keys["secretKey"], ""), Secure: true,
		Transport: a.client.Transport, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	put := func(key string, b []byte) minio.ErrorResponse {
		_, err := mc.PutObject(ctx, "copy", key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
		if err == nil {
			t.Fatalf("upload of %s accepted", key)
		}
		return minio.ToErrorResponse(err)
	}
	if e := put("evil.zip", evilZip(t)); e.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "escaped.txt") {
		t.Errorf("zip writing outside its target: %d %s %q, want 400 with the reason", e.StatusCode, e.Code, e.Message)
	} else {
		secNoPaths(t, cfg, "refused zip", e.Message)
	}
	if _, err := os.Stat(filepath.Join(cfg, "fs", "escaped.txt")); err == nil {
		t.Error("the refused zip wrote outside its target")
	}
	if e := put("junk.zip", []byte("PK\x03\x04 this is no zip")); e.StatusCode != http.StatusBadRequest {
		t.Errorf("junk zip: %d %s %q", e.StatusCode, e.Code, e.Message)
	} else {
		secNoPaths(t, cfg, "junk zip", e.Message)
	}
	if strings.Contains(a.stderr.String(), "level=ERROR") {
		t.Errorf("refused uploads logged as errors:\n%s", a.stderr)
	}

	// IDs longer than a file name: 4xx on both paths (S3 objects are
	// snapshots: there is none of that name).
	long := "disk:" + strings.Repeat("a", 300) + ".img"
	if status, body := a.call("GET", "/v1/astrolabe/disk/"+long, token, ""); status != http.StatusBadRequest {
		t.Errorf("REST info of a 300-byte ID: %d %s", status, body)
	} else {
		secNoPaths(t, cfg, "long ID", body)
	}
	_, err = mc.StatObject(ctx, "disk", long+":x", minio.StatObjectOptions{})
	if e := minio.ToErrorResponse(err); e.StatusCode != http.StatusBadRequest && e.StatusCode != http.StatusNotFound {
		t.Errorf("S3 HEAD of a 300-byte key: %d %s", e.StatusCode, e.Code)
	}

	// The long poll with the largest waitTime waits for the task.
	status, body := a.call("POST", "/v1/astrolabe/tasks/nexus", token, "")
	var nx string
	json.Unmarshal([]byte(body), &nx)
	if status != 200 || nx == "" {
		t.Fatalf("nexus: %d %s", status, body)
	}
	snap := mustRun(t, cfg, "snap", "fs:sample").lastLine()
	status, body = a.call("POST", "/v1/astrolabe/fs?mode=create_new&nexus="+nx, token, `{"protectedEntityInfo":{"id":"`+snap+`","name":"","size":0,"dataTransports":[],"metadataTransports":[],"combinedTransports":[],"componentSpecs":[]}}`)
	if status != 202 {
		t.Fatalf("copy: %d %s", status, body)
	}
	_, body = a.call("GET", "/v1/astrolabe/tasks/nexus/"+nx+"?waitTime=9223372036854775807&lastFinishedNS=0", token, "")
	var waited struct{ Finished []map[string]any }
	if json.Unmarshal([]byte(body), &waited); len(waited.Finished) != 1 {
		t.Errorf("long poll with waitTime=MaxInt64 returned before the task ended: %s", body)
	}

	// /metrics takes only the token.
	for _, tok := range []string{"", "x", token[:len(token)-1], token + "x"} {
		if status, _ := a.call("GET", "/metrics", tok, ""); status != 401 {
			t.Errorf("metrics with token %q: %d", tok, status)
		}
	}
	a.stop()
}

// Deleting an exported snapshot through the API ends its export and drops
// its cached zip.
func TestSecurityServeDeleteExported(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	a := startServe(t, cfg)
	token := a.info["token"]
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	if status, body := a.call("POST", "/v1/appliance/nbd/exports", token, `{"id":"`+snap+`"}`); status != 200 {
		t.Fatalf("export: %d %s", status, body)
	}
	keys := map[string]string{}
	kb, _ := os.ReadFile(filepath.Join(cfg, "s3-credentials.json"))
	json.Unmarshal(kb, &keys)
	mc, _ := minio.New(strings.TrimPrefix(a.info["s3"], "https://"), &minio.Options{
		Creds: credentials.NewStaticV4(keys["accessKey"], keys["secretKey"], ""), Secure: true,
		Transport: a.client.Transport, BucketLookup: minio.BucketLookupPath,
	})
	obj, err := mc.GetObject(context.Background(), "disk", snap+".zip", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, obj); err != nil || n == 0 {
		t.Fatalf("zip: %d bytes, %v", n, err)
	}
	zips, _ := filepath.Glob(filepath.Join(cfg, "tmp", "astrolabe-s3-zips", "*.zip"))
	if len(zips) != 1 {
		t.Fatalf("zip cache: %v", zips)
	}
	if status, body := a.call("DELETE", "/v1/astrolabe/disk/"+snap, token, ""); status != 200 {
		t.Fatalf("delete: %d %s", status, body)
	}
	if status, body := a.call("GET", "/v1/appliance/nbd/exports", token, ""); status != 200 || strings.Contains(body, snap) {
		t.Errorf("exports after the snapshot was deleted: %d %s", status, body)
	}
	if zips, _ := filepath.Glob(filepath.Join(cfg, "tmp", "astrolabe-s3-zips", "*.zip")); len(zips) != 0 {
		t.Errorf("zip of the deleted snapshot kept: %v", zips)
	}
	a.stop()
	// The export does not come back with the next start either.
	a = startServe(t, cfg)
	if _, body := a.call("GET", "/v1/appliance/nbd/exports", token, ""); strings.Contains(body, snap) {
		t.Errorf("export of a deleted snapshot restored: %s", body)
	}
	a.stop()
}

// The certificate is a leaf for the appliance's names, under a CA constrained to them, that clients pin
// (Go and curl), and TLS 1.2 offers no CBC suites. A CA certificate from
// before is replaced at start.
func TestSecurityServeCertificate(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl missing: install curl")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	a := startServe(t, cfg, "--nbd", "")
	certFile := filepath.Join(cfg, "tls", "cert.pem")
	b, _ := os.ReadFile(certFile)
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if c.IsCA || c.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Errorf("the certificate can sign others: CA %v, usage %v", c.IsCA, c.KeyUsage)
	}
	// Go clients pin it (startServe's client), and so does curl.
	if status, _ := a.call("GET", "/healthz", "", ""); status != 200 {
		t.Errorf("Go client with the pinned certificate: %d", status)
	}
	for _, base := range []string{a.base(), strings.Replace(a.base(), "127.0.0.1", "localhost", 1)} {
		out, err := exec.Command("curl", "-sS", "--cacert", certFile, base+"/healthz").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok") {
			t.Errorf("curl --cacert %s: %v %s", base, err, out)
		}
	}
	addr := strings.TrimPrefix(a.base(), "https://")
	pool := x509.NewCertPool()
	pool.AddCert(c)
	_, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA}})
	if err == nil {
		t.Error("TLS 1.2 with CBC-SHA1 suites accepted")
	}
	a.stop()
}
