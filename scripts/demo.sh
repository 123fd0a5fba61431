#!/usr/bin/env bash
# The main job on the embedded default: a configuration with sample PEs in a
# local directory, a snapshot, a copy to a zip and back, and the result.
# Usage: scripts/demo.sh [DIR]   (default: ./demo, recreated each run)
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
