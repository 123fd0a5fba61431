package pg

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// maxMetadata bounds what a restore reads of its source's metadata.
const maxMetadata = 4 << 20

// maxSocketPath is what a Unix socket's path may take (sun_path, with
// PostgreSQL's ".s.PGSQL.<port>" appended).
const maxSocketPath = 100

// Copy implements pe.TypeManager: it restores src, a base backup (a pg
// snapshot, or one read back from a zip or a repository), as a cluster
// under the root and starts its server.
//
//   - pe.CreateNew: a new cluster named <source name>-<8 hex digits>;
//   - pe.Create: the cluster opts.TargetName(src.ID()), which must not
//     exist (pe.ErrExists), configured or restored;
//   - pe.Update: replaces the data of that restored cluster, which must
//     not run; its port stays.
//
// Params["pg"]["toTime"] (RFC 3339) or ["toLSN"] make it a point-in-time
// restore with WAL from the manager's WALSource. A failed restore leaves
// nothing (an update: the old data directory).
func (m *TypeManager) Copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (pe.ProtectedEntity, error) {
	name, err := m.copy(ctx, src, opts)
	if err != nil {
		return nil, fmt.Errorf("copy %s (%s): %w", src.ID(), opts.Mode, err)
	}
	id, err := pe.NewID(Type, name)
	if err != nil {
		return nil, err
	}
	return &entity{m: m, id: id}, nil
}

func (m *TypeManager) copy(ctx context.Context, src pe.ProtectedEntity, opts pe.CopyOptions) (string, error) {
	target, err := parseTarget(opts.Params)
	if err != nil {
		return "", err
	}
	acct, err := lookupAccount(m.cfg.Restore.OSUser)
	if err != nil {
		return "", err
	}
	switch opts.Mode {
	case pe.CreateNew:
		return m.create(ctx, src, pe.NewLocalName(src.ID().Name(), Type, false), target, acct, opts)
	case pe.Create:
		name := opts.TargetName(src.ID())
		if !pe.IsLocalName(name) {
			return "", fmt.Errorf("pg:%s: not a usable cluster name (no \"/\", not hidden): %w", name, pe.ErrNotSupported)
		}
		if _, ok := m.cluster(name); ok {
			return "", fmt.Errorf("pg:%s is a configured cluster: %w", name, pe.ErrExists)
		}
		return m.create(ctx, src, name, target, acct, opts)
	case pe.Update:
		name := opts.TargetName(src.ID())
		if _, ok := m.cluster(name); ok {
			return "", fmt.Errorf("pg:%s is a configured cluster; astrolabe updates only clusters it restored (restore to a new one): %w", name, pe.ErrNotSupported)
		}
		return name, m.update(ctx, src, name, target, acct, opts)
	}
	return "", fmt.Errorf("copy mode %v: %w", opts.Mode, pe.ErrNotSupported)
}

// create restores src as the new cluster name.
func (m *TypeManager) create(ctx context.Context, src pe.ProtectedEntity, name string, target RecoveryTarget, acct account, opts pe.CopyOptions) (string, error) {
	dir := m.clusterDir(name)
	if _, err := os.Lstat(dir); err == nil {
		return "", fmt.Errorf("pg:%s: %w", name, pe.ErrExists)
	}
	tmp, err := os.MkdirTemp(filepath.Join(m.root, clustersDir), ".restore-")
	if err != nil {
		return "", err
	}
	defer removeLogged(tmp) // once placed, nothing is left here
	// root's, searchable by the account (which reaches data/ through it)
	if err := os.Chmod(tmp, 0o711); err != nil {
		return "", err
	}
	bk, rec, err := m.extractPlanned(ctx, src, filepath.Join(tmp, dataDir), target, opts)
	if err != nil {
		return "", err
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return "", fmt.Errorf("pg:%s: %w", name, pe.ErrExists)
		}
		return "", fmt.Errorf("place restored cluster %s: %w", dir, err)
	}
	rc := restoredCluster{
		Host: m.cfg.Restore.ListenAddress, Cluster: bk.cluster, From: src.ID().String(),
		SystemID: fmt.Sprint(bk.systemID), Databases: bk.md.Databases,
	}
	if rc.Port, err = m.reservePort(dir, rc); err == nil {
		err = m.startRestored(ctx, dir, rc, src, bk, rec, acct)
	}
	if err != nil {
		if serr := m.serverIn(dir, acct).stop(context.Background()); serr != nil {
			err = fmt.Errorf("%w (and stopping the restored server failed: %v)", err, serr)
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = fmt.Errorf("%w (and removing %s failed: %v)", err, dir, rerr)
		}
		return "", err
	}
	return name, nil
}

// update replaces the data directory of the stopped restored cluster name
// with src's and starts it; if that fails, the old data directory is put
// back.
func (m *TypeManager) update(ctx context.Context, src pe.ProtectedEntity, name string, target RecoveryTarget, acct account, opts pe.CopyOptions) error {
	rc, err := m.readRestored(name)
	if err != nil {
		return err
	}
	dir := m.clusterDir(name)
	srv := m.serverIn(dir, acct)
	if up, err := srv.running(ctx); err != nil {
		return err
	} else if up {
		return fmt.Errorf("pg:%s runs (port %d): stop its server first (runuser -u %s -- %s/pg_ctl stop -D %s): %w", name, rc.Port, srv.acct.name, srv.binDir, srv.dataDir, pe.ErrExists)
	}
	// The cluster keeps its port: one taken meanwhile fails now, not
	// after the extraction.
	if !portFree(rc.Host, rc.Port) {
		return fmt.Errorf("port %d of pg:%s is taken by another process: free it, or restore to a new cluster: %w", rc.Port, name, pe.ErrExists)
	}
	fresh, err := os.MkdirTemp(dir, ".data-new-")
	if err != nil {
		return err
	}
	defer removeLogged(fresh)
	bk, rec, err := m.extractPlanned(ctx, src, fresh, target, opts)
	if err != nil {
		return err
	}
	// Checked again: it may have been started meanwhile.
	if up, err := srv.running(ctx); err != nil || up {
		return errors.Join(err, fmt.Errorf("pg:%s was started during the restore: %w", name, pe.ErrExists))
	}
	old := filepath.Join(dir, ".data-old")
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("remove the data directory left by an earlier update: %w", err)
	}
	if err := os.Rename(srv.dataDir, old); err != nil {
		return fmt.Errorf("move the old data directory aside: %w", err)
	}
	if err := os.Rename(fresh, srv.dataDir); err != nil {
		return errors.Join(err, os.Rename(old, srv.dataDir))
	}
	next := restoredCluster{Host: rc.Host, Port: rc.Port, Cluster: bk.cluster, From: src.ID().String(),
		SystemID: fmt.Sprint(bk.systemID), Databases: bk.md.Databases}
	if err := m.startRestored(ctx, dir, next, src, bk, rec, acct); err != nil {
		err = errors.Join(err, srv.stop(context.Background()))
		failed := filepath.Join(dir, ".data-failed")
		if rerr := errors.Join(os.Rename(srv.dataDir, failed), os.Rename(old, srv.dataDir), os.RemoveAll(failed), writeRestored(dir, rc)); rerr != nil {
			err = fmt.Errorf("%w (and putting the old data directory back failed: %v)", err, rerr)
		}
		return err
	}
	return os.RemoveAll(old)
}

// reservePort records the restored cluster rc in dir with the first port
// of the range that no restored cluster has and that is free now.
func (m *TypeManager) reservePort(dir string, rc restoredCluster) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	port, err := m.freePort()
	if err != nil {
		return 0, err
	}
	rc.Port = port
	return port, writeRestored(dir, rc)
}

// freePort is the first port of the range that no restored cluster has
// and that is free now. The caller holds m.mu.
func (m *TypeManager) freePort() (int, error) {
	taken := map[int]bool{}
	entries, _ := os.ReadDir(filepath.Join(m.root, clustersDir))
	for _, e := range entries {
		if rc, err := m.readRestored(e.Name()); err == nil {
			taken[rc.Port] = true
		}
	}
	r := m.cfg.Restore
	for p := r.PortMin; p <= r.PortMax; p++ {
		if !taken[p] && portFree(r.ListenAddress, p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port in the restore range %d-%d: %w", r.PortMin, r.PortMax, pe.ErrLimit)
}

// startRestored configures the placed cluster in dir as rc says,
// records it, starts its server and waits until it has promoted onto a
// new timeline: a clone never writes WAL under its origin's segment
// names. Its data directory, root's until now, is handed over to acct
// once root has written its configuration.
func (m *TypeManager) startRestored(ctx context.Context, dir string, rc restoredCluster, src pe.ProtectedEntity, bk backupFacts, rec *recovery, acct account) error {
	srv := m.serverIn(dir, acct)
	rc.Restored = time.Now().UTC()
	settings := []string{
		"port = " + fmt.Sprint(rc.Port),
		"listen_addresses = " + confQuote(m.cfg.Restore.ListenAddress),
		// The restored cluster must not archive into its origin's archive.
		"archive_mode = off",
		"archive_command = ''",
		"primary_conninfo = ''",
		"recovery_target_action = 'promote'",
	}
	sockets := filepath.Join(dir, socketDir)
	if len(filepath.Join(sockets, ".s.PGSQL.65535")) <= maxSocketPath {
		rc.SocketDir = sockets
		settings = append(settings, "unix_socket_directories = "+confQuote(sockets))
		if err := ownedDirAt(sockets, acct); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	} else {
		settings = append(settings, "unix_socket_directories = ''")
	}
	if err := ownedFileAt(srv.logFile, acct); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if rec != nil {
		stage := filepath.Join(dir, walDir)
		if err := os.RemoveAll(stage); err != nil {
			return err
		}
		if err := ownedDirAt(stage, acct); err != nil {
			return err
		}
		cmd, err := rec.wal.Stage(ctx, bk.cluster, bk.systemID, bk.timeline, bk.startLSN, rec.target, stage)
		if err != nil {
			return fmt.Errorf("point-in-time restore: %w", err)
		}
		settings = append(settings, "restore_command = "+confQuote(cmd))
		if !rec.target.Time.IsZero() {
			rc.RecoveryTo = rec.target.Time.UTC().Format(time.RFC3339Nano)
			settings = append(settings, "recovery_target_time = "+confQuote(rec.target.Time.UTC().Format("2006-01-02 15:04:05.999999")+"+00"))
		} else {
			rc.RecoveryTo = rec.target.LSN
			settings = append(settings, "recovery_target_lsn = "+confQuote(rec.target.LSN))
		}
	} else {
		// The WAL of the base backup only: the end of the backup, then
		// promotion.
		settings = append(settings, "restore_command = 'false'", "recovery_target = 'immediate'")
	}
	if err := writeConfig(srv.dataDir, src, settings, pe.Untrusted(src)); err != nil {
		return fmt.Errorf("configure the restored server: %w", err)
	}
	if err := createFile(filepath.Join(srv.dataDir, "recovery.signal"), nil); err != nil {
		return err
	}
	if err := handOver(srv.dataDir, acct); err != nil {
		return err
	}
	if err := writeRestored(dir, rc); err != nil {
		return err
	}
	if _, err := runAs(ctx, acct, "/usr/bin", "test", "-r", filepath.Join(srv.dataDir, "PG_VERSION")); err != nil {
		return fmt.Errorf("account %s cannot reach %s: make %s and its parents searchable by it (chmod o+x)", acct.name, srv.dataDir, m.root)
	}
	if err := srv.start(ctx); err != nil {
		return err
	}
	if err := srv.waitPromoted(ctx); err != nil {
		return err
	}
	// Promoted, the server reads no more archived WAL: what was staged
	// for it is only taking room.
	removeLogged(filepath.Join(dir, walDir))
	return nil
}

// removeLogged removes path, logging a failure (for cleanups whose
// failure leaves only room taken).
func removeLogged(path string) {
	if err := os.RemoveAll(path); err != nil {
		slog.Warn("left behind", "path", path, "err", err)
	}
}

// confQuote quotes s as a postgresql.conf string.
func confQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// backupFacts are what a restore learns of the base backup it restores.
type backupFacts struct {
	cluster  string
	systemID uint64
	timeline uint32
	startLSN string
	md       Metadata // zero if the source had none
}

// extractPlanned writes src's base backup into the new data directory
// dir and plans its recovery to target. The recovery is planned before the
// cluster appears, so that a target out of range is refused with nothing
// made; where src's metadata says enough, before anything is written.
func (m *TypeManager) extractPlanned(ctx context.Context, src pe.ProtectedEntity, dir string, target RecoveryTarget, opts pe.CopyOptions) (backupFacts, *recovery, error) {
	bk := backupFacts{cluster: src.ID().Name()}
	md, err := sourceMetadata(ctx, src)
	if err != nil {
		return bk, nil, err
	}
	if md != nil {
		bk.md = *md
		if md.Cluster != "" {
			bk.cluster = md.Cluster
		}
		if id, err := strconv.ParseUint(md.SystemID, 10, 64); err == nil {
			bk.systemID = id
			if _, err := m.planRecovery(ctx, src, bk, target); err != nil {
				return bk, nil, err
			}
		}
	}
	if err := m.extract(ctx, src, dir, opts, &bk); err != nil {
		return bk, nil, err
	}
	rec, err := m.planRecovery(ctx, src, bk, target)
	return bk, rec, err
}

// extract writes src's base backup into the new data directory dir
// (root's, private) and reads what it needs to know of it into bk.
func (m *TypeManager) extract(ctx context.Context, src pe.ProtectedEntity, dir string, opts pe.CopyOptions, bk *backupFacts) error {
	img, err := src.Data(ctx)
	if err != nil {
		return fmt.Errorf("%w: data of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	defer img.Close()
	opts.StartProgress(img.Size())
	r := bufio.NewReaderSize(opts.Reader(ctx, pe.NewReader(img)), 1<<20)
	if err := untar(ctx, r, dir, opts.ExpansionLimit(src)); err != nil {
		return err
	}
	label, err := os.ReadFile(filepath.Join(dir, "backup_label"))
	if err != nil {
		return fmt.Errorf("%w: %s is not a PostgreSQL base backup (no backup_label)", pe.ErrInvalidSource, src.ID())
	}
	if bk.startLSN, bk.timeline, err = parseBackupLabel(string(label)); err != nil {
		return fmt.Errorf("%w: %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	if bk.systemID, err = readSystemID(filepath.Join(dir, "global", "pg_control")); err != nil {
		return fmt.Errorf("%w: %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	return nil
}

// sourceMetadata reads src's Metadata; nil if it has none.
func sourceMetadata(ctx context.Context, src pe.ProtectedEntity) (*Metadata, error) {
	rc, err := src.Metadata(ctx)
	if errors.Is(err, pe.ErrNoMetadata) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: metadata of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	defer rc.Close()
	var md Metadata
	if err := json.NewDecoder(io.LimitReader(rc, maxMetadata)).Decode(&md); err != nil {
		return nil, fmt.Errorf("%w: metadata of %s: %w", pe.ErrInvalidSource, src.ID(), err)
	}
	return &md, nil
}

// parseBackupLabel reads the start of WAL replay and its timeline from a
// backup_label file.
func parseBackupLabel(label string) (startLSN string, timeline uint32, err error) {
	for _, line := range strings.Split(label, "\n") {
		if v, ok := strings.CutPrefix(line, "START WAL LOCATION: "); ok {
			startLSN, _, _ = strings.Cut(v, " ")
		}
		if v, ok := strings.CutPrefix(line, "START TIMELINE: "); ok {
			if _, err := fmt.Sscan(v, &timeline); err != nil {
				return "", 0, fmt.Errorf("backup_label: START TIMELINE %q", v)
			}
		}
	}
	if startLSN == "" || timeline == 0 {
		return "", 0, errors.New("backup_label: no START WAL LOCATION or START TIMELINE")
	}
	return startLSN, timeline, nil
}

// readSystemID reads the system identifier, the first field of pg_control.
func readSystemID(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("no pg_control: %w", err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, fmt.Errorf("pg_control: %w", err)
	}
	// pg_control is in the server's byte order; PostgreSQL runs
	// little-endian here.
	var id uint64
	for i := 7; i >= 0; i-- {
		id = id<<8 | uint64(b[i])
	}
	return id, nil
}
