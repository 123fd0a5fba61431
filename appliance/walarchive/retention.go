package walarchive

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/pg"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// OldestBackupSegment is the first WAL segment the oldest base backup of
// cluster (system systemID) in r replays from: the archive's segments
// before it serve no restore from r. found is false if r has no base
// backup of it.
func OldestBackupSegment(ctx context.Context, r *repo.Repository, cluster string, systemID uint64) (segment string, found bool, err error) {
	id, err := pe.NewID(pg.Type, cluster)
	if err != nil {
		return "", false, err
	}
	snaps, err := r.Snapshots(ctx, id)
	if err != nil {
		return "", false, err
	}
	a, err := Source{Repo: r}.load(ctx, cluster, systemID)
	if err != nil {
		return "", false, err
	}
	for _, s := range snaps {
		md, err := backupMetadata(ctx, r, s.ID)
		if err != nil {
			return "", false, err
		}
		if md.SystemID != strconv.FormatUint(systemID, 10) {
			continue
		}
		start, err := ParseLSN(md.StartLSN)
		if err != nil {
			return "", false, fmt.Errorf("base backup %s: %w", s.ID, err)
		}
		name := segmentName(md.Timeline, start, a.segSize)
		if !found || name[8:] < segment[8:] {
			segment, found = name, true
		}
	}
	return segment, found, nil
}

func backupMetadata(ctx context.Context, r *repo.Repository, id pe.ID) (pg.Metadata, error) {
	var md pg.Metadata
	p, err := r.OpenSnapshot(ctx, id)
	if err != nil {
		return md, err
	}
	rd, err := p.Metadata(ctx)
	if err != nil {
		return md, fmt.Errorf("base backup %s: %w", id, err)
	}
	defer rd.Close()
	if err := json.NewDecoder(io.LimitReader(rd, 16<<20)).Decode(&md); err != nil {
		return md, fmt.Errorf("base backup %s: metadata: %w", id, err)
	}
	return md, nil
}
