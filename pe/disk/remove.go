package disk

import (
	"context"
	"fmt"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

var _ pe.Remover = (*entity)(nil)

// Remove implements pe.Remover: it removes the image file of a live PE
// without snapshots. Links to block devices are not removed: the device
// was there before the PE.
func (e *entity) Remove(ctx context.Context) error {
	if err := e.RequireLive("remove"); err != nil {
		return err
	}
	id := e.ID()
	kind, err := e.disks.kindOf(id.Name())
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if kind != kindFile {
		return fmt.Errorf("remove %s: not an image file: %w", id, pe.ErrNotSupported)
	}
	snaps, err := e.disks.Snapshots().List(id.Name())
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if len(snaps) > 0 {
		return fmt.Errorf("remove %s: it has %d snapshots: %w", id, len(snaps), pe.ErrExists)
	}
	if err := os.Remove(e.disks.Path(id.Name())); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if err := e.disks.Sync(); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	// Gone, so no longer unfinished: a PE made again under the name
	// must not inherit the mark.
	return e.disks.ClearFilling(id.Name())
}
