package pg

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/pe"
)

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	good := `{"root": "pg", "clusters": [{"name": "main", "host": "db1", "user": "backup", "passwordFile": "pw", "walArchiveDir": "/archive"}]}`
	c, err := ParseConfig(dir, []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Clusters[0]
	if c.Root != filepath.Join(dir, "pg") || cl.PasswordFile != filepath.Join(dir, "pw") || cl.Port != 5432 ||
		cl.SSLMode != "prefer" || cl.DBName != "postgres" || c.Restore.OSUser != "postgres" || c.Restore.BinDir != DefaultBinDir {
		t.Errorf("parsed %+v", c)
	}
	os.WriteFile(filepath.Join(dir, "pw"), []byte("secret\nignored\n"), 0o600)
	if pw, err := cl.password(); err != nil || pw != "secret" {
		t.Errorf("password from file: %q, %v", pw, err)
	}
	for name, tc := range map[string]struct{ json, want string }{
		"unknown field":  {`{"root": "/r", "rooot": 1}`, `unknown field "rooot"`},
		"no root":        {`{"clusters": []}`, `missing "root"`},
		"bad name":       {`{"root": "/r", "clusters": [{"name": "a/b", "host": "h", "user": "u"}]}`, `cluster name "a/b"`},
		"twice":          {`{"root": "/r", "clusters": [{"name": "a", "host": "h", "user": "u"}, {"name": "a", "host": "h", "user": "u"}]}`, "configured twice"},
		"both passwords": {`{"root": "/r", "clusters": [{"name": "a", "host": "h", "user": "u", "password": "p", "passwordFile": "f"}]}`, "not both"},
		"sslmode":        {`{"root": "/r", "clusters": [{"name": "a", "host": "h", "user": "u", "sslmode": "maybe"}]}`, `sslmode "maybe"`},
		"ports":          {`{"root": "/r", "restore": {"portMin": 6000, "portMax": 5000}}`, "port range 6000-5000"},
		"no host":        {`{"root": "/r", "clusters": [{"name": "a", "user": "u"}]}`, "host and user are required"},
	} {
		if _, err := ParseConfig(dir, []byte(tc.json)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, tc.want)
		}
	}
}

// TestParseTargetTimes: a recovery target time is taken in RFC 3339 and
// as psql prints a timestamptz; one without a zone is refused, not
// guessed.
func TestParseTargetTimes(t *testing.T) {
	want := time.Date(2026, 11, 30, 6, 39, 53, 470722000, time.UTC)
	for _, s := range []string{"2026-11-30T06:39:53.470722Z", "2026-11-30 06:39:53.470722+00", "2026-11-30 07:39:53.470722+01:00", "2026-11-30T07:39:53.470722+01:00"} {
		tg, err := parseTarget(pe.Params{Type: {ParamToTime: s}})
		if err != nil || !tg.Time.Equal(want) {
			t.Errorf("%q: %v %v, want %v", s, tg.Time, err, want)
		}
	}
	for s, msg := range map[string]string{
		"2026-11-30 06:39:53": "without a time zone",
		"2026-11-30T06:39:53": "without a time zone",
		"yesterday":           "as psql prints it",
	} {
		if _, err := parseTarget(pe.Params{Type: {ParamToTime: s}}); err == nil || !strings.Contains(err.Error(), msg) || !errors.Is(err, pe.ErrNotSupported) {
			t.Errorf("%q: %v, want an error saying %q", s, err, msg)
		}
	}
}
