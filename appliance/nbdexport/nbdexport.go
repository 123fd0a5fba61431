// Package nbdexport serves PE snapshots through the nbd package: each
// read-only export is named by the full PE ID of a snapshot and reads the
// snapshot's data image. A writable export serves the snapshot at once
// through a copy-on-write overlay (pe/overlay): its writes land there,
// never in the snapshot, and are discarded when the export stops or kept
// as a new PE. Its name is the snapshot's ID, a slash and a random token,
// so that only those told the name can find it (the nbd server lists it
// only to authenticated clients).
package nbdexport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/astrolabe-appliance/astrolabe/nbd"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// ChangedContextPrefix starts the name of the meta context that marks the
// blocks changed since an earlier snapshot of the same PE:
// "astrolabe:changed:<snapshot>". State 1 is changed, 0 unchanged.
const ChangedContextPrefix = "astrolabe:changed:"

// Source is an nbd.Source over a set of PE snapshots. Exports can be
// added and removed while it serves.
type Source struct {
	m pe.Manager
	// overlays is where writable exports keep their overlays, one
	// directory per export named by its token; "" refuses writable
	// exports.
	overlays  string
	bytesRead atomic.Int64
	mu        sync.Mutex
	entries   []entry
	// pending are snapshots whose writable export is being made: a second
	// request for one is refused before it makes anything.
	pending map[pe.ID]bool
}

type entry struct {
	id   pe.ID  // the snapshot
	name string // the export name
	// ov is a writable export's overlay.
	ov *shared
	// target is the live PE that takes the writes: of a live restore
	// (through ov while live, directly once filled), or of a writable
	// export recorded before exports had overlays (it was a copy of the
	// snapshot); zero otherwise.
	target pe.ID
	// live says target is being filled from the snapshot (AddLive).
	live bool
}

func (e entry) writable() bool { return e.ov != nil || !e.target.IsZero() }

// NewSource returns a Source with no exports, whose writable exports keep
// their overlays under overlayDir ("" for none).
func NewSource(m pe.Manager, overlayDir string) *Source {
	return &Source{m: m, overlays: overlayDir, pending: map[pe.ID]bool{}}
}

// tokenBytes is the randomness in a writable export's name: 128 bits.
const tokenBytes = 16

// WritableName returns a new export name for a writable export of
// snapshot id: its ID, a slash and a random 128-bit token in hex.
func WritableName(id pe.ID) string {
	var b [tokenBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return id.String() + "/" + hex.EncodeToString(b[:])
}

// token is the random part of a writable export's name, or "" if name is
// not one of WritableName for id.
func token(id pe.ID, name string) string {
	t, ok := strings.CutPrefix(name, id.String()+"/")
	if b, err := hex.DecodeString(t); !ok || err != nil || len(b) != tokenBytes {
		return ""
	}
	return t
}

// Add exports snapshot id read-only, named by its ID.
func (s *Source) Add(id pe.ID) error {
	return s.add(entry{id: id, name: id.String()}, false)
}

// reserve marks id as being exported writable, unless it is exported.
func (s *Source) reserve(id pe.ID) error {
	if !id.HasSnapshot() {
		return fmt.Errorf("export %s: not a snapshot", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.lookupID(id); ok || s.pending[id] {
		return fmt.Errorf("export %s: %w", id, pe.ErrExists)
	}
	s.pending[id] = true
	return nil
}

func (s *Source) unreserve(id pe.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, id)
}

// AddTarget exports snapshot id writable under name into an existing
// target PE, as exports were made before they had overlays: an appliance
// restarting restores its exports so. An empty name gets a new one of
// WritableName.
func (s *Source) AddTarget(id, target pe.ID, name string) (Export, error) {
	if target.IsZero() || target.HasSnapshot() {
		return Export{}, fmt.Errorf("export %s: target %s is not a live PE", id, target)
	}
	if name == "" {
		name = WritableName(id)
	}
	if token(id, name) == "" {
		return Export{}, fmt.Errorf("export %s: name %q is not one of WritableName", id, name)
	}
	e := entry{id: id, name: name, target: target}
	return e.export(), s.add(e, false)
}

// Remove stops exporting id; connected clients keep their export open
// until they disconnect. A writable export's overlay, and the writes in
// it, are removed once the last client is gone (Keep them first).
func (s *Source) Remove(id pe.ID) error {
	s.mu.Lock()
	var found *entry
	for i, e := range s.entries {
		if e.id == id {
			if e.live {
				s.mu.Unlock()
				return fmt.Errorf("export %s: a live restore is filling %s from it: wait for it to end, or cancel it (which removes %s): %w", id, e.target, e.target, pe.ErrExists)
			}
			found = &e
			s.entries = append(s.entries[:i], s.entries[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if found == nil {
		return fmt.Errorf("export %s: %w", id, pe.ErrNotFound)
	}
	if found.ov != nil {
		return found.ov.release(true)
	}
	return nil
}

// Export is one export of a Source.
type Export struct {
	ID       pe.ID
	Name     string // the NBD export name
	Writable bool
	// Target is the PE that takes the writes of a live restore, or of a
	// writable export made before exports had overlays; zero for all
	// others.
	Target pe.ID
	// Live says Target is being filled from the snapshot.
	Live bool
}

func (e entry) export() Export {
	return Export{ID: e.id, Name: e.name, Writable: e.writable(), Target: e.target, Live: e.live}
}

// Exports lists the exports in the order they were added.
func (s *Source) Exports() []Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Export, len(s.entries))
	for i, e := range s.entries {
		out[i] = e.export()
	}
	return out
}

// BytesRead is the number of bytes clients have read from all exports.
func (s *Source) BytesRead() int64 { return s.bytesRead.Load() }

// add adds an export of a snapshot not exported yet; reserved says the
// caller holds the snapshot's reservation.
func (s *Source) add(e entry, reserved bool) error {
	if !e.id.HasSnapshot() {
		return fmt.Errorf("export %s: not a snapshot", e.id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.lookupID(e.id); ok || (s.pending[e.id] && !reserved) {
		return fmt.Errorf("export %s: %w", e.id, pe.ErrExists)
	}
	s.entries = append(s.entries, e)
	return nil
}

// lookup finds an export by name; s.mu must be held.
func (s *Source) lookup(name string) (entry, bool) {
	for _, e := range s.entries {
		if e.name == name {
			return e, true
		}
	}
	return entry{}, false
}

// lookupID finds the export of a snapshot; s.mu must be held.
func (s *Source) lookupID(id pe.ID) (entry, bool) {
	for _, e := range s.entries {
		if e.id == id {
			return e, true
		}
	}
	return entry{}, false
}

// List implements nbd.Source.
func (s *Source) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	s.mu.Lock()
	entries := append([]entry(nil), s.entries...)
	s.mu.Unlock()
	out := make([]nbd.ExportInfo, 0, len(entries))
	for _, e := range entries {
		desc := e.id.Type() + " PE " + e.id.Name() + ", snapshot " + e.id.Snapshot()
		if p, err := s.m.Get(ctx, e.id); err == nil {
			if info, err := p.Info(ctx); err == nil && info.Size >= 0 {
				desc += fmt.Sprintf(", %d bytes", info.Size)
			}
		}
		switch {
		case e.live:
			desc += ", writable: a live restore into " + e.target.String()
		case e.ov != nil:
			desc += ", writable: writes go to an overlay"
		case !e.target.IsZero():
			desc += ", writable: writes go to " + e.target.String()
		}
		out = append(out, nbd.ExportInfo{Name: e.name, Description: desc, Writable: e.writable()})
	}
	return out, nil
}

// Open implements nbd.Source.
func (s *Source) Open(ctx context.Context, name string) (nbd.Export, error) {
	s.mu.Lock()
	e, ok := s.lookup(name)
	s.mu.Unlock()
	if !ok {
		return nil, nbd.ErrUnknownExport
	}
	if e.ov != nil {
		return e.ov.open(&s.bytesRead)
	}
	if !e.target.IsZero() {
		return s.openTarget(ctx, e)
	}
	p, err := s.m.Get(ctx, e.id)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", e.id, err)
	}
	img, err := p.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", e.id, err)
	}
	se := &snapshotExport{export: export{img, &s.bytesRead}, p: p}
	se.tracker, _ = img.(pe.ChangeTracker)
	return se, nil
}

func (s *Source) openTarget(ctx context.Context, e entry) (nbd.Export, error) {
	p, err := s.m.Get(ctx, e.target)
	if err != nil {
		return nil, fmt.Errorf("export %s: target %w", e.id, err)
	}
	dw, ok := p.(pe.DataWriter)
	if !ok {
		return nil, fmt.Errorf("export %s: target %s: %w", e.id, e.target, pe.ErrNotSupported)
	}
	img, err := dw.WritableData(ctx)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", e.id, err)
	}
	return writableExport{export{img, &s.bytesRead}, img, img.Close}, nil
}

// export adapts a pe.Image: holes and zero ranges become base:allocation
// states, so clients skip them.
type export struct {
	pe.Image
	read *atomic.Int64 // bytes read, for the appliance's metrics
}

func (e export) ReadAt(p []byte, off int64) (int, error) {
	return e.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext stops the image's backend reads (a repository's chunk
// loads) once the client's connection is gone.
func (e export) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := pe.ReadAt(ctx, e.Image, p, off)
	e.read.Add(int64(n))
	return n, err
}

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

// writableExport writes into an overlay or a live PE's data.
type writableExport struct {
	export
	w     pe.WritableImage
	close func() error
}

func (e writableExport) Close() error { return e.close() }

func (e writableExport) WriteAt(p []byte, off int64) (int, error) { return e.w.WriteAt(p, off) }
func (e writableExport) Flush() error                             { return e.w.Sync() }
func (e writableExport) Zero(off, length int64, punch bool) error {
	return e.w.Zero(off, length, punch)
}

// snapshotExport is a read-only snapshot. Where its image tracks changes,
// it offers astrolabe:changed:<snap> for each earlier snapshot of its PE.
type snapshotExport struct {
	export
	p       pe.ProtectedEntity
	tracker pe.ChangeTracker

	mu      sync.Mutex
	changed map[string][]pe.Extent // by base snapshot, computed once per connection
}

// MetaContexts implements nbd.MetaContexter.
func (e *snapshotExport) MetaContexts(ctx context.Context) ([]string, error) {
	if e.tracker == nil {
		return nil, nil
	}
	snaps, err := e.p.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range snaps {
		// Snapshot names start with their UTC creation time.
		if s.Snapshot() < e.p.ID().Snapshot() {
			out = append(out, ChangedContextPrefix+s.Snapshot())
		}
	}
	return out, nil
}

// MetaStatus implements nbd.MetaContexter.
func (e *snapshotExport) MetaStatus(ctx context.Context, name string, off, length int64) ([]nbd.Extent, error) {
	base, ok := strings.CutPrefix(name, ChangedContextPrefix)
	if !ok || e.tracker == nil {
		return nil, fmt.Errorf("export %s: no meta context %q", e.p.ID(), name)
	}
	changed, err := e.changedSince(ctx, base)
	if err != nil {
		return nil, err
	}
	return changedStates(changed, off, length), nil
}

func (e *snapshotExport) changedSince(ctx context.Context, base string) ([]pe.Extent, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if exts, ok := e.changed[base]; ok {
		return exts, nil
	}
	exts, err := e.tracker.ChangedSince(ctx, base)
	if err != nil {
		return nil, err
	}
	if e.changed == nil {
		e.changed = map[string][]pe.Extent{}
	}
	e.changed[base] = exts
	return exts, nil
}

// changedStates describes [off, off+length) as contiguous extents, state 1
// where it overlaps a changed extent (sorted, not overlapping) and 0
// elsewhere.
func changedStates(changed []pe.Extent, off, length int64) []nbd.Extent {
	end := off + length
	var out []nbd.Extent
	add := func(n int64, flags uint32) {
		if n <= 0 {
			return
		}
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Length += n
			return
		}
		out = append(out, nbd.Extent{Length: n, Flags: flags})
	}
	i := sort.Search(len(changed), func(i int) bool { return changed[i].End() > off })
	pos := off
	for ; i < len(changed) && changed[i].Offset < end; i++ {
		c := changed[i]
		start := max(c.Offset, pos)
		add(start-pos, 0)
		stop := min(c.End(), end)
		add(stop-start, 1)
		pos = stop
	}
	add(end-pos, 0)
	return out
}
