#!/usr/bin/env bash
# cli_share.sh - copy-on-write page sharing through memvisord and the tool.
#
# Usage: bash tests/cli_share.sh PATH/TO/memvisord PATH/TO/memvisor
#
# Checks the usage errors of `memvisor share` and `memvisor clone` without a
# daemon, then starts one on a private socket and drives sharing end to end:
# clone of a paused domain (pages saved, the source isolated from the
# clone's writes), the same with the kernel copying on write and `share
# settle` catching up, nominate + share-pages between two domains whose built-in
# writers wrote equal pages, stale and never-issued handles, add-to-physmap,
# unshare, make_ro_and_share through the content index, exclusion, hints,
# synchronous scans and the background scanner, the new per-domain counters
# in list/stats, and library errors (paused or unknown domains, gfns past
# maxmem).  The content oracle and both audits must hold throughout, and
# destroying every domain must leave no shared frame behind.  Every check
# counts; the last line is "cli_share: N passed, M failed" and the exit
# status is non-zero when anything failed.  Skips (exit 0) when the kernel
# lacks what memvisor needs.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
suite=cli_share
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported

# json_value PYTHON_EXPRESSION: print the expression over the JSON on stdin,
# or "?" (which no numeric test accepts) when there is none.
json_value() {
    python3 -c 'import json, sys
d = json.load(sys.stdin)
print(eval(sys.argv[1]))' "$1" 2>/dev/null || echo "?"
}

# counter DOMAIN KEY: one field of DOMAIN in `stats --json DOMAIN`.
counter() {
    timeout 60 "$cli_bin" stats --json "$1" 2>/dev/null |
        json_value "d['domains'][0]['$2']"
}

# share_counter KEY: one field of the host's sharing statistics.
share_counter() {
    timeout 60 "$cli_bin" share stats --json 2>/dev/null | json_value "d['share']['$1']"
}

# nominate DESCRIPTION DOMAIN GFN: nominate the page; its handle in $handle.
nominate() {
    check "$1" 0 --out '^[0-9]+$' -- "$cli_bin" share nominate "$2" "$3"
    handle=$(cat "$scratch/out")
}

# equal_writes DOMAIN SEED: create DOMAIN (16 MiB, one vCPU) and let its
# random writer write 2048 times over its first 64 pages.  The pattern of a
# page depends only on (seed, gfn, version) and one vCPU writes in an order
# fixed by the seed, so two domains given the same seed hold equal pages at
# equal gfns, and none of those 64 pages is left zero.
equal_writes() {
    check "create $1" 0 -- "$cli_bin" create "$1" --maxmem 16M --vcpus 1
    check "$1 writes its first 64 pages" 0 --out "finished, 2048 pages" -- \
        "$cli_bin" workload "$1" random --max-pages 2048 --working-set 256K --seed "$2"
}

# ---------------------------------------------------------------------------
# The tool on its own: help and usage errors need no daemon

check "share --help" 0 --out "^usage: memvisor share" -- "$cli_bin" share --help
check "share --help lists the scanner" 0 --out "^  scanner start " -- \
    "$cli_bin" share --help
for sub in nominate pages add-to-physmap unshare settle make hint exclude scan stats audit; do
    check "share $sub --help" 0 --out "^usage: memvisor share $sub" -- \
        "$cli_bin" share "$sub" --help
done
check "share scanner start --help" 0 --out "^usage: memvisor share scanner start" -- \
    "$cli_bin" share scanner start --help
check "share scanner stop --help" 0 --out "^usage: memvisor share scanner stop" -- \
    "$cli_bin" share scanner stop --help
check "clone --help" 0 --out "^usage: memvisor clone SRC_DOMAIN NEW_NAME" -- \
    "$cli_bin" clone --help
check "--help lists share and clone" 0 --out "^  share " -- "$cli_bin" --help
expect "--help lists clone" grep -q "^  clone " "$scratch/out"

check "share without a command" 2 --err "^memvisor: share: expects a command" -- \
    "$cli_bin" share
check "unknown share command" 2 --err "^memvisor: share: unknown command 'frob'" -- \
    "$cli_bin" share frob
check "scanner without start or stop" 2 --err "^memvisor: share scanner: expects start or stop" -- \
    "$cli_bin" share scanner
check "unknown scanner command" 2 --err "^memvisor: share scanner: unknown command 'go'" -- \
    "$cli_bin" share scanner go
check "nominate without a gfn" 2 --err "^memvisor: share nominate: expects DOMAIN GFN" -- \
    "$cli_bin" share nominate web
check "non-numeric gfn" 2 --err "^memvisor: share nominate: GFN '12x' is not a number" -- \
    "$cli_bin" share nominate web 12x
check "bad hex gfn" 2 --err "GFN '0xZZ' is not a number" -- "$cli_bin" share nominate web 0xZZ
check "empty hex gfn" 2 --err "GFN '0x' is not a number" -- "$cli_bin" share nominate web 0x
check "negative gfn" 2 --err "^memvisor: share unshare: " -- "$cli_bin" share unshare web -1
check "gfn beyond 64 bits" 2 --err "too large for 64 bits" -- \
    "$cli_bin" share unshare web 0x10000000000000000
check "extra operand" 2 --err "unexpected argument '3'" -- "$cli_bin" share unshare web 1 3
check "pages without the client handle" 2 --err "^memvisor: share pages: expects SRC_DOMAIN" -- \
    "$cli_bin" share pages a 1 2 b 3
check "non-numeric handle" 2 --err "SRC_HANDLE 'h1' is not a number" -- \
    "$cli_bin" share pages a 1 h1 b 3 4
check "non-numeric client handle" 2 --err "CLIENT_HANDLE 'h2' is not a number" -- \
    "$cli_bin" share pages a 1 2 b 3 h2
check "add-to-physmap without the client gfn" 2 --err "expects SRC_DOMAIN" -- \
    "$cli_bin" share add-to-physmap a 1 2 b
check "non-numeric count" 2 --err "COUNT 'lots' is not a number" -- \
    "$cli_bin" share make web 0 lots
check "hint without a key" 2 --err "expects DOMAIN GFN COUNT KEY" -- \
    "$cli_bin" share hint web 0 4
check "non-numeric key" 2 --err "KEY 'k' is not a number" -- "$cli_bin" share hint web 0 4 k
check "exclude without a count" 2 --err "expects DOMAIN GFN COUNT" -- \
    "$cli_bin" share exclude web 0
check "scan --pages needs a number" 2 --err "^memvisor: share scan: --pages: 'x'" -- \
    "$cli_bin" share scan --pages x
check "scanner --cpu needs a value" 2 --err "needs a value" -- \
    "$cli_bin" share scanner start --cpu
check "scanner stop takes no operand" 2 --err "unexpected argument" -- \
    "$cli_bin" share scanner stop now
check "settle without a domain" 2 --err "^memvisor: share settle: expects DOMAIN" -- \
    "$cli_bin" share settle
check "settle of two domains" 2 --err "^memvisor: share settle: unexpected argument 'b'" -- \
    "$cli_bin" share settle a b
check "clone without a name" 2 --err "^memvisor: clone: expects SRC_DOMAIN NEW_NAME" -- \
    "$cli_bin" clone web
check "share stats with no daemon" 1 --err "^memvisor: share stats: cannot reach memvisord" -- \
    "$cli_bin" --socket "$scratch/nobody.sock" share stats

# ---------------------------------------------------------------------------
# Clone: a paused domain's memory shared copy-on-write

# This daemon serves faults with one thread for all; cli_basic's in the
# default mode (one thread per CPU on a machine of a few CPUs).  Its
# background settler of kernel copies waits a minute between passes, so
# that `share settle` has copies left to settle.
# It copies the pages it shares out (--share-read copy) rather than read
# them where AUTO would measure which pays.
check "a bad --share-read" 2 --err "share-read: 'mapped' is not auto, copy or in-place" -- \
    "$daemon_bin" --share-read mapped
start_daemon "$MEMVISOR_SOCKET" "$scratch/daemon.log" --fault-mode shared \
    --cow-settle-ms 60000 --share-read copy || exit 1
main_pid=$daemon_pid
check "daemon started its fault threads shared" 0 -- \
    grep -q "1 fault threads, kernel" "$scratch/daemon.log"

check "share stats on a fresh host" 0 -- "$cli_bin" share stats --json
json_check "nothing shared yet" \
    'd["share"]["saved_pages"] == 0 and d["share"]["shared_frames"] == 0 and
     not d["share"]["scanner_running"] and d["domains"] == []'
json_check "pages are copied out, as asked, nothing measured" \
    'd["share"]["read_mode"] == "copy" and d["share"]["read_in_place_ns"] == 0 and
     d["share"]["read_copy_ns"] == 0'
check "share stats says how pages are read" 0 --out "^pages read: copy$" -- \
    "$cli_bin" share stats

check "create base" 0 --out "^created domain 1 \(base\)" -- \
    "$cli_bin" create base --maxmem 64M --vcpus 2
check "base writes 8 MiB" 0 --out "finished" -- \
    "$cli_bin" workload base random --max-pages 4000 --working-set 8M --seed 11
base_populated=$(counter base populated_pages)
expect "base has populated pages ($base_populated)" test "$base_populated" -gt 0

check "clone of a running domain" 1 --err "^memvisor: clone: busy: .+" -- \
    "$cli_bin" clone base copy
check "pause base" 0 -- "$cli_bin" pause base
check "clone" 0 --out "^created domain [0-9]+ \(copy\), a clone of base$" -- \
    "$cli_bin" clone base copy
copy_id=$(sed -n 's/^created domain \([0-9]*\) .*/\1/p' "$scratch/out")
check "clone to a taken name" 1 --err "^memvisor: clone: already exists: .+" -- \
    "$cli_bin" clone base copy
check "clone to a name too long" 1 --err "^memvisor: clone: Invalid argument: .+" -- \
    "$cli_bin" clone base "$(printf 'n%.0s' $(seq 80))"
check "clone of an unknown domain" 1 --err "^memvisor: clone: no such domain" -- \
    "$cli_bin" clone nosuch other

check "stats --json copy" 0 -- "$cli_bin" stats --json copy
json_check "the clone has the source's configuration and runs" \
    "d['domains'][0]['domid'] == $copy_id and d['domains'][0]['state'] == 'running' and
     d['domains'][0]['maxmem_pages'] == 16384 and d['domains'][0]['target_pages'] == 16384 and
     d['domains'][0]['vcpus'] == 2"
json_check "the clone shares every populated page of the source" \
    "d['domains'][0]['shared_pages'] == $base_populated and d['domains'][0]['cow_breaks'] == 0"
json_check "stats --json has the sharing counters" \
    'all(k in d["domains"][0] for k in ("shared_pages", "cow_breaks", "cow_takeovers",
         "cow_nocopy", "cow_claimable", "cow_shortfall", "excluded_pages"))'
check "stats --json base" 0 -- "$cli_bin" stats --json base
json_check "the source stays paused and maps the same frames" \
    "d['domains'][0]['state'] == 'paused' and d['domains'][0]['shared_pages'] == $base_populated"
check "share stats --json after the clone" 0 -- "$cli_bin" share stats --json
json_check "the clone saved one page per populated page of the source" \
    "d['share']['saved_pages'] == $base_populated and
     d['share']['shared_frames'] == $base_populated and
     d['share']['shared_refs'] == 2 * $base_populated"
check "share stats" 0 --out "saving $base_populated pages" -- "$cli_bin" share stats
expect "share stats shows the clone's shared pages" \
    grep -Eq "^ +$copy_id +copy +$base_populated +0 " "$scratch/out"
check "share stats for one domain" 0 --out "^ +$copy_id +copy " -- "$cli_bin" share stats copy
expect "share stats for one domain shows only it" test "$(grep -c ' base ' "$scratch/out")" -eq 0
check "list shows shared memory" 0 --out "^ +ID +NAME +STATE +VCPUS +MAXMEM +TARGET +POPULATED +SHARED +COW$" -- \
    "$cli_bin" list
expect "list: the clone's line ends with its shared memory and copy-on-write mode" \
    grep -Eq "^ +$copy_id +copy +running +2 +64 MiB +64 MiB .* [1-9][0-9.]* [KMG]iB +trap$" "$scratch/out"
check "stats shows shared memory and CoW breaks" 0 --out "SHARED +COWBREAKS +METADATA$" -- \
    "$cli_bin" stats
expect "stats: the clone's line ends with its sharing counters and metadata" \
    grep -Eq "^ +$copy_id +copy +running .* [1-9][0-9.]* [KMG]iB +0 +[0-9.]+ (B|[KMG]iB)$" "$scratch/out"
check "share audit after the clone" 0 --out "^share audit: every sharing invariant holds$" -- \
    "$cli_bin" share audit
check "host audit after the clone" 0 -- "$cli_bin" audit
check "verify the paused source" 0 -- "$cli_bin" verify base

check "sharing a paused domain's page" 1 --err "^memvisor: share nominate: busy: .+" -- \
    "$cli_bin" share nominate base 0

# The clone inherits the source's content oracle, and with it its seed.
check "the clone starts with the source's content" 0 -- "$cli_bin" verify copy
check "the clone zeroes all of its memory" 0 --out "finished, 16384 pages" -- \
    "$cli_bin" workload copy scrub --seed 11
check "stats --json copy after its writes" 0 -- "$cli_bin" stats --json copy
json_check "every write to a shared page broke it" \
    "d['domains'][0]['shared_pages'] == 0 and d['domains'][0]['cow_breaks'] >= $base_populated"
check "the clone holds what it wrote" 0 -- "$cli_bin" verify copy
check "the source never saw the clone's writes" 0 -- "$cli_bin" verify base
check "share audit after CoW breaks" 0 -- "$cli_bin" share audit
check "share stats --json after CoW breaks" 0 -- "$cli_bin" share stats --json
json_check "host-wide CoW breaks counted" "d['share']['cow_breaks'] >= $base_populated"
check "unpause base" 0 -- "$cli_bin" unpause base

# ---------------------------------------------------------------------------
# Clone with the kernel copying on write, settled by `share settle`

check "create kbase copying in the kernel" 0 -- \
    "$cli_bin" create kbase --maxmem 64M --vcpus 2 --cow-mode kernel
check "kbase writes 8 MiB" 0 --out "finished" -- \
    "$cli_bin" workload kbase random --max-pages 4000 --working-set 8M --seed 13
kbase_populated=$(counter kbase populated_pages)
expect "kbase has populated pages ($kbase_populated)" test "$kbase_populated" -gt 0
check "pause kbase" 0 -- "$cli_bin" pause kbase
check "clone kbase" 0 --out "^created domain [0-9]+ \(kcopy\), a clone of kbase$" -- \
    "$cli_bin" clone kbase kcopy
check "stats --json kcopy" 0 -- "$cli_bin" stats --json kcopy
json_check "the clone copies in the kernel too, and nothing was copied yet" \
    "d['domains'][0]['cow_mode'] == 'kernel' and d['domains'][0]['cow_kernel_copies'] == 0 and
     d['domains'][0]['shared_pages'] == $kbase_populated and
     d['domains'][0]['cow_trapping'] is False"
check "stats --json kbase" 0 -- "$cli_bin" stats --json kbase
json_check "the paused source's shared pages trap" \
    "d['domains'][0]['cow_mode'] == 'kernel' and d['domains'][0]['cow_trapping'] is True"
check "kcopy zeroes all of its memory" 0 --out "finished, 16384 pages" -- \
    "$cli_bin" workload kcopy scrub --seed 13
check "settle kcopy" 0 --out "^settle: [0-9]+ copies the kernel made moved into kcopy's own memory$" -- \
    "$cli_bin" share settle kcopy
check "stats --json kcopy after its writes" 0 -- "$cli_bin" stats --json kcopy
json_check "every break of the clone was a kernel copy, settled" \
    "d['domains'][0]['shared_pages'] == 0 and
     d['domains'][0]['cow_breaks'] >= $kbase_populated and
     d['domains'][0]['cow_kernel_copies'] == d['domains'][0]['cow_breaks']"
kcopies=$(counter kcopy cow_kernel_copies)
check "settle kcopy again: nothing left" 0 --out "^settle: 0 copies " -- \
    "$cli_bin" share settle kcopy
check "settle a trap domain" 0 --out "^settle: 0 copies .* base's own memory$" -- \
    "$cli_bin" share settle base
check "settle an unknown domain" 1 --err "^memvisor: share settle: no such domain" -- \
    "$cli_bin" share settle nosuch
check "share stats --json after settling" 0 -- "$cli_bin" share stats --json
json_check "host-wide kernel copies and settle passes counted" \
    "d['share']['cow_kernel_copies'] >= $kcopies and d['share']['cow_settles'] >= 1 and
     d['share']['cow_settle_ns'] > 0 and d['share']['cow_settle_waiting'] == 0 and
     d['share']['cow_kernel_copies'] <= d['share']['cow_breaks']"
check "share stats tells the kernel copies" 0 --out "^kernel copies: [1-9][0-9]* settled " -- \
    "$cli_bin" share stats
expect "share stats: kcopy copies in the kernel and does not trap" \
    grep -Eq "^ +[0-9]+ +kcopy .* kernel +$kcopies +no$" "$scratch/out"
expect "share stats: the paused kbase traps" grep -Eq "^ +[0-9]+ +kbase .* kernel +0 +yes$" "$scratch/out"
expect "share stats: base copies on a trap" grep -Eq "^ +1 +base .* trap +0 +-$" "$scratch/out"
check "kcopy holds what it wrote" 0 -- "$cli_bin" verify kcopy
check "kbase never saw kcopy's writes" 0 -- "$cli_bin" verify kbase
check "share audit after kernel copies" 0 -- "$cli_bin" share audit
check "unpause kbase" 0 -- "$cli_bin" unpause kbase

# ---------------------------------------------------------------------------
# nominate and share-pages between two domains with equal pages

equal_writes left 5
equal_writes right 5
left_id=$(counter left domid)

saved=$(share_counter saved_pages)
nominate "nominate left 5" left 5
h_left5=$handle
nominate "nominate left 5 by id" "$left_id" 0x5
expect "nominating twice gives the same handle" test "$handle" = "$h_left5"
nominate "nominate right 5 (hex gfn)" right 0x5
h_right5=$handle
expect "a nominated page gets a frame of its own" test "$h_right5" != "$h_left5"
expect "nominating saves nothing" test "$(share_counter saved_pages)" -eq "$saved"
check "share pages" 0 -- "$cli_bin" share pages left 5 "$h_left5" right 5 "$h_right5"
expect "share pages saved one page" test "$(share_counter saved_pages)" -eq $((saved + 1))
expect "right maps a shared frame" test "$(counter right shared_pages)" -eq 1

nominate "nominate left 6" left 6
h_left6=$handle
nominate "nominate right 6" right 6
h_right6=$handle
check "unshare left 6" 0 -- "$cli_bin" share unshare left 6
check "share pages with a stale handle" 1 --err "^memvisor: share pages: Stale file handle: .+" -- \
    "$cli_bin" share pages left 6 "$h_left6" right 6 "$h_right6"
nominate "nominate left 8" left 8
h_left8=$handle
nominate "nominate right 8" right 8
check "share pages with a handle never issued" 1 --err "^memvisor: share pages: Invalid argument: .+" -- \
    "$cli_bin" share pages left 8 "$h_left8" right 8 0xdeadbeefdeadbeef
nominate "nominate left 9" left 9
h_left9=$handle
nominate "nominate right 10" right 10
h_right10=$handle
saved=$(share_counter saved_pages)
check "share pages whose bytes differ" 1 --err "^memvisor: share pages: Invalid argument: .+" -- \
    "$cli_bin" share pages left 9 "$h_left9" right 10 "$h_right10"
expect "a refused share changes nothing" test "$(share_counter saved_pages)" -eq "$saved"
check "share pages with an unknown client" 1 --err "^memvisor: share pages: no such domain" -- \
    "$cli_bin" share pages left 9 "$h_left9" nosuch 10 "$h_right10"

# add-to-physmap puts left's page 5 where blank's guest never wrote (a PoD
# entry), which blank's content oracle must then notice at that gfn alone.
check "create blank" 0 -- "$cli_bin" create blank --maxmem 16M --vcpus 1
check "add-to-physmap at a PoD gfn" 0 -- \
    "$cli_bin" share add-to-physmap left 5 "$h_left5" blank 0x800
expect "add-to-physmap saved one more page" test "$(share_counter saved_pages)" -eq $((saved + 1))
expect "blank maps one shared gfn" test "$(counter blank shared_pages)" -eq 1
check "the mapped page holds left's bytes" 1 \
    --err "^memvisor: verify: 1 pages of blank differ from the content oracle, the first at gfn 0x800$" -- \
    "$cli_bin" verify blank
check "add-to-physmap at a populated gfn" 1 --err "^memvisor: share add-to-physmap: already exists: .+" -- \
    "$cli_bin" share add-to-physmap left 5 "$h_left5" right 20
check "add-to-physmap at a shared gfn" 1 --err "^memvisor: share add-to-physmap: already exists: .+" -- \
    "$cli_bin" share add-to-physmap left 5 "$h_left5" blank 0x800
check "unshare the mapped gfn" 0 -- "$cli_bin" share unshare blank 0x800
expect "unshare counts a CoW break" test "$(counter blank cow_breaks)" -eq 1
expect "unshare took the shared gfn away" test "$(counter blank shared_pages)" -eq 0
check "the private copy keeps left's bytes" 1 --err "the first at gfn 0x800$" -- \
    "$cli_bin" verify blank
check "destroy blank" 0 -- "$cli_bin" destroy blank
check "unshare a page that is not shared" 1 --err "^memvisor: share unshare: Invalid argument: .+" -- \
    "$cli_bin" share unshare left 30
check "nominate a PoD gfn" 1 --err "^memvisor: share nominate: Invalid argument: .+" -- \
    "$cli_bin" share nominate left 3000
# gfn 100 was populated (with its 2 MiB block) but never written: whatever
# nominate makes of an all-zero page, a refusal must change nothing.
populated=$(counter left populated_pages)
timeout 60 "$cli_bin" share nominate left 100 >"$scratch/out" 2>"$scratch/err"
status=$?
if [ "$status" -eq 0 ]; then
    expect "nominate a zero page: a handle" grep -Eq '^[0-9]+$' "$scratch/out"
else
    expect "nominate a zero page: refused ($(cat "$scratch/err")) and nothing changed" \
        test "$status" -eq 1 -a "$(counter left populated_pages)" -eq "$populated"
fi
check "nominate a gfn past maxmem" 1 --err "^memvisor: share nominate: Invalid argument: .+" -- \
    "$cli_bin" share nominate left 0x100000
check "nominate in an unknown domain" 1 \
    --err "^memvisor: share nominate: no such domain: no domain named 'nosuch'" -- \
    "$cli_bin" share nominate nosuch 1
check "unshare in an unknown domain id" 1 --err "^memvisor: share unshare: no such domain" -- \
    "$cli_bin" share unshare 999 1
check "share audit after nominate and share" 0 -- "$cli_bin" share audit
check "verify left" 0 -- "$cli_bin" verify left
check "verify right" 0 -- "$cli_bin" verify right

# ---------------------------------------------------------------------------
# make_ro_and_share through the content index

check "make left 0 64" 0 -- "$cli_bin" share make --json left 0 64
json_check "left: an outcome for each of 64 gfns, nothing to match yet" \
    'd["matched"] + d["inserted"] + d["zero"] + d["already"] + d["skipped"] == 64 and
     d["shared"] == d["matched"] and d["inserted"] >= 55'
check "make right 0 64" 0 -- "$cli_bin" share make --json right 0 64
json_check "right: its pages match left's in the index" \
    'd["matched"] + d["inserted"] + d["zero"] + d["already"] + d["skipped"] == 64 and
     d["shared"] == d["matched"] and d["matched"] >= 55'
right_shared=$(counter right shared_pages)
expect "right maps shared frames for its matches ($right_shared)" test "$right_shared" -ge 56
zero=$(share_counter zero_reclaimed)
check "make over zero pages" 0 --out "^make: 16 gfns: 0 matched and shared, 0 inserted into the index, 16 zero" -- \
    "$cli_bin" share make left 64 16
expect "zero pages returned to the host" test "$(share_counter zero_reclaimed)" -eq $((zero + 16))
check "make of one gfn by default" 0 --out "^make: 1 gfns: .* 1 already shared" -- \
    "$cli_bin" share make left 0x5
check "make past maxmem" 1 --err "^memvisor: share make: Invalid argument: .+" -- \
    "$cli_bin" share make left 4090 16
check "verify left after make" 0 -- "$cli_bin" verify left
check "verify right after make" 0 -- "$cli_bin" verify right
check "share audit after make" 0 -- "$cli_bin" share audit

# ---------------------------------------------------------------------------
# Exclusion

check "exclude right 32 16" 0 -- "$cli_bin" share exclude right 32 16
check "stats --json right after exclude" 0 -- "$cli_bin" stats --json right
json_check "16 pages excluded, unshared first" \
    "d['domains'][0]['excluded_pages'] == 16 and
     d['domains'][0]['shared_pages'] == $right_shared - 16"
check "nominate an excluded page" 1 --err "^memvisor: share nominate: Operation not permitted: .+" -- \
    "$cli_bin" share nominate right 40
check "exclude past maxmem" 1 --err "^memvisor: share exclude: Invalid argument: .+" -- \
    "$cli_bin" share exclude right 4090 16
check "verify right after exclude" 0 -- "$cli_bin" verify right
check "share audit after exclude" 0 -- "$cli_bin" share audit

# ---------------------------------------------------------------------------
# Hints and scans

check "hint with the reserved key 0" 1 --err "^memvisor: share hint: Invalid argument: .+" -- \
    "$cli_bin" share hint left 0 64 0
equal_writes east 23
equal_writes west 23
check "hint east" 0 -- "$cli_bin" share hint east 0 64 0xb10c
check "hint west" 0 -- "$cli_bin" share hint west 0 64 0xb10c
expect "hints pending" test "$(share_counter hints_pending)" -ge 1
check "scan" 0 --out "^scan: hashed [0-9]+ pages in " -- "$cli_bin" share scan
expect "the scan took the hints" test "$(share_counter hints_pending)" -eq 0
expect "hinted pages processed" test "$(share_counter hinted_pages)" -ge 64
expect "east shares its hinted pages ($(counter east shared_pages))" \
    test "$(counter east shared_pages)" -ge 56
expect "west shares its hinted pages ($(counter west shared_pages))" \
    test "$(counter west shared_pages)" -ge 56

equal_writes north 31
equal_writes south 31
for round in 1 2 3; do
    check "blind scan, pass $round" 0 -- "$cli_bin" share scan --json
    [ "$(counter south shared_pages)" -gt 0 ] 2>/dev/null && break
done
json_check "the scan hashed pages" 'd["scan"]["pages_scanned"] > 0'
json_check "the scan says where its time went" \
    'd["scan"]["read_ns"] > 0 and d["scan"]["index_ns"] > 0 and d["scan"]["read_ns"] + d["scan"]["zero_ns"] + d["scan"]["index_ns"] + d["scan"]["share_ns"] <= d["scan"]["elapsed_ns"]'
check "scan, where the time went" 0 \
    --out "^  time: reading pages [0-9.]+ s, freeing zero pages [0-9.]+ s, index lookups [0-9.]+ s, sharing [0-9.]+ s$" \
    -- "$cli_bin" share scan
expect "blind scans share north's pages ($(counter north shared_pages))" \
    test "$(counter north shared_pages)" -ge 32
expect "blind scans share south's pages ($(counter south shared_pages))" \
    test "$(counter south shared_pages)" -ge 32
check "scan of at most 10 pages" 0 -- "$cli_bin" share scan --pages 10 --json
json_check "the scan kept to --pages" 'd["scan"]["pages_scanned"] <= 10'
check "share audit after scans" 0 -- "$cli_bin" share audit

# ---------------------------------------------------------------------------
# The background scanner

# scan_json KEY: that counter of `share stats --json`.
scan_json() {
    "$cli_bin" share stats --json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["share"][sys.argv[1]])' "$1"
}
passes_before=$(scan_json scan_passes)
check "scanner start" 0 -- "$cli_bin" share scanner start --rate 50000 --cpu 20 --max-vmas 30000
check "scanner start twice" 1 --err "^memvisor: share scanner start: already in that state" -- \
    "$cli_bin" share scanner start
check "share stats while scanning" 0 --out "^scanner: running" -- "$cli_bin" share stats
# Let it work: wait (bounded) for a pass of its own, rather than sleep.
scanned=false
for _ in $(seq 600); do
    if [ "$(scan_json scan_passes)" -gt "$passes_before" ] 2>/dev/null; then
        scanned=true
        break
    fi
    sleep 0.1
done
expect "the scanner completes a pass" $scanned
check "scanner stop" 0 -- "$cli_bin" share scanner stop
check "share stats --json after stop" 0 -- "$cli_bin" share stats --json
json_check "the scanner stopped" 'not d["share"]["scanner_running"]'
check "scanner with --cpu above 100" 1 --err "^memvisor: share scanner start: Invalid argument: .+" -- \
    "$cli_bin" share scanner start --cpu 150
"$cli_bin" share scanner stop >/dev/null 2>&1 # in case it started anyway

# ---------------------------------------------------------------------------
# Everything still holds; destroying the domains frees every shared frame

check "share audit at the end" 0 -- "$cli_bin" share audit
check "host audit at the end" 0 -- "$cli_bin" audit
for dom in base copy kbase kcopy left right east west north south; do
    check "verify $dom at the end" 0 -- "$cli_bin" verify "$dom"
done
check "destroy the clone" 0 -- "$cli_bin" destroy copy
check "share audit after destroying the clone" 0 -- "$cli_bin" share audit
for dom in base kbase kcopy left right east west north south; do
    check "destroy $dom" 0 -- "$cli_bin" destroy "$dom"
done
check "share stats --json with no domain left" 0 -- "$cli_bin" share stats --json
json_check "no shared frame outlives its domains" \
    'd["share"]["shared_frames"] == 0 and d["share"]["shared_refs"] == 0 and
     d["share"]["saved_pages"] == 0 and d["domains"] == []'
check "share audit with no domain left" 0 -- "$cli_bin" share audit
check "host audit with no domain left" 0 -- "$cli_bin" audit

check "shutdown" 0 -- "$cli_bin" shutdown
wait_exit "$main_pid"
expect "shutdown exits 0" test "$exit_status" -eq 0

harness_finish
