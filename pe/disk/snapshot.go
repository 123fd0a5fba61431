package disk

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/localpe"
)

// Files of a snapshot directory.
const (
	imageFile  = "image"
	blocksFile = "blocks"
)

// How a snapshot's image was made.
const (
	MethodReflink = "reflink" // FICLONE: shares the source's extents
	MethodCopy    = "copy"    // read and written, holes and zero blocks kept as holes
)

// snapshotInfo is the info.json of a snapshot.
type snapshotInfo struct {
	Created   time.Time `json:"created"`
	Size      int64     `json:"size"`
	BlockSize int64     `json:"blockSize"`
	Method    string    `json:"method"`
	// Device is set when the source was a block device.
	Device bool `json:"device,omitempty"`
}

// TakeSnapshot implements localpe.Backend: it snapshots the image and
// hashes its blocks.
//
// A copy reads the live image while it may be written to: like any
// snapshot without help from the writer, it is crash-consistent at best.
// A reflink is atomic.
func (d *disks) TakeSnapshot(ctx context.Context, name string) (string, error) {
	kind, err := d.kindOf(name)
	if err != nil {
		return "", err
	}
	return d.Snapshots().Take(ctx, name, func(ctx context.Context, dir string, now time.Time) (any, error) {
		info, err := buildSnapshot(ctx, d.Path(name), kind, dir)
		info.Created = now
		return info, err
	})
}

// buildSnapshot writes the image and blocks files of a snapshot of src
// into dir.
func buildSnapshot(ctx context.Context, src string, kind sourceKind, dir string) (snapshotInfo, error) {
	in, err := os.Open(src)
	if err != nil {
		return snapshotInfo{}, err
	}
	defer in.Close()
	out, err := os.OpenFile(filepath.Join(dir, imageFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return snapshotInfo{}, err
	}
	defer out.Close()
	sums, err := os.OpenFile(filepath.Join(dir, blocksFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return snapshotInfo{}, err
	}
	defer sums.Close()

	info := snapshotInfo{BlockSize: blockSize, Method: MethodCopy, Device: kind == kindDevice}
	p := pass{holes: true}
	if kind == kindFile && reflink(out, in) == nil {
		// Hash the clone, not the source: the clone is what the snapshot
		// holds, and it cannot change while we read it.
		info.Method = MethodReflink
		p.src = out
	} else {
		p.src, p.dst, p.holes = in, out, kind == kindFile
	}
	if info.Size, err = imageSize(p.src, kind); err != nil {
		return snapshotInfo{}, err
	}
	p.size = info.Size
	if p.dst != nil {
		// Truncate to 0 first: whatever a failed clone may have left must
		// not survive as data where the copy leaves holes.
		if err := out.Truncate(0); err != nil {
			return snapshotInfo{}, err
		}
		if err := out.Truncate(info.Size); err != nil {
			return snapshotInfo{}, err
		}
	}

	w := bufio.NewWriterSize(sums, 1<<20)
	if _, err := w.Write(blocksHeaderInfo{blockSize: blockSize, imageSize: info.Size}.marshal()); err != nil {
		return snapshotInfo{}, err
	}
	p.sums = w
	if err := p.run(ctx); err != nil {
		return snapshotInfo{}, err
	}
	if err := w.Flush(); err != nil {
		return snapshotInfo{}, err
	}
	for _, f := range []*os.File{out, sums} {
		if err := f.Sync(); err != nil {
			return snapshotInfo{}, err
		}
		if err := f.Close(); err != nil {
			return snapshotInfo{}, err
		}
	}
	return info, nil
}

// readSnapshotInfo reads info.json of a snapshot; ErrNotFound (wrapped) if
// the snapshot does not exist.
func (d *disks) readSnapshotInfo(name, snap string) (snapshotInfo, error) {
	var info snapshotInfo
	err := d.Snapshots().ReadInfo(name, snap, &info)
	return info, err
}

// SnapshotInfo implements localpe.Backend.
func (d *disks) SnapshotInfo(name, snap string) (localpe.Snapshot, error) {
	si, err := d.readSnapshotInfo(name, snap)
	return localpe.Snapshot{Created: si.Created, Size: si.Size}, err
}

// openSnapshotImage opens the image of a snapshot.
func (d *disks) openSnapshotImage(name, snap string) (*snapshotImage, error) {
	if _, err := d.readSnapshotInfo(name, snap); err != nil {
		return nil, err
	}
	im, err := openImage(filepath.Join(d.Snapshots().Path(name, snap), imageFile), kindFile)
	if err != nil {
		return nil, err
	}
	return &snapshotImage{image: im, disks: d, name: name, snap: snap}, nil
}

// changedSince compares the blocks files of two snapshots of PE name.
func (d *disks) changedSince(ctx context.Context, name, snap, base string) ([]pe.Extent, error) {
	// Accept a full ID too, as callers often hold one.
	if id, err := pe.ParseID(base); err == nil {
		if id.Type() != Type || id.Name() != name || !id.HasSnapshot() {
			return nil, fmt.Errorf("base %s is not a snapshot of %s:%s: %w", base, Type, name, pe.ErrNotFound)
		}
		base = id.Snapshot()
	}
	if _, err := d.readSnapshotInfo(name, base); err != nil {
		return nil, err
	}
	cur, err := openBlocks(filepath.Join(d.Snapshots().Path(name, snap), blocksFile))
	if err != nil {
		return nil, err
	}
	defer cur.Close()
	old, err := openBlocks(filepath.Join(d.Snapshots().Path(name, base), blocksFile))
	if err != nil {
		return nil, err
	}
	defer old.Close()
	return changedBlocks(ctx, cur, old)
}
