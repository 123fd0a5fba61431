package vm

import (
	"cmp"
	"reflect"
	"slices"
	"strings"

	"github.com/vmware/govmomi/vim25/types"
)

// Hardware is a VM's metadata: what it takes to create the VM again. It
// is a wire format (backups keep it): add fields, never rename them.
type Hardware struct {
	Name           string       `json:"name"`
	GuestID        string       `json:"guestId"`
	Version        string       `json:"version,omitempty"` // vmx-NN
	Firmware       string       `json:"firmware,omitempty"`
	NumCPUs        int32        `json:"numCPUs"`
	CoresPerSocket int32        `json:"coresPerSocket,omitempty"`
	MemoryMB       int32        `json:"memoryMB"`
	Annotation     string       `json:"annotation,omitempty"`
	Controllers    []Controller `json:"controllers"`
	Disks          []Disk       `json:"disks"`
	NICs           []NIC        `json:"nics"`
}

// Controller is a disk controller.
type Controller struct {
	Key       int32  `json:"key"`
	Type      string `json:"type"` // pvscsi, lsilogic, lsilogic-sas, buslogic, ahci, nvme, ide
	BusNumber int32  `json:"busNumber"`
	Sharing   string `json:"sharing,omitempty"` // SCSI bus sharing
}

// Disk is a virtual disk; its bytes are in the component PE
// vm:<uuid>/disk-<Key>.
type Disk struct {
	Key           int32  `json:"key"`
	ControllerKey int32  `json:"controllerKey"`
	UnitNumber    int32  `json:"unitNumber"`
	CapacityBytes int64  `json:"capacityBytes"`
	Thin          bool   `json:"thin,omitempty"`
	Label         string `json:"label,omitempty"`
}

// NIC is a network adapter.
type NIC struct {
	Key         int32  `json:"key"`
	Type        string `json:"type"`    // vmxnet3, e1000, e1000e, vmxnet2, pcnet32
	Network     string `json:"network"` // the network's name
	MAC         string `json:"mac,omitempty"`
	AddressType string `json:"addressType,omitempty"` // manual, generated, assigned
}

// controllerTypes and nicTypes name the device types Hardware knows.
var (
	controllerTypes = map[string]func() types.BaseVirtualDevice{
		"pvscsi":       func() types.BaseVirtualDevice { return &types.ParaVirtualSCSIController{} },
		"lsilogic":     func() types.BaseVirtualDevice { return &types.VirtualLsiLogicController{} },
		"lsilogic-sas": func() types.BaseVirtualDevice { return &types.VirtualLsiLogicSASController{} },
		"buslogic":     func() types.BaseVirtualDevice { return &types.VirtualBusLogicController{} },
		"ahci":         func() types.BaseVirtualDevice { return &types.VirtualAHCIController{} },
		"nvme":         func() types.BaseVirtualDevice { return &types.VirtualNVMEController{} },
		"ide":          func() types.BaseVirtualDevice { return &types.VirtualIDEController{} },
	}
	nicTypes = map[string]func() types.BaseVirtualDevice{
		"vmxnet3": func() types.BaseVirtualDevice { return &types.VirtualVmxnet3{} },
		"vmxnet2": func() types.BaseVirtualDevice { return &types.VirtualVmxnet2{} },
		"e1000":   func() types.BaseVirtualDevice { return &types.VirtualE1000{} },
		"e1000e":  func() types.BaseVirtualDevice { return &types.VirtualE1000e{} },
		"pcnet32": func() types.BaseVirtualDevice { return &types.VirtualPCNet32{} },
	}
)

// typeName finds a device's name in names.
func typeName(names map[string]func() types.BaseVirtualDevice, d types.BaseVirtualDevice) string {
	t := reflect.TypeOf(d)
	for name, mk := range names {
		if reflect.TypeOf(mk()) == t {
			return name
		}
	}
	return ""
}

// hardwareOf describes a VM configuration.
func hardwareOf(name string, c *types.VirtualMachineConfigInfo) Hardware {
	h := Hardware{
		Name: name, GuestID: c.GuestId, Version: c.Version, Firmware: c.Firmware,
		NumCPUs: c.Hardware.NumCPU, MemoryMB: c.Hardware.MemoryMB,
		Annotation: c.Annotation,
		// Empty lists, not null, for readers in other languages.
		Controllers: []Controller{}, Disks: []Disk{}, NICs: []NIC{},
	}
	if c.Hardware.NumCoresPerSocket != nil {
		h.CoresPerSocket = *c.Hardware.NumCoresPerSocket
	}
	for _, d := range c.Hardware.Device {
		vd := d.GetVirtualDevice()
		switch dev := d.(type) {
		case *types.VirtualDisk:
			disk := Disk{Key: vd.Key, ControllerKey: vd.ControllerKey, CapacityBytes: dev.CapacityInBytes}
			if vd.UnitNumber != nil {
				disk.UnitNumber = *vd.UnitNumber
			}
			if b, ok := dev.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.ThinProvisioned != nil {
				disk.Thin = *b.ThinProvisioned
			}
			if di := vd.DeviceInfo.GetDescription(); di != nil {
				disk.Label = di.Label
			}
			h.Disks = append(h.Disks, disk)
		case types.BaseVirtualController:
			t := typeName(controllerTypes, d)
			if t == "" {
				continue // PCI, PS/2, SIO: every VM gets them
			}
			ctl := Controller{Key: vd.Key, Type: t, BusNumber: dev.GetVirtualController().BusNumber}
			if sc, ok := d.(types.BaseVirtualSCSIController); ok {
				ctl.Sharing = string(sc.GetVirtualSCSIController().SharedBus)
			}
			h.Controllers = append(h.Controllers, ctl)
		case types.BaseVirtualEthernetCard:
			nic := NIC{Key: vd.Key, Type: typeName(nicTypes, d)}
			card := dev.GetVirtualEthernetCard()
			nic.MAC, nic.AddressType = card.MacAddress, card.AddressType
			switch b := vd.Backing.(type) {
			case *types.VirtualEthernetCardNetworkBackingInfo:
				nic.Network = b.DeviceName
			case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
				nic.Network = "dvportgroup:" + b.Port.PortgroupKey
			case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
				nic.Network = b.OpaqueNetworkId
			}
			if nic.Type != "" {
				h.NICs = append(h.NICs, nic)
			}
		}
	}
	// Every VM has IDE controllers; only those with disks matter.
	h.Controllers = slices.DeleteFunc(h.Controllers, func(c Controller) bool {
		return c.Type == "ide" && !slices.ContainsFunc(h.Disks, func(d Disk) bool { return d.ControllerKey == c.Key })
	})
	slices.SortFunc(h.Controllers, func(a, b Controller) int {
		return cmp.Or(strings.Compare(a.Type, b.Type), cmp.Compare(a.BusNumber, b.BusNumber))
	})
	slices.SortFunc(h.Disks, func(a, b Disk) int { return cmp.Compare(a.Key, b.Key) })
	slices.SortFunc(h.NICs, func(a, b NIC) int { return cmp.Compare(a.Key, b.Key) })
	return h
}
