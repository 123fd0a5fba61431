#!/usr/bin/env bash
# Benchmark: whole-disk copies of a 256 MiB instant-recovery disk through
# the NFS export (appliance/nfsexport) against cp of the local file: read
# with libnfs's nfs-cp, write with qemu-img convert -n to nfs:// (every
# WRITE is synced to the disk before the reply, as go-nfs promises
# FILE_SYNC). Page cache warm for both. Prints Go benchmark lines with
# MiB/s; RUNS runs each. Loopback only. Needs scripts/deps.d/nfs.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
for t in nfs-cp qemu-img; do
	command -v $t >/dev/null || { echo "missing $t: scripts/deps.d/nfs.sh" >&2; exit 1; }
done
go test -count=1 -run '^$' -bench '^BenchmarkCopy$' -benchtime "${RUNS}x" ./appliance/nfsexport/ |
	grep -E '^Benchmark|^ok'
