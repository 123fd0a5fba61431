#!/usr/bin/env bash
# restic, the reference for retention: cmd/astrolabe's TestRetentionMatchesRestic
# checks that repo forget --keep-* keeps what restic forget keeps for the
# same snapshot times. Idempotent; run as root.
set -euo pipefail

if command -v restic >/dev/null; then
	exit 0
fi
echo "installing restic"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends restic >/dev/null
