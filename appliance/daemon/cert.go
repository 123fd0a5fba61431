package daemon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
)

// certOrg marks the certificates the appliance generated itself; others
// were put there by the administrator and are used as they are.
const certOrg = "Astrolabe"

// ensureCert returns the appliance's certificate and key in dir. On first
// start it generates a self-signed leaf certificate (not a CA: it can sign
// nothing) for this host's names and addresses and the listeners'
// addresses; clients trust it by pinning the file as their only root. A
// certificate the appliance generated earlier is generated again, with a
// new key, when it is a CA (as before issue 22) or lacks one of those
// names; a configured pair is used as it is.
func ensureCert(log *slog.Logger, dir string, addrs ...net.Addr) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	dns, ips := certNames(addrs)
	old, err := readCert(certFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return "", "", err
	case !generated(old):
		return certFile, keyFile, nil
	default:
		why := certProblem(old, dns, ips)
		if why == "" {
			return certFile, keyFile, nil
		}
		log.Warn("TLS certificate generated again with a new key: clients that pinned the old one must trust the new file",
			"reason", why, "cert", certFile)
		// Keep the names it had, so that listeners of an earlier start
		// on other addresses stay valid.
		dns, ips = union(dns, old.DNSNames), unionIP(ips, old.IPAddresses)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("TLS directory: %w", err)
	}
	der, keyDER, err := newLeafCert(dns, ips)
	if err != nil {
		return "", "", err
	}
	// The key first: a certificate without its key would be taken as
	// configured on the next start.
	if err := writePEM(keyFile, 0o600, "EC PRIVATE KEY", keyDER); err != nil {
		return "", "", err
	}
	if err := writePEM(certFile, 0o644, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("TLS certificate %s: no PEM certificate", filepath.Base(path))
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s: %w", filepath.Base(path), err)
	}
	return c, nil
}

// generated reports whether c is a certificate the appliance made.
func generated(c *x509.Certificate) bool {
	return slices.Equal(c.Subject.Organization, []string{certOrg}) &&
		strings.HasPrefix(c.Subject.CommonName, "astrolabe appliance") &&
		// Self-signed (CheckSignatureFrom refuses a leaf as a parent).
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// certProblem says why a generated certificate must be made again, or "".
func certProblem(c *x509.Certificate, dns []string, ips []net.IP) string {
	if c.IsCA || c.KeyUsage&x509.KeyUsageCertSign != 0 {
		return "it is a CA"
	}
	if time.Now().After(c.NotAfter) {
		return "it expired"
	}
	for _, n := range dns {
		if !slices.Contains(c.DNSNames, n) {
			return "it lacks the name " + n
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
			return "it lacks the address " + ip.String()
		}
	}
	return ""
}

// certNames are the names clients reach the appliance by: this host's
// name, localhost, the loopback addresses, the listeners' addresses and,
// for listeners on all addresses, every address of this machine.
func certNames(addrs []net.Addr) (dns []string, ips []net.IP) {
	dns = []string{"localhost"}
	if host, err := os.Hostname(); err == nil && host != "" && host != "localhost" {
		dns = append(dns, host)
	}
	ips = []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}
	all := false
	for _, a := range addrs {
		tcp, ok := a.(*net.TCPAddr)
		switch {
		case !ok:
		case tcp.IP.IsUnspecified():
			all = true
		default:
			ips = unionIP(ips, []net.IP{tcp.IP})
		}
	}
	if all {
		ifaddrs, _ := net.InterfaceAddrs()
		for _, a := range ifaddrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				ips = unionIP(ips, []net.IP{n.IP})
			}
		}
	}
	return dns, ips
}

func union(a, b []string) []string {
	for _, s := range b {
		if !slices.Contains(a, s) {
			a = append(a, s)
		}
	}
	return a
}

func unionIP(a, b []net.IP) []net.IP {
	for _, ip := range b {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		if !slices.ContainsFunc(a, ip.Equal) {
			a = append(a, ip)
		}
	}
	return a
}

// newLeafCert makes a self-signed server certificate for the names and a
// new P-256 key; it returns both DER-encoded.
func newLeafCert(dns []string, ips []net.IP) (cert, key []byte, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "astrolabe appliance " + host, Organization: []string{certOrg}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		// A leaf: it cannot sign certificates for other names, so a
		// client that pins it trusts this appliance and nothing else.
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	cert, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, nil, err
	}
	key, err = x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func writePEM(path string, perm os.FileMode, typ string, der []byte) error {
	return atomicfile.Write(path, perm, func(w io.Writer) error {
		return pem.Encode(w, &pem.Block{Type: typ, Bytes: der})
	})
}
