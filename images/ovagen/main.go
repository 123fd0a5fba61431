// Command ovagen packs the appliance's disk into an OVA (see images/ova).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/astrolabe-appliance/astrolabe/images/ova"
)

func main() {
	vmdk := flag.String("vmdk", "", "streamOptimized VMDK of the appliance's disk")
	capacity := flag.Int64("disk-capacity", 0, "virtual disk capacity in bytes")
	version := flag.String("version", "dev", "appliance version")
	out := flag.String("out", "", "OVA file to write")
	flag.Parse()
	if *vmdk == "" || *out == "" || *capacity <= 0 {
		fmt.Fprintln(os.Stderr, "usage: ovagen -vmdk FILE -disk-capacity BYTES -out FILE.ova [-version V]")
		os.Exit(2)
	}
	if err := run(*vmdk, *capacity, *version, *out); err != nil {
		fmt.Fprintf(os.Stderr, "ovagen: %v\n", err)
		os.Exit(1)
	}
}

// run writes the OVA beside its final name and renames it into place.
func run(vmdk string, capacity int64, version, out string) error {
	f, err := os.CreateTemp(filepath.Dir(out), ".ova-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := ova.Write(f, ova.Config{Version: version, VMDK: vmdk, DiskCapacity: capacity}); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}
