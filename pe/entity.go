package pe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
)

// Errors a PE implementation returns (wrapped, with context) so that callers
// can tell the cases apart: the CLI prints them, the REST API maps them to
// status codes.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrNoData        = errors.New("PE has no data")
	ErrNoMetadata    = errors.New("PE has no metadata")
	ErrNotSupported  = errors.New("not supported")
	ErrInvalidSource = errors.New("invalid source")
	// ErrLimit is returned when a copy would pass a configured bound
	// (expansion of untrusted input, free space on the target); what the
	// copy wrote is removed.
	ErrLimit = errors.New("limit exceeded")
	// ErrIncomplete is returned for a live PE a live restore has not
	// finished filling: it holds only part of its data.
	ErrIncomplete = errors.New("incomplete")
)

// Params are type-specific parameters of snapshot and copy requests, keyed by
// PE type and then parameter name, as in the reference REST API.
type Params map[string]map[string]any

// ProtectedEntity is the one API every protected thing offers. A
// ProtectedEntity obtained for an ID with a snapshot is that snapshot: its
// Info, Data, Metadata and Components are those of the point in time.
type ProtectedEntity interface {
	ID() ID
	// Info describes the PE (or the snapshot, if ID has one).
	Info(ctx context.Context) (Info, error)

	// Snapshot takes a new point-in-time snapshot and returns its full ID.
	Snapshot(ctx context.Context, params Params) (ID, error)
	// ListSnapshots returns full IDs of all snapshots, oldest first.
	ListSnapshots(ctx context.Context) ([]ID, error)
	// DeleteSnapshot removes one snapshot; ErrNotFound if there is none.
	DeleteSnapshot(ctx context.Context, snapshot string) error
	// SnapshotInfo returns the info of one snapshot; ErrNotFound if there is none.
	SnapshotInfo(ctx context.Context, snapshot string) (Info, error)

	// Components returns the component PEs (a PE graph), possibly none.
	Components(ctx context.Context) ([]ProtectedEntity, error)

	// Data opens the PE's data as a random-access image; ErrNoData if it
	// has none. The caller closes it.
	Data(ctx context.Context) (Image, error)
	// Metadata opens the metadata stream; ErrNoMetadata if it has none.
	Metadata(ctx context.Context) (io.ReadCloser, error)

	// Overwrite replaces the data and metadata of this (live) PE with those
	// of src, and its components' if withComponents is set. The ID does not
	// change.
	Overwrite(ctx context.Context, src ProtectedEntity, withComponents bool) error
}

// TypeManager knows all PEs of one type.
type TypeManager interface {
	// Type is the type name, e.g. "fs".
	Type() string
	// Get returns the PE named by id (which must be of this type). It
	// returns ErrNotFound for a PE or snapshot that does not exist.
	Get(ctx context.Context, id ID) (ProtectedEntity, error)
	// List returns the IDs of all live PEs of this type.
	List(ctx context.Context) ([]ID, error)
	// Copy makes a PE of this type from src (any type whose data this type
	// understands) and returns it.
	Copy(ctx context.Context, src ProtectedEntity, opts CopyOptions) (ProtectedEntity, error)
}

// CopyMode says how Copy finds its target, as in the reference.
type CopyMode int

const (
	// CreateNew allocates a new PE with a new ID.
	CreateNew CopyMode = iota + 1
	// Create makes a PE with the source's ID; it fails if that exists.
	Create
	// Update overwrites the existing PE with the source's ID.
	Update
)

func (m CopyMode) String() string {
	switch m {
	case CreateNew:
		return "create_new"
	case Create:
		return "create"
	case Update:
		return "update"
	}
	return fmt.Sprintf("CopyMode(%d)", int(m))
}

// ParseCopyMode parses "create", "create_new" or "update".
func ParseCopyMode(s string) (CopyMode, error) {
	switch s {
	case "create_new":
		return CreateNew, nil
	case "create":
		return Create, nil
	case "update":
		return Update, nil
	}
	return 0, fmt.Errorf("invalid copy mode %q: want create, create_new or update", s)
}

// Progress receives the number of bytes a long operation has moved.
type Progress interface {
	// Start announces the total (SizeUnknown if unknown).
	Start(total int64)
	// Add reports n more bytes done.
	Add(n int64)
}

// CopyOptions control TypeManager.Copy.
type CopyOptions struct {
	Mode CopyMode
	// Name is the target's ID part for Create/Update when it should differ
	// from the source's; empty means the source's name.
	Name     string
	Params   Params
	Progress Progress // may be nil
	// KeepPrivileges restores what grants privilege — owners,
	// setuid/setgid bits, file capabilities, trusted.* and security.*
	// xattrs — even from an untrusted source (see Untrusted). It is an
	// administrator's explicit choice; callers log it. From trusted
	// sources these are always restored. (Device nodes are never
	// restored by fs: its snapshots leave them out.)
	KeepPrivileges bool
	// MaxExpansion bounds the bytes a copy from an untrusted source may
	// write, as a multiple of the source's stored (compressed) size;
	// 0 means DefaultMaxExpansion, negative means no bound.
	MaxExpansion int
}

// DefaultMaxExpansion is CopyOptions.MaxExpansion's default.
const DefaultMaxExpansion = 100

// GrantsUntrustedPrivileges reports whether a copy of src with o restores
// privileges from untrusted input: the administrator's choice that
// callers log.
func (o CopyOptions) GrantsUntrustedPrivileges(src ProtectedEntity) bool {
	return o.KeepPrivileges && Untrusted(src)
}

// Untrusted reports whether p comes from outside the appliance (an
// uploaded zip, a zip named on the command line): restoring it must not
// grant privileges unless CopyOptions.KeepPrivileges says so. A PE is
// trusted unless it says otherwise through an Untrusted() bool method.
func Untrusted(p ProtectedEntity) bool {
	u, ok := p.(interface{ Untrusted() bool })
	return ok && u.Untrusted()
}

// StoredSize reports how many bytes p's data takes where it is stored (a
// zip entry's compressed size), if p says so through a StoredSize() int64
// method: the measure MaxExpansion multiplies.
func StoredSize(p ProtectedEntity) (int64, bool) {
	s, ok := p.(interface{ StoredSize() int64 })
	if !ok {
		return 0, false
	}
	return s.StoredSize(), true
}

// minExpansionBound is the least an expansion bound allows, so that a zip
// of a few small files, whose deflate framing dwarfs its content, is never
// refused: a bomb needs far more than this to hurt.
const minExpansionBound = 1 << 20

// ExpansionLimit is the most bytes a copy of src may write under o:
// MaxExpansion (DefaultMaxExpansion if 0) times src's stored size, at
// least 1 MiB, for an untrusted source that reports its stored size; -1
// (no bound) for trusted sources, for a negative MaxExpansion and for
// sources that do not report a stored size.
func (o CopyOptions) ExpansionLimit(src ProtectedEntity) int64 {
	if o.MaxExpansion < 0 || !Untrusted(src) {
		return -1
	}
	stored, ok := StoredSize(src)
	if !ok || stored < 0 {
		return -1
	}
	x := int64(o.MaxExpansion)
	if x == 0 {
		x = DefaultMaxExpansion
	}
	if stored > math.MaxInt64/x {
		return math.MaxInt64
	}
	return max(stored*x, minExpansionBound)
}

// AddProgress reports n bytes to p if p is set.
func (o CopyOptions) AddProgress(n int64) {
	if o.Progress != nil {
		o.Progress.Add(n)
	}
}

// StartProgress announces total bytes to p if p is set.
func (o CopyOptions) StartProgress(total int64) {
	if o.Progress != nil {
		o.Progress.Start(total)
	}
}

// TargetName returns the name a Create/Update copy writes to.
func (o CopyOptions) TargetName(src ID) string {
	if o.Name != "" {
		return o.Name
	}
	return src.Name()
}

// Reader returns r reporting what it reads to o's Progress and failing
// once ctx is done: the stream a copy reads its source through.
func (o CopyOptions) Reader(ctx context.Context, r io.Reader) io.Reader {
	return &progressReader{ctx: ctx, r: r, opts: o}
}

type progressReader struct {
	ctx  context.Context
	r    io.Reader
	opts CopyOptions
}

func (p *progressReader) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.r.Read(b)
	p.opts.AddProgress(int64(n))
	return n, err
}
