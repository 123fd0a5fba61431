package pg

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

// maxTrailing bounds what a restore reads after the end of the archive.
const maxTrailing = 1 << 20

// untar extracts a base backup's tar stream into the new data directory
// dir, every entry root's and private (PostgreSQL wants its data
// directory 0700) until handOver gives it to the restore account. A base backup holds directories and regular files
// only: anything else, or a name that leaves dir, is refused as invalid
// input. limit (if not negative) bounds the bytes written.
func untar(ctx context.Context, r io.Reader, dir string, limit int64) error {
	if err := privateDir(dir); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	var written int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: base backup archive: %w", pe.ErrInvalidSource, err)
		}
		name := pe.CleanTarName(h.Name)
		if name == "" || name == "." {
			continue
		}
		if !filepath.IsLocal(name) || strings.Contains(name, "\\") {
			return fmt.Errorf("%w: base backup archive: member %q leaves the data directory", pe.ErrInvalidSource, h.Name)
		}
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := makeParents(dir, filepath.Dir(filepath.FromSlash(name))); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := privateDir(path); err != nil {
				return err
			}
		case tar.TypeReg:
			if limit >= 0 && written+h.Size > limit {
				return fmt.Errorf("restore would write more than %d bytes (--max-expansion): %w", limit, pe.ErrLimit)
			}
			if err := writeFile(path, tr, h); err != nil {
				return err
			}
			written += h.Size
		default:
			return fmt.Errorf("%w: base backup archive: member %q of type %q: only directories and files are restored (tablespaces outside the data directory are not supported)", pe.ErrInvalidSource, h.Name, h.Typeflag)
		}
	}
	if _, err := io.CopyN(io.Discard, r, maxTrailing); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return atomicfile.SyncFS(dir)
}

// makeParents makes the directories of rel under dir that are missing.
func makeParents(dir, rel string) error {
	if rel == "." {
		return nil
	}
	if err := makeParents(dir, filepath.Dir(rel)); err != nil {
		return err
	}
	p := filepath.Join(dir, rel)
	if fi, err := os.Lstat(p); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%w: base backup archive: %s is a file and a directory", pe.ErrInvalidSource, rel)
		}
		return nil
	}
	return privateDir(p)
}

func writeFile(path string, r io.Reader, h *tar.Header) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("restore %s: %w", h.Name, err)
	}
	_, err = io.CopyN(f, r, h.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chtimes(path, h.ModTime, h.ModTime)
	}
	if err != nil {
		return fmt.Errorf("restore %s: %w", h.Name, err)
	}
	return nil
}
