package s3export

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var dateBuckets = []string{"copy", "disk", "fs"}

// writeDates writes a dates file of the given dates.
func writeDates(t *testing.T, dir string, dates map[string]time.Time) []byte {
	t.Helper()
	b, err := json.Marshal(dates)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, bucketDatesFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// A dates file that cannot be read for a while (EIO, EACCES) is neither
// overwritten nor forgotten: the answer in the meantime records nothing,
// and once the file reads again its dates are the buckets'.
func TestBucketDatesSurviveReadErrors(t *testing.T) {
	old := time.Date(2021, 3, 4, 5, 6, 7, 8e6, time.UTC)
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.EACCES} {
		t.Run(errno.Error(), func(t *testing.T) {
			dir := t.TempDir()
			kept := writeDates(t, dir, map[string]time.Time{"copy": old, "disk": old})
			d := newBucketDates(dir)
			failing := true
			d.readFile = func(path string) ([]byte, error) {
				if failing {
					return nil, &fs.PathError{Op: "read", Path: path, Err: errno}
				}
				return os.ReadFile(path)
			}
			now := time.Now().UTC().Truncate(time.Millisecond)
			_, err := d.dates(dateBuckets, now)
			if !errors.Is(err, errno) {
				t.Errorf("a read error reported as %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, bucketDatesFile)); err != nil || string(b) != string(kept) {
				t.Fatalf("the dates file after a read error: %v\n%s\nwas\n%s", err, b, kept)
			}

			failing = false
			got, err := d.dates(dateBuckets, now.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]time.Time{"copy": old, "disk": old, "fs": now.Add(time.Hour)}
			for b, w := range want {
				if !got[b].Equal(w) {
					t.Errorf("bucket %s created %v, want %v", b, got[b], w)
				}
			}
			again, err := newBucketDates(dir).dates(dateBuckets, now.Add(2*time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			for b, w := range want {
				if !again[b].Equal(w) {
					t.Errorf("after a restart, bucket %s created %v, want %v", b, again[b], w)
				}
			}
		})
	}
}

// A corrupt dates file is set aside as .bad, reported, and the buckets
// are dated anew, in a file that then lasts.
func TestBucketDatesCorruptFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, bucketDatesFile)
	corrupt := []byte(`{"copy": "2021-03-04T05:0`)
	if err := os.WriteFile(path, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	got, err := newBucketDates(dir).dates(dateBuckets, now)
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("a corrupt file reported as %v", err)
	}
	if b, err := os.ReadFile(path + ".bad"); err != nil || string(b) != string(corrupt) {
		t.Errorf("the corrupt file not kept as .bad: %v %q", err, b)
	}
	for _, b := range dateBuckets {
		if !got[b].Equal(now) {
			t.Errorf("bucket %s created %v, want %v", b, got[b], now)
		}
	}
	again, err := newBucketDates(dir).dates(dateBuckets, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range dateBuckets {
		if !again[b].Equal(now) {
			t.Errorf("after a restart, bucket %s created %v, want %v", b, again[b], now)
		}
	}
}

// With no StateDir the dates are kept in memory: nothing is written to
// the temporary directories, shared or not.
func TestBucketDatesWithoutStateDir(t *testing.T) {
	f := newFixture(t, 0)
	tmp := t.TempDir()
	shared := filepath.Join(os.TempDir(), bucketDatesFile)
	_, sharedBefore := os.Lstat(shared)
	h, err := New(Config{Manager: f.m, AccessKey: accessKey, SecretKey: secretKey, TempDir: tmp,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	endpoint := strings.TrimPrefix(srv.URL, "http://")
	var lists [2]listBucketsAnswer
	for i := range lists {
		resp, body := doAt(t, endpoint, http.MethodGet, "/", "", nil)
		if err := xml.Unmarshal(body, &lists[i]); resp.StatusCode != 200 || err != nil || len(lists[i].Buckets) == 0 {
			t.Fatalf("ListBuckets: %d %s", resp.StatusCode, body)
		}
	}
	for i, b := range lists[1].Buckets {
		if b.CreationDate != lists[0].Buckets[i].CreationDate {
			t.Errorf("bucket %s created %s, then %s", b.Name, lists[0].Buckets[i].CreationDate, b.CreationDate)
		}
	}
	err = filepath.WalkDir(tmp, func(path string, e fs.DirEntry, err error) error {
		if err == nil && e.Name() == bucketDatesFile {
			t.Errorf("dates written to the temporary directory: %s", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(shared); errors.Is(sharedBefore, fs.ErrNotExist) && err == nil {
		t.Errorf("dates written to %s", shared)
	}
}
