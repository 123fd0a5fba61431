package redact

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestError(t *testing.T) {
	_, err := os.Open("/tmp/astrolabe-upload-123.zip/x")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("restore: %w", err), "restore: open x: no such file or directory"},
		{errors.New(`copy to "/srv/pes/disk/a.img": disk full`), `copy to "a.img": disk full`},
		{errors.New("zip entry /etc/passwd: refused"), "zip entry passwd: refused"},
		{errors.New("read /var/lib/astrolabe/cfg/disk/.snapshots/x/image: EOF"), "read image: EOF"},
		{errors.New("PE disk:a/b: not found"), "PE disk:a/b: not found"},
		{fmt.Errorf("a: %w", errors.Join(errors.New("x"), &os.LinkError{Op: "rename", Old: "/a/b/c", New: "/d/e", Err: os.ErrExist})), "a: x\nrename c e: file already exists"},
		{errors.New("mount root is /"), "mount root is (a server path)"},
	} {
		got := Error(tc.err)
		if got != tc.want {
			t.Errorf("Error(%q) = %q, want %q", tc.err, got, tc.want)
		}
		if strings.Contains(got, "/tmp/") {
			t.Errorf("%q still has a path", got)
		}
	}
}
