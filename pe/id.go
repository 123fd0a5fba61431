// Package pe is the Protected Entity model: IDs, info, the interfaces every
// PE type implements, random-access data, and the zip codec.
package pe

import (
	"fmt"
	"strings"
)

// ID names a protected entity and optionally one of its snapshots:
// <type>:<id>[:<snapshot>]. The zero ID is invalid.
type ID struct {
	typ  string
	name string
	snap string
}

// maxIDLen bounds IDs so that hostile input cannot make us carry megabytes
// around as a name; real IDs (FCD UUIDs, file names) are far shorter.
const maxIDLen = 1024

// ParseID parses "<type>:<id>[:<snapshot>]". Type is letters and digits; id
// and snapshot are letters, digits and "- / _ .".
func ParseID(s string) (ID, error) {
	if len(s) > maxIDLen {
		return ID{}, fmt.Errorf("invalid PE ID %.40q...: longer than %d bytes", s, maxIDLen)
	}
	parts := strings.Split(s, ":")
	switch {
	case len(parts) < 2:
		return ID{}, fmt.Errorf("invalid PE ID %q: want <type>:<id>[:<snapshot>]", s)
	case len(parts) > 3:
		return ID{}, fmt.Errorf("invalid PE ID %q: too many ':' separated parts (%d, at most 3)", s, len(parts))
	}
	id := ID{typ: parts[0], name: parts[1]}
	if len(parts) == 3 {
		id.snap = parts[2]
		if id.snap == "" {
			return ID{}, fmt.Errorf("invalid PE ID %q: empty snapshot part", s)
		}
	}
	if err := id.validate(); err != nil {
		return ID{}, fmt.Errorf("invalid PE ID %q: %w", s, err)
	}
	return id, nil
}

// NewID builds an ID of a PE without snapshot, validating both parts.
func NewID(typ, name string) (ID, error) {
	id := ID{typ: typ, name: name}
	if err := id.validate(); err != nil {
		return ID{}, fmt.Errorf("invalid PE ID %q: %w", typ+":"+name, err)
	}
	return id, nil
}

func (id ID) validate() error {
	if err := ValidateTypeName(id.typ); err != nil {
		return err
	}
	if err := validatePart("id", id.name); err != nil {
		return err
	}
	if id.snap != "" {
		return validatePart("snapshot", id.snap)
	}
	return nil
}

// ValidateTypeName checks a PE type name: non-empty, letters and digits.
func ValidateTypeName(typ string) error {
	if typ == "" {
		return fmt.Errorf("empty type")
	}
	for _, r := range typ {
		if !isLetterOrDigit(r) {
			return fmt.Errorf("type %q: character %q not allowed (letters and digits only)", typ, r)
		}
	}
	return nil
}

// ValidateSnapshotName checks a snapshot ID part.
func ValidateSnapshotName(snap string) error {
	return validatePart("snapshot", snap)
}

func validatePart(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	for _, r := range s {
		if !isLetterOrDigit(r) && !strings.ContainsRune("-/_.", r) {
			return fmt.Errorf("%s %q: character %q not allowed (letters, digits and - / _ . only)", what, s, r)
		}
	}
	return nil
}

func isLetterOrDigit(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// Type is the PE type, e.g. "fs".
func (id ID) Type() string { return id.typ }

// Name is the type-specific part of the ID, e.g. the directory name of an fs PE.
func (id ID) Name() string { return id.name }

// Snapshot is the snapshot part, "" when the ID names the live PE.
func (id ID) Snapshot() string { return id.snap }

// HasSnapshot reports whether the ID names a snapshot.
func (id ID) HasSnapshot() bool { return id.snap != "" }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// WithSnapshot returns the ID of snapshot snap of the same PE.
func (id ID) WithSnapshot(snap string) ID { return ID{typ: id.typ, name: id.name, snap: snap} }

// Base returns the ID of the live PE, without snapshot.
func (id ID) Base() ID { return ID{typ: id.typ, name: id.name} }

func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	if id.snap == "" {
		return id.typ + ":" + id.name
	}
	return id.typ + ":" + id.name + ":" + id.snap
}

// MarshalText makes the JSON form of an ID its string.
func (id ID) MarshalText() ([]byte, error) {
	if id.IsZero() {
		return nil, fmt.Errorf("marshal PE ID: zero ID")
	}
	return []byte(id.String()), nil
}

// UnmarshalText parses the string form.
func (id *ID) UnmarshalText(b []byte) error {
	p, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}
