// Package redact turns errors into messages for clients: what failed, not
// where on the appliance. Errors carry absolute paths (of PE roots, the
// config directory, temporary uploads) that tell an attacker the layout of
// the server; clients get the last element of each path, the log keeps the
// whole error.
package redact

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// absPath matches an absolute path that starts a word of a message: after
// the start, a space, a quote, a parenthesis, '=' or ": ".
var absPath = regexp.MustCompile(`(^|[\s"'(=]|: )(/[^\s"'(),;]*)`)

// Error is err's message with every absolute path cut to its last element.
// Paths the error tree names (*fs.PathError, *os.LinkError) are cut
// wherever they appear, even inside a word; others where they start one.
func Error(err error) string {
	if err == nil {
		return ""
	}
	return Message(err.Error(), paths(err)...)
}

// Message cuts the given paths, and any absolute path starting a word, in
// msg to their last element.
func Message(msg string, known ...string) string {
	// Longest first, so a path is not cut by its own parent.
	sort.Slice(known, func(i, j int) bool { return len(known[i]) > len(known[j]) })
	for _, p := range known {
		if filepath.IsAbs(p) && p != "/" {
			msg = strings.ReplaceAll(msg, p, base(p))
		}
	}
	return absPath.ReplaceAllStringFunc(msg, func(m string) string {
		sub := absPath.FindStringSubmatch(m)
		return sub[1] + base(sub[2])
	})
}

func base(p string) string {
	b := filepath.Base(strings.TrimRight(p, "/"))
	if b == "/" || b == "." {
		return "(a server path)"
	}
	return b
}

// paths collects the paths named by the errors in err's tree.
func paths(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		for ; e != nil; e = errors.Unwrap(e) {
			switch x := e.(type) {
			case *fs.PathError:
				out = append(out, x.Path)
			case *os.LinkError:
				out = append(out, x.Old, x.New)
			}
			if j, ok := e.(interface{ Unwrap() []error }); ok {
				for _, c := range j.Unwrap() {
					walk(c)
				}
				return
			}
		}
	}
	walk(err)
	return out
}
