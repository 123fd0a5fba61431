package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmware/govmomi/ovf"

	"github.com/astrolabe-appliance/astrolabe/images/ova"
)

// The wizard's properties are the ones first boot reads.
func TestKeysMatchOVF(t *testing.T) {
	var declared []string
	for _, p := range ova.Properties {
		declared = append(declared, p.Key)
	}
	if !slices.Equal(declared, keys) {
		t.Fatalf("OVF declares %v, first boot reads %v", declared, keys)
	}
}

const hard = `p a$s"w>rd'` + "`x` \\ &<é"

func TestParseEnvironment(t *testing.T) {
	// As vSphere writes it (govmomi's marshalling escapes the values).
	env, err := ovf.Env{
		EsxID:    "vm-42",
		Platform: &ovf.PlatformSection{Kind: "VMware ESXi", Version: "8.0.2"},
		Property: &ovf.PropertySection{Properties: []ovf.EnvProperty{
			{Key: "hostname", Value: "backup01"}, {Key: "repo_password", Value: hard}, {Key: "ip"},
		}},
	}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	props, err := parseEnvironment([]byte(env))
	if err != nil {
		t.Fatalf("%v\n%s", err, env)
	}
	if props["hostname"] != "backup01" || props["repo_password"] != hard || props["ip"] != "" || len(props) != 3 {
		t.Errorf("parsed %q from\n%s", props, env)
	}
	// A hand-written one with the oe: prefix, as in the boot test.
	props, err = parseEnvironment([]byte(`<?xml version="1.0"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection><Property oe:key="api_token" oe:value="t&amp;k&gt;"/></PropertySection>
</Environment>`))
	if err != nil || props["api_token"] != "t&k>" {
		t.Errorf("parsed %q, %v", props, err)
	}
	for _, bad := range []string{"", "<Environment>", "<Other/>", "not xml"} {
		if _, err := parseEnvironment([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func read(t *testing.T, root, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApply(t *testing.T) {
	root := t.TempDir()
	var host string
	s := system{root: root, sethostname: func(h string) error { host = h; return nil }}
	warnings := s.apply(map[string]string{
		"hostname": "backup01.example.com", "ip": "10.0.0.5", "netmask": "255.255.254.0",
		"gateway": "10.0.0.1", "dns": "10.0.0.2, 10.0.0.3", "api_token": " tok ",
		"repo_url": "s3://minio:9000/b/p", "repo_access_key": "AK", "repo_secret_key": "S K", "repo_password": hard,
	})
	if s.err != nil || len(warnings) != 0 {
		t.Fatalf("apply: %v %v", s.err, warnings)
	}
	if host != "backup01.example.com" || read(t, root, "etc/hostname") != "backup01.example.com\n" ||
		!strings.Contains(read(t, root, "etc/hosts"), "127.0.1.1 backup01.example.com backup01\n") {
		t.Errorf("host name %q", host)
	}
	want := "Address=10.0.0.5/23\nGateway=10.0.0.1\nDNS=10.0.0.2\nDNS=10.0.0.3\n"
	if n := read(t, root, staticNet); !strings.HasSuffix(n, want) || !strings.Contains(n, "Name=en* eth*") {
		t.Errorf("network:\n%s", n)
	}
	if read(t, root, tokenFile) != "tok\n" {
		t.Errorf("token %q", read(t, root, tokenFile))
	}
	for _, f := range []string{tokenFile, serveEnv, repoPending} {
		if fi, err := os.Stat(filepath.Join(root, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	if read(t, root, "etc/astrolabe/pes/disk.pe.json") != "{\"root\": \"/var/lib/astrolabe/disk\"}\n" {
		t.Errorf("disk PE config %q", read(t, root, "etc/astrolabe/pes/disk.pe.json"))
	}
	// serve.env gives back every value exactly (sh and systemd read
	// double-quoted values alike).
	out, err := exec.Command("sh", "-c", `set -a; . "$1"; printf '%s|%s|%s|%s' "$ASTROLABE_REPOSITORY" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$ASTROLABE_PASSWORD"`,
		"sh", filepath.Join(root, serveEnv)).Output()
	if got := "s3://minio:9000/b/p|AK|S K|" + hard; err != nil || string(out) != got {
		t.Errorf("serve.env gives %q (%v), want %q:\n%s", out, err, got, read(t, root, serveEnv))
	}
}

func TestApplyInvalid(t *testing.T) {
	root := t.TempDir()
	s := system{root: root}
	warnings := s.apply(map[string]string{"hostname": "bad_name!", "ip": "10.0.0.5", "netmask": "255.0.255.0", "extra": "x"})
	if s.err != nil || len(warnings) != 3 {
		t.Fatalf("apply: %v, warnings %v", s.err, warnings)
	}
	for _, f := range []string{"etc/hostname", staticNet, tokenFile, repoPending} {
		if _, err := os.Stat(filepath.Join(root, f)); err == nil {
			t.Errorf("%s written", f)
		}
	}
	if env := read(t, root, serveEnv); strings.Contains(env, "=") {
		t.Errorf("serve.env without a repository: %q", env)
	}
}

func TestStaticNetwork(t *testing.T) {
	for _, c := range []struct{ ip, mask, gw, dns, want string }{
		{"10.1.2.3", "", "", "", "Address=10.1.2.3/24\n"},
		{"10.1.2.3/16", "", "", "", "Address=10.1.2.3/16\n"},
		{"10.1.2.3", "20", "", "1.1.1.1 8.8.8.8", "Address=10.1.2.3/20\nDNS=1.1.1.1\nDNS=8.8.8.8\n"},
		{"fd00::5", "", "fd00::1", "", "Address=fd00::5/64\nGateway=fd00::1\n"},
	} {
		got, err := staticNetwork(c.ip, c.mask, c.gw, c.dns)
		if err != nil || !strings.HasSuffix(got, c.want) {
			t.Errorf("%+v: %v\n%s", c, err, got)
		}
	}
	for _, c := range [][4]string{{"10.1.2", "", "", ""}, {"10.1.2.3", "33", "", ""}, {"10.1.2.3", "", "gw", ""}, {"10.1.2.3", "", "", "a,b"}, {"fd00::1", "255.0.0.0", "", ""}} {
		if _, err := staticNetwork(c[0], c[1], c[2], c[3]); err == nil {
			t.Errorf("%q accepted", c)
		}
	}
}

func TestInitRepository(t *testing.T) {
	root := t.TempDir()
	fake := filepath.Join(root, "astrolabe")
	defer func(old string) { astrolabe = old }(astrolabe)
	astrolabe = fake
	if err := initRepository(context.Background(), root); err != nil {
		t.Fatalf("nothing pending: %v", err)
	}
	s := system{root: root}
	s.apply(map[string]string{"repo_url": "/srv/repo", "repo_password": "pw"})
	for _, c := range []struct {
		script  string
		fails   bool
		pending bool
	}{
		{"echo unreachable >&2; exit 1", true, true},
		{"echo 'Error: /srv/repo: a repository exists there already' >&2; exit 1", false, false},
	} {
		if err := os.WriteFile(fake, []byte("#!/bin/sh\n"+c.script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		err := initRepository(context.Background(), root)
		_, perr := os.Stat(filepath.Join(root, repoPending))
		if (err != nil) != c.fails || (perr == nil) != c.pending {
			t.Errorf("%s: error %v, pending %v", c.script, err, perr == nil)
		}
	}
}
