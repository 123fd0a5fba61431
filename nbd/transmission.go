package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

// transmit serves requests until the client disconnects. Requests run
// concurrently (bounded); replies are written whole under a lock, so they
// may complete out of order as the protocol allows.
func (cn *conn) transmit(ctx context.Context, log *slog.Logger) error {
	var (
		wg   sync.WaitGroup
		wmu  sync.Mutex
		sem  = make(chan struct{}, cn.srv.opts.Concurrency)
		hdr  [28]byte
		werr error
	)
	defer wg.Wait()
	send := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		if werr != nil {
			return
		}
		if _, err := cn.c.Write(b); err != nil {
			werr = err
		}
	}
	for {
		if _, err := io.ReadFull(cn.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("request header: %w", err)
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != magicRequest {
			return fmt.Errorf("bad request magic %#x", m)
		}
		req := request{
			flags:  binary.BigEndian.Uint16(hdr[4:]),
			typ:    binary.BigEndian.Uint16(hdr[6:]),
			cookie: binary.BigEndian.Uint64(hdr[8:]),
			off:    binary.BigEndian.Uint64(hdr[16:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		switch req.typ {
		case cmdDisc:
			return nil
		case cmdWrite:
			// The payload follows the header: consume it to stay in sync,
			// then refuse; exports are read-only.
			if _, err := io.CopyN(io.Discard, cn.r, int64(req.length)); err != nil {
				return fmt.Errorf("write payload: %w", err)
			}
			send(cn.errorReply(req, errPerm, "export is read-only"))
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			reply := cn.handle(ctx, log, req)
			send(reply)
			cn.srv.putBuffer(reply)
		}()
		wmu.Lock()
		err := werr
		wmu.Unlock()
		if err != nil {
			return fmt.Errorf("send reply: %w", err)
		}
	}
}

// handle runs one request and returns its complete reply.
func (cn *conn) handle(ctx context.Context, log *slog.Logger, req request) []byte {
	size := uint64(cn.export.Size())
	switch req.typ {
	case cmdRead, cmdCache, cmdBlockStatus:
		if req.length == 0 || req.off > size || uint64(req.length) > size-req.off {
			return cn.errorReply(req, errInval, "request outside the export")
		}
	}
	switch req.typ {
	case cmdRead:
		if int(req.length) > cn.srv.opts.MaxRequest {
			return cn.errorReply(req, errOverflow, "request too large")
		}
		return cn.read(ctx, log, req)
	case cmdFlush, cmdCache:
		return cn.okReply(req)
	case cmdTrim, cmdWriteZeroes:
		return cn.errorReply(req, errPerm, "export is read-only")
	case cmdBlockStatus:
		if !cn.allocation {
			return cn.errorReply(req, errInval, "no meta context negotiated")
		}
		return cn.blockStatus(ctx, log, req)
	}
	return cn.errorReply(req, errInval, fmt.Sprintf("unknown command %d", req.typ))
}

func (cn *conn) extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if a, ok := cn.export.(Allocator); ok {
		return a.Allocation(ctx, off, length)
	}
	return []Extent{{Length: length}}, nil
}

func (cn *conn) read(ctx context.Context, log *slog.Logger, req request) []byte {
	off, n := int64(req.off), int64(req.length)
	if !cn.structured {
		b := simpleHeader(req.cookie, 0, int(n))
		if _, err := cn.export.ReadAt(b[16:], off); err != nil && !(errors.Is(err, io.EOF)) {
			log.Error("nbd read", "offset", off, "length", n, "err", err)
			return cn.errorReply(req, errIO, "read error")
		}
		return b
	}
	exts := []Extent{{Length: n}}
	if req.flags&cmdFlagDF == 0 {
		var err error
		if exts, err = cn.extents(ctx, off, n); err != nil {
			log.Error("nbd extents", "offset", off, "length", n, "err", err)
			return cn.errorReply(req, errIO, "extent error")
		}
	}
	// Clip the extents to the request, then build the whole reply in one
	// buffer: one allocation, one copy from the export, one socket write.
	type piece struct {
		pos, length int64
		hole        bool
	}
	var pieces []piece
	total := 0
	pos := off
	for _, e := range exts {
		length := min(e.Length, off+n-pos)
		if length <= 0 {
			break
		}
		hole := e.Flags&(stateHole|stateZero) != 0
		pieces = append(pieces, piece{pos, length, hole})
		if hole {
			total += 20 + 12
		} else {
			total += 20 + 8 + int(length)
		}
		pos += length
	}
	if pos != off+n {
		log.Error("nbd extents do not cover the read", "offset", off, "length", n, "covered", pos-off)
		return cn.errorReply(req, errIO, "extent error")
	}
	out := cn.srv.getBuffer(total)
	for i, p := range pieces {
		flags := uint16(0)
		if i == len(pieces)-1 {
			flags = replyFlagDone
		}
		if p.hole {
			out = appendStructHeader(out, req.cookie, flags, replyOffsetHole, 12)
			out = binary.BigEndian.AppendUint64(out, uint64(p.pos))
			out = binary.BigEndian.AppendUint32(out, uint32(p.length))
			continue
		}
		out = appendStructHeader(out, req.cookie, flags, replyOffsetData, 8+int(p.length))
		out = binary.BigEndian.AppendUint64(out, uint64(p.pos))
		start := len(out)
		out = out[:start+int(p.length)]
		if _, err := cn.export.ReadAt(out[start:], p.pos); err != nil && !errors.Is(err, io.EOF) {
			log.Error("nbd read", "offset", p.pos, "length", p.length, "err", err)
			return cn.errorReply(req, errIO, "read error")
		}
	}
	return out
}

func (cn *conn) blockStatus(ctx context.Context, log *slog.Logger, req request) []byte {
	exts, err := cn.extents(ctx, int64(req.off), int64(req.length))
	if err != nil {
		log.Error("nbd block status", "offset", req.off, "err", err)
		return cn.errorReply(req, errIO, "extent error")
	}
	if req.flags&cmdFlagReqOne != 0 && len(exts) > 1 {
		exts = exts[:1]
	}
	payload := binary.BigEndian.AppendUint32(nil, baseAllocationID)
	left := int64(req.length)
	for _, e := range exts {
		// Never describe more than was asked: the request length is 32
		// bits, so every clipped extent fits the descriptor.
		n := min(e.Length, left)
		if n <= 0 {
			break
		}
		payload = binary.BigEndian.AppendUint32(payload, uint32(n))
		payload = binary.BigEndian.AppendUint32(payload, e.Flags)
		left -= n
	}
	return append(structHeader(req.cookie, replyFlagDone, replyBlockStatus, len(payload)), payload...)
}

func (cn *conn) okReply(req request) []byte {
	if cn.structured {
		return structHeader(req.cookie, replyFlagDone, 0, 0)
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
	return append(structHeader(req.cookie, replyFlagDone, replyError, len(payload)), payload...)
}

// simpleHeader returns a simple reply header followed by room for n bytes.
func simpleHeader(cookie uint64, errno uint32, n int) []byte {
	b := make([]byte, 16+n)
	binary.BigEndian.PutUint32(b[0:], magicSimple)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], cookie)
	return b
}

func structHeader(cookie uint64, flags, typ uint16, length int) []byte {
	return appendStructHeader(make([]byte, 0, 20+length), cookie, flags, typ, length)
}

func appendStructHeader(b []byte, cookie uint64, flags, typ uint16, length int) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStruct)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, uint32(length))
}

// Read replies are the bulk of the traffic; reusing their buffers (a pool
// per server) keeps the garbage collector out of the data path.
func (s *Server) getBuffer(n int) []byte {
	if b, ok := s.buffers.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, n)
}

func (s *Server) putBuffer(b []byte) {
	if cap(b) < 64<<10 || cap(b) > 64<<20 {
		return // small replies are cheap; huge ones should not be pinned
	}
	s.buffers.Put(&b)
}
