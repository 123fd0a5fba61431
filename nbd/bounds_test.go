package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// virtualExport is an export of size bytes that reads as zeros, keeps
// nothing written to it but counts it, and cannot zero any faster than
// by writing zeros.
type virtualExport struct {
	size    int64
	written atomic.Int64
}

func (e *virtualExport) ReadAt(p []byte, off int64) (int, error) { clear(p); return len(p), nil }
func (e *virtualExport) Size() int64                             { return e.size }
func (e *virtualExport) Flush() error                            { return nil }

func (e *virtualExport) WriteAt(p []byte, off int64) (int, error) {
	e.written.Add(int64(len(p)))
	return len(p), nil
}

// oneExport serves one export, named "v".
type oneExport struct{ e Export }

func (s oneExport) List(ctx context.Context) ([]ExportInfo, error) {
	_, writable := s.e.(Writer)
	return []ExportInfo{{Name: "v", Writable: writable}}, nil
}

func (s oneExport) Open(ctx context.Context, name string) (Export, error) {
	if name != "v" {
		return nil, ErrUnknownExport
	}
	return s.e, nil
}

// TestRefusedWriteHoldsNoBuffer: a WRITE that will be refused (here: any
// anonymous one, the exports being read-only to them) holds no buffer of
// the memory budget while its payload comes in. An anonymous client that
// sends the header of a 32 MiB WRITE, one byte of it and then nothing
// does not keep another anonymous client from reading; when the rest of
// the payload comes, the WRITE is refused and the connection is in step.
func TestRefusedWriteHoldsNoBuffer(t *testing.T) {
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "a.img"), 64*mib, map[int64]int{0: 8 * mib})
	const big = 32 * mib // the default maximum payload: all of the anonymous share
	for _, mode := range []string{"extended", "compact"} {
		t.Run(mode, func(t *testing.T) {
			srv, addr := startServer(t, dir, Options{IdleTimeout: time.Hour, WriteStallTimeout: time.Hour})
			var reader, staller *rawClient
			if mode == "extended" {
				reader, _ = extendedClient(t, addr, "a.img")
				staller, _ = extendedClient(t, addr, "a.img")
				staller.extRequest(0, cmdWrite, 1, 0, big, []byte{0xee})
			} else {
				reader, staller = compactClient(t, addr, "a.img"), compactClient(t, addr, "a.img")
				staller.compactRequest(0, cmdWrite, 1, 0, big, []byte{0xee})
			}
			// Several reads, so that the server has taken the staller's
			// header by the later ones.
			reader.c.SetDeadline(time.Now().Add(10 * time.Second))
			for i := range uint64(8) {
				if mode == "extended" {
					reader.readExt(10+i, i*mib, mib)
					continue
				}
				reader.compactRequest(0, cmdRead, 10+i, i*mib, mib, nil)
				if e := reader.simpleReply(10 + i); e != 0 {
					t.Fatalf("read %d: errno %d", i, e)
				}
				if _, err := io.CopyN(io.Discard, reader.c, mib); err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
			}
			// The last READ's reply buffer goes back to the share just after
			// its bytes are sent: wait for that, boundedly. A buffer held for
			// the stalled WRITE would stay.
			n := srv.anon.inUse()
			for deadline := time.Now().Add(5 * time.Second); n != 0 && time.Now().Before(deadline); n = srv.anon.inUse() {
				time.Sleep(10 * time.Millisecond)
			}
			if n != 0 {
				t.Errorf("a stalled refused WRITE holds %d bytes of the anonymous share", n)
			}

			staller.c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := staller.c.Write(bytes.Repeat([]byte{0xee}, big-1)); err != nil {
				t.Fatal(err)
			}
			if mode == "extended" {
				if ch := staller.extReply(); ch.cookie != 1 || staller.errnoOf(ch) != errPerm {
					t.Fatalf("WRITE to a read-only export: %+v", ch)
				}
				staller.readExt(2, 0, 4096)
			} else {
				if e := staller.simpleReply(1); e != errPerm {
					t.Fatalf("WRITE to a read-only export: errno %d", e)
				}
				staller.compactRequest(0, cmdRead, 2, 0, 4096, nil)
				if e := staller.simpleReply(2); e != 0 {
					t.Fatalf("read after the refused WRITE: errno %d", e)
				}
			}
		})
	}
}

// compactClient connects to addr without structured replies and enters
// export name.
func compactClient(t *testing.T, addr, name string) *rawClient {
	t.Helper()
	rc := &rawClient{t, rawHandshake(t, addr)}
	t.Cleanup(func() { rc.c.Close() })
	rc.goExport(name)
	return rc
}

// TestStalledPayloadEndsConnection: a WRITE's payload must keep coming;
// one that stops midway for the stall timeout ends the connection and
// gives its buffer back, long before the idle timeout. A payload that
// comes slowly but steadily is taken.
func TestStalledPayloadEndsConnection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.rw")
	sparseImage(t, path, 64*mib, nil)
	const stall = time.Second
	srv, addr := startServer(t, dir, Options{Anonymous: AnonymousReadWrite, IdleTimeout: time.Hour, WriteStallTimeout: stall})

	// 1 MiB in pieces of 128 KiB, a quarter of the stall timeout apart:
	// twice the stall timeout in all.
	steady, _ := extendedClient(t, addr, "a.rw")
	steady.c.SetDeadline(time.Now().Add(20 * time.Second))
	data := bytes.Repeat([]byte{0x5a}, mib)
	steady.extRequest(0, cmdWrite, 1, 0, mib, nil)
	for p := data; len(p) > 0; p = p[128<<10:] {
		time.Sleep(stall / 4)
		if _, err := steady.c.Write(p[:128<<10]); err != nil {
			t.Fatalf("steady payload: %v", err)
		}
	}
	if e := steady.errnoOf(steady.extReply()); e != 0 {
		t.Fatalf("steady WRITE: errno %d", e)
	}
	if got := steady.readExt(2, 0, mib); !bytes.Equal(got, data) {
		t.Error("the steady WRITE did not land")
	}

	stalled, _ := extendedClient(t, addr, "a.rw")
	stalled.extRequest(0, cmdWrite, 1, 8*mib, 4*mib, make([]byte, 1024))
	if !hungUp(t, stalled.c) {
		t.Fatal("a payload that stopped coming did not end the connection")
	}
	for range 500 {
		if srv.buffers.inUse() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("%d bytes of buffers still in use after the stalled connection ended", srv.buffers.inUse())
}

// statusExport is a virtual export with meta contexts of its own. Up to
// fragmentedEnd, every context (and base:allocation) changes state every
// 4 KiB; after it, one extent runs to the end. It records the longest
// range it was asked to describe, and its first description waits for
// release.
type statusExport struct {
	virtualExport
	contexts []string
	longest  atomic.Int64

	once             sync.Once
	entered, release chan struct{}
}

const fragmentedEnd = 64 * mib

func (e *statusExport) Allocation(ctx context.Context, off, length int64) ([]Extent, error) {
	return e.describe(off, length, StateHole|StateZero), nil
}

func (e *statusExport) MetaContexts(ctx context.Context) ([]string, error) {
	return e.contexts, nil
}

func (e *statusExport) MetaStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	return e.describe(off, length, 1), nil
}

func (e *statusExport) describe(off, length int64, odd uint32) []Extent {
	e.once.Do(func() {
		close(e.entered)
		<-e.release
	})
	for old := e.longest.Load(); length > old && !e.longest.CompareAndSwap(old, length); old = e.longest.Load() {
	}
	var out []Extent
	pos, end := off, off+length
	for ; pos < end && pos < fragmentedEnd; pos += out[len(out)-1].Length {
		out = append(out, Extent{Length: min(4096-pos%4096, end-pos), Flags: uint32(pos/4096%2) * odd})
	}
	if pos < end {
		out = append(out, Extent{Length: end - pos})
	}
	return out
}

// TestBlockStatusBounded: one block status request over a 1 PiB export
// with 17 meta contexts, each fragmented, gets a reply of no more
// descriptors in all than one chunk may hold, in a buffer taken from the
// memory budget before the export is asked; the export is asked to
// describe a bounded range at a time, not the whole export.
func TestBlockStatusBounded(t *testing.T) {
	contexts := []string{contextBaseAllocation}
	for i := range 16 {
		contexts = append(contexts, fmt.Sprintf("test:c%d", i))
	}
	exp := &statusExport{virtualExport: virtualExport{size: 1 << 50}, contexts: contexts[1:],
		entered: make(chan struct{}), release: make(chan struct{})}
	const maxPayload = 64 << 10
	srv, addr := startServerOf(t, oneExport{exp}, Options{Anonymous: AnonymousReadWrite, MaxRequest: maxPayload})
	rc, _ := extendedClientWith(t, addr, "v", contexts...)
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	rc.extRequest(0, cmdBlockStatus, 1, 0, 1<<50, nil)
	select {
	case <-exp.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("block status never asked the export")
	}
	held := srv.buffers.inUse()
	close(exp.release)

	chunks, descriptors, replySize := 0, 0, int64(0)
	for done := false; !done; {
		ch := rc.extReply()
		done = ch.flags&replyFlagDone != 0
		p := ch.payload
		if ch.typ != replyBlockStatusExt || ch.cookie != 1 || len(p) < 8 || len(p) > maxPayload {
			t.Fatalf("block status chunk type %d cookie %d of %d bytes", ch.typ, ch.cookie, len(p))
		}
		n := int(binary.BigEndian.Uint32(p[4:]))
		if n == 0 || len(p) != 8+16*n {
			t.Fatalf("chunk of context %d: %d descriptors in %d bytes", binary.BigEndian.Uint32(p), n, len(p))
		}
		for i, d := 0, p[8:]; i < n; i, d = i+1, d[16:] {
			length, state := binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[8:])
			if length != 4096 || (state == 0) != (i%2 == 0) {
				t.Fatalf("context %d descriptor %d: %d bytes state %d", binary.BigEndian.Uint32(p), i, length, state)
			}
		}
		chunks++
		descriptors += n
		replySize += int64(32 + len(p))
	}
	if chunks != len(contexts) {
		t.Errorf("%d chunks for %d contexts", chunks, len(contexts))
	}
	if limit := (maxPayload - 8) / 16; descriptors > limit {
		t.Errorf("%d descriptors in all, more than the %d one chunk may hold", descriptors, limit)
	}
	if n := exp.longest.Load(); n > 4<<30 {
		t.Errorf("the export was asked to describe %d bytes at once", n)
	}
	if held < replySize {
		t.Errorf("%d bytes of the memory budget held while the export was asked, for a reply of %d", held, replySize)
	}
	t.Logf("%d descriptors in %d chunks, reply of %d bytes, %d bytes held, longest range asked %d", descriptors, chunks, replySize, held, exp.longest.Load())
}

// TestWriteZeroesEndsWithServer: a WRITE_ZEROES of 2^62 bytes on an export
// that can only write zeros is given up when the server stops, which
// does not wait for it; the client is told it was not done.
func TestWriteZeroesEndsWithServer(t *testing.T) {
	exp := &virtualExport{size: 1 << 62}
	_, addr, stop := runServer(t, oneExport{exp}, Options{Anonymous: AnonymousReadWrite})
	t.Cleanup(func() { stop() })
	rc, _ := extendedClient(t, addr, "v")
	rc.extRequest(0, cmdWriteZeroes, 1, 0, 1<<62, nil)
	for i := 0; exp.written.Load() == 0; i++ {
		if i == 500 {
			t.Fatal("WRITE_ZEROES wrote nothing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("%v: it waits for a WRITE_ZEROES (%d bytes written)", err, exp.written.Load())
	}
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [32]byte
	_, err := io.ReadFull(rc.c, h[:])
	if err == nil {
		typ, n := binary.BigEndian.Uint16(h[6:]), binary.BigEndian.Uint64(h[24:])
		e := make([]byte, min(n, 1024))
		io.ReadFull(rc.c, e)
		if typ != replyError || len(e) < 4 || binary.BigEndian.Uint32(e) != errShutdown {
			t.Errorf("WRITE_ZEROES cut short by the server's end: reply type %d %x, want ESHUTDOWN", typ, e)
		}
	} else if !errors.Is(err, io.EOF) {
		t.Errorf("WRITE_ZEROES cut short by the server's end: %v, want ESHUTDOWN or the end of the connection", err)
	}
	t.Logf("%d bytes zeroed before the server stopped", exp.written.Load())
}
