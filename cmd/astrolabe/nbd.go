package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
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

Exports are read-only. With --writable each becomes a restore target: the
snapshot is first copied into a new PE (e.g. disk:vm1-1a2b3c4d.img), and
writes land there; the snapshot never changes. The new PE IDs are printed.

Besides base:allocation, a disk snapshot export offers the meta context
astrolabe:changed:<snapshot> for each earlier snapshot of its PE: state 1
marks the blocks changed since then ('nbdinfo --map=astrolabe:changed:S').

With --tls-cert and --tls-key clients may upgrade with STARTTLS (nbds://);
--tls-required refuses those that do not.

With --repo the exports are snapshots in that backup repository, read
straight from it (name them with their snapshot IDs).`,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "`ADDR` to listen on"},
				&cli.BoolFlag{Name: "writable", Usage: "export restore targets: writes land in new PEs copied from the snapshots"},
				&cli.StringFlag{Name: "tls-cert", Usage: "X.509 certificate chain `FILE` (PEM) for STARTTLS"},
				&cli.StringFlag{Name: "tls-key", Usage: "private key `FILE` (PEM) of --tls-cert"},
				&cli.BoolFlag{Name: "tls-required", Usage: "refuse clients that do not use TLS"},
			}, repoSourceFlags()...),
			Action: nbdServe,
		}},
	}
}

func nbdServe(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("nbd serve: want at least one PEID")
	}
	opts := nbd.Options{Logger: slog.Default(), TLSRequired: c.Bool("tls-required")}
	cert, key := c.String("tls-cert"), c.String("tls-key")
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
	m, done, err := sourceManager(c)
	if err != nil {
		return err
	}
	defer done()
	src := nbdexport.NewSource(m)
	var ids, targets []pe.ID
	for _, arg := range c.Args().Slice() {
		id, err := peArg(arg, 0)
		if err != nil {
			return err
		}
		p, err := m.Get(c.Context, id)
		if err != nil {
			return err
		}
		if !id.HasSnapshot() {
			if id, err = p.Snapshot(c.Context, nil); err != nil {
				return fmt.Errorf("snapshot %s: %w", arg, err)
			}
		}
		if c.Bool("writable") {
			target, err := src.AddWritable(c.Context, id, newProgress(c.App.ErrWriter))
			if err != nil {
				return err
			}
			targets = append(targets, target)
		} else if err := src.Add(id); err != nil {
			return err
		}
		ids = append(ids, id)
	}
	l, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return err
	}
	scheme := "nbd"
	if opts.TLSRequired {
		scheme = "nbds"
	}
	for i, id := range ids {
		if targets != nil {
			fmt.Fprintf(c.App.Writer, "%s://%s/%s writes to %s\n", scheme, l.Addr(), id, targets[i])
			continue
		}
		fmt.Fprintf(c.App.Writer, "%s://%s/%s\n", scheme, l.Addr(), id)
	}
	return nbd.NewServer(src, opts).Serve(c.Context, l)
}
