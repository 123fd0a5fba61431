#!/usr/bin/env bash
# The FUSE view's xattr tests read extended attributes as people do, with
# getfattr (attr), as root and as another user. Idempotent; run as root
# (or with sudo).
set -euo pipefail

if ! command -v getfattr >/dev/null 2>&1; then
	echo "installing Debian packages: attr"
	SUDO=
	[[ $(id -u) == 0 ]] || SUDO=sudo
	$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends attr >/dev/null
fi
