package vm

import (
	"context"
	"testing"

	"github.com/vmware/govmomi/vim25/mo"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
)

// StartInstantSim is for the appliance's tests (package vm_test): vcsim
// with a VM "app" of two disks whose content is disks, a type manager
// on it, and the VM's PE. The working directory is a temporary one,
// where vcsim keeps NAS datastores by name.
func StartInstantSim(t *testing.T, disks ...[]byte) (*vcsimtest.Sim, *TypeManager, pe.ProtectedEntity) {
	ctx := context.Background()
	s := vcsimtest.Start(t)
	cfg := s.Config
	cfg.ResourcePool, cfg.Datastore = pool, s.DS.Name()
	tm, err := NewTypeManager(cfg, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	v := createVM(t, s, "app", disks...)
	var m mo.VirtualMachine
	if err := v.Properties(ctx, v.Reference(), []string{"config.instanceUuid"}, &m); err != nil {
		t.Fatal(err)
	}
	id, _ := pe.NewID(Type, m.Config.InstanceUuid)
	p, err := tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return s, tm, p
}
