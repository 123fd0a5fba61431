// Package walarchive archives the WAL of PostgreSQL clusters into the
// repository and gives point-in-time restores the segments they replay.
//
// A Receiver per cluster streams WAL over the replication protocol from
// a physical replication slot (astrolabe_<name>) and stores each
// complete segment in the repository; the slot is told a segment is
// flushed only once the repository has committed it, so the server
// keeps every byte not yet archived. A Source stages the segments a
// restore needs into a directory the restored server reads with a plain
// cp restore_command.
package walarchive

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe/pg"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// Cluster is a PostgreSQL cluster whose WAL is archived, as the pg PE's
// configuration (pes/pg.pe.json) names it.
type Cluster struct {
	pg.Cluster
}

// ConfigFile is the pg PE's configuration file in a config directory.
const ConfigFile = "pes/pg.pe.json"

// LoadClusters reads the clusters of <configDir>/pes/pg.pe.json as the
// pg PE does (strictly); none if the file is absent.
func LoadClusters(configDir string) ([]Cluster, error) {
	path := filepath.Join(configDir, ConfigFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cfg, err := pg.ParseConfig(configDir, b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := make([]Cluster, 0, len(cfg.Clusters))
	for i, c := range cfg.Clusters {
		if err := repo.ValidClusterName(c.Name); err != nil {
			return nil, fmt.Errorf("%s: cluster %d: %w", path, i+1, err)
		}
		out = append(out, Cluster{c})
	}
	return out, nil
}

// connString is the replication connection's libpq key/value string.
func (c Cluster) connString() (string, error) {
	pw, err := c.ReadPassword()
	if err != nil {
		return "", err
	}
	host, port := c.Host, c.Port
	if host == "" {
		host = "localhost"
	}
	if port == 0 {
		port = 5432
	}
	kv := []string{"host=" + quote(host), "port=" + strconv.Itoa(port), "user=" + quote(c.User), "replication=true", "application_name=astrolabe_wal"}
	if pw != "" {
		kv = append(kv, "password="+quote(pw))
	}
	if c.SSLMode != "" {
		kv = append(kv, "sslmode="+quote(c.SSLMode))
	}
	return strings.Join(kv, " "), nil
}

func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// SlotName is the replication slot of a cluster's receiver: slot names
// take lower-case letters, digits and underscores only.
func SlotName(cluster string) string {
	var b strings.Builder
	b.WriteString("astrolabe_")
	for _, r := range strings.ToLower(cluster) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}
