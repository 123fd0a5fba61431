// Package qemu10 finds qemu 10's qemu-img and qemu-io for tests: NBD
// clients that negotiate extended headers, which Debian bookworm's qemu
// 7.2 and libnbd 1.14 cannot. scripts/deps.d/qemu10.sh unpacks them from
// bookworm-backports into /opt/qemu10 (or $QEMU10_ROOT) without
// installing them over the system's qemu.
package qemu10

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// NegotiatedExtended is what the trace event nbd_receive_option_reply
// (qemu's --trace) prints when the server accepts
// NBD_OPT_EXTENDED_HEADERS: from then on every request and reply of the
// connection has an extended header.
const NegotiatedExtended = "option reply 11 (extended headers), type 1 (ack)"

// Tools are the paths of qemu 10's tools.
type Tools struct {
	Img string // qemu-img
	IO  string // qemu-io
}

// Find returns the tools, or an error that says how to install them.
func Find() (Tools, error) {
	root := os.Getenv("QEMU10_ROOT")
	if root == "" {
		root = "/opt/qemu10"
	}
	t := Tools{Img: filepath.Join(root, "usr/bin/qemu-img"), IO: filepath.Join(root, "usr/bin/qemu-io")}
	out, err := exec.Command(t.Img, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "qemu-img version 10.") {
		return Tools{}, fmt.Errorf("qemu-img 10 missing at %s (%v %q): run scripts/deps.d/qemu10.sh", t.Img, err, firstLine(out))
	}
	if _, err := os.Stat(t.IO); err != nil {
		return Tools{}, fmt.Errorf("qemu-io 10: %w: run scripts/deps.d/qemu10.sh", err)
	}
	return t, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}
