#!/usr/bin/env bash
# Runs each fuzz target for a while: scripts/fuzz.sh FUZZTIME PKG:TARGET...
#
# A target fails only on a real finding: go test wrote a failing input to
# testdata/fuzz/TARGET, or failed for a reason other than the bare
# "context deadline exceeded" that Go's fuzz coordinator (before Go 1.27,
# go.dev/issue/75804) sometimes reports when -fuzztime ends under load. Such
# a run is replayed over its corpus, which must pass, and counted as a flake.
set -euo pipefail
fuzztime=$1; shift
go=${GO:-go}
flakes=0
for t in "$@"; do
	pkg=${t%%:*} name=${t#*:}
	dir=$pkg/testdata/fuzz/$name
	before=$(ls "$dir" 2>/dev/null | sort || true)
	echo "fuzz $name ($fuzztime)"
	log=$(mktemp)
	if "$go" test "./$pkg" -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime 10s 2>&1 | tee "$log"; then
		rm -f "$log"; continue
	fi
	after=$(ls "$dir" 2>/dev/null | sort || true)
	# Lines of a failure other than the race's own.
	other=$(grep -vE '^(fuzz: elapsed|--- FAIL: '"$name"' |    context deadline exceeded$|FAIL$|exit status 1$|FAIL\s)' "$log" || true)
	rm -f "$log"
	if [ "$before" != "$after" ] || [ -n "$other" ]; then
		echo "fuzz $name: a real failure (new inputs in $dir: $(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' '))" >&2
		exit 1
	fi
	echo "fuzz $name: the coordinator's deadline race (go.dev/issue/75804), no failing input; replaying the corpus"
	"$go" test "./$pkg" -count=1 -run "^$name\$"
	flakes=$((flakes + 1))
done
echo "fuzz: $# targets passed ($flakes ended in the coordinator's deadline race)"
