package jobs

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// legacyJobs is a jobs.json of faults that loaded before the jobs API
// refused them (%[1]s is the repository, %[2]s its password file).
const legacyJobs = `[
 {"name": "v", "kind": "verify", "schedule": "@daily", "pes": ["fs:*"], "repository": {"location": %[1]q, "passwordFile": %[2]q}},
 {"name": "p", "kind": "prune", "schedule": "0 3 * * *", "keep": {"Daily": 7}, "readData": true, "repository": {"location": %[1]q, "passwordFile": %[2]q}},
 {"name": "b", "kind": "backup", "schedule": "@weekly", "pes": ["fs:sample"], "readData": true, "repository": {"Location": %[1]q, "passwordFile": %[2]q}},
 {"name": "r", "kind": "replicate", "schedule": "@daily", "from": {"location": "%[1]s/", "passwordfile": %[2]q}, "repository": {"location": %[1]q, "passwordFile": %[2]q}}
]`

// TestLegacyJobsFile: a jobs.json that loaded at 2a8283f still loads,
// each fault the API now refuses logged as a warning naming the job and
// the field; a key in another case is taken for its field, as
// encoding/json did. Create and Update of the same jobs are refused.
func TestLegacyJobsFile(t *testing.T) {
	f := newFixture(t)
	writeFile(t, filepath.Join(f.dir, File), fmt.Sprintf(legacyJobs, f.repoDir, f.passFile))
	js, ok, err := Load(f.dir)
	if err != nil || !ok {
		t.Fatalf("legacy jobs.json not loaded: %v %v", ok, err)
	}
	if len(js) != 4 || js[1].Keep.Daily != 7 || js[2].Repository.Location != f.repoDir || js[3].From.PasswordFile != f.passFile {
		t.Fatalf("legacy jobs read as %+v", js)
	}
	var log syncBuffer
	s, err := New(Options{Jobs: js, ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	faults := map[string][]string{
		"v": {"pes: a verify job checks the whole repository"},
		"p": {`unknown field \"keep.Daily\": did you mean \"keep.daily\"?`, "readData: only for verify jobs, not prune"},
		"b": {`repository.Location`, "readData: only for verify jobs, not backup"},
		"r": {`from.passwordfile`, "from.location", "the job's repository itself"},
	}
	logLines := strings.Split(log.String(), "\n")
	for name, want := range faults {
		for _, w := range want {
			if !anyLine(logLines, "level=WARN", "job="+name+" ", w) {
				t.Errorf("no warning of job %s: %s in\n%s", name, w, log.String())
			}
		}
	}
	// The API refuses each of them, as created or as updated.
	for _, j := range js {
		if err := s.Update(j.clone()); !errors.Is(err, ErrInvalid) {
			t.Errorf("update of legacy job %s: %v", j.Name, err)
		}
		c := j.clone()
		c.Name += "2"
		if err := s.Create(c); !errors.Is(err, ErrInvalid) {
			t.Errorf("create of legacy job %s: %v", c.Name, err)
		}
	}
	if _, err := DecodeJob([]byte(`{"name": "p", "kind": "prune", "schedule": "@daily", "repository": {"location": "/r"}, "keep": {"Daily": 7}}`)); !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), `unknown field "keep.Daily": did you mean "keep.daily"?`) {
		t.Errorf("API decode of a key in another case: %v", err)
	}
	// Still fatal at load, as at 2a8283f.
	for _, c := range []struct{ json, want string }{
		{`[{"name": "a", "kind": "verify", "schedule": "61 * * * *", "repository": {"location": "/r"}}]`, `schedule "61 * * * *"`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily"}]`, "repository.location: missing"},
		{`[{"name": "a", "kind": "dance", "schedule": "@daily", "repository": {"location": "/r"}}]`, `kind "dance"`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", "repository": {"location": "/r"}, "keep": {"dialy": 1}}]`, `unknown field "keep.dialy"`},
		{`[{"name": "a", "kind": "verify", "schedule": "@daily", "repository": {"location": "/r"}, "color": 1}]`, `unknown field "color"`},
	} {
		if _, err := Parse([]byte(c.json)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.json, err, c.want)
		}
	}
}

func anyLine(lines []string, subs ...string) bool {
	for _, l := range lines {
		if containsAll(l, subs) {
			return true
		}
	}
	return false
}

// TestStoredPEsNeedNoType: prune and replicate jobs select the PEs of
// their repository's snapshots, so a type not configured here (vm:* at
// a second site without vSphere) is neither refused nor warned of.
func TestStoredPEsNeedNoType(t *testing.T) {
	f := newFixture(t)
	var log syncBuffer
	prune := f.job(t, `{"name": "pv", "kind": "prune", "schedule": "@daily", "pes": ["vm:*"], "keep": {"daily": 7},
	  "repository": {"location": %[1]q, "passwordFile": %[2]q}}`)
	s, err := New(Options{Jobs: []*Job{prune}, ConfigDir: f.dir, Manager: f.m, Tasks: f.tm, Now: f.clock.Now,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(log.String(), "not configured") {
		t.Errorf("warning of a prune job's stored PEs:\n%s", log.String())
	}
	if err := s.Update(prune.clone()); err != nil {
		t.Errorf("update of a prune job of vm:*: %v", err)
	}
	rep := f.job(t, `{"name": "rv", "kind": "replicate", "schedule": "@daily", "pes": ["vm:*", "ivd:*"],
	  "repository": {"location": %[1]q, "passwordFile": %[2]q}, "from": {"location": "/elsewhere"}}`)
	if err := s.Create(rep); err != nil {
		t.Errorf("create of a replicate job of vm:*: %v", err)
	}
}

// TestRepositoryKey: one repository spelled two ways is one key; two
// S3 key spaces are two, as ParseS3URL reads them.
func TestRepositoryKey(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"r/", "./r", true},
		{"/x/../r", "/r", true},
		{"s3://h.example/bkt/p", "s3://h.example/bkt/p/", true},
		{"s3://HOST.example:9000/bkt", "s3://host.example:9000/bkt", true},
		{"s3://bucket/p", "s3://s3.amazonaws.com/bucket/p", true},
		{"s3://h.example/bkt//p", "s3://h.example/bkt/p", false},
		{"s3://h.example/bkt/x/../p", "s3://h.example/bkt/p", false},
		{"s3://h.example/bkt/p", "s3+http://h.example/bkt/p", false},
		{"s3://h.example/bkt/P", "s3://h.example/bkt/p", false},
	} {
		if ka, kb := repositoryKey(c.a), repositoryKey(c.b); (ka == kb) != c.same {
			t.Errorf("%s (%s) and %s (%s): same %v, want %v", c.a, ka, c.b, kb, ka == kb, c.same)
		}
	}
}
