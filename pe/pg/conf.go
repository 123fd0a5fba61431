package pg

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

// hbaConf is the pg_hba.conf of a restored server that brings none of
// its own: passwords (SCRAM) over TCP, the account's own over the socket
// (which only it and root can reach).
const hbaConf = `# Written by astrolabe.
local all all peer
host all all all scram-sha-256
host replication all all scram-sha-256
`

// keptSettings are the settings of an untrusted base backup's
// configuration a restore keeps: sizes and locale, none of which names
// a file, a library, a command or a connection.
var keptSettings = map[string]bool{
	"max_connections": true, "shared_buffers": true, "work_mem": true, "maintenance_work_mem": true,
	"effective_cache_size": true, "max_wal_size": true, "min_wal_size": true,
	"timezone": true, "log_timezone": true, "datestyle": true, "intervalstyle": true,
	"lc_messages": true, "lc_monetary": true, "lc_numeric": true, "lc_time": true,
	"default_text_search_config": true,
}

// confLine is one "name = value" line of postgresql.conf whose value is a
// plain word or number or a quoted string without backslashes.
var confLine = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*('(?:[^'\\\n]|'')*'|[A-Za-z0-9_.+-]+)\s*(?:#.*)?$`)

// maxConf bounds what a restore reads of a backup's configuration file.
const maxConf = 1 << 20

// writeConfig writes the configuration of the restored server in the
// data directory dir (root's still) with astrolabe's settings.
//
// A trusted backup (one of a cluster configured here, taken by this
// appliance) keeps its configuration: it is production's own, with the
// libraries and commands the restored server needs; settings follow
// that make it harmless to its origin. An untrusted one (a zip, an
// upload) could bring a command, a library or a trust rule that would
// run code as the restore account or let anyone in: its configuration is
// replaced by astrolabe's, keeping only keptSettings.
func writeConfig(dir string, src pe.ProtectedEntity, settings []string, untrusted bool) error {
	header := "# restored by astrolabe from " + src.ID().String() + "\n"
	auto := header + strings.Join(settings, "\n") + "\n"
	if err := removeFiles(dir, "standby.signal", "recovery.signal"); err != nil {
		return err
	}
	if !untrusted {
		if err := createMissing(dir, "postgresql.conf", "# The base backup had no postgresql.conf (it was kept outside the data\n# directory); astrolabe's settings are in postgresql.auto.conf.\n"); err != nil {
			return err
		}
		if err := createMissing(dir, "pg_hba.conf", hbaConf); err != nil {
			return err
		}
		if err := createMissing(dir, "pg_ident.conf", ""); err != nil {
			return err
		}
		return appendFile(filepath.Join(dir, "postgresql.auto.conf"), "\n"+auto)
	}
	var kept []string
	for _, name := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		kept = append(kept, safeSettings(filepath.Join(dir, name))...)
	}
	if err := removeFiles(dir, "postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"); err != nil {
		return err
	}
	conf := header + "# The backup came from outside this appliance: of its configuration,\n# only these settings are kept.\n" + strings.Join(kept, "\n") + "\n"
	return errors.Join(
		createFile(filepath.Join(dir, "postgresql.conf"), []byte(conf)),
		createFile(filepath.Join(dir, "pg_hba.conf"), []byte(hbaConf)),
		createFile(filepath.Join(dir, "pg_ident.conf"), nil),
		createFile(filepath.Join(dir, "postgresql.auto.conf"), []byte(auto)))
}

// safeSettings are the lines of the configuration file path that set one
// of keptSettings to a plain value.
func safeSettings(path string) []string {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConf))
	if err != nil {
		return nil
	}
	var kept []string
	for _, line := range strings.Split(string(b), "\n") {
		m := confLine.FindStringSubmatch(line)
		if m != nil && keptSettings[strings.ToLower(m[1])] {
			kept = append(kept, strings.ToLower(m[1])+" = "+m[2])
		}
	}
	return kept
}

func removeFiles(dir string, names ...string) error {
	for _, n := range names {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// createMissing writes the file name of dir where the backup has none:
// Debian's and Ubuntu's clusters keep their configuration in
// /etc/postgresql, outside the data directory and so outside base
// backups.
func createMissing(dir, name, text string) error {
	err := createFile(filepath.Join(dir, name), []byte(text))
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// appendFile appends text to the file path (made if missing), following
// no link.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	return errors.Join(err, f.Close())
}
