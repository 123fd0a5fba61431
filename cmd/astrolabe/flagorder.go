package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsAnywhere rewrites a command line so that urfave/cli v2, which stops
// reading a command's flags at its first argument, sees flags typed after
// the arguments too, as restic, git and kubectl take them:
//
//	astrolabe cp sample.zip fs:sample --mode update
//	→ astrolabe cp --mode update sample.zip fs:sample
//
// Each flag goes to the innermost command (of the verb, its subcommand and
// the app) that defines it, so a global flag such as --config may also
// follow the verb. A flag that takes a value keeps the next word as its
// value, whatever it looks like, unless written --flag=value. "--" ends the
// flags: every word after it is an argument, and the rewritten line keeps a
// "--" before the arguments when one of them starts with '-'. Unknown flags
// stay with the innermost command, whose parser then reports them. After
// a word that is no subcommand of a command that has subcommands (an
// unknown verb, "help") the line is left as it is.
func flagsAnywhere(app *cli.App, argv []string) ([]string, error) {
	if len(argv) == 0 {
		return argv, nil
	}
	levels := []*commandLevel{newCommandLevel("", app.Flags, app.Commands, app.HideHelp, app.HideVersion)}
	var positional []string
	endOfFlags, verbatim := false, false
	rest := argv[1:]
	for i := 0; i < len(rest); i++ {
		word := rest[i]
		cur := levels[len(levels)-1]
		switch {
		case endOfFlags:
			positional = append(positional, word)
		case word == "--":
			endOfFlags = true
		case isFlagWord(word):
			name, hasValue := flagWordName(word)
			ownerIdx := flagOwner(levels, name)
			owner := levels[ownerIdx]
			owner.flags = append(owner.flags, word)
			if owner.takesValue[name] && !hasValue {
				if i+1 == len(rest) {
					return nil, flagNeedsValue(levels[:ownerIdx+1], word)
				}
				i++
				owner.flags = append(owner.flags, rest[i])
			}
		case len(positional) == 0 && cur.subcommand(word) != nil:
			sub := cur.subcommand(word)
			levels = append(levels, newCommandLevel(word, sub.Flags, sub.Subcommands, sub.HideHelp, true))
		case len(positional) == 0 && len(cur.subcommands) > 0:
			positional, verbatim = rest[i:], true
			i = len(rest)
		default:
			positional = append(positional, word)
		}
	}

	out := []string{argv[0]}
	for _, l := range levels {
		if l.name != "" {
			out = append(out, l.name)
		}
		out = append(out, l.flags...)
	}
	if len(positional) > 0 && !verbatim && (endOfFlags || anyFlagLike(positional)) {
		out = append(out, "--")
	}
	return append(out, positional...), nil
}

// flagNeedsValue is the usage error for a value flag that ends the line,
// worded as urfave/cli words its own.
func flagNeedsValue(levels []*commandLevel, word string) error {
	var names []string
	for _, l := range levels[1:] {
		names = append(names, l.name)
	}
	if len(names) == 0 {
		return usagef("flag needs an argument: %s", word)
	}
	path := strings.Join(names, " ")
	return usagef("%s: flag needs an argument: %s; see 'astrolabe %s --help'", path, word, path)
}

// commandLevel is the app or one (sub)command on the command line, with
// the flags it collects.
type commandLevel struct {
	name        string          // as typed; "" for the app
	takesValue  map[string]bool // every name and alias of its flags
	subcommands []*cli.Command
	flags       []string // the words of its flags, in the order typed
}

func newCommandLevel(name string, flags []cli.Flag, subcommands []*cli.Command, hideHelp, hideVersion bool) *commandLevel {
	l := &commandLevel{name: name, takesValue: map[string]bool{}, subcommands: subcommands}
	for _, f := range flags {
		l.addFlag(f)
	}
	// urfave/cli adds these itself.
	if !hideHelp {
		l.addFlag(cli.HelpFlag)
	}
	if !hideVersion {
		l.addFlag(cli.VersionFlag)
	}
	return l
}

func (l *commandLevel) addFlag(f cli.Flag) {
	takes := true // string, int, duration ... flags; only bools stand alone
	if d, ok := f.(cli.DocGenerationFlag); ok {
		takes = d.TakesValue()
	}
	for _, n := range f.Names() {
		l.takesValue[n] = takes
	}
}

func (l *commandLevel) subcommand(name string) *cli.Command {
	for _, c := range l.subcommands {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// flagOwner is the index of the innermost level that defines the flag,
// or of the innermost level if none does.
func flagOwner(levels []*commandLevel, name string) int {
	for i := len(levels) - 1; i >= 0; i-- {
		if _, ok := levels[i].takesValue[name]; ok {
			return i
		}
	}
	return len(levels) - 1
}

// isFlagWord reports whether word is a flag as Go's flag package reads
// one: "-x", "--x", "--x=v"; a lone "-" (stdin) is an argument.
func isFlagWord(word string) bool {
	return len(word) > 1 && word[0] == '-'
}

// flagWordName returns the flag's name and whether the word carries its
// value ("--mode=update").
func flagWordName(word string) (name string, hasValue bool) {
	name = strings.TrimPrefix(strings.TrimPrefix(word, "-"), "-")
	name, _, hasValue = strings.Cut(name, "=")
	return name, hasValue
}

func anyFlagLike(words []string) bool {
	for _, w := range words {
		if isFlagWord(w) {
			return true
		}
	}
	return false
}
