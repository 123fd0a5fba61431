// Package samplestest gives tests of the packages that serve PEs a
// configuration with the sample PEs: fs:sample (a small tree) and
// disk:sample.img (a 64 MiB sparse disk with an ext4 partition holding
// that tree). Real files, made by the same code as 'astrolabe init
// --samples'.
package samplestest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/samples"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Config makes the configuration in a temporary directory.
func Config(t testing.TB) (dir string, m pe.Manager) {
	t.Helper()
	dir = t.TempDir()
	if err := config.Init(dir); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "fs", "sample")
	if err := samples.WriteTree(tree); err != nil {
		t.Fatal(err)
	}
	if err := samples.WriteDisk(context.Background(), filepath.Join(dir, "disk", "sample.img"), tree); err != nil {
		t.Fatal(err)
	}
	m, err := config.Load(dir, config.Factories())
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

// Snapshot snapshots the live PE id and returns the snapshot's ID.
func Snapshot(t testing.TB, m pe.Manager, id string) pe.ID {
	t.Helper()
	pid, err := pe.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Get(context.Background(), pid)
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Snapshot(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
