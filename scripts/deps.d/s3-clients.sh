#!/usr/bin/env bash
# The S3 clients the data path's tests drive against a running
# 'astrolabe serve' (cmd/astrolabe/s3clients_test.go): awscli and s3cmd from
# Debian, and minio's mc, which Debian does not package (its "mc" is
# Midnight Commander), built from the Go module proxy at a pinned version.
# rclone comes with install-test-deps.sh's base set. Idempotent; run as root.
set -euo pipefail

MC_VERSION=v0.0.0-20250313080218-cf909e1063a9

. "$(dirname "$0")/../lib/apt.sh"
# Any aws will do (Debian's awscli v2, or a v1 from pip/pyenv already on PATH).
apt_need aws:awscli s3cmd:s3cmd

# A build of mc from a cold build cache takes about 4.5 CPU-minutes
# (measured: 229 s user + 35 s system; 2-3 minutes on 2 idle cores).
GOBIN=$(go env GOPATH)/bin
# The version is read whole first: grep -q would stop reading early, and
# with pipefail mc's SIGPIPE would look like a missing mc (a rebuild).
if [[ $("$GOBIN/mc" --version 2>/dev/null || true) != "mc version"* ]]; then
	echo "installing minio mc $MC_VERSION into $GOBIN (takes a few minutes)"
	GOFLAGS= go install "github.com/minio/mc@$MC_VERSION"
fi
