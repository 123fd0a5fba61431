#!/usr/bin/env bash
# Benchmark: backup of a 4 GiB disk image holding 1 GiB of random data,
# then of the same image with 40 MiB changed in five places; ours
# (astrolabe backup) against `restic backup --stdin`, both into one
# versitygw S3 server on 127.0.0.1, in the same run. Prints seconds, the
# ratio and the bytes each stored; then the Go benchmark of random 4 KiB
# reads from a backed-up snapshot (cold and warm chunk cache).
# Needs restic (apt-get install restic) and versitygw (scripts/s3-server.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d /var/tmp/astrolabe-bench-backup.XXXXXX)
cleanup() { scripts/s3-server.sh stop "$WORK/s3" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
command -v restic >/dev/null || { echo "missing restic: apt-get install -y restic" >&2; exit 1; }
go build -o "$WORK/astrolabe" ./cmd/astrolabe
eval "$(scripts/s3-server.sh start "$WORK/s3")"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export ASTROLABE_PASSWORD=bench RESTIC_PASSWORD=bench
A="$WORK/astrolabe --config $WORK/cfg --log-level error"
OURS=s3+http://$S3_ENDPOINT/bench/astrolabe
RESTIC=s3:http://$S3_ENDPOINT/bench/restic
$WORK/astrolabe init "$WORK/cfg" >/dev/null 2>&1
IMG=$WORK/cfg/disk/big.img
truncate -s 4G "$IMG"
head -c 1G /dev/urandom | dd of="$IMG" conv=notrunc status=none
$A repo init --repo "$OURS" 2>/dev/null
restic -r "$RESTIC" init >/dev/null 2>&1
cat "$IMG" >/dev/null # page cache for both alike

secs() { local t0=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $t0" | bc; }
stored() { du -sb "$WORK/s3/data/bench/$1" | cut -f1; }

SNAP1=$($A snap disk:big.img | tail -n1)
ours_full=$(secs $A backup --repo "$OURS" "$SNAP1")
restic_full=$(secs sh -c "restic -r '$RESTIC' backup --stdin --stdin-filename big.img < '$IMG'")

for i in 0 1 2 3 4; do # 40 MiB changed: 8 MiB in five places
	dd if=/dev/urandom of="$IMG" bs=1M count=8 seek=$((i * 200 + 50)) conv=notrunc status=none
done
cat "$IMG" >/dev/null
SNAP2=$($A snap disk:big.img | tail -n1)
ours_incr=$(secs $A backup --repo "$OURS" "$SNAP2")
restic_incr=$(secs sh -c "restic -r '$RESTIC' backup --stdin --stdin-filename big.img < '$IMG'")

printf '%-22s %10s %10s %8s\n' "4 GiB image, 1 GiB data" "astrolabe" "restic" "ratio"
printf '%-22s %10.2f %10.2f %8.2f\n' "full backup (s)" "$ours_full" "$restic_full" "$(echo "$ours_full / $restic_full" | bc -l)"
printf '%-22s %10.2f %10.2f %8.2f\n' "incremental, 40 MiB (s)" "$ours_incr" "$restic_incr" "$(echo "$ours_incr / $restic_incr" | bc -l)"
o=$(stored astrolabe) r=$(stored restic)
printf '%-22s %10.1f %10.1f %8.2f\n' "stored (MiB)" "$(echo "$o / 1048576" | bc -l)" "$(echo "$r / 1048576" | bc -l)" "$(echo "$o / $r" | bc -l)"
echo
go test ./repo -run '^$' -bench 'RandomRead' -benchtime 200x
