package nbd

import (
	"bufio"
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
