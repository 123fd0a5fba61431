// Package samples writes the sample PEs of the embedded default
// configuration: a small directory tree and a partitioned ext4 disk image,
// so every data path has something real to show on a fresh machine.
package samples

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// DiskSize is the size of the sample disk image.
const DiskSize = 64 << 20

// partStart is where the sample disk's one partition starts: 1 MiB, the
// alignment every partitioning tool uses.
const partStart = 1 << 20

// WriteTree creates a sample directory tree at dir (which must not exist).
func WriteTree(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("sample tree: %w", err)
	}
	files := map[string]string{
		"README.txt":           "This is a sample directory tree protected by Astrolabe.\nSnapshot it with 'astrolabe snap fs:sample'.\n",
		"docs/report-2026.txt": "Quarterly report\n================\nEverything is backed up.\n",
		"docs/notes/todo.md":   "- restore a single file from a snapshot\n- mount a disk snapshot\n",
		"etc/app.conf":         "listen = 127.0.0.1:8080\nlog_level = info\n",
		"data/empty":           "",
		"data/.hidden-dotfile": "dotfiles are protected too\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("sample tree: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("sample tree: %w", err)
		}
	}
	// A binary file of fixed pseudo-random bytes: the same on every machine,
	// and incompressible, so dedup and compression show honest numbers.
	rnd := rand.New(rand.NewPCG(1, 2))
	blob := make([]byte, 256<<10)
	for i := range blob {
		blob[i] = byte(rnd.Uint32())
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "random.bin"), blob, 0o600); err != nil {
		return fmt.Errorf("sample tree: %w", err)
	}
	if err := os.Symlink("../README.txt", filepath.Join(dir, "docs", "README-link")); err != nil {
		return fmt.Errorf("sample tree: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "empty-dir"), 0o750); err != nil {
		return fmt.Errorf("sample tree: %w", err)
	}
	if err := os.Chmod(filepath.Join(dir, "etc", "app.conf"), 0o640); err != nil {
		return fmt.Errorf("sample tree: %w", err)
	}
	return nil
}

// WriteDisk creates a sparse DiskSize image at path with an MBR partition
// table and one ext4 partition holding a copy of content (a directory).
// It needs mke2fs from e2fsprogs.
func WriteDisk(ctx context.Context, path, content string) error {
	mke2fs, err := exec.LookPath("mke2fs")
	if err != nil {
		return fmt.Errorf("sample disk needs mke2fs: install e2fsprogs (apt-get install -y e2fsprogs)")
	}
	tmp := path + ".tmp"
	if err := writeDisk(ctx, mke2fs, tmp, content); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("sample disk %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("sample disk %s: %w", path, err)
	}
	return nil
}

func writeDisk(ctx context.Context, mke2fs, path, content string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(DiskSize); err != nil {
		f.Close()
		return err
	}
	mbr := MBR(partStart/512, (DiskSize-partStart)/512, 0x83)
	if _, err := f.WriteAt(mbr, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// mke2fs writes the filesystem inside the image at the partition's
	// offset; -d copies the content in, so no loop device or mount is needed.
	fsKiB := (DiskSize - partStart) >> 10
	cmd := exec.CommandContext(ctx, mke2fs, "-t", "ext4", "-F", "-q", "-L", "sample",
		"-E", "offset="+strconv.Itoa(partStart), "-d", content, path, strconv.Itoa(fsKiB)+"k")
	// A fixed creation time and UUID keep the sample image reproducible.
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix(), 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mke2fs: %v: %s", err, out)
	}
	return nil
}

// MBR returns a 512-byte master boot record with one primary partition of
// the given type, start and length in 512-byte sectors.
func MBR(startLBA, sectors uint32, partType byte) []byte {
	mbr := make([]byte, 512)
	binary.LittleEndian.PutUint32(mbr[440:], 0x41535452) // disk signature "ASTR"
	e := mbr[446:462]
	e[0] = 0x00 // not bootable
	// CHS fields are obsolete; 0xFEFFFF means "use the LBA fields".
	copy(e[1:4], []byte{0xFE, 0xFF, 0xFF})
	e[4] = partType
	copy(e[5:8], []byte{0xFE, 0xFF, 0xFF})
	binary.LittleEndian.PutUint32(e[8:], startLBA)
	binary.LittleEndian.PutUint32(e[12:], sectors)
	mbr[510], mbr[511] = 0x55, 0xAA
	return mbr
}
