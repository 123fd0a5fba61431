// Package petest holds what the tests of the local PE types (fs, disk)
// both need: the tools and privileges they require, a filesystem with
// reflinks, and a pe.Progress that records what it is told.
package petest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// RequireTool fails (never skips) when a command the test needs is
// missing, naming the Debian package that has it.
func RequireTool(tb testing.TB, cmd, pkg string) {
	tb.Helper()
	if _, err := exec.LookPath(cmd); err != nil {
		tb.Fatalf("%s not found: install %s: apt-get install -y %s", cmd, pkg, pkg)
	}
}

// RequireRoot fails the test unless it runs as root; why says what needs it.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("this test must run as root: it %s", why)
	}
}

// Run runs a command and returns its output, trimmed; it fails the test
// if the command fails.
func Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// MountXFS makes a reflink-capable XFS filesystem of size bytes in a file
// under dir, loop-mounts it and returns the mount point. Cleanup unmounts
// it, which also detaches the loop device (mount sets autoclear).
func MountXFS(tb testing.TB, dir string, size int64) string {
	tb.Helper()
	RequireRoot(tb, "mounts a filesystem")
	RequireTool(tb, "mkfs.xfs", "xfsprogs")
	RequireTool(tb, "mount", "mount")
	img := filepath.Join(dir, "xfs.img")
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	Run(tb, "mkfs.xfs", "-q", "-m", "reflink=1", img)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	Run(tb, "mount", "-o", "loop", img, mnt)
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// Progress is a pe.Progress that records what it is told. It is safe for
// concurrent use.
type Progress struct {
	mu          sync.Mutex
	total, done int64
}

// Start implements pe.Progress.
func (p *Progress) Start(total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total = total
}

// Add implements pe.Progress.
func (p *Progress) Add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
}

// Counts returns the bytes reported done and the total announced.
func (p *Progress) Counts() (done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done, p.total
}

func (p *Progress) String() string {
	done, total := p.Counts()
	return fmt.Sprintf("%d/%d", done, total)
}
