package disk

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// reflink makes dst share src's extents (FICLONE), which takes no time and
// no space until either is written. It fails on filesystems without
// reflinks (ext4, tmpfs) and across filesystems; callers then copy. A
// failed clone leaves dst as it was.
func reflink(dst, src *os.File) error {
	sc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	var cloneErr error
	err = sc.Control(func(sfd uintptr) {
		err := dc.Control(func(dfd uintptr) {
			cloneErr = unix.IoctlFileClone(int(dfd), int(sfd))
		})
		if cloneErr == nil {
			cloneErr = err
		}
	})
	if err != nil {
		return err
	}
	if cloneErr != nil {
		return fmt.Errorf("reflink %s to %s: %w", src.Name(), dst.Name(), cloneErr)
	}
	return nil
}
