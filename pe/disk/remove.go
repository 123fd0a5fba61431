package disk

import (
	"context"
	"fmt"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

var _ pe.Remover = (*entity)(nil)

// Remove implements pe.Remover: it removes the image file of a live PE
// without snapshots. Links to block devices are not removed: the device
// was there before the PE.
func (e *entity) Remove(ctx context.Context) error {
	if e.id.HasSnapshot() {
		return fmt.Errorf("remove %s: is a snapshot: %w", e.id, pe.ErrNotSupported)
	}
	kind, err := e.tm.kindOf(e.id.Name())
	if err != nil {
		return fmt.Errorf("remove %s: %w", e.id, err)
	}
	if kind != kindFile {
		return fmt.Errorf("remove %s: not an image file: %w", e.id, pe.ErrNotSupported)
	}
	snaps, err := e.tm.snaps.List(e.id.Name())
	if err != nil {
		return fmt.Errorf("remove %s: %w", e.id, err)
	}
	if len(snaps) > 0 {
		return fmt.Errorf("remove %s: it has %d snapshots: %w", e.id, len(snaps), pe.ErrExists)
	}
	if err := os.Remove(e.tm.livePath(e.id.Name())); err != nil {
		return fmt.Errorf("remove %s: %w", e.id, err)
	}
	return snapdir.SyncDir(e.tm.root)
}
