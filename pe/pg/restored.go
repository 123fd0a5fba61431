package pg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Files of a restored cluster's directory root/clusters/<name>/.
const (
	recordFile = "cluster.json"
	dataDir    = "data"
	logFile    = "server.log"
	walDir     = "wal" // where WAL for a point-in-time restore is staged
	socketDir  = "socket"
)

// restoredCluster is the cluster.json of a restored cluster.
type restoredCluster struct {
	Host string `json:"host"`
	Port int    `json:"port"`
	// Cluster is the name of the cluster the backup was taken of.
	Cluster    string    `json:"cluster"`
	From       string    `json:"from"` // the snapshot restored
	SystemID   string    `json:"systemIdentifier,omitempty"`
	Databases  []string  `json:"databases,omitempty"`
	RecoveryTo string    `json:"recoveryTarget,omitempty"`
	Restored   time.Time `json:"restored"`
	SocketDir  string    `json:"socketDir,omitempty"`
}

func (rc restoredCluster) details(dir string) map[string]any {
	d := map[string]any{
		"host": rc.Host, "port": rc.Port, "dataDir": filepath.Join(dir, dataDir),
		"cluster": rc.Cluster, "restoredFrom": rc.From, "databases": rc.Databases,
		"log": filepath.Join(dir, logFile),
	}
	if rc.RecoveryTo != "" {
		d["recoveryTarget"] = rc.RecoveryTo
	}
	if rc.SocketDir != "" {
		d["socketDir"] = rc.SocketDir
	}
	return d
}

// clusterDir is the directory of the restored cluster name.
func (m *TypeManager) clusterDir(name string) string {
	return filepath.Join(m.root, clustersDir, name)
}

// readRestored reads the record of the restored cluster name;
// pe.ErrNotFound if there is none.
func (m *TypeManager) readRestored(name string) (restoredCluster, error) {
	var rc restoredCluster
	if !pe.IsLocalName(name) {
		return rc, fmt.Errorf("pg:%s: %w", name, pe.ErrNotFound)
	}
	b, err := os.ReadFile(filepath.Join(m.clusterDir(name), recordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return rc, fmt.Errorf("pg:%s: no such cluster: %w", name, pe.ErrNotFound)
	}
	if err != nil {
		return rc, err
	}
	if err := json.Unmarshal(b, &rc); err != nil {
		return rc, fmt.Errorf("pg:%s: %s: %w", name, recordFile, err)
	}
	return rc, nil
}

// writeRestored records a restored cluster in dir, replacing its record.
func writeRestored(dir string, rc restoredCluster) error {
	b, err := json.MarshalIndent(rc, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, recordFile), 0o644, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// server is the server of the restored cluster name.
func (m *TypeManager) server(name string) (server, error) {
	acct, err := lookupAccount(m.cfg.Restore.OSUser)
	if err != nil {
		return server{}, err
	}
	return m.serverIn(m.clusterDir(name), acct), nil
}

func (m *TypeManager) serverIn(dir string, acct account) server {
	return server{acct: acct, binDir: m.cfg.Restore.BinDir, dataDir: filepath.Join(dir, dataDir), logFile: filepath.Join(dir, logFile)}
}

// removeRestored stops the restored cluster name and removes it.
func (m *TypeManager) removeRestored(ctx context.Context, name string) error {
	if _, err := m.readRestored(name); err != nil {
		return err
	}
	srv, err := m.server(name)
	if err != nil {
		return fmt.Errorf("remove pg:%s: %w", name, err)
	}
	if err := srv.stop(ctx); err != nil {
		return fmt.Errorf("remove pg:%s: stop its server: %w", name, err)
	}
	if err := os.RemoveAll(m.clusterDir(name)); err != nil {
		return fmt.Errorf("remove pg:%s: %w", name, err)
	}
	return nil
}
