package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/vm"
)

// state is what the daemon restores after a restart: the exports and
// mounts it was asked to start. It is rewritten atomically on each change.
type state struct {
	path string
	mu   sync.Mutex
	data stateData
}

type stateData struct {
	Exports    []exportState `json:"exports"`
	Mounts     []mountState  `json:"mounts"`
	NFSExports []nfsState    `json:"nfsExports,omitempty"`
	InstantVMs []instantVM   `json:"instantVMs,omitempty"`
}

// instantVM is a VM running from the NFS exports Disks.
type instantVM struct {
	ID    string       `json:"id"`
	VM    vm.InstantVM `json:"vm"`
	Disks []string     `json:"disks"`
}

type nfsState struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type exportState struct {
	ID string `json:"id"`
	// Writable says the export writes into an overlay, named by the
	// token in Name.
	Writable bool `json:"writable,omitempty"`
	// Target is the PE that takes the writes of a writable export made
	// before exports had overlays (a copy of the snapshot).
	Target string `json:"target,omitempty"`
	// Name is a writable export's NBD name (the ID and a secret token);
	// one recorded with a Target before names had tokens gets a new one
	// on restore.
	Name string `json:"name,omitempty"`
	// Live says the export is an instant restore into Target that is
	// still being filled from the snapshot (in the repository).
	Live bool `json:"live,omitempty"`
	// Task is the ID of the task filling a Live export.
	Task string `json:"task,omitempty"`
}

type mountState struct {
	ID         string `json:"id"`
	Path       string `json:"path"`
	AllowOther bool   `json:"allowOther,omitempty"`
	Force      bool   `json:"force,omitempty"`
}

func openState(path string) (*state, error) {
	st := &state{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("appliance state: %w", err)
	}
	if err := json.Unmarshal(b, &st.data); err != nil {
		return nil, fmt.Errorf("appliance state %s: %w (fix or remove the file)", path, err)
	}
	return st, nil
}

// update changes the state under its lock and saves it. The change is
// kept only once saved: a change the caller undoes after a failed save
// must not come back with the next one.
func (st *state) update(fn func(*stateData)) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	next := stateData{Exports: slices.Clone(st.data.Exports), Mounts: slices.Clone(st.data.Mounts), NFSExports: slices.Clone(st.data.NFSExports), InstantVMs: slices.Clone(st.data.InstantVMs)}
	fn(&next)
	err := atomicfile.Write(st.path, 0o600, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(next)
	})
	if err != nil {
		return fmt.Errorf("save appliance state: %w", err)
	}
	st.data = next
	return nil
}

func (st *state) snapshot() stateData {
	st.mu.Lock()
	defer st.mu.Unlock()
	return stateData{
		Exports:    slices.Clone(st.data.Exports),
		Mounts:     slices.Clone(st.data.Mounts),
		NFSExports: slices.Clone(st.data.NFSExports),
		InstantVMs: slices.Clone(st.data.InstantVMs),
	}
}

// The state is the use cases' journal.
var _ usecase.Journal = (*state)(nil)

func (st *state) ExportStarted(e usecase.Export) error {
	rec := exportRecord(e)
	return st.update(func(d *stateData) { d.Exports = append(d.Exports, rec) })
}

func exportRecord(e usecase.Export) exportState {
	rec := exportState{ID: e.ID.String()}
	switch {
	case !e.Target.IsZero():
		rec.Target, rec.Name, rec.Live = e.Target.String(), e.Name, e.Live
		if e.Live {
			rec.Task = e.Task
		}
	case e.Writable:
		rec.Writable, rec.Name = true, e.Name
	}
	return rec
}

func (st *state) ExportUpdated(e usecase.Export) error {
	rec := exportRecord(e)
	return st.update(func(d *stateData) {
		for i := range d.Exports {
			if d.Exports[i].ID == rec.ID {
				d.Exports[i] = rec
			}
		}
	})
}

func (st *state) ExportStopped(id pe.ID) error {
	return st.update(func(d *stateData) {
		d.Exports = slices.DeleteFunc(d.Exports, func(e exportState) bool { return e.ID == id.String() })
	})
}

func (st *state) NFSExportStarted(e usecase.NFSExport) error {
	return st.update(func(d *stateData) { d.NFSExports = append(d.NFSExports, nfsState{ID: e.ID.String(), Name: e.Name}) })
}

func (st *state) NFSExportStopped(name string) error {
	return st.update(func(d *stateData) {
		d.NFSExports = slices.DeleteFunc(d.NFSExports, func(e nfsState) bool { return e.Name == name })
	})
}

func (st *state) InstantVMStarted(v usecase.InstantVM) error {
	return st.update(func(d *stateData) {
		d.InstantVMs = append(d.InstantVMs, instantVM{ID: v.ID.String(), VM: v.VM, Disks: v.Disks})
	})
}

func (st *state) InstantVMStopped(name string) error {
	return st.update(func(d *stateData) {
		d.InstantVMs = slices.DeleteFunc(d.InstantVMs, func(v instantVM) bool { return v.VM.Name == name })
	})
}

func (st *state) MountStarted(m usecase.Mount) error {
	return st.update(func(d *stateData) {
		d.Mounts = append(d.Mounts, mountState{ID: m.ID, Path: m.Path, AllowOther: m.AllowOther, Force: m.Force})
	})
}

func (st *state) MountStopped(id string) error {
	return st.update(func(d *stateData) {
		d.Mounts = slices.DeleteFunc(d.Mounts, func(m mountState) bool { return m.ID == id })
	})
}

// resume starts again the mounts, and with NBD the exports, that the
// state records. One that cannot come back (its snapshot was deleted, its
// directory is no longer empty) is logged and dropped, not fatal; an NFS
// export is dropped only if its snapshot is known to be gone (repo: the
// daemon has its repository), its writes being the client's data.
func resume(ctx context.Context, uc *usecase.Service, st *state, nbd, nfs, repo bool, log *slog.Logger) error {
	recorded := st.snapshot()
	if nbd {
		var keep []exportState
		for _, e := range recorded.Exports {
			x, err := resumeExport(ctx, uc, e)
			if err != nil && e.Live {
				// Kept for a start that can take it up (its repository
				// configured again): dropped, its target would stay
				// half-filled with nobody the wiser.
				log.Error("instant restore not resumed: its target holds only part of the snapshot", "export", e.ID, "target", e.Target, "err", err)
				keep = append(keep, e)
				continue
			}
			if err != nil {
				log.Warn("NBD export not restored", "export", e.ID, "err", err)
				continue
			}
			if e.Target != "" {
				e.Name = x.Name
			}
			keep = append(keep, e)
		}
		if err := st.update(func(d *stateData) { d.Exports = keep }); err != nil {
			return err
		}
	}
	if nfs {
		var keep []nfsState
		for _, e := range recorded.NFSExports {
			id, err := pe.ParseID(e.ID)
			if err != nil {
				log.Warn("NFS export not restored", "export", e.Name, "snapshot", e.ID, "err", err)
				continue
			}
			err = uc.ResumeNFSExport(ctx, usecase.NFSExport{ID: id, Name: e.Name})
			if err != nil && (!errors.Is(err, pe.ErrNotFound) || !repo) {
				// Its writes wait in its overlay for a start that can
				// serve it: a snapshot of a repository not configured
				// (or not reachable) now is not known to be gone.
				log.Error("NFS export not restored; kept for the next start", "export", e.Name, "snapshot", e.ID, "err", err)
				keep = append(keep, e)
				continue
			}
			if err != nil {
				log.Warn("NFS export not restored: its snapshot is gone", "export", e.Name, "snapshot", e.ID, "err", err)
				if err := uc.DiscardNFSExport(e.Name); err != nil {
					log.Warn("NFS export's overlay and files not removed", "export", e.Name, "err", err)
				}
				continue
			}
			keep = append(keep, e)
		}
		if err := st.update(func(d *stateData) { d.NFSExports = keep }); err != nil {
			return err
		}
		// vSphere runs them; the appliance serves their disks (above).
		for _, v := range recorded.InstantVMs {
			id, err := pe.ParseID(v.ID)
			if err != nil {
				log.Warn("instant VM record dropped", "vm", v.VM.Name, "err", err)
				continue
			}
			uc.ResumeInstantVM(usecase.InstantVM{ID: id, VM: v.VM, Disks: v.Disks})
		}
	}
	var keep []mountState
	for _, ms := range recorded.Mounts {
		m := usecase.Mount{ID: ms.ID, Path: ms.Path, AllowOther: ms.AllowOther, Force: ms.Force}
		if err := uc.ResumeMount(ctx, m); err != nil {
			log.Warn("FUSE mount not restored", "path", ms.Path, "err", err)
			continue
		}
		keep = append(keep, ms)
	}
	return st.update(func(d *stateData) { d.Mounts = keep })
}

func resumeExport(ctx context.Context, uc *usecase.Service, e exportState) (usecase.Export, error) {
	id, err := pe.ParseID(e.ID)
	if err != nil {
		return usecase.Export{}, err
	}
	x := usecase.Export{ID: id, Name: e.Name, Writable: e.Writable, Live: e.Live, Task: e.Task}
	if e.Target != "" {
		if x.Target, err = pe.ParseID(e.Target); err != nil {
			return usecase.Export{}, err
		}
	}
	return uc.ResumeExport(ctx, x)
}

// mountMain mounts the operator's --mount directory, unless a mount
// restored from the state is there already.
func mountMain(ctx context.Context, uc *usecase.Service, dir string) error {
	if dir == "" {
		return nil
	}
	if abs, err := filepath.Abs(dir); err == nil {
		for _, m := range uc.Mounts() {
			if m.Path == abs {
				return nil
			}
		}
	}
	_, err := uc.MountAt(ctx, "mount-main", dir, false)
	return err
}
