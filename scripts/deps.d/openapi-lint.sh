#!/usr/bin/env bash
# The linters of api/openapi.yaml (make lint-api): Redocly's and Stoplight
# Spectral's CLIs from the npm registry, at the versions api/lint-tools.env
# pins, fetched into npx's cache so that `make lint` finds them. Needs
# Node.js >= 20.19 (Redocly CLI 2); installs Node.js from Debian if there is
# none. Idempotent: a cached version is not fetched again.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../api/lint-tools.env
source "$root/api/lint-tools.env"

. "$root/scripts/lib/apt.sh"
apt_need node:nodejs npx:npm
node_version=$(node --version)
IFS=. read -r major minor _ <<<"${node_version#v}"
if ((major < 20 || (major == 20 && minor < 19))); then
	echo "openapi-lint: Node.js $node_version is too old for @redocly/cli@$REDOCLY_CLI_VERSION: install Node.js 20.19 or later (22 LTS)" >&2
	exit 1
fi

export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
for pkg in "@redocly/cli@$REDOCLY_CLI_VERSION" "@stoplight/spectral-cli@$SPECTRAL_CLI_VERSION"; do
	if ! npx --no-install "$pkg" --version >/dev/null 2>&1; then
		echo "fetching $pkg into the npm cache"
		npx --yes "$pkg" --version >/dev/null
	fi
done
