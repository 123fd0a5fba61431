package nbd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clientCerts makes a client CA and a certificate it signs, and returns
// the CA's pool and a directory as libnbd and qemu want it: ca-cert.pem
// (the server's CA, from serverCerts, and the client CA: qemu checks its
// own certificate against it too), client-cert.pem, client-key.pem.
func clientCerts(t *testing.T, serverCerts string) (*x509.CertPool, string) {
	t.Helper()
	ca := newTestCA(t, "astrolabe test client CA")
	leafDER, key := ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "backup proxy"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serverCA, err := os.ReadFile(filepath.Join(serverCerts, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"ca-cert.pem":     append(serverCA, ca.pem()...),
		"client-cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		"client-key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool, dir
}

// tryTool runs a client tool that may fail and returns its output.
func tryTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// TestClientCertificates: writable exports are listed to and opened by
// clients with a verified certificate only; read-only ones as Anonymous
// says.
func TestClientCertificates(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	sparseImage(t, filepath.Join(dir, "ro.img"), 4*mib, map[int64]int{0: mib})
	sparseImage(t, filepath.Join(dir, "w.rw"), 4*mib, nil)
	cfg, serverCerts := testCerts(t)
	pool, withCert := clientCerts(t, serverCerts)
	cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven

	// A certificate from another CA authenticates nobody.
	_, strangerCert := clientCerts(t, serverCerts)

	addr := serveWith(t, fileSource{dir}, Options{TLSConfig: cfg})
	plain := "nbd://" + addr
	tlsNoCert := "nbds://" + addr + "/?tls-certificates=" + serverCerts
	stranger := "nbds://" + addr + "/?tls-certificates=" + strangerCert
	tlsCert := "nbds://" + addr + "/?tls-certificates=" + withCert
	uri := func(base, name string) string { return strings.Replace(base, "/?", "/"+name+"?", 1) }

	// LIST shows the writable export to the authenticated client only.
	for _, c := range []struct {
		uri      string
		writable bool
	}{{plain, false}, {tlsNoCert, false}, {tlsCert, true}} {
		out, err := tryTool(t, "nbdinfo", "--list", c.uri)
		if err != nil || !strings.Contains(out, "ro.img") || strings.Contains(out, "w.rw") != c.writable {
			t.Errorf("nbdinfo --list %s (writable shown: %v): %v\n%s", c.uri, c.writable, err, out)
		}
	}
	// A stranger's certificate fails the TLS handshake: it was offered
	// and does not verify.
	if out, err := tryTool(t, "nbdinfo", "--list", stranger); err == nil {
		t.Errorf("a certificate of another CA was accepted:\n%s", out)
	}

	// Read-only: everyone reads.
	for _, base := range []string{"nbd://" + addr + "/?", tlsNoCert, tlsCert} {
		if out, err := tryTool(t, "nbdinfo", uri(base, "ro.img")); err != nil || !strings.Contains(out, "is_read_only: true") {
			t.Errorf("nbdinfo %s: %v\n%s", uri(base, "ro.img"), err, out)
		}
	}
	// Writable: refused to the plain client and to the TLS client without
	// a certificate, as if it did not exist.
	for _, base := range []string{"nbd://" + addr + "/?", tlsNoCert} {
		out, err := tryTool(t, "nbdinfo", uri(base, "w.rw"))
		if err == nil || !strings.Contains(out, "No such file") {
			t.Errorf("nbdinfo %s: want refused as unknown, got %v\n%s", uri(base, "w.rw"), err, out)
		}
	}
	src := filepath.Join(t.TempDir(), "src.img")
	want := sparseImage(t, src, 4*mib, map[int64]int{mib: mib})
	if out, err := tryTool(t, "nbdcopy", src, uri(tlsNoCert, "w.rw")); err == nil {
		t.Errorf("nbdcopy into the writable export without a certificate:\n%s", out)
	}
	// With the certificate: nbdcopy and qemu-img write.
	run(t, "nbdcopy", src, uri(tlsCert, "w.rw"))
	if got := fileSum(t, filepath.Join(dir, "w.rw")); string(got) != string(want) {
		t.Error("nbdcopy with a client certificate: the export differs")
	}
	host, port, _ := strings.Cut(addr, ":")
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "--object", "tls-creds-x509,id=tls0,dir="+withCert+",endpoint=client",
		"--target-image-opts", src, "driver=nbd,host="+host+",port="+port+",export=w.rw,tls-creds=tls0")
	out, err := tryTool(t, "qemu-img", "info", "--object", "tls-creds-x509,id=tls0,dir="+serverCerts+",endpoint=client",
		"--image-opts", "driver=nbd,host="+host+",port="+port+",export=w.rw,tls-creds=tls0")
	if err == nil {
		t.Errorf("qemu-img without a client certificate opened the writable export:\n%s", out)
	}

	// AnonymousNone: the plain client gets neither the list nor an export.
	addr = serveWith(t, fileSource{dir}, Options{TLSConfig: cfg, Anonymous: AnonymousNone})
	if out, err := tryTool(t, "nbdinfo", "--list", "nbd://"+addr); err == nil || strings.Contains(out, "ro.img") {
		t.Errorf("anonymous LIST with AnonymousNone: %v\n%s", err, out)
	}
	if out, err := tryTool(t, "nbdinfo", "nbd://"+addr+"/ro.img"); err == nil || strings.Contains(out, "export-size") {
		t.Errorf("anonymous read with AnonymousNone: %v\n%s", err, out)
	}
	if out := run(t, "nbdinfo", "nbds://"+addr+"/ro.img?tls-certificates="+withCert); !strings.Contains(out, "export-size: 4194304") {
		t.Errorf("authenticated read with AnonymousNone:\n%s", out)
	}
}
