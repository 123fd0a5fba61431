package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/astrolabe-appliance/astrolabe/appliance/remote"
)

// instantCommand is 'astrolabe instant': VMs booted on vSphere from their
// backups by the running appliance.
func instantCommand() *cli.Command {
	return &cli.Command{
		Name:      "instant",
		Usage:     "boot a VM backup on vSphere without restoring it (needs the running appliance)",
		ArgsUsage: "vm:UUID:SNAPSHOT",
		Description: `Asks the running appliance ('astrolabe serve --nfs ADDR' with pes/vm.pe.json)
to boot the VM snapshot (a backup in its repository, or a vSphere
snapshot) at once: each disk is served over NFSv3 through a copy-on-write
overlay, the appliance's export is mounted on a host of the vm type's
resource pool as the datastore astrolabe-instant, and a VM with the
snapshot's hardware is made on those disks and powered on. Prints the
VM's name. The hosts must reach the appliance's NFS address (ESXi uses
port 2049 and asks the portmapper on 111).

  astrolabe instant migrate NAME [--datastore DS]   move it onto real storage while it runs; it stays
  astrolabe instant stop NAME                       power it off and throw it away with its writes
  astrolabe instant ls

The appliance is --server with --token, or by default this machine's
(https://127.0.0.1:8443) with the configuration directory's api-token;
--server-ca defaults to its tls/cert.pem.`,
		Action: func(c *cli.Context) error {
			a, err := args(c, 1, "vm:UUID:SNAPSHOT")
			if err != nil {
				return err
			}
			id, err := peArg(a[0], 1)
			if err != nil {
				return err
			}
			m, err := applianceClient(c)
			if err != nil {
				return err
			}
			v, err := m.StartInstantVM(c.Context, id)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "instant VM %s (vm:%s) runs from datastore %s, disks %s\n", v.Name, v.Uuid, v.Datastore, strings.Join(v.Disks, ", "))
			fmt.Fprintln(c.App.Writer, v.Name)
			return nil
		},
		Subcommands: []*cli.Command{{
			Name:      "migrate",
			Usage:     "move an instant VM onto a real datastore while it runs",
			ArgsUsage: "NAME",
			Flags:     []cli.Flag{&cli.StringFlag{Name: "datastore", Usage: "`DS` to move onto (default: the vm type's restore datastore)"}},
			Action: func(c *cli.Context) error {
				a, err := args(c, 1, "NAME")
				if err != nil {
					return err
				}
				m, err := applianceClient(c)
				if err != nil {
					return err
				}
				if err := m.MigrateInstantVM(c.Context, a[0], c.String("datastore")); err != nil {
					return err
				}
				fmt.Fprintf(c.App.ErrWriter, "instant VM %s migrated; it no longer needs the appliance\n", a[0])
				return nil
			},
		}, {
			Name:      "stop",
			Usage:     "power an instant VM off and throw it away with its writes",
			ArgsUsage: "NAME",
			Action: func(c *cli.Context) error {
				a, err := args(c, 1, "NAME")
				if err != nil {
					return err
				}
				m, err := applianceClient(c)
				if err != nil {
					return err
				}
				return m.StopInstantVM(c.Context, a[0])
			},
		}, {
			Name:  "ls",
			Usage: "list the instant VMs",
			Action: func(c *cli.Context) error {
				if _, err := args(c, 0, "no arguments"); err != nil {
					return err
				}
				m, err := applianceClient(c)
				if err != nil {
					return err
				}
				vms, err := m.InstantVMs(c.Context)
				if err != nil {
					return err
				}
				for _, v := range vms {
					fmt.Fprintf(c.App.Writer, "%s\t%s\t%s\n", v.Name, v.Id, strings.Join(v.Disks, ","))
				}
				return nil
			},
		}},
	}
}

// defaultServer is the appliance on this machine, as 'serve' listens by
// default.
const defaultServer = "https://127.0.0.1:8443"

// applianceClient is the REST client of the running appliance: --server, or
// the one of this configuration directory on this machine.
func applianceClient(c *cli.Context) (*remote.Manager, error) {
	cfg := c.String("config")
	url, token, ca := c.String("server"), c.String("token"), c.String("server-ca")
	if url == "" {
		url = defaultServer
	}
	// The configuration's token goes only to this machine's appliance:
	// another --server gets the --token given for it.
	if token == "" && url != defaultServer {
		return nil, usagef("--server %s needs --token (the configuration's own token goes only to %s)", url, defaultServer)
	}
	if token == "" {
		b, err := os.ReadFile(filepath.Join(cfg, "api-token"))
		if err != nil {
			return nil, usagef("no API token: give --token, or run where %s/api-token is ('astrolabe serve' makes it)", cfg)
		}
		token = strings.TrimSpace(string(b))
	}
	if own := filepath.Join(cfg, "tls", "cert.pem"); ca == "" && fileExists(own) {
		ca = own
	}
	return remote.New(remote.Options{URL: url, Token: token, CAFile: ca})
}
