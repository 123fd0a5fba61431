#!/usr/bin/env bash
# The web page (web/, make web): Node.js and npm from Debian, the page's
# npm packages from web/package-lock.json (npm ci), and Debian's chromium
# for the browser test (cmd/astrolabe/web_test.go, driven by chromedp);
# squashfs-tools for a filesystem recovery mounts refuse (appliance/flr).
# Idempotent: what is there is not installed again.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/scripts/lib/apt.sh"
apt_need node:nodejs npm:npm chromium:chromium mksquashfs:squashfs-tools

# npm ci wipes node_modules first: only when the lockfile changed since.
stamp="$root/web/node_modules/.package-lock.json"
if [ ! -e "$stamp" ] || [ "$root/web/package-lock.json" -nt "$stamp" ]; then
	echo "web: npm ci (web/package-lock.json)"
	(cd "$root/web" && npm ci --no-audit --no-fund --ignore-scripts)
fi
