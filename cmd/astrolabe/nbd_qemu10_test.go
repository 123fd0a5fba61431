package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/internal/qemu10"
)

// qemuTraced runs a qemu 10 tool with the trace of its NBD option
// replies and checks that it used extended headers.
func qemuTraced(t *testing.T, tool string, args ...string) string {
	t.Helper()
	out := runTool(t, tool, append([]string{"--trace", "nbd_receive_option_reply"}, args...)...)
	if !strings.Contains(out, qemu10.NegotiatedExtended) {
		t.Fatalf("%s %v did not negotiate extended headers:\n%s", filepath.Base(tool), args, out)
	}
	return out
}

// mapEntry is one extent of qemu-img map --output=json.
type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Zero   bool  `json:"zero"`
	Data   bool  `json:"data"`
}

// TestNBDWritableQemu10 restores into a writable export with qemu 10 over
// extended headers: qemu-img convert -n, then qemu-io's writes (plain,
// FUA), write zeroes, discard and flush, and reads back with qemu-io's
// pattern checks, qemu-img compare and qemu-img map. The PE the writes
// are kept in (--keep-writes) holds exactly what was written.
func TestNBDWritableQemu10(t *testing.T) {
	q, err := qemu10.Find()
	if err != nil {
		t.Fatal(err)
	}
	img, qio := q.Img, q.IO
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", "--samples", cfg)
	snap := mustRun(t, cfg, "snap", "disk:sample.img").lastLine()
	disks := diskFiles(t, cfg)
	s := startNBD(t, cfg, 1, "--writable", "--keep-writes", snap)
	uri := s.uri(0)
	sample, err := os.ReadFile(filepath.Join(cfg, "disk", "sample.img"))
	if err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	size := len(sample)
	if size < 64*mib {
		t.Fatalf("sample image of %d bytes, want at least 64 MiB", size)
	}

	// The restore: random data in two runs, holes elsewhere.
	want := make([]byte, size)
	rand.Read(want[1*mib : 3*mib])
	rand.Read(want[50*mib : 51*mib])
	src := filepath.Join(dir, "restore.img")
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuTraced(t, img, "convert", "-n", "-f", "raw", "-O", "raw", src, uri)

	// qemu-io's commands, and what each does to the image.
	fill := func(off, n int, b byte) {
		for i := off; i < off+n; i++ {
			want[i] = b
		}
	}
	out := qemuTraced(t, qio, "-f", "raw",
		"-c", "write -P 0xab 1M 64k", // into the first run
		"-c", "write -f -P 0xcd 10M 4k", // FUA, into a hole
		"-c", "write -z 2M 512k", // zeroes, allocated
		"-c", "write -z -u 50M 256k", // zeroes, may unmap
		"-c", fmt.Sprintf("discard %d 256k", 50*mib+512<<10), // this server zeroes what it is told to discard
		"-c", "write -P 0xef 60M 1M",
		"-c", fmt.Sprintf("write -P 0x5a %d 4k", size-4096), // the export's last 4 KiB
		"-c", "flush",
		uri)
	fill(1*mib, 64<<10, 0xab)
	fill(10*mib, 4<<10, 0xcd)
	fill(2*mib, 512<<10, 0)
	fill(50*mib, 256<<10, 0)
	fill(50*mib+512<<10, 256<<10, 0)
	fill(60*mib, mib, 0xef)
	fill(size-4096, 4096, 0x5a)
	if strings.Contains(out, "failed") {
		t.Fatalf("qemu-io writes:\n%s", out)
	}

	// Reads over extended headers: qemu-io's pattern checks, a compare
	// with what should be there, and the map of data and zeroes.
	out = qemuTraced(t, qio, "-f", "raw", "-r",
		"-c", "read -P 0xab 1M 64k",
		"-c", "read -P 0xcd 10M 4k",
		"-c", "read -P 0 2M 512k",
		"-c", "read -P 0 50M 256k",
		"-c", fmt.Sprintf("read -P 0 %d 256k", 50*mib+512<<10),
		"-c", "read -P 0xef 60M 1M",
		"-c", fmt.Sprintf("read -P 0x5a %d 4k", size-4096),
		uri)
	if strings.Contains(out, "failed") || strings.Count(out, "read ") != 7 {
		t.Fatalf("qemu-io reads:\n%s", out)
	}
	expected := filepath.Join(dir, "expected.img")
	if err := os.WriteFile(expected, want, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuTraced(t, img, "compare", "-f", "raw", "-F", "raw", expected, uri)
	checkMap(t, qemuTraced(t, img, "map", "--output=json", "-f", "raw", uri), want)
	if now := diskFiles(t, cfg); !slices.Equal(now, disks) {
		t.Errorf("disk PEs %v while exported, want %v", now, disks)
	}
	s.stop(syscall.SIGTERM)

	target := filepath.Join(cfg, "disk", strings.TrimPrefix(keptPE(t, uri, s.rest), "disk:"))
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the kept PE %s does not hold what qemu wrote", target)
	}
}

// checkMap checks qemu-img map's JSON (after the trace lines) against the
// image: its extents cover it in order, what it calls zero reads as
// zeros, and it tells data from zeroes at all.
func checkMap(t *testing.T, out string, want []byte) {
	t.Helper()
	var entries []mapEntry
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &entries); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var pos int64
	var zero, data int64
	for _, e := range entries {
		if e.Start != pos || e.Length <= 0 {
			t.Fatalf("qemu-img map: extent %+v after %d", e, pos)
		}
		if e.Zero && !bytes.Equal(want[e.Start:e.Start+e.Length], make([]byte, e.Length)) {
			t.Errorf("qemu-img map calls %+v zero, but it holds data", e)
		}
		if e.Zero {
			zero += e.Length
		} else {
			data += e.Length
		}
		pos += e.Length
	}
	if pos != int64(len(want)) || zero == 0 || data == 0 {
		t.Errorf("qemu-img map covers %d of %d bytes, %d zero and %d data:\n%s", pos, len(want), zero, data, out)
	}
	t.Logf("qemu-img map: %d extents, %d bytes zero, %d data", len(entries), zero, data)
}
