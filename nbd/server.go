package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/connlimit"
)

// ContextReaderAt is offered by exports whose reads can be given up:
// a read for a connection that ended stops with ctx's error.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// Export is one block device served over NBD. ReadAt must be safe for
// concurrent use: requests on a connection run in parallel. An Export is
// read-only unless it is also a Writer.
type Export interface {
	io.ReaderAt
	Size() int64
}

// Writer is offered by writable exports. WriteAt must be safe for
// concurrent use, like ReadAt.
type Writer interface {
	io.WriterAt
	// Flush makes every completed write durable.
	Flush() error
}

// Zeroer is offered by writable exports that can zero a range without
// writing its bytes; it enables TRIM and FAST_ZERO. With punch the range may
// become a hole; without it the range must stay allocated. An error
// matching errors.ErrUnsupported means it cannot be done fast: the server
// then writes zeros, or fails a FAST_ZERO request with ENOTSUP.
type Zeroer interface {
	Zero(off, length int64, punch bool) error
}

// MetaContexter is offered by exports with meta contexts of their own
// besides base:allocation (which every export has).
type MetaContexter interface {
	// MetaContexts lists the names of the export's contexts.
	MetaContexts(ctx context.Context) ([]string, error)
	// MetaStatus describes [off, off+length) in the named context as
	// contiguous extents with the context's state flags.
	MetaStatus(ctx context.Context, name string, off, length int64) ([]Extent, error)
}

// Extent is a run of an export with base:allocation state flags
// (StateHole, StateZero).
type Extent struct {
	Length int64
	Flags  uint32
}

// Exported base:allocation states.
const (
	StateHole = stateHole
	StateZero = stateZero
)

// Allocator is offered by exports that know their holes; they get the
// base:allocation meta context and holes in structured reads.
type Allocator interface {
	// Allocation describes [off, off+length) as contiguous extents.
	Allocation(ctx context.Context, off, length int64) ([]Extent, error)
}

// ExportInfo names an export for LIST and INFO. Writable exports are
// listed only to authenticated clients.
type ExportInfo struct {
	Name        string
	Description string
	Writable    bool
}

// Source lists and opens exports. Open returns ErrUnknownExport for names it
// does not serve; an Export that is an io.Closer is closed when the
// connection ends.
type Source interface {
	List(ctx context.Context) ([]ExportInfo, error)
	Open(ctx context.Context, name string) (Export, error)
}

// ErrUnknownExport is returned by Source.Open for names it does not serve.
var ErrUnknownExport = errors.New("unknown export")

// Options configure a Server. Zero values mean the defaults.
type Options struct {
	Logger *slog.Logger
	// MaxRequest bounds the lengths of READs and WRITEs, and is the
	// maximum payload size the server advertises (default 32 MiB; at
	// most 4 GiB - 1, which is all the protocol can advertise).
	MaxRequest int
	// Concurrency bounds requests in flight per connection (default 16).
	Concurrency int
	// TLSConfig enables STARTTLS; TLSRequired refuses every option but
	// STARTTLS and ABORT until TLS is up (the protocol's FORCEDTLS mode).
	TLSConfig   *tls.Config
	TLSRequired bool
	// Anonymous is what a client without a verified TLS client
	// certificate may do; the default is AnonymousReadOnly. Client
	// certificates are verified against TLSConfig.ClientCAs, so its
	// ClientAuth must ask for them (tls.VerifyClientCertIfGiven, or
	// tls.RequireAndVerifyClientCert to refuse clients without one).
	Anonymous Anonymous

	// MemoryBudget bounds the bytes of request payloads and replies in
	// flight on all connections together (default 256 MiB); one
	// connection may hold a quarter of it, or one largest reply, and
	// anonymous connections all together an eighth of it (or one largest
	// reply), so that they cannot starve authenticated clients. A client
	// that does not read its replies stops being read from.
	MemoryBudget int64
	// MaxConns bounds the connections in all (default 256) and
	// MaxConnsPerClient those from one IP address (default 64: 16
	// nbdcopy runs of 4 connections each); more are closed at once.
	MaxConns          int
	MaxConnsPerClient int
	// IdleTimeout closes a connection that sends no request while none
	// is in flight for that long (default 15 minutes; negative: never).
	IdleTimeout time.Duration
	// WriteStallTimeout closes a connection on which a reply, or the
	// payload of a WRITE, makes no progress for that long, which gives
	// its buffers back (default 30 seconds; negative: never, and a
	// payload then has the idle timeout). A slow client that keeps
	// reading or sending is not cut.
	WriteStallTimeout time.Duration
}

// Anonymous is what clients without a client certificate may do.
type Anonymous int

const (
	// AnonymousReadOnly lets them list and read read-only exports;
	// writable exports are neither listed to them nor opened.
	AnonymousReadOnly Anonymous = iota
	// AnonymousNone refuses them every export and the list.
	AnonymousNone
	// AnonymousReadWrite lets them do everything: for servers that
	// authenticate otherwise (a private socket, a test).
	AnonymousReadWrite
)

func (a Anonymous) String() string {
	switch a {
	case AnonymousReadOnly:
		return "read-only"
	case AnonymousNone:
		return "none"
	case AnonymousReadWrite:
		return "read-write"
	}
	return fmt.Sprintf("Anonymous(%d)", int(a))
}

// Server serves a Source over NBD.
type Server struct {
	src     Source
	opts    Options
	log     *slog.Logger
	buffers *bufferPool // of request payloads and replies, all connections
	anon    *limiter    // anonymous connections' share of buffers
	conns   *connlimit.Counter
}

const (
	defaultMaxRequest        = 32 << 20
	defaultConcurrency       = 16
	defaultMemoryBudget      = 256 << 20
	defaultMaxConns          = 256
	defaultMaxConnsPerClient = 64
	defaultIdleTimeout       = 15 * time.Minute
	defaultWriteStallTimeout = 30 * time.Second
	maxOptionLength          = 64 << 10 // no option we accept needs more
	maxOptions               = 1024     // per handshake: bounds a client that never chooses
	handshakeTimeout         = 30 * time.Second
	shutdownGrace            = 5 * time.Second // for replies in flight when the server stops
)

// NewServer returns a server for src.
func NewServer(src Source, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxRequest <= 0 {
		opts.MaxRequest = defaultMaxRequest
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = defaultConcurrency
	}
	if opts.MemoryBudget <= 0 {
		opts.MemoryBudget = defaultMemoryBudget
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = defaultMaxConns
	}
	if opts.MaxConnsPerClient <= 0 {
		opts.MaxConnsPerClient = defaultMaxConnsPerClient
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.WriteStallTimeout == 0 {
		opts.WriteStallTimeout = defaultWriteStallTimeout
	}
	s := &Server{
		src: src, opts: opts, log: opts.Logger,
		buffers: newBufferPool(opts.MemoryBudget),
		conns:   connlimit.New(opts.MaxConns, opts.MaxConnsPerClient),
	}
	s.anon = newLimiter(s.anonShare())
	return s
}

// Check reports options that cannot work together.
func (o Options) Check() error {
	if o.TLSRequired && o.TLSConfig == nil {
		return errors.New("nbd: TLS required but no certificate configured")
	}
	if int64(o.MaxRequest) > math.MaxUint32 {
		return fmt.Errorf("nbd: maximum request of %d bytes is more than the protocol can advertise", o.MaxRequest)
	}
	if o.MemoryBudget > 0 && o.MemoryBudget < maxReplySize(o.MaxRequest) {
		return fmt.Errorf("nbd: memory budget of %d bytes does not hold one reply of %d", o.MemoryBudget, maxReplySize(o.MaxRequest))
	}
	return nil
}

// maxReplySize bounds the reply to a READ of n bytes: the data, and a
// chunk header for each extent of at least 4 KiB (smaller extents are
// sent as data, see read). n <= 0 means the default request size.
func maxReplySize(n int) int64 {
	if n <= 0 {
		n = defaultMaxRequest
	}
	return int64(n) + (int64(n)/4096+2)*(32+12)
}

// connShare is what one connection may hold of the memory budget.
func (s *Server) connShare() int64 {
	return max(s.opts.MemoryBudget/4, maxReplySize(s.opts.MaxRequest))
}

// anonShare is what anonymous connections may hold of the memory budget
// all together: anyone who can connect can make the server hold
// replies, for as long as the write stall timeout each time.
func (s *Server) anonShare() int64 {
	return max(s.opts.MemoryBudget/8, maxReplySize(s.opts.MaxRequest))
}

// Serve accepts connections on l until ctx is cancelled, then closes l,
// waits for connections to finish their requests, and returns nil.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if err := s.opts.Check(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nbd accept: %w", err)
		}
		key := connlimit.Key(c.RemoteAddr())
		if ok, why := s.conns.Add(key); !ok {
			// Debug: anyone can knock, and a warning each time would
			// let them fill the log.
			s.log.Debug("nbd connection refused", "remote", c.RemoteAddr().String(), "reason", why)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.conns.Remove(key)
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	log := s.log.With("remote", c.RemoteAddr().String())
	// A connection ends with the server: unblock reads when ctx is done,
	// and writes to a client that does not read soon after.
	stop := context.AfterFunc(ctx, func() {
		c.SetReadDeadline(time.Now())
		c.SetWriteDeadline(time.Now().Add(shutdownGrace))
	})
	defer stop()

	c.SetDeadline(time.Now().Add(handshakeTimeout))
	conn, err := s.handshake(ctx, c)
	if err != nil {
		if !errors.Is(err, errClientDone) {
			// Failures of clients nobody vouches for are theirs, not
			// the server's: they go to debug, as anonymous connects do.
			log.Log(ctx, conn.logLevel(), "nbd handshake failed", "err", err, "client", conn.clientName())
		}
		return
	}
	c.SetDeadline(time.Time{})
	defer conn.closeExport()
	log = log.With("export", conn.name)
	if name := conn.clientName(); name != "" {
		log = log.With("client", name)
	}
	log.Debug("nbd client connected", "structured", conn.structured, "extended", conn.extended, "tls", conn.tls)
	if err := conn.transmit(ctx, log); err != nil && ctx.Err() == nil {
		log.Log(ctx, conn.logLevel(), "nbd connection ended", "err", err)
	}
}
