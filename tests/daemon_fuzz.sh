#!/usr/bin/env bash
# daemon_fuzz.sh - memvisord under the protocol fuzzer.
#
# Usage: bash tests/daemon_fuzz.sh PATH/TO/memvisord PATH/TO/memvisor PATH/TO/daemon_fuzz
#
# Starts a daemon on a private socket and runs daemon_fuzz against it: a few
# thousand requests built by mutating a valid request of every command (see
# daemon_fuzz.c), from a seed drawn for each run and printed first; replay a
# run with DAEMON_FUZZ_SEED=0x... (e.g. DAEMON_FUZZ_SEED=0x1234 ctest -R
# daemon_fuzz).  The fuzzer fails on a failed audit, an internal error or an
# error reply without a proper detail.  Then the daemon must still be running,
# the host and sharing audits must pass, `shutdown` must stop it with exit
# status 0, and its log must hold no sanitizer report.  Every check counts;
# the last line is "daemon_fuzz: N passed, M failed" and the exit status is
# non-zero when anything failed.  Skips (exit 0) when the kernel lacks what
# memvisor needs.
set -u

if [ $# -ne 3 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR DAEMON_FUZZ" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
fuzz_bin=$3
suite=daemon_fuzz
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported

log=$scratch/daemon.log
start_daemon "$MEMVISOR_SOCKET" "$log" || exit 1
main_pid=$daemon_pid

seed=${DAEMON_FUZZ_SEED:-0x$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')}
echo "daemon_fuzz: seed $seed (replay with DAEMON_FUZZ_SEED=$seed)"

# The fuzzer prints each failure with the request behind it, then a summary.
timeout 120 "$fuzz_bin" --seed "$seed" >"$scratch/fuzz" 2>&1
status=$?
cat "$scratch/fuzz"
expect "every request got a well-formed reply, every invalid one an error" \
    test "$status" -eq 0
[ "$status" -ne 0 ] && echo "daemon_fuzz: replay with DAEMON_FUZZ_SEED=$seed"
expect "the daemon survived the fuzzing" kill -0 "$main_pid"

check "host audit" 0 --out "every invariant of the host holds" -- "$cli_bin" audit
check "share audit" 0 --out "every sharing invariant holds" -- "$cli_bin" share audit

check "shutdown" 0 -- "$cli_bin" shutdown
wait_exit "$main_pid"
expect "shutdown exits 0" test "$exit_status" -eq 0
expect "shutdown removes socket and lock" \
    test ! -e "$MEMVISOR_SOCKET" -a ! -e "$MEMVISOR_SOCKET.lock"
if grep -Eq "Sanitizer|runtime error:" "$log"; then
    fail "no sanitizer report in the daemon's log" "found one:"
    grep -E -A40 "Sanitizer|runtime error:" "$log" | head -60 | sed 's/^/     | /'
else
    pass "no sanitizer report in the daemon's log"
fi

harness_finish
