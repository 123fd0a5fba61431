package daemon

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func loopbackAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8443} }

// The generated certificate is a leaf for the appliance's names under a CA
// constrained to those names, and Go clients that pin the file accept it.
func TestCertLeaf(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, err := ensureCert(quiet(), dir, loopbackAddr(), &net.TCPAddr{IP: net.IPv4zero, Port: 9000})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := readCerts(certFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 {
		t.Fatalf("cert.pem holds %d certificates, want the server's and its CA", len(chain))
	}
	c, ca := chain[0], chain[1]
	if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero || len(ca.PermittedDNSDomains) == 0 || len(ca.PermittedIPRanges) == 0 {
		t.Errorf("CA not constrained: path len %d, DNS %v, IP %v", ca.MaxPathLen, ca.PermittedDNSDomains, ca.PermittedIPRanges)
	}
	if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("not a server leaf: CA %v, key usage %v, ext %v", c.IsCA, c.KeyUsage, c.ExtKeyUsage)
	}
	host, _ := os.Hostname()
	for _, name := range []string{"localhost", host} {
		if err := c.VerifyHostname(name); err != nil {
			t.Errorf("name %s: %v", name, err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1"} {
		if err := c.VerifyHostname(ip); err != nil {
			t.Errorf("address %s: %v", ip, err)
		}
	}
	// Listening on all addresses names this machine's addresses.
	ifaddrs, _ := net.InterfaceAddrs()
	for _, a := range ifaddrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
			if err := c.VerifyHostname(n.IP.String()); err != nil {
				t.Errorf("interface address %s: %v", n.IP, err)
			}
		}
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(certFile)
	pool.AppendCertsFromPEM(pem)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"}); err != nil {
		t.Errorf("the pinned file does not verify the server: %v", err)
	}
	// The CA signs nothing outside the appliance's names.
	caOnly := x509.NewCertPool()
	caOnly.AddCert(ca)
	if _, err := c.Verify(x509.VerifyOptions{Roots: caOnly, DNSName: "localhost"}); err != nil {
		t.Errorf("the CA does not verify the server: %v", err)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CA not self-signed: %v", err)
	}

	// A real handshake: TLS 1.2 with a CBC suite is refused, AEAD works.
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsConfig(pair))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	dial := func(cfg *tls.Config) error {
		cfg.RootCAs, cfg.ServerName = pool, "localhost"
		conn, err := tls.Dial("tcp", l.Addr().String(), cfg)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	}}); err == nil {
		t.Error("TLS 1.2 with CBC-SHA1 suites was accepted")
	}
	for _, suite := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256} {
		if err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}}); err != nil {
			t.Errorf("TLS 1.2 with %s: %v", tls.CipherSuiteName(suite), err)
		}
	}
	if err := dial(&tls.Config{MinVersion: tls.VersionTLS13}); err != nil {
		t.Errorf("TLS 1.3: %v", err)
	}
}

// oldCert writes a certificate as the appliance made them before: a
// self-signed, unconstrained CA.
func oldCert(t *testing.T, dir, org string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "astrolabe appliance x", Organization: []string{org}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	os.MkdirAll(dir, 0o700)
	if writePEM(filepath.Join(dir, "key.pem"), 0o600, "EC PRIVATE KEY", kd) != nil || writePEM(filepath.Join(dir, "cert.pem"), 0o644, "CERTIFICATE", der) != nil {
		t.Fatal("write old certificate")
	}
}

func TestCertCARegenerated(t *testing.T) {
	dir := t.TempDir()
	oldCert(t, dir, certOrg)
	oldKey, _ := os.ReadFile(filepath.Join(dir, "key.pem"))
	var logs bytes.Buffer
	certFile, _, err := ensureCert(slog.New(slog.NewTextHandler(&logs, nil)), dir, loopbackAddr())
	if err != nil {
		t.Fatal(err)
	}
	chain, err := readCerts(certFile)
	if err != nil || len(chain) != 2 || chain[0].IsCA || chain[0].KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Fatalf("after start: %d certificates, %v", len(chain), err)
	}
	if newKey, _ := os.ReadFile(filepath.Join(dir, "key.pem")); bytes.Equal(newKey, oldKey) {
		t.Error("the key of the CA was kept")
	}
	if !strings.Contains(logs.String(), "older form") {
		t.Errorf("not logged: %s", logs.String())
	}
	// Stable from then on.
	before, _ := os.ReadFile(certFile)
	ensureCert(quiet(), dir, loopbackAddr())
	if after, _ := os.ReadFile(certFile); !bytes.Equal(before, after) {
		t.Error("a good certificate was generated again")
	}
	// A listener on a new address: generated again with it and the old names.
	ensureCert(quiet(), dir, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 1})
	chain, _ = readCerts(certFile)
	c := chain[0]
	if c.VerifyHostname("127.0.0.2") != nil || c.VerifyHostname("127.0.0.1") != nil {
		t.Errorf("SANs after a new address: %v", c.IPAddresses)
	}
}

// A certificate the administrator put there is theirs, CA or not.
func TestCertConfiguredKept(t *testing.T) {
	dir := t.TempDir()
	oldCert(t, dir, "Example Corp")
	before, _ := os.ReadFile(filepath.Join(dir, "cert.pem"))
	if _, _, err := ensureCert(quiet(), dir, loopbackAddr()); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "cert.pem")); !bytes.Equal(before, after) {
		t.Error("the administrator's certificate was replaced")
	}
}
