package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

func TestFlagsAnywhere(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	for _, tt := range []struct{ in, want string }{
		// Flags before the arguments stay as they are.
		{"cp --mode update a.zip fs:x", "cp --mode update a.zip fs:x"},
		{"ls fs", "ls fs"},
		{"", ""},
		// A value flag after the arguments, with its value; --flag=value.
		{"cp a.zip fs:x --mode update", "cp --mode update a.zip fs:x"},
		{"cp a.zip --mode=update fs:x", "cp --mode=update a.zip fs:x"},
		{"cp a.zip fs:x -mode update", "cp -mode update a.zip fs:x"},
		// Bool flags take no value: the next word stays an argument.
		{"cp --keep-privileges a.zip fs:x", "cp --keep-privileges a.zip fs:x"},
		{"init --samples demo", "init --samples demo"},
		{"init demo --samples", "init --samples demo"},
		{"cp a.zip --keep-privileges fs --mode create_new", "cp --keep-privileges --mode create_new a.zip fs"},
		// A value that looks like a flag is still the value.
		{"cp a.zip fs --max-expansion -1", "cp --max-expansion -1 a.zip fs"},
		// Global flags: before the verb, after it, short alias.
		{"--config d ls fs", "--config d ls fs"},
		{"ls fs --config d", "--config d ls fs"},
		{"ls -c d fs", "-c d ls fs"},
		{"-c d ls fs --log-level debug", "-c d --log-level debug ls fs"},
		// A command's own flag of a global's name is the command's.
		{"serve --token T", "serve --token T"},
		{"--token A serve --token B", "--token A serve --token B"},
		// Nested subcommands.
		{"nbd serve disk:a.img --listen 127.0.0.1:1 --writable", "nbd serve --listen 127.0.0.1:1 --writable disk:a.img"},
		{"nbd serve disk:a.img disk:b.img --writable", "nbd serve --writable disk:a.img disk:b.img"},
		{"repo check --read-data --repair-index", "repo check --read-data --repair-index"},
		{"repo snapshots disk:a.img --repo /r --config d", "--config d repo snapshots --repo /r disk:a.img"},
		{"repo unlock --all", "repo unlock --all"},
		{"restore disk:a.img:S --to disk --mode create_new", "restore --to disk --mode create_new disk:a.img:S"},
		{"flr mount disk:a.img:S /mnt/x --config d", "--config d flr mount disk:a.img:S /mnt/x"},
		// "--" ends the flags: what follows is an argument even if it
		// starts with '-'; the rewritten line keeps "--" before them.
		{"cp -- -odd.zip fs", "cp -- -odd.zip fs"},
		{"cp --mode create -- -odd.zip fs:x", "cp --mode create -- -odd.zip fs:x"},
		{"cp a.zip -- --mode update", "cp -- a.zip --mode update"},
		{"cp a.zip fs:x -- ", "cp -- a.zip fs:x "},
		// A lone "-" is an argument.
		{"cp - fs", "cp - fs"},
		// Help anywhere: the innermost command's own, without the
		// arguments (urfave/cli would read the first as a help topic)
		// and the other flags.
		{"cp a b --help", "cp --help"},
		{"cp --mode update a -h b", "cp -h"},
		{"cp a b --mode -h", "cp --mode -h a b"}, // the value of --mode
		{"cp a b -h --mode", "cp -h"},
		{"cp a --bogus -h", "cp -h"},
		{"nbd serve -h", "nbd serve -h"},
		{"nbd serve disk:x -h", "nbd serve -h"},
		{"nbd -h serve disk:x", "nbd serve -h"},
		{"nbd --help x", "nbd --help"},
		{"repo snapshots --help x", "repo snapshots --help"},
		{"ls fs --config d -h", "ls -h"},
		{"--help", "--help"},
		{"-h ls", "ls -h"},
		// --version is the app's before the verb only.
		{"--version", "--version"},
		{"-v ls fs", "-v ls fs"},
		{"ls fs -v", "ls -v fs"},
		{"repo check --version", "repo check --version"},
		// Unknown flags stay with the innermost command, which reports them;
		// a missing value stays missing.
		{"cp a b --bogus", "cp --bogus a b"},
		{"cp a b --mode", "error: cp: flag needs an argument: --mode; see 'astrolabe cp --help'"},
		{"nbd serve --listen", "error: nbd serve: flag needs an argument: --listen; see 'astrolabe nbd serve --help'"},
		{"ls fs --config", "error: flag needs an argument: --config"},
		{"--bogus ls", "--bogus ls"},
		// Unknown verbs and the help command: words after them are arguments.
		{"frobnicate --mode x y", "frobnicate --mode x y"},
		{"help cp", "help cp"},
		{"nbd help serve", "nbd help serve"},
		// A subcommand name after the verb's first argument is an argument.
		{"cp serve fs", "cp serve fs"},
	} {
		in := append([]string{"astrolabe"}, strings.Split(tt.in, " ")...)
		want := append([]string{"astrolabe"}, strings.Split(tt.want, " ")...)
		if tt.in == "" {
			in, want = in[:1], want[:1]
		}
		got, err := flagsAnywhere(app, in)
		if wantErr, ok := strings.CutPrefix(tt.want, "error: "); ok {
			var ue usageError
			if !errors.As(err, &ue) || err.Error() != wantErr {
				t.Errorf("flagsAnywhere(%q) = %q, %v; want usage error %q", tt.in, got, err, wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("flagsAnywhere(%q)\n got %q, %v\nwant %q", tt.in, got, err, want)
		}
	}
}

// TestFlagsAnywhereEndToEnd runs the built binary with flags after the
// arguments, after "--" and wrong.
func TestFlagsAnywhereEndToEnd(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	// A global flag after the verb, a bool flag after the argument.
	r := runBinary(t, dir, "init", cfg, "--samples", "--config", cfg)
	if r.code != 0 {
		t.Fatalf("init DIR --samples --config DIR: exit %d: %s", r.code, r.stderr)
	}
	snap := mustRun(t, cfg, "snap", "fs:sample").lastLine()
	zip := filepath.Join(dir, "sample.zip")
	mustRun(t, cfg, "cp", snap, zip)
	mustFail(t, cfg, "already exists", "cp", snap, zip)
	mustRun(t, cfg, "cp", snap, zip, "--mode", "update")
	mustRun(t, cfg, "cp", snap, zip, "--mode=update")
	if got := mustRun(t, cfg, "cp", zip, "fs:sample", "--mode", "update").lastLine(); got != "fs:sample" {
		t.Errorf("cp ZIP fs:sample --mode update printed %q", got)
	}
	if got := mustRun(t, cfg, "cp", zip, "fs:other", "--keep-privileges", "--max-expansion", "-1").lastLine(); got != "fs:other" {
		t.Errorf("cp ZIP fs:other --keep-privileges --max-expansion -1 printed %q", got)
	}
	if got := mustRun(t, cfg, "lssn", "fs:sample", "--log-level", "error").stdout; !strings.Contains(got, snap) {
		t.Errorf("lssn fs:sample --log-level error = %q, want %s", got, snap)
	}

	// After "--" a word starting with '-' is a file, not a flag.
	odd := filepath.Join(dir, "-odd.zip")
	if err := os.Link(zip, odd); err != nil {
		t.Fatal(err)
	}
	cmd := runBinary(t, dir, "--config", cfg, "cp", "--mode", "create", "--", "-odd.zip", "fs:odd")
	if cmd.code != 0 || strings.TrimSpace(cmd.stdout) != "fs:odd" {
		t.Errorf("cp --mode create -- -odd.zip fs:odd: exit %d, stdout %q, stderr %q", cmd.code, cmd.stdout, cmd.stderr)
	}
	// Without "--", it is an unknown flag.
	if r := runBinary(t, dir, "--config", cfg, "cp", "-odd.zip", "fs:odd2"); r.code != 2 || !strings.Contains(r.stderr, "flag provided but not defined: -odd.zip") {
		t.Errorf("cp -odd.zip fs:odd2: exit %d, stderr %q; want 2 and an unknown flag", r.code, r.stderr)
	}

	// Wrong flags anywhere: one line, exit 2, never a panic or the help.
	for _, tt := range []struct {
		want string
		args []string
	}{
		{"cp: flag provided but not defined: -bogus; see 'astrolabe cp --help'", []string{"cp", zip, "fs", "--bogus"}},
		{"cp: flag needs an argument: --mode", []string{"cp", zip, "fs", "--mode"}},
		{`invalid copy mode "sideways"`, []string{"cp", zip, "fs", "--mode", "sideways"}},
		{"nbd serve: flag provided but not defined: -bogus", []string{"nbd", "serve", "disk:sample.img", "--bogus"}},
		{"repo check: flag provided but not defined: -nope", []string{"repo", "check", "--nope"}},
		{"flag provided but not defined: -bogus", []string{"--bogus", "ls", "fs"}},
		{`invalid value "x" for flag -max-expansion`, []string{"cp", zip, "fs", "--max-expansion", "x"}},
		{"--log-level", []string{"ls", "fs", "--log-level", "loud"}},
		{"want SRC DEST, got 3", []string{"cp", zip, "fs", "extra", "--mode", "create_new"}},
	} {
		r := astrolabe(t, cfg, tt.args...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tt.want) || r.stdout != "" {
			t.Errorf("astrolabe %q: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q",
				tt.args, r.code, r.stdout, r.stderr, tt.want)
		}
	}
}

// commandPath is a (sub)command of the app with the words that name it.
type commandPath struct {
	words []string
	cmd   *cli.Command
}

// allCommands walks the app's command tree: every verb and subcommand.
func allCommands(cmds []*cli.Command, parent []string) []commandPath {
	var out []commandPath
	for _, c := range cmds {
		words := append(slices.Clone(parent), c.Name)
		out = append(out, commandPath{words, c})
		out = append(out, allCommands(c.Subcommands, words)...)
	}
	return out
}

// TestFlagsAnywhereHelp asks every verb and subcommand of the built binary
// for its help with the help flag before, between and after arguments:
// each prints its own help and does nothing with the arguments.
func TestFlagsAnywhereHelp(t *testing.T) {
	dir := t.TempDir()
	cmds := allCommands(newApp(io.Discard, io.Discard).Commands, nil)
	runs := 0
	check := func(wantName string, args ...string) {
		t.Helper()
		runs++
		r := runBinary(t, dir, args...)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, wantName) {
			t.Errorf("astrolabe %q: exit %d, stderr %q, stdout %q; want exit 0 and the help of %q",
				args, r.code, r.stderr, r.stdout, wantName)
		}
	}
	check("astrolabe - protect", "--help")
	check("astrolabe - protect", "-h", "--config", "x")
	for _, c := range cmds {
		name := "astrolabe " + strings.Join(c.words, " ") + " - "
		forms := [][]string{{"--help"}, {"-h"}, {"-h", "x"}, {"--help", "x", "y"}}
		if len(c.cmd.Subcommands) == 0 {
			forms = append(forms,
				[]string{"x", "y", "--help"},
				[]string{"x", "-h", "y"},
				[]string{"x", "--log-level", "debug", "-h"},
				[]string{"--bogus", "x", "--help"})
		}
		for _, f := range forms {
			check(name, append(slices.Clone(c.words), f...)...)
		}
		// The help flag before the subcommand: the subcommand's help.
		if len(c.words) == 2 {
			check(name, c.words[0], "-h", c.words[1], "x")
		}
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("asking for help wrote %v (%v)", entries, err)
	}
	t.Logf("%d commands, %d help requests", len(cmds), runs)
}

// TestExtraArgsRefused gives every verb and subcommand of the built binary
// one argument more than it takes (with the flags that would make it act
// on a real configuration and repository): each must exit 2 with one
// line naming what it wants, and change nothing.
func TestExtraArgsRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "init", cfg, "--samples")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	mustRun(t, cfg, "backup", "fs:sample", "--repo", repoDir, "--insecure-no-password")
	before := treeState(t, dir)

	tried, variadic := 0, 0
	run := func(args ...string) {
		t.Helper()
		tried++
		// Bounded: a verb that took the extra argument might serve.
		r := runBinaryWithin(t, dir, time.Minute, append([]string{"--config", cfg}, args...)...)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if r.code != 2 || r.stdout != "" || len(lines) != 1 || !strings.Contains(lines[0], ": want ") {
			t.Errorf("astrolabe %q: exit %d, stdout %q, stderr %q; want exit 2 and one line saying what it wants",
				args, r.code, r.stdout, r.stderr)
		}
	}
	for _, c := range allCommands(newApp(io.Discard, io.Discard).Commands, nil) {
		if c.cmd.Action == nil {
			continue // only subcommands
		}
		most := mostArgs(c.cmd.ArgsUsage)
		if most < 0 {
			variadic++
			continue
		}
		args := slices.Clone(c.words)
		for i := 0; i <= most; i++ {
			args = append(args, "bogus"+strings.Repeat("x", i))
		}
		if hasFlag(c.cmd, "repo") {
			args = append(args, "--repo", repoDir)
		}
		if hasFlag(c.cmd, "insecure-no-password") {
			args = append(args, "--insecure-no-password")
		}
		run(args...)
	}
	// The reviewer's: each would have acted on every lock or pack.
	run("repo", "unlock", "--all", "false", "--repo", repoDir)
	run("repo", "check", "--read-data", "false", "--repo", repoDir)
	run("repo", "prune", "anything", "--repo", repoDir)
	if after := treeState(t, dir); !slices.Equal(before, after) {
		t.Errorf("refused commands changed the configuration or repository:\nbefore %q\nafter  %q", before, after)
	}
	t.Logf("%d commands refused an extra argument; %d take any number", tried, variadic)
}

func hasFlag(c *cli.Command, name string) bool {
	return slices.ContainsFunc(c.Flags, func(f cli.Flag) bool { return slices.Contains(f.Names(), name) })
}

// treeState lists every file under dir with its mode, size and mtime.
func treeState(t *testing.T, dir string) []string {
	t.Helper()
	var state []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		state = append(state, fmt.Sprintf("%s %v %d %d", path, fi.Mode(), fi.Size(), fi.ModTime().UnixNano()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// TestVersionBeforeVerb: the app's --version (-v) counts only before the
// verb; after it, "ls fs -v" is ls's unknown flag, not the version.
func TestVersionBeforeVerb(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	for _, args := range [][]string{{"-v"}, {"--version"}, {"-v", "ls", "fs"}} {
		if r := astrolabe(t, cfg, args...); r.code != 0 || !strings.HasPrefix(r.stdout, "astrolabe version ") {
			t.Errorf("astrolabe %q: exit %d, stdout %q; want the version", args, r.code, r.stdout)
		}
	}
	for _, args := range [][]string{{"ls", "fs", "-v"}, {"ls", "--version", "fs"}, {"repo", "check", "-v"}} {
		r := astrolabe(t, cfg, args...)
		if r.code != 2 || strings.Contains(r.stdout, "version") || !strings.Contains(r.stderr, "flag provided but not defined: -v") {
			t.Errorf("astrolabe %q: exit %d, stdout %q, stderr %q; want exit 2 and an unknown flag", args, r.code, r.stdout, r.stderr)
		}
	}
	if got := mustRun(t, cfg, "ls", "fs").stdout; !strings.Contains(got, "fs:sample") {
		t.Errorf("ls fs = %q", got)
	}
}

// TestVariadicVerbsTakeManyArgs runs each verb's ArgsUsage through the
// argument check every verb gets: one whose usage names "..." anywhere
// ("PEID...", "[PEID[:SNAPSHOT]...]", "--keep-* [PEID...]") must take
// two and three arguments.
func TestVariadicVerbsTakeManyArgs(t *testing.T) {
	variadic := 0
	for _, c := range allCommands(newApp(io.Discard, io.Discard).Commands, nil) {
		if c.cmd.Action == nil || !strings.Contains(c.cmd.ArgsUsage, "...") {
			continue
		}
		variadic++
		for _, n := range []int{2, 3} {
			ran := false
			cmd := &cli.Command{Name: c.cmd.Name, ArgsUsage: c.cmd.ArgsUsage,
				Action: func(*cli.Context) error { ran = true; return nil }}
			refuseExtraArgs(cmd, "astrolabe "+strings.Join(c.words, " "))
			app := &cli.App{Commands: []*cli.Command{cmd}, Writer: io.Discard, ErrWriter: io.Discard}
			args := []string{"astrolabe", c.cmd.Name}
			for i := 0; i < n; i++ {
				args = append(args, fmt.Sprintf("fs:sample%d", i))
			}
			if err := app.Run(args); err != nil || !ran {
				t.Errorf("astrolabe %s (usage %q) with %d arguments: %v, ran %v",
					strings.Join(c.words, " "), c.cmd.ArgsUsage, n, err, ran)
			}
		}
	}
	if variadic < 3 {
		t.Errorf("%d verbs take PEID...: want at least nbd serve, repo copy and repo forget", variadic)
	}
}

// TestRepoCopyTakesSeveralPEs is the user's command line: two PEs to copy
// are no usage error, in whatever order flags and arguments come.
func TestRepoCopyTakesSeveralPEs(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	r1, r3 := filepath.Join(dir, "r1"), filepath.Join(dir, "r3")
	for _, r := range []string{r1, r3} {
		mustRun(t, cfg, "repo", "init", "--repo", r, "--insecure-no-password")
	}
	mustRun(t, cfg, "backup", "fs:sample", "--repo", r1, "--insecure-no-password")
	mustRun(t, cfg, "backup", "disk:sample.img", "--repo", r1, "--insecure-no-password")
	for _, args := range [][]string{
		{"repo", "copy", "--from", r1, "--to", r3, "--insecure-no-password", "fs:sample", "disk:sample.img"},
		{"repo", "copy", "fs:sample", "disk:sample.img", "--from", r1, "--to", r3, "--insecure-no-password"},
		{"repo", "copy", "--from", r1, "--to", r3, "--insecure-no-password", "--", "fs:sample", "disk:sample.img"},
	} {
		r := astrolabe(t, cfg, args...)
		if r.code != 0 {
			t.Errorf("astrolabe %q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	out := mustRun(t, cfg, "repo", "snapshots", "--repo", r3, "--insecure-no-password").stdout
	for _, pe := range []string{"fs:sample", "disk:sample.img"} {
		if !strings.Contains(out, pe) {
			t.Errorf("repo snapshots of the target lacks %s:\n%s", pe, out)
		}
	}
}
