// Package vddktest builds the C stand-in for libvixDiskLib
// (vddk/vixdisklib/testdata/fakevddk.c) for tests that run the VDDK
// binding.
package vddktest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Build compiles the stand-in into a VDDK-like directory (lib64/) under a
// temporary directory and returns the library's path.
func Build(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc missing: apt-get install -y gcc")
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("vddktest: cannot find its source directory")
	}
	src := filepath.Join(filepath.Dir(file), "..", "testdata", "fakevddk.c")
	so := filepath.Join(t.TempDir(), "lib64", "libvixDiskLib.so.8")
	if err := os.MkdirAll(filepath.Dir(so), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-Wall", "-Werror", "-o", so, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return so
}
