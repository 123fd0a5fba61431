package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/daemon"
	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

func nbdCommand() *cli.Command {
	return &cli.Command{
		Name:  "nbd",
		Usage: "serve PE snapshots over NBD",
		Subcommands: []*cli.Command{{
			Name:      "serve",
			Usage:     "export PE snapshots over NBD until SIGINT/SIGTERM",
			ArgsUsage: "PEID...",
			Description: `Each PE snapshot is exported under its full PE ID, e.g.
nbd://127.0.0.1:10809/disk:vm1.img:SNAP. A PE ID without snapshot is
snapshotted first. fs PEs are exported as their tar data. 'nbdinfo --list
nbd://127.0.0.1:10809' lists the exports.

Exports are read-only. With --writable each is writable at once: reads
come from the snapshot (also one in a repository, with --repo), writes land
in a copy-on-write overlay under --overlay-dir; the snapshot never changes.
A writable export is named by the snapshot ID, a slash and a random 128-bit
token; its URI is printed. At exit the writes are discarded, or with
--keep-writes copied with the snapshot into a new PE of the configuration
(e.g. disk:vm1-1a2b3c4d.img), whose ID is printed. A full disk under the
overlay answers the client's writes with ENOSPC. (Exports of 'astrolabe
serve' keep their overlays across restarts.)

Besides base:allocation, a disk snapshot export offers the meta context
astrolabe:changed:<snapshot> for each earlier snapshot of its PE: state 1
marks the blocks changed since then ('nbdinfo --map=astrolabe:changed:S').

With --tls-cert and --tls-key clients may upgrade with STARTTLS (nbds://);
--tls-required refuses those that do not. With --tls-client-ca client
certificates signed by that CA authenticate: then only authenticated
clients see and open writable exports, and with --tls-required only they
open anything. Without it every client may use every export, so
--writable off loopback needs it.

With --repo the exports are snapshots in that backup repository, read
straight from it (name them with their snapshot IDs).`,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "`ADDR` to listen on"},
				&cli.BoolFlag{Name: "writable", Usage: "export writable at once: writes land in copy-on-write overlays, the snapshots never change"},
				&cli.StringFlag{Name: "overlay-dir", Usage: "`DIR` of the overlays of writable exports (default: state/overlays in the config directory)"},
				&cli.BoolFlag{Name: "keep-writes", Usage: "at exit, keep each writable export's writes: copy the snapshot with them into a new PE"},
				&cli.StringFlag{Name: "tls-cert", Usage: "X.509 certificate chain `FILE` (PEM) for STARTTLS"},
				&cli.StringFlag{Name: "tls-key", Usage: "private key `FILE` (PEM) of --tls-cert"},
				&cli.BoolFlag{Name: "tls-required", Usage: "refuse clients that do not use TLS"},
				&cli.StringFlag{Name: "tls-client-ca", Usage: "CA `FILE` (PEM) whose client certificates authenticate"},
			}, repoSourceFlags()...),
			Action: nbdServe,
		}, {
			Name:      "client-cert",
			Usage:     "issue a client certificate for the NBD server of 'astrolabe serve'",
			ArgsUsage: "DIR",
			Description: `Writes a client certificate signed by the config directory's NBD client
CA (tls/nbd-client-ca.pem) into DIR as libnbd and qemu read it:
ca-cert.pem (the appliance's CA and the client CA), client-cert.pem and
client-key.pem (0600). Use it with

  nbdinfo 'nbds://HOST:10809/EXPORT?tls-certificates=DIR'
  qemu-img info --object tls-creds-x509,id=tls0,dir=DIR,endpoint=client \
    --image-opts driver=nbd,host=HOST,port=10809,export=EXPORT,tls-creds=tls0

It needs the appliance's certificate, which 'astrolabe serve' makes on its
first start. Anyone with DIR's key may write into writable exports whose
names they know: keep it like a password.`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name", Value: "astrolabe NBD client", Usage: "`NAME` in the certificate's subject (and the appliance's log)"},
				&cli.DurationFlag{Name: "valid-for", Value: 365 * 24 * time.Hour, Usage: "how long the certificate is valid"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("nbd client-cert: want one DIR")
				}
				dir := c.Args().First()
				if err := daemon.IssueNBDClientCert(c.String("config"), dir, c.String("name"), c.Duration("valid-for")); err != nil {
					return err
				}
				fmt.Fprintln(c.App.Writer, dir)
				return nil
			},
		}},
	}
}

func nbdServe(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("nbd serve: want at least one PEID")
	}
	opts := nbd.Options{Logger: slog.Default(), TLSRequired: c.Bool("tls-required")}
	cert, key, clientCA := c.String("tls-cert"), c.String("tls-key"), c.String("tls-client-ca")
	switch {
	case (cert == "") != (key == ""):
		return usagef("nbd serve: --tls-cert and --tls-key go together")
	case cert != "":
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		opts.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	case opts.TLSRequired:
		return usagef("nbd serve: --tls-required needs --tls-cert and --tls-key")
	}
	switch {
	case clientCA != "" && opts.TLSConfig == nil:
		return usagef("nbd serve: --tls-client-ca needs --tls-cert and --tls-key")
	case clientCA != "":
		b, err := os.ReadFile(clientCA)
		if err != nil {
			return fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("client CA %s: no PEM certificate in it", clientCA)
		}
		opts.TLSConfig.ClientCAs, opts.TLSConfig.ClientAuth = pool, tls.VerifyClientCertIfGiven
		if opts.TLSRequired {
			opts.Anonymous = nbd.AnonymousNone
		}
	case c.Bool("writable") && !daemon.IsLoopback(c.String("listen")):
		return usagef("nbd serve: --writable off loopback needs --tls-client-ca: anyone could write")
	default:
		// The operator named each export; without client certificates
		// there is nobody to tell apart.
		opts.Anonymous = nbd.AnonymousReadWrite
	}
	if c.Bool("keep-writes") && !c.Bool("writable") {
		return usagef("nbd serve: --keep-writes goes with --writable")
	}
	ids := make([]pe.ID, c.NArg())
	for i, arg := range c.Args().Slice() {
		var err error
		if ids[i], err = peArg(arg, 0); err != nil {
			return err
		}
	}
	m, done, err := sourceManager(c)
	if err != nil {
		return err
	}
	defer done()
	l, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	defer l.Close()
	scheme := "nbd"
	if opts.TLSRequired {
		scheme = "nbds"
	}
	overlays := c.String("overlay-dir")
	if overlays == "" {
		overlays = filepath.Join(c.String("config"), config.StateDir, daemon.OverlayDir)
	}
	src := nbdexport.NewSource(m, overlays)
	uc, err := usecase.New(usecase.Config{Manager: m, Exports: src, Logger: slog.Default(),
		ExportURI: func(name string, _ bool) string { return fmt.Sprintf("%s://%s/%s", scheme, l.Addr(), name) }})
	if err != nil {
		return err
	}
	// The overlays go with the exports, whatever ends the server.
	defer func() {
		for _, x := range uc.Exports() {
			src.Remove(x.ID)
		}
	}()
	// The snapshots taken of live PEs to export them go at exit too: one
	// left per run would pile up on the PE's storage.
	var taken []pe.ID
	defer func() {
		ctx := context.WithoutCancel(c.Context)
		for _, id := range taken {
			if p, err := m.Get(ctx, id.Base()); err == nil {
				if err := p.DeleteSnapshot(ctx, id.Snapshot()); err != nil {
					slog.Warn("snapshot taken for the export not deleted", "snapshot", id, "err", err)
				}
			}
		}
	}()
	for _, id := range ids {
		x, err := uc.StartExport(c.Context, id, c.Bool("writable"))
		if !id.HasSnapshot() && !x.ID.IsZero() {
			taken = append(taken, x.ID)
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, x.URI)
	}
	err = nbd.NewServer(src, opts).Serve(c.Context, l)
	if c.Bool("keep-writes") {
		err = errors.Join(err, keepWrites(c, uc))
	}
	return err
}

// keepWrites copies each writable export of uc, the snapshot with its
// writes, into a new PE of the configuration, and prints its ID.
func keepWrites(c *cli.Context, uc *usecase.Service) error {
	local, err := loadManager(c)
	if err != nil {
		return fmt.Errorf("keep the writes: %w", err)
	}
	// The server has stopped: c.Context has ended.
	ctx := context.WithoutCancel(c.Context)
	var errs []error
	for _, x := range uc.Exports() {
		if !x.Writable {
			continue
		}
		tm, err := local.Type(ctx, x.ID.Type())
		if err == nil {
			var p pe.ProtectedEntity
			if p, err = uc.KeepWrites(ctx, x.ID, tm, newProgress(c.App.ErrWriter)); err == nil {
				fmt.Fprintf(c.App.Writer, "%s: writes kept in %s\n", x.URI, p.ID())
				continue
			}
		}
		errs = append(errs, fmt.Errorf("keep the writes of %s: %w", x.ID, err))
	}
	return errors.Join(errs...)
}
