package pg

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// Defaults of the restore settings.
const (
	DefaultOSUser = "postgres"
	DefaultBinDir = "/usr/lib/postgresql/15/bin"
	DefaultSSL    = "prefer"
	DefaultDB     = "postgres"
)

// Config is pes/pg.pe.json.
type Config struct {
	// Root holds the snapshots (base backups) and the restored clusters.
	Root     string    `json:"root"`
	Clusters []Cluster `json:"clusters"`
	Restore  Restore   `json:"restore"`
}

// Cluster is one PostgreSQL cluster the appliance backs up: the PE
// pg:<Name>. User needs only the REPLICATION attribute (and, to describe
// the cluster, pg_read_all_settings and pg_read_all_stats).
type Cluster struct {
	Name         string `json:"name"`
	Host         string `json:"host"`
	Port         int    `json:"port"`
	User         string `json:"user"`
	Password     string `json:"password,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty"`
	SSLMode      string `json:"sslmode,omitempty"`
	DBName       string `json:"dbname,omitempty"`
	// WALArchiveDir is where the cluster's own archive_command copies
	// its WAL segments ("cp %p /dir/%f"); point-in-time restores read
	// them from there (DirWAL) unless the manager has another WALSource.
	WALArchiveDir string `json:"walArchiveDir,omitempty"`
}

// Restore says how restored clusters run.
type Restore struct {
	// OSUser owns the restored data directories and runs their servers.
	OSUser string `json:"osUser,omitempty"`
	// PortMin and PortMax bound the ports restored servers listen on.
	PortMin int `json:"portMin,omitempty"`
	PortMax int `json:"portMax,omitempty"`
	// ListenAddress is what restored servers listen on (127.0.0.1).
	ListenAddress string `json:"listenAddress,omitempty"`
	BinDir        string `json:"binDir,omitempty"`
}

// ParseConfig reads pg.pe.json strictly (unknown fields are refused);
// relative paths are taken against dir, the configuration directory.
func ParseConfig(dir string, raw []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("parse: %w", err)
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Root)
	for i := range c.Clusters {
		abs(&c.Clusters[i].PasswordFile)
		abs(&c.Clusters[i].WALArchiveDir)
	}
	c.setDefaults()
	return c, c.validate()
}

func (c *Config) setDefaults() {
	r := &c.Restore
	if r.OSUser == "" {
		r.OSUser = DefaultOSUser
	}
	if r.BinDir == "" {
		r.BinDir = DefaultBinDir
	}
	if r.ListenAddress == "" {
		r.ListenAddress = "127.0.0.1"
	}
	if r.PortMin == 0 && r.PortMax == 0 {
		// Below Linux's ephemeral ports (32768-60999), which any outgoing
		// connection may hold while a restored server is stopped.
		r.PortMin, r.PortMax = 15432, 15531
	}
	for i := range c.Clusters {
		cl := &c.Clusters[i]
		if cl.Port == 0 {
			cl.Port = 5432
		}
		if cl.SSLMode == "" {
			cl.SSLMode = DefaultSSL
		}
		if cl.DBName == "" {
			cl.DBName = DefaultDB
		}
	}
}

func (c *Config) validate() error {
	if c.Root == "" {
		return fmt.Errorf(`missing "root"`)
	}
	if c.Restore.PortMin < 1 || c.Restore.PortMax > 65535 || c.Restore.PortMin > c.Restore.PortMax {
		return fmt.Errorf("restore port range %d-%d: want 1 <= portMin <= portMax <= 65535", c.Restore.PortMin, c.Restore.PortMax)
	}
	seen := map[string]bool{}
	for _, cl := range c.Clusters {
		if !pe.IsLocalName(cl.Name) {
			return fmt.Errorf("cluster name %q: want a PE ID part without \"/\", not starting with \".\"", cl.Name)
		}
		if seen[cl.Name] {
			return fmt.Errorf("cluster %q configured twice", cl.Name)
		}
		seen[cl.Name] = true
		if cl.Host == "" || cl.User == "" {
			return fmt.Errorf("cluster %q: host and user are required", cl.Name)
		}
		if cl.Password != "" && cl.PasswordFile != "" {
			return fmt.Errorf("cluster %q: give password or passwordFile, not both", cl.Name)
		}
		if cl.Port < 1 || cl.Port > 65535 {
			return fmt.Errorf("cluster %q: port %d out of range", cl.Name, cl.Port)
		}
		switch cl.SSLMode {
		case "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
		default:
			return fmt.Errorf("cluster %q: sslmode %q: want disable, allow, prefer, require, verify-ca or verify-full", cl.Name, cl.SSLMode)
		}
	}
	return nil
}

// ReadPassword returns the cluster's password, read from its file if so
// configured (the first line): for other users of pg.pe.json (the WAL
// archiver).
func (cl Cluster) ReadPassword() (string, error) { return cl.password() }

// password returns the cluster's password, read from its file if so
// configured (the first line).
func (cl Cluster) password() (string, error) {
	if cl.PasswordFile == "" {
		return cl.Password, nil
	}
	b, err := os.ReadFile(cl.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("cluster %s: password file: %w", cl.Name, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(line, "\r"), nil
}
