#!/usr/bin/env bash
# Boots the test guest (scripts/guest-image.sh) under plain QEMU: the
# baseline peer memvisor is compared against.  The console is the first
# serial port (stdio, or a file with --console); the agent's control channel
# is the second, a unix socket QEMU listens on (drive it with
# memvisor-vmctl SOCK COMMAND).  QEMU's exit status is this script's: 0 after
# the guest's `poweroff` (-no-reboot).
#
# Usage: scripts/run-guest.sh [options] [-- extra QEMU args]
#   -m SIZE          guest RAM (default 256M)
#   --ctl SOCK       control socket path (default $TMPDIR/mv-guest-PID.ctl)
#   --qmp SOCK       also a QMP socket (balloon, query-balloon, ...)
#   --console FILE   write the guest console to FILE instead of stdio
#   --run LIST       workloads to start at boot: NAME[:ARG],...  (mv.run=)
#   --append ARGS    more kernel command line
#   --kvm            -accel kvm instead of tcg
#   --image DIR      where guest-image.sh builds (default build/vm)
#   --dry-run        print the QEMU command line, run nothing
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mem=256M
ctl=${TMPDIR:-/tmp}/mv-guest-$$.ctl
qmp=""
console=""
run=""
append=""
accel=tcg
image=$root/build/vm
dry=0
extra=()
while [ $# -gt 0 ]; do
    case $1 in
    -m) mem=$2; shift 2 ;;
    --ctl) ctl=$2; shift 2 ;;
    --qmp) qmp=$2; shift 2 ;;
    --console) console=$2; shift 2 ;;
    --run) run=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --kvm) accel=kvm; shift ;;
    --image) image=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-guest: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v qemu-system-x86_64 >/dev/null ||
    { echo "run-guest: qemu-system-x86_64 not found: install the Debian package qemu-system-x86" >&2; exit 2; }
"$root/scripts/guest-image.sh" "$image" >&2
# shellcheck source=/dev/null
. "$image/guest.env"

cmdline="console=ttyS0 init_on_free=1 quiet"
[ -n "$run" ] && cmdline="$cmdline mv.run=$run"
[ -n "$append" ] && cmdline="$cmdline $append"

# shellcheck disable=SC2054 # commas inside QEMU option values
args=(qemu-system-x86_64 -accel "$accel" -m "$mem" -smp 1 -nographic -no-reboot
      -kernel "$KERNEL" -initrd "$INITRD" -append "$cmdline"
      -nic none -device virtio-balloon-pci,free-page-reporting=on)
if [ -n "$console" ]; then
    args+=(-monitor none -serial "file:$console")
else
    args+=(-serial mon:stdio)
fi
args+=(-chardev "socket,id=ctl,path=$ctl,server=on,wait=off" -serial chardev:ctl)
[ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")
args+=("${extra[@]}")

if [ $dry -eq 1 ]; then
    printf '%q ' "${args[@]}"
    echo
    exit 0
fi
echo "run-guest: control socket $ctl${qmp:+, QMP $qmp}" >&2
rm -f "$ctl"
exec "${args[@]}"
