#!/usr/bin/env bash
# internal/calendar's tests compare its schedules with systemd's own
# computation: systemd-analyze calendar (Debian package systemd; it runs
# without systemd being PID 1, in a container too).
# Idempotent; run as root (or with sudo).
set -euo pipefail

. "$(dirname "$0")/../lib/apt.sh"
apt_need systemd-analyze:systemd
