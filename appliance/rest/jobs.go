package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/astrolabe-appliance/astrolabe/api"
	"github.com/astrolabe-appliance/astrolabe/appliance/jobs"
	"github.com/astrolabe-appliance/astrolabe/appliance/redact"
)

// Jobs is the job scheduler (jobs.Scheduler).
type Jobs interface {
	List() []jobs.Status
	Get(name string) (jobs.Status, error)
	Create(j *jobs.Job) error
	Update(j *jobs.Job) error
	Delete(name string) error
	RunNow(name string) (string, error)
	History(name string) []jobs.Run
}

const jobsPath = "/v1/appliance/jobs"

// rawBodyKey keeps the body of a job request as it came: a job is read
// as jobs.json reads it (unknown fields refused), which the generated
// decoder does not.
type rawBodyKey struct{}

// keepJobBody keeps the body of a request that writes a job in its
// context, for jobBody.
func keepJobBody(r *http.Request) (*http.Request, error) {
	if (r.Method != http.MethodPost && r.Method != http.MethodPut) || !strings.HasPrefix(r.URL.Path, jobsPath) {
		return r, nil
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return r.WithContext(context.WithValue(r.Context(), rawBodyKey{}, b)), nil
}

// jobBody reads the job of the request's body.
func jobBody(ctx context.Context) (*jobs.Job, error) {
	b, _ := ctx.Value(rawBodyKey{}).([]byte)
	return jobs.DecodeJob(b)
}

func (s *server) jobs() (Jobs, error) {
	if s.cfg.Jobs == nil {
		return nil, notConfigured("jobs")
	}
	return s.cfg.Jobs, nil
}

func (s *server) ListJobs(ctx context.Context, _ api.ListJobsRequestObject) (api.ListJobsResponseObject, error) {
	js, err := s.jobs()
	if err != nil {
		return nil, err
	}
	out := api.ListJobs200JSONResponse{}
	for _, st := range js.List() {
		a, err := toAPIJobStatus(st)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (s *server) GetJob(ctx context.Context, req api.GetJobRequestObject) (api.GetJobResponseObject, error) {
	st, err := s.jobStatus(req.JobName)
	if err != nil {
		return nil, err
	}
	return api.GetJob200JSONResponse(st), nil
}

// jobStatus is the job name as the API shows it.
func (s *server) jobStatus(name string) (api.JobStatus, error) {
	js, err := s.jobs()
	if err != nil {
		return api.JobStatus{}, err
	}
	st, err := js.Get(name)
	if err != nil {
		return api.JobStatus{}, err
	}
	return toAPIJobStatus(st)
}

func (s *server) CreateJob(ctx context.Context, req api.CreateJobRequestObject) (api.CreateJobResponseObject, error) {
	js, err := s.jobs()
	if err != nil {
		return nil, err
	}
	j, err := jobBody(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.checkJobPaths(j, nil); err != nil {
		return nil, err
	}
	if err := js.Create(j); err != nil {
		return nil, err
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "job created", slog.String("job", j.Name), caller(ctx))
	st, err := s.jobStatus(j.Name)
	if err != nil {
		return nil, err
	}
	return api.CreateJob201JSONResponse(st), nil
}

func (s *server) UpdateJob(ctx context.Context, req api.UpdateJobRequestObject) (api.UpdateJobResponseObject, error) {
	js, err := s.jobs()
	if err != nil {
		return nil, err
	}
	cur, err := js.Get(req.JobName)
	if err != nil {
		return nil, err
	}
	j, err := jobBody(ctx)
	if err != nil {
		return nil, err
	}
	switch j.Name {
	case "":
		j.Name = req.JobName
	case req.JobName:
	default:
		return nil, badRequest("name %q: the path names job %q (a job is renamed by creating the new one and deleting the old)", j.Name, req.JobName)
	}
	if err := s.checkJobPaths(j, cur.Job); err != nil {
		return nil, err
	}
	if err := js.Update(j); err != nil {
		return nil, err
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "job updated", slog.String("job", j.Name), caller(ctx))
	st, err := s.jobStatus(j.Name)
	if err != nil {
		return nil, err
	}
	return api.UpdateJob200JSONResponse(st), nil
}

func (s *server) DeleteJob(ctx context.Context, req api.DeleteJobRequestObject) (api.DeleteJobResponseObject, error) {
	js, err := s.jobs()
	if err != nil {
		return nil, err
	}
	if err := js.Delete(req.JobName); err != nil {
		return nil, err
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "job deleted", slog.String("job", req.JobName), caller(ctx))
	return api.DeleteJob204Response{}, nil
}

func (s *server) RunJob(ctx context.Context, req api.RunJobRequestObject) (api.RunJobResponseObject, error) {
	js, err := s.jobs()
	if err != nil {
		return nil, err
	}
	id, err := js.RunNow(req.JobName)
	if err != nil {
		return nil, err
	}
	return api.RunJob202JSONResponse{TaskID: id}, nil
}

func (s *server) GetJobHistory(ctx context.Context, req api.GetJobHistoryRequestObject) (api.GetJobHistoryResponseObject, error) {
	js, err := s.jobs()
	if err != nil {
		return nil, err
	}
	if _, err := js.Get(req.JobName); err != nil {
		return nil, err
	}
	out := api.GetJobHistory200JSONResponse{}
	for _, r := range js.History(req.JobName) {
		out = append(out, toAPIJobRun(r))
	}
	return out, nil
}

// checkJobPaths holds a job from the API to the paths it may name. A
// password file is read by the appliance (as root): any path would let a
// client have it read /dev/zero or a FIFO, or test guesses of a secret
// file's content by whether a repository opens with it. So it must be a
// regular file under the password directory (relative paths are taken
// from there), or a path the job has already (set in jobs.json by the
// operator). A directory repository must be an absolute path (a relative
// one would be taken from the appliance's working directory) of an
// existing directory.
func (s *server) checkJobPaths(j, cur *jobs.Job) error {
	// Both secret files, the password and the S3 keys, follow the same
	// rules: the S3 keys file is read by the appliance as well.
	var known []string
	if cur != nil {
		known = append(known, cur.Repository.PasswordFile, cur.Repository.S3CredentialsFile)
		if cur.From != nil {
			known = append(known, cur.From.PasswordFile, cur.From.S3CredentialsFile)
		}
	}
	secret := func(field, asked string) (string, error) {
		if asked == "" || slices.Contains(known, asked) {
			return asked, nil
		}
		p, err := s.passwordFile(asked)
		if err != nil {
			return "", badRequest("%s %q: %w", field, asked, err)
		}
		return p, nil
	}
	check := func(field string, r *jobs.Repository) error {
		if !strings.Contains(r.Location, "://") && !filepath.IsAbs(r.Location) {
			return badRequest("%s.location %q: want an absolute directory, or an s3:// or s3+http:// URL", field, r.Location)
		}
		var err error
		if r.PasswordFile, err = secret(field+".passwordFile", r.PasswordFile); err != nil {
			return err
		}
		if r.S3CredentialsFile, err = secret(field+".s3CredentialsFile", r.S3CredentialsFile); err != nil {
			return err
		}
		// A job never makes a repository: a directory that is not there
		// would fail every run.
		if !strings.Contains(r.Location, "://") {
			if fi, err := os.Stat(r.Location); err != nil || !fi.IsDir() {
				return badRequest("%s.location %q: want an existing directory (a repository made by 'astrolabe repo init')", field, r.Location)
			}
		}
		return nil
	}
	if err := check("repository", &j.Repository); err != nil {
		return err
	}
	if j.From != nil {
		return check("from", j.From)
	}
	return nil
}

// passwordFile resolves a password file the API was given to its path
// under the password directory.
func (s *server) passwordFile(asked string) (string, error) {
	if s.cfg.PasswordRoot == "" {
		return "", fmt.Errorf("this appliance takes no password files through the API (it has no password directory)")
	}
	root, err := filepath.EvalSymlinks(s.cfg.PasswordRoot)
	if err != nil {
		return "", fmt.Errorf("the password directory: %w", err)
	}
	p := asked
	if !filepath.IsAbs(p) {
		p = filepath.Join(root, p)
	}
	real, err := filepath.EvalSymlinks(p)
	// Both are clean and free of symlinks: a prefix test is enough.
	if err != nil || !strings.HasPrefix(real, root+string(filepath.Separator)) {
		return "", fmt.Errorf("want a file in the appliance's password directory (passwords/ in its config directory; a path relative to it or under it)")
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("not a regular file")
	}
	return real, nil
}

func toAPIJobStatus(st jobs.Status) (api.JobStatus, error) {
	var out api.JobStatus
	// Through JSON: the API's job is jobs.json's.
	b, err := json.Marshal(st.Job)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(b, &out.Job); err != nil {
		return out, fmt.Errorf("job %s: %w", st.Job.Name, err)
	}
	if !st.Next.IsZero() {
		next := st.Next.UTC()
		out.Next = &next
	}
	if st.Last != nil {
		r := toAPIJobRun(*st.Last)
		out.LastRun = &r
	}
	if st.Running != "" {
		out.RunningTask = &st.Running
	}
	return out, nil
}

func toAPIJobRun(r jobs.Run) api.JobRun {
	// In UTC, as the tasks' times.
	out := api.JobRun{
		Scheduled: r.Scheduled.UTC(), Started: r.Started.UTC(), Status: api.JobRunStatus(r.Status),
		BytesRead: r.Read, BytesNew: r.New, BytesStored: r.Stored,
	}
	if !r.Finished.IsZero() {
		f := r.Finished.UTC()
		out.Finished = &f
	}
	if r.Task != "" {
		out.TaskID = &r.Task
	}
	if r.Manual {
		out.Manual = &r.Manual
	}
	if r.Details != "" {
		out.Details = &r.Details
	}
	if r.Error != "" {
		e := redact.Message(r.Error)
		out.Error = &e
	}
	return out
}
