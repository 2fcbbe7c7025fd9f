#!/usr/bin/env bash
# Boots one test guest under plain QEMU (scripts/run-guest.sh) and checks
# what tests will rely on: the boot line, every agent command through
# memvisor-vmctl, a data-verifying writer without mismatches, dirty's frame
# list, a QMP balloon inflation seen from inside the guest, and a clean
# poweroff (QEMU exit 0).  Prints one line per check; exits 1 on the first
# failure.  Needs memvisor-vmctl (cmake --build BUILD --target
# memvisor-vmctl) and, for the balloon check, python3 (skipped without it).
#
# Usage: scripts/guest-smoke.sh [--vmctl PATH] [--verify-s SECONDS] [-m SIZE]
#                               [-- run-guest.sh options]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vmctl=$root/build/memvisor-vmctl
verify_s=60
mem=512M
extra=()
while [ $# -gt 0 ]; do
    case $1 in
    --vmctl) vmctl=$2; shift 2 ;;
    --verify-s) verify_s=$2; shift 2 ;;
    -m) mem=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "guest-smoke: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$vmctl" ] || { echo "guest-smoke: no memvisor-vmctl at $vmctl (--vmctl)" >&2; exit 2; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/mv-smoke.XXXXXX")
qpid=""
cleanup() {
    [ -n "$qpid" ] && kill "$qpid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
fail() { echo "guest-smoke: FAIL: $*" >&2; echo "--- console:" >&2; tail -20 "$dir/con" >&2; exit 1; }
ctl() { "$vmctl" --timeout-ms 30000 "$dir/ctl" "$@"; }
field() { sed -n "s/.*\"$1\":\\([0-9]*\\).*/\\1/p"; }

start=$(date +%s%N)
"$root/scripts/run-guest.sh" -m "$mem" --ctl "$dir/ctl" --qmp "$dir/qmp" \
    --console "$dir/con" "${extra[@]}" </dev/null >"$dir/qemu.out" 2>&1 &
qpid=$!
"$vmctl" --timeout-ms 120000 "$dir/ctl" ping >/dev/null || fail "the guest did not answer ping"
echo "boot: agent answers after $((($(date +%s%N) - start) / 1000000)) ms;" \
    "$(grep -a -o 'MV-GUEST boot [0-9.]*' "$dir/con")"
grep -aq "MV-GUEST modules:.*virtio_balloon" "$dir/con" || fail "virtio_balloon not loaded"

# shellcheck disable=SC2086 # $c and $w are a command and its argument
for c in "meminfo" "status" "sync" "drop-caches" "touch 16"; do
    ctl $c >/dev/null || fail "$c"
done
if ctl no-such-command >/dev/null; then fail "an unknown command was accepted"; fi
# shellcheck disable=SC2086
for w in idle "pagecache 8" compile "churn 4"; do
    ctl run $w >/dev/null || fail "run $w"
done
sleep 3
ctl status | grep -q '"errors":[1-9]' && fail "a workload reports errors"
for w in idle pagecache compile churn; do
    ctl stop $w >/dev/null || fail "stop $w"
done
echo "commands: ok"

d1=$(ctl dirty 64) || fail "dirty 64"
n=$(echo "$d1" | sed 's/.*"gfns":\[\([0-9,]*\)\].*/\1/' | tr ',' '\n' | grep -c .)
[ "$n" -eq 64 ] || fail "dirty 64 reported $n frames"
d2=$(ctl dirty 64) || fail "dirty 64 (again)"
[ "$(echo "$d1" | sed 's/.*"gfns"//')" = "$(echo "$d2" | sed 's/.*"gfns"//')" ] ||
    fail "a second dirty 64 reported other frames"
echo "dirty: 64 frames, the same twice"

ctl run verify 32 >/dev/null || fail "run verify"
if command -v python3 >/dev/null; then
    before=$(ctl meminfo | field MemTotal)
    case $mem in
    *[Gg]) mib=$(( ${mem%[Gg]} * 1024 )) ;;
    *) mib=${mem%[Mm]} ;;
    esac
    target=$(( mib / 2 * 1024 * 1024 ))  # half the RAM
    python3 - "$dir/qmp" "$target" <<'EOF' || fail "QMP balloon"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
f.readline()
for cmd in ({"execute": "qmp_capabilities"},
            {"execute": "balloon", "arguments": {"value": int(sys.argv[2])}}):
    f.write(json.dumps(cmd) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" not in r:
            break
    if "error" in r:
        sys.exit(r["error"]["desc"])
EOF
    after=$before
    for _ in $(seq 1 30); do
        sleep 1
        after=$(ctl meminfo | field MemTotal)
        [ "$after" -lt "$before" ] && break
    done
    [ "$after" -lt "$before" ] || fail "the balloon did not inflate (MemTotal $before kB)"
    echo "balloon: guest MemTotal $before kB -> $after kB"
else
    echo "balloon: skipped (no python3 for QMP)"
fi

sleep "$verify_s"
v=$(ctl verify-check) || fail "verify-check: $v"
echo "verify: ${verify_s}s, $(echo "$v" | field checks) page checks, 0 mismatches"

ctl poweroff >/dev/null || fail "poweroff"
rc=0
wait "$qpid" || rc=$?
qpid=""
[ $rc -eq 0 ] || fail "QEMU exited $rc after poweroff"
echo "poweroff: QEMU exited 0"
