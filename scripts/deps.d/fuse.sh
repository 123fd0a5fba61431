#!/usr/bin/env bash
# The FUSE view's tests compare a snapshot's files/ with its source tree as
# people check a copy: rsync -aHAXn (rsync), after giving the source POSIX
# ACLs with setfacl (acl). Idempotent; run as root (or with sudo).
set -euo pipefail

need=()
for pair in rsync:rsync setfacl:acl; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
	echo "installing Debian packages: ${need[*]}"
	SUDO=
	[[ $(id -u) == 0 ]] || SUDO=sudo
	$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
