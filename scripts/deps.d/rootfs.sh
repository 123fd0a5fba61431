#!/usr/bin/env bash
# A real Debian root tree for the fs PE end-to-end test (cmd/astrolabe
# TestFSRealTree): `debootstrap --variant=minbase bookworm`, built once per
# machine into $ASTROLABE_TEST_ROOTFS (default
# /var/cache/astrolabe-test/rootfs-minbase) and never changed after; the test
# copies it. Also the tools that test runs: rsync (the comparison), acl's
# setfacl and libcap2-bin's setcap (what minbase lacks, added to the copy).
# Idempotent; runs as root. Building takes about two minutes (106 s here).
set -euo pipefail

ROOTFS=${ASTROLABE_TEST_ROOTFS:-/var/cache/astrolabe-test/rootfs-minbase}
MIRROR=${ASTROLABE_TEST_MIRROR:-http://deb.debian.org/debian}

. "$(dirname "$0")/../lib/apt.sh"
apt_need debootstrap:debootstrap rsync:rsync setfacl:acl getfacl:acl setcap:libcap2-bin

# The tree is complete once the marker is in: debootstrap writes into a
# temporary directory renamed into place at the end, so an interrupted
# build is started again, never used.
[[ -f $ROOTFS/.astrolabe-complete ]] && exit 0
[[ $(id -u) == 0 ]] || { echo "rootfs: debootstrap needs root" >&2; exit 1; }
parent=$(dirname "$ROOTFS")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.rootfs-build.XXXXXX")
cleanup() {
	# An interrupted debootstrap can leave /proc or /sys mounted in its target.
	grep -o " $tmp/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l || true
	rm -rf "$tmp"
}
trap cleanup EXIT
echo "rootfs: debootstrap --variant=minbase bookworm into $ROOTFS (once per machine)"
start=$SECONDS
debootstrap --variant=minbase bookworm "$tmp/tree" "$MIRROR" >"$tmp/log" 2>&1 || {
	tail -n 20 "$tmp/log" >&2
	exit 1
}
# Slimmed as the appliance image's root is (images/build.sh): no .debs,
# package lists, documentation or translations. What is left is every
# kind of file a Debian root has, in half the bytes, so the test is
# quicker.
rm -f "$tmp/tree"/var/cache/apt/archives/*.deb "$tmp/tree"/var/cache/apt/*.bin
rm -rf "$tmp/tree"/var/lib/apt/lists/* "$tmp/tree"/usr/share/{man,info,lintian}
find "$tmp/tree/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$tmp/tree/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
touch "$tmp/tree/.astrolabe-complete"
rm -rf "$ROOTFS"
mv "$tmp/tree" "$ROOTFS"
echo "rootfs: built in $((SECONDS - start)) s: $(du -sh "$ROOTFS" | cut -f1)"
