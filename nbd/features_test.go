package nbd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const mib = 1 << 20

// serveWith starts a server for src with opts on a loopback port.
func serveWith(t *testing.T, src Source, opts Options) string {
	t.Helper()
	_, addr := startServerOf(t, src, opts)
	return addr
}

// rawClient speaks the protocol byte by byte, for what Debian's libnbd
// (1.14) cannot do: extended headers arrived in libnbd 1.16.
type rawClient struct {
	t *testing.T
	c net.Conn
}

func (rc *rawClient) option(code uint32, data []byte) (typ uint32, reply []byte) {
	rc.t.Helper()
	sendOption(rc.c, code, data)
	return readOptReply(rc.t, rc.c)
}

// goExport sends GO and returns the export's size and transmission flags.
func (rc *rawClient) goExport(name string) (size uint64, flags uint16) {
	rc.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(append(b, name...), 0, 0)
	sendOption(rc.c, optGo, b)
	for {
		typ, data := readOptReply(rc.t, rc.c)
		switch {
		case typ == repAck:
			return size, flags
		case typ == repInfo && binary.BigEndian.Uint16(data) == infoExport:
			size, flags = binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:])
		case typ != repInfo:
			rc.t.Fatalf("GO %s: reply %#x %q", name, typ, data)
		}
	}
}

// extRequest sends an extended request header and its payload.
func (rc *rawClient) extRequest(flags, typ uint16, cookie, off, length uint64, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicExtRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint64(b, length)
	if _, err := rc.c.Write(append(b, payload...)); err != nil {
		rc.t.Fatal(err)
	}
}

type extChunk struct {
	flags, typ  uint16
	cookie, off uint64
	payload     []byte
}

func (rc *rawClient) extReply() extChunk {
	rc.t.Helper()
	var h [32]byte
	if _, err := io.ReadFull(rc.c, h[:]); err != nil {
		rc.t.Fatalf("extended reply: %v", err)
	}
	if m := binary.BigEndian.Uint32(h[:]); m != magicExtReply {
		rc.t.Fatalf("extended reply magic %#x", m)
	}
	ch := extChunk{
		flags:  binary.BigEndian.Uint16(h[4:]),
		typ:    binary.BigEndian.Uint16(h[6:]),
		cookie: binary.BigEndian.Uint64(h[8:]),
		off:    binary.BigEndian.Uint64(h[16:]),
	}
	n := binary.BigEndian.Uint64(h[24:])
	if n > 64*mib {
		rc.t.Fatalf("reply payload of %d bytes", n)
	}
	ch.payload = make([]byte, n)
	if _, err := io.ReadFull(rc.c, ch.payload); err != nil {
		rc.t.Fatalf("reply payload: %v", err)
	}
	return ch
}

// errnoOf returns the error of a one-chunk reply, 0 for success.
func (rc *rawClient) errnoOf(ch extChunk) uint32 {
	rc.t.Helper()
	if ch.flags&replyFlagDone == 0 {
		rc.t.Fatalf("single-chunk reply without DONE: %+v", ch)
	}
	if ch.typ == replyError {
		return binary.BigEndian.Uint32(ch.payload)
	}
	return 0
}

func TestExtendedHeaders(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.rw")
	sparseImage(t, path, 16*mib, map[int64]int{mib: mib})
	addr := serveWith(t, fileSource{dir}, Options{Anonymous: AnonymousReadWrite})
	rc := &rawClient{t, rawHandshake(t, addr)}
	defer rc.c.Close()

	if typ, _ := rc.option(optExtendedHeaders, []byte{1}); typ != repErrInvalid {
		t.Errorf("EXTENDED_HEADERS with data: reply %#x", typ)
	}
	if typ, _ := rc.option(optExtendedHeaders, nil); typ != repAck {
		t.Fatalf("EXTENDED_HEADERS: reply %#x", typ)
	}
	if typ, _ := rc.option(optStructuredReply, nil); typ != repErrExtHeaderReqd {
		t.Errorf("STRUCTURED_REPLY after EXTENDED_HEADERS: reply %#x", typ)
	}
	q := binary.BigEndian.AppendUint32(nil, 4)
	q = append(q, "x.rw"...)
	q = binary.BigEndian.AppendUint32(q, 1)
	q = binary.BigEndian.AppendUint32(q, uint32(len(contextBaseAllocation)))
	q = append(q, contextBaseAllocation...)
	sendOption(rc.c, optSetMetaContext, q)
	if typ, data := readOptReply(t, rc.c); typ != repMetaContext || binary.BigEndian.Uint32(data) != 1 || string(data[4:]) != contextBaseAllocation {
		t.Fatalf("SET_META_CONTEXT: %#x %q", typ, data)
	}
	if typ, _ := readOptReply(t, rc.c); typ != repAck {
		t.Fatalf("SET_META_CONTEXT end: %#x", typ)
	}
	size, flags := rc.goExport("x.rw")
	if size != 16*mib {
		t.Errorf("size %d", size)
	}
	want := uint16(tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero)
	if flags&want != want || flags&tflagReadOnly != 0 {
		t.Errorf("transmission flags %#x of a writable export", flags)
	}

	// READ: the extended header repeats the request's offset.
	rc.extRequest(0, cmdRead, 1, mib+8, 4096, nil)
	ch := rc.extReply()
	if ch.typ != replyOffsetData || ch.flags != replyFlagDone || ch.cookie != 1 || ch.off != mib+8 {
		t.Fatalf("read reply %+v", ch)
	}
	file, _ := os.ReadFile(path)
	if got := ch.payload[8:]; binary.BigEndian.Uint64(ch.payload) != mib+8 || !bytes.Equal(got, file[mib+8:mib+8+4096]) {
		t.Error("read returned wrong bytes")
	}

	// BLOCK_STATUS: 64-bit descriptors with a count.
	rc.extRequest(0, cmdBlockStatus, 2, 0, 16*mib, nil)
	ch = rc.extReply()
	if ch.typ != replyBlockStatusExt || ch.flags != replyFlagDone {
		t.Fatalf("block status reply %+v", ch)
	}
	p := ch.payload
	if id, n := binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:]); id != 1 || n != 3 || len(p) != 8+16*int(n) {
		t.Fatalf("block status: context %d, %d descriptors, %d bytes", id, n, len(p))
	}
	var got []string
	for d := p[8:]; len(d) > 0; d = d[16:] {
		got = append(got, fmt.Sprintf("%d/%d", binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[8:])))
	}
	if s := strings.Join(got, " "); s != fmt.Sprintf("%d/3 %d/0 %d/3", mib, mib, 14*mib) {
		t.Errorf("block status descriptors %s", s)
	}

	// WRITE carries its payload with PAYLOAD_LEN, and without it as
	// qemu sends it (TestExtendedPayloads has the rest).
	data := bytes.Repeat([]byte("w"), 4096)
	rc.extRequest(cmdFlagPayloadLen|cmdFlagFUA, cmdWrite, 3, 4*mib, 4096, data)
	if e := rc.errnoOf(rc.extReply()); e != 0 {
		t.Errorf("write: errno %d", e)
	}
	rc.extRequest(cmdFlagFUA, cmdWrite, 4, 4*mib+4096, 4096, data)
	if e := rc.errnoOf(rc.extReply()); e != 0 {
		t.Errorf("write without PAYLOAD_LEN: errno %d", e)
	}
	rc.extRequest(cmdFlagPayloadLen, cmdRead, 5, 0, 8, make([]byte, 8))
	if e := rc.errnoOf(rc.extReply()); e != errInval {
		t.Errorf("read with a payload: errno %d", e)
	}
	// WRITE_ZEROES with FAST_ZERO punches the data away.
	rc.extRequest(cmdFlagFastZero, cmdWriteZeroes, 6, mib, mib, nil)
	if e := rc.errnoOf(rc.extReply()); e != 0 {
		t.Errorf("write zeroes: errno %d", e)
	}
	rc.extRequest(0, cmdWrite, 7, 16*mib-10, 20, make([]byte, 20))
	if e := rc.errnoOf(rc.extReply()); e != errNoSpc {
		t.Errorf("write past the end: errno %d", e)
	}
	rc.extRequest(0, cmdFlush, 8, 0, 0, nil)
	if e := rc.errnoOf(rc.extReply()); e != 0 {
		t.Errorf("flush: errno %d", e)
	}
	rc.extRequest(0, cmdDisc, 9, 0, 0, nil)
	if _, err := rc.c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after DISC: %v", err)
	}

	file, _ = os.ReadFile(path)
	if !bytes.Equal(file[4*mib:4*mib+8192], bytes.Repeat(data, 2)) {
		t.Error("write did not reach the file")
	}
	if !bytes.Equal(file[mib:2*mib], make([]byte, mib)) {
		t.Error("write zeroes left data")
	}
}

func TestWritableExport(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	want := sparseImage(t, src, 256*mib, map[int64]int{0: mib, 17 * mib: 3 * mib, 255 * mib: mib})
	target := filepath.Join(dir, "target.rw")
	// Stale data in the target must be overwritten or zeroed by the copy.
	sparseImage(t, target, 256*mib, map[int64]int{5 * mib: mib, 100 * mib: 2 * mib})
	addr := serve(t, dir)
	uri := "nbd://" + addr + "/target.rw"

	out := run(t, "nbdinfo", uri)
	for _, s := range []string{"is_read_only: false", "can_flush: true", "can_fua: true", "can_trim: true", "can_zero: true", "can_fast_zero: true"} {
		if !strings.Contains(out, s) {
			t.Errorf("nbdinfo lacks %s:\n%s", s, out)
		}
	}
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	if got := fileSum(t, target); !bytes.Equal(got, want) {
		t.Error("qemu-img convert into the export: target differs from source")
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)

	// nbdcopy zeroes what the source has not (it uses WRITE_ZEROES).
	sparseImage(t, target, 256*mib, map[int64]int{9 * mib: mib})
	run(t, "nbdcopy", src, uri)
	if got := fileSum(t, target); !bytes.Equal(got, want) {
		t.Error("nbdcopy into the export: target differs from source")
	}
}

// nbdsh runs a Python script with libnbd's shell, which comes with
// python3-libnbd. It runs the distribution's python3, whatever is first in
// PATH, as that is where the nbd module is installed.
func nbdsh(t *testing.T, script string, env ...string) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/nbdsh"); err != nil {
		t.Fatal("nbdsh missing: apt-get install -y python3-libnbd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/nbdsh", "-n", "-c", script)
	cmd.Env = append(append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH")), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}
	return string(out)
}

// edgeCases is run by nbdsh against a read-only and a writable export.
// Strict mode off lets libnbd send what a broken client would.
const edgeCases = `
import errno, os
def connect(name, contexts=()):
    h = nbd.NBD()
    h.set_strict_mode(0)
    for c in contexts:
        h.add_meta_context(c)
    h.connect_uri(os.environ["ADDR"] + "/" + name)
    return h

def expect_errno(want, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        assert e.errnum == want, "%s: errno %s, want %s" % (fn.__name__, e.errnum, want)
        return
    raise AssertionError("%s succeeded, want errno %d" % (fn.__name__, want))

h = connect("a.img", ["base:allocation"])
size = h.get_size()
expect_errno(errno.EINVAL, h.pread, 512, size - 256)
expect_errno(errno.EINVAL, h.pread, 0, 0)
expect_errno(errno.EPERM, h.pwrite, b"x" * 512, 0)
expect_errno(errno.EPERM, h.zero, 512, 0)
expect_errno(errno.EPERM, h.trim, 512, 0)
expect_errno(errno.EINVAL, h.block_status, 512, size, lambda *a: 0)
# Misaligned reads are fine: the minimum block size is 1.
assert h.pread(3, 4097) == bytes(3), "misaligned read"
assert h.pread(4096, 4096, flags=nbd.CMD_FLAG_DF) == h.pread(4096, 4096)
h.cache(4096, 0)
h.flush()
seen = []
h.block_status(size, 0, lambda ctx, off, ents, err: seen.append(list(ents)), flags=nbd.CMD_FLAG_REQ_ONE)
assert len(seen) == 1 and len(seen[0]) == 2 and seen[0][0] <= size, "REQ_ONE: %r" % seen
# Requests in flight at once, answered out of order if the server likes.
bufs = [nbd.Buffer(4096) for _ in range(32)]
cookies = [h.aio_pread(bufs[i], (i % 16) * 4096) for i in range(32)]
for c in cookies:
    while not h.aio_command_completed(c):
        h.poll(-1)
first = h.pread(4096, 0)
assert all(bytes(bufs[i].to_bytearray()) == (first if i % 16 == 0 else bytes(4096)) for i in range(32))
h.shutdown()

w = connect("w.rw")
assert not w.is_read_only() and w.can_zero() and w.can_fast_zero() and w.can_trim()
w.pwrite(b"y" * 8192, 8192, flags=nbd.CMD_FLAG_FUA)
assert w.pread(8192, 8192) == b"y" * 8192
w.zero(4096, 8192, flags=nbd.CMD_FLAG_FAST_ZERO)
w.zero(4096, 20480, flags=nbd.CMD_FLAG_NO_HOLE)
w.trim(4096, 16384)
assert w.pread(8192, 8192) == b"\0" * 4096 + b"y" * 4096
expect_errno(errno.ENOSPC, w.pwrite, b"z" * 512, w.get_size() - 256)
w.flush()
w.shutdown()
print("edge cases ok")
`

func TestEdgeCasesNbdsh(t *testing.T) {
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "a.img"), mib, map[int64]int{0: 4096})
	sparseImage(t, filepath.Join(dir, "w.rw"), mib, nil)
	addr := serve(t, dir)
	if out := nbdsh(t, edgeCases, "ADDR=nbd://"+addr); !strings.Contains(out, "edge cases ok") {
		t.Errorf("nbdsh: %s", out)
	}
	// The server survived all of it.
	run(t, "nbdinfo", "nbd://"+addr+"/a.img")
}

// oddSource adds a meta context "test:odd" that flags odd MiBs.
type oddSource struct{ fileSource }

type oddExport struct{ Export }

func (s oddSource) Open(ctx context.Context, name string) (Export, error) {
	e, err := s.fileSource.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	return oddExport{e}, nil
}

func (e oddExport) Close() error { return e.Export.(io.Closer).Close() }

func (e oddExport) Allocation(ctx context.Context, off, length int64) ([]Extent, error) {
	return e.Export.(Allocator).Allocation(ctx, off, length)
}

func (oddExport) MetaContexts(ctx context.Context) ([]string, error) {
	return []string{"test:odd", "test:other"}, nil
}

func (e oddExport) MetaStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	if name != "test:odd" {
		return nil, fmt.Errorf("no context %q", name)
	}
	var out []Extent
	for end := off + length; off < end; {
		next := min((off/mib+1)*mib, end)
		out = append(out, Extent{Length: next - off, Flags: uint32(off / mib % 2)})
		off = next
	}
	return out, nil
}

func TestMetaContexts(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "a.img"), 4*mib, map[int64]int{0: 4096})
	addr := serveWith(t, oddSource{fileSource{dir}}, Options{})
	uri := "nbd://" + addr + "/a.img"
	out := run(t, "nbdinfo", uri)
	for _, s := range []string{"base:allocation", "test:odd", "test:other"} {
		if !strings.Contains(out, s) {
			t.Errorf("nbdinfo lacks context %s:\n%s", s, out)
		}
	}
	out = run(t, "nbdinfo", "--map=test:odd", uri)
	fields := strings.Join(strings.Fields(out), " ")
	for i := range 4 {
		want := fmt.Sprintf("%d %d %d", i*mib, mib, i%2)
		if !strings.Contains(fields, want) {
			t.Errorf("--map=test:odd lacks %q:\n%s", want, out)
		}
	}
	// Both contexts at once, each with its own reply chunk.
	script := `
import os
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.add_meta_context("test:odd")
h.connect_uri(os.environ["URI"])
got = {}
h.block_status(4 << 20, 0, lambda ctx, off, ents, err: got.__setitem__(ctx, list(ents)))
assert got["base:allocation"][:2] == [4096, 0], got
assert got["test:odd"] == [1 << 20, 0, 1 << 20, 1, 1 << 20, 0, 1 << 20, 1], got
print("contexts ok")
`
	if out := nbdsh(t, script, "URI="+uri); !strings.Contains(out, "contexts ok") {
		t.Errorf("nbdsh: %s", out)
	}
}

// testCA is a CA for tests and its key.
type testCA struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert, der, key}
}

// issue signs tmpl (serial and validity filled in) for a new key.
func (ca testCA) issue(t *testing.T, tmpl *x509.Certificate) (der []byte, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(2)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func (ca testCA) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
}

// testCerts writes a CA and a server certificate for 127.0.0.1, and the
// CA as libnbd wants it: ca-cert.pem in a directory.
func testCerts(t *testing.T) (*tls.Config, string) {
	t.Helper()
	dir := t.TempDir()
	ca := newTestCA(t, "astrolabe test CA")
	leafDER, key := ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err := os.WriteFile(filepath.Join(dir, "ca-cert.pem"), ca.pem(), 0o644); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}, dir
}

func TestTLS(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	want := sparseImage(t, filepath.Join(dir, "a.img"), 64*mib, map[int64]int{0: mib, 40 * mib: mib})
	cfg, certs := testCerts(t)
	tlsURI := func(addr string) string {
		return "nbds://" + addr + "/a.img?tls-certificates=" + certs
	}

	// Offered: plain and TLS clients both work.
	addr := serveWith(t, fileSource{dir}, Options{TLSConfig: cfg})
	run(t, "nbdinfo", "nbd://"+addr+"/a.img")
	out := run(t, "nbdinfo", tlsURI(addr))
	if !strings.Contains(out, "export-size: 67108864") {
		t.Errorf("nbdinfo over TLS: %s", out)
	}

	// Required: a plain client is refused, a TLS one copies the export.
	addr = serveWith(t, fileSource{dir}, Options{TLSConfig: cfg, TLSRequired: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	plain, err := exec.CommandContext(ctx, "nbdinfo", "nbd://"+addr+"/a.img").CombinedOutput()
	if err == nil {
		t.Errorf("plain client got through with TLS required:\n%s", plain)
	}
	if !strings.Contains(strings.ToLower(string(plain)), "tls") {
		t.Errorf("plain client's error does not mention TLS: %s", plain)
	}
	copied := filepath.Join(t.TempDir(), "copy.img")
	run(t, "nbdcopy", tlsURI(addr), copied)
	if got := fileSum(t, copied); !bytes.Equal(got, want) {
		t.Error("nbdcopy over TLS: copy differs")
	}
	if out := run(t, "nbdinfo", "--map", tlsURI(addr)); !strings.Contains(out, "data") {
		t.Errorf("nbdinfo --map over TLS: %s", out)
	}
}

// TestLargeSparseManyClients copies an 8 GiB image with scattered data and
// then lets 16 clients read it at once.
func TestLargeSparseManyClients(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	exports := filepath.Join(dir, "exports")
	os.Mkdir(exports, 0o755)
	const size = 8 << 30
	chunks := map[int64]int{0: mib, size - 64<<10: 64 << 10}
	rng := mrand.New(mrand.NewPCG(1, 2))
	for range 64 {
		chunks[rng.Int64N(size/4096-64)*4096] = 64 << 10
	}
	src := filepath.Join(exports, "big.img")
	want := sparseImage(t, src, size, chunks)
	addr := serve(t, exports)
	uri := "nbd://" + addr + "/big.img"

	copied := filepath.Join(dir, "copy.img")
	run(t, "nbdcopy", uri, copied)
	if got := fileSum(t, copied); !bytes.Equal(got, want) {
		t.Error("nbdcopy of the 8 GiB export differs")
	}
	converted := filepath.Join(dir, "conv.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, converted)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, converted)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)

	// 16 clients at once, each with nbdcopy's own 4 connections.
	const clients = 16
	errs := make(chan error, clients)
	for range clients {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, "nbdcopy", uri, "null:").CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%v: %s", err, out)
			}
			errs <- err
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("concurrent nbdcopy: %v", err)
		}
	}
}
