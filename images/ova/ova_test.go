package ova

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/ovf/importer"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// tinyOVA packs a small streamOptimized disk made by qemu-img.
func tinyOVA(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img missing: apt-get install -y qemu-utils")
	}
	dir := t.TempDir()
	vmdk := filepath.Join(dir, "disk.vmdk")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", vmdk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "test.ova")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(f, Config{Version: "1.2.3", VMDK: vmdk, DiskCapacity: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// testOVA is the OVA the tests check: $ASTROLABE_OVA (images/ci.sh sets it
// to the built appliance's), else a tiny one.
func testOVA(t *testing.T) string {
	if p := os.Getenv("ASTROLABE_OVA"); p != "" {
		return p
	}
	return tinyOVA(t)
}

func TestStructure(t *testing.T) {
	path := testOVA(t)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var names []string
	contents := map[string][]byte{} // of the descriptor and the manifest
	sums := map[string]string{}
	sizes := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		sum := sha256.New()
		w := io.Writer(sum)
		if !strings.HasSuffix(h.Name, ".vmdk") {
			w = io.MultiWriter(sum, &b)
		}
		if _, err := io.Copy(w, tr); err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		contents[h.Name] = b.Bytes()
		sums[h.Name] = hex.EncodeToString(sum.Sum(nil))
		sizes[h.Name] = h.Size
	}
	if strings.Join(names, " ") != OVFName+" "+MFName+" "+DiskName {
		t.Fatalf("OVA order %v: the descriptor must come first", names)
	}
	// Every manifest line verifies.
	sc := bufio.NewScanner(bytes.NewReader(contents[MFName]))
	checked := 0
	for sc.Scan() {
		var name, sum string
		line := sc.Text()
		if i := strings.Index(line, ")= "); strings.HasPrefix(line, "SHA256(") && i > 0 {
			name, sum = line[7:i], line[i+3:]
		}
		if name == "" || sums[name] != sum {
			t.Errorf("manifest line %q does not verify", line)
		}
		checked++
	}
	if checked != 2 {
		t.Errorf("manifest has %d entries", checked)
	}

	env, err := ovf.Unmarshal(bytes.NewReader(contents[OVFName]))
	if err != nil {
		t.Fatalf("govmomi cannot parse the OVF: %v", err)
	}
	vs := env.VirtualSystem
	if vs == nil || len(vs.Product) != 1 {
		t.Fatalf("virtual system %+v", vs)
	}
	declared := map[string]ovf.Property{}
	for _, p := range vs.Product[0].Property {
		declared[p.Key] = p
	}
	for _, want := range Properties {
		p, ok := declared[want.Key]
		if !ok || p.Label == nil || *p.Label == "" || p.Description == nil || (want.Password && (p.Password == nil || !*p.Password)) {
			t.Errorf("property %s: %+v", want.Key, p)
		}
	}
	for _, key := range []string{"hostname", "ip", "netmask", "gateway", "dns", "api_token", "repo_url", "repo_access_key", "repo_secret_key", "repo_password"} {
		if _, ok := declared[key]; !ok {
			t.Errorf("the wizard lacks %s", key)
		}
	}
	if refs := env.References; len(refs) != 1 || refs[0].Href != DiskName || int64(refs[0].Size) != sizes[DiskName] {
		t.Errorf("references %+v: the disk is %d bytes", refs, sizes[DiskName])
	}
	hw := vs.VirtualHardware[0]
	kinds := map[string]bool{}
	for _, it := range hw.Item {
		if it.ResourceSubType != nil {
			kinds[*it.ResourceSubType] = true
		}
	}
	if !kinds["VmxNet3"] || !kinds["VirtualSCSI"] {
		t.Errorf("hardware %v", kinds)
	}
}

// TestImportIntoVcsim deploys the OVA into govmomi's vCenter simulator
// with govmomi's importer (what govc import.ova does).
func TestImportIntoVcsim(t *testing.T) {
	path := testOVA(t)
	simulator.Test(func(ctx context.Context, c *vim25.Client) {
		finder := find.NewFinder(c)
		dc, err := finder.DefaultDatacenter(ctx)
		if err != nil {
			t.Fatal(err)
		}
		finder.SetDatacenter(dc)
		ds, err := finder.DefaultDatastore(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The simulator has a host and a cluster: take the cluster's pool.
		rps, err := finder.ResourcePoolList(ctx, "*/Resources")
		if err != nil || len(rps) == 0 {
			t.Fatalf("resource pools: %v", err)
		}
		rp := rps[0]
		folders, err := dc.Folders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		imp := importer.Importer{
			Client: c, Finder: finder, Datacenter: dc, Datastore: ds, ResourcePool: rp, Folder: folders.VmFolder,
			Archive: &importer.TapeArchive{Path: path}, Name: "astrolabe-1",
			// The simulator's lease reports no checksums to verify against;
			// TestStructure verifies the manifest.
			Log: func(msg string) (int, error) { t.Log(strings.TrimSpace(msg)); return len(msg), nil },
		}
		set := map[string]string{"hostname": "backup01", "ip": "10.0.0.5", "netmask": "255.255.255.0", "repo_url": "s3://minio:9000/backups/a"}
		name := "astrolabe-1"
		opts := importer.Options{Name: &name}
		for k, v := range set {
			opts.PropertyMapping = append(opts.PropertyMapping, importer.Property{KeyValue: importer.KeyValue{Key: k, Value: v}})
		}
		ref, err := imp.Import(ctx, "*.ovf", opts)
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		var vm mo.VirtualMachine
		if err := object.NewVirtualMachine(c, *ref).Properties(ctx, *ref, []string{"config", "name"}, &vm); err != nil {
			t.Fatal(err)
		}
		if vm.Name != "astrolabe-1" || vm.Config.Hardware.NumCPU != CPUs || vm.Config.Hardware.MemoryMB != MemoryMB {
			t.Errorf("VM %s: %d CPUs, %d MB", vm.Name, vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB)
		}
		var vmxnet3, pvscsi, disks int
		for _, d := range vm.Config.Hardware.Device {
			switch d.(type) {
			case *types.VirtualVmxnet3:
				vmxnet3++
			case *types.ParaVirtualSCSIController:
				pvscsi++
			case *types.VirtualDisk:
				disks++
			}
		}
		if vmxnet3 != 1 || pvscsi != 1 || disks != 1 {
			t.Errorf("devices: %d vmxnet3, %d pvscsi, %d disks", vmxnet3, pvscsi, disks)
		}
		va, ok := vm.Config.VAppConfig.(*types.VmConfigInfo)
		if !ok {
			t.Fatalf("no vApp config: %T", vm.Config.VAppConfig)
		}
		got := map[string]string{}
		for _, p := range va.Property {
			got[p.Id] = p.Value
		}
		for k, v := range set {
			if got[k] != v {
				t.Errorf("vApp property %s = %q, want %q", k, got[k], v)
			}
		}
		if len(got) != len(Properties) {
			t.Errorf("%d vApp properties, want %d", len(got), len(Properties))
		}
	})
}
