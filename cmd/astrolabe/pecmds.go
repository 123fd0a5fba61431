package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/daemon"
	"github.com/astrolabe-appliance/astrolabe/appliance/remote"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/appliance/walarchive"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// loadManager returns the PEs to work on: those of the configuration
// directory, or those of a running appliance with --server.
func loadManager(c *cli.Context) (pe.Manager, error) {
	return loadManagerWith(c, nil)
}

// loadManagerWith is loadManager whose pg restores read the WAL archived
// in r (if not nil).
func loadManagerWith(c *cli.Context, r *repo.Repository) (pe.Manager, error) {
	if url := c.String("server"); url != "" {
		ca := c.String("server-ca")
		if ca == "" {
			// The appliance's own self-signed certificate, when this is
			// its configuration directory.
			if own := filepath.Join(c.String("config"), "tls", "cert.pem"); fileExists(own) {
				ca = own
			}
		}
		return remote.New(remote.Options{URL: url, Token: c.String("token"), CAFile: ca})
	}
	if r != nil {
		return config.Load(c.String("config"), config.Factories(config.PGWAL(walarchive.Source{Repo: r})))
	}
	return config.Load(c.String("config"), config.Factories())
}

// useCases are the use cases over the PEs of loadManager, backing up to
// and restoring from r if it is not nil.
func useCases(c *cli.Context, r *repo.Repository) (*usecase.Service, error) {
	m, err := loadManagerWith(c, r)
	if err != nil {
		return nil, err
	}
	cfg := usecase.Config{Manager: m, Repository: r, Logger: slog.Default()}
	if c.String("server") == "" {
		// The appliance's own record, shared with its jobs, and the
		// overlays of its writable exports.
		cfg.StateDir = filepath.Join(c.String("config"), config.StateDir)
		cfg.OverlayDir = filepath.Join(cfg.StateDir, daemon.OverlayDir)
	}
	return usecase.New(cfg)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// args checks the number of positional arguments.
func args(c *cli.Context, n int, names string) ([]string, error) {
	if c.NArg() != n {
		path := verbPath(c)
		return nil, usagef("%s: want %s, got %d argument(s); see 'astrolabe %s --help'",
			path, names, c.NArg(), path)
	}
	return c.Args().Slice(), nil
}

// verbPath is the verb and subcommands of c as typed after
// "astrolabe": "repo forget", not "forget".
func verbPath(c *cli.Context) string {
	var names []string
	for _, ctx := range c.Lineage() {
		if ctx.Command != nil && ctx.Command.Name != "" && ctx.Command.Name != c.App.Name {
			names = append([]string{ctx.Command.Name}, names...)
		}
	}
	return strings.Join(names, " ")
}

// peArg parses a PE ID argument of a local PE; wantSnap: 1 required, -1
// forbidden, 0 either.
func peArg(arg string, wantSnap int) (pe.ID, error) {
	return peArgListed(arg, wantSnap, "lssn")
}

// repoSnapshotArg parses a PEID:SNAPSHOT argument naming a snapshot of
// the repository.
func repoSnapshotArg(arg string) (pe.ID, error) {
	return peArgListed(arg, 1, "repo snapshots")
}

// peArgListed is peArg, pointing to the verb lister that lists the PE's
// snapshots when one is missing.
func peArgListed(arg string, wantSnap int, lister string) (pe.ID, error) {
	id, err := pe.ParseID(arg)
	if err != nil {
		return pe.ID{}, usageError{err.Error()}
	}
	switch {
	case wantSnap > 0 && !id.HasSnapshot():
		return pe.ID{}, usagef("%s names no snapshot: want <type>:<id>:<snapshot> (see 'astrolabe %s %s')", id, lister, id)
	case wantSnap < 0 && id.HasSnapshot():
		return pe.ID{}, usagef("%s names a snapshot: want <type>:<id>", id)
	}
	return id, nil
}

// withID makes the Action of a verb that takes one PE ID argument (with
// a snapshot if wantSnap > 0, without if < 0) and runs a use case on it.
func withID(argName string, wantSnap int, fn func(c *cli.Context, id pe.ID, uc *usecase.Service) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		a, err := args(c, 1, argName)
		if err != nil {
			return err
		}
		id, err := peArg(a[0], wantSnap)
		if err != nil {
			return err
		}
		uc, err := useCases(c, nil)
		if err != nil {
			return err
		}
		return fn(c, id, uc)
	}
}

// withPE is withID for verbs that work on the PE itself; for wantSnap > 0
// the PE is the live one and id names its snapshot.
func withPE(argName string, wantSnap int, fn func(c *cli.Context, id pe.ID, p pe.ProtectedEntity) error) cli.ActionFunc {
	return withID(argName, wantSnap, func(c *cli.Context, id pe.ID, uc *usecase.Service) error {
		get := id
		if wantSnap > 0 {
			get = id.Base()
		}
		p, err := uc.Manager().Get(c.Context, get)
		if err != nil {
			return err
		}
		return fn(c, id, p)
	})
}

func typesCommand() *cli.Command {
	return &cli.Command{
		Name:  "types",
		Usage: "list the configured PE types",
		Action: func(c *cli.Context) error {
			m, err := loadManager(c)
			if err != nil {
				return err
			}
			types, err := m.Types(c.Context)
			if err != nil {
				return err
			}
			for _, tm := range types {
				fmt.Fprintln(c.App.Writer, tm.Type())
			}
			return nil
		},
	}
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list the PEs of a type",
		ArgsUsage: "TYPE",
		Action: func(c *cli.Context) error {
			a, err := args(c, 1, "TYPE")
			if err != nil {
				return err
			}
			m, err := loadManager(c)
			if err != nil {
				return err
			}
			tm, err := m.Type(c.Context, a[0])
			if err != nil {
				return err
			}
			ids, err := tm.List(c.Context)
			if err != nil {
				return fmt.Errorf("list %s: %w", a[0], err)
			}
			for _, id := range ids {
				fmt.Fprintln(c.App.Writer, id)
			}
			return nil
		},
	}
}

func showCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "print the PE info JSON of a PE or snapshot",
		ArgsUsage: "PEID",
		Action: withPE("PEID", 0, func(c *cli.Context, id pe.ID, p pe.ProtectedEntity) error {
			info, err := p.Info(c.Context)
			if err != nil {
				return fmt.Errorf("info %s: %w", id, err)
			}
			b, err := json.MarshalIndent(info, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "%s\n", b)
			return nil
		}),
	}
}

func snapCommand() *cli.Command {
	return &cli.Command{
		Name:      "snap",
		Usage:     "take a snapshot; prints the snapshot's PE ID last",
		ArgsUsage: "PEID",
		Action: withID("PEID", -1, func(c *cli.Context, id pe.ID, uc *usecase.Service) error {
			snap, err := uc.Snapshot(c.Context, id, nil)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, snap)
			return nil
		}),
	}
}

func lssnCommand() *cli.Command {
	return &cli.Command{
		Name:      "lssn",
		Usage:     "list the snapshots of a PE, oldest first",
		ArgsUsage: "PEID",
		Action: withPE("PEID", -1, func(c *cli.Context, id pe.ID, p pe.ProtectedEntity) error {
			snaps, err := p.ListSnapshots(c.Context)
			if err != nil {
				return fmt.Errorf("list snapshots of %s: %w", id, err)
			}
			for _, s := range snaps {
				fmt.Fprintln(c.App.Writer, s)
			}
			return nil
		}),
	}
}

func rmsnCommand() *cli.Command {
	return &cli.Command{
		Name:      "rmsn",
		Usage:     "delete a snapshot",
		ArgsUsage: "PEID:SNAPSHOT",
		Action: withID("PEID:SNAPSHOT", 1, func(c *cli.Context, id pe.ID, uc *usecase.Service) error {
			// Through the use case, which refuses while writes are kept
			// over the snapshot, here or by the appliance.
			if err := uc.DeleteSnapshot(c.Context, id); err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "deleted %s\n", id)
			return nil
		}),
	}
}

// isZipPath tells a zip file argument from a PE ID or type name.
func isZipPath(arg string) bool {
	return strings.HasSuffix(strings.ToLower(arg), ".zip")
}
