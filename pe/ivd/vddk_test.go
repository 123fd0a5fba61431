//go:build vddk

package ivd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/vsphere/vcsimtest"
	"github.com/astrolabe-appliance/astrolabe/vddk/vixdisklib/vddktest"
)

// TestVDDK moves an FCD's bytes with the VDDK binding (against the C
// stand-in library, which reaches the simulator's files): it reads an FCD
// and restores it as a new one, which the datastore path then reads back.
func TestVDDK(t *testing.T) {
	s := startSim(t)
	ctx := context.Background()
	so := vddktest.Build(t)
	t.Setenv("FAKE_VDDK_ROOT", s.Dir)
	record := filepath.Join(t.TempDir(), "record")
	t.Setenv("FAKE_VDDK_RECORD", record)
	cfg := s.Config
	cfg.VDDK = &vsphere.VDDKConfig{Library: so, Transports: []string{"hotadd", "nbdssl"}}
	tm, err := NewTypeManager(cfg, vcsimtest.Quiet())
	if err != nil {
		t.Fatal(err)
	}
	raw := randomDisk(16<<20, 2<<20, 3<<20)
	id, _ := pe.NewID(Type, s.createFCD("vddk", raw, "monolithicFlat"))
	p, err := tm.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, p), raw) {
		t.Error("FCD read through VDDK differs")
	}
	// qemu-img allocates the first block of a raw file it writes.
	if n := dataBytes(t, p); n < 1<<20 || n > 1<<20+64<<10 {
		t.Errorf("QueryAllocatedBlocks gave %d bytes, want the 1 MiB written (and qemu's first block)", n)
	}
	rec, _ := os.ReadFile(record)
	if !strings.Contains(string(rec), "spec=1") || !strings.Contains(string(rec), "fcd="+id.Name()) ||
		!strings.Contains(string(rec), "transports=hotadd:nbdssl") || !strings.Contains(string(rec), "readonly=1") ||
		!regexp.MustCompile(`thumbprint=([0-9A-F]{2}:){19}[0-9A-F]{2} `).Match(rec) {
		t.Errorf("VDDK connections: %s", rec)
	}

	restored, err := tm.Copy(ctx, p, pe.CopyOptions{Mode: pe.CreateNew})
	if err != nil {
		t.Fatal(err)
	}
	// Read back without VDDK.
	back, err := s.tm.Get(ctx, restored.ID())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, back), raw) {
		t.Error("the FCD restored through VDDK differs")
	}
}
