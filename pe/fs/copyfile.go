package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyFile copies the open regular file in to the new, empty file out and
// returns whether it could share in's extents (FICLONE) and how many bytes
// out has. Otherwise it copies the data ranges with copy_file_range, or
// read and write where that fails, and keeps holes holes.
func copyFile(ctx context.Context, in, out *os.File) (reflinked bool, size int64, err error) {
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		fi, err := out.Stat()
		if err != nil {
			return false, 0, err
		}
		return true, fi.Size(), nil
	}
	// ext4, tmpfs, different filesystems: copy. A failed clone has left
	// out empty.
	size, err = copySparse(ctx, out, in)
	if err != nil {
		return false, 0, err
	}
	return false, size, nil
}

// copySparse copies the data ranges of in to the same offsets of the empty
// file out and sizes it; ranges in between stay holes.
func copySparse(ctx context.Context, out, in *os.File) (int64, error) {
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	fallback := false
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		data, end, err := nextData(in, off, size)
		if err != nil {
			return 0, err
		}
		if data >= size {
			break
		}
		n, err := copyRange(out, in, data, end-data, &fallback)
		if err != nil {
			return 0, err
		}
		if n < end-data {
			// The file shrank while we copied: what we have is its
			// size now.
			size = data + n
			break
		}
		off = end
	}
	if err := out.Truncate(size); err != nil {
		return 0, err
	}
	return size, nil
}

// nextData returns the next data range [data, end) at or after off; data
// is size if there is none. Filesystems without SEEK_DATA have no holes.
func nextData(f *os.File, off, size int64) (data, end int64, err error) {
	fd := int(f.Fd())
	data, err = unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return off, size, nil
	case err != nil:
		return 0, 0, fmt.Errorf("seek data at %d: %w", off, err)
	}
	end, err = unix.Seek(fd, data, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, fmt.Errorf("seek hole at %d: %w", data, err)
	}
	return data, min(end, size), nil
}

// copyRange copies n bytes at off from in to out, in the kernel if it can;
// once it cannot, fallback is set and later ranges are read and written.
func copyRange(out, in *os.File, off, n int64, fallback *bool) (int64, error) {
	done := int64(0)
	for !*fallback && done < n {
		roff, woff := off+done, off+done
		m, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n-done, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) ||
				errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				*fallback = true
				break
			}
			return done, fmt.Errorf("copy_file_range at %d: %w", off+done, err)
		}
		if m == 0 {
			return done, nil // end of file
		}
		done += int64(m)
	}
	if done == n {
		return done, nil
	}
	m, err := io.Copy(io.NewOffsetWriter(out, off+done), io.NewSectionReader(in, off+done, n-done))
	return done + m, err
}
