#!/usr/bin/env bash
# cli_vm.sh - real guests through memvisord and the tool: `create --vmm
# qemu`, `console`, `qmp`, pause, balloon, audit and destroy of an
# unmodified QEMU running Debian's kernel on memvisor memory.
#
# Usage: bash tests/cli_vm.sh PATH/TO/memvisord PATH/TO/memvisor
#
# First the usage errors (no daemon needed beyond one that answers): --vmm
# without --kernel, a kernel that does not exist, --kernel without --vmm,
# console and qmp of a built-in domain.  Then one guest end to end: it
# boots (its console says its agent is ready), `list` shows it, QMP answers
# through memvisor, pause stops it and unpause lets it run, the balloon
# shrinks it, its dirty log and working set are read, audits hold, destroy
# stops QEMU and frees everything.  Skips
# (exit 0), saying why, without QEMU or the guest image (MV_GUEST_IMAGE, or
# build/vm beside the source tree, which make test builds).
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
suite=cli_vm
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported

image=${MV_GUEST_IMAGE:-$(cd "$(dirname "$0")/.." && pwd)/build/vm}
start_daemon "$MEMVISOR_SOCKET" "$scratch/daemon.log" || exit 1

check "--vmm needs --kernel" 1 --err 'needs --kernel' -- \
    "$cli_bin" create nokernel --maxmem 64M --vmm qemu
check "a missing kernel is named" 1 --err 'cannot be read' -- \
    "$cli_bin" create badkernel --maxmem 64M --vmm qemu --kernel "$scratch/none"
check "--kernel without --vmm is refused" 1 --err 'go with --vmm' -- \
    "$cli_bin" create stray --maxmem 64M --kernel "$scratch/none"
check "a built-in domain" 0 -- "$cli_bin" create builtin --maxmem 16M
check "console of a built-in domain is refused" 1 --err 'not a real guest' -- \
    "$cli_bin" console builtin
check "qmp of a built-in domain is refused" 1 --err 'not a real guest' -- \
    "$cli_bin" qmp builtin '{"execute":"query-status"}'
check "nothing was left of the refused guests" 0 --out '^ +[0-9]+ +builtin' -- \
    "$cli_bin" list
expect "only the built-in domain exists" \
    test "$("$cli_bin" list | tail -n +2 | wc -l)" -eq 1

if ! command -v qemu-system-x86_64 >/dev/null || [ ! -r "$image/vmlinuz" ]; then
    echo "$suite: real guest skipped: needs qemu-system-x86_64 and the guest image in" \
         "$image (scripts/guest-image.sh builds it)"
    harness_finish
    exit $?
fi

check "create a real guest" 0 --out 'QEMU [0-9]+; console' -- \
    "$cli_bin" create vm1 --maxmem 512M --target 256M --vmm qemu \
    --kernel "$image/vmlinuz" --initrd "$image/initramfs.cpio.gz" \
    --append "console=ttyS0 init_on_free=1 quiet"
booted=0
for _ in $(seq 600); do
    if "$cli_bin" console vm1 2>/dev/null | grep -q 'MV-GUEST agent ready'; then
        booted=1
        break
    fi
    sleep 0.2
done
expect "the guest boots to its agent" test "$booted" -eq 1
check "its console shows the boot" 0 --out 'MV-GUEST boot' -- "$cli_bin" console vm1
check "list shows it running" 0 --out 'vm1 +running' -- "$cli_bin" list
check "stats --json" 0 -- "$cli_bin" stats --json vm1
json_check "populated stays within the target" \
    "d['domains'][0]['populated_pages'] <= d['domains'][0]['target_pages']"
check "QMP through memvisor" 0 --out '"running": true' -- \
    "$cli_bin" qmp vm1 '{"execute":"query-status"}'
check "a bad QMP command is QEMU's error" 1 --err 'refused' -- \
    "$cli_bin" qmp vm1 '{"execute":"no-such-command"}'
check "pause" 0 -- "$cli_bin" pause vm1
check "QEMU's vCPUs stopped" 0 --out '"running": false' -- \
    "$cli_bin" qmp vm1 '{"execute":"query-status"}'
check "list shows it paused" 0 --out 'vm1 +paused' -- "$cli_bin" list
check "unpause" 0 -- "$cli_bin" unpause vm1
check "QEMU's vCPUs run again" 0 --out '"running": true' -- \
    "$cli_bin" qmp vm1 '{"execute":"query-status"}'
check "balloon to 256M" 0 -- "$cli_bin" balloon vm1 256M
inflated=0
for _ in $(seq 300); do
    if "$cli_bin" qmp vm1 '{"execute":"query-balloon"}' 2>/dev/null |
            grep -q '"actual": 268435456'; then
        inflated=1
        break
    fi
    sleep 0.1
done
expect "the guest's balloon reached 256M" test "$inflated" -eq 1
check "dirty logging of the real guest" 0 -- "$cli_bin" logdirty vm1 enable
check "its working set, from the dirty log" 0 --out '[0-9]' -- \
    "$cli_bin" wss vm1 --interval 1 --count 2
check "a clean of its log" 0 --out 'clean: [0-9]+ dirty pages' -- \
    "$cli_bin" logdirty vm1 clean
check "logging off" 0 -- "$cli_bin" logdirty vm1 disable
check "reclaim the guest's zero pages, and those of QEMU's own blocks (its ACPI table area)" 0 \
    --out "QEMU's own blocks gave back [1-9][0-9]* zero pages" -- "$cli_bin" reclaim vm1
check "a second reclaim finds QEMU's blocks trimmed" 0 \
    --out "QEMU's own blocks gave back 0 zero pages" -- "$cli_bin" reclaim vm1
check "audit of the guest" 0 -- "$cli_bin" audit vm1
check "audit of the host" 0 -- "$cli_bin" audit
qemu_pid=$(pgrep -f "qemu-system-x86_64.*vm1.qmp" | head -1)
# QEMU quits under the domain (as it does when the guest powers off): the
# domain crashes, and stats says how QEMU ended.
# (QEMU may be gone before it answers: the command's status is not the test)
"$cli_bin" qmp vm1 '{"execute":"quit"}' >/dev/null 2>&1 || true
ended=0
for _ in $(seq 300); do
    if "$cli_bin" stats --json vm1 2>/dev/null |
            grep -Eq '"vmm_exit": *"QEMU exited with status 0'; then
        ended=1
        break
    fi
    sleep 0.1
done
expect "stats --json tells how QEMU ended" test "$ended" -eq 1
check "stats tells it beside the crash" 0 \
    --out "^domain [0-9]+ \(vm1\) crashed: VMM process [0-9]+ exited; QEMU exited with status 0: the guest powered off, or QEMU was told to quit$" -- \
    "$cli_bin" stats
check "destroy" 0 -- "$cli_bin" destroy vm1
expect "QEMU is gone" test -z "$qemu_pid" -o ! -d "/proc/${qemu_pid:-0}"
check "host audit after destroy" 0 -- "$cli_bin" audit
check "stats --json" 0 -- "$cli_bin" stats --json
json_check "only the built-in domain's memory is left" \
    "len(d['domains']) == 1 and d['domains'][0]['name'] == 'builtin'"
harness_finish
