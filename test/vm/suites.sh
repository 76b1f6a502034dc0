#!/bin/sh
# Runs in the guest (test/vm/matrix starts it through test/vm/run): each
# test binary given, one after the other, with VM_TEST_THREADS (2) threads
# and at most VM_SUITE_TIMEOUT (1200) seconds each; the whole output of each
# goes to /vm/<suite>.log (the share: it stays on the host), a summary here:
# each suite's result line and time, and for a failure its failed tests and
# their panic messages. Exits 1 if any suite failed.
#   suites.sh /path/to/target/debug/deps/cri-0123abcd [...]
threads=${VM_TEST_THREADS:-2}
limit=${VM_SUITE_TIMEOUT:-1200}
failed=""
summary=""
echo "vm: containerd $("${CONTAINERD_DIR:+$CONTAINERD_DIR/}containerd" --version | cut -d' ' -f3)," \
	"cgroup driver ${CGROUP_DRIVER:-cgroupfs}, $threads test threads"
for binary in "$@"; do
	suite=$(basename "$binary")
	suite=${suite%-*}
	log=/vm/$suite.log
	began=$(date +%s)
	timeout --kill-after=10 "$limit" "$binary" --test-threads="$threads" > "$log" 2>&1
	status=$?
	took=$(($(date +%s) - began))
	result=$(grep '^test result:' "$log" | tail -n 1)
	[ "$status" = 124 ] && result="TIMEOUT after ${limit}s"
	[ -n "$result" ] || result="exit $status"
	echo "== $suite: $result (${took}s wall)"
	summary="$summary$(printf '%-14s %5ss  %s' "$suite" "$took" "$result")
"
	if [ "$status" != 0 ]; then
		failed="$failed $suite"
		# The failed tests, and what each panicked with (first lines).
		# (the last "failures:" list: names only, indented by 4).
		awk '/^failures:$/ { names = "" } /^    [^ ]/ { names = names "   failed: " $1 "\n" } END { printf "%s", names }' "$log"
		grep -A 6 "panicked at" "$log" | head -n 80 | sed 's/^/   | /'
	fi
done
echo "== summary (containerd ${CONTAINERD_DIR:-of the machine}, driver ${CGROUP_DRIVER:-cgroupfs})"
printf '%s' "$summary"
if [ -n "$failed" ]; then
	echo "== FAILED:$failed (logs in the run's share)"
	exit 1
fi
