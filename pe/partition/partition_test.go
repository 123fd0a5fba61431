package partition

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// image makes a sparse disk of size MiB partitioned by sfdisk's script.
func image(t *testing.T, mib int64, script string) *os.File {
	t.Helper()
	if _, err := exec.LookPath("sfdisk"); err != nil {
		t.Fatal("sfdisk missing: apt-get install -y fdisk")
	}
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(mib << 20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", path)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	return f
}

func TestGPT(t *testing.T) {
	f := image(t, 64, "label: gpt\nstart=2048, size=40960, type=L, name=root\nstart=43008, size=20480, type=U\n")
	tab, err := Read(f, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Scheme != "gpt" || len(tab.Partitions) != 2 {
		t.Fatalf("table %+v", tab)
	}
	p1, p2 := tab.Partitions[0], tab.Partitions[1]
	if p1.Number != 1 || p1.Start != 2048*512 || p1.Size != 40960*512 || p1.Name != "root" || p1.Type != "0FC63DAF-8483-4772-8E79-3D69D8477DE4" {
		t.Errorf("p1 %+v", p1)
	}
	if p2.Number != 2 || p2.Start != 43008*512 || p2.Type != "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" {
		t.Errorf("p2 %+v", p2)
	}
	// A corrupted header is refused, not trusted.
	f.WriteAt([]byte{0xFF}, 512+40)
	if _, err := Read(f, 64<<20); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("corrupt GPT: %v", err)
	}
	if _, err := Read(f, 16<<20); err == nil {
		t.Error("GPT bigger than the disk accepted")
	}
}

func TestMBRLogical(t *testing.T) {
	f := image(t, 64, "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=40000, type=5\nstart=24576, size=8192, type=83\nstart=34816, size=8192, type=c\n")
	tab, err := Read(f, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range tab.Partitions {
		got = append(got, p.Type)
	}
	if tab.Scheme != "mbr" || len(tab.Partitions) != 3 || tab.Partitions[1].Number != 5 || tab.Partitions[2].Number != 6 ||
		tab.Partitions[1].Start != 24576*512 || tab.Partitions[2].Start != 34816*512 || strings.Join(got, ",") != "0x83,0x83,0x0c" {
		t.Errorf("table %+v", tab)
	}
}

func TestNoTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raw.img")
	os.WriteFile(path, make([]byte, 1<<20), 0o644)
	f, _ := os.Open(path)
	defer f.Close()
	if _, err := Read(f, 1<<20); err != ErrNoTable {
		t.Errorf("blank disk: %v", err)
	}
}
