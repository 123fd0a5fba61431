#!/usr/bin/env bash
# Live restore of a booted guest: the appliance's own disk image `make
# image` built is backed up, as a disk PE, into a repository on a versitygw
# S3 server on 127.0.0.1; then `astrolabe restore --instant` makes a new
# disk PE from the backup and qemu boots it at once from the writable NBD
# export while the restore fills the PE in the background, reading the
# repository through a proxy that passes RATE bytes a second (a distant
# repository: the fill takes longer than the boot, so the guest's first
# boot writes into the export while the PE is still being filled).
#
# Once the guest's /healthz answers, the guest records the fingerprint of
# the TLS certificate its first boot generated (written to its disk), and
# is shut down through the ACPI power button. The script then checks, and
# fails unless:
#   1. the guest wrote: the export no longer reads as the snapshot;
#   2. the restored PE, once the fill is done, reads exactly as the export
#      did after the guest's shutdown (snapshot plus the guest's writes),
#      compared byte for byte with cmp;
#   3. a second boot, from the restored file alone, serves the same
#      certificate: the guest finds the state its first boot wrote.
# It prints the times: export ready, boot until /healthz, fill done, and how
# much of the PE was filled when the guest had booted.
#
#   RATE=bytes/s through the proxy (4194304)  ACCEL=tcg|kvm (tcg)
#   LIMIT=seconds per boot and per wait (600)  OUT=image dir
#   ASTROLABE=path runs another build.
#
# Loopback only; qemu, the proxy and the servers are stopped on exit;
# temporary files go under /var/tmp. Needs qemu-system-x86, qemu-utils,
# curl, openssl, nbdcopy (libnbd-bin), python3-libnbd and versitygw
# (scripts/s3-server.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/var/tmp/astrolabe-image}
RAW=$OUT/disk.raw
ACCEL=${ACCEL:-tcg}
LIMIT=${LIMIT:-600}
RATE=${RATE:-4194304}
[[ -f $RAW ]] || { echo "no $RAW: run 'make image' first" >&2; exit 1; }
[[ $RATE =~ ^[0-9]+$ ]] && ((RATE >= 65536)) || { echo "RATE is bytes a second, at least 65536, not $RATE" >&2; exit 2; }
for pair in qemu-system-x86_64:qemu-system-x86 curl:curl openssl:openssl nbdcopy:libnbd-bin bc:bc; do
	command -v "${pair%%:*}" >/dev/null || { echo "missing ${pair%%:*}: apt-get install -y ${pair#*:}" >&2; exit 1; }
done
WORK=$(mktemp -d /var/tmp/astrolabe-bench-live.XXXXXX)
BENCH=liverestore
. scripts/bench/lib/vmboot.sh

# fingerprint prints the SHA-256 fingerprint of the certificate the guest
# serves on $GUEST_PORT.
fingerprint() {
	openssl s_client -connect "127.0.0.1:$GUEST_PORT" </dev/null 2>/dev/null |
		openssl x509 -noout -fingerprint -sha256 | cut -d= -f2
}

# throttle.py LISTEN_PORT UPSTREAM_PORT RATE: a TCP proxy on 127.0.0.1
# passing the upstream's answers at RATE bytes a second in all.
cat >"$WORK/throttle.py" <<'PY'
import asyncio, sys, time

listen, upstream, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
next_free = [time.monotonic()]

async def pace(n):
    # One clock for all connections: RATE is the proxy's total.
    now = time.monotonic()
    start = max(now, next_free[0])
    next_free[0] = start + n / rate
    if next_free[0] > now:
        await asyncio.sleep(next_free[0] - now)

async def pipe(r, w, slow):
    try:
        while data := await r.read(65536):
            if slow:
                await pace(len(data))
            w.write(data)
            await w.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        w.close()

async def handle(cr, cw):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw, False), pipe(ur, cw, True))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY

backup_image live

proxy=$(free_port)
"$PY" "$WORK/throttle.py" "$proxy" "${S3_ENDPOINT##*:}" "$RATE" &
PIDS+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$proxy") 2>/dev/null && break; sleep 0.1; done
SLOW=s3+http://127.0.0.1:$proxy/bench/live

# The live restore: its stdout's first line is the export's URI, its
# second (once the PE is full) the PE's ID.
: >"$WORK/restore.out"
t0=$(now)
$A restore --repo "$SLOW" --instant --listen "127.0.0.1:$(free_port)" "$SNAP" --to disk:live.img \
	>"$WORK/restore.out" 2>"$WORK/restore.err" &
RESTORE=$!
PIDS+=("$RESTORE")
start=$SECONDS
until URI=$(grep -om1 '^nbd://[^ ]*' "$WORK/restore.out"); do
	kill -0 "$RESTORE" 2>/dev/null || fail "restore --instant: $(cat "$WORK/restore.err")"
	((SECONDS - start < LIMIT)) || fail "restore --instant: no export after ${LIMIT}s"
	sleep 0.1
done
t_export=$(echo "$(now) - $t0" | bc)

boot live "file=$URI,format=raw"
t_boot=$(echo "$(now) - $t0" | bc)
fp_live=$(fingerprint)
[[ -n $fp_live ]] || fail "no certificate from the guest booted from the export"
filled_at_boot=$(stat -c %b "$WORK/cfg/disk/live.img")
if [[ $(wc -l <"$WORK/restore.out") -ge 2 ]]; then
	echo "warning: the fill ended before the guest booted: lower RATE to have the guest write during the fill" >&2
fi
powerdown live
# The export as the guest left it: the snapshot plus its writes (served
# from the overlay and the repository while the fill goes on).
nbdcopy "$URI" "$WORK/view.raw"
cmp -s "$WORK/view.raw" "$WORK/cfg/disk/appliance.img" && fail "the guest's boot wrote nothing to the export"

start=$SECONDS
until [[ $(wc -l <"$WORK/restore.out") -ge 2 ]]; do
	kill -0 "$RESTORE" 2>/dev/null || fail "restore --instant ended before the fill: $(cat "$WORK/restore.err")"
	((SECONDS - start < LIMIT * 3)) || fail "the fill did not end in $((LIMIT * 3))s"
	sleep 0.5
done
# As the restore itself timed it (this loop sees it only after the
# shutdown and the copy above).
t_filled=$(grep -om1 'as disk:live.img in [^;]*' "$WORK/restore.err" | sed 's/.* in //')
[[ $(sed -n 2p "$WORK/restore.out") == disk:live.img ]] || fail "restore printed $(sed -n 2p "$WORK/restore.out")"
cmp "$WORK/view.raw" "$WORK/cfg/disk/live.img" || fail "the restored PE differs from the export the guest wrote to"
differ=$(cmp -l "$WORK/cfg/disk/live.img" "$WORK/cfg/disk/appliance.img" | wc -l || true)
kill -INT "$RESTORE"
wait "$RESTORE" || fail "restore --instant after SIGINT: $(tail -3 "$WORK/restore.err")"

boot restored "file=$WORK/cfg/disk/live.img,format=raw,snapshot=on"
fp_restored=$(fingerprint)
powerdown restored
[[ $fp_restored == "$fp_live" ]] || fail "the restored PE's guest serves another certificate ($fp_restored, not $fp_live): its first boot's writes are not there"

size=$(stat -c %s "$WORK/cfg/disk/live.img")
echo
echo "live restore of a booted guest ($ACCEL), repository read at $((RATE / 1024)) KiB/s"
printf '%-44s %8.1f s\n' "export ready" "$t_export" \
	"guest booted from the export (/healthz)" "$t_boot"
printf '%-44s %8s\n' "fill done (restore's own timing)" "$t_filled"
printf '%-44s %8.1f MiB of %d MiB\n' "filled when the guest had booted" "$(echo "$filled_at_boot * 512 / 1048576" | bc -l)" "$((size / 1048576))"
echo "the guest changed $differ bytes; the restored PE equals the export it wrote to (cmp)"
echo "the restored PE boots and serves the first boot's certificate ($fp_live)"
