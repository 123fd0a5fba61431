package repo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// IndexRepair tells what RepairIndex did.
type IndexRepair struct {
	Damaged  int      // index files that did not open, replaced
	Read     int      // packs indexed anew from their own headers
	Dropped  int      // packs the index listed that are missing
	BadPacks []string // packs whose header does not open: left unindexed
}

// Repaired reports whether RepairIndex changed the index.
func (s IndexRepair) Repaired() bool { return s.Damaged+s.Read+s.Dropped > 0 }

// RepairIndex rebuilds the index as restic's "repair index" does: what
// the index files that open say of packs that exist is kept, every other
// pack is indexed from its own header, and one new index file replaces
// them all. No data is read but pack headers, and none is lost.
func (r *Repository) RepairIndex(ctx context.Context) (IndexRepair, error) {
	var sum IndexRepair
	lock, err := r.lock(ctx, true)
	if err != nil {
		return sum, err
	}
	defer lock.release()
	files, damaged, err := r.readAllIndexFiles(ctx)
	if err != nil {
		return sum, err
	}
	sizes, err := r.listPacks(ctx)
	if err != nil {
		return sum, err
	}
	packs := map[string][]packBlob{}
	dropped := map[string]bool{}
	for _, f := range files {
		for _, p := range f.Packs {
			if _, ok := sizes[p.ID]; !ok {
				dropped[p.ID] = true
				continue
			}
			packs[p.ID] = p.Blobs
		}
	}
	for _, id := range slices.Sorted(maps.Keys(sizes)) {
		if _, ok := packs[id]; ok {
			continue
		}
		if !validID(id) {
			sum.BadPacks = append(sum.BadPacks, id)
			continue
		}
		blobs, err := r.packHeader(ctx, id, sizes[id])
		if err != nil {
			r.log.Warn("pack with a damaged header: not indexed", "pack", id, "err", err)
			sum.BadPacks = append(sum.BadPacks, id)
			continue
		}
		packs[id] = blobs
		sum.Read++
	}
	sum.Damaged, sum.Dropped = len(damaged), len(dropped)
	if !sum.Repaired() {
		return sum, lock.err()
	}
	var f indexFile
	for _, id := range slices.Sorted(maps.Keys(packs)) {
		f.Packs = append(f.Packs, indexPack{ID: id, Blobs: packs[id]})
	}
	// The new index first, then the old go: there is always an index of
	// every pack.
	if err := r.saveJSON(ctx, "index/"+randomName(), f); err != nil {
		return sum, fmt.Errorf("write index: %w", err)
	}
	for _, name := range append(slices.Sorted(maps.Keys(files)), slices.Sorted(maps.Keys(damaged))...) {
		if err := r.be.Remove(ctx, name); err != nil {
			return sum, fmt.Errorf("remove old index file: %w", err)
		}
	}
	return sum, lock.err()
}

// Migrate seals the snapshots written before format 2 again, bound to
// their IDs, and raises the repository to format 2. It returns how many
// it sealed. A snapshot whose objects are not its own (moved, renamed,
// swapped) or are damaged is left as it is and reported: migrating must
// not make a moved snapshot look genuine.
func (r *Repository) Migrate(ctx context.Context) (int, error) {
	lock, err := r.lock(ctx, true)
	if err != nil {
		return 0, err
	}
	defer lock.release()
	if err := r.upgradeConfig(ctx, formatVersion); err != nil {
		return 0, err
	}
	ids, err := r.committedIDs(ctx, pe.ID{})
	if err != nil {
		return 0, err
	}
	n := 0
	var bad []string
	for _, id := range ids {
		idx, si, err := r.loadSnapshot(ctx, id)
		if errors.Is(err, pe.ErrNotFound) {
			continue
		}
		if errors.Is(err, errBadObject) {
			bad = append(bad, err.Error())
			continue
		}
		if err != nil {
			return n, err
		}
		if !si.legacy {
			continue
		}
		if err := r.saveSnapshot(ctx, id, idx, snapshotInfo{Info: si.Info, BackedUp: si.BackedUp}); err != nil {
			return n, fmt.Errorf("migrate %s: %w", id, err)
		}
		n++
	}
	if len(bad) > 0 {
		return n, fmt.Errorf("%d snapshot(s) not migrated (forget them, or put them back where they were): %s", len(bad), strings.Join(bad, "; "))
	}
	return n, lock.err()
}
