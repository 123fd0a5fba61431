package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	m, err := Load(dir, Factories())
	if err != nil {
		t.Fatal(err)
	}
	if types, err := m.Types(context.Background()); err != nil || len(types) != 2 {
		t.Fatalf("%d types (%v), want 2", len(types), err)
	}
	// Relative roots resolve against the config directory, not the cwd.
	if err := os.MkdirAll(filepath.Join(dir, "rel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WritePEConfig(dir, "fs", RootConfig{Root: "rel"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, Factories()); err != nil {
		t.Fatalf("relative root: %v", err)
	}

	for name, tc := range map[string]struct{ file, body, want string }{
		"unknown type":  {"nosuch.pe.json", `{"root":"/"}`, `unknown PE type "nosuch" (known: disk, fs, ivd, pg, vm)`},
		"missing root":  {"fs.pe.json", `{}`, `missing "root"`},
		"unknown field": {"fs.pe.json", `{"root":"/tmp","rooot":1}`, `unknown field`},
		"missing dir":   {"disk.pe.json", `{"root":"/nonexistent/astrolabe"}`, `no such file`},
	} {
		d := t.TempDir()
		if err := Init(d); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, PEDir, tc.file), []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(d, Factories()); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
			t.Errorf("%s: error %v, want it to name %s and contain %q", name, err, tc.file, tc.want)
		}
	}
	if err := Init(dir); err == nil || !strings.Contains(err.Error(), "already a config directory") {
		t.Errorf("Init over an existing config: %v", err)
	}
}

func TestVSphereConfig(t *testing.T) {
	dir := t.TempDir()
	for _, typ := range []string{"ivd", "vm"} {
		if err := WritePEConfig(dir, typ, map[string]any{"vcenter": "https://vc.example:443/sdk", "user": "u", "passwordFile": "pw", "insecure": true}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "pw"), []byte("secret\n"), 0o600)
	m, err := Load(dir, Factories())
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"ivd", "vm"} {
		if _, err := m.Type(context.Background(), typ); err != nil {
			t.Errorf("%s type: %v", typ, err)
		}
	}
	bad := t.TempDir()
	WritePEConfig(bad, "ivd", map[string]any{"vcenter": "https://vc/sdk", "user": "u", "bogus": 1})
	if _, err := Load(bad, Factories()); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown field: %v", err)
	}
}
