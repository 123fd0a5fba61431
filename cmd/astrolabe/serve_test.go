package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// appliance is a running 'astrolabe serve'.
type appliance struct {
	t      *testing.T
	cmd    *exec.Cmd
	info   map[string]string // what it printed: api, nbd, certificate, token
	stderr *bytes.Buffer
	client *http.Client
}

func startServe(t *testing.T, cfg string, args ...string) *appliance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	args = append([]string{"--config", cfg, "serve", "--api", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--s3", "127.0.0.1:0"}, args...)
	cmd := exec.CommandContext(ctx, astrolabeBin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a := &appliance{t: t, cmd: cmd, info: map[string]string{}, stderr: &bytes.Buffer{}}
	cmd.Stderr = a.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "ready" {
		if k, v, ok := strings.Cut(sc.Text(), ": "); ok {
			a.info[k] = strings.Fields(v)[0]
		}
	}
	if a.info["api"] == "" || a.info["s3"] == "" {
		t.Fatalf("serve printed %v; stderr: %s", a.info, a.stderr)
	}
	if a.info["token"] == "" {
		b, _ := os.ReadFile(filepath.Join(cfg, "api-token"))
		a.info["token"] = strings.TrimSpace(string(b))
	}
	pool := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(filepath.Join(cfg, "tls", "cert.pem"))
	pool.AppendCertsFromPEM(pemBytes)
	a.client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return a
}

// base is the API's scheme://host:port.
func (a *appliance) base() string { return strings.TrimSuffix(a.info["api"], "/v1/astrolabe") }

func (a *appliance) call(method, path, token, body string) (int, string) {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.base()+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (a *appliance) stop() {
	a.t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.cmd.Wait(); err != nil {
		a.t.Errorf("serve after SIGTERM: %v; stderr: %s", err, a.stderr)
	}
}

func TestServe(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	a := startServe(t, cfg)
	if !strings.HasPrefix(a.info["api"], "https://127.0.0.1:") || a.info["certificate"] == "" {
		t.Fatalf("serve endpoints: %v", a.info)
	}
	token := a.info["token"]

	// The CLI verbs act on the appliance through the generated client.
	remote := []string{"--server", a.base(), "--token", token}
	if got := mustRun(t, cfg, append(remote, "types")...).stdout; got != "disk\nfs\n" {
		t.Errorf("remote types: %q", got)
	}
	snap := mustRun(t, cfg, append(remote, "snap", "disk:sample.img")...).lastLine()
	if got := mustRun(t, cfg, append(remote, "lssn", "disk:sample.img")...).stdout; strings.TrimSpace(got) != snap {
		t.Errorf("remote lssn: %q, want %s", got, snap)
	}
	if got := mustRun(t, cfg, append(remote, "show", snap)...).stdout; !strings.Contains(got, `"size": 67108864`) {
		t.Errorf("remote show: %s", got)
	}
	copied := mustRun(t, cfg, append(remote, "cp", snap, "disk")...).lastLine()
	if !strings.HasPrefix(copied, "disk:sample-") {
		t.Fatalf("remote cp: %q", copied)
	}
	a1, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	a2, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(copied, "disk:")))
	if !bytes.Equal(a1, a2) {
		t.Error("the copy made through the appliance differs")
	}
	mustFail(t, cfg, "bearer token", "--server", a.base(), "--token", "wrong", "ls", "fs")
	mustFail(t, cfg, "not carried by the REST API", append(remote, "cp", snap, filepath.Join(dir, "x.zip"))...)

	// An NBD export started through the API, and metrics.
	status, body := a.call("POST", "/v1/appliance/nbd/exports", token, `{"id":"`+snap+`"}`)
	if status != 200 {
		t.Fatalf("start export: %d %s", status, body)
	}
	var exp struct{ URI string }
	json.Unmarshal([]byte(body), &exp)
	runTool(t, "nbdcopy", exp.URI, filepath.Join(dir, "nbd.img"))
	if b, _ := os.ReadFile(filepath.Join(dir, "nbd.img")); !bytes.Equal(b, a1) {
		t.Error("NBD export differs from the image")
	}
	if status, body = a.call("GET", "/metrics", token, ""); status != 200 || !strings.Contains(body, `astrolabe_data_bytes_served_total{path="nbd"}`) || !strings.Contains(body, "astrolabe_api_requests_total") {
		t.Errorf("metrics: %d %.300s", status, body)
	}
	if status, _ = a.call("GET", "/metrics", "", ""); status != 401 {
		t.Errorf("metrics without token: %d", status)
	}
	if status, _ = a.call("GET", "/healthz", "", ""); status != 200 {
		t.Errorf("healthz: %d", status)
	}
	_, body = a.call("GET", "/v1/astrolabe/disk/"+strings.ReplaceAll(snap, ":", "%3A"), token, "")
	if !strings.Contains(body, exp.URI) || !strings.Contains(body, a.info["s3"]+"/disk/disk%3Asample.img%3A") || strings.Contains(body, "metadataTransports\":[{") {
		t.Errorf("PE info does not advertise the NBD export and S3 objects: %s", body)
	}

	// The S3 data path, over TLS with the appliance's certificate.
	keys := map[string]string{}
	kb, _ := os.ReadFile(filepath.Join(cfg, "s3-credentials.json"))
	json.Unmarshal(kb, &keys)
	if keys["accessKey"] != a.info["s3-access-key"] || keys["secretKey"] != a.info["s3-secret-key"] {
		t.Errorf("S3 keys printed %v, stored %v", a.info, keys)
	}
	mc, err := minio.New(strings.TrimPrefix(a.info["s3"], "https://"), &minio.Options{
		Creds: credentials.NewStaticV4(keys["accessKey"], keys["secretKey"], ""), Secure: true,
		Transport: a.client.Transport, BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := mc.GetObject(context.Background(), "disk", snap, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(obj); err != nil || !bytes.Equal(b, a1) {
		t.Errorf("S3 GetObject through the appliance: %d bytes, %v", len(b), err)
	}
	// A FUSE mount started through the API.
	// Under the mount root (the config directory's mounts/), made by the
	// appliance.
	mnt := filepath.Join(cfg, "mounts", "mnt")
	status, body = a.call("POST", "/v1/appliance/mounts", token, `{"path":"`+mnt+`"}`)
	if status != 200 || !strings.Contains(body, mnt) {
		t.Fatalf("start mount: %d %s", status, body)
	}
	snapFile := filepath.Join(mnt, "disk", "disk:sample.img", "snapshots", strings.Split(snap, ":")[2], "data")
	if b, err := os.ReadFile(snapFile); err != nil || !bytes.Equal(b, a1) {
		t.Errorf("read through the API's mount: %v", err)
	}
	a.stop()
	if isMounted(mnt) {
		t.Error("mount left after the appliance stopped")
	}

	// After a restart the export and the mount are back, with the same token.
	a = startServe(t, cfg)
	if a.info["token"] != token {
		t.Errorf("token changed across restarts")
	}
	if out := runTool(t, "nbdinfo", "--list", a.info["nbd"]); !strings.Contains(out, snap) {
		t.Errorf("export not restored after restart:\n%s", out)
	}
	if _, err := os.Stat(snapFile); err != nil {
		t.Errorf("mount not restored after restart: %v", err)
	}
	var mounts []struct{ ID string }
	_, body = a.call("GET", "/v1/appliance/mounts", token, "")
	json.Unmarshal([]byte(body), &mounts)
	if len(mounts) != 1 {
		t.Fatalf("mounts after restart: %s", body)
	}
	if status, body = a.call("DELETE", "/v1/appliance/mounts/"+mounts[0].ID, token, ""); status != 204 || isMounted(mnt) {
		t.Errorf("stop mount: %d %s", status, body)
	}
	if status, body = a.call("DELETE", "/v1/appliance/nbd/exports/"+strings.ReplaceAll(snap, ":", "%3A"), token, ""); status != 204 {
		t.Errorf("stop export: %d %s", status, body)
	}
	if status, body = a.call("GET", "/v1/appliance/nbd/exports", token, ""); status != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("exports after stop: %d %s", status, body)
	}
	a.stop()

	mustFail(t, cfg, "loopback", "serve", "--api", "0.0.0.0:0", "--insecure-http", "--nbd", "", "--s3", "")
	mustFail(t, cfg, "loopback", "serve", "--api", "127.0.0.1:0", "--insecure-http", "--nbd", "", "--s3", "0.0.0.0:0")
}

// waitTaskResult polls a task through the API until it ends.
func (a *appliance) waitTaskResult(token, taskID string) map[string]any {
	a.t.Helper()
	for range 600 {
		_, body := a.call("GET", "/v1/astrolabe/tasks/"+taskID, token, "")
		var ti map[string]any
		json.Unmarshal([]byte(body), &ti)
		if ti["completed"] == true {
			return ti
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.t.Fatalf("task %s did not end", taskID)
	return nil
}

func TestServeRepository(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	a := startServe(t, cfg, "--repo", repoDir)
	token := a.info["token"]

	status, body := a.call("POST", "/v1/appliance/repository/backups", token, `{"id":"disk:sample.img"}`)
	if status != 202 {
		t.Fatalf("backup: %d %s", status, body)
	}
	var task struct{ TaskID string }
	json.Unmarshal([]byte(body), &task)
	ti := a.waitTaskResult(token, task.TaskID)
	if ti["status"] != "success" {
		t.Fatalf("backup task: %v", ti)
	}
	backedUp := ti["result"].(map[string]any)["id"].(string)
	_, body = a.call("GET", "/v1/appliance/repository/snapshots?protectedEntityID=disk%3Asample.img", token, "")
	if !strings.Contains(body, backedUp) {
		t.Errorf("repository snapshots: %s", body)
	}
	status, body = a.call("POST", "/v1/appliance/repository/restores", token, `{"id":"`+backedUp+`"}`)
	if status != 202 {
		t.Fatalf("restore: %d %s", status, body)
	}
	json.Unmarshal([]byte(body), &task)
	ti = a.waitTaskResult(token, task.TaskID)
	restored, _ := ti["result"].(map[string]any)["id"].(string)
	orig, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	got, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(restored, "disk:")))
	if ti["status"] != "success" || !bytes.Equal(orig, got) {
		t.Errorf("restore task: %v", ti)
	}
	a.stop()
}

// TestServeHelpNamesJobs: serve's help says it runs the jobs of jobs.json.
func TestServeHelpNamesJobs(t *testing.T) {
	r := runBinary(t, t.TempDir(), "serve", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "jobs.json") {
		t.Errorf("serve --help: exit %d, no jobs.json in:\n%s", r.code, r.stdout)
	}
}
