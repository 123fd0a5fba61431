package fs

import "github.com/astrolabe-appliance/astrolabe/pe"

// validName reports whether name can be an fs PE: one visible entry of the root.
func validName(name string) bool { return pe.IsLocalName(name) }

// newName derives a fresh, valid PE name from base: <base>-<8 hex digits>.
func newName(base string) string { return pe.NewLocalName(base, Type, false) }
