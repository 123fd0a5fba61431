package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// repoCopyCommand copies snapshots from another repository into this one.
func repoCopyCommand() *cli.Command {
	flags := repoFlags()
	// The target: --repo as for every verb, or --to as replication says it.
	flags[0].(*cli.StringFlag).Aliases = []string{"to"}
	return &cli.Command{
		Name:      "copy",
		Usage:     "copy snapshots from another repository (all, or those of the PEs given) into this one",
		ArgsUsage: "[PEID[:SNAPSHOT]...]",
		Description: `Only the chunks the target lacks are read and sent, sealed again under the
target's key; each snapshot keeps its ID, times and info, and is committed
in the target last, when all it needs is there. A snapshot the target
has already is compared with the source's (info, time, chunks, table of
contents, components): the same, it is skipped; different, it is left
alone, the others are copied, and the copy fails naming it (or the
component of it that differs; each is also printed to stderr). A
snapshot forgotten in the source after the copy listed it is not
copied, and told on stderr. A copy interrupted and run again sends
only what is missing.

The source is read under a shared lock, so that no prune removes what
is read. A source that cannot be written (mounted read-only, an S3 key
allowed to read only) is read without one, unless a prune holds it; a
prune that starts meanwhile can make the copy fail (never commit a
wrong snapshot), and the copy is run again.
The source's password comes from --from-password-file or
ASTROLABE_FROM_PASSWORD; the target's as for every verb. Each S3
repository may have keys of its own: --from-s3-profile and --s3-profile
name profiles of the AWS shared credentials file
(AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials); without one, the
keys are AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. The copied
snapshots are printed, one a line; a summary (read, new, sent, already
present) goes to stderr.`,
		Flags: append(flags,
			&cli.StringFlag{Name: "from", Usage: "the source repository: a `DIR`, s3://... or s3+http://..."},
			&cli.StringFlag{Name: "from-password-file", Usage: "read the source repository's password from `FILE` (default: ASTROLABE_FROM_PASSWORD)"},
			&cli.StringFlag{Name: "from-s3-profile", Usage: "S3 source: its keys from profile `NAME` of the AWS shared credentials file"},
		),
		Action: func(c *cli.Context) error {
			var filter []pe.ID
			for _, a := range c.Args().Slice() {
				id, err := peArg(a, 0)
				if err != nil {
					return err
				}
				filter = append(filter, id)
			}
			src, err := openCopySource(c)
			if err != nil {
				return err
			}
			defer src.Close()
			r, err := openRepo(c)
			if err != nil {
				if loc := c.String("repo"); loc != "" {
					err = fmt.Errorf("target repository %s: %w", loc, err)
				}
				return err
			}
			defer r.Close()
			prog := newProgress(c.App.ErrWriter)
			s, err := r.Copy(c.Context, src, filter, prog)
			prog.Done()
			for _, id := range s.Copied {
				fmt.Fprintln(c.App.Writer, id)
			}
			for _, id := range s.Differ {
				fmt.Fprintf(c.App.ErrWriter, "%s: the target holds another snapshot under its ID: left as it is\n", id)
			}
			for _, id := range s.Gone {
				fmt.Fprintf(c.App.ErrWriter, "%s: forgotten in the source meanwhile: not copied\n", id)
			}
			summary := fmt.Sprintf("read %s, new %s, sent %s, already present %s",
				humanBytes(s.Read), humanBytes(s.New), humanBytes(s.Sent), humanBytes(s.Present))
			if err != nil {
				return fmt.Errorf("%w (so far: %s)", err, summary)
			}
			if s.SourceUnlocked {
				summary += "; the source, not writable, was read without a lock"
			}
			fmt.Fprintf(c.App.ErrWriter, "copied %d snapshot(s) from %s to %s, %d there already: %s, in %s\n",
				len(s.Copied), shownLocation(c.String("from"), src.Location()), shownLocation(c.String("repo"), r.Location()), len(s.Skipped), summary, s.Duration.Round(time.Millisecond))
			return nil
		},
	}
}

// openCopySource opens the repository --from names with its own password.
func openCopySource(c *cli.Context) (*repo.Repository, error) {
	loc := c.String("from")
	if loc == "" {
		return nil, usagef("copy: no source: give --from")
	}
	be, err := backendAt(c, loc, c.String("from-s3-profile"))
	if err != nil {
		return nil, fmt.Errorf("source repository %s: %w", loc, err)
	}
	pw, err := password(c.String("from-password-file"), "ASTROLABE_FROM_PASSWORD")
	if err != nil {
		return nil, fmt.Errorf("source repository %s: %w", loc, err)
	}
	r, err := repo.Open(c.Context, be, repo.Options{Logger: slog.Default(), Password: pw})
	if err != nil {
		return nil, fmt.Errorf("source repository %s: %w", loc, err)
	}
	return r, nil
}
