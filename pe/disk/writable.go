package disk

import (
	"context"
	"fmt"
	"os"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/fileimage"
)

var (
	_ pe.DataWriter = (*entity)(nil)
	_ pe.Filler     = (*entity)(nil)
)

// WritableData implements pe.DataWriter for the live image (a file or a
// block device); snapshots are read-only.
func (e *entity) WritableData(ctx context.Context) (pe.WritableImage, error) {
	if err := e.RequireLive("write"); err != nil {
		return nil, err
	}
	id := e.ID()
	kind, err := e.disks.kindOf(id.Name())
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", id, err)
	}
	path := e.disks.Path(id.Name())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", id, err)
	}
	size, err := imageSize(f, kind)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %s: %w", id, path, err)
	}
	return fileimage.Writable{Image: fileimage.New(f, size, kind == kindFile)}, nil
}

var _ pe.InPlaceType = (*TypeManager)(nil)

// WritesInPlace implements pe.InPlaceType: disk PEs are DataWriters,
// Fillers and Removers.
func (*TypeManager) WritesInPlace() bool { return true }
