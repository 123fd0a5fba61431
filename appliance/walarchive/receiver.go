package walarchive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Receiver archives the WAL of one cluster into a repository.
type Receiver struct {
	repo    *repo.Repository
	cluster Cluster
	log     *slog.Logger
	opts    ReceiverOptions

	mu     sync.Mutex
	status Status
}

// ReceiverOptions tune a Receiver; zero values are the defaults.
type ReceiverOptions struct {
	// StatusInterval is how often the server is told how far the
	// archive is (default 10 s).
	StatusInterval time.Duration
	// PartialEvery is how often the segment being received is stored as
	// a partial one when it grew (default 1 min; negative: only when the
	// receiver stops or the server asks for a reply): it bounds what a
	// restore may lack on a quiet server, where a segment takes long to
	// fill.
	PartialEvery time.Duration
	// Retry is the first wait before connecting again after a failure
	// (default 1 s, doubling up to 1 min).
	Retry time.Duration
}

// Status is what a Receiver reports.
type Status struct {
	Cluster   string `json:"cluster"`
	SystemID  uint64 `json:"systemID,omitempty"`
	Timeline  uint32 `json:"timeline,omitempty"`
	Slot      string `json:"slot"`
	Connected bool   `json:"connected"`
	// ReceivedLSN is the end of the WAL received, ArchivedLSN the end of
	// the complete segments committed, and ServerLSN the server's end of
	// WAL as it last said.
	ReceivedLSN uint64 `json:"receivedLSN,omitempty"`
	ArchivedLSN uint64 `json:"archivedLSN,omitempty"`
	ServerLSN   uint64 `json:"serverLSN,omitempty"`
	// LastArchived is when the last segment was committed.
	LastArchived time.Time `json:"lastArchived,omitzero"`
	Segments     int       `json:"segments"`
	// Gaps are the WAL ranges found lost: not archived and gone from
	// the server (a slot invalidated, or the archive behind the slot).
	Gaps []string `json:"gaps,omitempty"`
	// Error is the last failure, until the next success.
	Error string `json:"error,omitempty"`
}

// NewReceiver returns a Receiver of cluster's WAL into r.
func NewReceiver(r *repo.Repository, c Cluster, log *slog.Logger, opts ReceiverOptions) *Receiver {
	if log == nil {
		log = slog.Default()
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.PartialEvery == 0 {
		opts.PartialEvery = time.Minute
	}
	if opts.Retry <= 0 {
		opts.Retry = time.Second
	}
	return &Receiver{repo: r, cluster: c, log: log.With("cluster", c.Name), opts: opts,
		status: Status{Cluster: c.Name, Slot: SlotName(c.Name)}}
}

// Status returns what the receiver last saw.
func (rc *Receiver) Status() Status {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	s := rc.status
	s.Gaps = append([]string(nil), s.Gaps...)
	return s
}

func (rc *Receiver) update(fn func(s *Status)) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	fn(&rc.status)
}

// Run archives until ctx is done, connecting again after failures. When
// ctx is done it stores what it received of the open segment as a
// partial one before it returns.
func (rc *Receiver) Run(ctx context.Context) {
	wait := rc.opts.Retry
	for ctx.Err() == nil {
		err := rc.stream(ctx)
		rc.update(func(s *Status) { s.Connected = false })
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errTimelineEnded) {
			wait = rc.opts.Retry
			continue
		}
		rc.log.Error("WAL archiving stopped; connecting again", "err", err, "in", wait)
		rc.update(func(s *Status) { s.Error = err.Error() })
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

var errTimelineEnded = errors.New("timeline ended")

// partialTimeout bounds the store of the open segment when a receiver
// stops: a shutdown does not wait longer for a repository that hangs.
const partialTimeout = 30 * time.Second

// session is one replication connection's state.
type session struct {
	rc       *Receiver
	conn     *pgconn.PgConn
	systemID uint64
	timeline uint32
	segSize  uint64

	seg         []byte // the open segment's bytes received
	segStart    uint64
	serverTime  time.Time // of the last byte received
	scan        scanner
	archived    uint64 // the end of the complete segments committed
	partialLen  int    // bytes of the open segment last stored partial
	partialTime time.Time
}

func (rc *Receiver) stream(ctx context.Context) error {
	connStr, err := rc.cluster.connString()
	if err != nil {
		return err
	}
	conn, err := pgconn.Connect(ctx, connStr)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	s := &session{rc: rc, conn: conn}
	start, err := s.prepare(ctx)
	if err != nil {
		return err
	}
	err = s.receive(ctx, start)
	// What arrived of the open segment is kept, whatever ended the
	// stream; the server keeps it too (the slot holds it).
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), partialTimeout)
	defer cancel()
	if perr := s.storePartial(pctx); perr != nil {
		err = errors.Join(err, perr)
	}
	return err
}

// prepare identifies the server, makes sure of the slot and its WAL, and
// returns where streaming starts: the end of the archive, or where the
// slot begins if the archive is behind it (a gap) or empty.
func (s *session) prepare(ctx context.Context) (uint64, error) {
	rc := s.rc
	sys, err := pglogrepl.IdentifySystem(ctx, s.conn)
	if err != nil {
		return 0, fmt.Errorf("identify system: %w", err)
	}
	if s.systemID, err = strconv.ParseUint(sys.SystemID, 10, 64); err != nil {
		return 0, fmt.Errorf("system identifier %q: %w", sys.SystemID, err)
	}
	if s.segSize, err = segmentSize(ctx, s.conn); err != nil {
		return 0, err
	}
	slot := SlotName(rc.cluster.Name)
	restart, restartTL, found, err := readSlot(ctx, s.conn, slot)
	if err != nil {
		return 0, err
	}
	if found && restart == 0 {
		// Invalidated (max_slot_wal_keep_size): the server removed WAL
		// that was not archived. A new slot archives from now on.
		rc.log.Error("replication slot was invalidated: WAL not yet archived is lost; creating it again", "slot", slot)
		if _, err := s.conn.Exec(ctx, "DROP_REPLICATION_SLOT "+slot).ReadAll(); err != nil {
			return 0, fmt.Errorf("drop invalidated slot %s: %w", slot, err)
		}
		found = false
	}
	if !found {
		if _, err := s.conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" PHYSICAL RESERVE_WAL").ReadAll(); err != nil {
			return 0, fmt.Errorf("create slot %s: %w", slot, err)
		}
		if restart, restartTL, _, err = readSlot(ctx, s.conn, slot); err != nil {
			return 0, err
		}
		rc.log.Info("created replication slot", "slot", slot, "restartLSN", FormatLSN(restart))
	}
	if restartTL == 0 {
		restartTL = uint32(sys.Timeline)
	}
	history, err := s.storeHistory(ctx, uint32(sys.Timeline))
	if err != nil {
		return 0, err
	}
	slotStart := restart - restart%s.segSize
	start := slotStart
	files, err := rc.repo.WALFiles(ctx, rc.cluster.Name, s.systemID)
	if err != nil {
		return 0, err
	}
	if end, ok := archiveEnd(files, history, uint32(sys.Timeline), s.segSize); ok {
		start = end
		if end < slotStart {
			gap := fmt.Sprintf("%s to %s", FormatLSN(end), FormatLSN(slotStart))
			rc.log.Error("WAL gap: segments were removed from the server before they were archived", "from", segmentName(restartTL, end, s.segSize), "to", FormatLSN(slotStart))
			rc.update(func(st *Status) { st.Gaps = append(st.Gaps, gap) })
			start = slotStart
		}
	}
	s.timeline = timelineOf(history, uint32(sys.Timeline), start, s.segSize)
	s.archived = start
	rc.update(func(st *Status) {
		st.SystemID, st.Timeline, st.Connected, st.ArchivedLSN, st.ServerLSN = s.systemID, s.timeline, true, start, uint64(sys.XLogPos)
		st.Error = ""
	})
	return start, nil
}

// archiveEnd is the end of the newest complete segment archived on the
// server's history: the segments of timeline current and of its
// ancestors up to where each ended. Segments of other histories (an old
// primary's beyond the point a standby was promoted at) do not count:
// the server's own WAL there is not archived.
func archiveEnd(files []repo.WALFile, history []switchPoint, current uint32, segSize uint64) (uint64, bool) {
	var end uint64
	found := false
	for _, f := range files {
		if f.IsHistory() || f.Partial {
			continue
		}
		tl, start, err := parseSegmentName(f.Name, segSize)
		if err != nil || tl != timelineOf(history, current, start, segSize) {
			continue
		}
		if start+segSize > end {
			end, found = start+segSize, true
		}
	}
	return end, found
}

// storeHistory archives the history files of timeline tl (and so of its
// ancestors, which it lists) and returns its switch points.
func (s *session) storeHistory(ctx context.Context, tl uint32) ([]switchPoint, error) {
	if tl <= 1 {
		return nil, nil
	}
	h, err := pglogrepl.TimelineHistory(ctx, s.conn, int32(tl))
	if err != nil {
		return nil, fmt.Errorf("timeline %d history: %w", tl, err)
	}
	if _, err := s.rc.repo.PutWAL(ctx, repo.WALFile{Cluster: s.rc.cluster.Name, SystemID: s.systemID, Name: historyName(tl)}, h.Content); err != nil {
		return nil, err
	}
	return parseHistory(h.Content)
}

func segmentSize(ctx context.Context, conn *pgconn.PgConn) (uint64, error) {
	res, err := conn.Exec(ctx, "SHOW wal_segment_size").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		return 0, fmt.Errorf("SHOW wal_segment_size: %v", err)
	}
	v := strings.TrimSpace(string(res[0].Rows[0][0]))
	mult := uint64(1)
	for suffix, m := range map[string]uint64{"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30} {
		if n, ok := strings.CutSuffix(v, suffix); ok {
			v, mult = n, m
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	size := n * mult
	if err != nil || size < 1<<20 || size > 1<<30 || size&(size-1) != 0 {
		return 0, fmt.Errorf("wal_segment_size %q: not understood", res[0].Rows[0][0])
	}
	return size, nil
}

// readSlot reads a physical slot: its restart LSN (0 if invalidated) and
// timeline, and whether it exists.
func readSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (restart uint64, tl uint32, found bool, err error) {
	res, err := conn.Exec(ctx, "READ_REPLICATION_SLOT "+slot).ReadAll()
	if err != nil {
		return 0, 0, false, fmt.Errorf("read slot %s (PostgreSQL 15 or later): %w", slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 3 {
		return 0, 0, false, fmt.Errorf("read slot %s: unexpected reply", slot)
	}
	row := res[0].Rows[0]
	if row[0] == nil {
		return 0, 0, false, nil
	}
	if string(row[0]) != "physical" {
		return 0, 0, false, fmt.Errorf("slot %s is a %s slot, not a physical one", slot, row[0])
	}
	if row[1] == nil {
		return 0, 0, true, nil
	}
	if restart, err = ParseLSN(string(row[1])); err != nil {
		return 0, 0, false, err
	}
	if row[2] != nil {
		t, _ := strconv.ParseUint(string(row[2]), 10, 32)
		tl = uint32(t)
	}
	return restart, tl, true, nil
}

// receive streams from start (a segment's start) and stores each
// segment as it completes.
func (s *session) receive(ctx context.Context, start uint64) error {
	rc := s.rc
	slot := SlotName(rc.cluster.Name)
	err := pglogrepl.StartReplication(ctx, s.conn, slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{Timeline: int32(s.timeline), Mode: pglogrepl.PhysicalReplication})
	if err != nil {
		return fmt.Errorf("start replication at %s on timeline %d: %w", FormatLSN(start), s.timeline, err)
	}
	rc.log.Info("archiving WAL", "slot", slot, "from", segmentName(s.timeline, start, s.segSize), "system", s.systemID)
	s.segStart, s.seg = start, make([]byte, 0, s.segSize)
	s.partialTime = time.Now()
	nextStatus := time.Now()
	for {
		if !time.Now().Before(nextStatus) {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
			nextStatus = time.Now().Add(rc.opts.StatusInterval)
		}
		if rc.opts.PartialEvery > 0 && time.Since(s.partialTime) >= rc.opts.PartialEvery {
			if err := s.storePartial(ctx); err != nil {
				return err
			}
		}
		wait := nextStatus
		if rc.opts.PartialEvery > 0 {
			wait = minTime(wait, s.partialTime.Add(rc.opts.PartialEvery))
		}
		rctx, cancel := context.WithDeadline(ctx, wait)
		msg, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return err
				}
				rc.update(func(st *Status) { st.ServerLSN = uint64(k.ServerWALEnd) })
				if k.ReplyRequested {
					// A walsender shutting down asks, and exits only once
					// the reported flush position reaches what it sent:
					// the open segment is committed as partial first, so
					// that the report may cover it.
					if err := s.storePartial(ctx); err != nil {
						return err
					}
					nextStatus = time.Now()
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return err
				}
				if err := s.add(ctx, x); err != nil {
					return err
				}
			}
		case *pgproto3.CopyDone:
			// The timeline ended (its server was promoted elsewhere, or
			// this one was): the rest comes from the next one.
			if _, err := pglogrepl.SendStandbyCopyDone(ctx, s.conn); err != nil {
				return fmt.Errorf("end of timeline %d: %w", s.timeline, err)
			}
			rc.log.Info("timeline ended", "timeline", s.timeline, "at", FormatLSN(s.segStart+uint64(len(s.seg))))
			return errTimelineEnded
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// add takes WAL data into the open segment, storing each one filled.
func (s *session) add(ctx context.Context, x pglogrepl.XLogData) error {
	at := uint64(x.WALStart)
	if want := s.segStart + uint64(len(s.seg)); at != want {
		return fmt.Errorf("WAL data at %s, expected %s", FormatLSN(at), FormatLSN(want))
	}
	s.serverTime = x.ServerTime
	data := x.WALData
	for len(data) > 0 {
		n := min(int(s.segSize)-len(s.seg), len(data))
		s.seg = append(s.seg, data[:n]...)
		data = data[n:]
		if len(s.seg) == int(s.segSize) {
			if err := s.storeSegment(ctx); err != nil {
				return err
			}
		}
	}
	s.rc.update(func(st *Status) {
		st.ReceivedLSN = s.segStart + uint64(len(s.seg))
		st.ServerLSN = max(st.ServerLSN, uint64(x.ServerWALEnd))
	})
	return nil
}

func (s *session) file(partial bool, span commitSpan) repo.WALFile {
	return repo.WALFile{
		Cluster: s.rc.cluster.Name, SystemID: s.systemID, Name: segmentName(s.timeline, s.segStart, s.segSize),
		Partial: partial, StartLSN: s.segStart, EndLSN: s.segStart + uint64(len(s.seg)),
		FirstCommit: span.first, LastCommit: span.last, ServerTime: s.serverTime,
	}
}

// storeSegment commits the filled segment, then tells the server: the
// slot may release it only now.
func (s *session) storeSegment(ctx context.Context) error {
	span := s.scan.segment(s.seg, s.segStart)
	f := s.file(false, span)
	if _, err := s.rc.repo.PutWAL(ctx, f, s.seg); err != nil {
		return err
	}
	s.archived = f.EndLSN
	s.segStart, s.seg, s.partialLen = f.EndLSN, s.seg[:0], 0
	s.rc.update(func(st *Status) {
		st.ArchivedLSN, st.LastArchived = s.archived, time.Now()
		st.Segments++
	})
	return s.sendStatus(ctx)
}

// storePartial stores the open segment as a partial one if it grew since
// it last was.
func (s *session) storePartial(ctx context.Context) error {
	s.partialTime = time.Now()
	if len(s.seg) == 0 || len(s.seg) <= s.partialLen {
		return nil
	}
	scan := s.scan.clone()
	f := s.file(true, scan.segment(s.seg, s.segStart))
	if _, err := s.rc.repo.PutWAL(ctx, f, s.seg); err != nil {
		return err
	}
	s.partialLen = len(s.seg)
	return nil
}

// committed is the end of the WAL committed to the repository: the
// complete segments, and the open one's start stored partial. The server
// keeps the whole segment holding the slot's restart position, so a
// receiver starting that segment again still finds it.
func (s *session) committed() uint64 {
	if s.partialLen > 0 {
		return s.segStart + uint64(s.partialLen)
	}
	return s.archived
}

func (s *session) sendStatus(ctx context.Context) error {
	received := s.segStart + uint64(len(s.seg))
	flushed := s.committed()
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(received),
		WALFlushPosition: pglogrepl.LSN(flushed),
		WALApplyPosition: pglogrepl.LSN(flushed),
	})
	if err != nil {
		return fmt.Errorf("standby status update: %w", err)
	}
	return nil
}

func (s *scanner) clone() scanner {
	c := *s
	c.rec = append([]byte(nil), s.rec...)
	return c
}

// ServerPosition asks a cluster for its system identifier and the end of
// its WAL (flushed), over a replication connection as a receiver's.
func ServerPosition(ctx context.Context, c Cluster) (systemID, lsn uint64, err error) {
	connStr, err := c.connString()
	if err != nil {
		return 0, 0, err
	}
	conn, err := pgconn.Connect(ctx, connStr)
	if err != nil {
		return 0, 0, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return 0, 0, fmt.Errorf("cluster %s: identify system: %w", c.Name, err)
	}
	if systemID, err = strconv.ParseUint(sys.SystemID, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("cluster %s: system identifier %q: %w", c.Name, sys.SystemID, err)
	}
	return systemID, uint64(sys.XLogPos), nil
}

// ErrSlotActive is returned by DropSlot while a receiver streams from
// the slot.
var ErrSlotActive = errors.New("a receiver is streaming from it (stop astrolabe serve first)")

// DropSlot drops the replication slot of a cluster's receiver, so that
// the server stops keeping WAL for an archive that is given up (found
// reports whether there was one). WAL the server then removes is not
// archived: a receiver started again later reports it as a gap.
func DropSlot(ctx context.Context, c Cluster) (found bool, err error) {
	connStr, err := c.connString()
	if err != nil {
		return false, err
	}
	conn, err := pgconn.Connect(ctx, connStr)
	if err != nil {
		return false, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	slot := SlotName(c.Name)
	if _, _, found, err = readSlot(ctx, conn, slot); err != nil || !found {
		return false, err
	}
	if _, err := conn.Exec(ctx, "DROP_REPLICATION_SLOT "+slot).ReadAll(); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use
			return true, fmt.Errorf("drop slot %s of cluster %s: %w", slot, c.Name, ErrSlotActive)
		}
		return true, fmt.Errorf("drop slot %s of cluster %s: %w", slot, c.Name, err)
	}
	return true, nil
}
