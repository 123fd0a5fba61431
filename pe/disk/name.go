package disk

import "github.com/astrolabe-appliance/astrolabe/pe"

// validName reports whether name can be a disk PE: one visible entry of the root.
func validName(name string) bool { return pe.IsLocalName(name) }

// newName derives a fresh, valid PE name from base, keeping an extension
// such as .img at the end: <stem>-<8 hex digits><ext>.
func newName(base string) string { return pe.NewLocalName(base, Type, true) }
