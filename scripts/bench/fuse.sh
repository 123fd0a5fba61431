#!/usr/bin/env bash
# Benchmark: sequential read (dd bs=1M) of a 4 GiB file through
# `astrolabe mount` (a disk snapshot's data and an fs snapshot's file) and
# directly from the source file, RUNS runs each with a warm page cache;
# prints medians and the ratio of speeds (mount / direct). Then, with
# restic installed, the first read of the same file backed up into a local
# repository, through `astrolabe mount --repo` and through `restic mount`
# (one run each: later reads would come from the page cache). Needs root
# and /dev/fuse. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-4096}
WORK=$(mktemp -d /var/tmp/astrolabe-bench-fuse.XXXXXX)
MNT=$WORK/mnt
PID= PIDS=()
cleanup() {
	[[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	umount -l "$MNT" "$WORK/rmnt" "$WORK/smnt" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
go build -o "$WORK/astrolabe" ./cmd/astrolabe
A="$WORK/astrolabe --config $WORK/cfg"
$WORK/astrolabe init "$WORK/cfg" >/dev/null 2>&1
mkdir -p "$WORK/cfg/fs/big" "$MNT"
echo "writing ${SIZE_MIB} MiB of random data" >&2
head -c "${SIZE_MIB}M" /dev/urandom >"$WORK/cfg/disk/big.img"
cp --reflink=auto "$WORK/cfg/disk/big.img" "$WORK/cfg/fs/big/big.bin"
DSNAP=$($A snap disk:big.img | tail -n1)
FSNAP=$($A snap fs:big | tail -n1)
$A mount "$MNT" >/dev/null & PID=$!
for _ in $(seq 50); do mountpoint -q "$MNT" && break; sleep 0.1; done
DDATA="$MNT/disk/disk:big.img/snapshots/${DSNAP##*:}/data"
FFILE="$MNT/fs/fs:big/snapshots/${FSNAP##*:}/files/big.bin"

# seconds for one dd of $1
readtime() {
	local t0 t1
	t0=$(date +%s.%N)
	dd if="$1" of=/dev/null bs=1M status=none
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
measure() {
	local f=$1 i
	cat "$f" >/dev/null # warm the cache
	for i in $(seq "$RUNS"); do readtime "$f"; done | median
}
direct=$(measure "$WORK/cfg/disk/big.img")
data=$(measure "$DDATA")
file=$(measure "$FFILE")
printf '%-28s %10s %10s\n' "read of ${SIZE_MIB} MiB" "seconds" "vs direct"
printf '%-28s %10.3f %10s\n' "direct (source file)" "$direct" "1.00"
printf '%-28s %10.3f %10.2f\n' "mount: disk snapshot data" "$data" "$(echo "$direct / $data" | bc -l)"
printf '%-28s %10.3f %10.2f\n' "mount: fs snapshot file" "$file" "$(echo "$direct / $file" | bc -l)"

command -v restic >/dev/null || { echo "(restic not installed: no repository comparison)" >&2; exit 0; }
export ASTROLABE_PASSWORD=bench RESTIC_PASSWORD=bench
mkdir -p "$WORK/rmnt" "$WORK/smnt"
$A repo init --repo "$WORK/arepo" 2>/dev/null
$A backup --repo "$WORK/arepo" "$DSNAP" >/dev/null 2>&1
restic -r "$WORK/rrepo" init >/dev/null 2>&1
restic -r "$WORK/rrepo" backup --stdin --stdin-filename big.img <"$WORK/cfg/disk/big.img" >/dev/null 2>&1
$A mount --repo "$WORK/arepo" "$WORK/rmnt" >/dev/null 2>&1 & PIDS+=($!)
restic -r "$WORK/rrepo" mount "$WORK/smnt" >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do mountpoint -q "$WORK/rmnt" && mountpoint -q "$WORK/smnt" && break; sleep 0.1; done
sleep 1
ours=$(readtime "$WORK/rmnt/disk/disk:big.img/snapshots/${DSNAP##*:}/data")
theirs=$(readtime "$WORK/smnt/snapshots/latest/big.img")
printf '%-28s %10.3f %10s\n' "repository: astrolabe mount" "$ours" "$(echo "$theirs / $ours" | bc -l | cut -c1-5)x restic"
printf '%-28s %10.3f\n' "repository: restic mount" "$theirs"
