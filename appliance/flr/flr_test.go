package flr

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/astrolabe-appliance/astrolabe/appliance/config"
	"github.com/astrolabe-appliance/astrolabe/pe"
)

func needTools(t *testing.T) {
	t.Helper()
	for tool, pkg := range map[string]string{"sfdisk": "fdisk", "mke2fs": "e2fsprogs", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "losetup": "mount", "blkid": "util-linux"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install -y %s", tool, pkg)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("file-level recovery needs root (loop devices and mounts)")
	}
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// gptDisk builds a disk image with an ext4 partition holding tree and a
// vfat partition holding the files of vfatFiles.
func gptDisk(t *testing.T, path, tree string, vfatFiles map[string]string) {
	t.Helper()
	tmp := t.TempDir()
	ext4 := filepath.Join(tmp, "p1.img")
	sh(t, "mke2fs", "-q", "-t", "ext4", "-d", tree, "-F", ext4, "16M")
	vfat := filepath.Join(tmp, "p2.img")
	sh(t, "mkfs.vfat", "-C", vfat, "8192")
	for name, content := range vfatFiles {
		src := filepath.Join(tmp, name)
		os.WriteFile(src, []byte(content), 0o644)
		sh(t, "mcopy", "-i", vfat, src, "::/"+name)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(32 << 20)
	f.Close()
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", path)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=32768, type=L\nstart=34816, size=16384, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	sh(t, "dd", "if="+ext4, "of="+path, "bs=512", "seek=2048", "conv=notrunc,sparse", "status=none")
	sh(t, "dd", "if="+vfat, "of="+path, "bs=512", "seek=34816", "conv=notrunc,sparse", "status=none")
}

func TestMountUmount(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	if err := config.Init(dir); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("vm1\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "big.bin"), bytes.Repeat([]byte("astrolabe"), 100000), 0o644)
	gptDisk(t, filepath.Join(dir, "disk", "vm1.img"), tree, map[string]string{"BOOT.TXT": "boot partition\n"})

	m, err := config.Load(dir, config.Factories())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pe.ParseID("disk:vm1.img")
	live, _ := m.Get(ctx, id)
	snapID, err := live.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := m.Get(ctx, snapID)

	mnt := filepath.Join(t.TempDir(), "flr")
	mounted, err := Mount(ctx, snap, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unmount(context.Background(), mnt) })
	if len(mounted) != 2 || mounted[0].FSType != "ext4" || mounted[1].FSType != "vfat" || mounted[0].Size != 32768*512 {
		t.Fatalf("mounted %+v", mounted)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "p1", "etc", "hostname")); err != nil || string(b) != "vm1\n" {
		t.Errorf("p1/etc/hostname: %q %v", b, err)
	}
	want, _ := os.ReadFile(filepath.Join(tree, "big.bin"))
	if b, _ := os.ReadFile(filepath.Join(mnt, "p1", "big.bin")); !bytes.Equal(b, want) {
		t.Error("p1/big.bin differs")
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "p2", "BOOT.TXT")); err != nil || string(b) != "boot partition\n" {
		t.Errorf("p2/BOOT.TXT: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "p1", "new"), nil, 0o644); err == nil {
		t.Error("wrote into a recovery mount")
	}
	if _, err := Mount(ctx, snap, mnt); err == nil || !strings.Contains(err.Error(), "flr umount") {
		t.Errorf("second mount on the same directory: %v", err)
	}

	// A loop device the state file does not know (a crash right after
	// losetup) is found by its backing file.
	st, _ := loadState(mnt)
	orphan, err := attach(ctx, st.Image, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := Unmount(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	if left := mountsBelow(mnt); len(left) != 0 {
		t.Errorf("mounts left: %v", left)
	}
	// A detached loop device goes once its last opener (udev probing it,
	// now and then) closes it: wait for that, boundedly.
	loops := loopsOf(st.Image)
	for i := 0; i < 50 && len(loops) != 0; i++ {
		time.Sleep(100 * time.Millisecond)
		loops = loopsOf(st.Image)
	}
	if len(loops) != 0 {
		t.Errorf("loop devices left: %v (orphan was %s)", loops, orphan)
	}
	if entries, _ := os.ReadDir(mnt); len(entries) != 0 {
		t.Errorf("left in the directory: %v", entries)
	}
}

func TestWholeDisk(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	config.Init(dir)
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "a.txt"), []byte("whole"), 0o644)
	sh(t, "mke2fs", "-q", "-t", "ext4", "-d", tree, "-F", filepath.Join(dir, "disk", "raw.img"), "8M")
	m, _ := config.Load(dir, config.Factories())
	id, _ := pe.ParseID("disk:raw.img")
	live, _ := m.Get(ctx, id)
	snapID, _ := live.Snapshot(ctx, nil)
	snap, _ := m.Get(ctx, snapID)
	mnt := filepath.Join(t.TempDir(), "flr")
	mounted, err := Mount(ctx, snap, mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer Unmount(ctx, mnt)
	if len(mounted) != 1 || mounted[0].Name != "disk" {
		t.Fatalf("mounted %+v", mounted)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "disk", "a.txt")); err != nil || string(b) != "whole" {
		t.Errorf("disk/a.txt: %q %v", b, err)
	}
	if err := Unmount(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(ctx, mnt); err == nil {
		t.Error("a second umount found something to undo")
	}
}

// TestRefusesOtherFilesystems: a disk whose filesystem is not among those
// recovery mounts (here squashfs, which the kernel has) is refused with
// an error naming the type, and nothing stays mounted or to undo.
func TestRefusesOtherFilesystems(t *testing.T) {
	needTools(t)
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Fatal("mksquashfs missing: apt-get install -y squashfs-tools (scripts/deps.d/web.sh)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	config.Init(dir)
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "a.txt"), []byte("squashed"), 0o644)
	img := filepath.Join(dir, "disk", "raw.img")
	sh(t, "mksquashfs", tree, img, "-quiet", "-noappend")
	// A disk's size is whole sectors.
	if fi, err := os.Stat(img); err != nil {
		t.Fatal(err)
	} else if err := os.Truncate(img, (fi.Size()+4095)/4096*4096); err != nil {
		t.Fatal(err)
	}
	m, _ := config.Load(dir, config.Factories())
	id, _ := pe.ParseID("disk:raw.img")
	live, _ := m.Get(ctx, id)
	snapID, err := live.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := m.Get(ctx, snapID)
	mnt := filepath.Join(t.TempDir(), "flr")
	mounted, err := Mount(ctx, snap, mnt)
	if err == nil {
		Unmount(ctx, mnt)
		t.Fatalf("a squashfs disk mounted: %+v", mounted)
	}
	if !errors.Is(err, pe.ErrNotSupported) || !strings.Contains(err.Error(), "disk is squashfs") {
		t.Errorf("error %q: want one naming the filesystem, and not supported", err)
	}
	if mp := mountsBelow(mnt); len(mp) != 0 {
		t.Errorf("left mounted: %v", mp)
	}
	if _, err := os.Stat(filepath.Join(mnt, StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the state file stays (%v): something was left to undo", err)
	}
}
