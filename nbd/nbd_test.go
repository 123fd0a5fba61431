package nbd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fileSource serves the files of a directory, one export per file name,
// with holes from SEEK_DATA/SEEK_HOLE: real files, as the PE adapters will.
// Files named *.rw are writable exports.
type fileSource struct{ dir string }

func (s fileSource) List(ctx context.Context) ([]ExportInfo, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []ExportInfo
	for _, e := range entries {
		out = append(out, ExportInfo{Name: e.Name(), Description: "file " + e.Name(), Writable: strings.HasSuffix(e.Name(), ".rw")})
	}
	return out, nil
}

func (s fileSource) Open(ctx context.Context, name string) (Export, error) {
	if name == "" || strings.ContainsAny(name, "/") {
		return nil, ErrUnknownExport
	}
	writable := strings.HasSuffix(name, ".rw")
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(filepath.Join(s.dir, name), flag, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrUnknownExport
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	fe := &fileExport{f: f, size: st.Size()}
	if writable {
		return &writableFileExport{fe}, nil
	}
	return fe, nil
}

// writableFileExport writes through to its file and zeroes with fallocate.
type writableFileExport struct{ *fileExport }

func (e *writableFileExport) WriteAt(p []byte, off int64) (int, error) { return e.f.WriteAt(p, off) }
func (e *writableFileExport) Flush() error                             { return e.f.Sync() }

func (e *writableFileExport) Zero(off, length int64, punch bool) error {
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if punch {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	return unix.Fallocate(int(e.f.Fd()), mode, off, length)
}

type fileExport struct {
	f    *os.File
	size int64
}

func (e *fileExport) ReadAt(p []byte, off int64) (int, error) { return e.f.ReadAt(p, off) }
func (e *fileExport) Size() int64                             { return e.size }
func (e *fileExport) Close() error                            { return e.f.Close() }

func (e *fileExport) Allocation(ctx context.Context, off, length int64) ([]Extent, error) {
	var out []Extent
	end := off + length
	fd := int(e.f.Fd())
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO || err == nil && data >= end {
			out = append(out, Extent{Length: end - off, Flags: StateHole | StateZero})
			break
		}
		if err != nil {
			return nil, err
		}
		if data > off {
			out = append(out, Extent{Length: data - off, Flags: StateHole | StateZero})
			off = data
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		hole = min(hole, end)
		out = append(out, Extent{Length: hole - off})
		off = hole
	}
	return out, nil
}

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"nbdinfo", "nbdcopy", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y libnbd-bin qemu-utils", tool)
		}
	}
}

// serve starts a server over dir on a loopback port and returns its
// address. Anonymous clients may write: TestClientCertificates tests who
// may do what.
func serve(t *testing.T, dir string) string {
	t.Helper()
	return serveWith(t, fileSource{dir}, Options{Anonymous: AnonymousReadWrite})
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// sparseImage writes a file of size bytes with data at the given offsets.
func sparseImage(t *testing.T, path string, size int64, chunks map[int64]int) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, n := range chunks {
		b := bytes.Repeat([]byte(fmt.Sprintf("%016x", off)), n/16)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

func fileSum(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

func TestNBDClients(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	exports := filepath.Join(dir, "exports")
	os.Mkdir(exports, 0o755)
	const mib = 1 << 20
	want := sparseImage(t, filepath.Join(exports, "disk.img"), 1<<30, map[int64]int{0: mib, 100 * mib: 4 * mib, 1<<30 - mib: mib})
	sparseImage(t, filepath.Join(exports, "small.img"), 64*1024, map[int64]int{4096: 4096})
	addr := serve(t, exports)
	uri := "nbd://" + addr + "/disk.img"

	out := run(t, "nbdinfo", "--list", "nbd://"+addr)
	for _, s := range []string{"export=\"disk.img\"", "description: file disk.img", "export=\"small.img\""} {
		if !strings.Contains(out, s) {
			t.Errorf("nbdinfo --list lacks %s:\n%s", s, out)
		}
	}
	out = run(t, "nbdinfo", uri)
	for _, s := range []string{"export-size: 1073741824", "is_read_only: true", "can_multi_conn: true", "base:allocation"} {
		if !strings.Contains(out, s) {
			t.Errorf("nbdinfo lacks %s:\n%s", s, out)
		}
	}
	// --map reports the file's data and holes exactly.
	out = run(t, "nbdinfo", "--map", "nbd://"+addr+"/small.img")
	wantMap := []string{"0        4096    3  hole,zero", "4096        4096    0  data", "8192       57344    3  hole,zero"}
	for _, s := range wantMap {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(s), " ")) {
			t.Errorf("nbdinfo --map lacks %q:\n%s", s, out)
		}
	}

	// nbdcopy and qemu-img read the same bytes as the file.
	copied := filepath.Join(dir, "copy.img")
	run(t, "nbdcopy", uri, copied)
	if got := fileSum(t, copied); !bytes.Equal(got, want) {
		t.Error("nbdcopy copy differs from the export")
	}
	converted := filepath.Join(dir, "conv.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, converted)
	if got := fileSum(t, converted); !bytes.Equal(got, want) {
		t.Error("qemu-img convert copy differs from the export")
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", filepath.Join(exports, "disk.img"), uri)
	run(t, "nbdcopy", "-C", "1", "--request-size=4194304", uri, "null:")
}

// rawHandshake connects and does the fixed newstyle greeting.
func rawHandshake(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(hello[:]) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		t.Fatalf("greeting %x", hello)
	}
	binary.Write(c, binary.BigEndian, uint32(flagFixedNewstyle|flagNoZeroes))
	return c
}

func sendOption(c net.Conn, opt uint32, data []byte) {
	var h [16]byte
	binary.BigEndian.PutUint64(h[0:], magicOpt)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], uint32(len(data)))
	c.Write(append(h[:], data...))
}

func readOptReply(t *testing.T, c net.Conn) (typ uint32, data []byte) {
	t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("option reply: %v", err)
	}
	if binary.BigEndian.Uint64(h[:]) != magicOptReply {
		t.Fatalf("option reply magic %x", h[:8])
	}
	data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	io.ReadFull(c, data)
	return binary.BigEndian.Uint32(h[12:]), data
}

func TestMalformedInput(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "a.img"), 1<<20, map[int64]int{0: 4096})
	addr := serve(t, dir)

	// Unknown option: ERR_UNSUP, and the connection goes on.
	c := rawHandshake(t, addr)
	sendOption(c, 99, nil)
	if typ, _ := readOptReply(t, c); typ != repErrUnsup {
		t.Errorf("unknown option: reply %#x", typ)
	}
	// Oversized option: ERR_TOO_BIG after the server skipped it.
	sendOption(c, optList, make([]byte, maxOptionLength+1))
	if typ, _ := readOptReply(t, c); typ != repErrTooBig {
		t.Errorf("oversized option: reply %#x", typ)
	}
	// INFO for an unknown export.
	name := "nope"
	info := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	info = append(append(info, name...), 0, 0)
	sendOption(c, optInfo, info)
	if typ, _ := readOptReply(t, c); typ != repErrUnknown {
		t.Errorf("unknown export: reply %#x", typ)
	}
	// Bad option magic: the server hangs up.
	c.Write(bytes.Repeat([]byte{0xAA}, 16))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("server kept talking after a bad option magic")
	}
	c.Close()

	// In transmission: bad request, out-of-range read, unknown command,
	// then a client that vanishes mid-request.
	c = rawHandshake(t, addr)
	sendOption(c, optExportName, []byte("a.img"))
	var ex [10]byte
	if _, err := io.ReadFull(c, ex[:]); err != nil || binary.BigEndian.Uint64(ex[:]) != 1<<20 {
		t.Fatalf("EXPORT_NAME reply %x, %v", ex, err)
	}
	req := func(typ uint16, off uint64, length uint32) uint32 {
		var b [28]byte
		binary.BigEndian.PutUint32(b[0:], magicRequest)
		binary.BigEndian.PutUint16(b[6:], typ)
		binary.BigEndian.PutUint64(b[8:], 7)
		binary.BigEndian.PutUint64(b[16:], off)
		binary.BigEndian.PutUint32(b[24:], length)
		c.Write(b[:])
		var r [16]byte
		if _, err := io.ReadFull(c, r[:]); err != nil {
			t.Fatalf("reply to command %d: %v", typ, err)
		}
		errno := binary.BigEndian.Uint32(r[4:])
		if errno == 0 && typ == cmdRead {
			io.ReadFull(c, make([]byte, length))
		}
		return errno
	}
	if e := req(cmdRead, 1<<20-10, 20); e != errInval {
		t.Errorf("read past end: errno %d", e)
	}
	if e := req(cmdRead, 0, 0); e != errInval {
		t.Errorf("zero-length read: errno %d", e)
	}
	if e := req(42, 0, 512); e != errInval {
		t.Errorf("unknown command: errno %d", e)
	}
	if e := req(cmdRead, 0, 4096); e != 0 {
		t.Errorf("good read after errors: errno %d", e)
	}
	c.Write([]byte{0x25, 0x60}) // half a request, then gone
	c.Close()

	// The server still serves.
	out := run(t, "nbdinfo", "nbd://"+addr+"/a.img")
	if !strings.Contains(out, "export-size: 1048576") {
		t.Errorf("after malformed clients: %s", out)
	}
}
