#!/usr/bin/env bash
# cli_tmem.sh - transcendent memory and host paging through memvisord and
# the tool.
#
# Usage: bash tests/cli_tmem.sh PATH/TO/memvisord PATH/TO/memvisor
#
# Checks the usage errors of `memvisor tmem` and `memvisor page-out` without
# a daemon, then starts one on a private socket and drives tmem end to end:
# private ephemeral and persistent pools, exclusive gets, replacing puts,
# flushes, a shared pool joined by UUID only once authorised, foreign and
# unknown pools, wrong sizes, over-quota puts, `tmem list` (text and JSON),
# relinquishing frames, host paging of a domain whose guest then reads its
# pages back (content oracle), destroying domains with pages in pools, and
# a daemon with --auto-paging running a guest that writes twice its budget.
# The audit must hold throughout.  The last line is
# "cli_tmem: N passed, M failed"; skips (exit 0) when the kernel lacks what
# memvisor needs.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
suite=cli_tmem
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported

# ---------------------------------------------------------------------------
# The tool on its own

check "tmem --help" 0 --out "^usage: memvisor tmem" -- "$cli_bin" tmem --help
for sub in list authorize new-pool destroy-pool put get flush relinquish relinquish-block; do
    check "tmem $sub --help" 0 --out "^usage: memvisor tmem $sub" -- \
        "$cli_bin" tmem "$sub" --help
done
check "help tmem put names its arguments" 0 --out "seed" -- "$cli_bin" help tmem put
check "page-out --help" 0 --out "^usage: memvisor page-out" -- "$cli_bin" page-out --help
check "--help lists tmem" 0 --out "^  tmem " -- "$cli_bin" --help
expect "--help lists page-out" grep -q "^  page-out " "$scratch/out"
check "tmem without a command" 2 --err "^memvisor: tmem: expects a command" -- "$cli_bin" tmem
check "unknown tmem command" 2 --err "^memvisor: tmem: unknown command 'frob'" -- \
    "$cli_bin" tmem frob
check "put without an index" 2 --err "expects DOMAIN POOL OID INDEX" -- \
    "$cli_bin" tmem put web 0 1
check "non-numeric pool" 2 --err "POOL 'p' is not a number" -- "$cli_bin" tmem put web p 1 0
check "non-numeric index" 2 --err "INDEX 'i' is not a number" -- "$cli_bin" tmem get web 0 1 i
check "page-out needs a domain" 2 --err "^memvisor: page-out: expects DOMAIN" -- \
    "$cli_bin" page-out
check "tmem list with no daemon" 1 --err "cannot reach memvisord" -- \
    "$cli_bin" --socket "$scratch/nobody.sock" tmem list

# ---------------------------------------------------------------------------
# A daemon

start_daemon "$MEMVISOR_SOCKET" "$scratch/daemon.log" --budget 256M || exit 1
check "create a" 0 -- "$cli_bin" create a --maxmem 32M --target 32M --vcpus 1
check "create b" 0 -- "$cli_bin" create b --maxmem 32M --target 32M --vcpus 1

check "a: ephemeral pool" 0 --out '^[0-9]+$' -- "$cli_bin" tmem new-pool a ephemeral
eph=$(cat "$scratch/out")
check "a: persistent pool, zstd, dedup" 0 --out '^[0-9]+$' -- \
    "$cli_bin" tmem new-pool a persistent --codec zstd --dedup on
per=$(cat "$scratch/out")
check "unknown pool kind" 1 --err "pool kind" -- "$cli_bin" tmem new-pool a volatile

for i in 0 1 2 3; do
    check "put $i (ephemeral)" 0 --out '^stored$' -- "$cli_bin" tmem put a "$eph" 7 "$i" --seed "$i"
    check "put $i (persistent)" 0 --out '^stored$' -- \
        "$cli_bin" tmem put a "$per" 1:2:3 "$i" --seed $((i + 100))
done
check "get from the ephemeral pool" 0 --out '^found, matches$' -- \
    "$cli_bin" tmem get a "$eph" 7 1 --seed 1
check "a private ephemeral get is exclusive" 0 --out '^missing$' -- \
    "$cli_bin" tmem get a "$eph" 7 1
check "persistent get keeps the page" 0 --out '^found, matches$' -- \
    "$cli_bin" tmem get a "$per" 1:2:3 2 --seed 102
check "... still there" 0 --out '^found, matches$' -- \
    "$cli_bin" tmem get a "$per" 1:2:3 2 --seed 102
check "a wrong seed is a mismatch" 1 --out 'DIFFERS' -- \
    "$cli_bin" tmem get a "$per" 1:2:3 2 --seed 5
check "a duplicate put replaces" 0 --out '^stored$' -- \
    "$cli_bin" tmem put a "$per" 1:2:3 2 --seed 9
check "... the new page" 0 --out '^found, matches$' -- \
    "$cli_bin" tmem get a "$per" 1:2:3 2 --seed 9
check "flush one page" 0 --out '^1 pages flushed$' -- "$cli_bin" tmem flush a "$per" 1:2:3 0
check "flush the object" 0 --out '^3 pages flushed$' -- "$cli_bin" tmem flush a "$per" 1:2:3

# Bad input: clear errors.
check "b cannot use a's pool" 1 --err "belongs to another domain" -- \
    "$cli_bin" tmem put b "$per" 1 0 --seed 1
check "unknown pool" 1 --err "does not exist" -- "$cli_bin" tmem get a 999 1 0
check "a wrong size" 1 --err "one page of 4096 bytes" -- \
    "$cli_bin" tmem put a "$per" 1 0 --seed 1 --size 100
check "a bad object id" 1 --err "object" -- "$cli_bin" tmem put a "$per" x:1 0 --seed 1
check "put without --seed" 1 --err "seed" -- "$cli_bin" tmem put a "$per" 1 0
check "unknown domain" 1 -- "$cli_bin" tmem new-pool nobody ephemeral

# Shared pools: by UUID, authorised domains only.
uuid=00112233-4455-6677-8899-aabbccddeeff
check "not authorised yet" 1 --err "not authorised" -- \
    "$cli_bin" tmem new-pool a persistent "$uuid"
check "authorise a" 0 -- "$cli_bin" tmem authorize a "$uuid"
check "authorise b" 0 -- "$cli_bin" tmem authorize b "$uuid"
check "a bad uuid" 1 --err "32 hex digits" -- "$cli_bin" tmem authorize b 1234
check "a creates the shared pool" 0 --out '^[0-9]+$' -- \
    "$cli_bin" tmem new-pool a persistent "$uuid"
shared=$(cat "$scratch/out")
check "b joins it" 0 --out "^$shared\$" -- "$cli_bin" tmem new-pool b persistent "$uuid"
check "a puts into it" 0 --out '^stored$' -- "$cli_bin" tmem put a "$shared" 5 5 --seed 55
check "b gets a's page" 0 --out '^found, matches$' -- \
    "$cli_bin" tmem get b "$shared" 5 5 --seed 55

check "tmem list" 0 --out "^tmem: " -- "$cli_bin" tmem list
expect "tmem list shows the pools" grep -q "persistent" "$scratch/out"
expect "tmem list tells pages by codec" grep -Eq "[0-9]+ lz4, [0-9]+ zstd, [0-9]+ raw, [0-9]+ markers" "$scratch/out"
expect "tmem list tells the freeable frames" grep -Eq "^tmem: [0-9]+ frames \\([0-9]+ used, [0-9]+ spare, [0-9]+ freeable\\)" "$scratch/out"
expect "tmem list tells how frames are kept" grep -Eq "^store: frames (mapped|copied) \\(chosen: a frame measured at [0-9]+ ns mapped, [0-9]+ ns copied\\)" "$scratch/out"
check "tmem list --json" 0 -- "$cli_bin" tmem list --json
json_check "the store chosen, with what it measured" \
    'd["tmem"]["store"] in ("mapped", "copied") and d["tmem"]["store_mapped_ns"] > 0 and d["tmem"]["store_copied_ns"] > 0'
json_check "read-aheads counted, serving no more gets than were found" \
    'd["tmem"]["store_read_aheads"] >= 0 and d["tmem"]["store_read_ahead_hits"] <= d["tmem"]["counts"]["found_gets"]'
chosen_store=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tmem"]["store"])' "$scratch/out")
json_check "pools and clients in JSON" \
    'len(d["pools"]) == 3 and any(c["domid"] == 1 or c["domid"] == 0 for c in d["clients"]) and d["tmem"]["counts"]["puts"] >= 10'
json_check "found gets counted" 'd["tmem"]["counts"]["found_gets"] >= 5'
json_check "freeable frames, no more than tmem holds" \
    'd["tmem"]["spare_frames"] <= d["tmem"]["freeable_frames"] <= d["tmem"]["frames"]'
json_check "pages counted by codec" \
    'all(p["counts"]["lz4_pages"] + p["counts"]["zstd_pages"] + p["counts"]["marker_pages"] <= p["counts"]["pages"] for p in d["pools"]) and d["tmem"]["counts"]["lz4_pages"] > 0'
check "tmem list of one domain" 0 -- "$cli_bin" tmem list --json b
json_check "b's view" 'len(d["clients"]) == 1 and len(d["pools"]) == 0'
check "audit" 0 -- "$cli_bin" audit

# Fill the ephemeral pool and give its frames back.
for i in $(seq 10 60); do
    "$cli_bin" tmem put a "$eph" 8 "$i" --seed "$i" >/dev/null 2>&1
done
check "relinquish" 0 --out 'frames given back' -- "$cli_bin" tmem relinquish --pages 4
check "room for a block" 0 --out '^room made for 2\^4 frames: [0-9]+ frames given back, [0-9]+ pages evicted$' -- \
    "$cli_bin" tmem relinquish-block --order 4
check "a block above the allocator's largest" 1 --err "order 99 is above" -- \
    "$cli_bin" tmem relinquish-block --order 99
check "a block with no order" 1 --err "missing argument 'order'" -- "$cli_bin" tmem relinquish-block
check "audit after relinquishing" 0 -- "$cli_bin" audit

# Host paging: the guest writes, is paged out, reads everything back.
check "create p" 0 -- "$cli_bin" create p --maxmem 32M --target 32M --vcpus 2
check "p writes compressible pages" 0 --out "finished" -- \
    "$cli_bin" workload p random --max-pages 4000 --working-set 8M --seed 9223372036854775809
check "page-out p" 0 --out '^[1-9][0-9]* pages paged out$' -- \
    "$cli_bin" page-out p --pages 1000
check "page-out --json" 0 -- "$cli_bin" page-out p --pages 10 --json
json_check "paged in JSON" '"paged" in d'
check "the pages are paged" 0 -- "$cli_bin" tmem list --json
json_check "host paging holds pages" 'd["tmem"]["paged_out"] > 0'
check "audit with pages paged out" 0 -- "$cli_bin" audit
check "the oracle reads them" 0 -- "$cli_bin" verify p
check "the guest reads them back" 0 --out "0 mismatches|finished" -- \
    "$cli_bin" workload p verify --seed 9223372036854775809
check "paged back in" 0 -- "$cli_bin" tmem list --json
json_check "page-ins counted" 'd["tmem"]["page_ins"] > 0'
check "page-out of an unknown domain" 1 -- "$cli_bin" page-out nobody --pages 1

# Domains destroyed with pages in pools: nothing left behind.
check "destroy a" 0 -- "$cli_bin" destroy a
check "a's pages left the shared pool with it" 0 --out '^missing$' -- \
    "$cli_bin" tmem get b "$shared" 5 5 --seed 55
check "destroy b" 0 -- "$cli_bin" destroy b
check "destroy p" 0 -- "$cli_bin" destroy p
check "tmem list --json" 0 -- "$cli_bin" tmem list --json
json_check "no pages; only the host's paging pool is left" \
    'd["tmem"]["counts"]["pages"] == 0 and all(p["owner"] == "host" for p in d["pools"])'
check "audit at the end" 0 -- "$cli_bin" audit

# The automatic mode: a budget far below what the guest writes; host paging
# keeps it running, and every page is still what it wrote.
check "a bad --auto-paging" 2 --err "auto-paging" -- "$daemon_bin" --auto-paging 50:60
auto_socket=$scratch/auto.sock
# ... with the store the default did not choose.
check "a bad --tmem-store" 2 --err "tmem-store" -- "$daemon_bin" --tmem-store paged
other_store=copied
[ "$chosen_store" = copied ] && other_store=mapped
start_daemon "$auto_socket" "$scratch/auto.log" --budget 24M --auto-paging 90:70 \
    --tmem-store "$other_store" || exit 1
check "auto: create q" 0 -- "$cli_bin" --socket "$auto_socket" create q --maxmem 64M \
    --target 64M --vcpus 2 --wait-timeout-ms 60000
check "auto: q writes 48 MiB into a 24 MiB budget" 0 --out "finished" -- \
    "$cli_bin" --socket "$auto_socket" workload q random --max-pages 30000 \
    --working-set 48M --seed 9223372036854775809
check "auto: the oracle holds" 0 -- "$cli_bin" --socket "$auto_socket" verify q
check "auto: tmem list" 0 -- "$cli_bin" --socket "$auto_socket" tmem list --json
json_check "auto: pages were paged out" 'd["tmem"]["page_outs"] > 0'
json_check "auto: frames kept as asked" \
    "d['tmem']['store'] == '$other_store' and d['tmem']['store_mapped_ns'] == 0"

check "auto: audit" 0 -- "$cli_bin" --socket "$auto_socket" audit

harness_finish
