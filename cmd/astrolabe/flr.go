package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/flr"
)

func flrCommand() *cli.Command {
	return &cli.Command{
		Name:  "flr",
		Usage: "file-level recovery: mount the partitions of a disk snapshot read-only",
		Subcommands: []*cli.Command{{
			Name:      "mount",
			Usage:     "mount each partition of a disk snapshot under DIR/p1, DIR/p2, ...",
			ArgsUsage: "PEID:SNAPSHOT DIR",
			Description: `Finds the snapshot image's MBR or GPT partitions, attaches each read-only to
a loop device and mounts the filesystems the kernel knows (ext4, xfs,
vfat, ...) with ro,nodev,nosuid,noexec (plus noload for ext3/4 and
norecovery for xfs, so no journal is replayed) under DIR/p1, DIR/p2, ...
An image without a partition table is mounted as DIR/disk. DIR must be
empty or not exist. Undo with 'astrolabe flr umount DIR'. Needs root.`,
			Action: func(c *cli.Context) error {
				a, err := args(c, 2, "PEID:SNAPSHOT DIR")
				if err != nil {
					return err
				}
				id, err := peArg(a[0], 1)
				if err != nil {
					return err
				}
				m, err := loadManager(c)
				if err != nil {
					return err
				}
				p, err := m.Get(c.Context, id)
				if err != nil {
					return err
				}
				mounted, err := flr.Mount(c.Context, p, a[1])
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "PARTITION\tFILESYSTEM\tSIZE\tMOUNTED AT")
				for _, m := range mounted {
					at := m.Dir
					if m.Skipped != "" {
						at, m.FSType = "- ("+m.Skipped+")", "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, m.FSType, humanBytes(m.Size), at)
				}
				return tw.Flush()
			},
		}, {
			Name:      "umount",
			Usage:     "unmount what 'flr mount' mounted under DIR and detach its loop devices",
			ArgsUsage: "DIR",
			Action: func(c *cli.Context) error {
				a, err := args(c, 1, "DIR")
				if err != nil {
					return err
				}
				if err := flr.Unmount(c.Context, a[0]); err != nil {
					return err
				}
				fmt.Fprintf(c.App.ErrWriter, "unmounted %s\n", a[0])
				return nil
			},
		}},
	}
}
