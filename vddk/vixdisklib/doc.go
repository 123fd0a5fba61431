// Package vixdisklib binds VMware's VDDK (libvixDiskLib) for vddk.Disk:
// FCDs and VM disks, live or in snapshots, over the nbd, nbdssl, hotadd and
// san transports, with several reads in flight per disk and allocated
// blocks from QueryAllocatedBlocks.
//
// It is built only with the tag vddk (it needs cgo), and loads the library
// at run time with dlopen, so that neither building nor running without
// VDDK needs VMware's files. The tests run it against a small C library
// (testdata/fakevddk.c) that implements the calls over local files.
package vixdisklib
