package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// repoFlags are the flags of every verb that uses the repository.
func repoFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "repo", EnvVars: []string{"ASTROLABE_REPOSITORY"},
			Usage: "repository: a `DIR`, s3://[host:port/]bucket/prefix (TLS) or s3+http://host:port/bucket/prefix; S3 keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else the AWS shared credentials file"},
		s3ProfileFlag(),
		&cli.StringFlag{Name: "password-file", Usage: "read the repository password from `FILE` (default: ASTROLABE_PASSWORD)"},
		&cli.BoolFlag{Name: "insecure-no-password", Usage: "repo init: an unencrypted repository"},
	}
}

func s3ProfileFlag() cli.Flag {
	return &cli.StringFlag{Name: "s3-profile", Usage: "S3 repository: its keys from profile `NAME` of the AWS shared credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)"}
}

func openBackend(c *cli.Context) (backend.Backend, error) {
	loc := c.String("repo")
	if loc == "" {
		return nil, usagef("no repository: give --repo or set ASTROLABE_REPOSITORY")
	}
	return backendAt(c, loc, c.String("s3-profile"))
}

// shownLocation is how messages name a repository given as loc and
// opened at actual: a URL as given (the backend's own spelling drops
// s3+http's scheme), a directory as its absolute path.
func shownLocation(loc, actual string) string {
	if strings.Contains(loc, "://") {
		return loc
	}
	return actual
}

// backendAt opens the backend of a repository location; an S3 one with
// the keys of the AWS profile s3Profile if it is not empty.
func backendAt(c *cli.Context, loc, s3Profile string) (backend.Backend, error) {
	switch {
	case strings.HasPrefix(loc, "s3://"), strings.HasPrefix(loc, "s3+http://"):
		cfg, err := backend.ParseS3URL(loc)
		if err != nil {
			return nil, err
		}
		cfg.Profile = s3Profile
		return backend.NewS3(c.Context, cfg)
	case strings.Contains(loc, "://"):
		return nil, usagef("--repo %q: want a directory, s3:// or s3+http://", loc)
	}
	return backend.NewDir(loc)
}

func repoOptions(c *cli.Context) (repo.Options, error) {
	opts := repo.Options{Logger: slog.Default(), Insecure: c.Bool("insecure-no-password")}
	var err error
	opts.Password, err = password(c.String("password-file"), "ASTROLABE_PASSWORD")
	return opts, err
}

// checkOptions reads repo check's flags.
func checkOptions(c *cli.Context) (repo.CheckOptions, error) {
	opts := repo.CheckOptions{ReadData: c.Bool("read-data"), New: c.Bool("read-data-new"), Verifier: c.String("verifier")}
	if c.IsSet("read-data-subset") {
		var err error
		if opts.Subset, err = repo.ParseSubset(c.String("read-data-subset")); err != nil {
			return opts, usagef("--read-data-subset %v", err)
		}
	}
	if opts.ReadData && (!opts.Subset.IsZero() || opts.New) {
		return opts, usagef("--read-data reads every pack: give it alone, or --read-data-subset and/or --read-data-new")
	}
	return opts, nil
}

// password reads a repository password from file, else from the
// environment variable env.
func password(file, env string) (string, error) {
	if file == "" {
		return os.Getenv(env), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		// Not "no password": an empty one would pass for an
		// unencrypted repository's, or make repo init ask for one.
		return "", fmt.Errorf("password file %s is empty", file)
	}
	return pw, nil
}

func openRepo(c *cli.Context) (*repo.Repository, error) {
	be, err := openBackend(c)
	if err != nil {
		return nil, err
	}
	opts, err := repoOptions(c)
	if err != nil {
		return nil, err
	}
	return repo.Open(c.Context, be, opts)
}

// withRepo makes an Action that opens the repository for fn.
func withRepo(fn func(c *cli.Context, r *repo.Repository) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		r, err := openRepo(c)
		if err != nil {
			return err
		}
		defer r.Close()
		return fn(c, r)
	}
}

func repoCommand() *cli.Command {
	return &cli.Command{
		Name:  "repo",
		Usage: "manage the backup repository (deduplicated, compressed, encrypted)",
		Subcommands: []*cli.Command{{
			Name:  "init",
			Usage: "create a repository",
			Flags: repoFlags(),
			Action: func(c *cli.Context) error {
				be, err := openBackend(c)
				if err != nil {
					return err
				}
				opts, err := repoOptions(c)
				if err != nil {
					return err
				}
				if err := repo.Init(c.Context, be, opts); err != nil {
					return err
				}
				fmt.Fprintf(c.App.ErrWriter, "created repository %s\n", shownLocation(c.String("repo"), be.Location()))
				return nil
			},
		}, {
			Name:      "snapshots",
			Usage:     "list the snapshots in the repository, oldest first",
			ArgsUsage: "[PEID]",
			Flags:     repoFlags(),
			Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
				var filter pe.ID
				if c.NArg() == 1 {
					var err error
					if filter, err = peArg(c.Args().First(), 0); err != nil {
						return err
					}
				}
				snaps, err := r.Snapshots(c.Context, filter)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "SNAPSHOT\tSIZE\tBACKED UP")
				for _, s := range snaps {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", s.ID, humanBytes(s.Info.Size), s.BackedUp.Local().Format(time.DateTime))
				}
				return tw.Flush()
			}),
		}, {
			Name:  "check",
			Usage: "verify the repository's structure; --read-data also reads every pack whole, --read-data-subset and --read-data-new some",
			Description: `Every pack read whole without a problem is added to this machine's record
in the repository (verified/VERIFIER, sealed with the repository's key), so
that --read-data-new reads only the packs it has not read before; each
verifier trusts only its own record.`,
			Flags: append(repoFlags(),
				&cli.BoolFlag{Name: "read-data", Usage: "read every pack whole: its header, and every chunk decrypted and re-hashed"},
				&cli.StringFlag{Name: "read-data-subset", Usage: "read a part of the packs whole: `n/t` (group n of t: 1/t..t/t read each pack once), x% or N packs at random"},
				&cli.BoolFlag{Name: "read-data-new", Usage: "read whole the packs the verifier has not read before (with --read-data-subset, those too)"},
				&cli.StringFlag{Name: "verifier", Usage: "whose record of packs read to keep and trust (`NAME`)", Value: repo.DefaultVerifier()},
				&cli.BoolFlag{Name: "repair-index", Usage: "first rebuild damaged index files from the pack headers (takes an exclusive lock)"},
			),
			Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
				if c.Bool("repair-index") {
					s, err := r.RepairIndex(c.Context)
					if err != nil {
						return err
					}
					// Results on stdout as restic check's; progress and
					// warnings on stderr.
					if s.Repaired() {
						fmt.Fprintf(c.App.Writer, "repaired the index: %d damaged index file(s) replaced, %d pack(s) indexed from their headers, %d missing pack(s) dropped\n", s.Damaged, s.Read, s.Dropped)
					} else {
						fmt.Fprintln(c.App.Writer, "the index needs no repair")
					}
					for _, p := range s.BadPacks {
						fmt.Fprintf(c.App.ErrWriter, "pack %s has a damaged header: not indexed\n", p)
					}
				}
				opts, err := checkOptions(c)
				if err != nil {
					return err
				}
				p := newProgress(c.App.ErrWriter)
				sum, err := r.CheckWith(c.Context, opts, p)
				p.Done()
				// Problems found are reported even if the check then
				// failed (to save the verifier's record).
				for _, pr := range sum.Problems {
					fmt.Fprintln(c.App.Writer, pr)
				}
				if len(sum.Problems) > 0 {
					fmt.Fprintln(c.App.Writer, sum)
					return errors.Join(fmt.Errorf("%d problem(s) found", len(sum.Problems)), err)
				}
				if err != nil {
					return err
				}
				fmt.Fprintln(c.App.Writer, sum)
				fmt.Fprintln(c.App.Writer, "no problems found")
				return nil
			}),
		}, {
			Name:  "migrate",
			Usage: "bind the snapshots of older versions to their IDs (takes an exclusive lock)",
			Description: `Since repository format 2 each snapshot is sealed with its ID, so that a
snapshot moved, renamed or copied under another ID fails check and restore.
Snapshots written by older versions stay readable (the IDs written inside
them are checked); migrate seals them again with their IDs. A snapshot that
is not what its name says is left as it is and reported.`,
			Flags: repoFlags(),
			Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
				n, err := r.Migrate(c.Context)
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.ErrWriter, "bound %d snapshot(s) to their IDs\n", n)
				return nil
			}),
		}, {
			Name:  "prune",
			Usage: "remove the data no snapshot uses (takes an exclusive lock)",
			Flags: repoFlags(),
			Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
				s, err := r.Prune(c.Context)
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "removed %d pack(s), %s; %d incomplete snapshot(s)\n", s.Packs, humanBytes(s.Bytes), s.Incomplete)
				return nil
			}),
		}, forgetCommand(), {
			Name:  "unlock",
			Usage: "remove stale locks and those of dead processes of this host (--all: every lock) after a crash",
			Flags: append(repoFlags(), &cli.BoolFlag{Name: "all", Usage: "remove all locks, also fresh ones"}),
			Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
				n, err := r.Unlock(c.Context, c.Bool("all"))
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.ErrWriter, "removed %d lock(s)\n", n)
				return nil
			}),
		}, repoCopyCommand()},
	}
}

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "back up a PE snapshot into the repository; prints the repository snapshot's PE ID last",
		ArgsUsage: "PEID[:SNAPSHOT]",
		Description: `A PE without snapshot is snapshotted first. Only what the repository lacks is
uploaded, and where the PE tracks changed blocks (disk PEs) only what
changed since its previous snapshot in the repository is read. Every
snapshot in the repository is complete by itself: forgetting others never
breaks it. A summary line (read, new, stored, duration) goes to stderr.`,
		Flags: repoFlags(),
		Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
			a, err := args(c, 1, "PEID[:SNAPSHOT]")
			if err != nil {
				return err
			}
			id, err := peArg(a[0], 0)
			if err != nil {
				return err
			}
			uc, err := useCases(c, r)
			if err != nil {
				return err
			}
			// Resolved here, to tell of the snapshot before the progress.
			p, settle, err := uc.ResolveForBackup(c.Context, id)
			if err != nil {
				return err
			}
			taken := !id.HasSnapshot()
			if taken {
				fmt.Fprintf(c.App.ErrWriter, "took snapshot %s\n", p.ID())
			}
			id = p.ID()
			prog := newProgress(c.App.ErrWriter)
			s, err := uc.BackupResolved(c.Context, p, prog)
			prog.Done()
			kept, serr := settle(c.Context, err == nil)
			switch {
			case serr != nil:
				fmt.Fprintf(c.App.ErrWriter, "warning: %v\n", serr)
			case kept:
				fmt.Fprintf(c.App.ErrWriter, "kept snapshot %s as the next backup's base (the base before it deleted)\n", id)
			case taken:
				fmt.Fprintf(c.App.ErrWriter, "deleted snapshot %s\n", id)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "backed up %s to %s: read %s, new %s, stored %s, reused unread %s, in %s (%s/s)\n",
				id, shownLocation(c.String("repo"), r.Location()), humanBytes(s.Read), humanBytes(s.New), humanBytes(s.Stored), humanBytes(s.Reused),
				s.Duration.Round(time.Millisecond), humanBytes(int64(float64(s.Read+s.Reused)/max(s.Duration.Seconds(), 1e-3))))
			fmt.Fprintln(c.App.Writer, s.ID)
			return nil
		}),
	}
}

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "restore a repository snapshot as a PE; prints the restored PE ID last",
		ArgsUsage: "PEID:SNAPSHOT",
		Flags: append(append(repoFlags(),
			&cli.StringFlag{Name: "to", Usage: "`TYPE[:NAME]` to restore into (default: the snapshot's type; NAME implies --mode create)"},
			&cli.StringFlag{Name: "mode", Value: "create_new", Usage: "`MODE`: create_new (a new name), create (the snapshot's name or NAME, must not exist) or update (overwrite it)"},
			&cli.BoolFlag{Name: "instant", Usage: "make the PE at once and serve it writable over NBD while it is filled from the snapshot"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "with --instant, the loopback `ADDR` of the NBD server"},
		), restoreFlags()...),
		Description: `Repository snapshots are trusted (authenticated by the repository key):
owners, setuid/setgid bits, capabilities and xattrs are restored as they
were. --keep-privileges and --max-expansion apply to untrusted input only,
as in cp.

With --instant (disk-like PEs, create or create_new) the new PE is made at
once, empty, and served writable over NBD: its URI is printed first, and
clients (qemu, nbdcopy) use it while it is filled from the snapshot in the
background, the blocks they read first; their writes land in the PE. Once
full, its ID is printed and the export goes on serving it until SIGINT or
SIGTERM. Interrupted before it is full, the restore is aborted and the
PE removed, with the clients' writes. (The API's instant restores survive
a restart of 'astrolabe serve' and resume.)`,
		Action: withRepo(func(c *cli.Context, r *repo.Repository) error {
			a, err := args(c, 1, "PEID:SNAPSHOT")
			if err != nil {
				return err
			}
			id, err := repoSnapshotArg(a[0])
			if err != nil {
				return err
			}
			mode, err := pe.ParseCopyMode(c.String("mode"))
			if err != nil {
				return usageError{err.Error()}
			}
			uc, err := useCases(c, r)
			if err != nil {
				return err
			}
			typ := id.Type()
			opts := restoreOptions(c)
			opts.Mode = mode
			if t := c.String("to"); t != "" {
				typ = t
				if t, name, ok := strings.Cut(t, ":"); ok {
					typ, opts.Name = t, name
					if !c.IsSet("mode") {
						opts.Mode = pe.Create
					}
				}
			}
			if c.Bool("instant") {
				return instantRestore(c, r, id, typ, opts)
			}
			start := time.Now()
			prog := newProgress(c.App.ErrWriter)
			out, err := uc.Restore(c.Context, id, typ, opts, prog)
			prog.Done()
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "restored %s as %s in %s\n", id, out.ID(), time.Since(start).Round(time.Millisecond))
			printDetails(c.Context, uc.Manager(), out.ID(), c.App.ErrWriter)
			fmt.Fprintln(c.App.Writer, out.ID())
			return nil
		}),
	}
}

// sourceManager is where mount and nbd serve find PEs: the configuration's,
// or with --repo the repository's backed-up snapshots, served as they are.
func sourceManager(c *cli.Context) (pe.Manager, func(), error) {
	if c.String("repo") == "" {
		m, err := loadManager(c)
		return m, func() {}, err
	}
	r, err := openRepo(c)
	if err != nil {
		return nil, nil, err
	}
	return r.Manager(), func() { r.Close() }, nil
}

// repoSourceFlags select the repository as the source of PEs.
func repoSourceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "repo", EnvVars: []string{"ASTROLABE_REPOSITORY"},
			Usage: "serve the snapshots backed up in this repository (`DIR` or s3://...) instead of the configuration's PEs"},
		&cli.StringFlag{Name: "password-file", Usage: "read the repository password from `FILE` (default: ASTROLABE_PASSWORD)"},
		s3ProfileFlag(),
	}
}
