package daemon

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
)

// The NBD client CA in the config directory's tls/: it signs the client
// certificates that authenticate NBD clients (IssueNBDClientCert).
const (
	nbdClientCAFile    = "nbd-client-ca.pem"
	nbdClientCAKeyFile = "nbd-client-ca-key.pem"
)

// The files of a client certificate directory, as libnbd
// (tls-certificates=DIR) and qemu (tls-creds-x509,dir=DIR) read them.
const (
	clientCAName   = "ca-cert.pem"
	clientCertName = "client-cert.pem"
	clientKeyName  = "client-key.pem"
)

// nbdTLSConfig is the NBD server's TLS configuration: the appliance's
// certificate, and the client CAs whose certificates authenticate.
func nbdTLSConfig(certFile, keyFile string, clientCAs *x509.CertPool, requireCert bool) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("NBD certificate: %w", err)
	}
	cfg := tlsConfig(pair)
	cfg.ClientCAs = clientCAs
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	if requireCert {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// nbdClientCAs returns the pool of the config directory's client CA
// (made on first use) and of extraFile, an administrator's CA, if set.
func nbdClientCAs(tlsDir, extraFile string) (*x509.CertPool, string, error) {
	ca, _, caFile, err := ensureNBDClientCA(tlsDir)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if extraFile != "" {
		b, err := os.ReadFile(extraFile)
		if err != nil {
			return nil, "", fmt.Errorf("NBD client CA: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, "", fmt.Errorf("NBD client CA %s: no PEM certificate in it", extraFile)
		}
	}
	return pool, caFile, nil
}

// ensureNBDClientCA returns the client CA of dir, making it on first use.
func ensureNBDClientCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, string, error) {
	certFile, keyFile := filepath.Join(dir, nbdClientCAFile), filepath.Join(dir, nbdClientCAKeyFile)
	if _, err := os.Stat(certFile); err == nil {
		return loadNBDClientCA(certFile, keyFile)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, "", fmt.Errorf("NBD client CA: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, "", fmt.Errorf("TLS directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, "", err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "astrolabe NBD client CA " + host, Organization: []string{"Astrolabe"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs client certificates, no CAs
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, "", err
	}
	// The key first: a CA certificate without its key would be taken as
	// complete on the next start.
	if err := writePEM(keyFile, 0o600, "PRIVATE KEY", keyDER); err != nil {
		return nil, nil, "", err
	}
	if err := writePEM(certFile, 0o644, "CERTIFICATE", der); err != nil {
		return nil, nil, "", err
	}
	return loadNBDClientCA(certFile, keyFile)
}

func loadNBDClientCA(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, string, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, "", fmt.Errorf("NBD client CA: %w", err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, "", fmt.Errorf("NBD client CA %s: not an ECDSA key", keyFile)
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, "", fmt.Errorf("NBD client CA %s: %w", certFile, err)
	}
	return ca, key, certFile, nil
}

func randomSerial() *big.Int {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120)) // never fails on Linux
	return serial
}

// IssueNBDClientCert writes a client certificate for NBD, signed by the
// appliance's client CA in configDir (made if missing), into outDir as
// libnbd and qemu read it: ca-cert.pem (what verifies the appliance's
// certificate, and the client CA: qemu checks its own certificate against
// it too), client-cert.pem and client-key.pem (0600). name goes into the
// certificate's subject and the appliance's log. It needs the
// appliance's certificate: 'astrolabe serve' makes it on first start.
func IssueNBDClientCert(configDir, outDir, name string, validFor time.Duration) error {
	dir := filepath.Join(configDir, tlsDir)
	chain, err := readCerts(filepath.Join(dir, "cert.pem"))
	if errors.Is(err, os.ErrNotExist) {
		return errors.New("no appliance certificate yet: start 'astrolabe serve' once first")
	}
	if err != nil {
		return fmt.Errorf("appliance certificate: %w", err)
	}
	// What a client trusts to verify the appliance: the chain's last
	// certificate, its CA (or the certificate itself when self-signed).
	root := chain[len(chain)-1].Raw
	ca, caKey, _, err := ensureNBDClientCA(dir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"Astrolabe NBD client"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validFor),
		// KeyEncipherment as well: qemu wants it in client certificates.
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return fmt.Errorf("client certificate directory: %w", err)
	}
	var cas bytes.Buffer
	pem.Encode(&cas, &pem.Block{Type: "CERTIFICATE", Bytes: root})
	pem.Encode(&cas, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	if err := writeFile(filepath.Join(outDir, clientCAName), 0o644, cas.Bytes()); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(outDir, clientKeyName), 0o600, "PRIVATE KEY", keyDER); err != nil {
		return err
	}
	return writePEM(filepath.Join(outDir, clientCertName), 0o644, "CERTIFICATE", der)
}

func writeFile(path string, perm os.FileMode, b []byte) error {
	return atomicfile.Write(path, perm, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}
