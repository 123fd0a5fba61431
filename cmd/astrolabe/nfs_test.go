package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needNFSTools fails a test that lacks the NFS clients it drives.
func needNFSTools(t *testing.T) {
	t.Helper()
	const hint = "run scripts/deps.d/nfs.sh (Debian libnfs-utils, qemu-utils, qemu-block-extra)"
	for _, tool := range []string{"nfs-ls", "nfs-cp", "nfs-cat", "qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: %s", tool, hint)
		}
	}
	help, _ := exec.Command("qemu-img", "--help").Output()
	if !strings.Contains(string(help), " nfs ") {
		t.Fatalf("qemu-img has no nfs driver: %s", hint)
	}
}

// nfsEndpoint is where serve's NFS service listens, from its "nfs:" line.
type nfsEndpoint struct {
	host string
	port int
}

func (a *appliance) nfs() nfsEndpoint {
	a.t.Helper()
	u, err := url.Parse(a.info["nfs"])
	if err != nil || u.Scheme != "nfs" {
		a.t.Fatalf("serve printed nfs: %q: %v", a.info["nfs"], err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		a.t.Fatalf("serve printed nfs: %q: %v", a.info["nfs"], err)
	}
	return nfsEndpoint{u.Hostname(), port}
}

// url is libnfs's URL of p: MOUNT and NFS share serve's one port.
func (e nfsEndpoint) url(p string) string {
	return fmt.Sprintf("nfs://%s/%s?version=3&nfsport=%d&mountport=%d", e.host, p, e.port, e.port)
}

// ls runs nfs-ls on a directory and returns its entries' sizes.
func (e nfsEndpoint) ls(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	entries := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(runTool(t, "nfs-ls", e.url(dir))), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			continue
		}
		size, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil {
			t.Fatalf("nfs-ls line %q: %v", line, err)
		}
		entries[f[5]] = size
	}
	return entries
}

// read copies file p out of the export with nfs-cp.
func (e nfsEndpoint) read(t *testing.T, p string) []byte {
	t.Helper()
	local := filepath.Join(t.TempDir(), "nfs-read")
	runTool(t, "nfs-cp", e.url(p), local)
	b, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type nfsExport struct{ ID, Name, URL string }

func (a *appliance) startNFSExport(id string) nfsExport {
	a.t.Helper()
	status, body := a.call("POST", "/v1/appliance/nfs/exports", a.info["token"], `{"id":"`+id+`"}`)
	var e nfsExport
	if status != 200 || json.Unmarshal([]byte(body), &e) != nil || e.Name == "" {
		a.t.Fatalf("start NFS export of %s: %d %s", id, status, body)
	}
	return e
}

func (a *appliance) nfsExports() []nfsExport {
	a.t.Helper()
	status, body := a.call("GET", "/v1/appliance/nfs/exports", a.info["token"], "")
	var l []nfsExport
	if status != 200 || json.Unmarshal([]byte(body), &l) != nil {
		a.t.Fatalf("list NFS exports: %d %s", status, body)
	}
	return l
}

// sparseRandomImage writes a disk image of size bytes at p: random data
// with holes between, the way a used disk looks. It returns its bytes.
func sparseRandomImage(t *testing.T, p string, size int64) []byte {
	t.Helper()
	data := make([]byte, size)
	const mib = 1 << 20
	for _, r := range [][2]int64{{0, mib}, {3 * mib, 5 * mib}, {7*mib + 4096, size - 4096}} {
		rand.Read(data[r[0]:r[1]])
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, mib}, {3 * mib, 5 * mib}, {7*mib + 4096, size - 4096}} {
		if _, err := f.WriteAt(data[r[0]:r[1]], r[0]); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

// nfsLoopback returns a random address in 127.0.0.0/8: serve's NFS there
// on port 111 answers qemu's nfs driver, which asks the portmapper of
// that port, and meets no other listener of the port.
func nfsLoopback(t *testing.T) string {
	n, err := rand.Int(rand.Reader, big.NewInt(250*250))
	if err != nil {
		t.Fatal(err)
	}
	i := int(n.Int64())
	return fmt.Sprintf("127.%d.%d.%d", 1+i/250, 1+i%250, 1+i%249)
}

// qemuWrite writes with qemu-io through its nfs driver: at each offset
// the pattern byte, for length bytes. It returns want with those writes.
func qemuWrite(t *testing.T, url string, want []byte, writes ...[3]int) []byte {
	t.Helper()
	args := []string{"-f", "raw"}
	want = slices.Clone(want)
	for _, w := range writes {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", w[2], w[0], w[1]))
		for i := w[0]; i < w[0]+w[1]; i++ {
			want[i] = byte(w[2])
		}
	}
	runTool(t, "qemu-io", append(args, url)...)
	return want
}

// TestServeNFS: a repository snapshot exported over NFS by serve is read
// and written by real clients, comes back after a restart (clean or
// kill -9) with its writes and the files clients made, and is kept or
// discarded at stop; serve's NBD exports serve repository snapshots too.
func TestServeNFS(t *testing.T) {
	needNFSTools(t)
	needNBDTools(t)
	dir := t.TempDir()

	// The snapshot is backed up from another configuration, so that it
	// exists only in the repository the appliance serves.
	src := filepath.Join(dir, "src")
	mustRun(t, src, "init", "--samples", src)
	const size = 8 << 20
	orig := sparseRandomImage(t, filepath.Join(src, "disk", "vm.img"), size)
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, src, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	snap := mustRun(t, src, "backup", "disk:vm.img", "--repo", repoDir, "--insecure-no-password").lastLine()
	if !strings.HasPrefix(snap, "disk:vm.img:") {
		t.Fatalf("backup printed %q", snap)
	}

	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	host := nfsLoopback(t)
	flags := []string{"--repo", repoDir, "--insecure-no-password", "--nfs", host + ":111"}
	a := startServe(t, cfg, flags...)
	if a.info["nfs"] != "nfs://"+host+":111" {
		t.Fatalf("serve printed nfs: %q, want nfs://%s:111", a.info["nfs"], host)
	}
	ep := a.nfs()

	e := a.startNFSExport(snap)
	if e.ID != snap || !strings.HasPrefix(e.Name, "vm-") || e.URL != a.info["nfs"]+"/"+e.Name {
		t.Fatalf("NFS export: %+v", e)
	}
	flat, desc := e.Name+"/"+e.Name+"-flat.vmdk", e.Name+"/"+e.Name+".vmdk"
	if root := ep.ls(t, ""); len(root) != 1 || root[e.Name] == 0 {
		t.Errorf("nfs-ls /: %v, want %s", root, e.Name)
	}
	if got := ep.ls(t, e.Name); len(got) != 2 || got[e.Name+"-flat.vmdk"] != size || got[e.Name+".vmdk"] == 0 {
		t.Errorf("nfs-ls /%s: %v, want the descriptor and a flat file of %d bytes", e.Name, got, size)
	}
	if !bytes.Equal(ep.read(t, flat), orig) {
		t.Fatal("the flat file read by nfs-cp differs from the snapshot")
	}
	if d := string(ep.read(t, desc)); !strings.Contains(d, e.Name+"-flat.vmdk") {
		t.Errorf("descriptor:\n%s", d)
	}

	// Writes of qemu (its nfs driver), unaligned and into a hole too.
	qemuURL := "nfs://" + host + "/" + flat
	want := qemuWrite(t, qemuURL, orig, [3]int{12345, 1000, 0x5a}, [3]int{2 << 20, 64 << 10, 0xa5}, [3]int{size - 4096, 4096, 0x11})
	if !bytes.Equal(ep.read(t, flat), want) {
		t.Fatal("the flat file after qemu-io's writes differs from the snapshot with them")
	}
	// A file a client makes beside the disk, as vSphere does a VM's.
	vmx := []byte("config.version = \"8\"\nvirtualHW.version = \"13\"\n")
	vmxSrc := filepath.Join(dir, "vm.vmx")
	if err := os.WriteFile(vmxSrc, vmx, 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, "nfs-cp", vmxSrc, ep.url(e.Name+"/vm.vmx"))
	if got := ep.ls(t, e.Name); got["vm.vmx"] != int64(len(vmx)) {
		t.Errorf("nfs-ls /%s after nfs-cp of vm.vmx: %v", e.Name, got)
	}

	// Serve's NBD exports the repository snapshot too, unchanged by the
	// NFS export's writes.
	status, body := a.call("POST", "/v1/appliance/nbd/exports", a.info["token"], `{"id":"`+snap+`"}`)
	var nbdExp struct{ URI string }
	if status != 200 || json.Unmarshal([]byte(body), &nbdExp) != nil {
		t.Fatalf("NBD export of %s: %d %s", snap, status, body)
	}
	nbdCopy := filepath.Join(dir, "nbd.img")
	runTool(t, "nbdcopy", nbdExp.URI, nbdCopy)
	if b, _ := os.ReadFile(nbdCopy); !bytes.Equal(b, orig) {
		t.Error("nbdcopy of the NBD export of the repository snapshot differs from it")
	}

	// Restarts, clean and kill -9 (after one more write): the export
	// comes back under its name with its writes and the client's file.
	restarted := func(how string) {
		t.Helper()
		if l := a.nfsExports(); len(l) != 1 || l[0].Name != e.Name || l[0].ID != snap || l[0].URL != e.URL {
			t.Fatalf("NFS exports after %s: %+v, want %+v", how, l, e)
		}
		if got := ep.ls(t, e.Name); got[e.Name+"-flat.vmdk"] != size || got["vm.vmx"] != int64(len(vmx)) {
			t.Errorf("nfs-ls /%s after %s: %v", e.Name, how, got)
		}
		if !bytes.Equal(ep.read(t, flat), want) {
			t.Fatalf("the flat file after %s lost writes", how)
		}
		if back := runTool(t, "nfs-cat", ep.url(e.Name+"/vm.vmx")); back != string(vmx) {
			t.Errorf("vm.vmx after %s: %q", how, back)
		}
	}
	nbdBack := func(how string) {
		t.Helper()
		if out := runTool(t, "nbdinfo", "--list", a.info["nbd"]); !strings.Contains(out, snap) {
			t.Errorf("NBD export of the repository snapshot after %s:\n%s", how, out)
		}
	}
	a.stop()
	a = startServe(t, cfg, flags...)
	restarted("a restart")
	nbdBack("a restart")
	want = qemuWrite(t, qemuURL, want, [3]int{5 << 20, 8192, 0x77})
	a.kill9()
	a = startServe(t, cfg, flags...)
	restarted("kill -9 and a restart")
	nbdBack("kill -9 and a restart")

	// A start without the repository cannot serve the export, but keeps
	// it (and its writes) for a start with it.
	a.stop()
	a = startServe(t, cfg, "--nfs", host+":111")
	if l := a.nfsExports(); len(l) != 0 {
		t.Errorf("NFS exports of repository snapshots without the repository: %+v", l)
	}
	a.stop()
	a = startServe(t, cfg, flags...)
	restarted("a start without the repository")

	// Stop keeping the writes: a new disk PE of the snapshot with them.
	before := diskPEFiles(t, cfg)
	status, body = a.call("DELETE", "/v1/appliance/nfs/exports/"+e.Name+"?keep=true", a.info["token"], "")
	var kept struct{ Kept string }
	if status != 200 || json.Unmarshal([]byte(body), &kept) != nil || !strings.HasPrefix(kept.Kept, "disk:") {
		t.Fatalf("stop NFS export keeping the writes: %d %s", status, body)
	}
	if b, err := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(kept.Kept, "disk:"))); err != nil || !bytes.Equal(b, want) {
		t.Errorf("the kept PE %s differs from the snapshot with the writes (%v)", kept.Kept, err)
	}
	exportGone(t, a, cfg, e.Name)

	// A second export of the snapshot serves it unchanged; stopped
	// without keep, it leaves nothing.
	e2 := a.startNFSExport(snap)
	if e2.Name == e.Name {
		t.Errorf("a second export of %s reuses the name %s", snap, e.Name)
	}
	if !bytes.Equal(ep.read(t, e2.Name+"/"+e2.Name+"-flat.vmdk"), orig) {
		t.Error("a second export does not serve the snapshot as it was backed up")
	}
	// A whole new image written over the flat file by qemu-img, read back:
	// data where the snapshot has a hole, zeros where it has data.
	fresh := make([]byte, size)
	rand.Read(fresh[1<<20 : 3<<20])
	if err := os.WriteFile(filepath.Join(dir, "fresh.img"), fresh, 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", filepath.Join(dir, "fresh.img"), "nfs://"+host+"/"+e2.Name+"/"+e2.Name+"-flat.vmdk")
	if !bytes.Equal(ep.read(t, e2.Name+"/"+e2.Name+"-flat.vmdk"), fresh) {
		t.Error("the flat file after qemu-img convert -n differs from the image written")
	}
	before = append(before, strings.TrimPrefix(kept.Kept, "disk:"))
	slices.Sort(before)
	if status, body = a.call("DELETE", "/v1/appliance/nfs/exports/"+e2.Name, a.info["token"], ""); status != 204 {
		t.Errorf("stop NFS export: %d %s", status, body)
	}
	if after := diskPEFiles(t, cfg); !slices.Equal(after, before) {
		t.Errorf("disk PEs after a stop without keep: %v, want %v", after, before)
	}
	exportGone(t, a, cfg, e2.Name)
	if status, body = a.call("DELETE", "/v1/appliance/nfs/exports/"+e2.Name, a.info["token"], ""); status != 404 {
		t.Errorf("stop of a stopped NFS export: %d %s", status, body)
	}

	// An export whose snapshot was forgotten meanwhile does not come
	// back, and leaves nothing: neither its overlay nor the client's files.
	e3 := a.startNFSExport(snap)
	runTool(t, "nfs-cp", vmxSrc, ep.url(e3.Name+"/vm.vmx"))
	a.stop()
	mustRun(t, cfg, "repo", "forget", snap, "--repo", repoDir, "--insecure-no-password")
	a = startServe(t, cfg, flags...)
	exportGone(t, a, cfg, e3.Name)
	a.stop()
}

// diskPEFiles lists the image files of cfg's disk PEs.
func diskPEFiles(t *testing.T, cfg string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(cfg, "disk", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	slices.Sort(m)
	return m
}

// exportGone checks that a stopped export left nothing: not in the API,
// not served, no overlay, no scratch directory of the clients' files.
func exportGone(t *testing.T, a *appliance, cfg, name string) {
	t.Helper()
	if l := a.nfsExports(); len(l) != 0 {
		t.Errorf("NFS exports after stopping %s: %+v", name, l)
	}
	if root := a.nfs().ls(t, ""); len(root) != 0 {
		t.Errorf("nfs-ls / after stopping %s: %v", name, root)
	}
	for _, d := range []string{filepath.Join("overlays", "nfs-"+name), filepath.Join("nfs", name)} {
		if _, err := os.Stat(filepath.Join(cfg, "state", d)); !os.IsNotExist(err) {
			t.Errorf("state/%s after stopping the export: %v", d, err)
		}
	}
}

// TestServeNFSRefusals: bad requests and flags get clear errors, and the
// NFS service serves only the clients of --nfs-allow.
func TestServeNFSRefusals(t *testing.T) {
	needNFSTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	fsSnap := mustRun(t, cfg, "snap", "fs:sample").lastLine()
	diskSnap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()

	a := startServe(t, cfg, "--nfs", "127.0.0.1:0")
	if !strings.HasPrefix(a.info["nfs"], "nfs://127.0.0.1:") || a.nfs().port == 0 {
		t.Fatalf("serve printed nfs: %q", a.info["nfs"])
	}
	for _, c := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"id":"` + fsSnap + `"}`, 400, "not a disk"},
		{`{"id":"fs:sample"}`, 400, "not a disk"},
		{`{"id":"disk:sample.img:20200101T000000.000Z-00000000"}`, 404, "not found"},
		{`{"id":"disk:nowhere.img:20200101T000000.000Z-00000000"}`, 404, "not found"},
		{`{"id":"nonsense"}`, 400, ""},
		{`{}`, 400, ""},
	} {
		status, body := a.call("POST", "/v1/appliance/nfs/exports", a.info["token"], c.body)
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("POST NFS export %s: %d %s, want %d %q", c.body, status, body, c.status, c.want)
		}
	}
	// The refused live fs PE was not snapshotted for nothing.
	if got := mustRun(t, cfg, "lssn", "fs:sample").stdout; strings.TrimSpace(got) != fsSnap {
		t.Errorf("fs:sample snapshots after the refusals: %q, want only %s", got, fsSnap)
	}
	if status, body := a.call("DELETE", "/v1/appliance/nfs/exports/unknown", a.info["token"], ""); status != 404 {
		t.Errorf("stop of an unknown NFS export: %d %s", status, body)
	}
	e := a.startNFSExport(diskSnap)
	if got := a.nfs().ls(t, e.Name); got[e.Name+"-flat.vmdk"] != 64<<20 {
		t.Errorf("nfs-ls /%s: %v", e.Name, got)
	}
	// Deleting the snapshot would leave the export, and its writes,
	// nothing to come back on after a restart.
	if status, body := a.call("DELETE", "/v1/astrolabe/disk/"+url.PathEscape(diskSnap), a.info["token"], ""); status != 409 || !strings.Contains(body, e.Name) {
		t.Errorf("delete of a snapshot with an NFS export: %d %s, want 409 naming %s", status, body, e.Name)
	}
	a.stop()

	// Without --nfs the API says NFS is not served; the recorded export
	// waits for a start with it.
	a = startServe(t, cfg)
	for _, c := range [][3]string{{"GET", "/v1/appliance/nfs/exports", ""}, {"POST", "/v1/appliance/nfs/exports", `{"id":"` + diskSnap + `"}`}, {"DELETE", "/v1/appliance/nfs/exports/" + e.Name, ""}} {
		if status, body := a.call(c[0], c[1], a.info["token"], c[2]); status != 501 || !strings.Contains(body, "NFS") {
			t.Errorf("%s %s without --nfs: %d %s, want 501", c[0], c[1], status, body)
		}
	}
	a.stop()

	// Off loopback, NFS (no authentication of its own) needs --nfs-allow;
	// a bad CIDR is a usage error.
	for _, c := range []struct {
		flags []string
		code  int
	}{
		{[]string{"--nfs", "0.0.0.0:0"}, 1},
		{[]string{"--nfs", "127.0.0.1:0", "--nfs-allow", "nonsense"}, 2},
	} {
		args := append([]string{"--config", cfg, "serve", "--api", "127.0.0.1:0", "--nbd", "", "--s3", ""}, c.flags...)
		r := runBinaryWithin(t, "", time.Minute, args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != c.code || !strings.Contains(r.stderr, "--nfs-allow") || !strings.HasPrefix(lines[len(lines)-1], "astrolabe: ") {
			t.Errorf("serve %v: exit %d, stderr %q; want exit %d naming --nfs-allow", c.flags, r.code, r.stderr, c.code)
		}
	}

	// A client outside --nfs-allow is refused; the API still works.
	a = startServe(t, cfg, "--nfs", "127.0.0.1:0", "--nfs-allow", "192.0.2.0/24")
	if l := a.nfsExports(); len(l) != 1 || l[0].Name != e.Name {
		t.Errorf("NFS exports after a restart: %+v", l)
	}
	ep := a.nfs()
	for _, p := range []string{"", e.Name} {
		if out, err := exec.Command("nfs-ls", ep.url(p)).CombinedOutput(); err == nil {
			t.Errorf("nfs-ls /%s from 127.0.0.1 outside --nfs-allow succeeded:\n%s", p, out)
		}
	}
	if status, body := a.call("DELETE", "/v1/appliance/nfs/exports/"+e.Name, a.info["token"], ""); status != 204 {
		t.Errorf("stop NFS export: %d %s", status, body)
	}
	a.stop()
}

// TestServeNFSConcurrentStops: stops of one export racing (keeping its
// writes or not) end it once; the others find it gone or going.
func TestServeNFSConcurrentStops(t *testing.T) {
	needNFSTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	a := startServe(t, cfg, "--nfs", "127.0.0.1:0")
	before := diskPEFiles(t, cfg)
	for round := range 5 {
		e := a.startNFSExport(snap)
		type answer struct {
			status int
			body   string
		}
		answers := make(chan answer)
		for i := range 4 {
			go func() {
				status, b, err := a.request(context.Background(), "DELETE", "/v1/appliance/nfs/exports/"+e.Name+"?keep="+strconv.FormatBool(i%2 == 0), "")
				if err != nil {
					status, b = -1, []byte(err.Error())
				}
				answers <- answer{status, string(b)}
			}()
		}
		var stopped, gone int
		for range 4 {
			switch ans := <-answers; ans.status {
			case 200, 204:
				stopped++
			case 404, 409: // stopped, or being stopped
				gone++
			default:
				t.Errorf("round %d: concurrent stop: %d %s", round, ans.status, ans.body)
			}
		}
		if stopped != 1 || gone != 3 {
			t.Errorf("round %d: %d stops succeeded, %d found it gone; want 1 and 3", round, stopped, gone)
		}
		exportGone(t, a, cfg, e.Name)
	}
	if after := diskPEFiles(t, cfg); len(after) > len(before)+5 {
		t.Errorf("disk PEs after the stops: %v, before %v", after, before)
	}
	if status, _ := a.call("GET", "/healthz", "", ""); status != 200 {
		t.Errorf("healthz after the stops: %d", status)
	}
	a.stop()
}
