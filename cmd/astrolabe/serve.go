package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/daemon"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the appliance: REST API, S3 and NBD data paths, and tasks, until SIGINT/SIGTERM",
		Description: `Serves the REST API (https, bearer token) under /v1/astrolabe and
/v1/appliance, health at /healthz and Prometheus metrics at /metrics; the
S3 data path (https, SigV4: buckets are PE types, keys are snapshot PE IDs,
with .md, .peinfo and .zip objects; zips uploaded into the bucket "copy",
in one PUT or in parts, are restored as new PEs by a task whose ID the
response's x-astrolabe-task-id carries); and the NBD server for the exports started through
the API. Exports it starts are recorded in the config directory and come
back after a restart.

It runs the scheduled jobs of jobs.json in the config directory (backup,
prune, verify, replicate), each run a task whose result is kept in
jobs-history.json; /v1/appliance/jobs lists, creates, changes and deletes
them (see the README). A jobs.json that cannot be read stops serve.

S3 credentials are --s3-access-key/--s3-secret-key (or their environment
variables), else those stored in the config directory
(s3-credentials.json), else new ones that are stored there and printed.

The API token is --token or ASTROLABE_TOKEN, else the one stored in the
config directory (api-token), else a new one that is stored there and
printed once. The TLS certificate is the config directory's tls/cert.pem
and tls/key.pem, generated on first start: a server certificate for this host's names and
addresses, followed by the CA that signed it, which may sign only for those
names and whose key is thrown away. Clients pin tls/cert.pem as their only
trusted root (curl --cacert, or --server-ca for this CLI; libnbd and qemu
take the CA, see 'nbd client-cert'). A generated certificate of an older
form (one self-signed certificate) or lacking one
of those names is generated again, with a new key, and the log says so; a
certificate the administrator put there is used as it is. TLS 1.2 offers
only ECDHE with AES-GCM or ChaCha20-Poly1305; TLS 1.3 is preferred.

FUSE mounts started through the API must be under --mount-root (default
the config directory's mounts/, made at start), in a directory that is
empty (it is made if missing) unless the request sets force. --mount is
the operator's and may be anywhere. Mounts show each PE's owners and
modes and the kernel checks them; other users see them only with
allowOther.

Each HTTP listener (API, S3) serves at most --http-max-conns connections
at once (more wait to be accepted), closes connections idle between
requests after --http-idle-timeout, that send no request headers within
--http-header-timeout, and that make no progress reading a request body or
a response for --http-stall-timeout. Long transfers that keep moving are
never cut.

NBD offers TLS (STARTTLS, nbds://) with the same certificate. Clients
authenticate with client certificates signed by the config directory's
tls/nbd-client-ca.pem (made on first start; 'astrolabe nbd client-cert DIR'
issues one into DIR as libnbd and qemu read it) or by --nbd-client-ca.
Off loopback NBD requires TLS and a client certificate for everything. On
loopback, clients without a certificate may list and read read-only
exports (--nbd-anonymous-read=false refuses them); writable exports need
a certificate everywhere, are listed only to authenticated clients, and
are named by their snapshot ID, a slash and a random 128-bit token (the
API returns the name).

With --repo (and its password) the API backs up to and restores from that
repository (/v1/appliance/repository/...), as tasks, and NBD and NFS
export its snapshots too.

With --nfs ADDR the appliance serves snapshots writable over NFSv3 as
datastore files, for vSphere hosts to boot VMs from backups without a
restore (POST /v1/appliance/nfs/exports): NAME/NAME.vmdk and
NAME/NAME-flat.vmdk, writes in a copy-on-write overlay. MOUNT and NFS
share ADDR's port. NFSv3 has no authentication of its own: only the
addresses of --nfs-allow (CIDRs; loopback if none) are served, and an
ADDR off loopback needs --nfs-allow.

SIGTERM lets running tasks finish (up to --drain) and exits cleanly.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "api", Value: "0.0.0.0:8443", Usage: "REST API `ADDR` (empty: off)"},
			&cli.StringFlag{Name: "s3", Value: "0.0.0.0:9000", Usage: "S3 data path `ADDR` (empty: off)"},
			&cli.StringFlag{Name: "nbd", Value: "0.0.0.0:10809", Usage: "NBD `ADDR` (empty: off)"},
			&cli.StringFlag{Name: "nfs", Usage: "NFSv3 `ADDR` of instant-recovery exports for vSphere (empty: off)"},
			&cli.StringSliceFlag{Name: "nfs-allow", Usage: "`CIDR` of NFS clients served (repeat or comma-separate; default: loopback only)"},
			&cli.StringFlag{Name: "mount", Usage: "mount the PE tree with FUSE at `DIR`"},
			&cli.StringFlag{Name: "mount-root", Usage: "API mounts must be under `DIR` (default: mounts/ in the config directory)"},
			&cli.DurationFlag{Name: "http-idle-timeout", Value: daemon.DefaultHTTPIdleTimeout, Usage: "close HTTP connections idle between requests after this long"},
			&cli.DurationFlag{Name: "http-header-timeout", Value: daemon.DefaultHTTPHeaderTimeout, Usage: "close HTTP connections that send no request headers within this long"},
			&cli.DurationFlag{Name: "http-stall-timeout", Value: daemon.DefaultHTTPStallTimeout, Usage: "close HTTP connections whose transfer makes no progress for this long"},
			&cli.IntFlag{Name: "http-max-conns", Value: daemon.DefaultHTTPMaxConns, Usage: "connections each HTTP listener serves at once"},
			&cli.IntFlag{Name: "http-max-conns-per-client", Value: daemon.DefaultHTTPMaxConnsPerClient, Usage: "connections each HTTP listener serves from one IP address (`N`); more are closed at once"},
			&cli.IntFlag{Name: "max-expansion", Value: pe.DefaultMaxExpansion, Usage: "the restore of a zip uploaded over S3 may write at most `N` times the zip's compressed data (holes do not count); a negative N: no bound"},
			&cli.BoolFlag{Name: "insecure-http", Usage: "serve the API over plain HTTP (loopback addresses only)"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"ASTROLABE_TOKEN"}, Usage: "API bearer `TOKEN`"},
			&cli.StringFlag{Name: "s3-access-key", EnvVars: []string{"ASTROLABE_S3_ACCESS_KEY"}, Usage: "S3 data path access `KEY`"},
			&cli.StringFlag{Name: "s3-secret-key", EnvVars: []string{"ASTROLABE_S3_SECRET_KEY"}, Usage: "S3 data path secret `KEY`"},
			&cli.DurationFlag{Name: "drain", Value: daemon.DefaultDrain, Usage: "how long running tasks may finish at shutdown"},
			&cli.BoolFlag{Name: "nbd-anonymous-read", Value: true, Usage: "on loopback, let NBD clients without a client certificate read read-only exports"},
			&cli.StringFlag{Name: "nbd-client-ca", Usage: "PEM `FILE` of more CAs whose certificates authenticate NBD clients"},
			&cli.IntFlag{Name: "nbd-memory-mib", Value: 256, Usage: "`MiB` of NBD requests and replies in flight, all connections together"},
			&cli.IntFlag{Name: "nbd-max-conns", Value: 256, Usage: "NBD connections in all (`N`)"},
			&cli.IntFlag{Name: "nbd-max-conns-per-client", Value: 64, Usage: "NBD connections from one IP address (`N`)"},
			&cli.DurationFlag{Name: "nbd-idle-timeout", Value: 15 * time.Minute, Usage: "close NBD connections idle this long (0: never)"},
			&cli.DurationFlag{Name: "nbd-write-stall-timeout", Value: 30 * time.Second, Usage: "close NBD connections whose replies or WRITE payloads make no progress for this long (0: never)"},
		}, repoFlags()...),
		Action: func(c *cli.Context) error {
			w := c.App.Writer
			allow, err := parsePrefixes(c.StringSlice("nfs-allow"))
			if err != nil {
				return usagef("serve --nfs-allow: %v", err)
			}
			var r *repo.Repository
			if c.String("repo") != "" {
				var err error
				if r, err = openRepo(c); err != nil {
					return err
				}
				defer r.Close()
			}
			return daemon.Run(c.Context, daemon.Options{
				Repository: r,
				ConfigDir:  c.String("config"),
				APIAddr:    c.String("api"),
				S3Addr:     c.String("s3"),
				NBDAddr:    c.String("nbd"),
				NFSAddr:    c.String("nfs"),
				NFSAllow:   allow,
				MountDir:   c.String("mount"),
				MountRoot:  c.String("mount-root"),
				HTTP: daemon.HTTPLimits{
					HeaderTimeout:     c.Duration("http-header-timeout"),
					IdleTimeout:       c.Duration("http-idle-timeout"),
					StallTimeout:      c.Duration("http-stall-timeout"),
					MaxConns:          c.Int("http-max-conns"),
					MaxConnsPerClient: c.Int("http-max-conns-per-client"),
				},
				InsecureHTTP: c.Bool("insecure-http"),
				Token:        c.String("token"),
				S3AccessKey:  c.String("s3-access-key"),
				S3SecretKey:  c.String("s3-secret-key"),
				DrainTimeout: c.Duration("drain"),
				Version:      version,
				Logger:       slog.Default(),
				Ready: func(ep daemon.Endpoints) {
					if ep.API != "" {
						fmt.Fprintf(w, "api: %s/v1/astrolabe\n", ep.API)
					}
					if ep.S3 != "" {
						fmt.Fprintf(w, "s3: %s\n", ep.S3)
					}
					if ep.NBD != "" {
						fmt.Fprintf(w, "nbd: %s\n", ep.NBD)
					}
					if ep.NFS != "" {
						fmt.Fprintf(w, "nfs: %s\n", ep.NFS)
					}
					if ep.NBDClientCA != "" {
						fmt.Fprintf(w, "nbd-client-ca: %s\n", ep.NBDClientCA)
					}
					if ep.CertFile != "" {
						fmt.Fprintf(w, "certificate: %s\n", ep.CertFile)
					}
					if k := ep.S3Keys; k != nil {
						fmt.Fprintf(w, "s3-access-key: %s (generated; stored in the config directory)\n", k.AccessKey)
						fmt.Fprintf(w, "s3-secret-key: %s\n", k.SecretKey)
					}
					if ep.TokenGenerated {
						fmt.Fprintf(w, "token: %s (generated; stored in the config directory)\n", ep.Token)
					}
					fmt.Fprintln(w, "ready")
				},

				NBDAnonymousRead:     c.Bool("nbd-anonymous-read"),
				NBDClientCA:          c.String("nbd-client-ca"),
				NBDMemory:            int64(c.Int("nbd-memory-mib")) << 20,
				NBDMaxConns:          c.Int("nbd-max-conns"),
				NBDMaxConnsPerClient: c.Int("nbd-max-conns-per-client"),
				NBDIdleTimeout:       idleTimeout(c.Duration("nbd-idle-timeout")),
				NBDWriteStallTimeout: idleTimeout(c.Duration("nbd-write-stall-timeout")),
				MaxExpansion:         c.Int("max-expansion"),
			})
		},
	}
}

// parsePrefixes parses CIDRs (or single addresses), each argument
// possibly a comma-separated list.
func parsePrefixes(args []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, arg := range args {
		for _, s := range strings.Split(arg, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return nil, fmt.Errorf("%q is neither a CIDR nor an address", s)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// idleTimeout maps the flag's 0 (never) to the nbd package's negative.
func idleTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
