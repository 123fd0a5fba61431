// Package budget bounds what a restore writes: how far an untrusted source
// may expand (pe.CopyOptions.MaxExpansion) and how much free space the
// target filesystem keeps. A restore asks for a Budget before it writes
// and reports every byte it writes to it; a limit that is hit is an error
// wrapping pe.ErrLimit, after which the restore removes what it wrote.
package budget

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

const (
	// checkEvery is how many bytes are written between two looks at the
	// free space: often enough that a filling disk is noticed while the
	// reserve lasts, rarely enough to cost nothing.
	checkEvery = 4 << 20
	// The reserve is 1% of the filesystem, between these bounds: the
	// room a restore leaves to everyone else.
	minReserve = 1 << 20
	maxReserve = 1 << 30
	// produceFactor times the expansion bound is what untrusted input
	// may produce, holes included. Not its declared size: a zip declares
	// its entries' sizes (up to 1 PiB) and nothing checks them before
	// the end of the stream, while a tar's sparse members describe any
	// amount of holes in a few bytes. 16 × the default bound of 100 is
	// 1600 × the stored size, above deflate's best ratio (1032:1), so
	// the zeros of a tar without sparse members always fit at the
	// default; only holes beyond that, which cost a restore time and no
	// disk, are refused, fast (1 MiB of zip: 1.6 GB of zeros at most).
	produceFactor = 16
)

// Budget is the allowance of one restore.
type Budget struct {
	dir       string // on the target filesystem; "": its free space is not checked
	src       pe.ID
	limit     int64 // bytes written; negative: no expansion bound
	stored    int64
	expansion int64
	reserve   int64
	written   int64
	unchecked int64
	// Content produced, zeros included: a tar's sparse members can
	// describe a petabyte of holes in a few bytes, costing no disk but
	// the time to produce the zeros. Bounded for untrusted input by
	// produceFactor times the expansion bound.
	produced, produceLimit int64
}

// New returns the budget of restoring img, the data of src, into the
// filesystem holding dir under opts. It fails with pe.ErrLimit unless the
// filesystem has room for what img declares it holds (its data extents;
// no more than the expansion bound) beyond a reserve.
func New(ctx context.Context, dir string, src pe.ProtectedEntity, img pe.Image, opts pe.CopyOptions) (*Budget, error) {
	b := NewRemote(src, opts)
	b.dir = dir
	need := DataBytes(ctx, img)
	if b.limit >= 0 {
		need = min(need, b.limit)
	}
	avail, total, err := b.statfs()
	if err != nil {
		return nil, err
	}
	b.reserve = min(max(total/100, minReserve), maxReserve)
	if need > avail-b.reserve {
		return nil, fmt.Errorf("%w: not enough free space on the target filesystem to restore %s: it needs up to %d bytes, %d are free and %d are kept in reserve",
			pe.ErrLimit, b.src, need, avail, b.reserve)
	}
	return b, nil
}

// NewRemote returns the budget of restoring src under opts onto a target
// whose free space cannot be seen from here (a vSphere datastore): only
// the bounds of untrusted input apply.
func NewRemote(src pe.ProtectedEntity, opts pe.CopyOptions) *Budget {
	b := &Budget{src: src.ID(), limit: opts.ExpansionLimit(src), produceLimit: -1}
	if b.limit >= 0 {
		b.stored, _ = pe.StoredSize(src)
		b.expansion = int64(opts.MaxExpansion)
		if b.expansion == 0 {
			b.expansion = pe.DefaultMaxExpansion
		}
		b.produceLimit = b.limit
		if b.limit <= math.MaxInt64/produceFactor {
			b.produceLimit = b.limit * produceFactor
		}
	}
	return b
}

// Declared checks, before anything is made, that a target of n bytes that
// src declares (the capacity of a disk, which a writer may fill with
// zeros past src's data) is within what src, if untrusted, may produce
// under opts. It fails with pe.ErrLimit.
func Declared(src pe.ProtectedEntity, opts pe.CopyOptions, n int64) error {
	return NewRemote(src, opts).Produce(n)
}

// Produce accounts for n more bytes of content produced, whether written
// or left a hole; it fails with pe.ErrLimit past the bound of untrusted
// input.
func (b *Budget) Produce(n int64) error {
	b.produced += n
	if b.produceLimit >= 0 && b.produced > b.produceLimit {
		return fmt.Errorf("%w: restoring %s, untrusted input, would produce more than %d bytes, holes and zeros included (%d times its expansion bound); if that is expected, pass a larger --max-expansion (a negative one removes the bound)",
			pe.ErrLimit, b.src, b.produceLimit, produceFactor)
	}
	return nil
}

// Add accounts for n more bytes about to be written; it fails with
// pe.ErrLimit when they pass the expansion bound, or when the free space
// has dropped below the reserve.
func (b *Budget) Add(n int64) error {
	b.written += n
	if b.limit >= 0 && b.written > b.limit {
		return fmt.Errorf("%w: restoring %s, untrusted input stored in %d bytes, would write more than %d bytes (%d times its stored size, at least 1 MiB); if that is expected, pass a larger --max-expansion (a negative one removes the bound)",
			pe.ErrLimit, b.src, b.stored, b.limit, b.expansion)
	}
	if b.unchecked += n; b.dir == "" || b.unchecked < checkEvery {
		return nil
	}
	b.unchecked = 0
	avail, _, err := b.statfs()
	if err != nil {
		return err
	}
	if avail < b.reserve {
		return fmt.Errorf("%w: the target filesystem is down to %d free bytes (%d are kept in reserve) after restoring %d bytes of %s",
			pe.ErrLimit, avail, b.reserve, b.written, b.src)
	}
	return nil
}

// Full turns a write error that says the filesystem or a quota is full
// (ENOSPC, EDQUOT: another writer took the space between two looks) into
// a pe.ErrLimit; other errors it returns as they are.
func Full(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: the target filesystem is full: %w", pe.ErrLimit, err)
	}
	return err
}

// Written is the total of Add.
func (b *Budget) Written() int64 { return b.written }

// statfs returns the bytes available to unprivileged writers (root may
// use the filesystem's own reserved blocks; a restore should not) and the
// size of the filesystem holding b.dir.
func (b *Budget) statfs() (avail, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(b.dir, &st); err != nil {
		return 0, 0, fmt.Errorf("free space of the target filesystem: %w", err)
	}
	bs := int64(st.Bsize)
	if st.Frsize > 0 {
		bs = int64(st.Frsize)
	}
	return int64(st.Bavail) * bs, int64(st.Blocks) * bs, nil
}

// DataBytes is what restoring img writes at most: the bytes of its data
// extents (holes and known zeros are not written), or its size if it
// cannot tell. An image that knows better — a tar image of a tree, whose
// files' holes are data in the stream but holes again when restored —
// says so with an Allocated() int64 method: the bytes its content takes
// on disk.
func DataBytes(ctx context.Context, img pe.Image) int64 {
	if a, ok := img.(interface{ Allocated() int64 }); ok {
		return a.Allocated()
	}
	exts, err := img.Extents(ctx, 0, img.Size())
	if err != nil {
		return img.Size()
	}
	var n int64
	for _, e := range exts {
		if !e.Kind.ReadsZero() {
			n += e.Length
		}
	}
	return n
}

// Image returns img read through b, for writers that take an image rather
// than report their writes (the vSphere disk writers): every byte read
// is produced, and every read that is not all zeros counts as written.
// The writers read each byte once, in order; a read past a bound fails
// with the budget's error.
func Image(img pe.Image, b *Budget) pe.Image { return &budgetImage{Image: img, b: b} }

type budgetImage struct {
	pe.Image
	mu sync.Mutex // a Budget is not safe for concurrent use
	b  *Budget
}

func (bi *budgetImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := bi.Image.ReadAt(p, off)
	bi.mu.Lock()
	defer bi.mu.Unlock()
	if berr := bi.b.Produce(int64(n)); berr != nil {
		return 0, berr
	}
	if n > 0 && !pe.IsZero(p[:n]) {
		if berr := bi.b.Add(int64(n)); berr != nil {
			return 0, berr
		}
	}
	return n, err
}
