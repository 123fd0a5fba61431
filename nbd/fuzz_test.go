package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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
		client, server := net.Pipe()
		server.SetDeadline(time.Now().Add(5 * time.Second))
		go io.Copy(io.Discard, client)
		go func() {
			client.Write(in)
			client.Close()
		}()
		done := make(chan struct{})
		go func() {
			srv.serveConn(context.Background(), server)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("connection did not end")
		}
	})
}
