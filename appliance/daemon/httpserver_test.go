package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// A response that keeps moving runs longer than the stall timeout; one
// the client stops reading is cut after it.
func TestStallGuard(t *testing.T) {
	const chunk, chunks = 1 << 20, 48
	writeErr := make(chan error, 4)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(chunk*chunks))
		buf := make([]byte, chunk)
		for range chunks {
			if _, err := w.Write(buf); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, sl := newHTTPServer(l, h, nil, HTTPLimits{StallTimeout: time.Second}, quiet())
	go srv.Serve(sl)
	defer srv.Close()

	// A slow reader: 48 MiB at about 10 MiB/s takes several stall timeouts.
	start := time.Now()
	resp, err := http.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	buf := make([]byte, 256<<10)
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if err != nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	resp.Body.Close()
	if n != chunk*chunks || <-writeErr != nil {
		t.Fatalf("slow download: %d of %d bytes", n, chunk*chunks)
	}
	t.Logf("slow download of %d MiB took %v with a 1s stall timeout", n>>20, time.Since(start).Round(time.Millisecond))

	// A client that asks and never reads.
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("the whole response went to a client that reads nothing")
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Logf("write error: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a stalled client held its response for a minute")
	}
	// The connection is closed: reading drains what was buffered, then ends.
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.Copy(io.Discard, bufio.NewReader(conn)); err != nil {
		t.Errorf("stalled connection not closed: %v", err)
	}
}
