// Package jobs runs the appliance's scheduled jobs: back up PEs, prune a
// repository by a retention policy, verify it, replicate it to another.
// The jobs are defined in jobs.json in the configuration directory; each
// run is a task of appliance/tasks, and its result is kept in a history
// file beside it, which also tells the scheduler after a restart which
// runs were missed.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/internal/calendar"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
)

// File is the name of the jobs file in the configuration directory.
const File = "jobs.json"

// Kinds of job.
const (
	Backup    = "backup"
	Prune     = "prune"
	Verify    = "verify"
	Replicate = "replicate"
)

// Job is one entry of jobs.json.
type Job struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Schedule string `json:"schedule"` // cron (5 fields, @daily...) or systemd calendar (Mon..Fri 02:30)
	// PEs are the PEs a backup job backs up, and those a prune or
	// replicate job works on (all if none): PE IDs, or "type:*" for
	// every PE of a type.
	PEs        []string   `json:"pes,omitempty"`
	Repository Repository `json:"repository"`
	// Keep is a prune job's retention policy.
	Keep *Keep `json:"keep,omitempty"`
	// From is the repository a replicate job copies from.
	From *Repository `json:"from,omitempty"`
	// ReadData makes a verify job read every pack whole (check
	// --read-data); without it, ReadDataSubset or ReadDataNew only the
	// structure is checked.
	ReadData bool `json:"readData,omitempty"`
	// ReadDataSubset makes a verify job read a part of the packs whole:
	// "n/t", "x%" or a number, as check --read-data-subset.
	ReadDataSubset string `json:"readDataSubset,omitempty"`
	// ReadDataNew makes a verify job read the packs this appliance has
	// not read whole before (check --read-data-new).
	ReadDataNew bool `json:"readDataNew,omitempty"`

	schedule calendar.Schedule
	policy   repo.Policy
	// warnings are what Create and Update refuse and jobs.json was
	// allowed before: such a job loads, and New logs them.
	warnings []string
}

// Repository is where a job's repository is and how it is opened.
type Repository struct {
	Location     string `json:"location"` // a directory, s3:// or s3+http://
	PasswordFile string `json:"passwordFile,omitempty"`
	// S3Profile names a profile of the AWS shared credentials file
	// (S3CredentialsFile, else AWS_SHARED_CREDENTIALS_FILE or
	// ~/.aws/credentials) with this repository's keys: the two sites of
	// a replicate job may need different ones. Without it the keys are
	// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
	S3Profile         string `json:"s3Profile,omitempty"`
	S3CredentialsFile string `json:"s3CredentialsFile,omitempty"`
}

// Keep is a retention policy as restic's forget --keep-* options.
type Keep struct {
	Last    int    `json:"last,omitempty"`
	Hourly  int    `json:"hourly,omitempty"`
	Daily   int    `json:"daily,omitempty"`
	Weekly  int    `json:"weekly,omitempty"`
	Monthly int    `json:"monthly,omitempty"`
	Yearly  int    `json:"yearly,omitempty"`
	Within  string `json:"within,omitempty"` // e.g. 7d, 1y6m
}

// Load reads the jobs of the configuration directory dir; ok is false if
// it has no jobs file.
func Load(dir string) (jobs []*Job, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, File))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	jobs, err = Parse(b)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", filepath.Join(dir, File), err)
	}
	return jobs, true, nil
}

// Parse reads and validates a jobs file's content. What older versions
// loaded and Create now refuses (see strictErrors) loads, the job's
// warnings saying so.
func Parse(b []byte) ([]*Job, error) {
	// Each job decoded alone, so that an error names it.
	var raws []json.RawMessage
	if err := decodeStrict(b, &raws); err != nil {
		return nil, fmt.Errorf("want a JSON list of jobs: %w", plainJSONError(err, "a JSON list of jobs"))
	}
	jobs := make([]*Job, len(raws))
	seen := map[string]bool{}
	for i, raw := range raws {
		j, miscased, err := decodeJobKeys(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", jobLabel(raw, i), err)
		}
		jobs[i] = j
		if err := j.validate(); err != nil {
			if j.Name == "" {
				return nil, fmt.Errorf("job %d: %w", i+1, err)
			}
			return nil, fmt.Errorf("job %q: %w", j.Name, err)
		}
		if seen[j.Name] {
			return nil, fmt.Errorf("job %q: name: defined twice", j.Name)
		}
		seen[j.Name] = true
		for _, err := range append(miscased, j.strictErrors()...) {
			j.warnings = append(j.warnings, err.Error())
		}
	}
	return jobs, nil
}

func (j *Job) validate() error {
	if !validName(j.Name) {
		return fmt.Errorf("name %q: want 1 to %d letters, digits, '.', '_' or '-', not starting with '.'", j.Name, maxName)
	}
	var err error
	if j.schedule, err = calendar.ParseSchedule(j.Schedule); err != nil {
		return fmt.Errorf("schedule %q: %w", j.Schedule, err)
	}
	if j.Repository.Location == "" {
		return errors.New("repository.location: missing")
	}
	for _, s := range j.PEs {
		if _, err := parseSelector(s); err != nil {
			return fmt.Errorf("pes: %w", err)
		}
	}
	switch j.Kind {
	case Backup:
		if len(j.PEs) == 0 {
			return errors.New("pes: a backup job needs PEs to back up")
		}
	case Prune:
		if j.Keep == nil {
			return errors.New("keep: a prune job needs a retention policy")
		}
		if j.policy, err = j.Keep.policy(); err != nil {
			return fmt.Errorf("keep: %w", err)
		}
	case Verify:
		if j.ReadDataSubset != "" {
			if _, err := repo.ParseSubset(j.ReadDataSubset); err != nil {
				return fmt.Errorf("readDataSubset %w", err)
			}
		}
		if j.ReadData && (j.ReadDataSubset != "" || j.ReadDataNew) {
			return errors.New("readData: it reads every pack; readDataSubset and readDataNew read some")
		}
	case Replicate:
		if j.From == nil || j.From.Location == "" {
			return errors.New("from.location: a replicate job needs the repository it copies from")
		}
	default:
		return fmt.Errorf("kind %q: want backup, prune, verify or replicate", j.Kind)
	}
	if j.Kind != Prune && j.Keep != nil {
		return fmt.Errorf("keep: only for prune jobs, not %s", j.Kind)
	}
	if j.Kind != Replicate && j.From != nil {
		return fmt.Errorf("from: only for replicate jobs, not %s", j.Kind)
	}
	return nil
}

// strictErrors are the faults of a valid job that Create and Update
// refuse: fields its runs ignore, and a replicate that can only fail.
// jobs.json of older versions may hold them, so there they are warnings.
func (j *Job) strictErrors() []error {
	var errs []error
	if j.Kind == Replicate && repositoryKey(j.From.Location) == repositoryKey(j.Repository.Location) {
		errs = append(errs, fmt.Errorf("from.location %q: the job's repository itself (a replicate job copies from another)", j.From.Location))
	}
	if j.Kind != Verify {
		for _, f := range []struct {
			name string
			set  bool
		}{{"readData", j.ReadData}, {"readDataSubset", j.ReadDataSubset != ""}, {"readDataNew", j.ReadDataNew}} {
			if f.set {
				errs = append(errs, fmt.Errorf("%s: only for verify jobs, not %s", f.name, j.Kind))
			}
		}
	} else if len(j.PEs) > 0 {
		errs = append(errs, errors.New("pes: a verify job checks the whole repository, not some PEs"))
	}
	return errs
}

// unknownTypes lists the PE types a backup job's pes name that m has not
// configured: a run would fail on them. Other jobs select the PEs of
// their repository's snapshots, which need no configured type (a second
// site prunes and replicates vm:* without vSphere).
func (j *Job) unknownTypes(ctx context.Context, m pe.Manager) []string {
	if j.Kind != Backup {
		return nil
	}
	var unknown []string
	for _, s := range j.PEs {
		sel, err := parseSelector(s)
		if err != nil {
			continue // validate says so
		}
		typ := sel.typ
		if typ == "" {
			typ = sel.id.Type()
		}
		if _, err := m.Type(ctx, typ); errors.Is(err, pe.ErrNotFound) && !slices.Contains(unknown, typ) {
			unknown = append(unknown, typ)
		}
	}
	return unknown
}

// jobLabel names the i-th job of a jobs file whose content is raw: by
// its name if it has one, and its place: job "nightly" (2nd).
func jobLabel(raw json.RawMessage, i int) string {
	var named struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(raw, &named) == nil && named.Name != "" {
		return fmt.Sprintf("job %q (%s)", named.Name, ordinal(i+1))
	}
	return fmt.Sprintf("job %d", i+1)
}

// ordinal is 1st, 2nd, 3rd, 4th ... 11th, 12th, 13th, 21st ...
func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprintf("%d%s", n, suffix)
}

// maxName bounds a job's name: it is a path segment of the REST API and
// a key of the history file.
const maxName = 128

// validName reports whether name is a job's name: [A-Za-z0-9._-]{1,128},
// not starting with '.' (neither "." nor ".." in a URL path).
func validName(name string) bool {
	if name == "" || len(name) > maxName || name[0] == '.' {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (k Keep) policy() (repo.Policy, error) {
	p := repo.Policy{Last: k.Last, Hourly: k.Hourly, Daily: k.Daily, Weekly: k.Weekly, Monthly: k.Monthly, Yearly: k.Yearly}
	if k.Within != "" {
		var err error
		if p.Within, err = repo.ParseDuration(k.Within); err != nil {
			return p, fmt.Errorf("within: %w", err)
		}
	}
	if p.Empty() {
		return p, errors.New("no keep rule: it would keep everything")
	}
	return p, p.Valid()
}

// selector names PEs: one PE (ID), or every PE of a type (Name empty).
type selector struct {
	id  pe.ID
	typ string
}

func parseSelector(s string) (selector, error) {
	if typ, ok := strings.CutSuffix(s, ":*"); ok && typ != "" && !strings.ContainsAny(typ, ":/*") {
		return selector{typ: typ}, nil
	}
	id, err := pe.ParseID(s)
	if err != nil {
		return selector{}, fmt.Errorf("%q: want a PE ID or type:*: %w", s, err)
	}
	return selector{id: id}, nil
}
