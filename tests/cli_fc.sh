#!/usr/bin/env bash
# cli_fc.sh - Firecracker's page-fault-handler hand-over through memvisord
# and the tool: `memvisor fc listen` on a socket, a stand-in that follows
# Firecracker's documented protocol connects and hands its userfaultfd and
# regions over, its snapshot memory is loaded lazily from the memory file,
# `fc list` shows it, dirty logging counts its writes, its balloon gives
# memory back, `fc stop` kills it; bad requests are refused with a reason.
#
# Usage: bash tests/cli_fc.sh PATH/TO/memvisord PATH/TO/memvisor PATH/TO/fc_standin
set -u

if [ $# -ne 3 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR FC_STANDIN" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
standin=$3
suite=cli_fc
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported
start_daemon "$MEMVISOR_SOCKET" "$scratch/daemon.log" || exit 1

# The snapshot's memory file: 8 MiB whose every byte is 0x5a.
head -c $((8 << 20)) /dev/zero | tr '\0' 'Z' >"$scratch/mem"

check "a relative socket is refused" 1 --err 'absolute path' -- \
    "$cli_bin" fc listen bad relative.sock
check "a missing memory file is refused" 1 --err 'cannot read the memory file' -- \
    "$cli_bin" fc listen bad "$scratch/bad.sock" --mem-file "$scratch/none"
check "an unknown VM" 1 --err 'no snapshot VM' -- "$cli_bin" fc stop nosuch
check "listen" 0 --out 'waiting for its VMM' -- \
    "$cli_bin" fc listen fc1 "$scratch/fc1.sock" --mem-file "$scratch/mem" --target 16M
check "the same name twice" 1 --err 'exists' -- \
    "$cli_bin" fc listen fc1 "$scratch/fc2.sock"
check "listed as listening" 0 --out 'fc1 +listening' -- "$cli_bin" fc list
check "logdirty before the hand-over" 1 --err 'no VMM yet' -- \
    "$cli_bin" fc logdirty fc1 enable

# The stand-in reads commands from a fifo and answers into a file.
mkfifo "$scratch/cmd"
"$standin" "$scratch/fc1.sock" 8 --wp <"$scratch/cmd" >"$scratch/standin.out" &
standin_pid=$!
exec 7>"$scratch/cmd"
ask() {   # ask COMMAND: its reply line
    local before
    before=$(wc -l <"$scratch/standin.out")
    echo "$1" >&7
    for _ in $(seq 300); do
        if [ "$(wc -l <"$scratch/standin.out")" -gt "$before" ]; then
            tail -1 "$scratch/standin.out"
            return
        fi
        sleep 0.1
    done
    echo timeout
}
for _ in $(seq 100); do
    grep -q ready "$scratch/standin.out" 2>/dev/null && break
    sleep 0.1
done
expect "the stand-in handed over" grep -q 'ready 2048' "$scratch/standin.out"
for _ in $(seq 100); do
    "$cli_bin" fc list 2>/dev/null | grep -q 'fc1 *running' && break
    sleep 0.1
done
check "listed as running" 0 --out 'fc1 +running' -- "$cli_bin" fc list
expect "its pages are the snapshot's" test "$(ask 'sum 0 2048')" = "ok $(( (8 << 20) * 90 ))"
check "fc list --json" 0 -- "$cli_bin" fc list --json
json_check "all 2048 pages loaded from the file" \
    "d['vms'][0]['loaded_pages'] == 2048 and d['vms'][0]['populated_pages'] == 2048"
check "logdirty enable" 0 -- "$cli_bin" fc logdirty fc1 enable
check "logdirty clean" 0 --out 'clean: [0-9]+ dirty' -- "$cli_bin" fc logdirty fc1 clean
expect "the stand-in writes" test "$(ask 'write 5 3 1')" = "ok"
check "the writes are logged" 0 --out 'clean: 3 dirty pages' -- \
    "$cli_bin" fc logdirty fc1 clean
check "logdirty disable" 0 -- "$cli_bin" fc logdirty fc1 disable
expect "its balloon removes pages" test "$(ask 'remove 100 100')" = "ok"
check "fc list --json" 0 -- "$cli_bin" fc list --json
json_check "removed pages are uncharged" \
    "d['vms'][0]['removed_pages'] == 100 and d['vms'][0]['populated_pages'] == 1948"
expect "removed pages read zero again" test "$(ask 'sum 100 100')" = "ok 0"
check "host audit" 0 -- "$cli_bin" audit
check "stop" 0 -- "$cli_bin" fc stop fc1
wait "$standin_pid"
expect "the stand-in was killed" test $? -eq 137
exec 7>&-
check "nothing is listed" 0 -- "$cli_bin" fc list --json
json_check "no VM left" "len(d['vms']) == 0"
expect "the socket is gone" test ! -e "$scratch/fc1.sock"
check "host audit after stop" 0 -- "$cli_bin" audit
harness_finish
