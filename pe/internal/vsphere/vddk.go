//go:build vddk

package vsphere

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/vddk"
	"github.com/astrolabe-appliance/astrolabe/vddk/vixdisklib"
)

// VDDK may be initialised once per process, whatever the number of PE
// types and vCenters using it: the loaded library is shared.
var (
	libMu   sync.Mutex
	libs    = map[string]*vixdisklib.Library{}
	libErrs = map[string]error{}
)

func loadLibrary(path string) (*vixdisklib.Library, error) {
	libMu.Lock()
	defer libMu.Unlock()
	if l := libs[path]; l != nil {
		return l, nil
	}
	if err := libErrs[path]; err != nil {
		return nil, err
	}
	if len(libs) > 0 {
		return nil, fmt.Errorf("VDDK %s: another VDDK library is loaded already; configure one", path)
	}
	l, err := vixdisklib.Load(path, "")
	if err != nil {
		libErrs[path] = err
		return nil, err
	}
	libs[path] = l
	return l, nil
}

// vddkAccess moves disk bytes with VDDK.
type vddkAccess struct {
	cfg Config
	lib *vixdisklib.Library
	log *slog.Logger
}

func newVDDKAccess(cfg Config, log *slog.Logger) (DiskAccess, error) {
	if cfg.VDDK.Library == "" {
		return nil, errors.New(`vddk: "library" must name libvixDiskLib.so or the VDDK directory`)
	}
	lib, err := loadLibrary(cfg.VDDK.Library)
	if err != nil {
		return nil, err
	}
	return &vddkAccess{cfg: cfg, lib: lib, log: log}, nil
}

// connect opens a VDDK connection to the FCD or VM of ref.
func (a *vddkAccess) connect(ctx context.Context, c *govmomi.Client, ref DiskRef, readOnly bool) (*vixdisklib.Conn, error) {
	u := c.Client.URL()
	port := 443
	if p := u.Port(); p != "" {
		port, _ = strconv.Atoi(p)
	}
	thumbprint := a.cfg.Thumbprint
	if thumbprint == "" && u.Scheme == "https" {
		var err error
		if thumbprint, err = serverThumbprint(ctx, u.Host); err != nil {
			return nil, err
		}
	}
	p := vixdisklib.ConnectParams{
		Server: u.Hostname(), Port: port, Thumbprint: thumbprint, User: a.cfg.User, Password: a.cfg.Password,
		Transports: a.cfg.VDDK.Transports, ReadOnly: readOnly,
	}
	if ref.FCD != "" {
		p.FCD, p.FCDDatastore, p.FCDSnapshot = ref.FCD, ref.Datastore.Reference().Value, ref.FCDSnapshot
	} else {
		p.VM, p.VMSnapshot = ref.VM, ref.VMSnapshot
	}
	return a.lib.Connect(ctx, p)
}

// serverThumbprint is the SHA-1 thumbprint of the server's certificate,
// which VDDK checks for nbdssl. It trusts what it sees only because the
// configuration asked for no verification; set "thumbprint" otherwise.
func serverThumbprint(ctx context.Context, host string) (string, error) {
	if !strings.Contains(host, ":") {
		host = net.JoinHostPort(host, "443")
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return "", fmt.Errorf("thumbprint of %s: %w", host, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", fmt.Errorf("thumbprint of %s: no certificate", host)
	}
	sum := sha1.Sum(certs[0].Raw)
	hex := make([]string, len(sum))
	for i, b := range sum {
		hex[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(hex, ":"), nil
}

// connDisk closes its connection with the disk.
type connDisk struct {
	*vixdisklib.Disk
	conn *vixdisklib.Conn
}

func (d *connDisk) Close() error {
	return errors.Join(d.Disk.Close(), d.conn.Close())
}

func (a *vddkAccess) Open(ctx context.Context, c *govmomi.Client, ref DiskRef) (vddk.Disk, error) {
	conn, err := a.connect(ctx, c, ref, true)
	if err != nil {
		return nil, err
	}
	d, err := conn.Open(ctx, ref.Path, false)
	if err != nil {
		conn.Close()
		return nil, err
	}
	a.log.Debug("VDDK disk open", "path", ref.Path, "fcd", ref.FCD, "transport", d.TransportMode())
	return &connDisk{Disk: d, conn: conn}, nil
}

// writeChunk is the size of VDDK writes.
const writeChunk = 1 << 20

func (a *vddkAccess) Write(ctx context.Context, c *govmomi.Client, ref DiskRef, src pe.Image, fresh bool, progress pe.Progress) error {
	conn, err := a.connect(ctx, c, ref, false)
	if err != nil {
		return err
	}
	defer conn.Close()
	d, err := conn.Open(ctx, ref.Path, true)
	if err != nil {
		return err
	}
	defer d.Close()
	if src.Size() > d.Size() {
		return fmt.Errorf("write %s: the source's %d bytes do not fit its %d", ref.Path, src.Size(), d.Size())
	}
	if progress != nil {
		progress.Start(d.Size())
	}
	exts, err := src.Extents(ctx, 0, src.Size())
	if err != nil {
		return fmt.Errorf("write %s: extents of the source: %w", ref.Path, err)
	}
	if tail := d.Size() - src.Size(); tail > 0 {
		exts = append(exts, pe.Extent{Offset: src.Size(), Length: tail, Kind: pe.ExtentHole})
	}
	buf := make([]byte, writeChunk)
	zero := make([]byte, writeChunk)
	for _, x := range exts {
		for off := x.Offset; off < x.Offset+x.Length; off += writeChunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(writeChunk, x.Offset+x.Length-off)
			switch {
			case x.Kind == pe.ExtentData:
				if _, err := src.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("write %s: read the source at %d: %w", ref.Path, off, err)
				}
				if _, err := d.WriteAt(buf[:n], off); err != nil {
					return err
				}
			case !fresh:
				// The old bytes must go: VDDK has no unmap for this.
				if _, err := d.WriteAt(zero[:n], off); err != nil {
					return err
				}
			}
			if progress != nil {
				progress.Add(n)
			}
		}
	}
	return nil
}
