#!/usr/bin/env bash
# The NFS export's tests read and write it with libnfs's userspace client
# (nfs-ls, nfs-cp, nfs-cat from libnfs-utils: this kernel has no NFS client)
# and compare the served flat file with qemu-img's nfs:// driver, which
# lives in qemu-block-extra (block-nfs.so, built on libnfs).
# Idempotent; run as root (or with sudo).
set -euo pipefail

. "$(dirname "$0")/../lib/apt.sh"
apt_need nfs-ls:libnfs-utils qemu-img:qemu-utils \
	"/usr/lib/$(uname -m)-linux-gnu/qemu/block-nfs.so":qemu-block-extra
