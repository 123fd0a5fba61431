package nbd

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/astrolabe-appliance/astrolabe/internal/qemu10"
)

// TestQemu10LargeExport writes an 8 GiB export with qemu 10 over extended
// headers (data, write zeroes that punch, discard) and reads it back with
// pattern checks and qemu-img map, whose block status requests and
// replies need 64 bits: the zeroes between 64 KiB and 5 GiB are one
// descriptor.
func TestQemu10LargeExport(t *testing.T) {
	q, err := qemu10.Find()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const size = 8 << 30
	f, err := os.Create(filepath.Join(dir, "big.rw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	uri := "nbd://" + serve(t, dir) + "/big.rw"
	// traced runs tool with the trace of its option replies, and of its
	// requests if asked, and checks that it used extended headers.
	traced := func(tool string, requests bool, args ...string) string {
		t.Helper()
		trace := []string{"--trace", "nbd_receive_option_reply"}
		if requests {
			trace = append(trace, "--trace", "nbd_send_request")
		}
		out := run(t, tool, append(trace, args...)...)
		if !strings.Contains(out, qemu10.NegotiatedExtended) {
			t.Fatalf("%s did not negotiate extended headers:\n%s", filepath.Base(tool), out)
		}
		if strings.Contains(out, "failed") {
			t.Fatalf("%s %v:\n%s", filepath.Base(tool), args, out)
		}
		return out
	}
	const g = 1 << 30
	traced(q.IO, false, "-f", "raw",
		"-c", "write -P 0x11 0 64k",
		"-c", fmt.Sprintf("write -P 0x22 %d 1M", 5*g),
		"-c", fmt.Sprintf("write -z -u %d 512k", 5*g), // punches the first half
		"-c", fmt.Sprintf("write -f -P 0x33 %d 4k", 7*g),
		"-c", fmt.Sprintf("discard %d 4k", 7*g),
		"-c", "flush", uri)
	out := traced(q.IO, false, "-f", "raw", "-r",
		"-c", "read -P 0x11 0 64k",
		"-c", fmt.Sprintf("read -P 0 %d 512k", 5*g),
		"-c", fmt.Sprintf("read -P 0x22 %d 512k", 5*g+512<<10),
		"-c", fmt.Sprintf("read -P 0 %d 4k", 7*g),
		"-c", fmt.Sprintf("read -P 0 %d 4k", size-4096), uri)
	if n := strings.Count(out, "read "); n != 5 {
		t.Fatalf("qemu-io read %d times:\n%s", n, out)
	}

	out = traced(q.Img, true, "map", "--output=json", "-f", "raw", uri)
	longest := uint64(0)
	for _, m := range regexp.MustCompile(`\.len = (\d+), .*\(block status\)`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		longest = max(longest, n)
	}
	if longest <= 1<<32 {
		t.Errorf("qemu-img map asked for block status of at most %d bytes: not over 32 bits", longest)
	}
	var got []mapExtent
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &got); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	want := []mapExtent{
		{0, 64 << 10, true},
		{64 << 10, 5*g + 512<<10 - 64<<10, false},
		{5*g + 512<<10, 512 << 10, true},
		{5*g + 1<<20, size - 5*g - 1<<20, false},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("qemu-img map:\n got %v\nwant %v", got, want)
	}
}

// mapExtent is an extent of qemu-img map --output=json.
type mapExtent struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
}
