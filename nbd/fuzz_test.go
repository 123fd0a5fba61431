package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// FuzzHandshake feeds arbitrary client bytes to the option parser and the
// request decoder: the server must end the connection cleanly, never
// panic or hang.
func FuzzHandshake(f *testing.F) {
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a"), make([]byte, 8192), 0o644); err != nil {
		f.Fatal(err)
	}
	opt := func(o uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	flags := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
	f.Add(append(append([]byte{}, flags...), opt(optList, nil)...))
	f.Add(append(append(append([]byte{}, flags...), opt(optStructuredReply, nil)...), opt(optExportName, []byte("a"))...))
	goReq := append(binary.BigEndian.AppendUint32(nil, 1), 'a', 0, 0)
	read := binary.BigEndian.AppendUint32(nil, magicRequest)
	read = append(read, 0, 0, 0, cmdRead)
	read = binary.BigEndian.AppendUint64(read, 1)
	read = binary.BigEndian.AppendUint64(read, 0)
	read = binary.BigEndian.AppendUint32(read, 4096)
	f.Add(append(append(append([]byte{}, flags...), opt(optGo, goReq)...), read...))
	srv := NewServer(fileSource{dir}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	f.Fuzz(func(t *testing.T, in []byte) {
		feed(t, in, func(server net.Conn) { srv.serveConn(context.Background(), server) })
	})
}

// memExport is a small writable export in memory for fuzzing.
type memExport struct {
	mu   sync.Mutex
	data []byte
}

func (m *memExport) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memExport) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memExport) Size() int64  { return int64(len(m.data)) }
func (m *memExport) Flush() error { return nil }

func (m *memExport) Allocation(ctx context.Context, off, length int64) ([]Extent, error) {
	half := length / 2
	return []Extent{{Length: half}, {Length: length - half, Flags: StateHole | StateZero}}, nil
}

// FuzzRequests feeds arbitrary bytes to the transmission phase, in each of
// the compact, structured and extended modes, over a writable export with
// block status: requests are decoded and served, or the connection ends
// cleanly; the server never panics, hangs or touches memory out of range.
func FuzzRequests(f *testing.F) {
	req := func(extended bool, flags, typ uint16, off, length uint64, payload []byte) []byte {
		var b []byte
		if extended {
			b = binary.BigEndian.AppendUint32(b, magicExtRequest)
		} else {
			b = binary.BigEndian.AppendUint32(b, magicRequest)
		}
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = binary.BigEndian.AppendUint64(b, off)
		if extended {
			b = binary.BigEndian.AppendUint64(b, length)
		} else {
			b = binary.BigEndian.AppendUint32(b, uint32(length))
		}
		return append(b, payload...)
	}
	f.Add(byte(0), req(false, 0, cmdRead, 0, 512, nil))
	f.Add(byte(1), append(req(false, 0, cmdWrite, 100, 4, []byte("abcd")), req(false, 0, cmdBlockStatus, 0, 4096, nil)...))
	f.Add(byte(2), append(req(true, cmdFlagPayloadLen, cmdWrite, 8, 4, []byte("abcd")), req(true, 0, cmdBlockStatus, 0, 1<<40, nil)...))
	f.Add(byte(2), req(true, cmdFlagFastZero, cmdWriteZeroes, 0, 8192, nil))
	// qemu's WRITE: no PAYLOAD_LEN, the payload follows all the same.
	f.Add(byte(2), append(req(true, cmdFlagFUA, cmdWrite, 8, 4, []byte("abcd")), req(true, 0, cmdRead, 0, 16, nil)...))
	f.Add(byte(2), req(true, cmdFlagPayloadLen, cmdBlockStatus, 0, 12, []byte{0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 1}))
	f.Add(byte(2), req(true, cmdFlagPayloadLen, cmdWrite, 0, 1<<40, nil))
	f.Add(byte(1), req(false, cmdFlagPayloadLen, cmdRead, 0, 512, nil))
	srv := NewServer(nil, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxRequest: 1 << 16})
	f.Fuzz(func(t *testing.T, mode byte, in []byte) {
		feed(t, in, func(server net.Conn) {
			cn := &conn{
				srv: srv, c: server, r: bufio.NewReader(server), name: "m",
				export:     &memExport{data: make([]byte, 8192)},
				structured: mode%3 > 0, extended: mode%3 == 2,
				contexts: []string{contextBaseAllocation},
			}
			cn.transmit(context.Background(), srv.log)
			server.Close()
		})
	})
}

// FuzzExtendedInStep builds from its input a stream of well-framed
// extended requests — any command, flags, offset and effect length, and a
// payload exactly where the protocol puts one (after a WRITE, or with
// PAYLOAD_LEN) — and checks that the server answers each with one final
// reply chunk carrying its cookie and offset: whatever the requests mean,
// the server never loses track of where one ends and the next begins.
func FuzzExtendedInStep(f *testing.F) {
	// Each request is 10 bytes of input: type, flags, offset / 16 (2
	// bytes), length (4), 64-bit length if odd, the payload's byte.
	f.Add([]byte{cmdWrite, 0, 0, 1, 0, 64, 0, 0, 0, 0xab, cmdRead, 0, 0, 1, 0, 64, 0, 0, 0, 0})
	f.Add([]byte{cmdBlockStatus, cmdFlagPayloadLen, 0, 0, 0, 12, 0, 0, 0, 1, cmdWriteZeroes, cmdFlagFastZero, 0, 0, 0, 0, 0x20, 0, 1, 0})
	f.Add([]byte{cmdTrim, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 1, 0, cmdCache, 0x40, 0, 0, 0, 1, 0, 0, 0, 0, cmdFlush, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	srv := NewServer(nil, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxRequest: 1 << 15})
	f.Fuzz(func(t *testing.T, in []byte) { checkInStep(t, srv, in) })
}

// checkInStep is FuzzExtendedInStep's check of one input.
func checkInStep(t *testing.T, srv *Server, in []byte) {
	t.Helper()
	const reqSize = 10
	var stream []byte
	var offs []uint64
	for len(in) >= reqSize && len(offs) < 64 {
		r := in[:reqSize]
		in = in[reqSize:]
		typ := uint16(r[0] % 10)
		if typ == cmdDisc {
			continue // it ends the stream, without a reply
		}
		flags := uint16(r[1])
		off := uint64(binary.BigEndian.Uint16(r[2:])) * 16 // up to 1 MiB: past the end too
		length := uint64(binary.BigEndian.Uint32(r[4:]))
		payload := typ == cmdWrite || flags&cmdFlagPayloadLen != 0
		switch {
		case payload:
			length &= 1<<16 - 1 // no more than the server reads
		case r[8]&1 != 0:
			length |= 1 << 40 // an effect length beyond 32 bits
		}
		stream = binary.BigEndian.AppendUint32(stream, magicExtRequest)
		stream = binary.BigEndian.AppendUint16(stream, flags)
		stream = binary.BigEndian.AppendUint16(stream, typ)
		stream = binary.BigEndian.AppendUint64(stream, uint64(len(offs)))
		stream = binary.BigEndian.AppendUint64(stream, off)
		stream = binary.BigEndian.AppendUint64(stream, length)
		if payload {
			stream = append(stream, bytes.Repeat(r[9:10], int(length))...)
		}
		offs = append(offs, off)
	}
	client, server := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	served := make(chan struct{})
	go func() {
		defer close(served)
		cn := &conn{
			srv: srv, c: server, r: bufio.NewReader(server), name: "m",
			export:     &memExport{data: make([]byte, 8192)},
			structured: true, extended: true,
			contexts: []string{contextBaseAllocation},
		}
		cn.transmit(context.Background(), srv.log)
		server.Close()
	}()
	go client.Write(stream)
	done := make([]bool, len(offs))
	for left := len(offs); left > 0; {
		var h [32]byte
		if _, err := io.ReadFull(client, h[:]); err != nil {
			t.Fatalf("%d of %d requests unanswered: %v", left, len(offs), err)
		}
		if m := binary.BigEndian.Uint32(h[:]); m != magicExtReply {
			t.Fatalf("reply magic %#x", m)
		}
		cookie, off, n := binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint64(h[16:]), binary.BigEndian.Uint64(h[24:])
		if cookie >= uint64(len(offs)) || done[cookie] || off != offs[cookie] || n > 1<<20 {
			t.Fatalf("reply chunk cookie %d offset %d length %d", cookie, off, n)
		}
		if _, err := io.CopyN(io.Discard, client, int64(n)); err != nil {
			t.Fatalf("reply payload: %v", err)
		}
		if binary.BigEndian.Uint16(h[4:])&replyFlagDone != 0 {
			done[cookie] = true
			left--
		}
	}
	client.Close()
	<-served
}

// feed plays in as everything a client sends, then hangs up, and runs
// serve on the server end; serve must return within 10 s.
func feed(t *testing.T, in []byte, serve func(server net.Conn)) {
	client, server := net.Pipe()
	server.SetDeadline(time.Now().Add(5 * time.Second))
	go io.Copy(io.Discard, client)
	go func() {
		client.Write(in)
		client.Close()
	}()
	done := make(chan struct{})
	go func() {
		serve(server)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection did not end")
	}
}
