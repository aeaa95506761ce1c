#!/usr/bin/env bash
# make test-busy: runs make test TEST_BUSY_RUNS times in a row (default 3)
# while stress-ng keeps every core busy beside it (--cpu 0: one worker per
# core), as on a shared CI machine. Installs Debian's stress-ng if missing.
# Prints each run's time and exit code; exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v stress-ng >/dev/null 2>&1; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends stress-ng >/dev/null || {
		echo "test-busy: cannot install stress-ng" >&2
		exit 1
	}
fi

runs=${TEST_BUSY_RUNS:-3}
out=${TEST_BUSY_OUT:-bin/test-busy}
mkdir -p "$out"
stress-ng --cpu 0 --cpu-method matrixprod --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null' EXIT

failed=0
for i in $(seq 1 "$runs"); do
	start=$(date +%s)
	make test >"$out/run-$i.log" 2>&1
	rc=$?
	took=$(($(date +%s) - start))
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	echo "test-busy: run $i of $runs: exit $rc in ${took}s (load average $load; log $out/run-$i.log)"
	if [ "$rc" -ne 0 ]; then
		failed=1
		grep -E '^(--- FAIL|FAIL|panic:)' "$out/run-$i.log" | head -20
	fi
done
exit "$failed"
