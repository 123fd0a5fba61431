package localpe

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/snapdir"
)

// fillingDir is the hidden directory of the root holding one empty file
// per PE a live restore has not finished filling. The mark lives beside
// the PE, not in the appliance's state, so that it outlasts a process
// killed mid-fill whatever ran it (the daemon, or restore --instant).
const fillingDir = ".filling"

func (r *Root) fillingMark(name string) string {
	return filepath.Join(r.dir, fillingDir, name)
}

// Filling reports whether a live restore into the PE name is unfinished.
func (r *Root) Filling(name string) (bool, error) {
	_, err := os.Lstat(r.fillingMark(name))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("%s:%s: %w", r.typ, name, err)
}

// ClearFilling removes the PE name's mark, if any, durably: its data is
// now whole (or gone).
func (r *Root) ClearFilling(name string) error {
	err := os.Remove(r.fillingMark(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s:%s: clear the mark of an unfinished restore: %w", r.typ, name, err)
	}
	return snapdir.SyncDir(filepath.Join(r.dir, fillingDir))
}

// StartFilling implements pe.Filler: the PE is marked unfinished, durably,
// before a live restore writes into it.
func (e *Entity) StartFilling(ctx context.Context) error {
	if err := e.RequireLive("fill"); err != nil {
		return err
	}
	dir := filepath.Join(e.m.root.dir, fillingDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("mark %s unfinished: %w", e.id, err)
	}
	f, err := os.OpenFile(e.m.root.fillingMark(e.id.Name()), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("mark %s unfinished: %w", e.id, err)
	}
	if err := errors.Join(f.Sync(), f.Close(), snapdir.SyncDir(dir), e.m.root.Sync()); err != nil {
		return fmt.Errorf("mark %s unfinished: %w", e.id, err)
	}
	return nil
}

// DoneFilling implements pe.Filler: the PE's data is whole.
func (e *Entity) DoneFilling(ctx context.Context) error {
	if err := e.RequireLive("fill"); err != nil {
		return err
	}
	return e.m.root.ClearFilling(e.id.Name())
}

// refuseUnfinished fails op on a PE a live restore has not finished
// filling: what it would read has holes where the snapshot's data belongs.
func (e *Entity) refuseUnfinished(op string) error {
	filling, err := e.m.root.Filling(e.id.Name())
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, e.id, err)
	}
	if filling {
		return fmt.Errorf("%s %s: an instant restore into it has not finished, so it holds only part of its data (an appliance that was serving it resumes the restore at start; otherwise remove %s and restore again): %w",
			op, e.id, e.m.root.Path(e.id.Name()), pe.ErrIncomplete)
	}
	return nil
}
