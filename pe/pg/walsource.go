package pg

import (
	"context"
	"time"
)

// RecoveryTarget is how far a point-in-time restore replays WAL.
type RecoveryTarget struct {
	Time time.Time
	LSN  string
} // one of them set

// IsZero reports whether no target is set: a restore then stops at the end
// of the base backup (the first consistent point).
func (t RecoveryTarget) IsZero() bool { return t.Time.IsZero() && t.LSN == "" }

// WALSource gives restores the archived WAL of a cluster.
type WALSource interface {
	// Range reports the oldest and newest points the archive of cluster (identified by its
	// system identifier) covers.
	Range(ctx context.Context, cluster string, systemID uint64) (oldest, newest time.Time, err error)
	// Stage makes the segments a replay from startLSN on timeline to target needs readable in
	// dir (owned by the server's account) and returns the restore_command the server runs;
	// a gap in the archive before target is an error naming the missing segment.
	Stage(ctx context.Context, cluster string, systemID uint64, timeline uint32, startLSN string, target RecoveryTarget, dir string) (restoreCommand string, err error)
}

// clusterWAL reads the WAL of the clusters with an archive directory of
// their own from there, that of the others from other.
type clusterWAL struct {
	dirs  DirWAL
	other WALSource
}

func (w clusterWAL) source(cluster string) WALSource {
	if _, ok := w.dirs.Dirs[cluster]; ok {
		return w.dirs
	}
	return w.other
}

func (w clusterWAL) Range(ctx context.Context, cluster string, systemID uint64) (time.Time, time.Time, error) {
	return w.source(cluster).Range(ctx, cluster, systemID)
}

func (w clusterWAL) Stage(ctx context.Context, cluster string, systemID uint64, timeline uint32, startLSN string, target RecoveryTarget, dir string) (string, error) {
	return w.source(cluster).Stage(ctx, cluster, systemID, timeline, startLSN, target, dir)
}
