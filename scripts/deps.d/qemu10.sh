#!/usr/bin/env bash
# qemu 10's qemu-img and qemu-io, the NBD clients that negotiate extended
# headers (Debian bookworm's qemu 7.2 and libnbd 1.14 cannot): the NBD
# tests of writable exports run them. They come from bookworm-backports,
# unpacked into $QEMU10_ROOT rather than installed, so that the system's
# qemu 7.2 stays what the other tests run. Idempotent; run as root.
set -euo pipefail

ROOT=${QEMU10_ROOT:-/opt/qemu10}
BACKPORTS=/etc/apt/sources.list.d/backports.list

if [[ $("$ROOT/usr/bin/qemu-img" --version 2>/dev/null || true) == "qemu-img version 10."* ]]; then
	exit 0
fi
echo "installing qemu-utils 10 from bookworm-backports into $ROOT"
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$BACKPORTS"
fi
apt-get update -qq

# The shared libraries it links to are all in bookworm itself.
deps=$(apt-cache show --no-all-versions qemu-utils/bookworm-backports | sed -n 's/^Depends: //p' |
	tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/[[:space:]]//g' | grep -v '^$')
need=()
for pkg in $deps; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
	echo "installing the libraries of qemu-utils 10: ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# apt-get download writes into the current directory, as the _apt user.
chmod 777 "$tmp"
(cd "$tmp" && apt-get download -qq qemu-utils/bookworm-backports)
rm -rf "$ROOT.new"
dpkg -x "$tmp"/qemu-utils_*.deb "$ROOT.new"
for bin in qemu-img qemu-io; do
	if missing=$(ldd "$ROOT.new/usr/bin/$bin" | grep 'not found'); then
		echo "$bin lacks libraries:" >&2
		echo "$missing" >&2
		exit 1
	fi
done
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
"$ROOT/usr/bin/qemu-img" --version | head -1
