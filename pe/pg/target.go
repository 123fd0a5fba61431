package pg

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Parameters of a copy to pg (pe.Params["pg"]).
const (
	ParamToTime = "toTime" // RFC 3339
	ParamToLSN  = "toLSN"  // e.g. 0/3000060
)

// parseTarget reads the recovery target of a copy's parameters.
func parseTarget(params pe.Params) (RecoveryTarget, error) {
	var t RecoveryTarget
	for k, v := range params[Type] {
		s, ok := v.(string)
		if !ok {
			return t, fmt.Errorf("parameter %s.%s: want a string, got %T: %w", Type, k, v, pe.ErrNotSupported)
		}
		switch k {
		case ParamToTime:
			tm, err := parseTime(s)
			if err != nil {
				return t, fmt.Errorf("parameter %s.%s %q: %w: %w", Type, k, s, err, pe.ErrNotSupported)
			}
			t.Time = tm
		case ParamToLSN:
			lsn, err := pglogrepl.ParseLSN(s)
			if err != nil {
				return t, fmt.Errorf("parameter %s.%s %q: want a WAL location (0/3000060): %w", Type, k, s, pe.ErrNotSupported)
			}
			t.LSN = lsn.String()
		default:
			return t, fmt.Errorf("unknown parameter %s.%s (known: %s, %s): %w", Type, k, ParamToTime, ParamToLSN, pe.ErrNotSupported)
		}
	}
	if !t.Time.IsZero() && t.LSN != "" {
		return t, fmt.Errorf("give %s or %s, not both: %w", ParamToTime, ParamToLSN, pe.ErrNotSupported)
	}
	return t, nil
}

// timeLayouts are the forms of a recovery target time taken: RFC 3339,
// and those psql prints for a timestamptz (`select now()`), which is where
// a DBA copies a time from.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
}

// parseTime reads a recovery target time. One without a time zone is
// refused rather than guessed: the server's zone and the appliance's
// may differ by hours.
func parseTime(s string) (time.Time, error) {
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"} {
		if _, err := time.Parse(layout, s); err == nil {
			return time.Time{}, errors.New("a time without a time zone: add one (Z, +00 or +01:00)")
		}
	}
	return time.Time{}, errors.New("want an RFC 3339 time (2006-01-02T15:04:05Z) or one as psql prints it (2006-01-02 15:04:05.999999+00)")
}

// recovery is a planned point-in-time recovery.
type recovery struct {
	wal    WALSource
	target RecoveryTarget
}

// planRecovery checks that target (if any) can be reached from the base
// backup bk with the archived WAL of its cluster: not before the backup's
// end, not after the newest archived WAL.
func (m *TypeManager) planRecovery(ctx context.Context, src pe.ProtectedEntity, bk backupFacts, target RecoveryTarget) (*recovery, error) {
	if target.IsZero() {
		return nil, nil
	}
	oldest, newest, err := m.wal.Range(ctx, bk.cluster, bk.systemID)
	if err != nil {
		return nil, fmt.Errorf("point-in-time restore: %w: %w", err, pe.ErrNotSupported)
	}
	from := bk.md.BackupEnd
	if first := m.oldestBackupEnd(bk.cluster); !first.IsZero() && (from.IsZero() || first.Before(from)) {
		from = first
	}
	if from.IsZero() {
		from = oldest
	}
	span := fmt.Sprintf("cluster %s can be restored to points from %s (end of its oldest base backup) to %s (newest archived WAL)",
		bk.cluster, from.UTC().Format(time.RFC3339Nano), newest.UTC().Format(time.RFC3339Nano))
	if !target.Time.IsZero() {
		if end := bk.md.BackupEnd; !end.IsZero() && target.Time.Before(end) {
			return nil, fmt.Errorf("recovery target %s is before the end of base backup %s (%s); %s: %w",
				target.Time.UTC().Format(time.RFC3339Nano), src.ID(), end.UTC().Format(time.RFC3339Nano), span, pe.ErrNotSupported)
		}
		if target.Time.After(newest) {
			return nil, fmt.Errorf("recovery target %s is after the newest archived WAL; %s: %w",
				target.Time.UTC().Format(time.RFC3339Nano), span, pe.ErrNotSupported)
		}
	}
	if target.LSN != "" && bk.md.StopLSN != "" {
		want, _ := pglogrepl.ParseLSN(target.LSN)
		stop, err := pglogrepl.ParseLSN(bk.md.StopLSN)
		if err == nil && want < stop {
			return nil, fmt.Errorf("recovery target %s is before the end of base backup %s (%s): %w", target.LSN, src.ID(), bk.md.StopLSN, pe.ErrNotSupported)
		}
	}
	return &recovery{wal: m.wal, target: target}, nil
}

// oldestBackupEnd is when the oldest base backup of cluster kept here
// ended; zero if there is none.
func (m *TypeManager) oldestBackupEnd(cluster string) time.Time {
	snaps, err := m.snaps.List(cluster)
	if err != nil || len(snaps) == 0 {
		return time.Time{}
	}
	var ends []time.Time
	for _, s := range snaps {
		if si, err := m.readSnapshotInfo(cluster, s); err == nil && !si.Metadata.BackupEnd.IsZero() {
			ends = append(ends, si.Metadata.BackupEnd)
		}
	}
	if len(ends) == 0 {
		return time.Time{}
	}
	sort.Slice(ends, func(i, j int) bool { return ends[i].Before(ends[j]) })
	return ends[0]
}
