package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	pepg "github.com/astrolabe-appliance/astrolabe/pe/pg"
)

func cpCommand() *cli.Command {
	return &cli.Command{
		Name:      "cp",
		Usage:     "copy a PE to a zip, a zip to a PE type, or a PE to another PE; prints the new PE ID last",
		ArgsUsage: "SRC DEST",
		Description: `SRC is a PE ID or a .zip file; DEST is a .zip file, a PE type (e.g. fs) or a
PE ID (e.g. fs:restored). A SRC without snapshot is snapshotted first, so
every copy is of one point in time.

--mode says how the target is found, as in the Astrolabe API:
  create_new  a new PE with a new name (default when DEST is a type)
  create      a PE named as DEST (or as SRC when DEST is a type); fails if
              it exists (default when DEST is a PE ID or a zip file)
  update      overwrite the existing PE (or zip file) of that name

A zip is untrusted input: restored from it, files belong to the restoring
user and lose setuid/setgid bits, file capabilities and trusted.* and
security.* xattrs, and device nodes are left out (each with a warning),
unless --keep-privileges is given; what it may write is bounded by
--max-expansion. Snapshots are trusted and restored as they were.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "mode", Usage: "`MODE`: create, create_new or update (default depends on DEST)"},
		}, restoreFlags()...),
		Action: func(c *cli.Context) error {
			a, err := args(c, 2, "SRC DEST")
			if err != nil {
				return err
			}
			var mode pe.CopyMode
			if s := c.String("mode"); s != "" {
				if mode, err = pe.ParseCopyMode(s); err != nil {
					return usageError{err.Error()}
				}
			}
			uc, err := useCases(c, nil)
			if err != nil {
				return err
			}
			opts := restoreOptions(c)
			opts.Mode = mode
			out, err := copyPE(c.Context, uc, a[0], a[1], opts, newProgress(c.App.ErrWriter), c.App.ErrWriter)
			if err != nil {
				return err
			}
			printDetails(c.Context, uc.Manager(), out, c.App.ErrWriter)
			fmt.Fprintln(c.App.Writer, out)
			return nil
		},
	}
}

// restoreFlags are the flags of the verbs that restore: cp and restore.
func restoreFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "keep-privileges", Usage: "restore untrusted input (a zip) with its owners, setuid/setgid bits, file capabilities, trusted.*/security.* xattrs and device nodes; without it they are dropped (trusted snapshots keep them anyway); logged"},
		&cli.IntFlag{Name: "max-expansion", Value: pe.DefaultMaxExpansion, Usage: "a restore of untrusted input (a zip) may write at most `N` times the compressed size of its data (all-zero blocks, left as holes, do not count); 0 means the default, a negative N no bound"},
		&cli.StringFlag{Name: "to-time", Usage: "pg: replay archived WAL up to `TIME` (RFC 3339, e.g. 2026-11-30T05:00:00Z) and promote"},
		&cli.StringFlag{Name: "to-lsn", Usage: "pg: replay archived WAL up to the WAL location `LSN` (e.g. 0/3000060) and promote"},
	}
}

// restoreOptions are the copy options restoreFlags set.
func restoreOptions(c *cli.Context) pe.CopyOptions {
	opts := pe.CopyOptions{KeepPrivileges: c.Bool("keep-privileges"), MaxExpansion: c.Int("max-expansion")}
	target := map[string]any{}
	if t := c.String("to-time"); t != "" {
		target[pepg.ParamToTime] = t
	}
	if l := c.String("to-lsn"); l != "" {
		target[pepg.ParamToLSN] = l
	}
	if len(target) > 0 {
		opts.Params = pe.Params{pepg.Type: target}
	}
	return opts
}

// printDetails prints where a restored PE that has them (a pg cluster)
// can be reached.
func printDetails(ctx context.Context, m pe.Manager, id pe.ID, w io.Writer) {
	p, err := m.Get(ctx, id)
	if err != nil {
		return
	}
	info, err := p.Info(ctx)
	if err != nil || info.Details["port"] == nil || info.Details["dataDir"] == nil {
		return
	}
	fmt.Fprintf(w, "%s: server on %v port %v, data directory %v\n", id, info.Details["host"], info.Details["port"], info.Details["dataDir"])
}

// copyPE runs one cp and returns the PE ID of the result. opts.Mode 0
// means the default for DEST.
func copyPE(ctx context.Context, uc *usecase.Service, srcArg, dstArg string, opts pe.CopyOptions, progress *progress, log io.Writer) (pe.ID, error) {
	m := uc.Manager()
	mode := opts.Mode
	src, closeSrc, err := openSource(ctx, uc, srcArg, log)
	if err != nil {
		return pe.ID{}, err
	}
	defer closeSrc()

	if isZipPath(dstArg) && !isPEIDOfConfiguredType(ctx, m, dstArg) {
		if mode == 0 {
			mode = pe.Create
		}
		if mode == pe.CreateNew {
			return pe.ID{}, usagef("--mode create_new does not apply to a zip file; use create or update")
		}
		if err := writeZipFile(ctx, src, dstArg, mode == pe.Update, progress); err != nil {
			return pe.ID{}, err
		}
		return src.ID(), nil
	}

	typ := dstArg
	if strings.Contains(dstArg, ":") {
		dst, err := peArg(dstArg, -1)
		if err != nil {
			return pe.ID{}, err
		}
		if mode == 0 {
			mode = pe.Create
		}
		if mode == pe.CreateNew {
			return pe.ID{}, usagef("--mode create_new picks a new name: give a type (%s) as DEST, not a PE ID", dst.Type())
		}
		typ, opts.Name = dst.Type(), dst.Name()
	} else {
		if err := pe.ValidateTypeName(dstArg); err != nil {
			return pe.ID{}, usagef("DEST %q is neither a .zip file, a PE type nor a PE ID", dstArg)
		}
		if mode == 0 {
			mode = pe.CreateNew
		}
	}
	opts.Mode = mode
	out, err := uc.Copy(ctx, src, typ, opts, progress)
	progress.Done()
	if err != nil {
		return pe.ID{}, err
	}
	return out.ID(), nil
}

// openSource opens SRC: a zip file, a snapshot, or a live PE that is
// snapshotted first.
func openSource(ctx context.Context, uc *usecase.Service, arg string, log io.Writer) (pe.ProtectedEntity, func(), error) {
	if isZipPath(arg) && !isPEIDOfConfiguredType(ctx, uc.Manager(), arg) {
		p, closer, err := pe.OpenZipFile(ctx, arg)
		if err != nil {
			return nil, nil, err
		}
		return p, func() { closer.Close() }, nil
	}
	id, err := peArg(arg, 0)
	if err != nil {
		return nil, nil, usagef("SRC: %v (or give a .zip file)", err)
	}
	p, release, err := uc.ResolveTemporary(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if !id.HasSnapshot() {
		fmt.Fprintf(log, "took snapshot %s to copy from (deleted after)\n", p.ID())
	}
	return p, func() {
		if err := release(ctx); err != nil {
			fmt.Fprintf(log, "warning: %v\n", err)
		}
	}, nil
}

// isPEIDOfConfiguredType tells "disk:backup.zip" (a PE) from "out.zip".
func isPEIDOfConfiguredType(ctx context.Context, m pe.Manager, arg string) bool {
	id, err := pe.ParseID(arg)
	if err != nil {
		return false
	}
	_, err = m.Type(ctx, id.Type())
	return err == nil
}

// writeZipFile writes src as a zip to path via a temp file, so an
// interrupted copy never leaves a truncated zip behind.
func writeZipFile(ctx context.Context, src pe.ProtectedEntity, path string, overwrite bool, progress *progress) error {
	if _, err := os.Lstat(path); err == nil && !overwrite {
		return fmt.Errorf("%s: %w (use --mode update to overwrite)", path, pe.ErrExists)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	err := atomicfile.Write(path, 0o644, func(w io.Writer) error {
		return pe.WriteZip(ctx, w, src, progress)
	})
	progress.Done()
	return err
}
