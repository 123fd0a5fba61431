#!/usr/bin/env bash
# The FUSE view's tests compare a snapshot's files/ with its source tree as
# people check a copy: rsync -aHAXn (rsync), after giving the source POSIX
# ACLs with setfacl (acl); getfattr (attr) reads xattrs through the view.
# Idempotent; run as root (or with sudo).
set -euo pipefail

. "$(dirname "$0")/../lib/apt.sh"
apt_need rsync:rsync setfacl:acl getfattr:attr
