// Package nbdexport serves PE snapshots through the nbd package: each
// export is named by its full PE ID and reads the snapshot's data image.
package nbdexport

import (
	"context"
	"fmt"
	"sync"

	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Source is an nbd.Source over a fixed set of PE snapshots.
type Source struct {
	m   pe.Manager
	mu  sync.Mutex
	ids []pe.ID
}

// NewSource exports the given snapshots (IDs with a snapshot part).
func NewSource(m pe.Manager, ids []pe.ID) (*Source, error) {
	for _, id := range ids {
		if !id.HasSnapshot() {
			return nil, fmt.Errorf("export %s: not a snapshot", id)
		}
	}
	return &Source{m: m, ids: ids}, nil
}

// List implements nbd.Source.
func (s *Source) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	s.mu.Lock()
	ids := append([]pe.ID(nil), s.ids...)
	s.mu.Unlock()
	out := make([]nbd.ExportInfo, 0, len(ids))
	for _, id := range ids {
		desc := id.Type() + " PE " + id.Name() + ", snapshot " + id.Snapshot()
		if p, err := s.m.Get(ctx, id); err == nil {
			if info, err := p.Info(ctx); err == nil && info.Size >= 0 {
				desc += fmt.Sprintf(", %d bytes", info.Size)
			}
		}
		out = append(out, nbd.ExportInfo{Name: id.String(), Description: desc})
	}
	return out, nil
}

// Open implements nbd.Source.
func (s *Source) Open(ctx context.Context, name string) (nbd.Export, error) {
	id, err := pe.ParseID(name)
	if err != nil {
		return nil, nbd.ErrUnknownExport
	}
	s.mu.Lock()
	known := false
	for _, e := range s.ids {
		known = known || e == id
	}
	s.mu.Unlock()
	if !known {
		return nil, nbd.ErrUnknownExport
	}
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", id, err)
	}
	img, err := p.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", id, err)
	}
	return export{img}, nil
}

// export adapts a pe.Image: holes and zero ranges become base:allocation
// states, so clients skip them.
type export struct{ pe.Image }

func (e export) Allocation(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	exts, err := e.Extents(ctx, off, length)
	if err != nil {
		return nil, err
	}
	out := make([]nbd.Extent, 0, len(exts))
	for _, x := range exts {
		var flags uint32
		switch x.Kind {
		case pe.ExtentHole:
			flags = nbd.StateHole | nbd.StateZero
		case pe.ExtentZero:
			flags = nbd.StateZero
		}
		out = append(out, nbd.Extent{Length: x.Length, Flags: flags})
	}
	return out, nil
}
