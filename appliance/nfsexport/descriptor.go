package nfsexport

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
)

const sectorSize = 512

// descriptor returns the VMDK text descriptor of a vmfs flat disk of size
// bytes whose single extent is flatName. Its CID and UUIDs derive from the
// export's name and size, so that the same export served again (after an
// appliance restart) presents the same disk identity to ESXi.
func descriptor(name string, size int64) []byte {
	sectors := size / sectorSize
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d", name, size))
	cid := binary.BigEndian.Uint32(sum[:4])
	if cid == 0xffffffff || cid == 0xfffffffe { // "no parent" and "unset" markers
		cid = 0x12345678
	}
	contentID := sha256.Sum256(sum[:])
	var uuid strings.Builder
	for i, b := range sum[4:20] {
		if i > 0 {
			uuid.WriteByte(' ')
		}
		fmt.Fprintf(&uuid, "%02x", b)
	}
	// lsilogic's BIOS geometry: 255 heads, 63 sectors a track, at most
	// 65535 cylinders (larger disks keep the cap; their size comes from
	// the extent).
	cylinders := sectors / (255 * 63)
	cylinders = max(1, min(cylinders, 65535))
	return fmt.Appendf(nil, `# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=%08x
parentCID=ffffffff
createType="vmfs"

# Extent description
%s

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "%d"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.longContentID = "%x"
ddb.uuid = "%s"
ddb.virtualHWVersion = "13"
`, cid, extentLine(name, size), cylinders, contentID[:16], uuid.String())
}

// extentLine is the descriptor's one extent line: the flat file, all of
// the disk.
func extentLine(name string, size int64) string {
	return fmt.Sprintf(`RW %d VMFS "%s"`, size/sectorSize, flatName(name))
}

func descriptorName(name string) string { return name + ".vmdk" }
func flatName(name string) string       { return name + "-flat.vmdk" }
