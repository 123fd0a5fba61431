package s3export

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// bucketDates keeps the buckets' creation dates: when this appliance's
// S3 data path first served each bucket (its PE type, or the copy
// bucket). They are kept in a file so that they stay the same across
// restarts, as a bucket's creation date does on S3.
type bucketDates struct {
	path     string // "": kept in memory only
	readFile func(string) ([]byte, error)
	mu       sync.Mutex
	seen     map[string]time.Time // nil until loaded
}

const bucketDatesFile = "s3-bucket-dates.json"

// newBucketDates keeps the dates in dir, or in memory if dir is "".
func newBucketDates(dir string) *bucketDates {
	d := &bucketDates{readFile: os.ReadFile}
	if dir != "" {
		d.path = filepath.Join(dir, bucketDatesFile)
	}
	return d
}

// dates returns the creation date of each bucket, recording now as the
// date of those first seen. The dates are always returned; an error says
// that they could not be read or kept, and may not last.
func (d *bucketDates) dates(buckets []string, now time.Time) (map[string]time.Time, error) {
	// S3 gives creation dates to the millisecond.
	now = now.UTC().Truncate(time.Millisecond)
	d.mu.Lock()
	defer d.mu.Unlock()
	var loadErr error
	if d.seen == nil {
		d.seen, loadErr = d.load()
	}
	if d.seen == nil {
		// The file holds dates that cannot be read now: answer with
		// dates that are not recorded, so that the file is not
		// overwritten, and read it again next time.
		out := make(map[string]time.Time, len(buckets))
		for _, b := range buckets {
			out[b] = now
		}
		return out, loadErr
	}
	changed := false
	out := make(map[string]time.Time, len(buckets))
	for _, b := range buckets {
		t, ok := d.seen[b]
		if !ok {
			t = now
			d.seen[b], changed = t, true
		}
		out[b] = t
	}
	if changed && d.path != "" {
		return out, errors.Join(loadErr, d.save())
	}
	return out, loadErr
}

// load reads the dates kept. A missing file starts afresh, and so does a
// corrupt one, which is kept aside as .bad and reported. Any other error
// (EACCES, EIO) returns no dates: the file may be fine and must be kept.
func (d *bucketDates) load() (map[string]time.Time, error) {
	seen := map[string]time.Time{}
	if d.path == "" {
		return seen, nil
	}
	b, err := d.readFile(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return seen, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bucket dates: %w", err)
	}
	if err := json.Unmarshal(b, &seen); err != nil {
		bad := d.path + ".bad"
		if rerr := os.Rename(d.path, bad); rerr != nil {
			return nil, fmt.Errorf("bucket dates %s: %w; cannot set it aside: %w", d.path, err, rerr)
		}
		return map[string]time.Time{}, fmt.Errorf("bucket dates %s are corrupt, kept as %s, and dated anew: %w", d.path, bad, err)
	}
	return seen, nil
}

// save writes the dates atomically: a crash leaves the old file or the new.
func (d *bucketDates) save() error {
	b, err := json.MarshalIndent(d.seen, "", "  ")
	if err != nil {
		return fmt.Errorf("bucket dates: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(d.path), ".bucket-dates-*")
	if err != nil {
		return fmt.Errorf("bucket dates: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("bucket dates: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("bucket dates: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("bucket dates: %w", err)
	}
	if err := os.Rename(tmp.Name(), d.path); err != nil {
		return fmt.Errorf("bucket dates: %w", err)
	}
	return nil
}
