package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func isMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return strings.Contains(string(b), " "+dir+" ")
}

// TestMountCommand mounts with the binary, reads a snapshot file, and
// stops it with SIGTERM: the tree is unmounted and the exit is clean.
func TestMountCommand(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatal("/dev/fuse missing: run as root with the fuse module loaded")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "fs:sample").lastLine()
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	mustFail(t, cfg, "no such file", "mount", filepath.Join(dir, "missing"))

	cmd := startMount(t, cfg, mnt)
	parts := strings.Split(snap, ":")
	file := filepath.Join(mnt, "fs", "fs:sample", "snapshots", parts[2], "files", "README.txt")
	want, _ := os.ReadFile(filepath.Join(cfg, "fs", "sample", "README.txt"))
	if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read through the mount: %v", err)
	}
	mustFail(t, cfg, "busy", "mount", mnt)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("mount after SIGTERM: %v; stderr: %s", err, cmd.Stderr)
	}
	if isMounted(mnt) {
		t.Error("still mounted after SIGTERM")
	}
}

func TestFLRCommand(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	target := filepath.Join(dir, "flr")
	out := mustRun(t, cfg, "flr", "mount", snap, target).stdout
	if !strings.Contains(out, "p1") || !strings.Contains(out, "ext4") || !strings.Contains(out, filepath.Join(target, "p1")) {
		t.Errorf("flr mount printed:\n%s", out)
	}
	want, _ := os.ReadFile(filepath.Join(cfg, "fs", "sample", "README.txt"))
	if got, err := os.ReadFile(filepath.Join(target, "p1", "README.txt")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("file from the recovered partition: %v", err)
	}
	mustFail(t, cfg, "flr umount", "flr", "mount", snap, target)
	mustRun(t, cfg, "flr", "umount", target)
	if isMounted(filepath.Join(target, "p1")) {
		t.Error("still mounted after flr umount")
	}
	mustFail(t, cfg, "no recovery mount", "flr", "umount", target)
	mustFail(t, cfg, "names no snapshot", "flr", "mount", "disk:sample.img", target)
}
