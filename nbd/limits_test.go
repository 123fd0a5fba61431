package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingSource counts the reads of its exports.
type countingSource struct {
	fileSource
	reads *atomic.Int64
}

func (s countingSource) Open(ctx context.Context, name string) (Export, error) {
	e, err := s.fileSource.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	return countingExport{e.(*fileExport), s.reads}, nil
}

type countingExport struct {
	*fileExport
	reads *atomic.Int64
}

func (e countingExport) ReadAt(p []byte, off int64) (int, error) {
	e.reads.Add(1)
	return e.fileExport.ReadAt(p, off)
}

// startServer runs a Server over dir and returns it with its address.
func startServer(t *testing.T, dir string, opts Options) (*Server, string) {
	return startServerOf(t, fileSource{dir}, opts)
}

func startServerOf(t *testing.T, src Source, opts Options) (*Server, string) {
	t.Helper()
	srv, addr, stop := runServer(t, src, opts)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return srv, addr
}

// runServer runs a Server for src; stop ends it and waits for Serve to
// return, 20 s at most. stop may be called more than once.
func runServer(t *testing.T, src Source, opts Options) (srv *Server, addr string, stop func() error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv = NewServer(src, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("Serve: %w", err)
			}
			return nil
		case <-time.After(20 * time.Second):
			return errors.New("server did not stop within 20 s")
		}
	})
	return srv, l.Addr().String(), stop
}

// readRequest is a compact READ request header.
func readRequest(cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, cmdRead)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// TestMemoryBudget: clients that queue reads and never read the replies
// hold at most the budget (anonymous ones: their share of it); the server
// stops reading their requests, and serves others again once they are
// gone.
func TestMemoryBudget(t *testing.T) {
	for _, tc := range []struct {
		name string
		anon Anonymous
	}{{"trusted", AnonymousReadWrite}, {"anonymous", AnonymousReadOnly}} {
		t.Run(tc.name, func(t *testing.T) { testMemoryBudget(t, tc.anon) })
	}
}

func testMemoryBudget(t *testing.T, anon Anonymous) {
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "a.img"), 64*mib, map[int64]int{0: 64 * mib})
	const budget = 8 * mib
	var reads atomic.Int64
	srv, addr := startServerOf(t, countingSource{fileSource{dir}, &reads}, Options{MemoryBudget: budget, MaxRequest: mib, Anonymous: anon})
	limit := int64(budget)
	if anon != AnonymousReadWrite {
		limit = srv.anonShare()
	}

	const clients, requests = 8, 400
	var (
		wg       sync.WaitGroup
		attacker []net.Conn
		mu       sync.Mutex
		sent     int
	)
	for range clients {
		rc := &rawClient{t, rawHandshake(t, addr)}
		rc.goExport("a.img")
		attacker = append(attacker, rc.c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bounded: the server stops reading, the socket buffers fill,
			// and the deadline ends the writes.
			rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			for i := range requests {
				if _, err := rc.c.Write(readRequest(uint64(i), uint64(i%64)*mib, mib)); err != nil {
					return
				}
				mu.Lock()
				sent++
				mu.Unlock()
			}
		}()
	}
	peak := watchPeak(&wg, srv.buffers.inUse)
	if peak > limit {
		t.Errorf("buffers in flight peaked at %d bytes, limit %d", peak, limit)
	}
	if peak < limit/2 {
		t.Errorf("buffers in flight peaked at %d bytes: the attack did not reach the limit of %d", peak, limit)
	}
	// Requests wait for buffers, not the other way round: most were
	// never served (each served one went into a socket buffer).
	if n := reads.Load(); n > clients*requests/2 {
		t.Errorf("%d of %d requests served to clients that read no reply", n, clients*requests)
	}
	t.Logf("peak %d bytes in flight (limit %d), %d of %d requests sent, %d served", peak, limit, sent, clients*requests, reads.Load())
	for _, c := range attacker {
		c.Close()
	}

	// Once they are gone, a client is served again.
	rc := &rawClient{t, rawHandshake(t, addr)}
	defer rc.c.Close()
	rc.goExport("a.img")
	rc.c.Write(readRequest(1, 0, mib))
	var h [16]byte
	if _, err := io.ReadFull(rc.c, h[:]); err != nil || binary.BigEndian.Uint32(h[4:]) != 0 {
		t.Fatalf("read after the attack: %v %x", err, h)
	}
	if _, err := io.CopyN(io.Discard, rc.c, mib); err != nil {
		t.Fatal(err)
	}
}

// watchPeak samples inUse until wg is done and returns its largest value.
func watchPeak(wg *sync.WaitGroup, inUse func() int64) int64 {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var peak int64
	for {
		peak = max(peak, inUse())
		select {
		case <-done:
			return max(peak, inUse())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestAnonymousShare: anonymous clients that queue reads and never read
// the replies fill their share of the memory budget and no more; an
// authenticated client (a restore target) is served while they stall.
// Both timeouts are long, as an attacker would have them.
func TestAnonymousShare(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	want := sparseImage(t, filepath.Join(dir, "a.img"), 64*mib, map[int64]int{0: 64 * mib})
	cfg, serverCerts := testCerts(t)
	pool, withCert := clientCerts(t, serverCerts)
	cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	const budget, request = 64 * mib, 4 * mib
	srv, addr := startServer(t, dir, Options{TLSConfig: cfg, MemoryBudget: budget, MaxRequest: request,
		IdleTimeout: time.Hour, WriteStallTimeout: time.Hour})

	// Each anonymous connection alone could hold a quarter of the budget:
	// four of them all of it.
	const clients, requests = 4, 256
	var wg sync.WaitGroup
	for range clients {
		rc := &rawClient{t, rawHandshake(t, addr)}
		rc.goExport("a.img")
		t.Cleanup(func() { rc.c.Close() }) // before the server stops
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			for i := range requests {
				if _, err := rc.c.Write(readRequest(uint64(i), uint64(i%16)*request, mib-16)); err != nil {
					return
				}
			}
		}()
	}
	peak := watchPeak(&wg, srv.buffers.inUse)
	share := srv.anonShare()
	if peak > share {
		t.Errorf("anonymous clients held %d bytes of buffers, their share is %d", peak, share)
	}
	if peak < share/2 {
		t.Errorf("anonymous clients held %d bytes at most: the attack did not fill their share of %d", peak, share)
	}

	// They stall; a client with a certificate reads the whole export.
	out := filepath.Join(t.TempDir(), "out.img")
	if msg, err := tryTool(t, "nbdcopy", "nbds://"+addr+"/a.img?tls-certificates="+withCert, out); err != nil {
		t.Fatalf("authenticated nbdcopy while anonymous clients stall: %v\n%s", err, msg)
	}
	if got := fileSum(t, out); string(got) != string(want) {
		t.Error("authenticated nbdcopy: the copy differs")
	}
	if n := srv.anon.inUse(); n == 0 {
		t.Error("the anonymous clients no longer stalled when the authenticated one was served")
	}
	t.Logf("anonymous clients peaked at %d bytes (share %d of a budget of %d)", peak, share, budget)
}

// refused reports whether the server closed c without its greeting.
func refused(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [18]byte
	_, err := io.ReadFull(c, b[:])
	return errors.Is(err, io.EOF)
}

func TestConnectionLimits(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.img"), make([]byte, 4096), 0o644)
	dial := func(addr string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, tc := range []struct {
		name      string
		opts      Options
		accepted  int
		oneMoreOK bool
	}{
		{"in all", Options{MaxConns: 3, MaxConnsPerClient: 10}, 3, false},
		{"per client", Options{MaxConns: 10, MaxConnsPerClient: 2}, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, dir, tc.opts)
			var open []net.Conn
			for range tc.accepted {
				c := dial(addr)
				if refused(t, c) {
					t.Fatalf("connection %d refused, limit %+v", len(open)+1, tc.opts)
				}
				open = append(open, c)
			}
			if !refused(t, dial(addr)) {
				t.Errorf("connection %d accepted, limit %+v", tc.accepted+1, tc.opts)
			}
			// A closed connection makes room again.
			open[0].Close()
			for range 100 {
				c := dial(addr)
				if !refused(t, c) {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Error("no room after a connection closed")
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.img"), make([]byte, 64*mib), 0o644)
	_, addr := startServer(t, dir, Options{IdleTimeout: 200 * time.Millisecond})
	rc := &rawClient{t, rawHandshake(t, addr)}
	defer rc.c.Close()
	rc.goExport("a.img")
	// A request keeps it alive; then silence ends it.
	time.Sleep(100 * time.Millisecond)
	rc.c.Write(readRequest(1, 0, 4096))
	if _, err := io.CopyN(io.Discard, rc.c, 16+4096); err != nil {
		t.Fatalf("read: %v", err)
	}
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := rc.c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read %v, want EOF from the server closing it", err)
	}
}

// TestWriteStallTimeout: a client that reads no replies is dropped after
// the write stall timeout, long before the idle timeout, and its buffers
// come back.
func TestWriteStallTimeout(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.img"), make([]byte, 64*mib), 0o644)
	srv, addr := startServer(t, dir, Options{IdleTimeout: time.Hour, WriteStallTimeout: 300 * time.Millisecond})
	stalled := &rawClient{t, rawHandshake(t, addr)}
	defer stalled.c.Close()
	stalled.goExport("a.img")
	stalled.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for i := range 256 {
		if _, err := stalled.c.Write(readRequest(uint64(i), 0, 32*mib)); err != nil {
			break
		}
	}
	for range 500 {
		if srv.conns.Total() == 0 && srv.buffers.inUse() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("a client that reads no replies was not dropped: %d connections, %d bytes of buffers in use", srv.conns.Total(), srv.buffers.inUse())
}

// TestShutdownStalledClient: a client that reads no replies does not hold
// up the server's shutdown (startServer's cleanup waits 20 s at most).
func TestShutdownStalledClient(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.img"), make([]byte, 64*mib), 0o644)
	var stalled *rawClient
	t.Cleanup(func() { stalled.c.Close() }) // after the server's cleanup, which is registered later
	srv, addr := startServer(t, dir, Options{})
	stalled = &rawClient{t, rawHandshake(t, addr)}
	stalled.goExport("a.img")
	stalled.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for i := range 64 {
		if _, err := stalled.c.Write(readRequest(uint64(i), 0, 32*mib)); err != nil {
			break
		}
	}
	for range 500 {
		if srv.buffers.inUse() > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Error("the stalled client's reads never took buffers")
}
