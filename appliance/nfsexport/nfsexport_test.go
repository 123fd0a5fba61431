package nfsexport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/vddk/vmdk"
)

// The tests read and write the export with libnfs's userspace client
// (nfs-ls, nfs-cp, nfs-cat) and qemu-img's nfs:// driver, and send the
// calls whose exact answer matters (refusals, stale handles, malformed
// requests) with a small RPC client of their own.

const diskSize = 64 << 20

// fileDisk is a Disk on a local file that counts its Syncs.
type fileDisk struct {
	*os.File
	size  int64
	syncs atomic.Int64
}

func (d *fileDisk) Size() int64 { return d.size }
func (d *fileDisk) Sync() error {
	d.syncs.Add(1)
	return d.File.Sync()
}

func needTools(t testing.TB) {
	t.Helper()
	const hint = "run scripts/deps.d/nfs.sh (Debian libnfs-utils, qemu-utils, qemu-block-extra)"
	for _, tool := range []string{"nfs-ls", "nfs-cp", "nfs-cat", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: %s", tool, hint)
		}
	}
	help, _ := exec.Command("qemu-img", "--help").Output()
	if !strings.Contains(string(help), " nfs ") {
		t.Fatalf("qemu-img has no nfs driver: %s", hint)
	}
}

// newDisk makes a disk of random bytes in a temporary file.
func newDisk(t testing.TB, size int64) (*fileDisk, []byte) {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fileDisk{File: f, size: size}, data
}

// serve runs s on l until the test ends.
func serve(t testing.TB, s *Server, l net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// listen listens on a loopback address and returns its port.
func listen(t testing.TB, addr string) (net.Listener, int) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return l, l.Addr().(*net.TCPAddr).Port
}

// nfsURL is libnfs's URL of p on a server whose MOUNT and NFS are on port.
func nfsURL(port int, p string) string {
	return fmt.Sprintf("nfs://127.0.0.1/%s?version=3&nfsport=%d&mountport=%d", p, port, port)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// listing runs nfs-ls on a directory and returns its entries' sizes.
func listing(t *testing.T, port int, dir string) map[string]int64 {
	t.Helper()
	out := run(t, "nfs-ls", nfsURL(port, dir))
	entries := map[string]int64{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
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

func TestExport(t *testing.T) {
	needTools(t)
	disk, data := newDisk(t, diskSize)
	scratch := t.TempDir()
	s, err := New(Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), ScratchDir: scratch})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("vm1", disk); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("vm1", disk); !errors.Is(err, ErrExists) {
		t.Fatalf("second Add of vm1: %v, want ErrExists", err)
	}
	for _, bad := range []string{"", "..", "a/b", "a b", strings.Repeat("x", 65)} {
		if err := s.Add(bad, disk); err == nil {
			t.Errorf("Add(%q) succeeded", bad)
		}
	}
	l, port := listen(t, "127.0.0.1:0")
	serve(t, s, l)
	desc := descriptor("vm1", diskSize)
	dir := t.TempDir()

	t.Run("list", func(t *testing.T) {
		root := listing(t, port, "")
		if _, ok := root["vm1"]; !ok || len(root) != 1 {
			t.Errorf("nfs-ls /: %v, want vm1", root)
		}
		got := listing(t, port, "vm1")
		want := map[string]int64{"vm1.vmdk": int64(len(desc)), "vm1-flat.vmdk": diskSize}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("nfs-ls /vm1: %v, want %v", got, want)
		}
	})

	t.Run("read", func(t *testing.T) {
		// Three clients at once, each on its own connection.
		errs := make(chan error, 3)
		for i := range 3 {
			go func() {
				out := filepath.Join(dir, fmt.Sprintf("read%d.img", i))
				if o, err := exec.Command("nfs-cp", nfsURL(port, "vm1/vm1-flat.vmdk"), out).CombinedOutput(); err != nil {
					errs <- fmt.Errorf("nfs-cp %d: %v\n%s", i, err, o)
					return
				}
				got, err := os.ReadFile(out)
				if err == nil && !bytes.Equal(got, data) {
					err = fmt.Errorf("the flat file read by nfs-cp %d differs from the disk", i)
				}
				errs <- err
			}()
		}
		for range 3 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if err := os.Rename(filepath.Join(dir, "read0.img"), filepath.Join(dir, "vm1-flat.vmdk")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("descriptor", func(t *testing.T) {
		// Beside the flat file nfs-cp read, it must open as the disk.
		p := filepath.Join(dir, "vm1.vmdk")
		run(t, "nfs-cp", nfsURL(port, "vm1/vm1.vmdk"), p)
		d, err := vmdk.OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if d.Size() != diskSize || d.CreateType != "vmfs" {
			t.Errorf("descriptor: size %d, createType %q; want %d, vmfs", d.Size(), d.CreateType, diskSize)
		}
		head := make([]byte, 1<<20)
		if _, err := d.ReadAt(head, diskSize-int64(len(head))); err != nil || !bytes.Equal(head, data[diskSize-len(head):]) {
			t.Errorf("reading the disk through the descriptor: %v, or wrong bytes", err)
		}
		var info struct {
			Format      string `json:"format"`
			VirtualSize int64  `json:"virtual-size"`
		}
		if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", p)), &info); err != nil {
			t.Fatal(err)
		}
		if info.Format != "vmdk" || info.VirtualSize != diskSize {
			t.Errorf("qemu-img info: %+v, want vmdk of %d bytes", info, diskSize)
		}
	})

	t.Run("qemu", func(t *testing.T) {
		// qemu's nfs driver asks the portmapper (port 111) for the ports:
		// the server answers it too, on a loopback address of its own.
		host := randomLoopback(t)
		l, _ := listen(t, host+":111")
		serve(t, s, l)
		url := "nfs://" + host + "/vm1/vm1-flat.vmdk"
		local := filepath.Join(dir, "vm1-flat.vmdk")
		run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", url, local)

		// Write a whole new image into the flat file (nfs-cp cannot:
		// libnfs creates its target with a GUARDED CREATE, refused for
		// a file that exists).
		fresh := make([]byte, diskSize)
		_, _ = rand.Read(fresh)
		src := filepath.Join(dir, "fresh.img")
		if err := os.WriteFile(src, fresh, 0o600); err != nil {
			t.Fatal(err)
		}
		syncs := disk.syncs.Load()
		run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, url)
		got := make([]byte, diskSize)
		if _, err := disk.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, fresh) {
			t.Fatal("the disk differs from the image qemu-img wrote to the flat file")
		}
		if disk.syncs.Load() == syncs {
			t.Error("writes to the flat file never synced the disk")
		}
		copy(data, fresh)
	})

	t.Run("scratch", func(t *testing.T) {
		vmx := []byte("config.version = \"8\"\nvirtualHW.version = \"13\"\n")
		long := strings.Repeat("l", 70) + ".vswp" // too long to live in a handle
		for _, name := range []string{"vm.vmx", long} {
			src := filepath.Join(dir, "src-"+name[:6])
			if err := os.WriteFile(src, vmx, 0o600); err != nil {
				t.Fatal(err)
			}
			run(t, "nfs-cp", src, nfsURL(port, "vm1/"+name))
			onDisk, err := os.ReadFile(filepath.Join(scratch, "vm1", name))
			if err != nil || !bytes.Equal(onDisk, vmx) {
				t.Fatalf("%s in the scratch directory: %q, %v", name, onDisk, err)
			}
			if back := run(t, "nfs-cat", nfsURL(port, "vm1/"+name)); back != string(vmx) {
				t.Fatalf("nfs-cat %s: %q", name, back)
			}
		}
		if got := listing(t, port, "vm1"); got["vm.vmx"] != int64(len(vmx)) || got[long] != int64(len(vmx)) {
			t.Errorf("nfs-ls /vm1 after creating files: %v", got)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		c := dialRPC(t, port)
		root := c.mount(t, "/")
		dirFH := c.lookup(t, root, "vm1")
		descFH := c.lookup(t, dirFH, "vm1.vmdk")
		flatFH := c.lookup(t, dirFH, "vm1-flat.vmdk")
		checks := []struct {
			what string
			proc uint32
			args [][]byte
			want uint32
		}{
			{"RENAME the descriptor", procRename, [][]byte{opaque(dirFH), str("vm1.vmdk"), opaque(dirFH), str("x.vmdk")}, nfsErrAcces},
			{"RENAME onto the flat file", procRename, [][]byte{opaque(dirFH), str("vm.vmx"), opaque(dirFH), str("vm1-flat.vmdk")}, nfsErrAcces},
			{"grow the flat file", procSetattr, [][]byte{opaque(flatFH), sattrSize(diskSize + 512), u32(0)}, nfsErrFBig},
			{"shrink the flat file", procSetattr, [][]byte{opaque(flatFH), sattrSize(0), u32(0)}, nfsErrInval},
			{"write past the end", procWrite, [][]byte{opaque(flatFH), u64(diskSize - 2), u32(4), u32(2), opaque([]byte("abcd"))}, nfsErrFBig},
			{"grow the descriptor past 64 KiB", procSetattr, [][]byte{opaque(descFH), sattrSize(maxDescriptor + 1), u32(0)}, nfsErrFBig},
			{"CREATE the state directory's name", procCreate, [][]byte{opaque(dirFH), str(stateDirName), u32(0), sattrSize(0)}, nfsErrAcces},
			{"LOOKUP the state directory", procLookup, [][]byte{opaque(dirFH), str(stateDirName)}, nfsErrNoEnt},
			{"CREATE through ..", procCreate, [][]byte{opaque(dirFH), str("../x"), u32(0), sattrSize(0)}, nfsErrAcces},
			{"MKDIR at the root", procMkdir, [][]byte{opaque(root), str("vm2"), make([]byte, 24)}, nfsErrAcces},
			{"a handle of another server", procGetattr, [][]byte{opaque([]byte("0123456789abcdef"))}, nfsErrStale},
		}
		for _, ch := range checks {
			if got := c.nfs(t, ch.proc, ch.args...); got != ch.want {
				t.Errorf("%s: status %d, want %d", ch.what, got, ch.want)
			}
		}
		// ESXi makes its lock files with EXCLUSIVE creates.
		lock := [][]byte{opaque(dirFH), str(".lck-0000000000000001"), u32(createExclusive), u64(42)}
		if got := c.nfs(t, procCreate, lock...); got != 0 {
			t.Errorf("EXCLUSIVE CREATE of a lock file: status %d, want OK", got)
		}
		if _, err := os.Stat(filepath.Join(scratch, "vm1", ".lck-0000000000000001")); err != nil {
			t.Errorf("the lock file in the scratch directory: %v", err)
		}
		if got := c.nfs(t, procCreate, lock...); got != nfsErrExist {
			t.Errorf("EXCLUSIVE CREATE of an existing file: status %d, want NFS3ERR_EXIST", got)
		}
		stat, body := c.call(t, progNFS, 3, procFSStat, opaque(root))
		if stat != acceptSuccess || len(body) < 4+84+8 || binary.BigEndian.Uint32(body) != 0 {
			t.Fatalf("FSSTAT: accept_stat %d, reply %x", stat, body)
		}
		// status, post_op_attr (1 and an 84-byte fattr3), then tbytes.
		if total := binary.BigEndian.Uint64(body[4+4+84:]); total < diskSize {
			t.Errorf("FSSTAT: total bytes %d, less than the disk", total)
		}
		if got := c.nfs(t, procSetattr, opaque(flatFH), sattrSize(diskSize), u32(0)); got != 0 {
			t.Errorf("SETATTR of the flat file's own size: status %d, want OK", got)
		}
		if entries, _ := os.ReadDir(scratch); len(entries) != 1 {
			t.Errorf("scratch directory holds %d entries, want only vm1's", len(entries))
		}
		if got := listing(t, port, "vm1"); got["vm1.vmdk"] != int64(len(desc)) || got["vm1-flat.vmdk"] != diskSize {
			t.Errorf("nfs-ls /vm1 after the refusals: %v", got)
		}
	})

	t.Run("bad calls", func(t *testing.T) {
		// Each of these closes its connection or gets an RPC error; the
		// server must go on serving.
		c := dialRPC(t, port)
		if stat, _ := c.call(t, 100099, 1, 0); stat != acceptProgUnavail {
			t.Errorf("unknown program: accept_stat %d, want PROG_UNAVAIL", stat)
		}
		if stat, _ := c.call(t, progNFS, 4, 0); stat != acceptProgMismatch {
			t.Errorf("NFSv4: accept_stat %d, want PROG_MISMATCH", stat)
		}
		if stat, _ := c.call(t, progNFS, 3, 99); stat != acceptProcUnavail {
			t.Errorf("NFSv3 procedure 99: accept_stat %d, want PROC_UNAVAIL", stat)
		}
		for what, rec := range map[string][]byte{
			"a fragment that is not the last": append(u32(100), make([]byte, 100)...),
			"a 2 GiB record":                  u32(lastFragment | (1<<31 - 1)),
			"a record too short":              append(u32(lastFragment|8), make([]byte, 8)...),
			"a 4 GiB mount path":              record(callHeader(7, progMount, 3, 1), u32(0xffffffff)),
			"a 2 GiB file name":               record(callHeader(8, progNFS, 3, procLookup), opaque(root4()), u32(1<<31-1)),
			"a 1 GiB write":                   record(callHeader(9, progNFS, 3, procWrite), opaque(root4()), u64(0), u32(1<<30), u32(2), u32(1<<30)),
			"a 1 MiB credential":              record(callHeader(10, progNFS, 3, 0)[:24], u32(1), u32(1<<20)),
		} {
			conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = conn.Write(rec)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := conn.Read(make([]byte, 64)); err == nil {
				t.Errorf("%s: answered %d bytes, want the connection closed", what, n)
			}
			conn.Close()
		}
		if got := listing(t, port, "vm1"); got["vm1-flat.vmdk"] != diskSize {
			t.Errorf("nfs-ls /vm1 after bad calls: %v", got)
		}
	})

	t.Run("remove", func(t *testing.T) {
		c := dialRPC(t, port)
		dirFH := c.lookup(t, c.mount(t, "/vm1"), ".")
		flatFH := c.lookup(t, dirFH, "vm1-flat.vmdk")
		if err := s.Remove("vm1"); err != nil {
			t.Fatal(err)
		}
		if err := s.Remove("vm1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Remove: %v, want ErrNotFound", err)
		}
		for what, fh := range map[string][]byte{"directory": dirFH, "flat file": flatFH} {
			if got := c.nfs(t, procGetattr, opaque(fh)); got != nfsErrStale {
				t.Errorf("GETATTR of the removed export's %s: status %d, want NFS3ERR_STALE", what, got)
			}
		}
		if root := listing(t, port, ""); len(root) != 0 {
			t.Errorf("nfs-ls / after Remove: %v, want nothing", root)
		}
		if _, err := os.Stat(filepath.Join(scratch, "vm1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the removed export's scratch directory: %v, want it gone", err)
		}
		// The disk itself is the caller's: untouched.
		got := make([]byte, diskSize)
		if _, err := disk.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Errorf("the disk changed with Remove: %v", err)
		}
	})
}

// TestAllow: a client whose address is not allowed is refused at once.
func TestAllow(t *testing.T) {
	needTools(t)
	disk, _ := newDisk(t, 1<<20)
	for _, tc := range []struct {
		allow string
		ok    bool
	}{{"192.0.2.0/24", false}, {"127.0.0.0/8", true}} {
		s, err := New(Options{ScratchDir: t.TempDir(), Allow: []netip.Prefix{netip.MustParsePrefix(tc.allow)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Add("vm1", disk); err != nil {
			t.Fatal(err)
		}
		l, port := listen(t, "127.0.0.1:0")
		serve(t, s, l)
		out, err := exec.Command("nfs-ls", nfsURL(port, "")).CombinedOutput()
		if (err == nil) != tc.ok {
			t.Errorf("nfs-ls from 127.0.0.1 with Allow %s: %v, want success %v\n%s", tc.allow, err, tc.ok, out)
		}
	}
}

// randomLoopback returns a random address in 127.0.0.0/8, so that a
// listener on a fixed port (111) meets no other.
func randomLoopback(t testing.TB) string {
	n, err := rand.Int(rand.Reader, big.NewInt(250*250))
	if err != nil {
		t.Fatal(err)
	}
	i := int(n.Int64())
	return fmt.Sprintf("127.%d.%d.%d", 1+i/250, 1+i%250, 1+i%249)
}

// A small ONC RPC client, enough to send the calls whose exact status the
// tests check.

const (
	procGetattr = 1
	procSetattr = 2
	procLookup  = 3
	procWrite   = 7
	procMkdir   = 9
	procRemove  = 12
	procRename  = 14
	procFSStat  = 18

	nfsErrNoEnt = 2
	nfsErrIO    = 5
	nfsErrAcces = 13
	nfsErrExist = 17
	nfsErrInval = 22
	nfsErrFBig  = 27
	nfsErrStale = 70
)

type rpcClient struct {
	conn net.Conn
	xid  uint32
}

func dialRPC(t *testing.T, port int) *rpcClient {
	t.Helper()
	return dialRPCAt(t, fmt.Sprintf("127.0.0.1:%d", port))
}

func dialRPCAt(t *testing.T, addr string) *rpcClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rpcClient{conn: conn}
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func opaque(b []byte) []byte {
	out := append(u32(uint32(len(b))), b...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return out
}

func str(s string) []byte { return opaque([]byte(s)) }

// sattrSize is a sattr3 that sets only the size.
func sattrSize(size uint64) []byte {
	return bytes.Join([][]byte{u32(0), u32(0), u32(0), u32(1), u64(size), u32(0), u32(0)}, nil)
}

// root4 is the root's handle.
func root4() []byte { return []byte{handleVersion, byte(kindRoot), 0, 0} }

func callHeader(xid, prog, vers, proc uint32) []byte {
	return bytes.Join([][]byte{u32(xid), u32(0), u32(2), u32(prog), u32(vers), u32(proc), u32(0), u32(0), u32(0), u32(0)}, nil)
}

func record(parts ...[]byte) []byte {
	body := bytes.Join(parts, nil)
	return append(u32(lastFragment|uint32(len(body))), body...)
}

// call sends a call and returns the reply's accept_stat and what follows.
func (c *rpcClient) call(t *testing.T, prog, vers, proc uint32, args ...[]byte) (uint32, []byte) {
	t.Helper()
	c.xid++
	if _, err := c.conn.Write(record(append([][]byte{callHeader(c.xid, prog, vers, proc)}, args...)...)); err != nil {
		t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var rec []byte
	for {
		var mark [4]byte
		if _, err := io.ReadFull(c.conn, mark[:]); err != nil {
			t.Fatalf("reading the reply: %v", err)
		}
		m := binary.BigEndian.Uint32(mark[:])
		frag := make([]byte, m&^lastFragment)
		if _, err := io.ReadFull(c.conn, frag); err != nil {
			t.Fatalf("reading the reply: %v", err)
		}
		rec = append(rec, frag...)
		if m&lastFragment != 0 {
			break
		}
	}
	words := func(i int) uint32 { return binary.BigEndian.Uint32(rec[4*i:]) }
	if len(rec) < 24 || words(0) != c.xid || words(1) != 1 || words(2) != 0 {
		t.Fatalf("reply %x: not an accepted reply to call %d", rec, c.xid)
	}
	verfLen := int(words(4)+3) &^ 3
	rest := rec[20+verfLen:]
	return binary.BigEndian.Uint32(rest), rest[4:]
}

// nfs makes an NFSv3 call and returns its status.
func (c *rpcClient) nfs(t *testing.T, proc uint32, args ...[]byte) uint32 {
	t.Helper()
	stat, body := c.call(t, progNFS, 3, proc, args...)
	if stat != acceptSuccess || len(body) < 4 {
		t.Fatalf("NFS procedure %d: accept_stat %d", proc, stat)
	}
	return binary.BigEndian.Uint32(body)
}

// handleAfterStatus reads the handle that follows an OK status.
func handleAfterStatus(t *testing.T, what string, body []byte) []byte {
	t.Helper()
	if len(body) < 8 || !bytes.Equal(body[:4], u32(0)) {
		t.Fatalf("%s: reply %x", what, body)
	}
	n := int(binary.BigEndian.Uint32(body[4:]))
	if n > len(body)-8 {
		t.Fatalf("%s: reply %x", what, body)
	}
	return body[8 : 8+n]
}

func (c *rpcClient) mount(t *testing.T, path string) []byte {
	t.Helper()
	stat, body := c.call(t, progMount, 3, 1, str(path))
	if stat != acceptSuccess {
		t.Fatalf("MNT %s: accept_stat %d", path, stat)
	}
	return handleAfterStatus(t, "MNT "+path, body)
}

func (c *rpcClient) lookup(t *testing.T, dir []byte, name string) []byte {
	t.Helper()
	stat, body := c.call(t, progNFS, 3, procLookup, opaque(dir), str(name))
	if stat != acceptSuccess {
		t.Fatalf("LOOKUP %s: accept_stat %d", name, stat)
	}
	return handleAfterStatus(t, "LOOKUP "+name, body)
}

// panicDisk panics on every read: a bug in a Disk must cost the client its
// call, not the appliance its process.
type panicDisk struct{ *fileDisk }

func (panicDisk) ReadAt([]byte, int64) (int, error) { panic("disk bug") }

func TestDiskPanic(t *testing.T) {
	needTools(t)
	disk, _ := newDisk(t, 1<<20)
	s, err := New(Options{ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("bad", panicDisk{disk}); err != nil {
		t.Fatal(err)
	}
	l, port := listen(t, "127.0.0.1:0")
	serve(t, s, l)
	out, err := exec.Command("nfs-cat", nfsURL(port, "bad/bad-flat.vmdk")).CombinedOutput()
	if err == nil {
		t.Fatalf("nfs-cat of a disk that panics succeeded: %q", out)
	}
	if got := listing(t, port, "bad"); got["bad-flat.vmdk"] != 1<<20 {
		t.Errorf("nfs-ls after the panic: %v", got)
	}
}

// TestHandlesOutliveRestart: the handles a client holds stay valid on a
// new Server (an appliance restart) that adds the same export again, so
// that ESXi's open files do not go stale; the files it made are kept.
func TestHandlesOutliveRestart(t *testing.T) {
	disk, _ := newDisk(t, 1<<20)
	scratch := t.TempDir()
	var flatFH, vmxFH []byte
	for i := range 2 {
		s, err := New(Options{ScratchDir: scratch})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Add("vm1", disk); err != nil {
			t.Fatal(err)
		}
		l, port := listen(t, "127.0.0.1:0")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, l) }()
		c := dialRPC(t, port)
		if i == 0 {
			dir := c.lookup(t, c.mount(t, "/vm1"), ".")
			flatFH = c.lookup(t, dir, "vm1-flat.vmdk")
			stat, body := c.call(t, progNFS, 3, procCreate, opaque(dir), str("vm1.vmx"), u32(createGuarded), make([]byte, 24))
			if stat != acceptSuccess {
				t.Fatalf("CREATE vm1.vmx: accept_stat %d", stat)
			}
			// status, handle_follows, then the handle.
			vmxFH = handleAfterStatus(t, "CREATE vm1.vmx", append(body[:4:4], body[8:]...))
		} else {
			for what, fh := range map[string][]byte{"flat file": flatFH, "vm1.vmx": vmxFH} {
				if got := c.nfs(t, procGetattr, opaque(fh)); got != 0 {
					t.Errorf("GETATTR of the %s's handle after the restart: status %d, want OK", what, got)
				}
			}
		}
		c.conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// TestDiscard: the scratch files of an export not served are deleted; a
// served export and names that are no export's are refused.
func TestDiscard(t *testing.T) {
	scratch := t.TempDir()
	s, err := New(Options{ScratchDir: scratch})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gone", "served"} {
		if err := os.MkdirAll(filepath.Join(scratch, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(scratch, name, "vm.vmx"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	disk, _ := newDisk(t, 1<<20)
	if err := s.Add("served", disk); err != nil {
		t.Fatal(err)
	}
	if err := s.Discard("gone"); err != nil {
		t.Errorf("Discard: %v", err)
	}
	if _, err := os.Stat(filepath.Join(scratch, "gone")); !os.IsNotExist(err) {
		t.Errorf("scratch directory after Discard: %v", err)
	}
	if err := s.Discard("served"); !errors.Is(err, ErrExists) {
		t.Errorf("Discard of a served export: %v, want ErrExists", err)
	}
	for _, bad := range []string{"..", ".", "", "a/b", "../x"} {
		if err := s.Discard(bad); err == nil {
			t.Errorf("Discard(%q) succeeded", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(scratch, "served", "vm.vmx")); err != nil {
		t.Errorf("a served export's files after the refusals: %v", err)
	}
}

// TestLinkAndMknodRefused: LINK and MKNOD are answered NOTSUPP by the
// server itself, whatever their arguments claim: go-nfs would decode a
// LINK's arguments otherwise than RFC 1813 and allocate a length it never
// checks (4 GiB from a 60-byte call).
func TestLinkAndMknodRefused(t *testing.T) {
	needTools(t)
	d, _ := newDisk(t, 1<<20)
	s, err := New(Options{ScratchDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("vm1", d); err != nil {
		t.Fatal(err)
	}
	l, port := listen(t, "127.0.0.1:0")
	serve(t, s, l)
	c := dialRPC(t, port)
	for _, tc := range []struct {
		proc uint32
		args [][]byte
	}{
		// LINK as go-nfs reads it: a handle, a name, attributes, then a
		// target of 4 GiB.
		{nfsProcLink, [][]byte{opaque(root4()), str("x"), make([]byte, 28), u32(0xfffffff0)}},
		{nfsProcLink, [][]byte{opaque(root4()), opaque(root4()), str("x")}},
		{nfsProcMknod, [][]byte{opaque(root4()), str("dev"), u32(3)}},
	} {
		if stat := c.nfs(t, tc.proc, tc.args...); stat != nfs3ErrNotSupp {
			t.Errorf("procedure %d: status %d, want NOTSUPP", tc.proc, stat)
		}
	}
	if got := listing(t, port, "vm1"); len(got) != 2 {
		t.Errorf("after the refused calls the export lists %v", got)
	}
}
