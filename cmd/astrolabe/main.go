// Command astrolabe is the Astrolabe data-protection appliance: CLI verbs
// over Protected Entities and, later, the daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// usageError marks mistakes in how the command was called (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(stdout, stderr)
	var unknown string
	app.CommandNotFound = func(_ *cli.Context, name string) { unknown = name }
	args, err := flagsAnywhere(app, args)
	if err == nil {
		err = app.RunContext(ctx, args)
	}
	if err == nil && unknown != "" {
		err = usagef("unknown command %q; run 'astrolabe --help'", unknown)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "astrolabe: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:    "astrolabe",
		Usage:   "protect virtual disks, directory trees and VMs as Protected Entities (PEs)",
		Version: version,
		Description: `Every protected thing is a PE named <type>:<id>[:<snapshot>], e.g. fs:home or
disk:vm1.img:20261125T000104.000Z-1a2b3c4d. The configuration directory
(--config) holds pes/<type>.pe.json for each PE type; 'astrolabe init DIR
--samples' writes one with sample PEs. Flags may come before or after a
verb's arguments; '--' ends them. --help anywhere prints the verb's help;
--version goes before the verb.`,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		// Errors are printed once, by run; urfave/cli must not exit or print.
		ExitErrHandler: func(*cli.Context, error) {},
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "config",
				Aliases: []string{"c"},
				Usage:   "configuration `DIR`",
				EnvVars: []string{"ASTROLABE_CONFIG"},
				Value:   defaultConfigDir(),
			},
			&cli.StringFlag{
				Name:    "server",
				Usage:   "act on the running appliance at `URL` (e.g. https://host:8443) instead of the local configuration",
				EnvVars: []string{"ASTROLABE_SERVER"},
			},
			&cli.StringFlag{
				Name:    "token",
				Usage:   "API bearer `TOKEN` for --server",
				EnvVars: []string{"ASTROLABE_TOKEN"},
			},
			&cli.StringFlag{
				Name:    "server-ca",
				Usage:   "PEM `FILE` of the certificate(s) to trust for --server (default: CONFIG/tls/cert.pem if present)",
				EnvVars: []string{"ASTROLABE_SERVER_CA"},
			},
			&cli.StringFlag{
				Name:  "log-level",
				Usage: "log `LEVEL`: debug, info, warn or error",
				Value: "warn",
			},
		},
		Before: func(c *cli.Context) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return usagef("--log-level: %v", err)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))
			return nil
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return usageError{err.Error()} },
		Commands: []*cli.Command{
			initCommand(),
			typesCommand(),
			lsCommand(),
			showCommand(),
			snapCommand(),
			lssnCommand(),
			rmsnCommand(),
			cpCommand(),
			nbdCommand(),
			serveCommand(),
			mountCommand(),
			flrCommand(),
			repoCommand(),
			backupCommand(),
			restoreCommand(),
			instantCommand(),
			pgCommand(),
		},
	}
	reportUsageErrors(app.Commands, "astrolabe")
	return app
}

// reportUsageErrors makes a flag mistake in any (sub)command a usage error
// (exit status 2) naming the command, instead of urfave/cli's default: the
// command's whole help on stdout and exit status 1. So are more arguments
// than the command's ArgsUsage names.
func reportUsageErrors(cmds []*cli.Command, parent string) {
	for _, c := range cmds {
		path := parent + " " + c.Name
		c.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return usagef("%s: %v; see '%s --help'", strings.TrimPrefix(path, "astrolabe "), err, path)
		}
		refuseExtraArgs(c, path)
		reportUsageErrors(c.Subcommands, path)
	}
}

// refuseExtraArgs makes c's Action refuse, before it does anything, more
// arguments than its ArgsUsage names: with flags anywhere a word such as
// the "false" of "repo unlock --all false" must not be dropped silently.
// Each verb checks itself that it has enough.
func refuseExtraArgs(c *cli.Command, path string) {
	most := mostArgs(c.ArgsUsage)
	if c.Action == nil || most < 0 {
		return
	}
	want := c.ArgsUsage
	if want == "" {
		want = "no arguments"
	}
	action := c.Action
	c.Action = func(ctx *cli.Context) error {
		if ctx.NArg() > most {
			return usagef("%s: want %s, got %d argument(s); see '%s --help'",
				strings.TrimPrefix(path, "astrolabe "), want, ctx.NArg(), path)
		}
		return action(ctx)
	}
}

// mostArgs is how many arguments an ArgsUsage such as "SRC DEST",
// "[PEID]" or "PEID..." names at most; -1 for no bound: "..." anywhere,
// as in "[PEID[:SNAPSHOT]...]" too.
func mostArgs(argsUsage string) int {
	if strings.Contains(argsUsage, "...") {
		return -1
	}
	return len(strings.Fields(argsUsage))
}

// defaultConfigDir is /etc/astrolabe for root (the appliance), else the
// user's config directory.
func defaultConfigDir() string {
	if os.Geteuid() == 0 {
		return "/etc/astrolabe"
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "astrolabe")
	}
	return ".astrolabe"
}
