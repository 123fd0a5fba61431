package main

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestMessagesNameRealCommands: every 'astrolabe ...' a message of the
// module's Go sources names is a command path of the app: its first
// words are a verb and its subcommands, as typed.
func TestMessagesNameRealCommands(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	quoted := regexp.MustCompile(`'astrolabe( [^'\n]*)?'`)
	checked := 0
	err := filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range quoted.FindAllString(string(b), -1) {
			checked++
			if why := badCommandPath(app, strings.Fields(strings.Trim(m, "'"))[1:]); why != "" {
				t.Errorf("%s: %s: %s", p, m, why)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("only %d 'astrolabe ...' found: is the walk right?", checked)
	}
	t.Logf("%d command names in messages checked", checked)
}

// badCommandPath says what is wrong with words as the words after
// "astrolabe" on a command line, or "" if they start with a real verb
// path. A format verb (%s) stands for any words.
func badCommandPath(app *cli.App, words []string) string {
	cmds := app.Commands
	var cur *cli.Command
	for i, w := range words {
		if strings.Contains(w, "%") {
			return ""
		}
		if strings.HasPrefix(w, "-") {
			if i == 0 && w != "--help" && w != "--version" {
				return "no verb"
			}
			return ""
		}
		var next *cli.Command
		for _, c := range cmds {
			if c.HasName(w) {
				next = c
			}
		}
		switch {
		case next != nil:
			cur, cmds = next, next.Subcommands
		case cur == nil:
			return "no verb " + w
		case len(cmds) > 0:
			return "no subcommand " + w + " of " + cur.Name
		default:
			return "" // an argument
		}
	}
	if cur != nil && cur.Action == nil && len(cur.Subcommands) > 0 {
		return cur.Name + " needs a subcommand"
	}
	return ""
}

// TestRepoForgetMessages: the usage errors of repo forget name its help
// as 'astrolabe repo forget --help', and a PE without snapshot points to
// the repository's snapshots, not the local ones (lssn).
func TestRepoForgetMessages(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg, "--samples")
	repoDir := filepath.Join(dir, "repo")
	mustRun(t, cfg, "repo", "init", "--repo", repoDir, "--insecure-no-password")
	rf := []string{"--repo", repoDir, "--insecure-no-password"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{append([]string{"repo", "forget"}, rf...), "see 'astrolabe repo forget --help'"},
		{append([]string{"repo", "forget", "--dry-run", "fs:sample"}, rf...), "(see 'astrolabe repo snapshots fs:sample')"},
		{append([]string{"restore", "fs:sample"}, rf...), "(see 'astrolabe repo snapshots fs:sample')"},
		{[]string{"rmsn", "fs:sample"}, "(see 'astrolabe lssn fs:sample')"},
		{[]string{"rmsn"}, "see 'astrolabe rmsn --help'"},
		{[]string{"flr", "mount", "disk:sample.img"}, "see 'astrolabe flr mount --help'"},
	} {
		r := astrolabe(t, cfg, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("astrolabe %q: exit %d, stderr %q; want exit 2 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
}
