package pg

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A walArchiveDir with "%" in its name gives a restore_command that
// PostgreSQL expands back to that name: its % doubled.
func TestDirWALPercent(t *testing.T) {
	archive := filepath.Join(t.TempDir(), "wal%f")
	if err := os.Mkdir(archive, 0o700); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, walLongHeader{Magic: 0xD110, Timeline: 1, SystemID: 42, SegSize: 16 << 20, BlockSz: 8192})
	for _, seg := range []string{"000000010000000000000001", "000000010000000000000002"} {
		if err := os.WriteFile(filepath.Join(archive, seg), b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd, err := DirWAL{Dirs: map[string]string{"main": archive}}.Stage(context.Background(), "main", 42, 1, "0/1000028", RecoveryTarget{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := "'" + strings.ReplaceAll(archive, "%", "%%") + "'/%f %p"; !strings.HasSuffix(cmd, want) {
		t.Errorf("restore_command %q, want it to end with %q", cmd, want)
	}
}

// Settings that may hold a password or run a command stay out of a
// snapshot's metadata.
func TestSecretSettings(t *testing.T) {
	for name, secret := range map[string]bool{
		"primary_conninfo": true, "ssl_passphrase_command": true, "archive_command": true, "restore_command": true,
		"work_mem": false, "shared_buffers": false, "timezone": false,
	} {
		if secretSetting(name) != secret {
			t.Errorf("secretSetting(%s) = %v, want %v", name, !secret, secret)
		}
	}
}
