package main

import (
	"slices"
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
//
// --help (-h) anywhere asks for the help of the innermost command typed:
// the line becomes that command and the help flag alone, as urfave/cli
// would otherwise read the first argument as a help topic. --version (-v)
// is the app's only before the verb; after it, it is the command's flag
// or an unknown one.
func flagsAnywhere(app *cli.App, argv []string) ([]string, error) {
	if len(argv) == 0 {
		return argv, nil
	}
	levels := []*commandLevel{newCommandLevel("", app.Flags, app.Commands, app.HideHelp, app.HideVersion)}
	var positional []string
	endOfFlags, verbatim := false, false
	help := "" // the help flag as typed, if any
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
			if owner.help[name] {
				help = word
				continue
			}
			owner.flags = append(owner.flags, word)
			if owner.takesValue[name] && !hasValue {
				if i+1 == len(rest) && help == "" {
					return nil, flagNeedsValue(levels[:ownerIdx+1], word)
				}
				if i+1 == len(rest) {
					continue // only the help is printed
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
	if help != "" {
		for _, l := range levels[1:] {
			out = append(out, l.name)
		}
		return append(out, help), nil
	}
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
	help        map[string]bool // the names of its help flag
	subcommands []*cli.Command
	flags       []string // the words of its flags, in the order typed
}

func newCommandLevel(name string, flags []cli.Flag, subcommands []*cli.Command, hideHelp, hideVersion bool) *commandLevel {
	l := &commandLevel{name: name, takesValue: map[string]bool{}, help: map[string]bool{}, subcommands: subcommands}
	// urfave/cli adds these itself; a flag of the command's own wins.
	if !hideHelp {
		l.addFlag(cli.HelpFlag)
		for _, n := range cli.HelpFlag.Names() {
			l.help[n] = true
		}
	}
	if !hideVersion {
		l.addFlag(cli.VersionFlag)
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			delete(l.help, n)
		}
		l.addFlag(f)
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
// or of the innermost level if none does. The app's --version counts
// only before the verb: "ls fs -v" must not print the version instead
// of listing.
func flagOwner(levels []*commandLevel, name string) int {
	for i := len(levels) - 1; i >= 0; i-- {
		if _, ok := levels[i].takesValue[name]; ok && !(i == 0 && len(levels) > 1 && isVersionFlag(name)) {
			return i
		}
	}
	return len(levels) - 1
}

func isVersionFlag(name string) bool {
	return slices.Contains(cli.VersionFlag.Names(), name)
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
