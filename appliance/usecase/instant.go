package usecase

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/astrolabe-appliance/astrolabe/appliance/nbdexport"
	"github.com/astrolabe-appliance/astrolabe/appliance/tasks"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// InstantRestore is a live restore: its target PE exists and is exported
// writable at once, and Fill copies the snapshot into it in the background
// while clients use it.
type InstantRestore struct {
	Export Export // the writable NBD export of the target
	Target pe.ID

	s    *Service
	live *nbdexport.Live
}

// RestoreInstant restores repository snapshot id into a new PE of type typ
// (opts.Mode pe.Create or pe.CreateNew) at once: the PE is made empty, of
// the snapshot's size, and exported writable; reads of what it lacks yet
// come from the snapshot. Run Fill to copy the snapshot into it.
func (s *Service) RestoreInstant(ctx context.Context, id pe.ID, typ string, opts pe.CopyOptions) (*InstantRestore, error) {
	src, err := s.exportSource()
	if err != nil {
		return nil, err
	}
	r, err := s.repository()
	if err != nil {
		return nil, err
	}
	if opts.Mode != pe.Create && opts.Mode != pe.CreateNew {
		return nil, fmt.Errorf("instant restore of %s: it makes a new PE (create or create_new), not %s: %w", id, opts.Mode, pe.ErrNotSupported)
	}
	tm, err := s.m.Type(ctx, typ)
	if err != nil {
		return nil, err
	}
	if w, ok := tm.(pe.InPlaceType); !ok || !w.WritesInPlace() {
		return nil, fmt.Errorf("instant restore of %s: %s PEs cannot be written in place; restore into a disk (--to disk:NAME) or without instant: %w", id, typ, pe.ErrNotSupported)
	}
	p, err := r.OpenSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	size, err := dataSize(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("instant restore of %s: %w", id, err)
	}
	// The target starts as zeros (holes): the fill writes only the
	// snapshot's data.
	opts.Progress = nil
	target, err := tm.Copy(ctx, emptyCopy{p, size}, opts)
	if err != nil {
		return nil, fmt.Errorf("instant restore of %s: %w", id, err)
	}
	// Marked before anything can write into it, so that a crash at any
	// later point leaves a PE that says it is unfinished, never one that
	// looks whole with holes.
	filler, ok := target.(pe.Filler)
	if !ok {
		err = fmt.Errorf("instant restore of %s: %s cannot be marked unfinished while it is filled: %w", id, target.ID(), pe.ErrNotSupported)
		return nil, errors.Join(err, s.removePE(context.WithoutCancel(ctx), target.ID()))
	}
	if err := filler.StartFilling(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("instant restore of %s: %w", id, err), s.removePE(context.WithoutCancel(ctx), target.ID()))
	}
	x, live, err := src.AddLive(ctx, p, target.ID())
	if errors.Is(err, pe.ErrExists) {
		err = fmt.Errorf("instant restore of %s: the snapshot is exported already (by an earlier instant restore that goes on serving its PE, or an NBD export): stop that export first: %w", id, err)
	}
	if err != nil {
		return nil, errors.Join(err, s.removePE(context.WithoutCancel(ctx), target.ID()))
	}
	e := s.describe(x)
	e.Task = tasks.NewID()
	if err := s.journal.ExportStarted(e); err != nil {
		return nil, errors.Join(err, live.Abort(), s.removePE(context.WithoutCancel(ctx), target.ID()))
	}
	s.log.Info("instant restore started", "snapshot", id, "target", target.ID())
	return &InstantRestore{Export: e, Target: target.ID(), s: s, live: live}, nil
}

// Fill copies the snapshot into the target, the blocks clients read
// first; once it is whole the export serves the target alone. When ctx
// ends first what was filled stays, and an appliance restarting takes it
// up again (ResumedRestores).
func (ir *InstantRestore) Fill(ctx context.Context, progress pe.Progress) error {
	if err := ir.live.Run(ctx, progress); err != nil {
		return err
	}
	// Whole: cleared before the journal says done, as a crash in between
	// resumes a fill that then finds nothing left to do, where the other
	// order could leave the mark for good.
	if err := ir.s.doneFilling(ctx, ir.Target); err != nil {
		return err
	}
	e := ir.Export
	e.Live = false
	ir.s.log.Info("instant restore done", "snapshot", e.ID, "target", ir.Target)
	if err := ir.s.journal.ExportUpdated(e); err != nil {
		return err
	}
	// Recorded as done: the overlay may go (before, a restart must find
	// it to resume).
	return ir.live.Done()
}

// Abort gives the restore up: the export goes and the target, which holds
// only part of the snapshot and whatever clients wrote, is removed.
func (ir *InstantRestore) Abort(ctx context.Context) error {
	err := ir.live.Abort()
	err = errors.Join(err, ir.s.journal.ExportStopped(ir.Export.ID))
	err = errors.Join(err, ir.s.removePE(ctx, ir.Target))
	if err != nil {
		ir.s.log.Error("instant restore aborted, but cleaning up failed", "snapshot", ir.Export.ID, "target", ir.Target, "err", err)
	} else {
		ir.s.log.Warn("instant restore aborted: its target removed", "snapshot", ir.Export.ID, "target", ir.Target)
	}
	return err
}

// Task is Fill as the work of a task: its result is the target's ID. A
// task cancelled by a user (cause tasks.ErrCancelled) aborts the restore;
// one ended by the appliance shutting down leaves it to be resumed.
func (ir *InstantRestore) Task() tasks.Func {
	return func(ctx context.Context, progress pe.Progress) (map[string]string, error) {
		err := ir.Fill(ctx, progress)
		if err != nil && errors.Is(context.Cause(ctx), tasks.ErrCancelled) {
			err = errors.Join(err, ir.Abort(context.WithoutCancel(ctx)))
		}
		if err != nil {
			return nil, err
		}
		return map[string]string{"id": ir.Target.String(), "export": ir.Export.URI}, nil
	}
}

// TaskID is the ID the fill's task runs as (tasks.Manager.StartAs),
// the same after a restart; "" for a restore journaled before tasks kept
// their IDs.
func (ir *InstantRestore) TaskID() string { return ir.Export.Task }

// Details describes the restore for a task list.
func (ir *InstantRestore) Details() string {
	return fmt.Sprintf("instant restore %s into %s", ir.Export.ID, ir.Target)
}

// ResumedRestores returns the instant restores ResumeExport took up again,
// once: their Fill must run again.
func (s *Service) ResumedRestores() []*InstantRestore {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.resumed
	s.resumed = nil
	return out
}

// resumeInstant exports again the instant restore a journal recorded, to
// be filled on (ResumedRestores).
func (s *Service) resumeInstant(ctx context.Context, src *nbdexport.Source, e Export) (Export, error) {
	r, err := s.repository()
	if err != nil {
		return Export{}, err
	}
	p, err := r.OpenSnapshot(ctx, e.ID)
	if err != nil {
		return Export{}, err
	}
	x, live, err := src.ResumeLive(ctx, p, e.Target, e.Name)
	if err != nil {
		return Export{}, err
	}
	out := s.describe(x)
	out.Task = e.Task
	if out.Task == "" { // journaled by a version before task IDs were
		out.Task = tasks.NewID()
	}
	s.mu.Lock()
	s.resumed = append(s.resumed, &InstantRestore{Export: out, Target: e.Target, s: s, live: live})
	s.mu.Unlock()
	return out, nil
}

// removePE removes the live PE id.
func (s *Service) removePE(ctx context.Context, id pe.ID) error {
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	r, ok := p.(pe.Remover)
	if !ok {
		return fmt.Errorf("remove %s: %s PEs cannot be removed: %w", id, id.Type(), pe.ErrNotSupported)
	}
	return r.Remove(ctx)
}

// doneFilling clears the unfinished mark of the live restore target id.
func (s *Service) doneFilling(ctx context.Context, id pe.ID) error {
	p, err := s.m.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("instant restore into %s done, but: %w", id, err)
	}
	f, ok := p.(pe.Filler)
	if !ok {
		return fmt.Errorf("instant restore into %s done, but it cannot be marked whole: %w", id, pe.ErrNotSupported)
	}
	return f.DoneFilling(ctx)
}

func dataSize(ctx context.Context, p pe.ProtectedEntity) (int64, error) {
	img, err := p.Data(ctx)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	return img.Size(), nil
}

// emptyCopy is a snapshot whose data reads as size zeros, all holes: what
// a live restore's target starts as.
type emptyCopy struct {
	pe.ProtectedEntity
	size int64
}

func (e emptyCopy) Data(ctx context.Context) (pe.Image, error) { return holes(e.size), nil }

type holes int64

func (h holes) Size() int64  { return int64(h) }
func (h holes) Close() error { return nil }

func (h holes) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(h) {
		return 0, io.EOF
	}
	n := min(int64(len(p)), int64(h)-off)
	clear(p[:n])
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (h holes) Extents(ctx context.Context, off, length int64) ([]pe.Extent, error) {
	off, length, ok := pe.ClipRange(off, length, int64(h))
	if !ok {
		return nil, nil
	}
	return []pe.Extent{{Offset: off, Length: length, Kind: pe.ExtentHole}}, nil
}
