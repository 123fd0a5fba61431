// Package flr is file-level recovery from disk snapshots: each partition of
// a snapshot image is attached read-only to a loop device and mounted with
// safe options under DIR/p1, DIR/p2, ... (DIR/disk for an image without a
// partition table). A state file in DIR records every loop device and
// mount as it is made, so Unmount undoes all of it, also after a crash.
package flr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/astrolabe-appliance/astrolabe/internal/atomicfile"
	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/partition"
)

// StateFile is the record of what Mount did, inside DIR.
const StateFile = ".astrolabe-flr.json"

// Mounted is one mounted partition.
type Mounted struct {
	Name   string `json:"name"` // p1, p2, ... or disk
	Dir    string `json:"dir"`
	Loop   string `json:"loop"`
	FSType string `json:"fstype"`
	Size   int64  `json:"size"`
	// Skipped says why a partition was not mounted (no filesystem the
	// kernel knows); Dir is then empty.
	Skipped string `json:"skipped,omitempty"`
}

type state struct {
	Snapshot string    `json:"snapshot"`
	Image    string    `json:"image"`
	Mounts   []Mounted `json:"mounts"`
}

// Tools the package runs (util-linux, mount).
var tools = []string{"losetup", "blkid", "mount", "umount"}

func checkTools() error {
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s missing: apt-get install -y mount util-linux", t)
		}
	}
	return nil
}

// Mount attaches and mounts the partitions of snapshot p under dir, which
// must be an empty directory or not exist. On failure everything done so
// far is undone.
func Mount(ctx context.Context, p pe.ProtectedEntity, dir string) ([]Mounted, error) {
	if err := checkTools(); err != nil {
		return nil, err
	}
	if !p.ID().HasSnapshot() {
		return nil, fmt.Errorf("flr %s: not a snapshot", p.ID())
	}
	img, err := p.Data(ctx)
	if err != nil {
		return nil, fmt.Errorf("flr %s: %w", p.ID(), err)
	}
	defer img.Close()
	if _, ok := img.(pe.TableOfContents); ok {
		return nil, fmt.Errorf("flr %s: an fs PE's files need no recovery mount: browse them with 'astrolabe mount'", p.ID())
	}
	bf, ok := img.(pe.BackingFiler)
	if !ok {
		return nil, fmt.Errorf("flr %s: its data is not a local image file: %w", p.ID(), pe.ErrNotSupported)
	}
	backing, err := bf.OpenBacking(ctx, 0, img.Size())
	if err != nil {
		return nil, fmt.Errorf("flr %s: %w", p.ID(), err)
	}
	imagePath := backing.Name()
	backing.Close()

	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	tab, err := partition.Read(img, img.Size())
	parts := tab.Partitions
	switch {
	case errors.Is(err, partition.ErrNoTable):
		parts = []partition.Partition{{Number: 0, Start: 0, Size: img.Size()}}
	case err != nil:
		return nil, fmt.Errorf("flr %s: partition table: %w", p.ID(), err)
	}

	st := &state{Snapshot: p.ID().String(), Image: imagePath}
	save := func() error { return saveState(dir, st) }
	if err := save(); err != nil {
		return nil, err
	}
	fail := func(err error) ([]Mounted, error) {
		if uerr := Unmount(context.WithoutCancel(ctx), dir); uerr != nil {
			err = fmt.Errorf("%w (and undoing: %v)", err, uerr)
		}
		return nil, err
	}
	var refused []string
	mountedAny := false
	for _, part := range parts {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		name := fmt.Sprintf("p%d", part.Number)
		if part.Number == 0 {
			name = "disk"
		}
		loop, err := attach(ctx, imagePath, part.Start, part.Size)
		if err != nil {
			return fail(fmt.Errorf("flr %s %s: %w", p.ID(), name, err))
		}
		m := Mounted{Name: name, Loop: loop, Size: part.Size}
		st.Mounts = append(st.Mounts, m)
		if err := save(); err != nil {
			return fail(err)
		}
		fstype := fsType(ctx, loop)
		if fstype == "" || fstype == "swap" {
			st.Mounts[len(st.Mounts)-1].Skipped = "no mountable filesystem"
			continue
		}
		if !allowedFS[fstype] {
			st.Mounts[len(st.Mounts)-1].Skipped = notAllowed(fstype)
			refused = append(refused, fmt.Sprintf("%s is %s", name, fstype))
			continue
		}
		mountedAny = true
		mdir := filepath.Join(dir, name)
		if err := os.Mkdir(mdir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fail(err)
		}
		st.Mounts[len(st.Mounts)-1].Dir, st.Mounts[len(st.Mounts)-1].FSType = mdir, fstype
		if err := save(); err != nil {
			return fail(err)
		}
		if err := mountFS(ctx, fstype, loop, mdir); err != nil {
			return fail(fmt.Errorf("flr %s: mount %s (%s): %w", p.ID(), name, fstype, err))
		}
	}
	if !mountedAny && len(refused) > 0 {
		return fail(fmt.Errorf("flr %s: %s: %w", p.ID(), strings.Join(refused, ", "), errNotAllowed))
	}
	return st.Mounts, nil
}

// allowedFS are the filesystems (as blkid names them) that recovery
// mounts: those of the disks an appliance backs up. The kernel's drivers
// for the others (squashfs, btrfs, hfsplus, minix...) are less hardened
// against crafted images, and a disk snapshot's content is whatever its
// guest wrote.
var allowedFS = map[string]bool{
	"ext2": true, "ext3": true, "ext4": true, "xfs": true,
	"vfat": true, "ntfs": true, "exfat": true,
}

var errNotAllowed = fmt.Errorf("not mounted for recovery (only ext2, ext3, ext4, xfs, vfat, ntfs and exfat are): %w", pe.ErrNotSupported)

func notAllowed(fstype string) string {
	return fmt.Sprintf("filesystem %s is not mounted for recovery", fstype)
}

// fuseDrivers mount filesystems the kernel may lack from user space.
var fuseDrivers = map[string]struct{ cmd, pkg string }{
	"vfat":  {"fusefat", "fusefat"},
	"ntfs":  {"ntfs-3g", "ntfs-3g"},
	"exfat": {"mount.exfat-fuse", "exfat-fuse"},
}

// mountFS mounts dev at dir read-only, with the kernel's driver where it
// has one for fstype, else with a FUSE driver.
func mountFS(ctx context.Context, fstype, dev, dir string) error {
	if kernelHas(fstype) {
		return run(ctx, "mount", "-t", fstype, "-o", mountOptions(fstype), dev, dir)
	}
	d, ok := fuseDrivers[fstype]
	if !ok {
		return fmt.Errorf("the kernel has no %s driver", fstype)
	}
	if _, err := exec.LookPath(d.cmd); err != nil {
		return fmt.Errorf("the kernel has no %s driver and %s is missing: apt-get install -y %s", fstype, d.cmd, d.pkg)
	}
	return run(ctx, d.cmd, "-o", "ro,nodev,nosuid,noexec", dev, dir)
}

// kernelHas reports whether the running kernel has a filesystem driver.
func kernelHas(fstype string) bool {
	b, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return true // cannot tell: let mount try
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == fstype {
			return true
		}
	}
	return false
}

// mountOptions are read-only and safe: no devices, no setuid, no
// execution, and no journal replay (which would write to the snapshot).
func mountOptions(fstype string) string {
	opts := "ro,nodev,nosuid,noexec"
	switch fstype {
	case "ext3", "ext4":
		opts += ",noload"
	case "xfs":
		opts += ",norecovery"
	}
	return opts
}

// Unmount undoes Mount: unmounts, detaches the loop devices and removes
// the directories it made and the state file. It also cleans up after a
// Mount that crashed half way, from the state file and from the mount
// table.
func Unmount(ctx context.Context, dir string) error {
	if err := checkTools(); err != nil {
		return err
	}
	st, err := loadState(dir)
	if err != nil {
		return err
	}
	var errs []error
	// Whatever is mounted below dir, recorded or not.
	for _, mp := range mountsBelow(dir) {
		if err := unmountOne(ctx, mp); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range st.Mounts {
		if m.Loop != "" && backingOf(m.Loop) == st.Image {
			if err := run(ctx, "losetup", "-d", m.Loop); err != nil {
				errs = append(errs, err)
			}
		}
		if m.Dir != "" {
			os.Remove(m.Dir)
		}
	}
	// Loop devices of the image that the state file missed (a crash
	// between attaching and recording).
	if st.Image != "" {
		for _, loop := range loopsOf(st.Image) {
			if err := run(ctx, "losetup", "-d", loop); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(filepath.Join(dir, StateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func unmountOne(ctx context.Context, mp string) error {
	var err error
	for range 10 {
		if err = syscall.Unmount(mp, 0); err == nil || errors.Is(err, syscall.EINVAL) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("umount %s: %w (is a shell or a program using it?)", mp, err)
}

func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) != 0 {
		if _, err := os.Stat(filepath.Join(dir, StateFile)); err == nil {
			return fmt.Errorf("%s holds a recovery mount already: 'astrolabe flr umount %s' first", dir, dir)
		}
		return fmt.Errorf("%s is not empty", dir)
	}
	return nil
}

func saveState(dir string, st *state) error {
	return atomicfile.Write(filepath.Join(dir, StateFile), 0o600, func(w io.Writer) error {
		return json.NewEncoder(w).Encode(st)
	})
}

func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		if len(mountsBelow(dir)) == 0 {
			return nil, fmt.Errorf("%s: no recovery mount there", dir)
		}
		return &state{}, nil
	}
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return &st, nil
}

// attach makes a read-only loop device of [off, off+size) of path.
func attach(ctx context.Context, path string, off, size int64) (string, error) {
	out, err := output(ctx, "losetup", "--find", "--show", "--read-only",
		"--offset", strconv.FormatInt(off, 10), "--sizelimit", strconv.FormatInt(size, 10), path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// fsType asks blkid for the filesystem on a device; "" if none.
func fsType(ctx context.Context, dev string) string {
	out, err := output(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", dev)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// backingOf is the file behind a loop device, from sysfs.
func backingOf(loop string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loopsOf lists the loop devices backed by path, from sysfs.
func loopsOf(path string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		loop := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		if backingOf(loop) == path {
			out = append(out, loop)
		}
	}
	return out
}

// mountsBelow lists mount points under dir, deepest first.
func mountsBelow(dir string) []string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], abs+"/") {
			out = append(out, f[4])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

func output(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
