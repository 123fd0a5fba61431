package main

import (
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
			Usage:     "export PE snapshots read-only over NBD until SIGINT/SIGTERM",
			ArgsUsage: "PEID...",
			Description: `Each PE snapshot is exported under its full PE ID, e.g.
nbd://127.0.0.1:10809/disk:vm1.img:SNAP. A PE ID without snapshot is
snapshotted first. fs PEs are exported as their tar data. 'nbdinfo --list
nbd://127.0.0.1:10809' lists the exports.`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "`ADDR` to listen on"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() == 0 {
					return usagef("nbd serve: want at least one PEID")
				}
				m, err := loadManager(c)
				if err != nil {
					return err
				}
				var ids []pe.ID
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
					ids = append(ids, id)
				}
				src, err := nbdexport.NewSource(m, ids)
				if err != nil {
					return err
				}
				l, err := net.Listen("tcp", c.String("listen"))
				if err != nil {
					return err
				}
				for _, id := range ids {
					fmt.Fprintf(c.App.Writer, "nbd://%s/%s\n", l.Addr(), id)
				}
				srv := nbd.NewServer(src, nbd.Options{Logger: slog.Default()})
				return srv.Serve(c.Context, l)
			},
		}},
	}
}
