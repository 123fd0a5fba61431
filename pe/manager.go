package pe

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// Manager gives access to the PEs of all configured types.
type Manager interface {
	// Types returns the type managers, sorted by type name.
	Types(ctx context.Context) ([]TypeManager, error)
	// Type returns the manager of one type; ErrNotFound if not configured.
	Type(ctx context.Context, name string) (TypeManager, error)
	// Get returns the PE (or snapshot) named by id.
	Get(ctx context.Context, id ID) (ProtectedEntity, error)
}

// StaticManager is a Manager over a fixed set of type managers.
type StaticManager struct {
	types map[string]TypeManager
}

// NewManager returns a Manager over tms; type names must be unique.
func NewManager(tms ...TypeManager) (*StaticManager, error) {
	m := &StaticManager{types: make(map[string]TypeManager, len(tms))}
	for _, tm := range tms {
		if _, dup := m.types[tm.Type()]; dup {
			return nil, fmt.Errorf("PE type %q configured twice", tm.Type())
		}
		m.types[tm.Type()] = tm
	}
	return m, nil
}

// Types implements Manager.
func (m *StaticManager) Types(ctx context.Context) ([]TypeManager, error) {
	out := make([]TypeManager, 0, len(m.types))
	for _, tm := range m.types {
		out = append(out, tm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type() < out[j].Type() })
	return out, nil
}

// Type implements Manager.
func (m *StaticManager) Type(ctx context.Context, name string) (TypeManager, error) {
	tm, ok := m.types[name]
	if !ok {
		return nil, fmt.Errorf("PE type %q: %w (configured: %v)", name, ErrNotFound, m.typeNames())
	}
	return tm, nil
}

// Get implements Manager.
func (m *StaticManager) Get(ctx context.Context, id ID) (ProtectedEntity, error) {
	tm, err := m.Type(ctx, id.Type())
	if err != nil {
		return nil, err
	}
	return tm.Get(ctx, id)
}

func (m *StaticManager) typeNames() []string {
	names := make([]string, 0, len(m.types))
	for n := range m.types {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// WithSnapshots returns a Manager that is primary, except that a snapshot
// primary does not have is looked up in snapshots (a backup repository's
// snapshots, served beside the configuration's PEs).
func WithSnapshots(primary, snapshots Manager) Manager {
	return withSnapshots{primary, snapshots}
}

type withSnapshots struct {
	Manager
	snapshots Manager
}

func (m withSnapshots) Get(ctx context.Context, id ID) (ProtectedEntity, error) {
	p, err := m.Manager.Get(ctx, id)
	if errors.Is(err, ErrNotFound) && id.HasSnapshot() {
		if sp, serr := m.snapshots.Get(ctx, id); serr == nil {
			return sp, nil
		}
	}
	return p, err
}
