#!/usr/bin/env bash
# The main job on the embedded default: a configuration with sample PEs in a
# local directory, a snapshot, a copy to a zip and back, and then the
# appliance itself (astrolabe serve) on loopback, with the URLs to try.
# Usage: scripts/demo.sh [DIR]   (default: ./demo, recreated each run)
# DEMO_SERVE=0 skips the server (it runs in the foreground until Ctrl-C);
# DEMO_API, DEMO_NBD and DEMO_S3 move its listeners (defaults 127.0.0.1:8443,
# :10809 and :9000).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-demo}
A=${ASTROLABE:-./bin/astrolabe}
[[ -x $A ]] || go build -o bin/astrolabe ./cmd/astrolabe

if ! command -v mke2fs >/dev/null; then
	echo "installing e2fsprogs (for the sample disk image)"
	apt-get update -qq && apt-get install -y -qq e2fsprogs >/dev/null
fi

rm -rf "$DIR"
step() { printf '\n\033[1m$ astrolabe %s\033[0m\n' "$*" >&2; "$A" --config "$DIR" "$@"; }

step init --samples "$DIR"
step types
step ls fs
step ls disk
SNAP=$(step snap fs:sample | tail -n1)
echo "$SNAP"
step lssn fs:sample
step cp "$SNAP" "$DIR/sample.zip"
unzip -l "$DIR/sample.zip" 2>/dev/null || ls -l "$DIR/sample.zip"
RESTORED=$(step cp "$DIR/sample.zip" fs | tail -n1)
echo "$RESTORED"
step show "$RESTORED"
diff -r "$DIR/fs/sample" "$DIR/fs/${RESTORED#fs:}" && echo "restored tree equals the source"
DSNAP=$(step snap disk:sample.img | tail -n1)
echo "$DSNAP"
step show "$DSNAP"
step cp "$DSNAP" "$DIR/disk.zip"
DRESTORED=$(step cp "$DIR/disk.zip" disk | tail -n1)
echo "$DRESTORED"
cmp "$DIR/disk/sample.img" "$DIR/disk/${DRESTORED#disk:}" && echo "restored disk equals the source"
du -h --apparent-size "$DIR/disk/${DRESTORED#disk:}"; du -h "$DIR/disk/${DRESTORED#disk:}"

[[ ${DEMO_SERVE:-1} == 1 ]] || exit 0
printf '\n\033[1m$ astrolabe serve\033[0m (Ctrl-C stops it)\n' >&2
API=${DEMO_API:-127.0.0.1:8443} NBD=${DEMO_NBD:-127.0.0.1:10809} S3=${DEMO_S3:-127.0.0.1:9000}
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
CERT="$DIR/tls/cert.pem"
cat >&2 <<EOT
Try, in another terminal:
  curl --cacert $CERT -H 'Authorization: Bearer $TOKEN' https://$API/v1/astrolabe/disk
  curl --cacert $CERT -H 'Authorization: Bearer $TOKEN' -d '{"id":"$DSNAP"}' https://$API/v1/appliance/nbd/exports
  nbdinfo --list nbd://$NBD
  $A --config $DIR --server https://$API --token $TOKEN ls fs
EOT
exec "$A" --config "$DIR" serve --api "$API" --nbd "$NBD" --s3 "$S3" --token "$TOKEN"
