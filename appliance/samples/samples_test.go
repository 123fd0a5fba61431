package samples

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSampleDiskMountsWithTree(t *testing.T) {
	for _, tool := range []string{"mke2fs", "losetup", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y e2fsprogs mount", tool)
		}
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := WriteTree(tree); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := WriteDisk(context.Background(), img, tree); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != DiskSize || data[510] != 0x55 || data[511] != 0xAA || data[446+4] != 0x83 {
		t.Fatalf("image: size %d, MBR signature %x, type %x", len(data), data[510:512], data[446+4])
	}
	if start := binary.LittleEndian.Uint32(data[446+8:]); start*512 != partStart {
		t.Fatalf("partition starts at sector %d", start)
	}
	// The partition holds an ext4 filesystem the kernel mounts, with the tree in it.
	out, err := exec.Command("losetup", "--find", "--show", "--read-only",
		"--offset", "1048576", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "ro,noload", loop, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	for _, name := range []string{"README.txt", "data/random.bin", "docs/notes/todo.md"} {
		want, _ := os.ReadFile(filepath.Join(tree, name))
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in the disk image: %v (%d bytes, want %d)", name, err, len(got), len(want))
		}
	}
	if target, err := os.Readlink(filepath.Join(mnt, "docs", "README-link")); err != nil || target != "../README.txt" {
		t.Errorf("symlink in image: %q, %v", target, err)
	}
}
