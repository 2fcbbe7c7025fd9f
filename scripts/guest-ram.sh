#!/usr/bin/env bash
# Captures the RAM of real guests for `memvisor bench share`: boots the
# test guest (scripts/guest-image.sh) under plain QEMU with its RAM on a
# file, one guest per workload, lets the workloads run, stops the guests
# and keeps each RAM file as a raw dump (byte i = guest-physical byte i).
# The dumps stay out of the repository; this script rebuilds them.
#
# Usage: scripts/guest-ram.sh [options]
#   --out DIR        where the dumps go (default build/vm/ram)
#   --mib MIB        RAM of each guest (default 256)
#   --workloads LIST one guest per item, NAME[:ARG] (default
#                    idle,idle,compile,pagecache:16,churn:32,verify:32)
#   --settle S       seconds the workloads run before the capture (default 20)
#   --image DIR      the guest image (default build/vm)
#   --force          capture again even if the dumps are there
# Prints the dumps' paths.  Idempotent: with every dump present (and no
# --force) it only prints them.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/build/vm/ram
mib=256
workloads=idle,idle,compile,pagecache:16,churn:32,verify:32
settle=20
image=$root/build/vm
force=0
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --mib) mib=$2; shift 2 ;;
    --workloads) workloads=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "guest-ram: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $mib in ''|*[!0-9]*) echo "guest-ram: --mib takes a number of MiB" >&2; exit 2 ;; esac
case $settle in ''|*[!0-9]*) echo "guest-ram: --settle takes seconds" >&2; exit 2 ;; esac

IFS=, read -r -a list <<<"$workloads"
mkdir -p "$out"
out=$(cd "$out" && pwd)
names=()
for i in "${!list[@]}"; do
    names+=("$out/guest-$i-${list[$i]//:/-}.raw")
done
missing=0
for f in "${names[@]}"; do
    [ -s "$f" ] || missing=1
done
if [ $force -eq 0 ] && [ $missing -eq 0 ]; then
    printf '%s\n' "${names[@]}"
    exit 0
fi

vmctl=""
for c in "$root/build/memvisor-vmctl" "$(command -v memvisor-vmctl || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { vmctl=$c; break; }
done
[ -n "$vmctl" ] || { echo "guest-ram: memvisor-vmctl not found: run make build first" >&2; exit 2; }
"$root/scripts/guest-image.sh" "$image" >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/mv-guest-ram.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for i in "${!list[@]}"; do
    tmp=${names[$i]}.part
    rm -f "$tmp"
    # shellcheck disable=SC2054 # commas inside QEMU option values
    "$root/scripts/run-guest.sh" -m "${mib}M" --image "$image" --run "${list[$i]}" \
        --ctl "$work/$i.ctl" --console "$work/$i.console" -- \
        -object "memory-backend-file,id=ram,size=${mib}M,mem-path=$tmp,share=on" \
        -machine memory-backend=ram >"$work/$i.log" 2>&1 &
    pids+=($!)
done
for i in "${!list[@]}"; do
    if ! "$vmctl" --timeout-ms 180000 "$work/$i.ctl" ping >/dev/null; then
        echo "guest-ram: guest $i (${list[$i]}) did not answer; its console:" >&2
        tail -20 "$work/$i.console" >&2 || true
        exit 1
    fi
done
echo "guest-ram: ${#list[@]} guests up; workloads run for ${settle}s" >&2
sleep "$settle"
# A guest killed mid-run leaves its RAM file exactly as the guest had it.
for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
for i in "${!list[@]}"; do
    mv "${names[$i]}.part" "${names[$i]}"
done
printf '%s\n' "${names[@]}"
