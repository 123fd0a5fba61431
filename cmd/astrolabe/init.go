package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
)

func initCommand() *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "write a working configuration directory (fs and disk PEs under DIR)",
		ArgsUsage: "DIR",
		Description: `Writes DIR/pes/fs.pe.json and DIR/pes/disk.pe.json with roots DIR/fs and
DIR/disk. With --samples it also creates fs:sample, a small directory tree,
and disk:sample.img, a 64 MiB sparse disk image with an MBR partition table
and one ext4 partition (needs mke2fs from e2fsprogs). Use the directory with
--config DIR or ASTROLABE_CONFIG=DIR.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "samples", Usage: "create sample PEs"},
		},
		Action: func(c *cli.Context) error {
			a, err := args(c, 1, "DIR")
			if err != nil {
				return err
			}
			dir, err := filepath.Abs(a[0])
			if err != nil {
				return err
			}
			if err := config.Init(dir); err != nil {
				return err
			}
			if c.Bool("samples") {
				tree := filepath.Join(dir, "fs", "sample")
				if err := samples.WriteTree(tree); err != nil {
					return err
				}
				if err := samples.WriteDisk(c.Context, filepath.Join(dir, "disk", "sample.img"), tree); err != nil {
					return err
				}
			}
			fmt.Fprintf(c.App.ErrWriter, "wrote configuration to %s; use it with --config %s\n", dir, dir)
			fmt.Fprintln(c.App.Writer, dir)
			return nil
		},
	}
}
