package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// extendedClient connects to addr, negotiates extended headers and the
// base:allocation context, and enters export name.
func extendedClient(t *testing.T, addr, name string) (*rawClient, uint16) {
	t.Helper()
	return extendedClientWith(t, addr, name, contextBaseAllocation)
}

// extendedClientWith connects to addr, negotiates extended headers and
// the given meta contexts, and enters export name.
func extendedClientWith(t *testing.T, addr, name string, contexts ...string) (*rawClient, uint16) {
	t.Helper()
	rc := &rawClient{t, rawHandshake(t, addr)}
	t.Cleanup(func() { rc.c.Close() })
	if typ, _ := rc.option(optExtendedHeaders, nil); typ != repAck {
		t.Fatalf("EXTENDED_HEADERS: reply %#x", typ)
	}
	q := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	q = append(q, name...)
	q = binary.BigEndian.AppendUint32(q, uint32(len(contexts)))
	for _, c := range contexts {
		q = binary.BigEndian.AppendUint32(q, uint32(len(c)))
		q = append(q, c...)
	}
	sendOption(rc.c, optSetMetaContext, q)
	for typ := uint32(0); typ != repAck; {
		if typ, _ = readOptReply(t, rc.c); typ != repAck && typ != repMetaContext {
			t.Fatalf("SET_META_CONTEXT: reply %#x", typ)
		}
	}
	_, flags := rc.goExport(name)
	return rc, flags
}

// compactRequest sends a compact request header and its payload.
func (rc *rawClient) compactRequest(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if _, err := rc.c.Write(append(b, payload...)); err != nil {
		rc.t.Fatal(err)
	}
}

// simpleReply reads a simple reply header and returns its errno.
func (rc *rawClient) simpleReply(cookie uint64) uint32 {
	rc.t.Helper()
	var h [16]byte
	if _, err := io.ReadFull(rc.c, h[:]); err != nil {
		rc.t.Fatalf("simple reply: %v", err)
	}
	if m, c := binary.BigEndian.Uint32(h[:]), binary.BigEndian.Uint64(h[8:]); m != magicSimple || c != cookie {
		rc.t.Fatalf("simple reply magic %#x cookie %d, want cookie %d", m, c, cookie)
	}
	return binary.BigEndian.Uint32(h[4:])
}

// call sends an extended request and returns the errno of its reply,
// which must be one chunk carrying the request's cookie and offset.
func (rc *rawClient) call(flags, typ uint16, cookie, off, length uint64, payload []byte) uint32 {
	rc.t.Helper()
	rc.extRequest(flags, typ, cookie, off, length, payload)
	ch := rc.extReply()
	if ch.cookie != cookie || ch.off != off {
		rc.t.Fatalf("reply to request %d at %d: cookie %d, offset %d", cookie, off, ch.cookie, ch.off)
	}
	return rc.errnoOf(ch)
}

// readExt reads n bytes at off over extended headers (one data chunk:
// DF is set).
func (rc *rawClient) readExt(cookie, off, n uint64) []byte {
	rc.t.Helper()
	rc.extRequest(cmdFlagDF, cmdRead, cookie, off, n, nil)
	ch := rc.extReply()
	if ch.typ != replyOffsetData || ch.flags&replyFlagDone == 0 || uint64(len(ch.payload)) != 8+n {
		rc.t.Fatalf("read %d at %d: chunk type %d flags %#x, %d bytes", n, off, ch.typ, ch.flags, len(ch.payload))
	}
	return ch.payload[8:]
}

// hungUp reports whether the server closed c without another reply (a
// reset, if it left bytes of ours unread, or an end of file).
func hungUp(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	return n == 0 && err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestExtendedPayloads: with extended headers a WRITE carries its payload
// with or without PAYLOAD_LEN; any other command's payload is read and
// refused with EINVAL, as is a WRITE longer than the maximum payload,
// and the connection stays in step. Payloads the server will not read
// and payloads cut short end the connection, and nothing of them is
// written. Compact requests must not use PAYLOAD_LEN.
func TestExtendedPayloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.rw")
	sparseImage(t, path, 16*mib, nil)
	const maxPayload = mib
	addr := serveWith(t, fileSource{dir}, Options{Anonymous: AnonymousReadWrite, MaxRequest: maxPayload})
	rc, flags := extendedClient(t, addr, "p.rw")
	if flags&(1<<12) != 0 {
		t.Fatalf("transmission flags %#x offer BLOCK_STATUS_PAYLOAD, which the server does not take", flags)
	}

	a, b := bytes.Repeat([]byte{0xa1}, 64<<10), bytes.Repeat([]byte{0xb2}, 4096)
	cookie := uint64(0)
	next := func() uint64 { cookie++; return cookie }
	steps := []struct {
		name        string
		flags, typ  uint16
		off, length uint64
		payload     []byte
		want        uint32
	}{
		{"WRITE without PAYLOAD_LEN, as qemu sends it", cmdFlagFUA, cmdWrite, mib, uint64(len(a)), a, 0},
		{"WRITE with PAYLOAD_LEN", cmdFlagPayloadLen, cmdWrite, 2 * mib, uint64(len(b)), b, 0},
		{"WRITE past the end", 0, cmdWrite, 16*mib - 100, 200, make([]byte, 200), errNoSpc},
		{"WRITE over the maximum payload", cmdFlagPayloadLen, cmdWrite, 4 * mib, 2 * maxPayload, bytes.Repeat([]byte{0xee}, 2*maxPayload), errInval},
		{"READ with a payload", cmdFlagPayloadLen, cmdRead, 0, 8, make([]byte, 8), errInval},
		{"BLOCK_STATUS payload form, not offered", cmdFlagPayloadLen, cmdBlockStatus, 0, 12, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, 16*mib), 1), errInval},
		{"WRITE_ZEROES with a payload", cmdFlagPayloadLen, cmdWriteZeroes, mib, 16, make([]byte, 16), errInval},
		{"TRIM with a payload", cmdFlagPayloadLen, cmdTrim, 2 * mib, 16, make([]byte, 16), errInval},
		{"FLUSH", 0, cmdFlush, 0, 0, nil, 0},
	}
	for _, s := range steps {
		if e := rc.call(s.flags, s.typ, next(), s.off, s.length, s.payload); e != s.want {
			t.Errorf("%s: errno %d, want %d", s.name, e, s.want)
		}
		// In step: the next request is read as a request.
		if got := rc.readExt(next(), mib, 16); !bytes.Equal(got, a[:16]) {
			t.Fatalf("after %s: read %x", s.name, got)
		}
	}
	if got := rc.readExt(next(), 2*mib, 4096); !bytes.Equal(got, b) {
		t.Error("WRITE with PAYLOAD_LEN did not land")
	}
	if got := rc.readExt(next(), 4*mib, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("a refused WRITE was written")
	}

	// More than the server reads (2^25, the protocol's floor): it hangs
	// up at once rather than read 1 TiB.
	rc.extRequest(cmdFlagPayloadLen, cmdWrite, next(), 0, 1<<40, a)
	if !hungUp(t, rc.c) {
		t.Error("a 1 TiB payload did not end the connection")
	}
	// A payload cut short: the connection ends, nothing is written.
	rc2, _ := extendedClient(t, addr, "p.rw")
	rc2.extRequest(0, cmdWrite, 1, 8*mib, 4096, bytes.Repeat([]byte{0xcc}, 100))
	rc2.c.(*net.TCPConn).CloseWrite()
	if !hungUp(t, rc2.c) {
		t.Error("a payload cut short did not end the connection")
	}

	// Compact requests: PAYLOAD_LEN is not theirs to use; a WRITE's
	// payload is read all the same.
	rc3 := &rawClient{t, rawHandshake(t, addr)}
	defer rc3.c.Close()
	if typ, _ := rc3.option(optStructuredReply, nil); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: %#x", typ)
	}
	rc3.goExport("p.rw")
	rc3.compactRequest(cmdFlagPayloadLen, cmdWrite, 1, 4*mib, 4096, b)
	if ch := rc3.structuredReply(1); ch.typ != replyError || binary.BigEndian.Uint32(ch.payload) != errInval {
		t.Errorf("compact WRITE with PAYLOAD_LEN: reply type %d %x", ch.typ, ch.payload)
	}
	rc3.compactRequest(0, cmdWrite, 2, 4*mib, 4096, b)
	if e := rc3.simpleReply(2); e != 0 {
		t.Errorf("compact WRITE after it: errno %d", e)
	}

	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(file[mib:mib+len(a)], a) || !bytes.Equal(file[4*mib:4*mib+4096], b) {
		t.Error("the file lacks the writes")
	}
	if !bytes.Equal(file[8*mib:8*mib+4096], make([]byte, 4096)) || !bytes.Equal(file[4*mib+4096:6*mib], make([]byte, 2*mib-4096)) {
		t.Error("the file holds bytes of refused or cut writes")
	}
	// The server is still up for the next client.
	rc4, _ := extendedClient(t, addr, "p.rw")
	if got := rc4.readExt(1, 2*mib, 4096); !bytes.Equal(got, b) {
		t.Error("a new client reads other bytes")
	}
}

// structuredReply reads one compact structured reply chunk of cookie.
func (rc *rawClient) structuredReply(cookie uint64) extChunk {
	rc.t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(rc.c, h[:]); err != nil {
		rc.t.Fatalf("structured reply: %v", err)
	}
	if m, c := binary.BigEndian.Uint32(h[:]), binary.BigEndian.Uint64(h[8:]); m != magicStruct || c != cookie {
		rc.t.Fatalf("structured reply magic %#x cookie %d, want cookie %d", m, c, cookie)
	}
	ch := extChunk{flags: binary.BigEndian.Uint16(h[4:]), typ: binary.BigEndian.Uint16(h[6:]), cookie: cookie}
	ch.payload = make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(rc.c, ch.payload); err != nil {
		rc.t.Fatalf("structured reply payload: %v", err)
	}
	return ch
}

// TestExtended64BitLengths: effect lengths beyond 32 bits, which only
// extended headers can carry, zero, trim and describe an 8 GiB export;
// block status answers with 64-bit descriptors; a READ longer than the
// maximum payload gets EOVERFLOW; ranges past the end (or wrapping past
// 2^64) get EINVAL or ENOSPC.
func TestExtended64BitLengths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "big.rw")
	const size = 8 << 30
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{4096, 5 << 30, 7 << 30, size - 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xda}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	addr := serve(t, dir)
	rc, _ := extendedClient(t, addr, "big.rw")
	zeros := make([]byte, 4096)

	const six = 6 << 30 // > 2^32
	if e := rc.call(cmdFlagFastZero, cmdWriteZeroes, 1, 0, six, nil); e != 0 {
		t.Fatalf("WRITE_ZEROES of 6 GiB: errno %d", e)
	}
	for _, off := range []uint64{4096, 5 << 30} {
		if got := rc.readExt(2, off, 4096); !bytes.Equal(got, zeros) {
			t.Errorf("WRITE_ZEROES of 6 GiB left data at %d", off)
		}
	}
	if got := rc.readExt(3, 7<<30, 16); bytes.Equal(got, zeros[:16]) {
		t.Error("WRITE_ZEROES of 6 GiB zeroed past its end")
	}

	rc.extRequest(0, cmdBlockStatus, 4, 0, size, nil)
	ch := rc.extReply()
	if ch.typ != replyBlockStatusExt || ch.off != 0 {
		t.Fatalf("block status reply %+v", ch)
	}
	first, state := binary.BigEndian.Uint64(ch.payload[8:]), binary.BigEndian.Uint64(ch.payload[16:])
	if first != 7<<30 || state != stateHole|stateZero {
		t.Errorf("first descriptor %d bytes state %d, want %d bytes of hole", first, state, uint64(7<<30))
	}

	if e := rc.call(0, cmdTrim, 5, 4<<30, size-4<<30, nil); e != 0 {
		t.Fatalf("TRIM of 4 GiB: errno %d", e)
	}
	for _, off := range []uint64{7 << 30, size - 4096} {
		if got := rc.readExt(6, off, 4096); !bytes.Equal(got, zeros) {
			t.Errorf("TRIM of 4 GiB left data at %d", off)
		}
	}
	if e := rc.call(cmdFlagNoHole, cmdWriteZeroes, 7, size-4096, 4096, nil); e != 0 {
		t.Errorf("WRITE_ZEROES without holes: errno %d", e)
	}

	for _, c := range []struct {
		name        string
		typ         uint16
		off, length uint64
		want        uint32
	}{
		{"READ of 5 GiB", cmdRead, 0, 5 << 30, errOverflow},
		{"READ past the end", cmdRead, size - 4096, 8192, errInval},
		{"READ wrapping past 2^64", cmdRead, 1<<64 - 4096, 8192, errInval},
		{"BLOCK_STATUS past the end", cmdBlockStatus, 4096, size, errInval},
		{"TRIM past the end", cmdTrim, 4096, size, errInval},
		{"WRITE_ZEROES wrapping past 2^64", cmdWriteZeroes, 1<<64 - 4096, 1 << 40, errNoSpc},
	} {
		if e := rc.call(0, c.typ, 8, c.off, c.length, nil); e != c.want {
			t.Errorf("%s: errno %d, want %d", c.name, e, c.want)
		}
	}
	if st, err := f.Stat(); err != nil || st.Size() != size {
		t.Fatalf("the export's file: %v", err)
	}
}

// TestExtendedStatusWithinMaxPayload: a block status chunk holds no more
// descriptors than fit in the maximum payload size the server advertised,
// and still describes the start of the range exactly.
func TestExtendedStatusWithinMaxPayload(t *testing.T) {
	dir := t.TempDir()
	chunks := map[int64]int{}
	for off := int64(0); off < mib; off += 8192 {
		chunks[off] = 4096 // 256 extents: data, hole, data, ...
	}
	sparseImage(t, filepath.Join(dir, "frag.img"), mib, chunks)
	const maxPayload = 4096
	addr := serveWith(t, fileSource{dir}, Options{Anonymous: AnonymousReadWrite, MaxRequest: maxPayload})
	rc, _ := extendedClient(t, addr, "frag.img")
	rc.extRequest(0, cmdBlockStatus, 1, 0, mib, nil)
	ch := rc.extReply()
	if ch.typ != replyBlockStatusExt || len(ch.payload) > maxPayload {
		t.Fatalf("block status chunk type %d of %d bytes, more than the maximum payload of %d", ch.typ, len(ch.payload), maxPayload)
	}
	n := int(binary.BigEndian.Uint32(ch.payload[4:]))
	if want := (maxPayload - 8) / 16; n != want || len(ch.payload) != 8+16*n {
		t.Fatalf("%d descriptors in %d bytes, want %d", n, len(ch.payload), want)
	}
	for i, d := 0, ch.payload[8:]; i < n; i, d = i+1, d[16:] {
		length, state := binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[8:])
		if want := uint64(i%2) * (stateHole | stateZero); length != 4096 || state != want {
			t.Fatalf("descriptor %d: %d bytes state %d, want 4096 bytes state %d", i, length, state, want)
		}
	}
}
