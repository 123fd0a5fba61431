package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// randomFile writes n random bytes to path and returns them.
func randomFile(t *testing.T, path string, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// bytesRead is what process pid read so far with read system calls, from
// files and sockets alike.
func bytesRead(t *testing.T, pid int) int64 {
	t.Helper()
	return procValue(t, pid, "io", "rchar:")
}

// TestNBDWritableRepository exports a backed-up snapshot writable straight
// from a repository in a directory and in a versitygw bucket: the export
// is there before the snapshot was read (the server read far less than
// the image), nbdcopy and qemu-io write into it, it reads back as the
// snapshot with the writes, and --keep-writes makes a local disk PE of
// exactly that; the snapshot in the repository still restores as it was.
func TestNBDWritableRepository(t *testing.T) {
	needNBDTools(t)
	s3 := startVersitygw(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	// Random data: a copy of the snapshot reads every byte of it.
	const size = 32 * mib
	image := randomFile(t, filepath.Join(cfg, "disk", "big.img"), size)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("cow\n"), 0o600)

	for _, repo := range []struct{ name, url string }{
		{"directory", filepath.Join(dir, "repo")},
		{"S3", "s3+http://" + s3.endpoint + "/backups/astrolabe"},
	} {
		t.Run(repo.name, func(t *testing.T) {
			r := []string{"--repo", repo.url, "--password-file", pw}
			mustRun(t, cfg, append([]string{"repo", "init"}, r...)...)
			snap := mustRun(t, cfg, append(append([]string{"backup"}, r...), "disk:big.img")...).lastLine()
			disks := diskFiles(t, cfg)

			started := time.Now()
			s := startNBD(t, cfg, 1, append(r, "--writable", "--keep-writes", snap)...)
			appeared := time.Since(started)
			// Before any client: the repository's index and little else.
			if n := bytesRead(t, s.cmd.Process.Pid); n > size/4 {
				t.Errorf("nbd serve --writable read %d bytes before its export was used, want far less than the image's %d", n, size)
			} else {
				t.Logf("%s: the writable export appeared after %v, having read %d bytes", repo.name, appeared.Round(time.Millisecond), n)
			}

			// nbdcopy writes the first 4 MiB; qemu-io 4 KiB into the middle
			// of a block, whose rest comes from the snapshot.
			want := slices.Clone(image)
			head := randomFile(t, filepath.Join(dir, "head.img"), 4*mib)
			copy(want, head)
			runTool(t, "nbdcopy", filepath.Join(dir, "head.img"), s.uri(0))
			out := runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 20484k 4k", "-c", "flush", s.uri(0))
			if strings.Contains(out, "failed") {
				t.Fatalf("qemu-io write:\n%s", out)
			}
			copy(want[20484<<10:], bytes.Repeat([]byte{0xab}, 4<<10))
			wantFile := filepath.Join(dir, "want.img")
			os.WriteFile(wantFile, want, 0o644)
			runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", wantFile, s.uri(0))
			if got := diskFiles(t, cfg); !slices.Equal(got, disks) {
				t.Errorf("disk PEs %v while exported, want %v", got, disks)
			}
			s.stop(syscall.SIGTERM)

			kept := keptPE(t, s.uri(0), s.rest)
			if got, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(kept, "disk:"))); !bytes.Equal(got, want) {
				t.Errorf("the kept PE %s is not the snapshot with the writes", kept)
			}
			if got := listDir(t, filepath.Join(cfg, "state", "overlays")); len(got) != 0 {
				t.Errorf("overlays left: %v", got)
			}
			// The copy writable exports made before they had overlays,
			// for comparison; the snapshot did not change.
			started = time.Now()
			restored := mustRun(t, cfg, append(append([]string{"restore"}, r...), snap)...).lastLine()
			t.Logf("%s: a copy of the snapshot (restore) took %v", repo.name, time.Since(started).Round(time.Millisecond))
			if got, _ := os.ReadFile(filepath.Join(cfg, "disk", strings.TrimPrefix(restored, "disk:"))); !bytes.Equal(got, image) {
				t.Error("the snapshot in the repository changed under a writable export")
			}
		})
	}
}

// TestNBDWritableENOSPC puts a writable export's overlay on a 2 MiB tmpfs
// and writes 16 MiB into it: nbdcopy fails with "No space left on
// device", the server stays up, and every 64 KiB block of the export
// reads as either the snapshot's or what was written — never anything else.
func TestNBDWritableENOSPC(t *testing.T) {
	needNBDTools(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cfg")
	mustRun(t, cfg, "init", cfg)
	const size, block = 16 * mib, 64 << 10
	base := randomFile(t, filepath.Join(cfg, "disk", "small.img"), size)
	snap := mustRun(t, cfg, "snap", "disk:small.img").lastLine()
	overlays := filepath.Join(dir, "overlays")
	os.Mkdir(overlays, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", overlays).CombinedOutput(); err != nil {
		t.Fatalf("mount a 2 MiB tmpfs (as root): %v\n%s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(overlays, syscall.MNT_DETACH) })

	s := startNBD(t, cfg, 1, "--writable", "--overlay-dir", overlays, snap)
	src := filepath.Join(dir, "written.img")
	written := randomFile(t, src, size)
	out, err := tryTool(t, "nbdcopy", src, s.uri(0))
	if err == nil || !strings.Contains(out, "No space left on device") {
		t.Errorf("nbdcopy of %d MiB into an overlay on 2 MiB: %v, want ENOSPC\n%s", size/mib, err, out)
	}
	t.Logf("nbdcopy: %v: %s", err, strings.TrimSpace(out))

	if out := runTool(t, "nbdinfo", s.uri(0)); !strings.Contains(out, "is_read_only: false") {
		t.Errorf("nbdinfo after ENOSPC:\n%s", out)
	}
	copied := filepath.Join(dir, "copy.img")
	runTool(t, "nbdcopy", s.uri(0), copied)
	got, _ := os.ReadFile(copied)
	if len(got) != size {
		t.Fatalf("the export reads %d bytes, want %d", len(got), size)
	}
	inLayer, notInLayer := -1, -1 // a block of each kind
	var fromWrites, bad int
	for off := 0; off < size; off += block {
		b := got[off : off+block]
		switch {
		case bytes.Equal(b, written[off:off+block]):
			fromWrites++
			inLayer = off
		case !bytes.Equal(b, base[off:off+block]):
			bad++
		default:
			notInLayer = off
		}
	}
	t.Logf("after ENOSPC: %d of %d blocks read as written, the others as the snapshot", fromWrites, size/block)
	if bad != 0 || inLayer < 0 || notInLayer < 0 {
		t.Fatalf("after ENOSPC: %d blocks read as written, %d as neither the snapshot nor the writes, of %d", fromWrites, bad, size/block)
	}
	// The export stays writable where the overlay has room: a block it
	// holds is written again; a new one is still refused.
	out = runTool(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x11 %d %d", inLayer, block), "-c", "flush",
		"-c", fmt.Sprintf("read -P 0x11 %d %d", inLayer, block), s.uri(0))
	if strings.Contains(out, "failed") || strings.Count(out, "wrote ") != 1 || strings.Count(out, "read ") != 1 {
		t.Errorf("qemu-io rewriting a block of the full overlay:\n%s", out)
	}
	out, _ = tryTool(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x22 %d %d", notInLayer, block), s.uri(0))
	if !strings.Contains(out, "No space left on device") {
		t.Errorf("qemu-io writing a new block into the full overlay:\n%s", out)
	}
	if b := runTool(t, "qemu-io", "-f", "raw", "-r", "-c", fmt.Sprintf("read -v %d 16", notInLayer), s.uri(0)); strings.Contains(b, "22 22 22") {
		t.Errorf("a refused write shows in the export:\n%s", b)
	}
	s.stop(syscall.SIGTERM)
	if got := listDir(t, overlays); len(got) != 0 {
		t.Errorf("overlays left: %v", got)
	}
}

// exportURI is the URI of the export of snap the appliance lists.
func (a *appliance) exportURI(snap string) string {
	a.t.Helper()
	status, body := a.call("GET", "/v1/appliance/nbd/exports", a.info["token"], "")
	var exports []struct{ ID, URI string }
	if err := json.Unmarshal([]byte(body), &exports); status != 200 || err != nil {
		a.t.Fatalf("list exports: %d %v %s", status, err, body)
	}
	for _, e := range exports {
		if e.ID == snap {
			return e.URI
		}
	}
	a.t.Fatalf("no export of %s: %s", snap, body)
	return ""
}

// TestServeWritableExportKill9 writes into an appliance's writable export,
// then: deleting the snapshot is refused with 409 while the export reads
// on; after kill -9 of the appliance and a restart the export reads the
// writes (nbdcopy --flush flushed them); stopping it without keep leaves no PE nor
// overlay, and then the snapshot can be deleted.
func TestServeWritableExportKill9(t *testing.T) {
	dir, cfg, snap, sample := sampleSnapshot(t)
	disks := diskFiles(t, cfg)
	a := startServe(t, cfg)
	certs := filepath.Join(dir, "client")
	mustRun(t, cfg, "nbd", "client-cert", certs)
	a.startExport(snap, true)

	// The sample with 1 MiB and an unaligned 65 KiB changed.
	want := slices.Clone(sample)
	rand.Read(want[1*mib : 2*mib])
	rand.Read(want[40*mib+512 : 40*mib+512+65<<10])
	src := filepath.Join(dir, "written.img")
	os.WriteFile(src, want, 0o644)
	// --flush: nbdcopy does not flush unless told, and an overlay keeps
	// what was flushed (as a disk with a write cache would).
	runTool(t, "nbdcopy", "--flush", src, withCerts(a.exportURI(snap), certs))
	compare := func(what string) {
		t.Helper()
		out, err := tryTool(t, "qemu-img", append(append([]string{"compare"}, qemuTLS(certs)...), "-f", "raw", src, qemuNBD(a.exportURI(snap)))...)
		if err != nil {
			t.Errorf("%s: the export does not read what was written: %v\n%s", what, err, out)
		}
	}
	snapPath := "/v1/astrolabe/disk/" + strings.ReplaceAll(snap, ":", "%3A")
	if status, body := a.call("DELETE", snapPath, a.info["token"], ""); status != 409 || !strings.Contains(body, "writable NBD export") {
		t.Errorf("delete a snapshot with a writable export: %d %s, want 409", status, body)
	}
	compare("after the refused delete")

	a.kill9()
	a = startServe(t, cfg)
	compare("after kill -9 and a restart")
	if status, body := a.call("DELETE", snapPath, a.info["token"], ""); status != 409 {
		t.Errorf("delete a snapshot with a writable export after a restart: %d %s, want 409", status, body)
	}
	if status, body := a.call("DELETE", "/v1/appliance/nbd/exports/"+strings.ReplaceAll(snap, ":", "%3A"), a.info["token"], ""); status != 204 {
		t.Fatalf("stop the writable export: %d %s", status, body)
	}
	if got := diskFiles(t, cfg); !slices.Equal(got, disks) {
		t.Errorf("disk PEs %v after the export stopped without keep, want %v", got, disks)
	}
	if got := listDir(t, filepath.Join(cfg, "state", "overlays")); len(got) != 0 {
		t.Errorf("overlays left after the export stopped: %v", got)
	}
	if status, body := a.call("DELETE", snapPath, a.info["token"], ""); status != 200 {
		t.Errorf("delete the snapshot once its export stopped: %d %s", status, body)
	}
	a.stop()
}

// TestRmsnUnderWritableExport: the CLI deletes no snapshot a writable
// export of another process writes over (before, only the API refused):
// its overlay names the snapshot. Once the export is gone, it does.
func TestRmsnUnderWritableExport(t *testing.T) {
	needNBDTools(t)
	cfg := filepath.Join(t.TempDir(), "cfg")
	mustRun(t, cfg, "init", cfg)
	randomFile(t, filepath.Join(cfg, "disk", "small.img"), 4*mib)
	snap := mustRun(t, cfg, "snap", "disk:small.img").lastLine()
	s := startNBD(t, cfg, 1, "--writable", snap)
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 0 65536", "-c", "flush", s.uri(0))

	res := runBinaryWithin(t, "", time.Minute, "--config", cfg, "rmsn", snap)
	if res.code == 0 || !strings.Contains(res.stderr, "holds writes made over it") {
		t.Errorf("rmsn of a snapshot under a writable export: exit %d, stderr %q", res.code, res.stderr)
	}
	if out := mustRun(t, cfg, "lssn", "disk:small.img").stdout; !strings.Contains(out, snap) {
		t.Fatalf("the snapshot is gone after a refused rmsn:\n%s", out)
	}
	if out := runTool(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x33 0 65536", s.uri(0)); strings.Contains(out, "fail") {
		t.Errorf("the export after a refused rmsn:\n%s", out)
	}
	s.stop(syscall.SIGTERM)
	mustRun(t, cfg, "rmsn", snap)
	if out := mustRun(t, cfg, "lssn", "disk:small.img").stdout; strings.Contains(out, snap) {
		t.Errorf("rmsn after the export stopped left the snapshot:\n%s", out)
	}
}
