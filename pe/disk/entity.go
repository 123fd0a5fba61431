package disk

import (
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/localpe"
)

// entity is a disk PE: the live image, or one snapshot of it when its ID
// has a snapshot part. Besides what every PE of a root offers (package
// localpe), a live image can be written in place and removed.
type entity struct {
	*localpe.Entity
	disks *disks
}

// Wrap implements localpe.Backend.
func (d *disks) Wrap(e *localpe.Entity) pe.ProtectedEntity {
	return &entity{Entity: e, disks: d}
}
