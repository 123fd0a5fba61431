#!/usr/bin/env bash
# Installs what the tests need on a Debian machine: the real tools they run
# (tar, unzip, e2fsprogs, xfsprogs for the reflink tests, util-linux for loop
# devices and runuser, libcap2-bin's setcap for the privilege tests) and the
# Go linters. Idempotent; run as root (or with sudo).
set -euo pipefail

STATICCHECK_VERSION=v0.8.2

. "$(dirname "$0")/lib/apt.sh"
apt_need tar:tar unzip:unzip mke2fs:e2fsprogs mkfs.xfs:xfsprogs losetup:mount nbdinfo:libnbd-bin qemu-img:qemu-utils \
	nbdsh:python3-libnbd rclone:rclone openssl:openssl sfdisk:fdisk mkfs.vfat:dosfstools mcopy:mtools fusermount3:fuse3 \
	fusefat:fusefat restic:restic bc:bc debootstrap:debootstrap extlinux:extlinux qemu-system-x86_64:qemu-system-x86 \
	curl:curl gcc:gcc qemu-io:qemu-utils setcap:libcap2-bin getcap:libcap2-bin runuser:util-linux \
	/usr/lib/syslinux/mbr/mbr.bin:syslinux-common # the image's MBR code

GOBIN=$(go env GOPATH)/bin
if [[ $("$GOBIN/staticcheck" -version 2>/dev/null || true) != *"${STATICCHECK_VERSION#v}"* ]]; then
	echo "installing staticcheck $STATICCHECK_VERSION"
	GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi

# A real S3 server for the repository tests (scripts/s3-server.sh).
"$(dirname "$0")/s3-server.sh" install

# Each part's own tools (clients of the S3 and NBD exports, linters of the
# API spec ...), one script per part so that each says why it needs them.
for part in "$(dirname "$0")"/deps.d/*.sh; do
	[[ -e $part ]] || continue
	"$part"
done
