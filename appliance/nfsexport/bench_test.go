package nfsexport

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkCopy measures whole-disk copies of a 256 MiB disk: nfs-cp of
// the flat file out and qemu-img writing it in over NFS, against cp of
// the local file (out and in), all page-cache warm. scripts/bench/nfs.sh
// runs it.
func BenchmarkCopy(b *testing.B) {
	const size = 256 << 20
	needTools(b)
	dir := b.TempDir()
	disk, _ := newDisk(b, size)
	s, err := New(Options{ScratchDir: filepath.Join(dir, "scratch")})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Add("bench", disk); err != nil {
		b.Fatal(err)
	}
	l, port := listen(b, "127.0.0.1:0")
	serve(b, s, l)
	host := randomLoopback(b)
	pl, _ := listen(b, host+":111")
	serve(b, s, pl)

	out := filepath.Join(dir, "out.img")
	flat := "nfs://" + host + "/bench/bench-flat.vmdk"
	cases := []struct {
		name  string
		write bool // copies out.img into the disk
		cmd   []string
	}{
		{"read/local-cp", false, []string{"cp", disk.Name(), out}},
		{"read/nfs-cp", false, []string{"nfs-cp", nfsURL(port, "bench/bench-flat.vmdk"), out}},
		{"write/local-cp", true, []string{"cp", out, disk.Name()}},
		{"write/qemu-img-nfs", true, []string{"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", out, flat}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				os.Remove(out)
				if c.write {
					if err := exec.Command("cp", disk.Name(), out).Run(); err != nil {
						b.Fatal(err)
					}
				}
				start := time.Now()
				if o, err := exec.Command(c.cmd[0], c.cmd[1:]...).CombinedOutput(); err != nil {
					b.Fatalf("%v: %v\n%s", c.cmd, err, o)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(size)*float64(b.N)/total.Seconds()/(1<<20), "MiB/s")
		})
	}
}
