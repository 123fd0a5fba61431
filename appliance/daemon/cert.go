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
// start it generates a server certificate for this host's names and
// addresses and the listeners' addresses, signed by a CA made for it alone:
// the CA may sign only for those names (name constraints, path length 0)
// and its key is thrown away once it has signed, so nothing else can ever
// chain to it. cert.pem holds the server certificate and then the CA.
// Clients trust it by pinning the file (Go, curl) or its CA (GnuTLS-based
// libnbd and qemu, which accept only a CA as a trust anchor).
//
// A certificate the appliance generated earlier is generated again, with
// new keys, when it is of an older form (a self-signed CA or leaf), has
// expired or lacks one of those names; a configured pair is used as it is.
func ensureCert(log *slog.Logger, dir string, addrs ...net.Addr) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	dns, ips := certNames(addrs)
	old, err := readCerts(certFile)
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
		dns, ips = union(dns, old[0].DNSNames), unionIP(ips, old[0].IPAddresses)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("TLS directory: %w", err)
	}
	chain, keyDER, err := newCertChain(dns, ips)
	if err != nil {
		return "", "", err
	}
	// The key first: a certificate without its key would be taken as
	// configured on the next start.
	if err := writePEM(keyFile, 0o600, "EC PRIVATE KEY", keyDER); err != nil {
		return "", "", err
	}
	if err := writePEM(certFile, 0o644, "CERTIFICATE", chain...); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// readCerts reads the certificates of a PEM file, in order.
func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("TLS certificate %s: %w", filepath.Base(path), err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("TLS certificate %s: no PEM certificate", filepath.Base(path))
	}
	return certs, nil
}

// generated reports whether the chain is one the appliance made: its last
// certificate self-signed by the appliance (older versions made only that
// one certificate).
func generated(chain []*x509.Certificate) bool {
	c := chain[len(chain)-1]
	return slices.Equal(c.Subject.Organization, []string{certOrg}) &&
		strings.HasPrefix(c.Subject.CommonName, "astrolabe appliance") &&
		// Self-signed (CheckSignatureFrom refuses a leaf as a parent).
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// certProblem says why a generated chain must be made again, or "".
func certProblem(chain []*x509.Certificate, dns []string, ips []net.IP) string {
	if len(chain) != 2 {
		return "it is of an older form (one self-signed certificate)"
	}
	leaf, ca := chain[0], chain[1]
	if leaf.IsCA || !ca.IsCA || !ca.PermittedDNSDomainsCritical || leaf.CheckSignatureFrom(ca) != nil {
		return "it is not a server certificate under a constrained CA"
	}
	if time.Now().After(leaf.NotAfter) || time.Now().After(ca.NotAfter) {
		return "it expired"
	}
	for _, n := range dns {
		if !slices.Contains(leaf.DNSNames, n) {
			return "it lacks the name " + n
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
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

// newCertChain makes a server certificate for the names and a new P-256
// key, signed by a new CA that may sign only for those names and whose key
// is dropped here. It returns the certificates (server, CA) and the
// server's key, DER-encoded.
func newCertChain(dns []string, ips []net.IP) (chain [][]byte, key []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	notBefore, notAfter := time.Now().Add(-time.Hour), time.Now().AddDate(10, 0, 0)
	var ranges []*net.IPNet
	for _, ip := range ips {
		ranges = append(ranges, &net.IPNet{IP: ip, Mask: net.CIDRMask(len(ip)*8, len(ip)*8)})
	}
	caTmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "astrolabe appliance CA " + host, Organization: []string{certOrg}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageCertSign,
		// It signs one server certificate for these names and nothing
		// else: no intermediate, no other name.
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         dns,
		PermittedIPRanges:           ranges,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "astrolabe appliance " + host, Organization: []string{certOrg}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	key, err = x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return [][]byte{der, caDER}, key, nil
}

func writePEM(path string, perm os.FileMode, typ string, ders ...[]byte) error {
	return atomicfile.Write(path, perm, func(w io.Writer) error {
		for _, der := range ders {
			if err := pem.Encode(w, &pem.Block{Type: typ, Bytes: der}); err != nil {
				return err
			}
		}
		return nil
	})
}
