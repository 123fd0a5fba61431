package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
)

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount all PEs and their snapshots read-only with FUSE until SIGINT/SIGTERM",
		ArgsUsage: "MOUNTPOINT",
		Description: `The tree is MOUNTPOINT/<type>/<pe-id>/snapshots/<snapshot>/ with info.json,
metadata (if any), and data plus partitions/p1, p2, ... for disk PEs, or
files/ (the directory tree) for fs PEs; components/ links to component
PEs. New snapshots appear without remounting. Runs in the foreground; on
SIGINT/SIGTERM it unmounts (lazily if something still uses the mount).
With --repo it mounts the snapshots in that backup repository instead,
read straight from it (nothing is restored first).
Files show the owners and modes of the PE (a disk snapshot's data those
of its image file; the mounting user only, 0400, where a PE type keeps no file, such as
repository snapshots) and the kernel checks them, so --allow-other lets
other users read only what they could read of the PE itself.
Needs /dev/fuse (root, or fuse3 with user_allow_other for --allow-other).`,
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "allow-other", Usage: "let other users than the mounting one see the tree (off by default; file modes still apply)"},
		}, repoSourceFlags()...),
		Action: func(c *cli.Context) error {
			a, err := args(c, 1, "MOUNTPOINT")
			if err != nil {
				return err
			}
			m, done, err := sourceManager(c)
			if err != nil {
				return err
			}
			defer done()
			uc, err := usecase.New(usecase.Config{Manager: m, Logger: slog.Default()})
			if err != nil {
				return err
			}
			mnt, err := uc.MountAt(c.Context, "mount", a[0], c.Bool("allow-other"))
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "mounted at %s\n", a[0])
			<-c.Context.Done()
			if err := uc.Unmount(context.WithoutCancel(c.Context), mnt.ID); err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "unmounted %s\n", a[0])
			return nil
		},
	}
}
