package main

import (
	"strings"
	"testing"
)

// TestInstantVMCommands: 'astrolabe instant' talks to the running
// appliance with the configuration's token and certificate: it lists no
// instant VMs, refuses what cannot be done with the appliance's reason,
// and fails clearly where no appliance answers. (The vSphere flow itself
// runs on vcsim in pe/vm's TestInstantVMThroughTheAppliance.)
func TestInstantVMCommands(t *testing.T) {
	cfg := t.TempDir() + "/cfg"
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	// Without NFS: 501, said as such.
	a := startServe(t, cfg)
	// The configuration's token goes only to the default server.
	mustFail(t, cfg, "needs --token", "--server", a.base(), "instant", "ls")
	server := []string{"--server", a.base(), "--token", a.info["token"]}
	mustFail(t, cfg, "NFS is not configured", append(server, "instant", "ls")...)
	a.stop()

	a = startServe(t, cfg, "--nfs", "127.0.0.1:0")
	server = []string{"--server", a.base(), "--token", a.info["token"]}
	if out := mustRun(t, cfg, append(server, "instant", "ls")...); strings.TrimSpace(out.stdout) != "" {
		t.Errorf("instant ls of a new appliance: %q", out.stdout)
	}
	// No vm type in the configuration: the appliance says what is missing.
	mustFail(t, cfg, "vm.pe.json", append(server, "instant", "vm:4216f3a1-0000-0000-0000-000000000000:snapshot-1")...)
	// Not a VM snapshot.
	mustFail(t, cfg, "vm type", append(server, "instant", snap)...)
	mustFail(t, cfg, "not found", append(server, "instant", "stop", "nosuch")...)
	mustFail(t, cfg, "not found", append(server, "instant", "migrate", "nosuch")...)
	mustFail(t, cfg, "want vm:UUID:SNAPSHOT", append(server, "instant")...)
	a.stop()
	// No appliance answers: the error says where it tried.
	mustFail(t, cfg, "127.0.0.1:1", "--server", "https://127.0.0.1:1", "instant", "ls")
}
