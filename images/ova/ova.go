// Package ova writes the appliance's OVA: an OVF descriptor with the
// hardware vSphere gives the VM and the properties its deploy wizard asks
// for, a SHA-256 manifest, and the streamOptimized disk, in one tar with
// the descriptor first as the OVF specification requires.
package ova

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"text/template"
	"time"
)

// Names inside the OVA.
const (
	OVFName  = "astrolabe-appliance.ovf"
	MFName   = "astrolabe-appliance.mf"
	DiskName = "astrolabe-appliance-disk1.vmdk"
)

// Property is one deploy-wizard setting, delivered to the VM in its OVF
// environment (guestinfo.ovfEnv).
type Property struct {
	Key, Label, Description string
	Password                bool
	Category                string
}

// Properties are what the first-boot unit reads; keep them in step with
// images/rootfs/usr/local/sbin/astrolabe-firstboot.
var Properties = []Property{
	{Key: "hostname", Category: "Network", Label: "Host name", Description: "The appliance's host name. Empty: astrolabe."},
	{Key: "ip", Category: "Network", Label: "IP address", Description: "A static IPv4 address. Empty: DHCP."},
	{Key: "netmask", Category: "Network", Label: "Netmask", Description: "Netmask of the static address, e.g. 255.255.255.0."},
	{Key: "gateway", Category: "Network", Label: "Gateway", Description: "Default gateway of the static address."},
	{Key: "dns", Category: "Network", Label: "DNS servers", Description: "Comma-separated DNS servers for the static address."},
	{Key: "api_token", Category: "Access", Label: "API token", Description: "Bearer token of the REST API. Empty: one is generated and stored in /etc/astrolabe/api-token.", Password: true},
	{Key: "repo_url", Category: "Backup repository", Label: "Repository", Description: "s3://host:port/bucket/prefix of the backup repository. Empty: none."},
	{Key: "repo_access_key", Category: "Backup repository", Label: "S3 access key", Description: "Access key ID of the repository's bucket."},
	{Key: "repo_secret_key", Category: "Backup repository", Label: "S3 secret key", Description: "Secret access key of the repository's bucket.", Password: true},
	{Key: "repo_password", Category: "Backup repository", Label: "Repository password", Description: "Encrypts the backups; keep it safe, it cannot be recovered.", Password: true},
}

// Hardware of the VM.
const (
	CPUs     = 2
	MemoryMB = 4096
)

// Config says what to pack.
type Config struct {
	Version      string
	VMDK         string // path of the streamOptimized disk
	DiskCapacity int64  // bytes of the virtual disk
}

var descriptor = template.Must(template.New("ovf").Parse(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file1" ovf:href="{{.DiskName}}" ovf:size="{{.DiskSize}}"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{{.Capacity}}" ovf:capacityAllocationUnits="byte"
        ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Networks</Info>
    <Network ovf:name="VM Network">
      <Description>The network the appliance serves on</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="astrolabe-appliance">
    <Info>Astrolabe data-protection appliance</Info>
    <Name>astrolabe-appliance</Name>
    <ProductSection ovf:required="false">
      <Info>Appliance settings, read at first boot</Info>
      <Product>Astrolabe appliance</Product>
      <Vendor>Astrolabe</Vendor>
      <Version>{{.Version}}</Version>
      <FullVersion>{{.Version}}</FullVersion>
{{- range .Properties}}
      <Category>{{.Category}}</Category>
      <Property ovf:key="{{.Key}}" ovf:type="string" ovf:userConfigurable="true" ovf:value=""{{if .Password}} ovf:password="true"{{end}}>
        <Label>{{.Label}}</Label>
        <Description>{{.Description}}</Description>
      </Property>
{{- end}}
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>Debian GNU/Linux 12 (64-bit)</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="com.vmware.guestInfo">
      <Info>2 vCPUs, 4 GiB, paravirtual SCSI, vmxnet3</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>astrolabe-appliance</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{{.CPUs}} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.CPUs}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{{.MemoryMB}}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.MemoryMB}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`))

// Descriptor returns the OVF descriptor for a disk file of diskSize bytes.
func Descriptor(cfg Config, diskSize int64) ([]byte, error) {
	var b bytes.Buffer
	err := descriptor.Execute(&b, map[string]any{
		"DiskName": DiskName, "DiskSize": diskSize, "Capacity": cfg.DiskCapacity,
		"Version": cfg.Version, "Properties": Properties, "CPUs": CPUs, "MemoryMB": MemoryMB,
	})
	return b.Bytes(), err
}

// Write writes the OVA: descriptor, manifest, disk.
func Write(w io.Writer, cfg Config) error {
	disk, err := os.Open(cfg.VMDK)
	if err != nil {
		return err
	}
	defer disk.Close()
	fi, err := disk.Stat()
	if err != nil {
		return err
	}
	ovf, err := Descriptor(cfg, fi.Size())
	if err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, disk); err != nil {
		return fmt.Errorf("hash %s: %w", cfg.VMDK, err)
	}
	ovfSum := sha256.Sum256(ovf)
	mf := fmt.Sprintf("SHA256(%s)= %s\nSHA256(%s)= %s\n", OVFName, hex.EncodeToString(ovfSum[:]), DiskName, hex.EncodeToString(h.Sum(nil)))
	if _, err := disk.Seek(0, io.SeekStart); err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	// A fixed time keeps the OVA the same for the same inputs.
	mtime := time.Unix(0, 0)
	add := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	if err := add(OVFName, int64(len(ovf)), bytes.NewReader(ovf)); err != nil {
		return err
	}
	if err := add(MFName, int64(len(mf)), bytes.NewReader([]byte(mf))); err != nil {
		return err
	}
	if err := add(DiskName, fi.Size(), disk); err != nil {
		return err
	}
	return tw.Close()
}
