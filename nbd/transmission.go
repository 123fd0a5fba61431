package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// request is one decoded request header. With payload set, length
// bytes of payload follow the header and length is their count; else
// length is the effect length, 64 bits wide with extended headers.
type request struct {
	flags   uint16
	typ     uint16
	cookie  uint64
	off     uint64
	length  uint64
	payload bool
}

const (
	compactRequestSize  = 28
	extendedRequestSize = 32
)

// decodeRequest decodes a request header of the size the connection's
// mode dictates (28 bytes compact, 32 extended).
func decodeRequest(b []byte, extended bool) (request, error) {
	want, magic := compactRequestSize, uint32(magicRequest)
	if extended {
		want, magic = extendedRequestSize, magicExtRequest
	}
	if len(b) != want {
		return request{}, fmt.Errorf("request header of %d bytes, want %d", len(b), want)
	}
	if m := binary.BigEndian.Uint32(b[0:]); m != magic {
		return request{}, fmt.Errorf("bad request magic %#x", m)
	}
	req := request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
	}
	if extended {
		req.length = binary.BigEndian.Uint64(b[24:])
		// A WRITE always carries its payload. The extension says a
		// client MUST set PAYLOAD_LEN on it, but qemu (8.2 and later)
		// does not, and qemu's own server reads the payload of every
		// WRITE: so must we. Other commands carry one only with the
		// flag.
		req.payload = req.typ == cmdWrite || req.flags&cmdFlagPayloadLen != 0
	} else {
		req.length = uint64(binary.BigEndian.Uint32(b[24:]))
		req.payload = req.typ == cmdWrite
	}
	return req, nil
}

// transmit serves requests until the client disconnects. Requests run
// concurrently (bounded); replies are written whole under a lock, so they
// may complete out of order as the protocol allows. Their buffers come
// from the server's pool, at most the connection's share of it (and the
// anonymous connections' share, for an anonymous client): a client that
// does not read its replies soon has all its requests waiting for
// buffers, and then is not read from until it does, or until the write
// stall timeout closes the connection.
func (cn *conn) transmit(ctx context.Context, log *slog.Logger) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // after wg.Wait below: requests in flight get their replies
	var (
		wg       sync.WaitGroup
		wmu      sync.Mutex
		sem      = make(chan struct{}, cn.srv.opts.Concurrency)
		share    = newLimiter(cn.srv.connShare())
		inFlight atomic.Int32
		werr     error
	)
	hdr := make([]byte, compactRequestSize)
	if cn.extended {
		hdr = make([]byte, extendedRequestSize)
	}
	defer wg.Wait()
	defer func() {
		if err != nil {
			cancel() // nobody will read the replies: stop waiting for buffers
		}
	}()
	send := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		if werr != nil {
			return
		}
		if err := cn.writeReply(ctx, b); err != nil {
			werr = err
			cancel() // requests waiting for buffers give up
			// and the loop below stops waiting for requests: this
			// connection is done, its buffers go back now.
			cn.c.SetReadDeadline(time.Now())
		}
	}
	for {
		if err := cn.readRequest(ctx, hdr, func() bool { return inFlight.Load() > 0 }); err != nil {
			wmu.Lock()
			failed := werr
			wmu.Unlock()
			switch {
			case failed != nil: // the read ended because a reply could not be sent
				return fmt.Errorf("send reply: %w", failed)
			case errors.Is(err, io.EOF):
				// Gone without NBD_CMD_DISC: nobody reads the replies
				// of its reads, so they stop (an export that takes a
				// context stops its backend reads). Writes in flight
				// still land: they do not take the context (but zeros
				// written the slow way stop between pieces).
				cancel()
				return nil
			}
			return err
		}
		req, err := decodeRequest(hdr, cn.extended)
		if err != nil {
			return err
		}
		if req.typ == cmdDisc {
			return nil
		}
		sem <- struct{}{}
		payload, pb, err := cn.readPayload(ctx, share, req)
		if err != nil {
			return err
		}
		inFlight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer inFlight.Add(-1)
			reply, rb := cn.handle(ctx, log, share, req, payload)
			cn.putBuffer(share, pb)
			send(reply)
			cn.putBuffer(share, rb)
		}()
		wmu.Lock()
		err = werr
		wmu.Unlock()
		if err != nil {
			return fmt.Errorf("send reply: %w", err)
		}
	}
}

// maxReadPayload is the largest payload read and refused rather than hung
// up on, when the server's maximum payload size is smaller: the protocol
// asks servers not to take payloads up to 32 MiB for an attack.
const maxReadPayload = 1 << 25

// readPayload reads the payload that follows req's header, if any: the
// bytes of a WRITE the server will carry out into a buffer of the pool,
// any other payload into nothing, so that the connection stays in step
// and handle refuses the request with an error reply. A refused WRITE
// takes no buffer, so that it cannot hold the memory budget (an
// anonymous client's WRITEs all are refused: its exports are read-only).
// A payload larger than the server reads is grounds to hang up, as the
// protocol allows; so is one that cannot be read whole, or that stops
// coming (see receive).
func (cn *conn) readPayload(ctx context.Context, share *limiter, req request) ([]byte, *pooledBuf, error) {
	if !req.payload {
		return nil, nil, nil
	}
	limit := uint64(max(cn.srv.opts.MaxRequest, maxReadPayload))
	if req.length > limit {
		return nil, nil, fmt.Errorf("request %d carries %d bytes, more than the %d read", req.typ, req.length, limit)
	}
	if cn.check(req) != nil {
		if err := cn.receive(ctx, nil, int64(req.length)); err != nil {
			return nil, nil, fmt.Errorf("request %d payload: %w", req.typ, err)
		}
		return nil, nil, nil
	}
	pb, err := cn.getBuffer(ctx, share, int(req.length))
	if err != nil {
		return nil, nil, fmt.Errorf("request payload: %w", err)
	}
	payload := pb.b[:req.length]
	if err := cn.receive(ctx, payload, int64(len(payload))); err != nil {
		cn.putBuffer(share, pb)
		return nil, nil, fmt.Errorf("request payload: %w", err)
	}
	return payload, pb, nil
}

// receive reads n bytes of payload into p, or into nothing if p is nil.
// Each stallChunk of it must come within the stall timeout (the idle
// timeout if there is none): a client that stops sending a payload
// midway is cut, and the buffer waiting for it goes back, while a slow
// one that keeps sending is not.
func (cn *conn) receive(ctx context.Context, p []byte, n int64) error {
	stall := cn.srv.opts.WriteStallTimeout
	if stall <= 0 {
		stall = cn.srv.opts.IdleTimeout
	}
	for n > 0 {
		m := min(n, stallChunk)
		var deadline time.Time
		if stall > 0 {
			deadline = time.Now().Add(stall)
		}
		cn.c.SetReadDeadline(deadline)
		// Checked after setting it: the server's shutdown sets a
		// deadline of now, which the one above must not undo.
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		if p == nil {
			_, err = io.CopyN(io.Discard, cn.r, m) // through io.Discard's small buffers
		} else {
			_, err = io.ReadFull(cn.r, p[:m])
			p = p[m:]
		}
		if err != nil {
			return err
		}
		n -= m
	}
	return nil
}

// stallChunk is what a reply is written in pieces of: each must be taken
// by the client within the write stall timeout.
const stallChunk = 256 << 10

// writeReply writes b, cutting a client that takes no piece of it for the
// write stall timeout (the buffers of its replies are then given back),
// or for the shutdown grace once ctx is done.
func (cn *conn) writeReply(ctx context.Context, b []byte) error {
	stall := cn.srv.opts.WriteStallTimeout
	for len(b) > 0 {
		n := min(len(b), stallChunk)
		var deadline time.Time
		if stall > 0 {
			deadline = time.Now().Add(stall)
		}
		cn.c.SetWriteDeadline(deadline)
		// Checked after setting it: the server's shutdown sets a short
		// deadline once ctx is done, which the one above must not undo.
		if ctx.Err() != nil && (stall <= 0 || stall > shutdownGrace) {
			// Shutting down: a client that does not read gets little time.
			cn.c.SetWriteDeadline(time.Now().Add(shutdownGrace))
		}
		if _, err := cn.c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// readRequest reads a request header. It waits for one at most the idle
// timeout, and longer only while busy() (requests are in flight). A header
// split by a timeout is read on where it stopped.
func (cn *conn) readRequest(ctx context.Context, hdr []byte, busy func() bool) error {
	idle := cn.srv.opts.IdleTimeout
	for n := 0; n < len(hdr); {
		if idle > 0 {
			cn.c.SetReadDeadline(time.Now().Add(idle))
		}
		// The server's shutdown sets a deadline of now; one set just
		// above must not undo it.
		if ctx.Err() != nil {
			return io.EOF
		}
		m, err := cn.r.Read(hdr[n:])
		n += m
		var ne net.Error
		switch {
		case err == nil:
		case errors.Is(err, io.EOF) && n == 0:
			return io.EOF
		case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil && busy():
		case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil:
			return fmt.Errorf("idle for %v: %w", idle, err)
		case ctx.Err() != nil:
			return io.EOF
		default:
			return fmt.Errorf("request header: %w", err)
		}
	}
	return nil
}

// pooledBuf is a buffer of the server's pool, counted against a
// connection's share of it, and the anonymous connections' if anon.
type pooledBuf struct {
	b     []byte
	share int64
	anon  bool
}

// trusted reports whether the connection may use the memory budget beyond
// the anonymous connections' share.
func (cn *conn) trusted() bool {
	return cn.authenticated() || cn.srv.opts.Anonymous == AnonymousReadWrite
}

// getBuffer takes a buffer for n bytes from the server's pool, within the
// connection's share of it and, for an anonymous client, within the
// anonymous clients' share.
func (cn *conn) getBuffer(ctx context.Context, share *limiter, n int) (*pooledBuf, error) {
	pb := &pooledBuf{share: int64(n), anon: !cn.trusted()}
	if err := share.acquire(ctx, pb.share); err != nil {
		return nil, err
	}
	if pb.anon {
		if err := cn.srv.anon.acquire(ctx, pb.share); err != nil {
			share.release(pb.share)
			return nil, err
		}
	}
	b, err := cn.srv.buffers.get(ctx, n)
	if err != nil {
		cn.releaseShares(share, pb)
		return nil, err
	}
	pb.b = b
	return pb, nil
}

// putBuffer gives back a buffer of getBuffer; nil is ignored.
func (cn *conn) putBuffer(share *limiter, pb *pooledBuf) {
	if pb == nil {
		return
	}
	cn.srv.buffers.put(pb.b)
	cn.releaseShares(share, pb)
}

func (cn *conn) releaseShares(share *limiter, pb *pooledBuf) {
	if pb.anon {
		cn.srv.anon.release(pb.share)
	}
	share.release(pb.share)
}

// handle runs one request and returns its complete reply, and the pool's
// buffer it is in, if it is.
func (cn *conn) handle(ctx context.Context, log *slog.Logger, share *limiter, req request, payload []byte) ([]byte, *pooledBuf) {
	if reply := cn.check(req); reply != nil {
		return reply, nil
	}
	w, writable := cn.export.(Writer)
	switch req.typ {
	case cmdRead:
		if req.length > uint64(cn.srv.opts.MaxRequest) {
			return cn.errorReply(req, errOverflow, "request too large"), nil
		}
		return cn.read(ctx, log, share, req)
	case cmdCache:
		return cn.okReply(req), nil
	case cmdFlush:
		if writable {
			if err := w.Flush(); err != nil {
				log.Error("nbd flush", "err", err)
				return cn.errorReply(req, errIO, "flush failed"), nil
			}
		}
		return cn.okReply(req), nil
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		return cn.write(ctx, log, share, w, req, payload), nil
	case cmdBlockStatus:
		if len(cn.contexts) == 0 {
			return cn.errorReply(req, errInval, "no meta context negotiated"), nil
		}
		return cn.blockStatus(ctx, log, share, req)
	}
	return cn.errorReply(req, errInval, fmt.Sprintf("command %d not supported", req.typ)), nil
}

// check returns the error reply to a request that cannot run, or nil.
func (cn *conn) check(req request) []byte {
	if req.flags&^cmdFlagsKnown != 0 {
		return cn.errorReply(req, errInval, fmt.Sprintf("unknown command flags %#x", req.flags))
	}
	switch {
	case !cn.extended && req.flags&cmdFlagPayloadLen != 0:
		return cn.errorReply(req, errInval, "PAYLOAD_LEN without extended headers")
	case req.payload && req.typ != cmdWrite:
		// Not even BLOCK_STATUS: its payload form is not offered.
		return cn.errorReply(req, errInval, fmt.Sprintf("command %d takes no payload", req.typ))
	case req.typ == cmdWrite && req.length > uint64(cn.srv.opts.MaxRequest):
		return cn.errorReply(req, errInval, fmt.Sprintf("write of %d bytes, more than the maximum payload of %d", req.length, cn.srv.opts.MaxRequest))
	}
	if req.typ > cmdBlockStatus {
		return cn.errorReply(req, errInval, fmt.Sprintf("unknown command %d", req.typ))
	}
	_, writable := cn.export.(Writer)
	isWrite := req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes
	if isWrite && !writable {
		return cn.errorReply(req, errPerm, "export is read-only")
	}
	size := uint64(cn.export.Size())
	if req.length == 0 || req.off > size || req.length > size-req.off {
		switch req.typ {
		case cmdFlush:
		case cmdWrite, cmdWriteZeroes:
			if req.length != 0 {
				return cn.errorReply(req, errNoSpc, "request past the end of the export")
			}
			return cn.errorReply(req, errInval, "request of length 0")
		default:
			return cn.errorReply(req, errInval, "request outside the export")
		}
	}
	return nil
}

// write runs WRITE, TRIM and WRITE_ZEROES. Only zeros written the slow
// way take ctx: a WRITE lands even if the client is gone.
func (cn *conn) write(ctx context.Context, log *slog.Logger, share *limiter, w Writer, req request, payload []byte) []byte {
	off, n := int64(req.off), int64(req.length)
	z, canZero := cn.export.(Zeroer)
	var err error
	switch req.typ {
	case cmdWrite:
		_, err = w.WriteAt(payload, off)
	case cmdTrim:
		// TRIM is advice: where it cannot be done there is nothing to do.
		if canZero {
			if err = z.Zero(off, n, true); errors.Is(err, errors.ErrUnsupported) {
				err = nil
			}
		}
	case cmdWriteZeroes:
		err = errors.ErrUnsupported
		if canZero {
			err = z.Zero(off, n, req.flags&cmdFlagNoHole == 0)
		}
		if errors.Is(err, errors.ErrUnsupported) {
			if req.flags&cmdFlagFastZero != 0 {
				return cn.errorReply(req, errNotSup, "zeroing is not faster than writing here")
			}
			err = cn.writeZeroes(ctx, share, w, off, n)
		}
	}
	if err == nil && req.flags&cmdFlagFUA != 0 {
		err = w.Flush()
	}
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return cn.errorReply(req, errShutdown, "connection or server ending")
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// The client may free space (trim) or stop; nothing is damaged.
		log.Warn("nbd write: no space left", "command", req.typ, "offset", off, "length", n, "err", err)
		return cn.errorReply(req, errNoSpc, "no space left on the server")
	}
	if err != nil {
		log.Error("nbd write", "command", req.typ, "offset", off, "length", n, "err", err)
		return cn.errorReply(req, errIO, "write failed")
	}
	return cn.okReply(req)
}

// zeroChunk is the most zeros written at once by writeZeroes.
const zeroChunk = 1 << 20

// writeZeroes zeroes a range of an export that cannot do it any better, a
// piece at a time from one buffer of the memory budget. The range may be
// as long as the export (64-bit lengths): it is given up between pieces
// once ctx is done, so that a server that stops does not wait for it.
func (cn *conn) writeZeroes(ctx context.Context, share *limiter, w io.WriterAt, off, n int64) error {
	pb, err := cn.getBuffer(ctx, share, int(min(n, zeroChunk, int64(cn.srv.opts.MaxRequest))))
	if err != nil {
		return err
	}
	defer cn.putBuffer(share, pb)
	zeros := pb.b[:cap(pb.b)]
	clear(zeros) // a reused buffer holds what it held before
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		m := min(n, int64(len(zeros)))
		if _, err := w.WriteAt(zeros[:m], off); err != nil {
			return err
		}
		off, n = off+m, n-m
	}
	return nil
}

func (cn *conn) allocation(ctx context.Context, off, length int64) ([]Extent, error) {
	if a, ok := cn.export.(Allocator); ok {
		return a.Allocation(ctx, off, length)
	}
	return []Extent{{Length: length}}, nil
}

func (cn *conn) status(ctx context.Context, context string, off, length int64) ([]Extent, error) {
	if context == contextBaseAllocation {
		return cn.allocation(ctx, off, length)
	}
	mc, ok := cn.export.(MetaContexter)
	if !ok {
		return nil, fmt.Errorf("export has no meta context %q", context)
	}
	return mc.MetaStatus(ctx, context, off, length)
}

// read answers a READ in a buffer of the server's pool, which it may wait
// for. In structured mode holes are sent as such, unless the export is so
// fragmented that their chunk headers would cost more than the data.
func (cn *conn) read(ctx context.Context, log *slog.Logger, share *limiter, req request) ([]byte, *pooledBuf) {
	off, n := int64(req.off), int64(req.length)
	if !cn.structured {
		pb, err := cn.getBuffer(ctx, share, 16+int(n))
		if err != nil {
			return cn.errorReply(req, errIO, "server shutting down"), nil
		}
		b := appendSimpleHeader(pb.b, req.cookie, 0)[:16+n]
		if err := readFull(ctx, cn.export, b[16:], off); err != nil {
			cn.putBuffer(share, pb)
			log.Error("nbd read", "offset", off, "length", n, "err", err)
			return cn.errorReply(req, errIO, "read error"), nil
		}
		return b, pb
	}
	exts := []Extent{{Length: n}}
	if req.flags&cmdFlagDF == 0 {
		var err error
		if exts, err = cn.allocation(ctx, off, n); err != nil {
			log.Error("nbd extents", "offset", off, "length", n, "err", err)
			return cn.errorReply(req, errIO, "extent error"), nil
		}
	}
	pieces, total, err := cn.readPieces(exts, off, n)
	if err != nil {
		log.Error("nbd extents do not cover the read", "offset", off, "length", n, "err", err)
		return cn.errorReply(req, errIO, "extent error"), nil
	}
	pb, err := cn.getBuffer(ctx, share, total)
	if err != nil {
		return cn.errorReply(req, errIO, "server shutting down"), nil
	}
	// The whole reply in one buffer: one copy from the export, one
	// socket write.
	out := pb.b
	for i, p := range pieces {
		flags := uint16(0)
		if i == len(pieces)-1 {
			flags = replyFlagDone
		}
		if p.hole {
			out = cn.appendChunkHeader(out, req, flags, replyOffsetHole, 12)
			out = binary.BigEndian.AppendUint64(out, uint64(p.pos))
			out = binary.BigEndian.AppendUint32(out, uint32(p.length))
			continue
		}
		out = cn.appendChunkHeader(out, req, flags, replyOffsetData, 8+int(p.length))
		out = binary.BigEndian.AppendUint64(out, uint64(p.pos))
		start := len(out)
		out = out[:start+int(p.length)]
		if err := readFull(ctx, cn.export, out[start:], p.pos); err != nil {
			cn.putBuffer(share, pb)
			log.Error("nbd read", "offset", p.pos, "length", p.length, "err", err)
			return cn.errorReply(req, errIO, "read error"), nil
		}
	}
	return out, pb
}

// readFull fills p from off; what lies past the export's end reads as
// zeros, not as what a reused buffer held before. An export that takes
// a context (ContextReaderAt) gives the read up when the client is gone.
func readFull(ctx context.Context, r io.ReaderAt, p []byte, off int64) error {
	var n int
	var err error
	if c, ok := r.(ContextReaderAt); ok {
		n, err = c.ReadAtContext(ctx, p, off)
	} else {
		n, err = r.ReadAt(p, off)
	}
	if n < len(p) {
		clear(p[n:])
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// piece is one chunk of a structured read reply.
type piece struct {
	pos, length int64
	hole        bool
}

// readPieces clips extents to the read [off, off+n) and returns its chunks
// and the reply's size. More chunks than one per 4 KiB become a single
// data chunk, which bounds the reply by maxReplySize.
func (cn *conn) readPieces(exts []Extent, off, n int64) ([]piece, int, error) {
	var pieces []piece
	total := 0
	pos := off
	hdr := cn.chunkHeaderSize()
	for _, e := range exts {
		length := min(e.Length, off+n-pos)
		if length <= 0 {
			break
		}
		hole := e.Flags&(stateHole|stateZero) != 0
		pieces = append(pieces, piece{pos, length, hole})
		if hole {
			total += hdr + 12
		} else {
			total += hdr + 8 + int(length)
		}
		pos += length
		if int64(len(pieces)) > n/4096+1 {
			return []piece{{off, n, false}}, hdr + 8 + int(n), nil
		}
	}
	if pos != off+n {
		return nil, 0, fmt.Errorf("extents cover %d bytes", pos-off)
	}
	return pieces, total, nil
}

const (
	// statusWindow is the longest range an export is asked to describe
	// at once: it builds all the extents of the range before the reply
	// takes what it holds, and this bounds them (65536 of 4 KiB).
	statusWindow = 256 << 20
	// maxStatusScan bounds the range one block status request
	// describes: the protocol lets a server describe less than asked,
	// and clients ask again for the rest.
	maxStatusScan = 16 << 30
	// maxStatusReply bounds the descriptors of one block status reply,
	// all meta contexts together (2 MiB of 64-bit ones).
	maxStatusReply = 1 << 17
	// statusGrain is the smallest extent a reply makes room for: the
	// block of the filesystems and images served. Finer extents end a
	// reply early, where the client asks on.
	statusGrain = 4096
)

// blockStatus answers with one chunk per negotiated meta context: 32-bit
// descriptors in structured mode, 64-bit ones with extended headers. The
// reply is built in a buffer of the server's pool, taken before the
// export is asked.
func (cn *conn) blockStatus(ctx context.Context, log *slog.Logger, share *limiter, req request) ([]byte, *pooledBuf) {
	limit := cn.statusLimit()
	if limit == 0 {
		return cn.errorReply(req, errNoMem, "too many meta contexts for the server's memory budget"), nil
	}
	// Room for a descriptor per block asked at most: the buffer of a
	// short request's reply is small.
	limit = int(min(uint64(limit), req.length/statusGrain+2))
	if req.flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	head, size := cn.descriptorLayout()
	pb, err := cn.getBuffer(ctx, share, len(cn.contexts)*(cn.chunkHeaderSize()+head+limit*size))
	if err != nil {
		return cn.errorReply(req, errIO, "server shutting down"), nil
	}
	typ := uint16(replyBlockStatus)
	if cn.extended {
		typ = replyBlockStatusExt
	}
	out := pb.b
	for i, name := range cn.contexts {
		exts, err := cn.describe(ctx, name, int64(req.off), int64(req.length), limit)
		if err == nil && len(exts) == 0 {
			err = errors.New("no extents")
		}
		if err != nil {
			cn.putBuffer(share, pb)
			log.Error("nbd block status", "context", name, "offset", req.off, "err", err)
			return cn.errorReply(req, errIO, "block status error"), nil
		}
		flags := uint16(0)
		if i == len(cn.contexts)-1 {
			flags = replyFlagDone
		}
		out = cn.appendChunkHeader(out, req, flags, typ, head+len(exts)*size)
		out = binary.BigEndian.AppendUint32(out, uint32(i+1))
		if cn.extended {
			out = binary.BigEndian.AppendUint32(out, uint32(len(exts)))
		}
		for _, e := range exts {
			// In compact mode every length fits in 32 bits: no more
			// is described than the request's 32-bit length.
			if cn.extended {
				out = binary.BigEndian.AppendUint64(out, uint64(e.Length))
				out = binary.BigEndian.AppendUint64(out, uint64(e.Flags))
			} else {
				out = binary.BigEndian.AppendUint32(out, uint32(e.Length))
				out = binary.BigEndian.AppendUint32(out, e.Flags)
			}
		}
	}
	return out, pb
}

// describe returns at most limit extents that describe [off, off+length)
// in the named meta context, or a part of it from off on: the export is
// asked a window at a time, and no further than maxStatusScan.
// Neighbours in the same state are merged, so that a long hole is one
// extent however many windows it spans.
func (cn *conn) describe(ctx context.Context, name string, off, length int64, limit int) ([]Extent, error) {
	var out []Extent
	end := off + min(length, maxStatusScan)
	for pos := off; pos < end; {
		n := min(end-pos, statusWindow)
		exts, err := cn.status(ctx, name, pos, n)
		if err != nil {
			return nil, err
		}
		covered := int64(0)
		for _, e := range exts {
			e.Length = min(e.Length, n-covered)
			if e.Length <= 0 {
				break
			}
			switch k := len(out); {
			case k > 0 && out[k-1].Flags == e.Flags:
				out[k-1].Length += e.Length
			case k == limit:
				return out, nil
			default:
				out = append(out, e)
			}
			covered += e.Length
		}
		if covered < n {
			return out, nil // the export described less: so does the reply
		}
		pos += n
	}
	return out, nil
}

// statusLimit is how many descriptors a block status reply may give each
// negotiated meta context: all together no more than maxStatusReply or
// than one chunk may hold (but one each at least), and the whole reply
// no more bytes than the largest READ reply, which a connection can
// always get a buffer for. 0: not even one each fits.
func (cn *conn) statusLimit() int {
	head, size := cn.descriptorLayout()
	k := len(cn.contexts)
	fixed := int64(k * (cn.chunkHeaderSize() + head))
	byBytes := (maxReplySize(cn.srv.opts.MaxRequest) - fixed) / int64(k*size)
	byCount := max(1, min(cn.maxDescriptors(), maxStatusReply)/k)
	return int(max(0, min(int64(byCount), byBytes)))
}

// maxDescriptors is how many descriptors one block status chunk may
// hold: as many as the protocol advises, and no more than fit in the
// maximum payload size, which binds the server's chunks too.
func (cn *conn) maxDescriptors() int {
	head, size := cn.descriptorLayout()
	return max(1, min(maxStatusDescriptors, (cn.srv.opts.MaxRequest-head)/size))
}

// descriptorLayout returns the sizes of a block status chunk's fixed
// part and of each of its descriptors.
func (cn *conn) descriptorLayout() (head, size int) {
	if cn.extended {
		return 8, 16
	}
	return 4, 8
}

func (cn *conn) okReply(req request) []byte {
	if cn.extended {
		return cn.appendChunkHeader(nil, req, replyFlagDone, replyNone, 0)
	}
	return simpleHeader(req.cookie, 0, 0)
}

func (cn *conn) errorReply(req request, errno uint32, msg string) []byte {
	if !cn.structured {
		return simpleHeader(req.cookie, errno, 0)
	}
	payload := binary.BigEndian.AppendUint32(nil, errno)
	payload = binary.BigEndian.AppendUint16(payload, uint16(len(msg)))
	payload = append(payload, msg...)
	return append(cn.appendChunkHeader(nil, req, replyFlagDone, replyError, len(payload)), payload...)
}

// simpleHeader returns a simple reply header followed by room for n bytes.
func simpleHeader(cookie uint64, errno uint32, n int) []byte {
	return appendSimpleHeader(make([]byte, 0, 16+n), cookie, errno)[:16+n]
}

func appendSimpleHeader(b []byte, cookie uint64, errno uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

func (cn *conn) chunkHeaderSize() int {
	if cn.extended {
		return 32
	}
	return 20
}

// appendChunkHeader appends a structured reply chunk header, or an
// extended one (which repeats the request's offset) when negotiated.
func (cn *conn) appendChunkHeader(b []byte, req request, flags, typ uint16, length int) []byte {
	if cn.extended {
		b = binary.BigEndian.AppendUint32(b, magicExtReply)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, req.cookie)
		b = binary.BigEndian.AppendUint64(b, req.off)
		return binary.BigEndian.AppendUint64(b, uint64(length))
	}
	b = binary.BigEndian.AppendUint32(b, magicStruct)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, req.cookie)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}
