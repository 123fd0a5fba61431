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
	path string
	mu   sync.Mutex
	seen map[string]time.Time // nil until loaded
}

const bucketDatesFile = "s3-bucket-dates.json"

func newBucketDates(dir string) *bucketDates {
	return &bucketDates{path: filepath.Join(dir, bucketDatesFile)}
}

// dates returns the creation date of each bucket, recording now as the
// date of those first seen. The dates are always returned; an error says
// that they could not be read or kept, and will not last.
func (d *bucketDates) dates(buckets []string, now time.Time) (map[string]time.Time, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var loadErr error
	if d.seen == nil {
		d.seen, loadErr = d.load()
	}
	changed := false
	out := make(map[string]time.Time, len(buckets))
	for _, b := range buckets {
		t, ok := d.seen[b]
		if !ok {
			// S3 gives creation dates to the millisecond.
			t = now.UTC().Truncate(time.Millisecond)
			d.seen[b], changed = t, true
		}
		out[b] = t
	}
	if changed {
		return out, errors.Join(loadErr, d.save())
	}
	return out, loadErr
}

// load reads the dates kept; what cannot be read is dated anew.
func (d *bucketDates) load() (map[string]time.Time, error) {
	seen := map[string]time.Time{}
	b, err := os.ReadFile(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return seen, nil
	}
	if err != nil {
		return seen, fmt.Errorf("bucket dates: %w", err)
	}
	if err := json.Unmarshal(b, &seen); err != nil {
		return map[string]time.Time{}, fmt.Errorf("bucket dates %s: %w", d.path, err)
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
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("bucket dates: %w", err)
	}
	if err := os.Rename(tmp.Name(), d.path); err != nil {
		return fmt.Errorf("bucket dates: %w", err)
	}
	return nil
}
