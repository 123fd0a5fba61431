package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// keepFlags are the counted rules of a retention policy, as restic names them.
var keepFlags = []struct {
	name, usage string
	field       func(*repo.Policy) *int
}{
	{"keep-last", "keep the newest `N` snapshots", func(p *repo.Policy) *int { return &p.Last }},
	{"keep-hourly", "keep the newest snapshot of each of the newest `N` hours that have one", func(p *repo.Policy) *int { return &p.Hourly }},
	{"keep-daily", "keep the newest snapshot of each of the newest `N` days that have one", func(p *repo.Policy) *int { return &p.Daily }},
	{"keep-weekly", "keep the newest snapshot of each of the newest `N` ISO weeks that have one", func(p *repo.Policy) *int { return &p.Weekly }},
	{"keep-monthly", "keep the newest snapshot of each of the newest `N` months that have one", func(p *repo.Policy) *int { return &p.Monthly }},
	{"keep-yearly", "keep the newest snapshot of each of the newest `N` years that have one", func(p *repo.Policy) *int { return &p.Yearly }},
}

func forgetCommand() *cli.Command {
	flags := repoFlags()
	for _, k := range keepFlags {
		flags = append(flags, &cli.IntFlag{Name: k.name, Usage: k.usage + " (-1: all)"})
	}
	flags = append(flags,
		&cli.StringFlag{Name: "keep-within", Usage: "keep the snapshots made within `DURATION` (e.g. 1y2m3d4h) of a PE's newest"},
		&cli.BoolFlag{Name: "dry-run", Usage: "only print what would be kept and removed"},
	)
	return &cli.Command{
		Name:      "forget",
		Usage:     "remove a snapshot, or those a retention policy does not keep (their data goes with the next prune)",
		ArgsUsage: "PEID:SNAPSHOT | --keep-* [PEID...]",
		Description: `With PEID:SNAPSHOT, forgets that snapshot. With --keep-* rules, applies them
to the snapshots of each PE (or of the PEs given) as restic's forget does:
each counted rule keeps the newest snapshot of each of its newest N hours,
days, ISO weeks, months or years (local time) that have one, and the
oldest snapshot while a count is left; --keep-last N the newest N;
--keep-within the snapshots made within DURATION of the PE's newest. A
snapshot any rule keeps is kept. Prints each snapshot, keep or remove and
why, then forgets the removed ones unless --dry-run.`,
		Flags:  flags,
		Action: forget,
	}
}

// forget checks its arguments before it opens the repository.
func forget(c *cli.Context) error {
	p, rules, err := policyFlags(c)
	if err != nil {
		return err
	}
	if !rules {
		a, err := args(c, 1, "PEID:SNAPSHOT, or --keep-* rules")
		if err != nil {
			return err
		}
		id, err := repoSnapshotArg(a[0])
		if err != nil {
			return err
		}
		return withRepo(func(c *cli.Context, r *repo.Repository) error { return forgetOne(c, r, id) })(c)
	}
	var pes []pe.ID
	for _, a := range c.Args().Slice() {
		id, err := peArg(a, -1)
		if err != nil {
			return usagef("%v: with --keep-* give PE IDs without snapshot, or forget one snapshot without --keep-*", err)
		}
		pes = append(pes, id)
	}
	return withRepo(func(c *cli.Context, r *repo.Repository) error {
		dryRun := c.Bool("dry-run")
		res, err := r.ForgetPolicy(c.Context, p, pes, dryRun)
		if err != nil {
			return err
		}
		for _, id := range pes {
			if !slices.ContainsFunc(res, func(g repo.PolicyResult) bool { return g.PE == id }) {
				fmt.Fprintf(c.App.ErrWriter, "%s has no snapshots in the repository\n", id)
			}
		}
		if err := printPolicyResults(c.App.Writer, res, dryRun); err != nil {
			return err
		}
		if !dryRun {
			fmt.Fprintln(c.App.ErrWriter, "the data of the removed snapshots goes with the next 'astrolabe repo prune'")
		}
		return nil
	})(c)
}

func forgetOne(c *cli.Context, r *repo.Repository, id pe.ID) error {
	if c.Bool("dry-run") {
		snaps, err := r.Snapshots(c.Context, id)
		if err != nil {
			return err
		}
		if len(snaps) == 0 {
			return fmt.Errorf("repository snapshot %s: %w", id, pe.ErrNotFound)
		}
		fmt.Fprintf(c.App.ErrWriter, "would forget %s\n", id)
		return nil
	}
	if err := r.Forget(c.Context, id); err != nil {
		return err
	}
	fmt.Fprintf(c.App.ErrWriter, "forgot %s\n", id)
	return nil
}

// policyFlags reads the --keep-* flags; rules tells whether any was given.
func policyFlags(c *cli.Context) (p repo.Policy, rules bool, err error) {
	for _, k := range keepFlags {
		if c.IsSet(k.name) {
			*k.field(&p), rules = c.Int(k.name), true
		}
	}
	if c.IsSet("keep-within") {
		rules = true
		if p.Within, err = repo.ParseDuration(c.String("keep-within")); err != nil {
			return p, rules, usagef("--keep-within: %v", err)
		}
	}
	if err := p.Valid(); err != nil {
		return p, rules, usagef("--%v", err)
	}
	if rules && p.Empty() {
		// restic keeps everything then; a policy that says nothing is
		// more likely a mistake.
		return p, rules, usagef("forget: the --keep-* rules given keep nothing by themselves: give a count other than 0, or --keep-within")
	}
	return p, rules, nil
}

// printPolicyResults prints each PE's snapshots, oldest first, with what
// the policy does with them and why, then a summary.
func printPolicyResults(w io.Writer, res []repo.PolicyResult, dryRun bool) error {
	var kept, removed int
	for _, g := range res {
		fmt.Fprintf(w, "%s:\n", g.PE)
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  SNAPSHOT\tBACKED UP\tACTION\tREASONS")
		for _, d := range slices.Backward(g.Decisions) {
			action := "remove"
			if d.Keep {
				action = "keep"
				kept++
			} else {
				removed++
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", d.Snapshot.ID, d.Snapshot.BackedUp.Local().Format(time.DateTime), action, strings.Join(d.Reasons, ", "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	_, err := fmt.Fprintf(w, "%d PE(s): keep %d snapshot(s), %s %d\n", len(res), kept, verb, removed)
	return err
}
