package repo

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Manager presents the repository's snapshots as read-only PEs, so that
// NBD, FUSE and the S3 data path serve them without restoring: a type per
// PE type backed up, a PE per PE backed up (named as the original), and its
// snapshots as they are in the repository.
func (r *Repository) Manager() pe.Manager { return &repoManager{r: r} }

type repoManager struct{ r *Repository }

func (m *repoManager) types(ctx context.Context) ([]string, error) {
	snaps, err := m.r.Snapshots(ctx, pe.ID{})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, s := range snaps {
		if !seen[s.ID.Type()] {
			seen[s.ID.Type()] = true
			out = append(out, s.ID.Type())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Types implements pe.Manager.
func (m *repoManager) Types(ctx context.Context) ([]pe.TypeManager, error) {
	names, err := m.types(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]pe.TypeManager, len(names))
	for i, n := range names {
		out[i] = &repoType{r: m.r, name: n}
	}
	return out, nil
}

func (m *repoManager) Type(ctx context.Context, name string) (pe.TypeManager, error) {
	names, err := m.types(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if n == name {
			return &repoType{r: m.r, name: n}, nil
		}
	}
	return nil, fmt.Errorf("PE type %q in the repository: %w", name, pe.ErrNotFound)
}

func (m *repoManager) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	return (&repoType{r: m.r, name: id.Type()}).Get(ctx, id)
}

type repoType struct {
	r    *Repository
	name string
}

func (t *repoType) Type() string { return t.name }

func (t *repoType) List(ctx context.Context) ([]pe.ID, error) {
	snaps, err := t.r.Snapshots(ctx, pe.ID{})
	if err != nil {
		return nil, err
	}
	seen := map[pe.ID]bool{}
	var out []pe.ID
	for _, s := range snaps {
		if b := s.ID.Base(); s.ID.Type() == t.name && !seen[b] {
			seen[b] = true
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

func (t *repoType) Get(ctx context.Context, id pe.ID) (pe.ProtectedEntity, error) {
	if id.Type() != t.name {
		return nil, fmt.Errorf("%s in the repository: %w", id, pe.ErrNotFound)
	}
	if id.HasSnapshot() {
		return t.r.OpenSnapshot(ctx, id)
	}
	snaps, err := t.r.Snapshots(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(snaps) == 0 {
		return nil, fmt.Errorf("%s in the repository: %w", id, pe.ErrNotFound)
	}
	return &backedUpPE{r: t.r, id: id, latest: snaps[len(snaps)-1]}, nil
}

func (t *repoType) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	return nil, fmt.Errorf("copy into the repository: use backup: %w", pe.ErrNotSupported)
}

// backedUpPE is a PE as the repository knows it: its snapshots.
type backedUpPE struct {
	r      *Repository
	id     pe.ID
	latest Snapshot
}

func (p *backedUpPE) ID() pe.ID { return p.id }

func (p *backedUpPE) Info(ctx context.Context) (pe.Info, error) {
	info := p.latest.Info
	info.ID, info.Created = p.id, nil
	return info, nil
}

func (p *backedUpPE) Snapshot(ctx context.Context, params pe.Params) (pe.ID, error) {
	return pe.ID{}, fmt.Errorf("snapshot %s: the repository holds backups, not live PEs: %w", p.id, pe.ErrNotSupported)
}

func (p *backedUpPE) ListSnapshots(ctx context.Context) ([]pe.ID, error) {
	return p.r.SnapshotIDs(ctx, p.id)
}

func (p *backedUpPE) DeleteSnapshot(ctx context.Context, snapshot string) error {
	return p.r.Forget(ctx, p.id.WithSnapshot(snapshot))
}

func (p *backedUpPE) SnapshotInfo(ctx context.Context, snapshot string) (pe.Info, error) {
	s, err := p.r.OpenSnapshot(ctx, p.id.WithSnapshot(snapshot))
	if err != nil {
		return pe.Info{}, err
	}
	return s.Info(ctx)
}

func (p *backedUpPE) Components(ctx context.Context) ([]pe.ProtectedEntity, error) { return nil, nil }

func (p *backedUpPE) Data(ctx context.Context) (pe.Image, error) {
	return nil, fmt.Errorf("data of %s: only its snapshots have data in the repository: %w", p.id, pe.ErrNoData)
}

func (p *backedUpPE) Metadata(ctx context.Context) (io.ReadCloser, error) {
	return nil, fmt.Errorf("metadata of %s: %w", p.id, pe.ErrNoMetadata)
}

func (p *backedUpPE) Overwrite(ctx context.Context, src pe.ProtectedEntity, withComponents bool) error {
	return fmt.Errorf("overwrite %s: repository PEs are read-only: %w", p.id, pe.ErrNotSupported)
}
