#!/usr/bin/env bash
# stress.sh — repeat the end-to-end scenarios and report violations.
#
# Runs the e2e scenarios STRESS_COUNT times (go test -count) on the etcd
# lines of E2E_ETCD_VERSIONS (default: all), keeps the full log, and prints
# a summary: passes and failures per subtest, every invariant violation the
# observer or a scenario reported (I1 to I4), and the measured results (min, median,
# max per result and etcd version). Exits non-zero if any run failed.
#
#   STRESS_COUNT    repetitions (default 20)
#   STRESS_RUN      go test -run pattern (default: the round and the fault
#                   scenarios F1 to F10, the long defrags and the disk guard)
#   STRESS_OUT      output directory (default bin/stress): test.log, results.jsonl, summary.txt
#   STRESS_TIMEOUT  go test -timeout (default 6h)
#
# E2E_ETCD_VERSIONS is set to every line when unset: the fault scenarios
# outside the issue's version matrix run on the newest line only unless the
# lines are selected explicitly (FaultLines), and stress runs them on all.
set -uo pipefail
cd "$(dirname "$0")/../.."

count=${STRESS_COUNT:-20}
run=${STRESS_RUN:-'^(TestRound|TestF1AgentKilledMidDefrag|TestF5NoSpace|TestF2MemberDownDuringRound|TestF3LeaderChangesMidRound|TestF6DefragLongerThanLease|TestF7TwoAgentsOneMember|TestF8AgentsRestarted|TestF4Partition|TestF9ClientLoad|TestF10BadInputs|TestLongDefrag|TestDiskGuard)$'}
export E2E_ETCD_VERSIONS=${E2E_ETCD_VERSIONS:-3.4,3.5,3.6,3.7}
out=${STRESS_OUT:-bin/stress}
mkdir -p "$out"
export E2E_RESULTS="$PWD/$out/results.jsonl"
: >"$E2E_RESULTS"

start=$(date +%s)
(cd test && go test -tags e2e -count="$count" -timeout "${STRESS_TIMEOUT:-6h}" -v -run "$run" ./e2e/) >"$out/test.log" 2>&1
rc=$?
took=$(($(date +%s) - start))

{
	echo "stress: go test -count=$count -run '$run' (etcd lines: $E2E_ETCD_VERSIONS), ${took}s, exit $rc"
	echo
	echo "runs per subtest:"
	grep -E '^ *--- (PASS|FAIL|SKIP): ' "$out/test.log" |
		sed -E 's/^ *--- (PASS|FAIL|SKIP): ([^ ]+) .*/\2 \1/' |
		sort | uniq -c | awk '{printf "  %-50s %-4s %d\n", $2, $3, $1}'
	echo
	for inv in I1 I2 I3 I4; do
		n=$(grep -c "$inv violated" "$out/test.log")
		echo "$inv violations: $n"
		grep "$inv violated" "$out/test.log" | sed 's/^ */    /' | head -20
	done
	echo "other problems (unexpected exits, processes left running, panics):"
	grep -E 'exited unexpectedly|left running|panic:' "$out/test.log" | sed 's/^ */    /' | head -20
	echo
	echo "results (n, min, median, max):"
	# json.Marshal orders the keys: etcd, name, test, time, unit, value.
	sed -E 's/.*"etcd":"([^"]*)","name":"([^"]*)".*"unit":"([^"]*)","value":([^}]*)}.*/\2 \1 \3 \4/' "$E2E_RESULTS" |
		sort -k1,1 -k2,2 -k4,4g |
		awk '
			function flush() {
				if (n == 0) return
				med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
				printf "  %-44s etcd %-7s n=%-3d min %.3f median %.3f max %.3f %s\n", key, ver, n, v[1], med, v[n], unit
				n = 0
			}
			{ if ($1 != key || $2 != ver) { flush(); key = $1; ver = $2; unit = $3 } v[++n] = $4 }
			END { flush() }'
} | tee "$out/summary.txt"
exit $rc
