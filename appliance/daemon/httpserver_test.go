package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// A response that keeps moving runs longer than the stall timeout; one
// the client stops reading is cut after it.
func TestStallGuard(t *testing.T) {
	const chunk, chunks = 1 << 20, 64
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
	// 3 s: one 1 MiB write must finish within it even on a loaded machine.
	srv, sl := newHTTPServer(l, h, nil, HTTPLimits{StallTimeout: 3 * time.Second}, quiet())
	go srv.Serve(sl)
	defer srv.Close()

	// A slow reader: 64 MiB at about 10 MiB/s takes about two stall
	// timeouts.
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
	t.Logf("slow download of %d MiB took %v with a 3s stall timeout", n>>20, time.Since(start).Round(time.Millisecond))

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

// One client's connections past MaxConnsPerClient are closed at once,
// while another client is still served: one client cannot take every
// connection of the listener.
func TestHTTPMaxConnsPerClient(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const per = 4
	srv, sl := newHTTPServer(l, h, nil, HTTPLimits{MaxConns: 3 * per, MaxConnsPerClient: per}, quiet())
	go srv.Serve(sl)
	defer srv.Close()

	// dial connects from the loopback address from (Linux routes all of
	// 127/8 to lo) and sends a keep-alive request.
	dial := func(from string) (net.Conn, *bufio.Reader) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		return c, bufio.NewReader(c)
	}
	served := func(br *bufio.Reader) error {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	for i := range per {
		if _, br := dial("127.0.0.1"); served(br) != nil {
			t.Fatalf("connection %d of 127.0.0.1 not served", i+1)
		}
	}
	_, br := dial("127.0.0.1")
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection %d of 127.0.0.1: %v, want it closed at once", per+1, err)
	}
	if _, br := dial("127.0.0.2"); served(br) != nil {
		t.Error("another client is not served while 127.0.0.1 holds its connections")
	}
}
