package nfsexport

import "golang.org/x/sys/unix"

type fsStat struct {
	total, free, avail uint64
	files, freeFiles   uint64
}

func statfs(path string, st *fsStat) error {
	var s unix.Statfs_t
	if err := unix.Statfs(path, &s); err != nil {
		return err
	}
	bs := uint64(s.Bsize)
	*st = fsStat{
		total: s.Blocks * bs, free: s.Bfree * bs, avail: s.Bavail * bs,
		files: s.Files, freeFiles: s.Ffree,
	}
	return nil
}
