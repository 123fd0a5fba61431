package pg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// connectTimeout bounds the setting up of a connection.
const connectTimeout = 15 * time.Second

// tarTrailer ends a tar archive: since PostgreSQL 15 the server sends its
// archives without it (the client is expected to add it).
var tarTrailer = make([]byte, 1024)

// backupResult is what the server tells of a base backup besides its
// archive.
type backupResult struct {
	SystemID    uint64
	Timeline    uint32
	StartLSN    pglogrepl.LSN
	EndLSN      pglogrepl.LSN
	Version     string
	Tablespaces []string // locations of tablespaces outside the data directory
}

// connect opens a connection to cl; replication opens a physical
// replication connection (walsender).
func connect(ctx context.Context, cl Cluster, replication bool) (*pgconn.PgConn, error) {
	pw, err := cl.password()
	if err != nil {
		return nil, err
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s",
		quoteConnValue(cl.Host), cl.Port, quoteConnValue(cl.User), quoteConnValue(cl.DBName), quoteConnValue(cl.SSLMode)))
	if err != nil {
		return nil, fmt.Errorf("cluster %s: connection settings: %w", cl.Name, err)
	}
	cfg.Password = pw
	if cfg.ConnectTimeout == 0 {
		// An unreachable host fails a snapshot or an info in seconds,
		// not after the system's TCP timeout.
		cfg.ConnectTimeout = connectTimeout
	}
	if replication {
		cfg.RuntimeParams["replication"] = "true"
	}
	cfg.RuntimeParams["application_name"] = "astrolabe"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to cluster %s (%s:%d as %s): %w", cl.Name, cl.Host, cl.Port, cl.User, err)
	}
	return conn, nil
}

// quoteConnValue quotes v for a libpq key/value connection string.
func quoteConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// baseBackup streams a base backup of the data directory of the cluster
// conn (a replication connection) is connected to into w, a tar archive
// holding the WAL that makes it consistent. A temporary replication slot
// keeps that WAL from being recycled while the backup runs.
func baseBackup(ctx context.Context, conn *pgconn.PgConn, label string, w io.Writer) (backupResult, error) {
	var res backupResult
	res.Version = conn.ParameterStatus("server_version")
	if major, _ := strconv.Atoi(strings.SplitN(res.Version, ".", 2)[0]); major < 15 {
		return res, fmt.Errorf("server version %s: base backups need PostgreSQL 15 or later", res.Version)
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return res, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if res.SystemID, err = strconv.ParseUint(sys.SystemID, 10, 64); err != nil {
		return res, fmt.Errorf("IDENTIFY_SYSTEM: system identifier %q: %w", sys.SystemID, err)
	}
	if err := reserveWAL(ctx, conn); err != nil {
		// Without slots (max_replication_slots = 0) the backup still
		// works unless the WAL it needs is recycled meanwhile, which
		// the server then reports.
		slog.Warn("base backup without a replication slot", "err", err)
	}
	sql := "BASE_BACKUP (LABEL '" + strings.ReplaceAll(label, "'", "''") + "', CHECKPOINT 'fast', WAL, WAIT false, MANIFEST 'no')"
	conn.Frontend().SendQuery(&pgproto3.Query{String: sql})
	if err := conn.Frontend().Flush(); err != nil {
		return res, fmt.Errorf("send BASE_BACKUP: %w", err)
	}
	sets, err := readBackupStream(ctx, conn, w)
	if err != nil {
		return res, err
	}
	if len(sets) != 3 || len(sets[0]) != 1 || len(sets[0][0]) < 2 || len(sets[2]) != 1 || len(sets[2][0]) < 1 {
		return res, fmt.Errorf("BASE_BACKUP: unexpected result sets %q", sets)
	}
	for _, row := range sets[1] {
		if len(row) >= 2 && row[0] != "" {
			res.Tablespaces = append(res.Tablespaces, row[1])
		}
	}
	if res.StartLSN, err = pglogrepl.ParseLSN(sets[0][0][0]); err != nil {
		return res, fmt.Errorf("BASE_BACKUP start: %w", err)
	}
	if res.EndLSN, err = pglogrepl.ParseLSN(sets[2][0][0]); err != nil {
		return res, fmt.Errorf("BASE_BACKUP end: %w", err)
	}
	tli, err := strconv.ParseUint(sets[0][0][1], 10, 32)
	if err != nil {
		return res, fmt.Errorf("BASE_BACKUP timeline %q: %w", sets[0][0][1], err)
	}
	res.Timeline = uint32(tli)
	return res, nil
}

// reserveWAL creates a temporary physical slot that reserves WAL from now
// on, for as long as conn lives.
func reserveWAL(ctx context.Context, conn *pgconn.PgConn) error {
	var r [6]byte
	_, _ = rand.Read(r[:])
	slot := "astrolabe_backup_" + hex.EncodeToString(r[:])
	_, err := conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" TEMPORARY PHYSICAL (RESERVE_WAL)").ReadAll()
	return err
}

// readBackupStream reads the answer to BASE_BACKUP (PostgreSQL 15's
// protocol): a result set with the start position, one with the
// tablespaces, a COPY stream of archives ('n' starts one, 'd' carries its
// bytes, 'p' reports progress), a result set with the end position. The
// base.tar archive goes to w, terminated; an archive of a tablespace
// outside the data directory is refused.
func readBackupStream(ctx context.Context, conn *pgconn.PgConn, w io.Writer) ([][][]string, error) {
	var (
		sets     [][][]string
		rows     [][]string
		archives int
		failed   error
	)
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("connection lost during the base backup (server stopped or unreachable): %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.RowDescription:
			rows = [][]string{}
		case *pgproto3.DataRow:
			row := make([]string, len(msg.Values))
			for i, v := range msg.Values {
				row[i] = string(v)
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			if rows != nil {
				sets, rows = append(sets, rows), nil
			}
		case *pgproto3.CopyOutResponse, *pgproto3.CopyDone, *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		case *pgproto3.CopyData:
			if failed != nil || len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case 'n':
				archives++
				if archives > 1 {
					name, _, _ := strings.Cut(string(msg.Data[1:]), "\x00")
					return nil, fmt.Errorf("base backup: archive %s is a tablespace outside the data directory; such tablespaces are not supported", name)
				}
			case 'd':
				if _, err := w.Write(msg.Data[1:]); err != nil {
					return nil, fmt.Errorf("base backup: write: %w", err)
				}
			}
		case *pgproto3.ErrorResponse:
			failed = pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.ReadyForQuery:
			if failed != nil {
				return nil, fmt.Errorf("base backup: %w", failed)
			}
			if archives != 1 {
				return nil, errors.New("base backup: the server sent no archive")
			}
			if _, err := w.Write(tarTrailer); err != nil {
				return nil, fmt.Errorf("base backup: write: %w", err)
			}
			return sets, nil
		default:
			return nil, fmt.Errorf("base backup: unexpected message %T", msg)
		}
	}
}
