#!/usr/bin/env bash
# Benchmark of the web page's file-level recovery API, in one run:
# download of a SIZE_MIB file of an fs snapshot over HTTPS (curl, what the
# browser's download does) against a dd of the same file through
# `astrolabe mount` (FUSE), RUNS runs each with a warm page cache, medians
# and the ratio; then the time to the first page (200 entries) of a
# 100,000-entry directory, cold (the table of contents read and indexed)
# and warm, which is what the page waits for before it paints the list.
# Needs root and /dev/fuse. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
ENTRIES=${ENTRIES:-100000}
WORK=$(mktemp -d /var/tmp/astrolabe-bench-web.XXXXXX)
MNT=$WORK/mnt
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	umount -l "$MNT" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
go build -o "$WORK/astrolabe" ./cmd/astrolabe
A="$WORK/astrolabe --config $WORK/cfg"
$WORK/astrolabe init "$WORK/cfg" >/dev/null 2>&1
mkdir -p "$WORK/cfg/fs/big" "$WORK/cfg/fs/wide/dir" "$MNT"
echo "writing ${SIZE_MIB} MiB of random data and a directory of $ENTRIES files" >&2
head -c "${SIZE_MIB}M" /dev/urandom >"$WORK/cfg/fs/big/big.bin"
(cd "$WORK/cfg/fs/wide/dir" && seq -f 'f%06g' "$ENTRIES" | xargs touch)
BSNAP=$($A snap fs:big | tail -n1)
WSNAP=$($A snap fs:wide | tail -n1)

$A serve --api 127.0.0.1:0 --nbd "" --s3 "" >"$WORK/serve.out" 2>"$WORK/serve.err" & PIDS+=($!)
for _ in $(seq 100); do grep -q '^ready' "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
API=$(awk '/^api: /{print $2}' "$WORK/serve.out")
BASE=${API%/v1/astrolabe}
TOKEN=$(cat "$WORK/cfg/api-token")
$A mount "$MNT" >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 50); do mountpoint -q "$MNT" && break; sleep 0.1; done

enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
URL="$BASE/v1/appliance/browse/$(enc "$BSNAP")/content?path=big.bin"
FFILE="$MNT/fs/fs:big/snapshots/${BSNAP##*:}/files/big.bin"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
http_get() { curl -sk -H "Authorization: Bearer $TOKEN" -o /dev/null -w '%{time_total}\n' "$1"; }
fuse_read() {
	local t0 t1
	t0=$(date +%s.%N)
	dd if="$1" of=/dev/null bs=1M status=none
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc
}
cat "$WORK/cfg/fs/big/big.bin" >/dev/null
http_get "$URL" >/dev/null
fuse_read "$FFILE" >/dev/null
web=$(for _ in $(seq "$RUNS"); do http_get "$URL"; done | median)
fuse=$(for _ in $(seq "$RUNS"); do fuse_read "$FFILE"; done | median)
printf '%-36s %10s %10s\n' "read of ${SIZE_MIB} MiB" "seconds" "MiB/s"
printf '%-36s %10.3f %10.0f\n' "web download (HTTPS, curl)" "$web" "$(echo "$SIZE_MIB / $web" | bc -l)"
printf '%-36s %10.3f %10.0f\n' "FUSE mount (dd bs=1M)" "$fuse" "$(echo "$SIZE_MIB / $fuse" | bc -l)"
printf '%-36s %10.2f\n' "web / FUSE speed" "$(echo "$fuse / $web" | bc -l)"

PAGE="$BASE/v1/appliance/browse/$(enc "$WSNAP")/files?path=dir&limit=200"
cold=$(http_get "$PAGE")
warm=$(for _ in $(seq "$RUNS"); do http_get "$PAGE"; done | median)
printf '%-36s %10.3f\n' "first page of $ENTRIES entries, cold" "$cold"
printf '%-36s %10.3f\n' "first page of $ENTRIES entries, warm" "$warm"
