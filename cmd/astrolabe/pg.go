package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/walarchive"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

func pgCommand() *cli.Command {
	systemID := &cli.Uint64Flag{Name: "system-id", Usage: "the cluster's system identifier `ID`, where the repository holds the WAL of more than one system of that name"}
	return &cli.Command{
		Name:  "pg",
		Usage: "PostgreSQL: the WAL archived in the repository",
		Subcommands: []*cli.Command{{
			Name:  "wal-status",
			Usage: "list per cluster the WAL archived: timeline, oldest and newest segment and time, gaps, lag",
			Description: `Lists the WAL the repository holds of each cluster. For the clusters of the
configuration (pes/pg.pe.json) it asks the server how far its WAL is and
prints the lag: the bytes not yet archived and how long ago the server
sent the newest archived byte.`,
			Flags:  repoFlags(),
			Action: withRepo(walStatus),
		}, {
			Name:      "wal-fetch",
			Usage:     "write an archived WAL file to DEST: a restore_command for a recovery of your own",
			ArgsUsage: "CLUSTER FILE DEST",
			Description: `Writes WAL file FILE (a segment, or a timeline's .history file) of CLUSTER
from the repository to DEST, as PostgreSQL's restore_command wants; a
segment whose end was not received is padded as recovery expects. It
fails (exit status 1) for a file the repository lacks. For example:

    restore_command = 'astrolabe pg wal-fetch --repo /backup main %f %p'

with the repository's password in ASTROLABE_PASSWORD or --password-file
readable by the server's account.`,
			Flags: append(repoFlags(), systemID),
			Action: func(c *cli.Context) error {
				a, err := args(c, 3, "CLUSTER FILE DEST")
				if err != nil {
					return err
				}
				if err := repo.ValidWALName(a[1]); err != nil {
					return usagef("%v", err)
				}
				return withRepo(func(c *cli.Context, r *repo.Repository) error {
					return walarchive.Fetch(c.Context, r, a[0], c.Uint64("system-id"), a[1], a[2])
				})(c)
			},
		}, {
			Name:      "wal-forget",
			Usage:     "remove the archived segments of CLUSTER that no restore needs (their data goes with the next prune)",
			ArgsUsage: "CLUSTER",
			Description: `Removes the segments before --before SEGMENT, or with --before-oldest-backup
those before the first segment the oldest base backup of CLUSTER in the
repository replays from. Timeline history files stay.`,
			Flags: append(repoFlags(), systemID,
				&cli.StringFlag{Name: "before", Usage: "keep `SEGMENT` and those after it"},
				&cli.BoolFlag{Name: "before-oldest-backup", Usage: "keep what the oldest base backup of the cluster in the repository needs"}),
			Action: func(c *cli.Context) error {
				a, err := args(c, 1, "CLUSTER")
				if err != nil {
					return err
				}
				before, oldest := c.String("before"), c.Bool("before-oldest-backup")
				if (before == "") == !oldest {
					return usagef("pg wal-forget: give --before SEGMENT or --before-oldest-backup")
				}
				if before != "" && (repo.ValidWALName(before) != nil || len(before) != 24) {
					return usagef("--before %q: want a segment name (24 hex digits)", before)
				}
				return withRepo(func(c *cli.Context, r *repo.Repository) error {
					id, err := walSystem(c.Context, r, a[0], c.Uint64("system-id"))
					if err != nil {
						return err
					}
					if oldest {
						seg, found, err := walarchive.OldestBackupSegment(c.Context, r, a[0], id)
						if err != nil {
							return err
						}
						if !found {
							return fmt.Errorf("the repository has no base backup of pg:%s (system %d): nothing is known to be unneeded", a[0], id)
						}
						before = seg
					}
					n, err := r.ForgetWAL(c.Context, a[0], id, before)
					fmt.Fprintf(c.App.Writer, "forgot %d segments of %s before %s\n", n, a[0], before)
					return err
				})(c)
			},
		}, {
			Name:      "drop-slot",
			Usage:     "drop the replication slot astrolabe_CLUSTER the WAL archiver keeps on the server",
			ArgsUsage: "CLUSTER",
			Description: `Drops the physical replication slot through which astrolabe serve archives
the WAL of CLUSTER (a cluster of pes/pg.pe.json), so that the server no
longer keeps WAL for it: do it when the cluster's WAL archiving is given
up (before removing the cluster from the configuration), else the server
keeps its WAL for the slot forever (bound it with max_slot_wal_keep_size).
Refused while a receiver streams from the slot: stop astrolabe serve
first. WAL the
server removes afterwards is not archived; a receiver started again
reports it as a gap.`,
			Action: func(c *cli.Context) error {
				a, err := args(c, 1, "CLUSTER")
				if err != nil {
					return err
				}
				clusters, err := walarchive.LoadClusters(c.String("config"))
				if err != nil {
					return err
				}
				for _, cl := range clusters {
					if cl.Name != a[0] {
						continue
					}
					found, err := walarchive.DropSlot(c.Context, cl)
					if err != nil {
						return err
					}
					if !found {
						return fmt.Errorf("cluster %s has no slot %s", cl.Name, walarchive.SlotName(cl.Name))
					}
					fmt.Fprintf(c.App.Writer, "dropped slot %s of %s\n", walarchive.SlotName(cl.Name), cl.Name)
					return nil
				}
				return usagef("no cluster %q in %s: drop its slot on the server with SELECT pg_drop_replication_slot('%s')", a[0], walarchive.ConfigFile, walarchive.SlotName(a[0]))
			},
		}},
	}
}

// walSystem is the system identifier of the cluster's archive: the one
// given, else the only one the repository holds.
func walSystem(ctx context.Context, r *repo.Repository, cluster string, given uint64) (uint64, error) {
	if given != 0 {
		return given, nil
	}
	clusters, err := r.WALClusters(ctx)
	if err != nil {
		return 0, err
	}
	var ids []string
	var id uint64
	for _, c := range clusters {
		if c.Name == cluster {
			ids = append(ids, strconv.FormatUint(c.SystemID, 10))
			id = c.SystemID
		}
	}
	switch len(ids) {
	case 0:
		return 0, fmt.Errorf("cluster %s: %w", cluster, walarchive.ErrNoWAL)
	case 1:
		return id, nil
	}
	return 0, usagef("cluster %s has the WAL of several systems in the repository: give --system-id (%s)", cluster, strings.Join(ids, ", "))
}

func walStatus(c *cli.Context, r *repo.Repository) error {
	ctx := c.Context
	sums, err := walarchive.Summaries(ctx, r)
	if err != nil {
		return err
	}
	clusters, err := walarchive.LoadClusters(c.String("config"))
	if err != nil {
		return err
	}
	configured := map[string]walarchive.Cluster{}
	for _, cl := range clusters {
		configured[cl.Name] = cl
	}
	archived := map[string]bool{}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tSYSTEM\tTIMELINE\tSEGMENTS\tOLDEST\tOLDEST TIME\tNEWEST\tNEWEST TIME\tGAPS\tLAG")
	for _, s := range sums {
		archived[s.Cluster] = true
		lag := "-"
		if cl, ok := configured[s.Cluster]; ok {
			lag = walLag(ctx, cl, s)
		}
		gaps := "none"
		if len(s.Gaps) > 0 {
			gaps = strings.Join(s.Gaps, "; ")
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Cluster, s.SystemID, s.Timeline, s.Segments,
			s.Oldest, walTime(s.OldestTime), s.Newest, walTime(s.NewestTime), gaps, lag)
	}
	for _, cl := range clusters {
		if !archived[cl.Name] {
			fmt.Fprintf(tw, "%s\t-\t-\t0\t-\t-\t-\t-\t-\tno WAL archived\n", cl.Name)
		}
	}
	return tw.Flush()
}

func walTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05.000")
}

// walLag asks the server how far its WAL is ahead of the archive.
func walLag(ctx context.Context, cl walarchive.Cluster, s walarchive.Summary) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	id, lsn, err := walarchive.ServerPosition(ctx, cl)
	if err != nil {
		return "unknown: " + oneLine(err.Error())
	}
	if id != s.SystemID {
		return fmt.Sprintf("the server is system %d now", id)
	}
	end, err := walarchive.ParseLSN(s.EndLSN)
	if err != nil || lsn <= end {
		return "0 bytes"
	}
	lag := fmt.Sprintf("%d bytes", lsn-end)
	if !s.NewestSent.IsZero() {
		lag += fmt.Sprintf(", newest archived sent %.0fs ago", time.Since(s.NewestSent).Seconds())
	}
	return lag
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
