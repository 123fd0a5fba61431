#!/usr/bin/env bash
# Benchmark: boot the appliance from its own backup. The disk image `make
# image` built is backed up, as a disk PE, into a repository on a versitygw
# S3 server on 127.0.0.1; then, in the same run, qemu boots it three ways,
# each timed until the guest's `astrolabe serve` answers /healthz through a
# port forwarded to 127.0.0.1:
#
#   local    the raw file itself (snapshot=on: it is not changed);
#   instant  the NBD export of the repository snapshot, timed from the start
#            of `astrolabe nbd serve --repo` (whatever it does before it
#            serves counts);
#   restore  `astrolabe restore` of the snapshot from the repository, then a
#            boot of the restored file.
#
# It prints the three times and the ratios instant/local (goal <= 1.5) and
# (restore+boot)/instant (goal >= 3). Then random 4 KiB reads on a fresh
# export of the same snapshot, with libnbd: N offsets in the image's
# allocated extents, each read once cold (first touch), then all again
# warm (hits only where the bounded chunk cache still holds them), then
# each twice in a row (repeat: the second read, a sure cache hit); median
# and p99 latency of each pass. The same offsets read through qemu-nbd from
# the local file (in the page cache) are the yardstick of the client and
# the round trips.
#
#   INSTANT_MODE=writable  (default) `nbd serve --writable`: the guest writes
#                          into the export;
#   INSTANT_MODE=readonly  the read-only export, with qemu's own throwaway
#                          overlay (snapshot=on) taking the guest's writes.
#   RUNS=rounds of the three boots, medians printed (1, at most 9; 0: the
#   reads alone).
#   ACCEL=tcg|kvm (tcg)  LIMIT=seconds per boot (300)  N=offsets (2000, at
#   most 100000)  SEED=random seed of the offsets (1)  OUT=image dir
#   ASTROLABE=path runs another build. DATA_MIB=M appends M MiB of random
#   data after the image's partitions (0): a disk holding data its boot never
#   reads, as a server's does, which a restore copies and an instant boot
#   does not.
#
# Loopback only; qemu and the servers are stopped on exit; temporary files go
# under /var/tmp. Needs qemu-system-x86, qemu-utils, curl, bc, python3-libnbd and
# versitygw (scripts/s3-server.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/var/tmp/astrolabe-image}
RAW=$OUT/disk.raw
ACCEL=${ACCEL:-tcg}
LIMIT=${LIMIT:-300}
N=${N:-2000}
SEED=${SEED:-1}
INSTANT_MODE=${INSTANT_MODE:-writable}
RUNS=${RUNS:-1}
DATA_MIB=${DATA_MIB:-0}
[[ -f $RAW ]] || { echo "no $RAW: run 'make image' first" >&2; exit 1; }
[[ $INSTANT_MODE == writable || $INSTANT_MODE == readonly ]] || { echo "INSTANT_MODE is writable or readonly, not $INSTANT_MODE" >&2; exit 2; }
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 100000)) || { echo "N is 1 to 100000, not $N" >&2; exit 2; }
[[ $DATA_MIB =~ ^[0-9]+$ ]] && ((DATA_MIB <= 65536)) || { echo "DATA_MIB is 0 to 65536, not $DATA_MIB" >&2; exit 2; }
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS <= 9)) || { echo "RUNS is 0 to 9, not $RUNS" >&2; exit 2; }
for pair in qemu-system-x86_64:qemu-system-x86 qemu-nbd:qemu-utils curl:curl bc:bc; do
	command -v "${pair%%:*}" >/dev/null || { echo "missing ${pair%%:*}: apt-get install -y ${pair#*:}" >&2; exit 1; }
done
WORK=$(mktemp -d /var/tmp/astrolabe-bench-instant.XXXXXX)
BENCH=instant
. scripts/bench/lib/vmboot.sh
T_LOCAL=() T_EXPORT=() T_INSTANT=() T_RESTORE=() T_RESTORED=()

# serve NAME [--writable] starts `astrolabe nbd serve` of the repository
# snapshot and waits, at most LIMIT seconds, for the export's URI ($URI);
# the server stays running as $NBD.
serve() {
	local name=$1 start
	shift
	: >"$WORK/nbd-$name.out"
	$A nbd serve --repo "$REPO" --listen "127.0.0.1:$(free_port)" "$@" "$SNAP" >"$WORK/nbd-$name.out" 2>"$WORK/nbd-$name.err" &
	NBD=$!
	PIDS+=("$NBD")
	start=$SECONDS
	until URI=$(grep -om1 '^nbds\?://[^ ]*' "$WORK/nbd-$name.out"); do
		kill -0 "$NBD" 2>/dev/null || fail "nbd serve $*: $(cat "$WORK/nbd-$name.err")${1:+ (INSTANT_MODE=readonly serves the read-only export)}"
		((SECONDS - start < LIMIT)) || fail "nbd serve $*: no export after ${LIMIT}s"
		sleep 0.1
	done
}

backup_image instant "$DATA_MIB"

# One round: a, b, c in turn, so that the machine's drift touches all
# three alike. All three boots take the guest's writes in a throwaway
# overlay (snapshot=on), as the local file's must, except the writable
# export's, which takes them itself.
for round in $(seq "$RUNS"); do
	# a. The local raw file.
	t0=$(now)
	boot local "file=$WORK/cfg/disk/appliance.img,format=raw,snapshot=on"
	T_LOCAL+=("$(echo "$(now) - $t0" | bc)")
	stop "$QEMU"

	# b. The instant export: a server started cold, as after a disaster.
	t0=$(now)
	if [[ $INSTANT_MODE == writable ]]; then
		serve boot --writable
		drive="file=$URI,format=raw"
	else
		serve boot
		drive="file=$URI,format=raw,snapshot=on"
	fi
	T_EXPORT+=("$(echo "$(now) - $t0" | bc)")
	boot instant "$drive"
	T_INSTANT+=("$(echo "$(now) - $t0" | bc)")
	stop "$QEMU"
	stop "$NBD"

	# c. Full restore from the repository, then a boot of the restored file.
	t0=$(now)
	restored=$($A restore --repo "$REPO" "$SNAP" 2>"$WORK/restore.err" | tail -n1) || fail "restore: $(cat "$WORK/restore.err")"
	T_RESTORE+=("$(echo "$(now) - $t0" | bc)")
	file=$WORK/cfg/disk/${restored#disk:}
	[[ $restored == disk:* && -f $file ]] || fail "restore printed '$restored', no such file"
	boot restored "file=$file,format=raw,snapshot=on"
	T_RESTORED+=("$(echo "$(now) - $t0" | bc)")
	stop "$QEMU"
	rm -f "$file"
	echo "round $round: local ${T_LOCAL[-1]}, instant ${T_INSTANT[-1]}, restore + boot ${T_RESTORED[-1]} s" >&2
done

# 3. Random 4 KiB reads (reads.py URI N SEED OFFSETS_FILE prints a line
# about the offsets, then per pass: name, median, p99, mean, max in ms).
cat >"$WORK/reads.py" <<'EOF'
import bisect, random, sys, time
import nbd

uri, n, seed, saved = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
BS = 4096
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
size = h.get_size()

# The allocated extents in 4 KiB blocks: a list of first blocks and the
# number of allocated blocks before each, to map a pick to its block.
firsts, before, blocks = [], [], 0
end = [0]
def collect(context, offset, entries, err):
    global blocks
    if context != nbd.CONTEXT_BASE_ALLOCATION:
        return 0
    for i in range(0, len(entries), 2):
        length, flags = min(entries[i], size - offset), entries[i + 1]
        if length > 0 and not flags & nbd.STATE_HOLE:
            first, last = offset // BS, (offset + length + BS - 1) // BS
            firsts.append(first)
            before.append(blocks)
            blocks += last - first
        offset += max(length, 0)
    end[0] = offset
    return 0
off = 0
while off < size:
    h.block_status(min(size - off, 1 << 30), off, collect)
    off = max(end[0], off + BS)  # a shorter answer: go on after it
if blocks == 0:
    sys.exit("no allocated extents")
# The first run picks the offsets and saves them; later runs read those.
try:
    with open(saved) as f:
        offsets = [int(line) for line in f]
except FileNotFoundError:
    picks = random.Random(seed).sample(range(blocks), min(n, blocks))
    offsets = []
    for p in picks:
        i = bisect.bisect_right(before, p) - 1
        offsets.append((firsts[i] + p - before[i]) * BS)
    with open(saved, "w") as f:
        f.writelines(f"{o}\n" for o in offsets)

def timed(o):
    t = time.perf_counter_ns()
    h.pread(BS, o)
    return (time.perf_counter_ns() - t) / 1e6

def pct(lat, q):
    return lat[min(len(lat) - 1, int(q * len(lat)))]

cold = sorted(timed(o) for o in offsets)
warm = sorted(timed(o) for o in offsets)
# The same offset again at once: its chunk is surely in the cache.
repeat = []
for o in offsets:
    timed(o)
    repeat.append(timed(o))
repeat.sort()
print(f"{len(offsets)} offsets in {blocks * BS / 2**20:.0f} MiB allocated of {size / 2**30:.1f} GiB")
for name, lat in (("cold", cold), ("warm", warm), ("repeat", repeat)):
    print(f"{name} {pct(lat, 0.5):.3f} {pct(lat, 0.99):.3f} {sum(lat) / len(lat):.3f} {lat[-1]:.3f}")
EOF
# reads NAME URI runs reads.py on URI into $WORK/reads-NAME.txt.
reads() {
	timeout "$LIMIT" "$PY" "$WORK/reads.py" "$2" "$N" "$SEED" "$WORK/offsets" >"$WORK/reads-$1.txt" 2>&1 ||
		fail "random reads ($1): $(cat "$WORK/reads-$1.txt")"
}
# On a fresh export: a cold chunk cache.
if [[ $INSTANT_MODE == writable ]]; then serve reads --writable; else serve reads; fi
reads export "$URI"
stop "$NBD"
# The yardstick: the same offsets from the local file (in the page cache)
# through qemu-nbd, the same client and the same round trips.
port=$(free_port)
qemu-nbd -r -t -b 127.0.0.1 -p "$port" -f raw -x local "$WORK/cfg/disk/appliance.img" 2>"$WORK/qemu-nbd.log" &
PIDS+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
reads local "nbd://127.0.0.1:$port/local"

if ((RUNS)); then
	median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
	t_local=$(median "${T_LOCAL[@]}") t_export=$(median "${T_EXPORT[@]}") t_instant=$(median "${T_INSTANT[@]}")
	t_restore=$(median "${T_RESTORE[@]}") t_restored=$(median "${T_RESTORED[@]}")
	echo
	echo "boot until /healthz ($ACCEL, instant mode $INSTANT_MODE), median of $RUNS; backup took $(printf %.1f "$t_backup")s"
	printf '%-36s %8.1f s\n' "local raw file" "$t_local" \
		"instant export (export ready after)" "$t_export" \
		"instant export" "$t_instant" \
		"restore (restore alone)" "$t_restore" \
		"restore + boot" "$t_restored"
	ok() { (($(echo "$1" | bc -l))) && echo met || echo missed; }
	r1=$(echo "$t_instant / $t_local" | bc -l) r2=$(echo "$t_restored / $t_instant" | bc -l)
	printf '%-36s %8.2f   goal <= 1.5: %s\n' "instant / local" "$r1" "$(ok "$r1 <= 1.5")"
	printf '%-36s %8.2f   goal >= 3: %s\n' "(restore + boot) / instant" "$r2" "$(ok "$r2 >= 3")"
	echo
fi
echo "random 4 KiB reads, $(head -1 "$WORK/reads-export.txt"), in ms"
printf '%-30s %9s %9s %9s %9s\n' "" median p99 mean max
for src in export local; do
	label="$INSTANT_MODE export"
	[[ $src == local ]] && label="local file, qemu-nbd"
	tail -n +2 "$WORK/reads-$src.txt" | while read -r pass med p99 mean max; do
		printf '%-30s %9s %9s %9s %9s\n' "$label, $pass" "$med" "$p99" "$mean" "$max"
	done
done
