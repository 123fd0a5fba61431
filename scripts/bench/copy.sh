#!/usr/bin/env bash
# Benchmark: `astrolabe repo copy` of a repository holding SIZE_MIB
# (default 1024) MiB of random data (one disk image backed up) between two
# versitygw S3 servers on 127.0.0.1, each with keys of its own (profiles
# of an AWS shared credentials file). Prints the copy's seconds, MiB/s and
# peak RSS (/usr/bin/time -v), RUNS (default 3) copies into fresh targets.
# ASTROLABE=path runs another build; COMPARE=path (e.g. an older
# commit's build) alternates with it, run by run, so that both see the
# same load of the machine. Needs versitygw (scripts/s3-server.sh) and
# /usr/bin/time (apt-get install time).
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
WORK=$(mktemp -d /var/tmp/astrolabe-bench-copy.XXXXXX)
cleanup() {
	scripts/s3-server.sh stop "$WORK/s1" >/dev/null 2>&1 || true
	scripts/s3-server.sh stop "$WORK/s2" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT
[[ -x /usr/bin/time ]] || { echo "missing /usr/bin/time: apt-get install -y time" >&2; exit 1; }
BIN=${ASTROLABE:-$WORK/astrolabe}
[[ -n ${ASTROLABE:-} ]] || go build -o "$BIN" ./cmd/astrolabe

site() { # name -> prints the endpoint; adds the profile
	local out
	out=$(S3_TEST_ACCESS_KEY=$1-access S3_TEST_SECRET_KEY=$1-secret-key scripts/s3-server.sh start "$WORK/$1")
	printf '[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n\n' "$1" "$1-access" "$1-secret-key" >>"$WORK/credentials"
	eval "$out"
	echo "$S3_ENDPOINT"
}
E1=$(site s1)
E2=$(site s2)
export AWS_SHARED_CREDENTIALS_FILE=$WORK/credentials AWS_CONFIG_FILE=$WORK/none
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_PROFILE
export ASTROLABE_PASSWORD=bench ASTROLABE_FROM_PASSWORD=bench
A="$BIN --config $WORK/cfg --log-level error"
R1=s3+http://$E1/site1/astrolabe
$BIN init "$WORK/cfg" >/dev/null 2>&1
IMG=$WORK/cfg/disk/big.img
head -c "${SIZE_MIB}M" /dev/urandom >"$IMG"
$A repo init --repo "$R1" --s3-profile s1 2>/dev/null
SNAP=$($A snap disk:big.img | tail -n1)
$A backup --repo "$R1" --s3-profile s1 "$SNAP" >/dev/null 2>&1
rm -f "$IMG"

printf '%-10s %-6s %8s %8s %12s %12s\n' build run seconds MiB/s "peak RSS MiB" "CPU seconds"
copy() { # label binary run
	local R2=s3+http://$E2/site2/$1-$3
	$2 --config "$WORK/cfg" --log-level error repo init --repo "$R2" --s3-profile s2 2>/dev/null
	/usr/bin/time -v -o "$WORK/time" $2 --config "$WORK/cfg" --log-level error repo copy --from "$R1" --from-s3-profile s1 --repo "$R2" --s3-profile s2 >/dev/null 2>"$WORK/copy.err" ||
		{ cat "$WORK/copy.err" >&2; exit 1; }
	wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$WORK/time")
	rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time")
	cpu=$(awk -F': ' '/(User|System) time \(seconds\)/ {s += $2} END {print s}' "$WORK/time")
	printf '%-10s %-6s %8.2f %8.1f %12.1f %12.1f\n' "$1" "$3" "$wall" "$(echo "$SIZE_MIB / $wall" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$cpu"
}
for i in $(seq "$RUNS"); do
	[[ -z ${COMPARE:-} ]] || copy compare "$COMPARE" "$i"
	copy this "$BIN" "$i"
done
