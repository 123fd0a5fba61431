package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// errClientDone ends a handshake the client closed on purpose (ABORT, or
// hanging up after LIST as nbdinfo --list does).
var errClientDone = errors.New("client ended the handshake")

// conn is the state of one connection after the handshake.
type conn struct {
	srv        *Server
	c          net.Conn
	r          *bufio.Reader
	name       string
	export     Export
	structured bool
	allocation bool // base:allocation was set
}

func (s *Server) handshake(ctx context.Context, c net.Conn) (*conn, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.Write(hello[:]); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	var cflags uint32
	if err := binary.Read(r, binary.BigEndian, &cflags); err != nil {
		return nil, fmt.Errorf("client flags: %w", err)
	}
	if cflags&flagFixedNewstyle == 0 {
		return nil, fmt.Errorf("client does not speak fixed newstyle (flags %#x)", cflags)
	}
	if cflags&^uint32(flagFixedNewstyle|flagNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", cflags)
	}
	noZeroes := cflags&flagNoZeroes != 0
	cn := &conn{srv: s, c: c, r: r}
	var pending map[string]bool // meta contexts of SET before GO
	for range maxOptions {
		var h struct {
			Magic  uint64
			Option uint32
			Length uint32
		}
		if err := binary.Read(r, binary.BigEndian, &h); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errClientDone
			}
			return nil, fmt.Errorf("option header: %w", err)
		}
		if h.Magic != magicOpt {
			return nil, fmt.Errorf("bad option magic %#x", h.Magic)
		}
		if h.Length > maxOptionLength {
			// Skip what we can bound; a client sending more is broken.
			if _, err := io.CopyN(io.Discard, r, int64(h.Length)); err != nil {
				return nil, fmt.Errorf("option %d: %w", h.Option, err)
			}
			if err := cn.optReply(h.Option, repErrTooBig, []byte("option too long")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("option %d data: %w", h.Option, err)
		}
		switch h.Option {
		case optExportName:
			if err := cn.open(ctx, string(data)); err != nil {
				// The protocol has no error reply here: hang up.
				return nil, err
			}
			var b [10 + 124]byte
			binary.BigEndian.PutUint64(b[0:], uint64(cn.export.Size()))
			binary.BigEndian.PutUint16(b[8:], cn.transmissionFlags())
			n := 10 + 124
			if noZeroes {
				n = 10
			}
			if _, err := c.Write(b[:n]); err != nil {
				return nil, err
			}
			return cn, nil
		case optAbort:
			cn.optReply(h.Option, repAck, nil)
			return nil, errClientDone
		case optList:
			if err := cn.list(ctx, h.Option, data); err != nil {
				return nil, err
			}
		case optStructuredReply:
			if len(data) != 0 {
				if err := cn.optReply(h.Option, repErrInvalid, []byte("no data expected")); err != nil {
					return nil, err
				}
				continue
			}
			cn.structured = true
			if err := cn.optReply(h.Option, repAck, nil); err != nil {
				return nil, err
			}
		case optListMetaContext, optSetMetaContext:
			set, err := cn.metaContext(h.Option, data)
			if err != nil {
				return nil, err
			}
			if h.Option == optSetMetaContext {
				pending = set
			}
		case optInfo, optGo:
			done, err := cn.info(ctx, h.Option, data)
			if err != nil {
				return nil, err
			}
			if done {
				cn.allocation = pending[contextBaseAllocation]
				return cn, nil
			}
		default:
			if err := cn.optReply(h.Option, repErrUnsup, []byte(fmt.Sprintf("option %d not supported", h.Option))); err != nil {
				return nil, err
			}
		}
	}
	return nil, fmt.Errorf("more than %d options without choosing an export", maxOptions)
}

func (cn *conn) optReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	if _, err := cn.c.Write(append(h[:], data...)); err != nil {
		return fmt.Errorf("option %d reply: %w", opt, err)
	}
	return nil
}

func (cn *conn) open(ctx context.Context, name string) error {
	e, err := cn.srv.src.Open(ctx, name)
	if err != nil {
		return fmt.Errorf("open export %q: %w", name, err)
	}
	if cn.export != nil {
		if cl, ok := cn.export.(io.Closer); ok {
			cl.Close()
		}
	}
	cn.name, cn.export = name, e
	return nil
}

func (cn *conn) transmissionFlags() uint16 {
	// Read-only exports are consistent across connections, so clients
	// may open several (nbdcopy does).
	return tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagSendDF | tflagCanMultiConn | tflagSendCache
}

func (cn *conn) list(ctx context.Context, opt uint32, data []byte) error {
	if len(data) != 0 {
		return cn.optReply(opt, repErrInvalid, []byte("LIST takes no data"))
	}
	exports, err := cn.srv.src.List(ctx)
	if err != nil {
		cn.srv.log.Warn("nbd list exports", "err", err)
		return cn.optReply(opt, repErrPolicy, []byte("cannot list exports"))
	}
	for _, e := range exports {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, e.Description...)
		if err := cn.optReply(opt, repServer, b); err != nil {
			return err
		}
	}
	return cn.optReply(opt, repAck, nil)
}

// parseNameAndCount reads the "u32 length, name, then u16 or u32 count"
// prefix shared by INFO/GO and the meta context options.
func parseName(data []byte) (name string, rest []byte, ok bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n) > uint64(len(data)-4) {
		return "", nil, false
	}
	return string(data[4 : 4+n]), data[4+n:], true
}

// info answers INFO and GO; for GO it reports done once the export is open.
func (cn *conn) info(ctx context.Context, opt uint32, data []byte) (done bool, err error) {
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 2 || len(rest) != 2+2*int(binary.BigEndian.Uint16(rest)) {
		return false, cn.optReply(opt, repErrInvalid, []byte("malformed INFO/GO request"))
	}
	var requested []uint16
	for i := 2; i < len(rest); i += 2 {
		requested = append(requested, binary.BigEndian.Uint16(rest[i:]))
	}
	prev, prevName := cn.export, cn.name
	if err := cn.open(ctx, name); err != nil {
		if !errors.Is(err, ErrUnknownExport) {
			cn.srv.log.Warn("nbd open", "export", name, "err", err)
		}
		return false, cn.optReply(opt, repErrUnknown, []byte(fmt.Sprintf("export %q not available", name)))
	}
	desc := ""
	if exports, err := cn.srv.src.List(ctx); err == nil {
		for _, e := range exports {
			if e.Name == name {
				desc = e.Description
			}
		}
	}
	infoReply := func(typ uint16, payload []byte) error {
		return cn.optReply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, typ), payload...))
	}
	for _, t := range requested {
		switch t {
		case infoName:
			err = infoReply(infoName, []byte(name))
		case infoDescription:
			if desc != "" {
				err = infoReply(infoDescription, []byte(desc))
			}
		case infoBlockSize:
			b := binary.BigEndian.AppendUint32(nil, 1)
			b = binary.BigEndian.AppendUint32(b, 4096)
			b = binary.BigEndian.AppendUint32(b, uint32(cn.srv.opts.MaxRequest))
			err = infoReply(infoBlockSize, b)
		}
		if err != nil {
			return false, err
		}
	}
	b := binary.BigEndian.AppendUint64(nil, uint64(cn.export.Size()))
	b = binary.BigEndian.AppendUint16(b, cn.transmissionFlags())
	if err := infoReply(infoExport, b); err != nil {
		return false, err
	}
	if err := cn.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optInfo {
		// INFO only looks: keep what GO/EXPORT_NAME chose before, if anything.
		if cl, ok := cn.export.(io.Closer); ok {
			cl.Close()
		}
		cn.export, cn.name = prev, prevName
		return false, nil
	}
	return true, nil
}

// metaContext answers LIST_META_CONTEXT and SET_META_CONTEXT. We offer
// base:allocation for exports that know their holes.
func (cn *conn) metaContext(opt uint32, data []byte) (map[string]bool, error) {
	if opt == optSetMetaContext && !cn.structured {
		return nil, cn.optReply(opt, repErrInvalid, []byte("SET_META_CONTEXT needs structured replies"))
	}
	_, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		return nil, cn.optReply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for range count {
		q, r, ok := parseName(rest)
		if !ok {
			return nil, cn.optReply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries, rest = append(queries, q), r
	}
	if len(rest) != 0 {
		return nil, cn.optReply(opt, repErrInvalid, []byte("trailing bytes in meta context request"))
	}
	if len(queries) == 0 && opt == optListMetaContext {
		queries = []string{"base:"}
	}
	set := map[string]bool{}
	for _, q := range queries {
		if q == contextBaseAllocation || (opt == optListMetaContext && strings.HasPrefix(contextBaseAllocation, q) && strings.HasSuffix(q, ":")) {
			set[contextBaseAllocation] = true
		}
	}
	if set[contextBaseAllocation] {
		b := binary.BigEndian.AppendUint32(nil, baseAllocationID)
		if err := cn.optReply(opt, repMetaContext, append(b, contextBaseAllocation...)); err != nil {
			return nil, err
		}
	}
	return set, cn.optReply(opt, repAck, nil)
}
