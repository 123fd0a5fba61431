package fs

import (
	"fmt"
	"path"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// maxRejected is how many refused members a restore reports before it
// stops reading: enough to see the pattern, not a flood.
const maxRejected = 10

// RejectedMember is a member of a tar stream that restore refused.
type RejectedMember struct {
	Name   string // as in the archive
	Reason string
}

// UnsafeArchiveError is returned when a restore refuses a tar stream
// because of members that would write outside the target or that it does
// not restore. Nothing was restored. It matches pe.ErrInvalidSource.
type UnsafeArchiveError struct {
	Members []RejectedMember // up to maxRejected
	More    bool             // reading stopped after that many
}

func (e *UnsafeArchiveError) Error() string {
	var b strings.Builder
	b.WriteString("tar stream refused, nothing restored: ")
	for i, m := range e.Members {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%q: %s", m.Name, m.Reason)
	}
	if e.More {
		fmt.Fprintf(&b, "; stopped after %d refused members", len(e.Members))
	}
	return b.String()
}

// Unwrap makes the error match pe.ErrInvalidSource.
func (e *UnsafeArchiveError) Unwrap() error { return pe.ErrInvalidSource }

// memberName checks a member or hard link name and returns it cleaned
// ("." for the root), or why it is refused. Refused are absolute names
// and any ".." component, even one that would stay inside after
// cleaning: no honest archiver writes them.
func memberName(raw string) (string, string) {
	switch {
	case raw == "":
		return "", "empty name"
	case strings.HasPrefix(raw, "/"):
		return "", "absolute name"
	}
	for _, c := range strings.Split(raw, "/") {
		if c == ".." {
			return "", `name has a ".." component`
		}
	}
	return path.Clean(raw), ""
}

// parents returns the proper prefixes of a cleaned name, shortest first:
// "a/b/c" → "a", "a/b".
func parents(name string) []string {
	var ps []string
	for i := 0; i < len(name); i++ {
		if name[i] == '/' {
			ps = append(ps, name[:i])
		}
	}
	return ps
}
