package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/appliance/usecase"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/repo"
	"github.com/astrolabe-appliance/astrolabe/repo/backend"
)

// outcome is what a run did.
type outcome struct {
	read, new, stored int64
	details           string
}

func (o outcome) result() map[string]string {
	return map[string]string{
		"bytesRead": strconv.FormatInt(o.read, 10), "bytesNew": strconv.FormatInt(o.new, 10),
		"bytesStored": strconv.FormatInt(o.stored, 10), "details": o.details,
	}
}

func (s *Scheduler) run(ctx context.Context, j *Job, progress pe.Progress) (outcome, error) {
	unlock, err := s.lockRepositories(ctx, j)
	if err != nil {
		return outcome{}, err
	}
	defer unlock()
	r, err := s.open(ctx, j.Repository)
	if err != nil {
		return outcome{}, err
	}
	defer r.Close()
	// Cancelled while it waited or opened (opening may not look at
	// ctx): nothing done, a cancellation; once the work has run without
	// an error, the run is a success whatever ctx says.
	if err := ctx.Err(); err != nil {
		return outcome{}, context.Cause(ctx)
	}
	switch j.Kind {
	case Backup:
		return s.backup(ctx, j, r, progress)
	case Prune:
		return prune(ctx, j, r)
	case Verify:
		return verify(ctx, j, r, progress)
	default:
		return s.replicate(ctx, j, r, progress)
	}
}

// lockRepositories waits until no other run of the scheduler uses j's
// repositories, and holds them until unlock: jobs on one repository would
// otherwise fail each other on its lock (a prune during a backup).
func (s *Scheduler) lockRepositories(ctx context.Context, j *Job) (unlock func(), err error) {
	locs := []string{repositoryKey(j.Repository.Location)}
	if j.From != nil {
		locs = append(locs, repositoryKey(j.From.Location))
	}
	// One order for all runs, so that two replicate runs cannot each hold
	// the repository the other waits for.
	slices.Sort(locs)
	locs = slices.Compact(locs)
	var held []chan struct{}
	unlock = func() {
		for _, ch := range held {
			<-ch
		}
	}
	for _, loc := range locs {
		ch := s.repositoryLock(loc)
		select {
		case ch <- struct{}{}:
			held = append(held, ch)
		case <-ctx.Done():
			unlock()
			return nil, fmt.Errorf("waiting for repository %s: %w", loc, context.Cause(ctx))
		}
	}
	return unlock, nil
}

func (s *Scheduler) repositoryLock(loc string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.repoLocks[loc]
	if ch == nil {
		ch = make(chan struct{}, 1)
		s.repoLocks[loc] = ch
	}
	return ch
}

// repositoryKey names the repository at loc, so that one repository
// spelled two ways is one: an S3 URL by what ParseS3URL reads from it
// (scheme, endpoint in lower case, bucket, and the prefix exactly, as
// "b//p" and "b/x/../p" are other key spaces than "b/p"); a directory by
// its path cleaned ("r/", "./r").
func repositoryKey(loc string) string {
	if strings.HasPrefix(loc, "s3://") || strings.HasPrefix(loc, "s3+http://") {
		cfg, err := backend.ParseS3URL(loc)
		if err != nil {
			return loc // opening it fails
		}
		scheme, _, _ := strings.Cut(loc, "://")
		return fmt.Sprintf("%s://%s/%s/%s", scheme, strings.ToLower(cfg.Endpoint), cfg.Bucket, cfg.Prefix)
	}
	if strings.Contains(loc, "://") {
		return loc
	}
	return filepath.Clean(loc)
}

// open opens a job's repository on the scheduler's clock.
func (s *Scheduler) open(ctx context.Context, loc Repository) (*repo.Repository, error) {
	var be backend.Backend
	var err error
	if strings.HasPrefix(loc.Location, "s3://") || strings.HasPrefix(loc.Location, "s3+http://") {
		var cfg backend.S3Config
		if cfg, err = backend.ParseS3URL(loc.Location); err == nil {
			cfg.Profile, cfg.CredentialsFile = loc.S3Profile, loc.S3CredentialsFile
			be, err = backend.NewS3(ctx, cfg)
		}
	} else if err = existingDir(loc.Location); err == nil {
		// A job never makes a repository (repo init does): a missing one
		// is an error, not a directory to make.
		be, err = backend.NewDir(loc.Location)
	}
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", loc.Location, err)
	}
	opts := repo.Options{Logger: s.log, Now: s.opts.Now}
	if loc.PasswordFile != "" {
		pw, err := readPassword(loc.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("repository %s: password file: %w", loc.Location, err)
		}
		opts.Password = pw
	}
	r, err := repo.Open(ctx, be, opts)
	if errors.Is(err, repo.ErrPasswordNeeded) && loc.PasswordFile == "" {
		return nil, fmt.Errorf("repository %s is encrypted: set passwordFile in the job", loc.Location)
	}
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", loc.Location, err)
	}
	return r, nil
}

func existingDir(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("repository %s: %w", path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("repository %s: not a directory", path)
	}
	return nil
}

// maxPassword bounds a password file: a password is a line, and a file
// such as /dev/zero must not fill the memory.
const maxPassword = 4096

// readPassword reads the password of a file of at most maxPassword
// bytes.
func readPassword(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPassword+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxPassword {
		return "", fmt.Errorf("%s: over %d bytes, not a password", path, maxPassword)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return pw, nil
}

// backup backs up each PE of the job (a live one snapshotted first), on
// after a failure; the errors are joined.
func (s *Scheduler) backup(ctx context.Context, j *Job, r *repo.Repository, progress pe.Progress) (outcome, error) {
	ids, err := s.livePEs(ctx, j.PEs)
	if err != nil {
		return outcome{}, err
	}
	// A backup of nothing is no success: the PEs named have gone.
	if len(ids) == 0 {
		return outcome{}, fmt.Errorf("no PEs match %s", strings.Join(j.PEs, " "))
	}
	uc, err := usecase.New(usecase.Config{Manager: s.opts.Manager, Repository: r, Logger: s.log,
		StateDir: filepath.Join(s.opts.ConfigDir, config.StateDir)})
	if err != nil {
		return outcome{}, err
	}
	defer uc.Close()
	var o outcome
	var errs []error
	var done []string
	for _, id := range ids {
		sum, err := uc.Backup(ctx, id, progress)
		if err != nil {
			errs = append(errs, fmt.Errorf("back up %s: %w", id, err))
			continue
		}
		o.read, o.new, o.stored = o.read+sum.Read, o.new+sum.New, o.stored+sum.Stored
		done = append(done, sum.ID.String())
	}
	o.details = "backed up " + strings.Join(done, " ")
	return o, errors.Join(errs...)
}

// livePEs resolves selectors to the live PEs they name.
func (s *Scheduler) livePEs(ctx context.Context, sels []string) ([]pe.ID, error) {
	var ids []pe.ID
	for _, str := range sels {
		sel, _ := parseSelector(str) // validated when loaded
		if sel.typ == "" {
			ids = append(ids, sel.id)
			continue
		}
		tm, err := s.opts.Manager.Type(ctx, sel.typ)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", str, err)
		}
		list, err := tm.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", str, err)
		}
		ids = append(ids, list...)
	}
	return ids, nil
}

// storedPEs resolves selectors to the PEs of r's snapshots they name; nil
// (all) if there is none.
func storedPEs(ctx context.Context, r *repo.Repository, sels []string) ([]pe.ID, error) {
	if len(sels) == 0 {
		return nil, nil
	}
	snaps, err := r.SnapshotIDs(ctx, pe.ID{})
	if err != nil {
		return nil, err
	}
	var ids []pe.ID
	for _, str := range sels {
		sel, _ := parseSelector(str)
		for _, id := range snaps {
			base := id.Base()
			if (base == sel.id.Base() || base.Type() == sel.typ) && !slices.Contains(ids, base) {
				ids = append(ids, base)
			}
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("no snapshots of %s in %s", strings.Join(sels, " "), r.Location())
	}
	return ids, nil
}

// prune forgets what the policy does not keep, then removes the data no
// snapshot uses.
func prune(ctx context.Context, j *Job, r *repo.Repository) (outcome, error) {
	ids, err := storedPEs(ctx, r, j.PEs)
	if err != nil {
		return outcome{}, err
	}
	results, err := r.ForgetPolicy(ctx, j.policy, ids, false)
	if err != nil {
		return outcome{}, err
	}
	kept, forgot := 0, 0
	for _, res := range results {
		for _, d := range res.Decisions {
			if d.Keep {
				kept++
			} else {
				forgot++
			}
		}
	}
	sum, err := r.Prune(ctx)
	if err != nil {
		return outcome{}, err
	}
	return outcome{details: fmt.Sprintf("kept %d snapshot(s), forgot %d; removed %d pack(s), %d bytes", kept, forgot, sum.Packs, sum.Bytes)}, nil
}

// verify checks the repository, reading the packs the job asks for; this
// appliance's record of the packs it read (under its host name) tells
// which are new.
func verify(ctx context.Context, j *Job, r *repo.Repository, progress pe.Progress) (outcome, error) {
	opts := repo.CheckOptions{ReadData: j.ReadData, New: j.ReadDataNew, Verifier: repo.DefaultVerifier()}
	if j.ReadDataSubset != "" {
		var err error
		if opts.Subset, err = repo.ParseSubset(j.ReadDataSubset); err != nil {
			return outcome{}, fmt.Errorf("readDataSubset %w", err)
		}
	}
	sum, err := r.CheckWith(ctx, opts, progress)
	out := outcome{read: sum.ReadBytes, details: sum.String()}
	if len(sum.Problems) > 0 {
		// Found even if the check then failed (to save the record).
		msgs := make([]string, len(sum.Problems))
		for i, p := range sum.Problems {
			msgs[i] = p.String()
		}
		return out, errors.Join(fmt.Errorf("%d problem(s) found (%s): %s", len(sum.Problems), sum, summarize(msgs, maxProblems)), err)
	}
	if err != nil {
		return outcome{}, err
	}
	out.details += "; no problems found"
	return out, nil
}

// maxProblems bounds the problems of a verify run named in its error (and
// so in the history file); a damaged repository can have thousands.
const maxProblems = 20

// summarize joins the first limit of msgs and says how many more there are.
func summarize(msgs []string, limit int) string {
	if len(msgs) <= limit {
		return strings.Join(msgs, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(msgs[:limit], "; "), len(msgs)-limit)
}

func (s *Scheduler) replicate(ctx context.Context, j *Job, r *repo.Repository, progress pe.Progress) (outcome, error) {
	src, err := s.open(ctx, *j.From)
	if err != nil {
		return outcome{}, err
	}
	defer src.Close()
	ids, err := storedPEs(ctx, src, j.PEs)
	if err != nil {
		return outcome{}, err
	}
	sum, err := r.Copy(ctx, src, ids, progress)
	return outcome{read: sum.Read, new: sum.New, stored: sum.Sent,
		details: copyDetails(sum)}, err
}

// copyDetails tells what a replicate run did, naming the snapshots it
// could not copy and why.
func copyDetails(sum repo.CopySummary) string {
	d := fmt.Sprintf("copied %d snapshot(s), %d there already", len(sum.Copied), len(sum.Skipped))
	if len(sum.Gone) > 0 {
		d += fmt.Sprintf("; forgotten in the source meanwhile, not copied: %s", summarize(idStrings(sum.Gone), maxProblems))
	}
	if len(sum.Differ) > 0 {
		d += fmt.Sprintf("; in the target with other content, left alone: %s", summarize(idStrings(sum.Differ), maxProblems))
	}
	return d
}

func idStrings(ids []pe.ID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}
