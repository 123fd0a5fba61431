//go:build !vddk

package config

import (
	"strings"
	"testing"
)

// Without the vddk build tag, a VDDK setting is refused, not ignored.
func TestVDDKNeedsTheBinding(t *testing.T) {
	dir := t.TempDir()
	WritePEConfig(dir, "vm", map[string]any{"vcenter": "https://vc/sdk", "user": "u", "vddk": map[string]any{"library": "lib"}})
	if _, err := Load(dir, Factories()); err == nil || !strings.Contains(err.Error(), "-tags vddk") {
		t.Errorf("vddk without the binding: %v", err)
	}
}
