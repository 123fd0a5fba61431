// Package vcsimtest starts govmomi's vCenter simulator in process for the
// tests of the vSphere PE types, and puts real VMDK content where the
// simulator keeps disks.
package vcsimtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"

	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
)

// Sim is a running simulator.
type Sim struct {
	T      testing.TB
	Model  *simulator.Model
	Config vsphere.Config // logs in as the simulator's user
	Client *govmomi.Client
	Finder *find.Finder // set to the default datacenter
	DS     *object.Datastore
	Dir    string // the datastore's local directory

	mu      sync.Mutex
	answers map[string]AnswerFunc
}

// RequireTool fails the test when a command is missing, naming the
// Debian package that has it.
func RequireTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s missing: apt-get install -y %s", name, pkg)
	}
}

// Start runs a simulated vCenter (the VPX model) until the test ends.
func Start(t testing.TB) *Sim {
	t.Helper()
	RequireTool(t, "qemu-img", "qemu-utils")
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(model.Remove)
	// Over TLS, as vCenter: VDDK's thumbprint check needs a certificate.
	model.Service.TLS = new(tls.Config)
	// Endpoints besides vim25 (vslm, when its simulator is imported).
	model.Service.RegisterEndpoints = true
	srv := model.Service.NewServer()
	t.Cleanup(srv.Close)
	s := &Sim{T: t, Model: model, answers: map[string]AnswerFunc{}}
	s.ExtendStorage()
	// Before the first request.
	srv.Config.Handler = s.intercept(srv.Config.Handler)
	ctx := context.Background()
	pass, _ := srv.URL.User.Password()
	u := *srv.URL
	u.User = nil
	cfg := vsphere.Config{VCenter: u.String(), User: srv.URL.User.Username(), Password: pass, Insecure: true}
	c, err := govmomi.NewClient(ctx, srv.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	f := find.NewFinder(c.Client)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.SetDatacenter(dc)
	ds, err := f.DefaultDatastore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mds mo.Datastore
	if err := ds.Properties(ctx, ds.Reference(), []string{"summary"}, &mds); err != nil {
		t.Fatal(err)
	}
	s.Config, s.Client, s.Finder, s.DS, s.Dir = cfg, c, f, ds, mds.Summary.Url
	return s
}

// Local maps a datastore path to the simulator's file.
func (s *Sim) Local(dsPath string) string {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		s.T.Fatalf("datastore path %q", dsPath)
	}
	return filepath.Join(s.Dir, p.Path)
}

// WriteVMDK replaces the disk at dsPath with raw's bytes as a VMDK of the
// given qemu-img subformat (monolithicSparse, monolithicFlat,
// streamOptimized).
func (s *Sim) WriteVMDK(dsPath string, raw []byte, subformat string) {
	s.T.Helper()
	rawPath := filepath.Join(s.T.TempDir(), "disk.raw")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		s.T.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat="+subformat, rawPath, s.Local(dsPath)).CombinedOutput(); err != nil {
		s.T.Fatalf("qemu-img: %v\n%s", err, out)
	}
}

// Delta puts a new qemu-made VMDK delta disk on top of the disk at
// dsPath, as vSphere does when it snapshots a disk, and returns the
// delta's datastore path.
func (s *Sim) Delta(dsPath, deltaName string) string {
	s.T.Helper()
	var p object.DatastorePath
	p.FromString(dsPath)
	if err := MakeDelta(filepath.Dir(s.Local(dsPath)), filepath.Base(p.Path), deltaName); err != nil {
		s.T.Fatal(err)
	}
	p.Path = filepath.Join(filepath.Dir(p.Path), deltaName)
	return p.String()
}

// MakeDelta creates the VMDK delta disk delta over parent, both in dir.
func MakeDelta(dir, parent, delta string) error {
	cmd := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", delta)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create %s over %s: %v\n%s", delta, parent, err, out)
	}
	return nil
}

// RandomDisk is size bytes, zero but for random data in [from, to).
func RandomDisk(size, from, to int) []byte {
	b := make([]byte, size)
	rand.Read(b[from:to])
	return b
}
