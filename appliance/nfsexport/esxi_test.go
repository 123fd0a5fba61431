package nfsexport

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// TestESXiDiskFiles: what ESXi does to a disk's two files. It rewrites the
// descriptor (a new CID after the first write; editors truncate it
// first), and after a storage vMotion it removes both. The test writes
// with qemu-img's nfs driver (SETATTR size, then WRITE), reads with
// nfs-cat and nfs-ls, and sends the calls whose status matters with the
// test's RPC client; the server is restarted (a new Server, the export
// added again) twice on the same scratch directory.
func TestESXiDiskFiles(t *testing.T) {
	needTools(t)
	const size = 4 << 20
	disk, data := newDisk(t, size)
	scratch := t.TempDir()
	host := randomLoopback(t)
	addr := host + ":111" // qemu's nfs driver asks the portmapper
	qemuDesc := "nfs://" + host + "/vm1/vm1.vmdk"
	libnfs := func(p string) string { return "nfs://" + host + "/" + p + "?version=3" }
	ls := func() map[string]int64 {
		t.Helper()
		out := run(t, "nfs-ls", libnfs("vm1"))
		got := map[string]int64{}
		for _, line := range bytes.Split(bytes.TrimSpace([]byte(out)), []byte("\n")) {
			if f := bytes.Fields(line); len(f) == 6 {
				n, _ := strconv.ParseInt(string(f[4]), 10, 64)
				got[string(f[5])] = n
			}
		}
		return got
	}
	catDesc := func() string { t.Helper(); return run(t, "nfs-cat", libnfs("vm1/vm1.vmdk")) }

	_, stop := startVM1(t, scratch, disk, addr)

	// ESXi's rewrite: a new CID and a ddb line. qemu-img writes whole
	// sectors, so the test's descriptor is padded to one.
	rewritten := esxiRewrite(t, descriptor("vm1", size), "CID=0badcafe", `ddb.toolsVersion = "12352"`)
	src := filepath.Join(t.TempDir(), "vm1.vmdk")
	if err := os.WriteFile(src, rewritten, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "resize", "-f", "raw", "--shrink", qemuDesc, strconv.Itoa(len(rewritten)))
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, qemuDesc)
	if got := catDesc(); got != string(rewritten) {
		t.Fatalf("descriptor after qemu-img wrote ESXi's version:\n%s\nwant\n%s", got, rewritten)
	}

	// A client may not point the extent at another file: refused, and the
	// descriptor stays as it was.
	elsewhere := bytes.Replace(rewritten, []byte(`"vm1-flat.vmdk"`), []byte(`"../vm2/x.vmdk"`), 1)
	if err := os.WriteFile(src, elsewhere, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := execOut("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, qemuDesc); err == nil {
		t.Errorf("qemu-img wrote a descriptor whose extent names another file:\n%s", out)
	}
	if got := catDesc(); got != string(rewritten) {
		t.Fatalf("descriptor after a refused extent change:\n%s", got)
	}

	// An editor's rewrite, call by call: truncate, then write.
	c := dialRPCAt(t, addr)
	dirFH := c.lookup(t, c.mount(t, "/"), "vm1")
	descFH := c.lookup(t, dirFH, "vm1.vmdk")
	edited := esxiRewrite(t, descriptor("vm1", size), "CID=00c0ffee", `ddb.toolsInstallType = "4"`)
	write := func(off int, b []byte) uint32 {
		return c.nfs(t, procWrite, opaque(descFH), u64(uint64(off)), u32(uint32(len(b))), u32(2), opaque(b))
	}
	if got := c.nfs(t, procSetattr, opaque(descFH), sattrSize(0), u32(0)); got != 0 {
		t.Fatalf("SETATTR size 0 of the descriptor: status %d, want OK", got)
	}
	if got := ls()["vm1.vmdk"]; got != 0 {
		t.Errorf("nfs-ls: the truncated descriptor has %d bytes", got)
	}
	// In two WRITEs that cut the extent line (a client with a small wsize).
	cut := bytes.Index(edited, []byte("VMFS"))
	if got := write(0, edited[:cut]); got != 0 {
		t.Fatalf("WRITE of the descriptor's first %d bytes: status %d, want OK", cut, got)
	}
	if got := write(cut, edited[cut:]); got != 0 {
		t.Fatalf("WRITE of the descriptor's rest: status %d, want OK", got)
	}
	if got := catDesc(); got != string(edited) {
		t.Fatalf("descriptor after truncate and rewrite:\n%s\nwant\n%s", got, edited)
	}
	extentAt := bytes.Index(edited, []byte("RW "))
	for _, ch := range []struct {
		what string
		got  func() uint32
		want uint32
	}{
		// go-nfs answers any refused WRITE with NFS3ERR_IO.
		{"WRITE of an extent on another file", func() uint32 { return write(extentAt, []byte(`RW 8192 VMFS "vm1.vmx"      `)) }, nfsErrIO},
		{"WRITE of a second extent", func() uint32 { return write(len(edited), []byte("RW 8192 VMFS \"vm1-flat.vmdk\"\n")) }, nfsErrIO},
		{"WRITE of a larger extent", func() uint32 { return write(extentAt, []byte("RW 8193")) }, nfsErrIO},
		{"SETATTR that cuts the extent's file name", func() uint32 {
			return c.nfs(t, procSetattr, opaque(descFH), sattrSize(uint64(extentAt+17)), u32(0))
		}, nfsErrAcces},
	} {
		if got := ch.got(); got != ch.want {
			t.Errorf("%s: status %d, want %d", ch.what, got, ch.want)
		}
	}
	if got := catDesc(); got != string(edited) {
		t.Fatalf("descriptor after refused changes:\n%s\nwant\n%s", got, edited)
	}
	// open(O_CREAT|O_TRUNC) of the descriptor: an UNCHECKED CREATE
	// empties it, and it is written again.
	if got := c.nfs(t, procCreate, opaque(dirFH), str("vm1.vmdk"), u32(0), sattrSize(0)); got != 0 {
		t.Fatalf("UNCHECKED CREATE of the descriptor: status %d, want OK", got)
	}
	if got := ls()["vm1.vmdk"]; got != 0 {
		t.Errorf("nfs-ls: the descriptor has %d bytes after an UNCHECKED CREATE, want 0", got)
	}
	if got := write(0, edited); got != 0 {
		t.Fatalf("WRITE of the emptied descriptor: status %d, want OK", got)
	}
	if got := catDesc(); got != string(edited) {
		t.Fatalf("descriptor rewritten after an UNCHECKED CREATE:\n%s\nwant\n%s", got, edited)
	}

	// A VM's file beside the disk, to see that listings keep it.
	vmx := filepath.Join(t.TempDir(), "vm1.vmx")
	if err := os.WriteFile(vmx, []byte("displayName = \"vm1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "nfs-cp", vmx, libnfs("vm1/vm1.vmx"))

	// Restart: the client's descriptor is served again.
	stop()
	_, stop = startVM1(t, scratch, disk, addr)
	if got := catDesc(); got != string(edited) {
		t.Fatalf("descriptor after a restart:\n%s\nwant the client's\n%s", got, edited)
	}
	want := map[string]int64{"vm1.vmdk": int64(len(edited)), "vm1-flat.vmdk": size, "vm1.vmx": 20}
	if got := ls(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("nfs-ls /vm1 after a restart: %v, want %v", got, want)
	}

	// The storage vMotion's end: ESXi removes the source disk's files.
	c = dialRPCAt(t, addr)
	dirFH = c.lookup(t, c.mount(t, "/vm1"), ".")
	flatFH := c.lookup(t, dirFH, "vm1-flat.vmdk")
	remove := func(name string) uint32 { return c.nfs(t, procRemove, opaque(dirFH), str(name)) }
	lookup := func(name string) uint32 { return c.nfs(t, procLookup, opaque(dirFH), str(name)) }
	if got := remove("vm1-flat.vmdk"); got != 0 {
		t.Fatalf("REMOVE of the flat file: status %d, want OK", got)
	}
	for _, ch := range []struct {
		what string
		got  func() uint32
		want uint32
	}{
		{"LOOKUP of the removed flat file", func() uint32 { return lookup("vm1-flat.vmdk") }, nfsErrNoEnt},
		{"GETATTR of the removed flat file's handle", func() uint32 { return c.nfs(t, procGetattr, opaque(flatFH)) }, nfsErrStale},
		{"REMOVE of the removed flat file", func() uint32 { return remove("vm1-flat.vmdk") }, nfsErrNoEnt},
		{"CREATE of the removed flat file's name", func() uint32 {
			return c.nfs(t, procCreate, opaque(dirFH), str("vm1-flat.vmdk"), u32(createGuarded), sattrSize(0))
		}, nfsErrAcces},
		{"RENAME of the descriptor", func() uint32 {
			return c.nfs(t, procRename, opaque(dirFH), str("vm1.vmdk"), opaque(dirFH), str("x.vmdk"))
		}, nfsErrAcces},
		{"REMOVE of the descriptor", func() uint32 { return remove("vm1.vmdk") }, 0},
		{"LOOKUP of the removed descriptor", func() uint32 { return lookup("vm1.vmdk") }, nfsErrNoEnt},
		{"GETATTR of the removed descriptor's handle", func() uint32 { return c.nfs(t, procGetattr, opaque(descFH)) }, nfsErrStale},
	} {
		if got := ch.got(); got != ch.want {
			t.Errorf("%s: status %d, want %d", ch.what, got, ch.want)
		}
	}
	if got := ls(); len(got) != 1 || got["vm1.vmx"] == 0 {
		t.Errorf("nfs-ls /vm1 after removing the disk files: %v, want only vm1.vmx", got)
	}
	checkDisk := func(when string) {
		t.Helper()
		got := make([]byte, size)
		if _, err := disk.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Errorf("the disk %s: %v, or its bytes changed", when, err)
		}
	}
	checkDisk("after its files were removed")

	// Restart: they stay hidden.
	stop()
	s, stop := startVM1(t, scratch, disk, addr)
	if got := ls(); len(got) != 1 || got["vm1.vmx"] == 0 {
		t.Errorf("nfs-ls /vm1 after a restart: %v, want only vm1.vmx", got)
	}
	c = dialRPCAt(t, addr)
	dirFH = c.lookup(t, c.mount(t, "/vm1"), ".")
	for _, name := range []string{"vm1.vmdk", "vm1-flat.vmdk"} {
		if got := lookup(name); got != nfsErrNoEnt {
			t.Errorf("LOOKUP of the removed %s after a restart: status %d, want NFS3ERR_NOENT", name, got)
		}
	}
	if out, err := execOut("nfs-cat", libnfs("vm1/vm1-flat.vmdk")); err == nil {
		t.Errorf("nfs-cat read the removed flat file after a restart: %d bytes", len(out))
	}

	// The appliance ends the export: its state goes with it.
	stop()
	if err := s.Remove("vm1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(scratch, "vm1")); !os.IsNotExist(err) {
		t.Errorf("the export's scratch directory after Remove: %v, want it gone", err)
	}
	checkDisk("after Remove")
}

// esxiRewrite returns desc with its CID line replaced and a ddb line
// added, padded with newlines to a whole sector.
func esxiRewrite(t *testing.T, desc []byte, cid, ddb string) []byte {
	t.Helper()
	start := bytes.Index(desc, []byte("\nCID="))
	end := bytes.IndexByte(desc[start+1:], '\n')
	if start < 0 || end < 0 {
		t.Fatalf("no CID line in\n%s", desc)
	}
	out := append(append(append([]byte{}, desc[:start+1]...), cid...), desc[start+1+end:]...)
	out = append(out, ddb+"\n"...)
	for len(out)%sectorSize != 0 {
		out = append(out, '\n')
	}
	return out
}

// startVM1 serves a new Server on scratch with disk exported as vm1, as
// the appliance does at each start; stop ends it.
func startVM1(t *testing.T, scratch string, disk Disk, addr string) (*Server, func()) {
	t.Helper()
	s, err := New(Options{ScratchDir: scratch, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Add("vm1", disk); err != nil {
		t.Fatal(err)
	}
	l, _ := listen(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
