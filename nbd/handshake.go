package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
)

// errClientDone ends a handshake the client closed on purpose (ABORT, or
// hanging up after LIST as nbdinfo --list does).
var errClientDone = errors.New("client ended the handshake")

// conn is the state of one connection.
type conn struct {
	srv        *Server
	c          net.Conn // the TLS connection once STARTTLS is done
	r          *bufio.Reader
	tls        bool
	name       string
	export     Export
	structured bool // structured replies, or extended headers (which imply them)
	extended   bool
	// contexts are the meta contexts of the last SET_META_CONTEXT, which
	// applies only if the client goes on to the export it named.
	contexts     []string
	contextsFor  string
	contextsSet  bool
	blockMaxSize uint32
}

// option is one option request of the handshake.
type option struct {
	code uint32
	data []byte
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
	cn := &conn{srv: s, c: c, r: r, blockMaxSize: uint32(s.opts.MaxRequest)}
	for range maxOptions {
		opt, tooBig, err := cn.readOption()
		if err != nil {
			return cn, err
		}
		if tooBig {
			if err := cn.optReply(opt.code, repErrTooBig, []byte("option too long")); err != nil {
				return cn, err
			}
			continue
		}
		if s.opts.TLSRequired && !cn.tls && opt.code != optStartTLS && opt.code != optAbort {
			if opt.code == optExportName {
				// This option cannot be refused with an error: hang up.
				return cn, errors.New("client chose an export without TLS, which is required")
			}
			if err := cn.optReply(opt.code, repErrTLSReqd, []byte("TLS is required: use STARTTLS")); err != nil {
				return cn, err
			}
			continue
		}
		done, err := cn.option(ctx, opt, noZeroes)
		if err != nil || done {
			return cn, err
		}
	}
	return cn, fmt.Errorf("more than %d options without choosing an export", maxOptions)
}

// errNotAllowed refuses an export to a client that is not authenticated.
var errNotAllowed = errors.New("a client certificate is required")

// authenticated reports whether the client showed a certificate that
// verified against the server's client CAs.
func (cn *conn) authenticated() bool {
	if cn == nil {
		return false
	}
	tc, ok := cn.c.(*tls.Conn)
	return ok && len(tc.ConnectionState().VerifiedChains) > 0
}

// clientName is the subject of the client's verified certificate, or "".
func (cn *conn) clientName() string {
	if !cn.authenticated() {
		return ""
	}
	return cn.c.(*tls.Conn).ConnectionState().VerifiedChains[0][0].Subject.String()
}

// logLevel is how loudly the connection's failures are logged: only
// authenticated clients' are warnings.
func (cn *conn) logLevel() slog.Level {
	if cn.authenticated() {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// mayList reports whether the client may see an export in LIST.
func (cn *conn) mayList(e ExportInfo) bool {
	switch {
	case cn.authenticated() || cn.srv.opts.Anonymous == AnonymousReadWrite:
		return true
	case cn.srv.opts.Anonymous == AnonymousNone:
		return false
	}
	return !e.Writable
}

// mayOpen checks that the client may use export e. A writable export is
// refused as unknown: its name is all that protects it, and a client
// without the right to it learns nothing of whether it exists.
func (cn *conn) mayOpen(e Export) error {
	if cn.authenticated() || cn.srv.opts.Anonymous == AnonymousReadWrite {
		return nil
	}
	if _, writable := e.(Writer); writable {
		return fmt.Errorf("writable export for an anonymous client: %w", ErrUnknownExport)
	}
	if cn.srv.opts.Anonymous == AnonymousNone {
		return errNotAllowed
	}
	return nil
}

// readOption reads one option request. An option longer than any we accept
// is skipped and reported as tooBig, so the client gets an error reply.
func (cn *conn) readOption() (opt option, tooBig bool, err error) {
	var h [16]byte
	if _, err := io.ReadFull(cn.r, h[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return opt, false, errClientDone
		}
		return opt, false, fmt.Errorf("option header: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOpt {
		return opt, false, fmt.Errorf("bad option magic %#x", m)
	}
	opt.code = binary.BigEndian.Uint32(h[8:])
	length := binary.BigEndian.Uint32(h[12:])
	if length > maxOptionLength {
		if _, err := io.CopyN(io.Discard, cn.r, int64(length)); err != nil {
			return opt, false, fmt.Errorf("option %d: %w", opt.code, err)
		}
		return opt, true, nil
	}
	opt.data = make([]byte, length)
	if _, err := io.ReadFull(cn.r, opt.data); err != nil {
		return opt, false, fmt.Errorf("option %d data: %w", opt.code, err)
	}
	return opt, false, nil
}

// option answers one option; done means the transmission phase begins.
func (cn *conn) option(ctx context.Context, opt option, noZeroes bool) (done bool, err error) {
	switch opt.code {
	case optExportName:
		if cn.extended {
			return false, errors.New("EXPORT_NAME after EXTENDED_HEADERS")
		}
		if err := cn.open(ctx, string(opt.data)); err != nil {
			// The protocol has no error reply here: hang up.
			return false, err
		}
		var b [10 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(cn.export.Size()))
		binary.BigEndian.PutUint16(b[8:], cn.transmissionFlags())
		n := len(b)
		if noZeroes {
			n = 10
		}
		if _, err := cn.c.Write(b[:n]); err != nil {
			return false, err
		}
		cn.contexts = nil // a client without GO cannot have asked for them
		return true, nil
	case optAbort:
		cn.optReply(opt.code, repAck, nil)
		return false, errClientDone
	case optList:
		return false, cn.list(ctx, opt)
	case optStartTLS:
		return false, cn.startTLS(ctx, opt)
	case optStructuredReply:
		switch {
		case len(opt.data) != 0:
			return false, cn.optReply(opt.code, repErrInvalid, []byte("no data expected"))
		case cn.extended:
			return false, cn.optReply(opt.code, repErrExtHeaderReqd, []byte("extended headers are already on"))
		}
		cn.structured = true
		return false, cn.optReply(opt.code, repAck, nil)
	case optExtendedHeaders:
		if len(opt.data) != 0 {
			return false, cn.optReply(opt.code, repErrInvalid, []byte("no data expected"))
		}
		cn.structured, cn.extended = true, true
		return false, cn.optReply(opt.code, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, cn.metaContext(ctx, opt)
	case optInfo, optGo:
		return cn.info(ctx, opt)
	}
	return false, cn.optReply(opt.code, repErrUnsup, []byte(fmt.Sprintf("option %d not supported", opt.code)))
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

// startTLS upgrades the connection. Everything negotiated in plain text is
// forgotten, as the protocol demands: it may have been tampered with.
func (cn *conn) startTLS(ctx context.Context, opt option) error {
	switch {
	case len(opt.data) != 0:
		return cn.optReply(opt.code, repErrInvalid, []byte("no data expected"))
	case cn.srv.opts.TLSConfig == nil:
		return cn.optReply(opt.code, repErrUnsup, []byte("TLS is not configured on this server"))
	case cn.tls:
		return cn.optReply(opt.code, repErrInvalid, []byte("TLS is already on"))
	}
	if err := cn.optReply(opt.code, repAck, nil); err != nil {
		return err
	}
	if cn.r.Buffered() != 0 {
		return errors.New("client sent data before the TLS handshake")
	}
	tc := tls.Server(cn.c, cn.srv.opts.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	cn.c, cn.r, cn.tls = tc, bufio.NewReader(tc), true
	cn.structured, cn.extended = false, false
	cn.contexts, cn.contextsFor, cn.contextsSet = nil, "", false
	return nil
}

func (cn *conn) open(ctx context.Context, name string) error {
	e, err := cn.openChecked(ctx, name)
	if err != nil {
		return err
	}
	cn.closeExport()
	cn.name, cn.export = name, e
	return nil
}

// openChecked opens an export the client may use.
func (cn *conn) openChecked(ctx context.Context, name string) (Export, error) {
	e, err := cn.srv.src.Open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open export %q: %w", name, err)
	}
	if err := cn.mayOpen(e); err != nil {
		if cl, ok := e.(io.Closer); ok {
			cl.Close()
		}
		return nil, fmt.Errorf("open export %q: %w", name, err)
	}
	return e, nil
}

// refuseOpen answers an option whose export could not be opened.
func (cn *conn) refuseOpen(code uint32, name string, err error) error {
	switch {
	case errors.Is(err, errNotAllowed):
		return cn.optReply(code, repErrPolicy, []byte(errNotAllowed.Error()))
	case !errors.Is(err, ErrUnknownExport):
		cn.srv.log.Warn("nbd open", "export", name, "err", err)
	}
	return cn.optReply(code, repErrUnknown, []byte(fmt.Sprintf("export %q not available", name)))
}

func (cn *conn) closeExport() {
	if cl, ok := cn.export.(io.Closer); ok {
		cl.Close()
	}
	cn.export, cn.name = nil, ""
}

func (cn *conn) transmissionFlags() uint16 {
	flags := uint16(tflagHasFlags | tflagSendFlush | tflagSendDF | tflagSendCache)
	if _, ok := cn.export.(Writer); !ok {
		// Read-only exports are consistent across connections, so
		// clients may open several (nbdcopy does).
		return flags | tflagReadOnly | tflagCanMultiConn
	}
	flags |= tflagSendFUA | tflagSendWriteZeroes
	if _, ok := cn.export.(Zeroer); ok {
		flags |= tflagSendTrim | tflagSendFastZero
	}
	return flags
}

func (cn *conn) list(ctx context.Context, opt option) error {
	if len(opt.data) != 0 {
		return cn.optReply(opt.code, repErrInvalid, []byte("LIST takes no data"))
	}
	if !cn.authenticated() && cn.srv.opts.Anonymous == AnonymousNone {
		return cn.optReply(opt.code, repErrPolicy, []byte(errNotAllowed.Error()))
	}
	exports, err := cn.srv.src.List(ctx)
	if err != nil {
		cn.srv.log.Warn("nbd list exports", "err", err)
		return cn.optReply(opt.code, repErrPolicy, []byte("cannot list exports"))
	}
	for _, e := range exports {
		if !cn.mayList(e) {
			continue
		}
		b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, e.Description...)
		if err := cn.optReply(opt.code, repServer, b); err != nil {
			return err
		}
	}
	return cn.optReply(opt.code, repAck, nil)
}

// parseName reads the "u32 length, string" that starts INFO/GO and the meta
// context options and that each meta context query is.
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
func (cn *conn) info(ctx context.Context, opt option) (done bool, err error) {
	name, rest, ok := parseName(opt.data)
	if !ok || len(rest) < 2 || len(rest) != 2+2*int(binary.BigEndian.Uint16(rest)) {
		return false, cn.optReply(opt.code, repErrInvalid, []byte("malformed INFO/GO request"))
	}
	var requested []uint16
	for i := 2; i < len(rest); i += 2 {
		requested = append(requested, binary.BigEndian.Uint16(rest[i:]))
	}
	prev, prevName := cn.export, cn.name
	cn.export = nil // open must not close the export a GO chose before an INFO
	if err := cn.open(ctx, name); err != nil {
		cn.export, cn.name = prev, prevName
		return false, cn.refuseOpen(opt.code, name, err)
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
		return cn.optReply(opt.code, repInfo, append(binary.BigEndian.AppendUint16(nil, typ), payload...))
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
			b = binary.BigEndian.AppendUint32(b, cn.blockMaxSize)
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
	if err := cn.optReply(opt.code, repAck, nil); err != nil {
		return false, err
	}
	if opt.code == optInfo {
		// INFO only looks: keep what GO/EXPORT_NAME chose before, if anything.
		cn.closeExport()
		cn.export, cn.name = prev, prevName
		return false, nil
	}
	if cl, ok := prev.(io.Closer); ok {
		cl.Close()
	}
	if !cn.contextsSet || cn.contextsFor != name {
		cn.contexts = nil
	}
	return true, nil
}

// metaContext answers LIST_META_CONTEXT and SET_META_CONTEXT. Every export
// has base:allocation; a MetaContexter export adds its own. A query that
// ends in ':' lists every context with that prefix; otherwise it names one
// context exactly.
func (cn *conn) metaContext(ctx context.Context, opt option) error {
	set := opt.code == optSetMetaContext
	if set && !cn.structured {
		return cn.optReply(opt.code, repErrInvalid, []byte("SET_META_CONTEXT needs structured replies"))
	}
	name, rest, ok := parseName(opt.data)
	if !ok || len(rest) < 4 {
		return cn.optReply(opt.code, repErrInvalid, []byte("malformed meta context request"))
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for range count {
		q, r, ok := parseName(rest)
		if !ok {
			return cn.optReply(opt.code, repErrInvalid, []byte("malformed meta context query"))
		}
		queries, rest = append(queries, q), r
	}
	if len(rest) != 0 {
		return cn.optReply(opt.code, repErrInvalid, []byte("trailing bytes in meta context request"))
	}
	available, err := cn.availableContexts(ctx, name)
	if err != nil {
		return cn.refuseOpen(opt.code, name, err)
	}
	var chosen []string
	seen := map[string]bool{}
	for _, c := range available {
		match := len(queries) == 0 && !set
		for _, q := range queries {
			match = match || c == q || (!set && strings.HasSuffix(q, ":") && strings.HasPrefix(c, q))
		}
		if match && !seen[c] && len(chosen) < maxMetaContexts {
			seen[c] = true
			chosen = append(chosen, c)
		}
	}
	for i, c := range chosen {
		// LIST replies carry ID 0; SET hands out IDs 1, 2, ... in order.
		id := uint32(0)
		if set {
			id = uint32(i + 1)
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := cn.optReply(opt.code, repMetaContext, append(b, c...)); err != nil {
			return err
		}
	}
	if set {
		cn.contexts, cn.contextsFor, cn.contextsSet = chosen, name, true
	}
	return cn.optReply(opt.code, repAck, nil)
}

// availableContexts lists the meta contexts the named export offers.
func (cn *conn) availableContexts(ctx context.Context, name string) ([]string, error) {
	e, err := cn.openChecked(ctx, name)
	if err != nil {
		return nil, err
	}
	if cl, ok := e.(io.Closer); ok {
		defer cl.Close()
	}
	out := []string{contextBaseAllocation}
	if mc, ok := e.(MetaContexter); ok {
		more, err := mc.MetaContexts(ctx)
		if err != nil {
			return nil, err
		}
		for _, m := range more {
			if m != contextBaseAllocation {
				out = append(out, m)
			}
		}
	}
	return out, nil
}
