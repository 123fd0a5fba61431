#!/usr/bin/env bash
# What CI checks of the appliance image: it builds; a second build with
# nothing changed reuses the debootstrap cache and yields the same root
# filesystem file list; the OVA stays within its size budget, has the
# structure the OVA tests want and imports into vcsim; and the disk boots
# and serves (images/boot-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/var/tmp/astrolabe-image}
MAX_OVA_MB=${MAX_OVA_MB:-250}
./images/build.sh >/dev/null
cp "$OUT/rootfs.list" "$OUT/rootfs.list.first"
log=$(./images/build.sh 2>&1 >/dev/null)
grep -q "debootstrap: cached" <<<"$log" || { echo "the second build did not reuse the debootstrap cache" >&2; exit 1; }
diff -u "$OUT/rootfs.list.first" "$OUT/rootfs.list" >&2 || { echo "the second build's root filesystem differs" >&2; exit 1; }
ova=$(ls -t "$OUT"/astrolabe-appliance-*.ova | head -n1)
mb=$(($(stat -c %s "$ova") / 1048576))
echo "OVA $ova: $mb MB (budget $MAX_OVA_MB MB); file lists of two builds identical" >&2
((mb <= MAX_OVA_MB)) || { echo "the OVA is over its size budget" >&2; exit 1; }
ASTROLABE_OVA=$ova go test -count=1 ./images/ova
./images/boot-test.sh
