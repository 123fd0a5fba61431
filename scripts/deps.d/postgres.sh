#!/usr/bin/env bash
# The pg PE's tests start their own PostgreSQL 15 servers (initdb, pg_ctl,
# pgbench, pg_amcheck, pg_basebackup from Debian's postgresql-15 and
# postgresql-contrib) as the postgres account, switched to with runuser.
# Installing the package also starts Debian's own cluster on port 5432;
# the tests never use it, so it is stopped to leave the machine quiet.
# Idempotent; run as root (or with sudo).
set -euo pipefail

. "$(dirname "$0")/../lib/apt.sh"
bin=/usr/lib/postgresql/15/bin
fresh=0
[[ -x $bin/pgbench && -x $bin/pg_amcheck ]] || fresh=1
apt_need "$bin/postgres":postgresql-15 "$bin/pgbench":postgresql-contrib runuser:util-linux
if ((fresh)) && command -v pg_ctlcluster >/dev/null; then
	pg_ctlcluster 15 main stop 2>/dev/null || true
fi
