#!/usr/bin/env bash
# Benchmark: nbdcopy URI null: against nbdkit file, qemu-nbd -r and
# `astrolabe nbd serve`, on a dense 2 GiB image and a 16 GiB image with
# 1 GiB of data. Prints medians of RUNS runs, with default connections and
# with -C 1, and the ratio ours/nbdkit. Loopback only; all servers are
# stopped on exit. Needs libnbd-bin, qemu-utils, nbdkit.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
WORK=$(mktemp -d /var/tmp/astrolabe-bench-nbd.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for t in nbdcopy nbdkit qemu-nbd; do
	command -v $t >/dev/null || { echo "missing $t: apt-get install -y libnbd-bin nbdkit qemu-utils" >&2; exit 1; }
done
go build -o "$WORK/astrolabe" ./cmd/astrolabe
A="$WORK/astrolabe --config $WORK/cfg"
$WORK/astrolabe init "$WORK/cfg" >/dev/null 2>&1
D=$WORK/cfg/disk
head -c 2G /dev/urandom >"$D/dense.img"
truncate -s 16G "$D/sparse.img"
for i in $(seq 0 15); do # 16 x 64 MiB of data spread over 16 GiB
	dd if=/dev/urandom of="$D/sparse.img" bs=1M count=64 seek=$((i * 1024)) conv=notrunc status=none
done
DENSE_SNAP=$($A snap disk:dense.img | tail -n1)
SPARSE_SNAP=$($A snap disk:sparse.img | tail -n1)
cat "$D"/dense.img "$D"/sparse.img >/dev/null # page cache for all servers alike

nbdkit -f -r -i 127.0.0.1 -p 20801 file dir="$D" & PIDS+=($!)
qemu-nbd -r -t -b 127.0.0.1 -p 20802 -f raw -x dense "$D/dense.img" & PIDS+=($!)
qemu-nbd -r -t -b 127.0.0.1 -p 20803 -f raw -x sparse "$D/sparse.img" & PIDS+=($!)
$A nbd serve --listen 127.0.0.1:20804 "$DENSE_SNAP" "$SPARSE_SNAP" >/dev/null & PIDS+=($!)
sleep 2

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
measure() { # URI [nbdcopy args]: median seconds of RUNS copies
	local uri=$1; shift
	for _ in $(seq "$RUNS"); do
		local s=$(date +%s.%N)
		timeout 300 nbdcopy "$@" "$uri" null:
		echo "$(date +%s.%N) - $s" | bc
	done | median
}
printf '%-8s %-6s %10s %10s %10s %8s\n' image conns nbdkit qemu-nbd astrolabe ratio
for img in dense sparse; do
	snap=$DENSE_SNAP; qport=20802
	[[ $img == sparse ]] && snap=$SPARSE_SNAP qport=20803
	for conns in default 1; do
		args=(); [[ $conns == 1 ]] && args=(-C 1)
		k=$(measure "nbd://127.0.0.1:20801/$img.img" "${args[@]}")
		q=$(measure "nbd://127.0.0.1:$qport/$img" "${args[@]}")
		o=$(measure "nbd://127.0.0.1:20804/$snap" "${args[@]}")
		printf '%-8s %-6s %10.3f %10.3f %10.3f %8.2f\n' $img $conns "$k" "$q" "$o" "$(echo "$o / $k" | bc -l)"
	done
done
