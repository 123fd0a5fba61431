package main

import (
	"bytes"
	"context"
	"fmt"
	"github.com/urfave/cli/v2"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// readmeNotRun are the commands of README.md's sh blocks this test does not
// run, each with the reason. Every other command runs, in README order;
// a command neither run nor listed here fails the test, and so does an
// entry here that README.md no longer has.
var readmeNotRun = map[string]string{
	"astrolabe snap pg:main": pgNotRun,
	"astrolabe restore --repo /srv/backup pg:main:SNAPSHOT --to pg":                                          pgNotRun,
	"astrolabe restore --repo /srv/backup pg:main:SNAPSHOT --to pg:yesterday --to-time 2026-11-29T18:00:00Z": pgNotRun,
	"astrolabe cp --mode update pg:main:SNAPSHOT pg:yesterday":                                               pgNotRun,
	"make demo": "TestMakeDemo runs it (scripts/demo.sh, with the binary TestMain built) and every command it prints to try",
	"make test": "runs this test among all others",
	"go build -o bin/astrolabe ./cmd/astrolabe": "TestMain builds the same binary; bin/astrolabe is a link to it",
	"nbdcopy restore.img 'nbds://HOST:10809/EXPORT?tls-certificates=OUT'": "needs a writable export made through the REST API and a client certificate " +
		"('nbd client-cert'); security_nbd_test.go runs nbdcopy and qemu-img over nbds:// with client certificates",
	`qemu-img convert -n --object tls-creds-x509,id=tls0,dir=OUT,endpoint=client -f raw -O raw restore.img 'json:{"driver":"raw","file":{"driver":"nbd","host":"HOST","port":"10809","export":"EXPORT","tls-creds":"tls0"}}'`: "as the nbdcopy line above",
}

// pgNotRun: the pg commands need a PostgreSQL cluster configured.
const pgNotRun = "needs a running PostgreSQL cluster in pes/pg.pe.json; pg_test.go runs the same commands against one it starts"

// readmeAlternatives picks one of the alternatives a synopsis offers.
var readmeAlternatives = map[string]string{
	// create_new, the default, leaves disk:sample.img as it is for the
	// steps after it; create would fail as disk:sample.img exists.
	"create|create_new|update": "create_new",
}

// readmeDirs are the (empty) directories that fill puts for placeholders
// of mount points, under the test's directory.
var readmeDirs = map[string]string{"--mount": "serve-mnt", "--mount-root": "mounts", "MOUNTPOINT": "mnt"}

// readmeCommand is one command of a sh block of README.md.
type readmeCommand struct {
	line  int    // where it starts in README.md
	block int    // which sh block
	text  string // continuation lines joined, comment removed
	// shell: it has a pipe or a redirection; it runs through bash with
	// pipefail (every other command runs alone, exec'ed by sh).
	shell bool
}

// TestReadmeCommands runs README.md's commands against the built binary,
// in README order, in a temporary directory: placeholders are filled from
// earlier steps' output (snapshot IDs) or with temporary paths and free
// loopback ports, synopses run with their optional brackets dropped, and
// servers (serve, nbd serve, mount) run in the background until their sh
// block ends, checked to answer by the commands that follow them and by
// the test itself.
func TestReadmeCommands(t *testing.T) {
	needNBDTools(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatal("/dev/fuse missing: run as root with the fuse module loaded")
	}
	cmds := readmeCommands(t, filepath.Join("..", "..", "README.md"))
	r := newReadmeRun(t)
	used := map[string]bool{}
	for i, c := range cmds {
		if reason, ok := readmeNotRun[c.text]; ok {
			used[c.text] = true
			r.notRun++
			t.Logf("README.md:%d: not run: %s: %s", c.line, c.text, reason)
		} else {
			r.step(c)
		}
		if i+1 == len(cmds) || cmds[i+1].block != c.block {
			r.stopServers()
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	for text := range readmeNotRun {
		if !used[text] {
			t.Errorf("readmeNotRun lists %q, which README.md does not have", text)
		}
	}
	t.Logf("README.md: %d commands: %d run (%d of them synopses with their optional brackets dropped, %d servers), %d shell exports/unsets, %d not run (listed with reasons)",
		len(cmds), r.run, r.synopses, r.started, r.exports, r.notRun)
	if r.run == 0 || r.synopses == 0 {
		t.Errorf("ran %d commands and %d synopses: is README.md parsed right?", r.run, r.synopses)
	}
}

// readmeCommands returns the commands of README.md's ```sh blocks:
// continuation lines joined, "# comments" removed, "a; b" and "a && b"
// split (see splitShellList).
func readmeCommands(t *testing.T, path string) []readmeCommand {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cmds []readmeCommand
	inBlock, block := false, 0
	var pending string
	pendingLine := 0
	for i, line := range strings.Split(string(data), "\n") {
		switch {
		case !inBlock && strings.TrimSpace(line) == "```sh":
			inBlock = true
			block++
			continue
		case inBlock && strings.TrimSpace(line) == "```":
			inBlock = false
			continue
		case !inBlock:
			continue
		}
		if pending == "" {
			pendingLine = i + 1
		}
		line = stripShellComment(line)
		if joined, ok := strings.CutSuffix(strings.TrimRight(line, " "), `\`); ok {
			pending += joined
			continue
		}
		full := strings.Join(strings.Fields(pending+line), " ")
		pending = ""
		parts, shell, err := splitShellList(full)
		if err != nil {
			t.Fatalf("README.md:%d: %q: %v", pendingLine, full, err)
		}
		for j, part := range parts {
			if part = strings.TrimSpace(part); part != "" {
				cmds = append(cmds, readmeCommand{line: pendingLine, block: block, text: part, shell: shell[j]})
			} else if len(parts) > 1 && j < len(parts)-1 {
				t.Fatalf("README.md:%d: %q: an empty command", pendingLine, full)
			}
		}
	}
	return cmds
}

// stripShellComment removes a "# comment" outside quotes.
func stripShellComment(line string) string {
	var quote rune
	for i, c := range line {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i]
		}
	}
	return line
}

// splitShellList splits a command line into the commands that run one
// after the other, each to succeed: "a; b" and "a && b", outside quotes.
// A command with a pipe or a redirection ("a | b", "a > f") stays whole
// and runs through bash (see readmeCommand.shell). Anything else of the
// shell's syntax this test would not run faithfully is an error: "||",
// "&", "<<", subshells and command substitution.
func splitShellList(s string) (parts []string, shell []bool, err error) {
	var quote rune
	start, piped := 0, false
	cut := func(end int) {
		parts, shell = append(parts, s[start:end]), append(shell, piped)
		piped = false
	}
	for i := 0; i < len(s); i++ {
		c := rune(s[i])
		next := byte(0)
		if i+1 < len(s) {
			next = s[i+1]
		}
		switch {
		case quote == '\'':
			if c == quote {
				quote = 0
			}
		case c == '`' || (c == '$' && next == '('):
			return nil, nil, fmt.Errorf("command substitution at %q", s[i:])
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == ';':
			cut(i)
			start = i + 1
		case c == '&' && next == '&':
			cut(i)
			start = i + 2
			i++
		case c == '>' && next == '&':
			piped = true
			i++
		case c == '|' && next == '|', c == '&', c == '(', c == ')', c == '<' && next == '<':
			return nil, nil, fmt.Errorf("%q at %q: teach readme_test.go to run it", s[i:i+1], s[i:])
		case c == '|', c == '>', c == '<':
			piped = true
		}
	}
	if quote != 0 {
		return nil, nil, fmt.Errorf("unterminated %c", quote)
	}
	cut(len(s))
	return parts, shell, nil
}

// readmeRun is the state of one run through the README.
type readmeRun struct {
	t       *testing.T
	dir     string // the working directory: demo/, sample.zip, bin/astrolabe
	env     map[string]string
	ports   map[string]string // README port → free loopback port
	snaps   map[string]string // PE ID → its latest snapshot's ID, as printed
	backup  pe.ID             // the last 'backup' printed
	servers []*readmeServer   // running until the block ends
	// nbdExports are the export names the running 'nbd serve' printed.
	nbdExports []string

	run, synopses, started, exports, notRun int
}

// readmeServer is a server a README command started.
type readmeServer struct {
	text    string
	cmd     *exec.Cmd
	stdout  *lineWriter
	stderr  *syncBuffer
	done    chan struct{} // closed when it has exited, with waitErr
	waitErr error
	printed []string          // the lines that told it was ready
	info    map[string]string // "key: value" lines it printed until then
	mounts  []string          // FUSE mount points it must remove when stopped
}

func newReadmeRun(t *testing.T) *readmeRun {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(astrolabeBin, filepath.Join(dir, "bin", "astrolabe")); err != nil {
		t.Fatal(err)
	}
	for _, d := range readmeDirs {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := &readmeRun{
		t: t, dir: dir,
		env: map[string]string{
			"PWD":  dir,
			"HOME": dir,
			// "astrolabe ..." finds the built binary first.
			"PATH": filepath.Join(dir, "bin") + ":" + os.Getenv("PATH"),
		},
		ports: map[string]string{},
		snaps: map[string]string{},
	}
	t.Cleanup(r.cleanup)
	return r
}

func (r *readmeRun) step(c readmeCommand) {
	t := r.t
	text, synopsis := r.fill(c)
	words := strings.Fields(text)
	switch words[0] {
	case "export":
		name, value, ok := strings.Cut(strings.TrimPrefix(text, "export "), "=")
		if !ok {
			t.Fatalf("README.md:%d: %q: want export NAME=VALUE", c.line, c.text)
		}
		r.env[name] = os.Expand(value, func(k string) string { return r.env[k] })
		r.exports++
		return
	case "unset":
		for _, name := range words[1:] {
			delete(r.env, name)
		}
		r.exports++
		return
	case "astrolabe", "bin/astrolabe":
		r.astrolabe(c, text)
	case "nbdinfo":
		out := r.shell(c, text)
		if len(r.nbdExports) == 0 {
			t.Errorf("README.md:%d: %s: no 'nbd serve' runs before it", c.line, text)
		}
		for _, name := range r.nbdExports {
			if !strings.Contains(out, name) {
				t.Errorf("README.md:%d: %s does not list the export %s:\n%s", c.line, text, name, out)
			}
		}
	case "ls":
		if out := r.shell(c, text); strings.TrimSpace(out) == "" {
			t.Errorf("README.md:%d: %s printed nothing", c.line, text)
		}
	default:
		t.Errorf("README.md:%d: %q is neither run by this test nor listed in readmeNotRun with a reason", c.line, c.text)
		return
	}
	r.run++
	if synopsis {
		r.synopses++
	}
}

// fill replaces the placeholders of a README command and drops the
// brackets of a synopsis's optional parts (reporting it a synopsis). What
// is left unfilled fails the test.
func (r *readmeRun) fill(c readmeCommand) (text string, synopsis bool) {
	t := r.t
	text = c.text
	if strings.Contains(text, "[") {
		synopsis = true
		text = regexp.MustCompile(`\[([^\]]*)\]`).ReplaceAllString(text, "$1")
	}
	text = regexp.MustCompile(`\S+\|\S+`).ReplaceAllStringFunc(text, func(alts string) string {
		if pick, ok := readmeAlternatives[alts]; ok {
			return pick
		}
		t.Fatalf("README.md:%d: %q offers %s: add the one to run to readmeAlternatives", c.line, c.text, alts)
		return ""
	})
	fillers := []struct {
		re   string
		fill func(m []string) string
	}{
		// A flag's placeholder by what the flag means.
		{`(--config|-c) DIR\b`, func(m []string) string { return m[1] + " " + r.env["ASTROLABE_CONFIG"] }},
		{`(--mount|--mount-root) DIR\b`, func(m []string) string { return m[1] + " " + filepath.Join(r.dir, readmeDirs[m[1]]) }},
		{`--token T\b`, func([]string) string { return "--token readme-token-0123456789abcdef" }},
		{`--to TYPE\b`, func([]string) string { return "--to " + r.lastBackup(c).Type() }},
		// Addresses: free loopback ports, never 0.0.0.0.
		{`(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)`, func(m []string) string { return "127.0.0.1:" + r.port(m[1]) }},
		// Snapshots printed before.
		{`([a-z0-9]+:[A-Za-z0-9._/-]+):<(?:snapshot|snap)>`, func(m []string) string {
			id, ok := r.snaps[m[1]]
			if !ok {
				t.Fatalf("README.md:%d: %q: no earlier step printed a snapshot of %s", c.line, c.text, m[1])
			}
			return id
		}},
		{`\bPEID:SNAP\b`, func([]string) string { return r.lastBackup(c).String() }},
		{`\bPEID\b`, func([]string) string { return r.lastBackup(c).Base().String() }},
		{`\bMOUNTPOINT\b`, func([]string) string { return filepath.Join(r.dir, readmeDirs["MOUNTPOINT"]) }},
		// Paths outside the test's directory.
		{`/mnt/recover\b`, func([]string) string { return filepath.Join(r.dir, "recover") }},
		{`=/srv/backups\b`, func([]string) string { return "=" + filepath.Join(r.dir, "backups") }},
		{`=\.\.\.$`, func([]string) string { return "=readme-password" }},
	}
	for _, f := range fillers {
		re := regexp.MustCompile(f.re)
		text = re.ReplaceAllStringFunc(text, func(s string) string { return f.fill(re.FindStringSubmatch(s)) })
	}
	checked := text
	if c.shell {
		// The pipes and redirections are the shell's, no placeholders.
		checked = regexp.MustCompile(`(?:^|\s)(?:\||\d?>>?(?:&\d)?|<)(?:\s|$)`).ReplaceAllString(checked, " ")
	}
	if left := regexp.MustCompile(`[<>\[\]|]|\.\.\.|(?:^|[\s/:=])[A-Z]+(?:$|[\s/:])`).FindString(checked); left != "" {
		t.Fatalf("README.md:%d: %q: placeholder %q left unfilled in %q: teach fill about it", c.line, c.text, strings.TrimSpace(left), text)
	}
	return text, synopsis
}

func (r *readmeRun) lastBackup(c readmeCommand) pe.ID {
	if r.backup.IsZero() {
		r.t.Fatalf("README.md:%d: %q: no 'backup' before it printed a snapshot", c.line, c.text)
	}
	return r.backup
}

// port maps a port of the README to a free loopback port, the same one
// for each mention, so that parallel tests and other processes on the
// machine do not collide with the README's fixed ports.
func (r *readmeRun) port(readmePort string) string {
	if p, ok := r.ports[readmePort]; ok {
		return p
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	r.ports[readmePort] = p
	return p
}

// verb is the (sub)command an astrolabe command line runs, e.g. "nbd serve".
func verb(words []string) string {
	app := newApp(nil, nil)
	global := newCommandLevel("", app.Flags, app.Commands, false, false)
	for i := 1; i < len(words); i++ {
		w := words[i]
		if isFlagWord(w) {
			if name, hasValue := flagWordName(w); global.takesValue[name] && !hasValue {
				i++
			}
			continue
		}
		if c := global.subcommand(w); c != nil && len(c.Subcommands) > 0 && i+1 < len(words) {
			return w + " " + words[i+1]
		}
		return w
	}
	return ""
}

func (r *readmeRun) astrolabe(c readmeCommand, text string) {
	switch verb(strings.Fields(text)) {
	case "serve":
		s := r.startServer(c, text, "ready")
		r.checkServe(c, s)
	case "nbd serve":
		if !strings.Contains(text, "--listen") {
			// Its default address, 127.0.0.1:10809, on a free port.
			text += " --listen 127.0.0.1:" + r.port("10809")
		}
		s := r.startServer(c, text, "nbd://")
		for _, uri := range s.printed {
			r.nbdExports = append(r.nbdExports, uri[strings.LastIndex(uri, "/")+1:])
		}
	case "mount":
		s := r.startServer(c, text, "mounted at ")
		s.mounts = append(s.mounts, strings.TrimPrefix(s.printed[0], "mounted at "))
	default:
		out := r.shell(c, text)
		r.recordSnapshots(out)
		if verb(strings.Fields(text)) == "backup" {
			id, err := pe.ParseID(strings.TrimSpace(out))
			if err != nil || !id.HasSnapshot() {
				r.t.Fatalf("README.md:%d: %s printed %q, want the repository snapshot's ID", c.line, text, out)
			}
			r.backup = id
		}
	}
}

// recordSnapshots notes each snapshot ID a command printed as the latest
// of its PE.
func (r *readmeRun) recordSnapshots(out string) {
	for _, w := range strings.Fields(out) {
		if id, err := pe.ParseID(w); err == nil && id.HasSnapshot() {
			r.snaps[id.Base().String()] = id.String()
		}
	}
}

// command runs a README command as the reader's shell would: alone
// (exec'ed, so that signals reach it), or with its pipes and redirections
// through bash, failing if any part of a pipeline fails.
func (r *readmeRun) command(ctx context.Context, c readmeCommand, text string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "sh", "-c", "exec "+text)
	if c.shell {
		cmd = exec.CommandContext(ctx, "bash", "-c", "set -o pipefail; "+text)
	}
	cmd.Dir = r.dir
	for k, v := range r.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// shell runs a command to its end; it must succeed.
func (r *readmeRun) shell(c readmeCommand, text string) string {
	t := r.t
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := r.command(ctx, c, text)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("README.md:%d: %s\n%s%s", c.line, text, stdout.String(), stderr.String())
	if err != nil {
		t.Errorf("README.md:%d: %s: %v\nstdout: %s\nstderr: %s", c.line, text, err, stdout.String(), stderr.String())
	}
	if strings.Contains(stderr.String(), "goroutine ") {
		t.Errorf("README.md:%d: %s printed a Go trace:\n%s", c.line, text, stderr.String())
	}
	return stdout.String()
}

// readmeServerReady bounds the wait for a server's ready line: a server
// that never prints it fails the test with its stderr.
const readmeServerReady = time.Minute

// startServer starts a server and waits until it prints a line starting
// with ready (or exits): nbd serve prints one URI per PE ID argument.
func (r *readmeRun) startServer(c readmeCommand, text, ready string) *readmeServer {
	t := r.t
	if c.shell {
		t.Fatalf("README.md:%d: %s: a server in a pipeline or with a redirection: teach readme_test.go to stop it", c.line, text)
	}
	cmd := r.command(context.Background(), c, text)
	s := &readmeServer{text: text, cmd: cmd, stdout: newLineWriter(), stderr: &syncBuffer{},
		done: make(chan struct{}), info: map[string]string{}}
	// os/exec copies both outputs until the server (and whatever holds
	// its pipes) exits; Wait, called once, returns after that.
	cmd.Stdout, cmd.Stderr = s.stdout, s.stderr
	cmd.WaitDelay = 10 * time.Second // after it exited, for a child left holding them
	if err := cmd.Start(); err != nil {
		t.Fatalf("README.md:%d: %s: %v", c.line, text, err)
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	r.servers = append(r.servers, s)
	want := 1
	if ready == "nbd://" {
		want = countPEIDs(text)
	}
	timeout := time.NewTimer(readmeServerReady)
	defer timeout.Stop()
	for seen, exited := 0, false; len(s.printed) < want; {
		lines := s.stdout.lines()
		for _, line := range lines[seen:] {
			if k, v, ok := strings.Cut(line, ": "); ok {
				s.info[k] = strings.Fields(v + " ")[0]
			}
			if strings.HasPrefix(line, ready) {
				s.printed = append(s.printed, line)
			}
		}
		seen = len(lines)
		switch {
		case len(s.printed) >= want:
		case exited:
			t.Fatalf("README.md:%d: %s exited (%v) before it printed %q:\nstdout: %s\nstderr: %s",
				c.line, text, s.waitErr, ready, strings.Join(lines, "\n"), s.stderr)
		default:
			select {
			case <-s.stdout.more:
			case <-s.done:
				exited = true // its last lines are in by now
			case <-timeout.C:
				cmd.Process.Kill()
				<-s.done
				t.Fatalf("README.md:%d: %s printed no line starting with %q within %s:\nstdout: %s\nstderr: %s",
					c.line, text, ready, readmeServerReady, strings.Join(s.stdout.lines(), "\n"), s.stderr)
			}
		}
	}
	r.started++
	t.Logf("README.md:%d: %s (in the background)\n%s", c.line, text, strings.Join(s.printed, "\n"))
	return s
}

// lineWriter collects what a server prints, line by line, and tells of
// each write on more.
type lineWriter struct {
	mu      sync.Mutex
	partial []byte
	done    []string
	more    chan struct{}
}

func newLineWriter() *lineWriter { return &lineWriter{more: make(chan struct{}, 1)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.done = append(w.done, string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	w.mu.Unlock()
	select {
	case w.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

// lines are the complete lines written so far.
func (w *lineWriter) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.done)
}

// syncBuffer is a bytes.Buffer that a server writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// countPEIDs counts the PE ID arguments of a command line.
func countPEIDs(text string) int {
	n := 0
	for _, w := range strings.Fields(text) {
		if _, err := pe.ParseID(w); err == nil {
			n++
		}
	}
	return n
}

// checkServe asks each listener of 'astrolabe serve' for an answer: the
// API's /healthz, the NBD server's export list, the S3 data path, the
// FUSE mount.
func (r *readmeRun) checkServe(c readmeCommand, s *readmeServer) {
	t := r.t
	client := &http.Client{Timeout: time.Minute}
	api, ok := strings.CutSuffix(s.info["api"], "/v1/astrolabe")
	if !ok {
		t.Fatalf("README.md:%d: %s printed no API address: %v", c.line, s.text, s.info)
	}
	resp, err := client.Get(api + "/healthz")
	if err != nil {
		t.Fatalf("README.md:%d: GET %s/healthz: %v", c.line, api, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("README.md:%d: GET %s/healthz: %s", c.line, api, resp.Status)
	}
	if resp, err := client.Get(s.info["s3"]); err != nil {
		t.Errorf("README.md:%d: the S3 data path at %q does not answer: %v", c.line, s.info["s3"], err)
	} else {
		resp.Body.Close()
	}
	nbdURI := s.info["nbd"]
	if !strings.HasPrefix(nbdURI, "nbd") {
		nbdURI = "nbd://" + nbdURI
	}
	if out, err := exec.Command("nbdinfo", "--list", nbdURI).CombinedOutput(); err != nil {
		t.Errorf("README.md:%d: nbdinfo --list %s: %v\n%s", c.line, nbdURI, err, out)
	}
	if m := regexp.MustCompile(`--mount (\S+)`).FindStringSubmatch(s.text); m != nil {
		s.mounts = append(s.mounts, m[1])
		if _, err := os.Stat(filepath.Join(m[1], "fs", "fs:sample")); err != nil {
			t.Errorf("README.md:%d: the FUSE mount of serve: %v", c.line, err)
		}
	}
}

// stopServers stops the servers the sh block started, as Ctrl-C would:
// each must exit cleanly and leave nothing mounted.
func (r *readmeRun) stopServers() {
	t := r.t
	for i := len(r.servers) - 1; i >= 0; i-- {
		s := r.servers[i]
		s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
			if s.waitErr != nil {
				t.Errorf("%s after SIGINT: %v; stderr: %s", s.text, s.waitErr, s.stderr)
			}
		case <-time.After(time.Minute):
			s.cmd.Process.Kill()
			<-s.done
			t.Errorf("%s did not stop within a minute of SIGINT; stderr: %s", s.text, s.stderr)
		}
		for _, m := range s.mounts {
			if isMounted(m) {
				t.Errorf("%s left %s mounted", s.text, m)
				syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
	}
	r.servers, r.nbdExports = nil, nil
}

// cleanup kills the servers a failure left running and unmounts what is
// still mounted under the test's directory (a failed 'flr umount').
func (r *readmeRun) cleanup() {
	for _, s := range r.servers {
		s.cmd.Process.Kill()
		<-s.done
	}
	// It also detaches the loop devices; without a recovery mount it
	// only fails.
	exec.Command(astrolabeBin, "--config", r.env["ASTROLABE_CONFIG"], "flr", "umount", filepath.Join(r.dir, "recover")).Run()
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var under []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], r.dir+"/") {
			under = append(under, f[4])
		}
	}
	for i := len(under) - 1; i >= 0; i-- {
		syscall.Unmount(under[i], syscall.MNT_DETACH)
	}
}

func TestReadmeShellSplit(t *testing.T) {
	for _, tt := range []struct {
		in    string
		parts []string
		shell []bool
		err   string
	}{
		{in: "a b", parts: []string{"a b"}, shell: []bool{false}},
		{in: "a; b && c", parts: []string{"a", " b ", " c"}, shell: []bool{false, false, false}},
		{in: "a | b && c > f", parts: []string{"a | b ", " c > f"}, shell: []bool{true, true}},
		{in: "a 2>&1 | b", parts: []string{"a 2>&1 | b"}, shell: []bool{true}},
		{in: `a 'x;y|z&&' "p;q"`, parts: []string{`a 'x;y|z&&' "p;q"`}, shell: []bool{false}},
		{in: `a 'json:{"x":1}'`, parts: []string{`a 'json:{"x":1}'`}, shell: []bool{false}},
		{in: "a || b", err: `"|" at "|| b"`},
		{in: "a &", err: `"&" at "&"`},
		{in: "(a)", err: `"(" at`},
		{in: "a <<EOF", err: `"<" at`},
		{in: "a $(b)", err: "command substitution"},
		{in: `a "$(b)"`, err: "command substitution"},
		{in: "a `b`", err: "command substitution"},
		{in: "a 'b", err: "unterminated '"},
	} {
		parts, shell, err := splitShellList(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("splitShellList(%q) = %q, %v; want error %q", tt.in, parts, err, tt.err)
			}
			continue
		}
		if err != nil || !slices.Equal(parts, tt.parts) || !slices.Equal(shell, tt.shell) {
			t.Errorf("splitShellList(%q) = %q %v, %v; want %q %v", tt.in, parts, shell, err, tt.parts, tt.shell)
		}
	}
}

// TestReadmeInlineCommands checks the astrolabe commands README.md's prose
// quotes inline (`astrolabe nbd serve [--listen ADDR] PEID...`, `repo
// migrate`, `check --read-data`): each must name a real verb (and
// subcommand), and each of its flags must be in that command's help, or
// the app's, as the built binary prints them.
func TestReadmeInlineCommands(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The prose: code blocks blanked, their lines kept for line numbers.
	lines := strings.Split(string(data), "\n")
	for i, inBlock := 0, false; i < len(lines); i++ {
		fence := strings.HasPrefix(strings.TrimSpace(lines[i]), "```")
		if fence || inBlock {
			lines[i] = ""
		}
		if fence {
			inBlock = !inBlock
		}
	}
	prose := strings.Join(lines, "\n")
	app := newApp(io.Discard, io.Discard)
	global := newCommandLevel("", app.Flags, app.Commands, false, false)
	helps := map[string]string{}
	help := func(path []string) string {
		key := strings.Join(path, " ")
		if h, ok := helps[key]; ok {
			return h
		}
		r := runBinary(t, "", append(slices.Clone(path), "--help")...)
		if r.code != 0 {
			t.Fatalf("astrolabe %s --help: exit %d: %s", key, r.code, r.stderr)
		}
		helps[key] = r.stdout
		return r.stdout
	}
	checked := 0
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatchIndex(prose, -1) {
		span := strings.Join(strings.Fields(prose[m[2]:m[3]]), " ")
		line := strings.Count(prose[:m[0]], "\n") + 1
		path, flags, ok, err := inlineCommand(span, global)
		if !ok {
			continue
		}
		if err != nil {
			t.Errorf("README.md:%d: `%s`: %v", line, span, err)
			continue
		}
		checked++
		for _, f := range flags {
			re := regexp.MustCompile(`(?m)(?:^|[\s,])` + regexp.QuoteMeta(f) + `(?:[\s,=]|$)`)
			if !re.MatchString(help(path)) && !re.MatchString(help(nil)) {
				t.Errorf("README.md:%d: `%s`: 'astrolabe %s --help' has no %s", line, span, strings.Join(path, " "), f)
			}
		}
	}
	t.Logf("README.md: %d inline astrolabe commands checked against %d help texts", checked, len(helps))
	if checked == 0 {
		t.Error("no inline astrolabe command found: is README.md parsed right?")
	}
}

// inlineCommand reads an inline code span as an astrolabe command: one
// starting with "astrolabe", a verb or a subcommand's name ("check"). It
// returns the words naming the command and its flags as typed ("--name";
// brackets and values dropped); ok is false for a span that is no
// command, err tells what is wrong with one starting with "astrolabe".
func inlineCommand(span string, global *commandLevel) (path, flags []string, ok bool, err error) {
	words := strings.Fields(span)
	explicit := len(words) > 0 && words[0] == "astrolabe"
	if explicit {
		words = words[1:]
	} else if len(words) == 0 || isFlagWord(words[0]) {
		return nil, nil, false, nil
	}
	var cur *cli.Command
	done := false // the command is named; the words left are arguments
	for i := 0; i < len(words); i++ {
		w := strings.Trim(words[i], "[]")
		if isFlagWord(w) {
			name, hasValue := flagWordName(w)
			flags = append(flags, strings.SplitN(w, "=", 2)[0])
			if cur == nil && global.takesValue[name] && !hasValue {
				i++ // a global flag's value, before the verb
			}
			continue
		}
		switch {
		case cur == nil:
			if cur = global.subcommand(w); cur == nil && !explicit {
				// A subcommand named alone: "check --read-data".
				for _, parent := range global.subcommands {
					if sub := subcommandOf(parent, w); sub != nil {
						path, cur = append(path, parent.Name), sub
						break
					}
				}
			}
			if cur == nil {
				if explicit {
					return nil, nil, true, fmt.Errorf("no verb %q", w)
				}
				return nil, nil, false, nil
			}
			path = append(path, cur.Name)
		case done:
		case len(cur.Subcommands) > 0:
			sub := subcommandOf(cur, w)
			switch {
			case sub == nil && cur.Action != nil:
				// A verb with subcommands that also takes arguments
				// ("instant vm:..."): w is its argument.
				done = true
			case sub == nil:
				return nil, nil, true, fmt.Errorf("%q is no subcommand of %s", w, strings.Join(path, " "))
			default:
				cur = sub
				path = append(path, cur.Name)
			}
		}
	}
	return path, flags, true, nil
}

func subcommandOf(c *cli.Command, name string) *cli.Command {
	return (&commandLevel{subcommands: c.Subcommands}).subcommand(name)
}
