// Command astrolabe-firstboot configures the appliance on its first boot
// from the OVF environment the deploy wizard filled in: host name, static
// network (else DHCP), API token and backup repository.
//
// The environment comes from the first transport that has one:
//
//  1. vSphere's guestinfo (vmtoolsd --cmd "info-get guestinfo.ovfEnv"),
//  2. qemu's fw_cfg entry opt/astrolabe/ovfenv (the boot test),
//  3. a config drive: ovf-env.xml at the root of a CD-ROM (the OVF "iso"
//     transport) or of a filesystem labelled OVF-ENV.
//
// With -repo-init (astrolabe.service's ExecStartPre, after the network is
// up) it creates the repository first boot configured, once.
package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Files, relative to the root.
const (
	confDir     = "etc/astrolabe"
	configured  = confDir + "/.configured"
	repoPending = confDir + "/.repo-init-pending"
	serveEnv    = confDir + "/serve.env"
	tokenFile   = confDir + "/api-token"
	staticNet   = "etc/systemd/network/10-static.network"
	dataDir     = "var/lib/astrolabe"
	fwCfgPath   = "/sys/firmware/qemu_fw_cfg/by_name/opt/astrolabe/ovfenv/raw"
)

// astrolabe is the appliance's binary; tests replace it.
var astrolabe = "/usr/local/bin/astrolabe"

// keys are the properties apply reads: those of images/ova.Properties.
var keys = []string{"hostname", "ip", "netmask", "gateway", "dns", "api_token", "repo_url", "repo_access_key", "repo_secret_key", "repo_password"}

func main() {
	repoInit := flag.Bool("repo-init", false, "create the repository first boot configured, if still pending")
	flag.Parse()
	ctx := context.Background()
	var err error
	if *repoInit {
		err = initRepository(ctx, "/")
	} else {
		err = firstBoot(ctx)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "astrolabe-firstboot: %v\n", err)
		os.Exit(1)
	}
}

func firstBoot(ctx context.Context) error {
	env, source := readEnvironment(ctx)
	props := map[string]string{}
	done := true
	if env == nil {
		fmt.Println("astrolabe-firstboot: no OVF environment; DHCP, generated API token, no repository")
	} else if p, err := parseEnvironment(env); err != nil {
		// The appliance still comes up, with the defaults, and first boot
		// runs again at the next boot.
		fmt.Fprintf(os.Stderr, "astrolabe-firstboot: OVF environment from %s: %v; DHCP and a generated API token until a boot finds a valid one\n", source, err)
		done = false
	} else {
		props = p
		fmt.Printf("astrolabe-firstboot: OVF environment from %s (%d properties)\n", source, len(props))
	}
	sys := system{root: "/", sethostname: func(h string) error { return syscall.Sethostname([]byte(h)) }}
	for _, w := range sys.apply(props) {
		fmt.Fprintf(os.Stderr, "astrolabe-firstboot: %v\n", w)
	}
	if sys.err != nil || !done {
		return sys.err
	}
	return os.WriteFile(filepath.Join(sys.root, configured), nil, 0o600)
}

// readEnvironment tries the transports in order; nil if none has one.
func readEnvironment(ctx context.Context) ([]byte, string) {
	for _, t := range []struct {
		name string
		read func(context.Context) []byte
	}{{"guestinfo", guestinfo}, {"fw_cfg", fwCfg}, {"config drive", configDrive}} {
		if b := bytes.TrimSpace(t.read(ctx)); len(b) > 0 {
			return b, t.name
		}
	}
	return nil, ""
}

func guestinfo(ctx context.Context) []byte {
	if _, err := exec.LookPath("vmtoolsd"); err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "vmtoolsd", "--cmd", "info-get guestinfo.ovfEnv").Output()
	if err != nil {
		return nil // outside VMware, or no vApp environment
	}
	return out
}

func fwCfg(ctx context.Context) []byte {
	if _, err := os.Stat(fwCfgPath); err != nil {
		_ = exec.CommandContext(ctx, "modprobe", "qemu_fw_cfg").Run() // absent outside qemu
	}
	b, _ := os.ReadFile(fwCfgPath)
	return b
}

// configDrive reads ovf-env.xml (any case, - or _) from the root of a
// CD-ROM or of a filesystem labelled OVF-ENV or "OVF ENV".
func configDrive(ctx context.Context) []byte {
	// The CD-ROM driver is loaded by udev's coldplug.
	_ = exec.CommandContext(ctx, "udevadm", "settle", "--timeout=15").Run()
	var devs []string
	for _, label := range []string{"OVF-ENV", "OVF ENV"} {
		out, _ := exec.CommandContext(ctx, "blkid", "-c", "/dev/null", "-o", "device", "-t", "LABEL="+label).Output()
		devs = append(devs, strings.Fields(string(out))...)
	}
	cds, _ := filepath.Glob("/dev/sr[0-9]*")
	devs = append(devs, cds...)
	for _, dev := range devs {
		if b := readFromDevice(ctx, dev); b != nil {
			return b
		}
	}
	return nil
}

func readFromDevice(ctx context.Context, dev string) []byte {
	dir, err := os.MkdirTemp("/run", "astrolabe-ovfenv-")
	if err != nil {
		return nil
	}
	defer os.Remove(dir)
	if err := exec.CommandContext(ctx, "mount", "-o", "ro", dev, dir).Run(); err != nil {
		return nil // an empty drive, or no filesystem
	}
	defer func() { _ = exec.Command("umount", dir).Run() }()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if n := strings.ReplaceAll(strings.ToLower(e.Name()), "_", "-"); n == "ovf-env.xml" {
			b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			return b
		}
	}
	return nil
}

// parseEnvironment returns the properties of an OVF environment document.
func parseEnvironment(b []byte) (map[string]string, error) {
	var env struct {
		XMLName    xml.Name
		Properties []struct {
			Key   string `xml:"key,attr"`
			Value string `xml:"value,attr"`
		} `xml:"PropertySection>Property"`
	}
	if err := xml.Unmarshal(b, &env); err != nil {
		return nil, err
	}
	if env.XMLName.Local != "Environment" {
		return nil, fmt.Errorf("root element %s, not Environment", env.XMLName.Local)
	}
	props := map[string]string{}
	for _, p := range env.Properties {
		props[p.Key] = p.Value
	}
	return props, nil
}

// system is the appliance's root filesystem; tests use a directory.
type system struct {
	root        string
	sethostname func(string) error // nil: only the files
	err         error              // the first write that failed
}

func (s *system) write(rel string, data []byte, perm fs.FileMode) {
	if s.err != nil {
		return
	}
	p := filepath.Join(s.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.err = err
		return
	}
	// Through a new file: the secrets must never be readable by others.
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		s.err = err
		return
	}
	if err := os.Chmod(tmp, perm); err != nil {
		s.err = err
		return
	}
	if err := os.Rename(tmp, p); err != nil {
		s.err = fmt.Errorf("write %s: %w", p, err)
	}
}

var hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)

// apply configures the system from the properties (keys as in
// images/ova.Properties). Invalid values are left out and reported.
func (s *system) apply(props map[string]string) (warnings []error) {
	get := func(k string) string { return strings.TrimSpace(props[k]) }
	for k := range props {
		if !slices.Contains(keys, k) {
			warnings = append(warnings, fmt.Errorf("unknown property %q ignored", k))
		}
	}
	for _, typ := range []string{"fs", "disk"} {
		root := filepath.Join(s.root, dataDir, typ)
		if err := os.MkdirAll(root, 0o755); err != nil && s.err == nil {
			s.err = err
		}
		pe := filepath.Join(confDir, "pes", typ+".pe.json")
		if _, err := os.Stat(filepath.Join(s.root, pe)); errors.Is(err, fs.ErrNotExist) {
			s.write(pe, fmt.Appendf(nil, "{\"root\": %q}\n", "/"+dataDir+"/"+typ), 0o644)
		}
	}
	if err := os.Chmod(filepath.Join(s.root, confDir), 0o700); err != nil && s.err == nil {
		s.err = err
	}

	if h := get("hostname"); h != "" {
		if len(h) > 253 || !hostnameRE.MatchString(h) {
			warnings = append(warnings, fmt.Errorf("hostname %q is not a valid host name; keeping astrolabe", h))
		} else {
			short, _, _ := strings.Cut(h, ".")
			s.write("etc/hostname", []byte(h+"\n"), 0o644)
			hosts := "127.0.0.1 localhost\n127.0.1.1 " + h
			if short != h {
				hosts += " " + short
			}
			s.write("etc/hosts", []byte(hosts+"\n::1 localhost ip6-localhost ip6-loopback\n"), 0o644)
			if s.sethostname != nil {
				if err := s.sethostname(h); err != nil {
					warnings = append(warnings, fmt.Errorf("set host name: %w", err))
				}
			}
		}
	}

	if ip := get("ip"); ip != "" {
		network, err := staticNetwork(ip, get("netmask"), get("gateway"), get("dns"))
		if err != nil {
			warnings = append(warnings, fmt.Errorf("static network: %w; using DHCP", err))
		} else {
			s.write(staticNet, []byte(network), 0o644)
		}
	}

	if t := get("api_token"); t != "" {
		s.write(tokenFile, []byte(t+"\n"), 0o600)
	}

	var env strings.Builder
	env.WriteString("# Written by astrolabe-firstboot from the OVF environment; read by astrolabe.service.\n")
	if r := get("repo_url"); r != "" {
		for _, kv := range [][2]string{
			{"ASTROLABE_REPOSITORY", r},
			{"AWS_ACCESS_KEY_ID", get("repo_access_key")},
			// Secrets as given: leading or trailing blanks may be meant.
			{"AWS_SECRET_ACCESS_KEY", props["repo_secret_key"]},
			{"ASTROLABE_PASSWORD", props["repo_password"]},
		} {
			if kv[1] != "" {
				fmt.Fprintf(&env, "%s=%s\n", kv[0], quoteEnv(kv[1]))
			}
		}
		if props["repo_password"] == "" {
			warnings = append(warnings, errors.New("repository without a password: astrolabe creates and opens only encrypted ones"))
		}
		s.write(repoPending, nil, 0o600)
	}
	s.write(serveEnv, []byte(env.String()), 0o600)
	return warnings
}

// quoteEnv quotes a value for a systemd EnvironmentFile (and for sh):
// double quotes, in which \ " $ and ` are escaped and the rest is literal.
func quoteEnv(v string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range v {
		if strings.ContainsRune("\\\"$`", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// staticNetwork is the systemd-networkd configuration of a static address;
// the netmask may be dotted (255.255.255.0) or a prefix length, or be part
// of ip (10.0.0.5/24); the DNS servers are separated by commas or blanks.
func staticNetwork(ip, mask, gateway, dns string) (string, error) {
	var prefix netip.Prefix
	if strings.Contains(ip, "/") {
		p, err := netip.ParsePrefix(ip)
		if err != nil {
			return "", fmt.Errorf("ip %q: %w", ip, err)
		}
		prefix = p
	} else {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return "", fmt.Errorf("ip %q: %w", ip, err)
		}
		bits := 24
		if addr.Is6() {
			bits = 64
		}
		if mask != "" {
			if bits, err = prefixLength(mask, addr.BitLen()); err != nil {
				return "", err
			}
		}
		prefix = netip.PrefixFrom(addr, bits)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by astrolabe-firstboot from the OVF environment.\n[Match]\nName=en* eth*\n\n[Network]\nAddress=%s\n", prefix)
	if gateway != "" {
		gw, err := netip.ParseAddr(gateway)
		if err != nil {
			return "", fmt.Errorf("gateway %q: %w", gateway, err)
		}
		fmt.Fprintf(&b, "Gateway=%s\n", gw)
	}
	for _, d := range strings.FieldsFunc(dns, func(r rune) bool { return r == ',' || r == ' ' || r == ';' }) {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return "", fmt.Errorf("dns %q: %w", d, err)
		}
		fmt.Fprintf(&b, "DNS=%s\n", a)
	}
	return b.String(), nil
}

func prefixLength(mask string, bitLen int) (int, error) {
	if n, err := strconv.Atoi(strings.TrimPrefix(mask, "/")); err == nil {
		if n < 0 || n > bitLen {
			return 0, fmt.Errorf("netmask %q: prefix length out of range", mask)
		}
		return n, nil
	}
	ip := net.ParseIP(mask)
	if ip == nil || ip.To4() == nil || bitLen != 32 {
		return 0, fmt.Errorf("netmask %q: not a dotted IPv4 mask or a prefix length", mask)
	}
	ones, bits := net.IPMask(ip.To4()).Size()
	if bits == 0 {
		return 0, fmt.Errorf("netmask %q: not contiguous", mask)
	}
	return ones, nil
}

// initRepository creates the repository once, with the settings
// astrolabe.service has from serve.env. An existing repository is kept.
func initRepository(ctx context.Context, root string) error {
	pending := filepath.Join(root, repoPending)
	if _, err := os.Stat(pending); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, astrolabe, "--config", filepath.Join(root, confDir), "repo", "init")
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, os.Stdout), io.MultiWriter(&out, os.Stderr)
	if err := cmd.Run(); err != nil && !strings.Contains(out.String(), "exists there already") {
		return fmt.Errorf("astrolabe repo init: %w (retried at the next start)", err)
	}
	return os.Remove(pending)
}
