// Package backend stores the repository's objects: a local directory or an
// S3 bucket. Objects are written whole and atomically (visible complete or
// not at all) and never changed afterwards.
package backend

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"syscall"
	"time"
)

// ErrNotExist is returned for objects that do not exist.
var ErrNotExist = errors.New("object does not exist")

// Backend is where a repository keeps its objects, by slash-separated name.
type Backend interface {
	// Save stores an object of size bytes read from r, atomically.
	Save(ctx context.Context, name string, r io.Reader, size int64) error
	// Load reads length bytes at off (length < 0: to the end).
	Load(ctx context.Context, name string, off, length int64) (io.ReadCloser, error)
	// Stat returns an object's size.
	Stat(ctx context.Context, name string) (int64, error)
	// ModTime returns when the object was written, by the clock of the
	// backend (the file system's, the S3 server's).
	ModTime(ctx context.Context, name string) (time.Time, error)
	// List calls fn for every object whose name starts with prefix.
	List(ctx context.Context, prefix string, fn func(name string, size int64) error) error
	// Remove deletes an object; removing a missing one is not an error.
	Remove(ctx context.Context, name string) error
	// Location describes the backend for messages.
	Location() string
}

// ReadAll loads a whole object.
func ReadAll(ctx context.Context, b Backend, name string) ([]byte, error) {
	rc, err := b.Load(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// IsReadOnly reports whether err is a backend's refusal to write: a
// read-only file system, a directory without write permission, an S3 key
// not allowed to write.
func IsReadOnly(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) || s3Forbidden(err)
}
