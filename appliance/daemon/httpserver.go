package daemon

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"

	"github.com/astrolabe-appliance/astrolabe/internal/connlimit"
)

// HTTPLimits bound what one client can hold of an HTTP listener (the API
// and the S3 data path each have their own). Zero values mean the defaults.
type HTTPLimits struct {
	// HeaderTimeout bounds the TLS handshake and reading a request's
	// headers, so a connection that sends nothing is closed.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection between requests.
	IdleTimeout time.Duration
	// StallTimeout closes a connection on which a request body or a
	// response makes no progress for that long. It is not a bound on a
	// whole request: a 10 GiB download that keeps moving runs as long as
	// it takes.
	StallTimeout time.Duration
	// MaxConns caps the connections a listener serves at once; further
	// clients wait in the kernel's accept queue until one closes.
	MaxConns int
	// MaxConnsPerClient caps those from one IP address; more are closed
	// at once, so that one client cannot take all MaxConns.
	MaxConnsPerClient int
}

// Defaults of HTTPLimits.
const (
	DefaultHTTPHeaderTimeout     = 10 * time.Second
	DefaultHTTPIdleTimeout       = 2 * time.Minute
	DefaultHTTPStallTimeout      = 2 * time.Minute
	DefaultHTTPMaxConns          = 128
	DefaultHTTPMaxConnsPerClient = 32
)

func (l HTTPLimits) withDefaults() HTTPLimits {
	if l.HeaderTimeout <= 0 {
		l.HeaderTimeout = DefaultHTTPHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultHTTPIdleTimeout
	}
	if l.StallTimeout <= 0 {
		l.StallTimeout = DefaultHTTPStallTimeout
	}
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultHTTPMaxConns
	}
	if l.MaxConnsPerClient <= 0 {
		l.MaxConnsPerClient = DefaultHTTPMaxConnsPerClient
	}
	return l
}

// tlsConfig is the TLS of the appliance's listeners: TLS 1.2 with only
// forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305),
// or TLS 1.3, whose suites are all AEAD.
func tlsConfig(pair tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
}

// newHTTPServer returns a server for handler and the listener to serve it
// on: l capped at lim.MaxConns in all and lim.MaxConnsPerClient per
// client IP address, with TLS if tlsCfg is set. The server has
// no whole-request read or write timeout (that would cut long transfers);
// stallGuard bounds the time without progress instead.
func newHTTPServer(l net.Listener, handler http.Handler, tlsCfg *tls.Config, lim HTTPLimits, log *slog.Logger) (*http.Server, net.Listener) {
	lim = lim.withDefaults()
	srv := &http.Server{
		Handler:           stallGuard(handler, lim.StallTimeout),
		ReadHeaderTimeout: lim.HeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         tlsCfg,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	// Per client inside the cap in all: refused connections never take
	// one of its places.
	l = connlimit.Listener(l, connlimit.New(0, lim.MaxConnsPerClient), func(c net.Conn, why string) {
		log.Debug("HTTP connection refused", "remote", c.RemoteAddr().String(), "reason", why)
	})
	l = netutil.LimitListener(l, lim.MaxConns)
	if tlsCfg != nil {
		l = tls.NewListener(l, tlsCfg)
	}
	return srv, l
}

// stallGuard gives each read of the request body and each write of the
// response a deadline of stall from when it starts, through the
// connection's deadlines: a client that stops sending or stops reading
// loses its connection after stall, one that keeps moving is never cut.
func stallGuard(h http.Handler, stall time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// A deadline left by an earlier request on this connection must
		// not cut this one while its handler works before writing.
		rc.SetWriteDeadline(time.Time{})
		sw := &stallWriter{ResponseWriter: w, rc: rc, stall: stall}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &stallReader{ReadCloser: r.Body, rc: rc, stall: stall}
		}
		h.ServeHTTP(sw, r)
		// The server flushes what is buffered after the handler returns.
		rc.SetWriteDeadline(time.Now().Add(stall))
	})
}

type stallWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	stall time.Duration
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.stall))
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

type stallReader struct {
	io.ReadCloser
	rc    *http.ResponseController
	stall time.Duration
}

func (r *stallReader) Read(p []byte) (int, error) {
	r.rc.SetReadDeadline(time.Now().Add(r.stall))
	n, err := r.ReadCloser.Read(p)
	if err != nil {
		// Once the body is read the server watches the connection for
		// the client going away; a deadline left here would look like
		// that and cancel a handler that works longer than stall (a
		// restore after its upload).
		r.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
