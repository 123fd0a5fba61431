package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tryTool runs a client tool that is expected to fail, and returns its
// output and error.
func tryTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// startExport starts an NBD export through the API and returns its URI.
func (a *appliance) startExport(snap string, writable bool) string {
	a.t.Helper()
	status, body := a.call("POST", "/v1/appliance/nbd/exports", a.info["token"], fmt.Sprintf(`{"id":%q,"writable":%v}`, snap, writable))
	if status != 200 {
		a.t.Fatalf("start export of %s (writable %v): %d %s", snap, writable, status, body)
	}
	var exp struct {
		URI      string
		Writable bool
	}
	json.Unmarshal([]byte(body), &exp)
	if exp.Writable != writable || exp.URI == "" {
		a.t.Fatalf("export: %s", body)
	}
	return exp.URI
}

// withCerts adds libnbd's tls-certificates parameter to an nbds:// URI.
func withCerts(uri, dir string) string {
	return uri + "?tls-certificates=" + url.QueryEscape(dir)
}

// qemuTLS is qemu's --object with the TLS credentials in dir.
func qemuTLS(dir string) []string {
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client"}
}

// qemuNBD names an export for qemu-img, over TLS with qemuTLS's
// credentials.
func qemuNBD(uri string) string {
	u, _ := url.Parse(uri)
	b, _ := json.Marshal(map[string]any{"driver": "raw", "file": map[string]string{
		"driver": "nbd", "host": u.Hostname(), "port": u.Port(),
		"export": strings.TrimPrefix(u.Path, "/"), "tls-creds": "tls0",
	}})
	return "json:" + string(b)
}

// TestSecurityNBDAuth: an anonymous client — plain, or TLS without a
// client certificate — neither lists nor opens a writable export, whose
// name has a token; one with a certificate from 'astrolabe nbd
// client-cert' writes with nbdcopy and qemu-img, the writes outlive a
// restart and are kept in a new PE when the export stops with keep=true.
// Off loopback TLS and a certificate are required for everything.
func TestSecurityNBDAuth(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snapRO := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	snapW := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	sample, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	a := startServe(t, cfg)
	if a.info["nbd-client-ca"] != filepath.Join(cfg, "tls", "nbd-client-ca.pem") {
		t.Errorf("serve printed %v", a.info)
	}

	certs := filepath.Join(dir, "client")
	mustRun(t, cfg, "nbd", "client-cert", "--name", "restore proxy", certs)
	for name, mode := range map[string]os.FileMode{"ca-cert.pem": 0o644, "client-cert.pem": 0o644, "client-key.pem": 0o600} {
		if fi, err := os.Stat(filepath.Join(certs, name)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", name, fi.Mode(), err, mode)
		}
	}
	// The server's CA without a client certificate: TLS, but anonymous.
	noCert := filepath.Join(dir, "nocert")
	os.Mkdir(noCert, 0o700)
	caPEM, _ := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
	os.WriteFile(filepath.Join(noCert, "ca-cert.pem"), caPEM, 0o644)

	roURI := a.startExport(snapRO, false)
	wURI := a.startExport(snapW, true)
	name := strings.TrimPrefix(wURI, "nbds://"+strings.TrimPrefix(a.info["nbd"], "nbd://")+"/")
	token, ok := strings.CutPrefix(name, snapW+"/")
	if !ok || len(token) != 32 || !strings.HasPrefix(roURI, "nbd://") || roURI != a.info["nbd"]+"/"+snapRO {
		t.Fatalf("export URIs: read-only %s, writable %s (want nbds://…/%s/<32 hex digits>)", roURI, wURI, snapW)
	}
	guess := "nbds://" + strings.TrimPrefix(a.info["nbd"], "nbd://") + "/" + snapW

	// LIST: the writable export is shown to the authenticated client only.
	plainList := runTool(t, "nbdinfo", "--list", a.info["nbd"])
	tlsList := runTool(t, "nbdinfo", "--list", withCerts("nbds://"+strings.TrimPrefix(a.info["nbd"], "nbd://"), noCert))
	certList := runTool(t, "nbdinfo", "--list", withCerts("nbds://"+strings.TrimPrefix(a.info["nbd"], "nbd://"), certs))
	for what, out := range map[string]string{"plain": plainList, "TLS without certificate": tlsList} {
		if !strings.Contains(out, snapRO) || strings.Contains(out, token) || strings.Contains(out, snapW) {
			t.Errorf("%s LIST shows the writable export or not the read-only one:\n%s", what, out)
		}
	}
	if !strings.Contains(certList, token) || !strings.Contains(certList, snapRO) {
		t.Errorf("LIST with a client certificate lacks an export:\n%s", certList)
	}

	// Anonymous clients read the read-only export (loopback default).
	runTool(t, "nbdcopy", roURI, filepath.Join(dir, "ro.img"))
	if b, _ := os.ReadFile(filepath.Join(dir, "ro.img")); !bytes.Equal(b, sample) {
		t.Error("read-only export differs")
	}

	// Anonymous clients cannot open the writable export, nor guess it.
	restored := make([]byte, len(sample))
	rand.Read(restored[1<<20 : 2<<20])
	src := filepath.Join(dir, "restore.img")
	os.WriteFile(src, restored, 0o644)
	plainW := strings.Replace(wURI, "nbds://", "nbd://", 1)
	for what, uri := range map[string]string{
		"plain": plainW, "TLS without certificate": withCerts(wURI, noCert),
		"guessed name": withCerts(guess, certs),
	} {
		if out, err := tryTool(t, "nbdinfo", uri); err == nil {
			t.Errorf("%s client opened %s:\n%s", what, uri, out)
		}
		if out, err := tryTool(t, "nbdcopy", src, uri); err == nil {
			t.Errorf("%s client wrote into %s:\n%s", what, uri, out)
		}
	}
	if out, err := tryTool(t, "qemu-img", append(append([]string{"info"}, qemuTLS(noCert)...), qemuNBD(wURI))...); err == nil {
		t.Errorf("qemu-img without a client certificate opened the writable export:\n%s", out)
	}

	// With the certificate: nbdcopy writes, qemu-img compares and writes.
	runTool(t, "nbdcopy", src, withCerts(wURI, certs))
	runTool(t, "qemu-img", append(append([]string{"compare"}, qemuTLS(certs)...), "-f", "raw", src, qemuNBD(wURI))...)
	rand.Read(restored[3<<20 : 4<<20])
	os.WriteFile(src, restored, 0o644)
	runTool(t, "qemu-img", append(append([]string{"convert", "-n"}, qemuTLS(certs)...), "-f", "raw", "-O", "raw", src, qemuNBD(wURI))...)
	disks := diskFiles(t, cfg)
	overlays := filepath.Join(cfg, "state", "overlays")

	// The writable export keeps its name and its writes across a restart.
	a.stop()
	a = startServe(t, cfg)
	_, body := a.call("GET", "/v1/appliance/nbd/exports", a.info["token"], "")
	var exports []struct{ ID, URI, Target string }
	json.Unmarshal([]byte(body), &exports)
	wURI = ""
	for _, e := range exports {
		if e.ID == snapW && e.Target == "" {
			wURI = e.URI
		}
	}
	if !strings.HasSuffix(wURI, "/"+snapW+"/"+token) {
		t.Fatalf("writable export after a restart: %s", body)
	}
	runTool(t, "qemu-img", append(append([]string{"compare"}, qemuTLS(certs)...), "-f", "raw", src, qemuNBD(wURI))...)
	if got := diskFiles(t, cfg); !slices.Equal(got, disks) {
		t.Errorf("disk PEs %v while exported writable, want %v (no copy)", got, disks)
	}
	// Stopped with keep=true, its writes are a new PE; its overlay goes.
	status, body := a.call("DELETE", "/v1/appliance/nbd/exports/"+url.PathEscape(snapW)+"?keep=true", a.info["token"], "")
	var stopped struct{ Kept string }
	if json.Unmarshal([]byte(body), &stopped); status != 200 || !strings.HasPrefix(stopped.Kept, "disk:sample-") {
		t.Fatalf("stop the writable export keeping its writes: %d %s", status, body)
	}
	if got, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(stopped.Kept, "disk:"))); !bytes.Equal(got, restored) {
		t.Errorf("the kept PE %s does not hold what was written", stopped.Kept)
	}
	if got := listDir(t, overlays); len(got) != 0 {
		t.Errorf("overlays left after the export stopped: %v", got)
	}
	a.stop()

	// Off loopback: TLS and a client certificate for everything. The
	// appliance's certificate now names this machine's addresses too: it
	// is made again, and clients take its new CA with a new certificate.
	a = startServe(t, cfg, "--nbd", "0.0.0.0:0")
	if !strings.Contains(a.stderr.String(), "TLS certificate generated again") {
		t.Errorf("new names did not give a new certificate: %s", a.stderr)
	}
	mustRun(t, cfg, "nbd", "client-cert", "--name", "restore proxy", certs)
	if !strings.HasPrefix(a.info["nbd"], "nbds://") {
		t.Errorf("NBD off loopback advertised as %s", a.info["nbd"])
	}
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(a.info["nbd"], "nbds://"))
	local := "127.0.0.1:" + port
	if out, err := tryTool(t, "nbdinfo", "--list", "nbd://"+local); err == nil || strings.Contains(out, snapRO) {
		t.Errorf("plain LIST off loopback: %v\n%s", err, out)
	}
	if out, err := tryTool(t, "nbdinfo", "--list", withCerts("nbds://"+local, noCert)); err == nil || strings.Contains(out, snapRO) {
		t.Errorf("LIST without a client certificate off loopback: %v\n%s", err, out)
	}
	if out, err := tryTool(t, "nbdinfo", "nbd://"+local+"/"+snapRO); err == nil {
		t.Errorf("plain read off loopback:\n%s", out)
	}
	if out := runTool(t, "nbdinfo", withCerts("nbds://"+local+"/"+snapRO, certs)); !strings.Contains(out, "export-size: 67108864") {
		t.Errorf("read with a certificate off loopback:\n%s", out)
	}
	a.stop()

	// --nbd-anonymous-read=false: no anonymous reads on loopback either.
	a = startServe(t, cfg, "--nbd-anonymous-read=false")
	if out, err := tryTool(t, "nbdinfo", a.info["nbd"]+"/"+snapRO); err == nil {
		t.Errorf("anonymous read with --nbd-anonymous-read=false:\n%s", out)
	}
	runTool(t, "nbdinfo", withCerts("nbds://"+strings.TrimPrefix(a.info["nbd"], "nbd://")+"/"+snapRO, certs))
	a.stop()

	// 'nbd serve' with --tls-client-ca: the same rule for its writable
	// exports; without it, --writable off loopback is refused.
	tlsDir := filepath.Join(cfg, "tls")
	s := startNBD(t, cfg, 1, "--writable", "--tls-cert", filepath.Join(tlsDir, "cert.pem"), "--tls-key", filepath.Join(tlsDir, "key.pem"),
		"--tls-client-ca", filepath.Join(tlsDir, "nbd-client-ca.pem"), snapRO)
	if !strings.Contains(s.uri(0), snapRO+"/") {
		t.Errorf("nbd serve --writable printed %q", s.lines[0])
	}
	if out, err := tryTool(t, "nbdinfo", s.uri(0)); err == nil {
		t.Errorf("plain client opened nbd serve's writable export:\n%s", out)
	}
	tlsW := withCerts(strings.Replace(s.uri(0), "nbd://", "nbds://", 1), certs)
	if out := runTool(t, "nbdinfo", tlsW); !strings.Contains(out, "is_read_only: false") {
		t.Errorf("nbd serve's writable export with a certificate:\n%s", out)
	}
	s.stop(syscall.SIGTERM)
	mustFail(t, cfg, "--tls-client-ca", "nbd", "serve", "--listen", "0.0.0.0:0", "--writable", snapRO)
}

// TestSecurityNBDWritableOnce: 10 parallel requests for a writable export
// of one snapshot: one succeeds, nine get 409; exactly one overlay exists,
// and no PE is made.
func TestSecurityNBDWritableOnce(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	before := diskFiles(t, cfg)
	a := startServe(t, cfg)
	const n = 10
	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i], _ = a.call("POST", "/v1/appliance/nbd/exports", a.info["token"], `{"id":"`+snap+`","writable":true}`)
		}()
	}
	wg.Wait()
	count := map[int]int{}
	for _, s := range statuses {
		count[s]++
	}
	if count[200] != 1 || count[409] != n-1 {
		t.Errorf("%d parallel writable export requests answered %v, want 1 × 200 and %d × 409", n, count, n-1)
	}
	if after := diskFiles(t, cfg); !slices.Equal(after, before) {
		t.Errorf("disk PEs before %v, after %v: want no new one", before, after)
	}
	if got := listDir(t, filepath.Join(cfg, "state", "overlays")); len(got) != 1 {
		t.Errorf("overlays %v, want exactly one", got)
	}
	a.stop()
}

// nbdRawClient connects without TLS, chooses export name with
// EXPORT_NAME (simple replies), and returns the connection.
func nbdRawClient(addr, name string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	b = binary.BigEndian.AppendUint64(b, 0x49484156454F5054)
	b = binary.BigEndian.AppendUint32(b, 1) // EXPORT_NAME
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	var reply [10]byte // size, transmission flags
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("export %s: %w", name, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// vmRSS is the resident set of process pid in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	return procValue(t, pid, "status", "VmRSS:") << 10
}

// procValue is the number after key in /proc/PID/file.
func procValue(t *testing.T, pid int, file, key string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + file)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == key {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return n
			}
		}
	}
	t.Fatalf("no %s in /proc/%d/%s:\n%s", key, pid, file, b)
	return 0
}

// TestSecurityNBDMemory: 12 clients queue 32 MiB reads and never read the
// replies; the server's RSS stays under its NBD memory budget plus a fixed
// allowance. Then the connection limit refuses the extra connections, and
// once the clients are gone a normal client copies the export.
func TestSecurityNBDMemory(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	sample, _ := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	const (
		budget    = 96 << 20
		allowance = 160 << 20 // the process without NBD traffic, and the runtime's slack
		clients   = 12
		requests  = 64 // 2 GiB of replies per client
		perClient = clients + 2
	)
	a := startServe(t, cfg, "--nbd-memory-mib", strconv.Itoa(budget>>20), "--nbd-max-conns-per-client", strconv.Itoa(perClient))
	a.startExport(snap, false)
	pid := a.cmd.Process.Pid
	addr := strings.TrimPrefix(a.info["nbd"], "nbd://")
	base := vmRSS(t, pid)

	var (
		conns []net.Conn
		wg    sync.WaitGroup
	)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range clients {
		c, err := nbdRawClient(addr, snap)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bounded: writes stop when the server stops reading (and
			// the socket buffers are full), at the latest at the deadline.
			c.SetWriteDeadline(time.Now().Add(15 * time.Second))
			for i := range requests {
				req := binary.BigEndian.AppendUint32(nil, 0x25609513)
				req = binary.BigEndian.AppendUint32(req, 0) // flags, READ
				req = binary.BigEndian.AppendUint64(req, uint64(i))
				req = binary.BigEndian.AppendUint64(req, uint64(i%2)<<25)
				req = binary.BigEndian.AppendUint32(req, 32<<20)
				if _, err := c.Write(req); err != nil {
					return
				}
			}
		}()
	}
	// Watch the RSS while the reads pile up: 200 samples, 25 ms apart.
	var peak int64
	for range 200 {
		peak = max(peak, vmRSS(t, pid))
		time.Sleep(25 * time.Millisecond)
	}
	t.Logf("VmRSS %d MiB before, peak %d MiB with %d clients queueing %d reads of 32 MiB (budget %d MiB)", base>>20, peak>>20, clients, requests, budget>>20)
	if peak > budget+allowance {
		t.Errorf("VmRSS peaked at %d MiB, more than the budget of %d MiB plus %d MiB", peak>>20, budget>>20, allowance>>20)
	}

	// The connection limit: two more connections from this address are
	// taken, the next is closed without a greeting.
	for i := range 3 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var hello [18]byte
		_, err = io.ReadFull(c, hello[:])
		if refused := errors.Is(err, io.EOF); refused != (i == 2) {
			t.Errorf("connection %d of at most %d from one client: read %v", clients+i+1, perClient, err)
		}
	}

	// Once the clients are gone their replies are dropped: a normal
	// client is served.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	wg.Wait()
	copied := filepath.Join(dir, "copy.img")
	var err error
	for range 50 { // the server notices the closed connections
		if _, err = tryTool(t, "nbdcopy", a.info["nbd"]+"/"+snap, copied); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("nbdcopy after the attack: %v", err)
	}
	if b, _ := os.ReadFile(copied); !bytes.Equal(b, sample) {
		t.Error("the copy after the attack differs")
	}
	for _, line := range strings.Split(a.stderr.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "nbd") {
			t.Errorf("an anonymous NBD client was logged as a warning: %s", line)
		}
	}
	a.stop()
}
