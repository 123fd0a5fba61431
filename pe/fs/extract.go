package fs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/astrolabe-appliance/astrolabe/pe"
	"github.com/astrolabe-appliance/astrolabe/pe/internal/budget"
)

// maxMembers bounds what a restore accepts from untrusted input; each
// member costs some memory until the end.
const maxMembers = 10_000_000

// kind is what a name of the extracted tree is.
type kind uint8

const (
	kindDir kind = iota + 1
	kindFile
	kindSymlink
	kindNode    // a fifo or device node
	kindSkipped // a device node from untrusted input, not created
)

// extractor extracts a tar stream into an empty directory it owns, so that
// its own record of names is the truth about the directory: it never
// needs to look at the filesystem to know whether a name is a symlink.
// It writes through directory descriptors (see dirfd.go), relative to the
// directory of each name opened below root with RESOLVE_NO_SYMLINKS, and
// creates with O_EXCL|O_NOFOLLOW, so no write passes through a symlink
// even if something else changed the directory under it.
type extractor struct {
	ctx    context.Context
	root   *os.File
	chown  bool
	drop   bool           // untrusted input: see attrs.withoutPrivileges
	budget *budget.Budget // nil: unbounded

	// The directory of the last name written, open (O_PATH): members
	// come directory by directory.
	parentName string
	parentFD   int

	kinds    map[string]kind        // every name extracted so far
	symlinks []*tar.Header          // created last, in archive order
	dirs     map[string]*tar.Header // attrs to set last; nil for implicit dirs, "." is the root
	rejected []RejectedMember
	devices  skipLog // device nodes of untrusted input left out
	members  int
	buf      []byte
}

// extractOptions say how extract treats what it writes.
type extractOptions struct {
	// dropPrivileges restores untrusted input: no owners (everything
	// belongs to the restoring user), no setuid or setgid bits, only
	// unprivileged xattrs (see attrs.withoutPrivileges), and no device
	// nodes: they are left out with a warning each.
	dropPrivileges bool
	// budget, if set, is told every byte written; its error stops the
	// extraction.
	budget *budget.Budget
}

// extract extracts the tar stream r into the empty directory dir.
//
// It restores every type a tree holds: directories, regular files, hard
// links, symlinks, fifos and device nodes (devices need root, and are
// left out, with a warning each, when opts drop privileges).
//
// A member is refused when it would write outside dir: an absolute name or
// one with a ".." component, a name below a symlink or a non-directory of
// the archive, a hard link to a name that is not a file, fifo or device
// node earlier in the archive, and a second member of the same name
// (except directories). Any refusal fails the whole restore with an
// *UnsafeArchiveError naming up to maxRejected members; from the first one
// on, nothing more is written and the caller removes dir.
//
// A symlink's target is data, whatever it says (absolute, "..", a loop):
// symlinks are created after everything else and nothing is written
// through a name resolved through one (RESOLVE_NO_SYMLINKS, O_NOFOLLOW),
// here or in any later walk of the tree, so a target never leads a write
// anywhere. Directory modes and times are set last, so that read-only
// directories can be filled and keep their mtimes. Owners are restored
// when running as root unless opts drop privileges; xattrs (PAX
// SCHILY.xattr.*) as far as the filesystem allows. All-zero blocks of
// files stay holes and cost nothing in the budget.
func extract(ctx context.Context, dir string, r io.Reader, opts extractOptions) error {
	root, err := openDir(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	x := &extractor{
		ctx:      ctx,
		root:     root,
		chown:    canChown() && !opts.dropPrivileges,
		drop:     opts.dropPrivileges,
		budget:   opts.budget,
		parentFD: -1,
		kinds:    map[string]kind{},
		dirs:     map[string]*tar.Header{},
		devices:  skipLog{what: "restore from untrusted input leaves out a device node"},
	}
	defer x.closeParent()
	tr := tar.NewReader(r)
	for len(x.rejected) < maxRejected {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			return fmt.Errorf("read tar after member %d: %w", x.members, err)
		}
		if x.members++; x.members > maxMembers {
			return fmt.Errorf("tar stream has more than %d members", maxMembers)
		}
		if err := x.member(h, tr); err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			return fmt.Errorf("tar member %q: %w", h.Name, err)
		}
	}
	if len(x.rejected) > 0 {
		return &UnsafeArchiveError{Members: x.rejected, More: len(x.rejected) >= maxRejected}
	}
	x.devices.summarize()
	return x.finish()
}

// parentOf returns the open directory that holds name, and name's last
// component.
func (x *extractor) parentOf(name string) (int, string, error) {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return int(x.root.Fd()), base, nil
	}
	if x.parentFD >= 0 && x.parentName == dir {
		return x.parentFD, base, nil
	}
	x.closeParent()
	fd, err := openBeneath(int(x.root.Fd()), dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, "", fmt.Errorf("open directory %s: %w", dir, err)
	}
	x.parentName, x.parentFD = dir, fd
	return fd, base, nil
}

func (x *extractor) closeParent() {
	if x.parentFD >= 0 {
		unix.Close(x.parentFD)
		x.parentFD = -1
	}
}

// attrsOf is what h says about owner, mode, times and xattrs, without
// privileges for untrusted input.
func (x *extractor) attrsOf(h *tar.Header) attrs {
	a := attrsOfHeader(h)
	if x.drop {
		a = a.withoutPrivileges()
	}
	return a
}

// writing reports whether members are still extracted: after the first
// refusal the rest of the stream is only checked.
func (x *extractor) writing() bool { return len(x.rejected) == 0 }

func (x *extractor) reject(h *tar.Header, why string) {
	x.rejected = append(x.rejected, RejectedMember{Name: h.Name, Reason: why})
}

// rejectName refuses the member h named name and still records what the
// archive says is there, so that later members are judged by it: after a
// refused symlink l, l/passwd is refused too and both are reported. A
// name once a symlink stays one: members below it are refused.
func (x *extractor) rejectName(h *tar.Header, name, why string) {
	x.reject(h, why)
	if x.kinds[name] == kindSymlink {
		return
	}
	switch h.Typeflag {
	case tar.TypeDir:
		x.kinds[name] = kindDir
	case tar.TypeSymlink:
		x.kinds[name] = kindSymlink
	default:
		x.kinds[name] = kindFile
	}
}

// member checks and extracts one member; it returns an error only for
// failures of the filesystem, refusals are recorded.
func (x *extractor) member(h *tar.Header, r io.Reader) error {
	if h.Typeflag == tar.TypeXGlobalHeader {
		return nil // archive-wide PAX defaults; nothing we use
	}
	name, why := memberName(h.Name)
	if why != "" {
		x.reject(h, why)
		return nil
	}
	if name == "." {
		if h.Typeflag != tar.TypeDir {
			x.reject(h, "the root of the tree is not a directory")
			return nil
		}
		x.dirs["."] = h
		return nil
	}
	for _, p := range parents(name) {
		switch x.kinds[p] {
		case 0, kindDir:
		case kindSymlink:
			x.rejectName(h, name, fmt.Sprintf("name resolves through the symlink %q earlier in the archive", p))
			return nil
		default:
			x.rejectName(h, name, fmt.Sprintf("name is below %q, which is not a directory", p))
			return nil
		}
	}
	if k, ok := x.kinds[name]; ok && (k != kindDir || h.Typeflag != tar.TypeDir) {
		x.rejectName(h, name, "duplicate name: an earlier member has it")
		return nil
	}

	switch h.Typeflag {
	case tar.TypeDir:
		return x.mkdir(name, h)
	case tar.TypeReg, tar.TypeGNUSparse:
		return x.file(name, h, r)
	case tar.TypeSymlink:
		if h.Linkname == "" {
			x.rejectName(h, name, "symlink with an empty target")
			return nil
		}
		// Created when everything else is in.
		if err := x.mkparents(name); err != nil {
			return err
		}
		x.kinds[name] = kindSymlink
		x.symlinks = append(x.symlinks, h)
		return nil
	case tar.TypeLink:
		return x.hardlink(name, h)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return x.node(name, h)
	default:
		x.rejectName(h, name, fmt.Sprintf("unsupported member type %q", h.Typeflag))
		return nil
	}
}

// mkparents creates the missing parents of name as plain directories.
// member has checked that the existing ones are directories.
func (x *extractor) mkparents(name string) error {
	for _, p := range parents(name) {
		if _, ok := x.kinds[p]; ok {
			continue
		}
		x.kinds[p] = kindDir
		if _, ok := x.dirs[p]; !ok {
			x.dirs[p] = nil
		}
		if x.writing() {
			if err := x.mkdirat(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// mkdirat creates the directory name, owner-only until finish sets its
// mode.
func (x *extractor) mkdirat(name string) error {
	dir, base, err := x.parentOf(name)
	if err != nil {
		return err
	}
	if err := unix.Mkdirat(dir, base, 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", name, err)
	}
	return nil
}

func (x *extractor) mkdir(name string, h *tar.Header) error {
	if err := x.mkparents(name); err != nil {
		return err
	}
	x.dirs[name] = h // a later header of the same directory wins
	if _, ok := x.kinds[name]; ok {
		return nil
	}
	x.kinds[name] = kindDir
	if !x.writing() {
		return nil
	}
	return x.mkdirat(name)
}

// place records name as of kind k, creates its missing parents, and
// returns the open directory to create it in and its last component;
// write is false after a refusal (nothing more is written) or an error.
func (x *extractor) place(name string, k kind) (dir int, base string, write bool, err error) {
	if err := x.mkparents(name); err != nil {
		return -1, "", false, err
	}
	x.kinds[name] = k
	if !x.writing() {
		return -1, "", false, nil
	}
	dir, base, err = x.parentOf(name)
	return dir, base, err == nil, err
}

func (x *extractor) file(name string, h *tar.Header, r io.Reader) error {
	dir, base, write, err := x.place(name, kindFile)
	if !write {
		return err
	}
	fd, err := unix.Openat(dir, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	err = x.writeSparse(f, r)
	if err == nil {
		err = applyFdAttrs(fd, name, x.attrsOf(h), x.chown)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// holeBlock is the granularity at which restored files get holes: the
// block size of the filesystems we restore to.
const holeBlock = 4096

// writeSparse copies r to the empty file f, seeking over all-zero blocks
// so that they stay holes.
func (x *extractor) writeSparse(f *os.File, r io.Reader) error {
	if x.buf == nil {
		x.buf = make([]byte, 1<<20)
	}
	var off int64
	for {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, x.buf)
		if n > 0 && x.budget != nil {
			if berr := x.budget.Produce(int64(n)); berr != nil {
				return berr
			}
		}
		if werr := x.writeData(f, x.buf[:n], off); werr != nil {
			return werr
		}
		off += int64(n)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	return f.Truncate(off)
}

// writeData writes the runs of b, to go at off in f, that are not
// all-zero blocks of holeBlock bytes (aligned in the file).
func (x *extractor) writeData(f *os.File, b []byte, off int64) error {
	start := -1 // of the run of data blocks being gathered
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		at := start
		start = -1
		if x.budget != nil {
			if err := x.budget.Add(int64(end - at)); err != nil {
				return err
			}
		}
		_, err := f.WriteAt(b[at:end], off+int64(at))
		return err
	}
	for i := 0; i < len(b); {
		// The block ends at the next multiple of holeBlock in the file.
		end := min(len(b), i+int(holeBlock-(off+int64(i))%holeBlock))
		if pe.IsZero(b[i:end]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i = end
	}
	return flush(len(b))
}

func (x *extractor) hardlink(name string, h *tar.Header) error {
	target, why := memberName(h.Linkname)
	if why != "" {
		x.rejectName(h, name, fmt.Sprintf("hard link to %q: %s", h.Linkname, why))
		return nil
	}
	k := x.kinds[target]
	switch k {
	case kindFile, kindNode:
	case kindSkipped:
		x.kinds[name] = kindSkipped
		x.devices.skip(name, fmt.Sprintf("a hard link to the device node %s, not restored from untrusted input", target))
		return nil
	default:
		x.rejectName(h, name, fmt.Sprintf("hard link to %q, which is not a regular file, fifo or device node earlier in the archive", h.Linkname))
		return nil
	}
	dir, base, write, err := x.place(name, k)
	if !write {
		return err
	}
	if err := linkBeneath(int(x.root.Fd()), target, dir, base); err != nil {
		return fmt.Errorf("link %s to %s: %w", name, target, err)
	}
	return nil
}

// tarNodeType maps tar's types of fifos and device nodes to file types.
func tarNodeType(flag byte) uint32 {
	switch flag {
	case tar.TypeChar:
		return unix.S_IFCHR
	case tar.TypeBlock:
		return unix.S_IFBLK
	}
	return unix.S_IFIFO
}

// node creates the fifo or device node h. From untrusted input a device
// node is left out with a warning: it would grant access to the device.
func (x *extractor) node(name string, h *tar.Header) error {
	typ := tarNodeType(h.Typeflag)
	if x.drop && isDevice(typ) {
		x.kinds[name] = kindSkipped
		x.devices.skip(name, fmt.Sprintf("%s %d,%d, not restored from untrusted input (cp --keep-privileges restores it)", nodeKind(typ), h.Devmajor, h.Devminor))
		return nil
	}
	if h.Devmajor < 0 || h.Devmajor > 0xfff || h.Devminor < 0 || h.Devminor > 0xfffff {
		x.rejectName(h, name, fmt.Sprintf("device number %d,%d out of range", h.Devmajor, h.Devminor))
		return nil
	}
	dir, base, write, err := x.place(name, kindNode)
	if !write {
		return err
	}
	rdev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
	return makeNode(dir, base, name, typ, rdev, x.attrsOf(h), x.chown)
}

// finish creates the symlinks and sets the attrs of directories.
func (x *extractor) finish() error {
	for _, h := range x.symlinks {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		name := cleanName(h.Name)
		dir, base, err := x.parentOf(name)
		if err != nil {
			return err
		}
		if err := unix.Symlinkat(h.Linkname, dir, base); err != nil {
			return fmt.Errorf("symlink %s: %w", name, err)
		}
		if err := applySymlinkAttrs(dir, base, name, x.attrsOf(h), x.chown); err != nil {
			return err
		}
	}
	x.closeParent()
	names := make([]string, 0, len(x.dirs))
	for name := range x.dirs {
		if name != "." {
			names = append(names, name)
		}
	}
	// Deepest first, the root last: a directory's mode may forbid
	// opening what is below it.
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	for _, name := range names {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		fd, err := openBeneath(int(x.root.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return fmt.Errorf("open directory %s: %w", name, err)
		}
		err = x.dirAttrs(fd, name)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return x.dirAttrs(int(x.root.Fd()), ".")
}

// dirAttrs sets the attrs of the directory name, open as fd.
func (x *extractor) dirAttrs(fd int, name string) error {
	h := x.dirs[name]
	if h == nil {
		// An implicit parent, or a root the archive does not describe:
		// as tar makes them.
		if err := unix.Fchmod(fd, 0o755); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
		return nil
	}
	return applyFdAttrs(fd, name, x.attrsOf(h), x.chown)
}

// cleanName is the cleaned name of a member memberName accepted.
func cleanName(raw string) string {
	name, _ := memberName(raw)
	return name
}

// attrsOfHeader is what a tar header says about owner, mode, times and
// xattrs.
func attrsOfHeader(h *tar.Header) attrs {
	a := attrs{
		uid:   h.Uid,
		gid:   h.Gid,
		mode:  uint32(h.Mode & 0o7777),
		atime: unix.Timespec{Nsec: unix.UTIME_OMIT},
		mtime: timespec(h.ModTime),
	}
	if !h.AccessTime.IsZero() {
		a.atime = timespec(h.AccessTime)
	}
	const prefix = "SCHILY.xattr."
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, prefix); ok && name != "" {
			if a.xattrs == nil {
				a.xattrs = map[string]string{}
			}
			a.xattrs[name] = v
		}
	}
	return a
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}
