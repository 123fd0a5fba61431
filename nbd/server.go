package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

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

// ExportInfo names an export for LIST and INFO.
type ExportInfo struct {
	Name        string
	Description string
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
	// MaxRequest bounds READ lengths (default 32 MiB).
	MaxRequest int
	// Concurrency bounds requests in flight per connection (default 16).
	Concurrency int
	// TLSConfig enables STARTTLS; TLSRequired refuses every option but
	// STARTTLS and ABORT until TLS is up (the protocol's FORCEDTLS mode).
	TLSConfig   *tls.Config
	TLSRequired bool
}

// Server serves a Source over NBD.
type Server struct {
	src     Source
	opts    Options
	log     *slog.Logger
	buffers sync.Pool // of *[]byte, reply buffers
}

const (
	defaultMaxRequest  = 32 << 20
	defaultConcurrency = 16
	maxOptionLength    = 64 << 10 // no option we accept needs more
	maxOptions         = 1024     // per handshake: bounds a client that never chooses
	handshakeTimeout   = 30 * time.Second
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
	return &Server{src: src, opts: opts, log: opts.Logger}
}

// Check reports options that cannot work together.
func (o Options) Check() error {
	if o.TLSRequired && o.TLSConfig == nil {
		return errors.New("nbd: TLS required but no certificate configured")
	}
	return nil
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	log := s.log.With("remote", c.RemoteAddr().String())
	// A connection ends with the server: unblock reads when ctx is done.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()

	c.SetDeadline(time.Now().Add(handshakeTimeout))
	conn, err := s.handshake(ctx, c)
	if err != nil {
		if !errors.Is(err, errClientDone) {
			log.Warn("nbd handshake failed", "err", err)
		}
		return
	}
	c.SetDeadline(time.Time{})
	defer conn.closeExport()
	log = log.With("export", conn.name)
	log.Debug("nbd client connected", "structured", conn.structured, "extended", conn.extended, "tls", conn.tls)
	if err := conn.transmit(ctx, log); err != nil && ctx.Err() == nil {
		log.Warn("nbd connection ended", "err", err)
	}
}
