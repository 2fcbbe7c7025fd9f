#!/usr/bin/env bash
# cli_basic.sh - memvisord and the memvisor tool end to end.
#
# Usage: bash tests/cli_basic.sh PATH/TO/memvisord PATH/TO/memvisor
#
# Starts a daemon on a private socket and drives it through the tool: domain
# life cycle, errors and their exit statuses, stats as JSON, pause, workloads,
# targets, ballooning, the content oracle, audits, dirty logging and the
# copy-on-write mode; a second daemon with --fault-path thread, whose
# faults all go to the fault threads.  Then talks to the socket directly (malformed and oversized requests, a client that hangs up
# mid-request, a client that stalls while others are served), checks that a
# second daemon refuses the socket, that a dead daemon's socket is replaced,
# and that SIGTERM and `shutdown` stop a daemon cleanly.  Every check counts;
# the last line is "cli_basic: N passed, M failed" and the exit status is
# non-zero when anything failed.  Skips (exit 0) when the kernel lacks what
# memvisor needs.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
suite=cli_basic
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported

# domain_json DOMAIN: `stats --json DOMAIN` into $scratch/out.
domain_json() {
    timeout 60 "$cli_bin" stats --json "$1" >"$scratch/out" 2>"$scratch/err"
}

# json_field PYTHON_EXPRESSION: the expression, over `d` (the JSON the last
# command printed), printed.
json_field() {
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))' "$scratch/out" "$1"
}

# ---------------------------------------------------------------------------
# The tool on its own

check "doctor" 0 --out "can run on this kernel" -- "$cli_bin" doctor
check "doctor --json" 0 -- "$cli_bin" doctor --json
json_check "doctor --json reports every feature" \
    'd["usable"] and len(d["features"]) == 6 and d["kernel_release"]'
check "--help" 0 --out "^usage: memvisor" -- "$cli_bin" --help
for cmd in doctor create destroy list pause unpause stats set-target balloon reclaim \
           workload workload-status workload-stop verify audit logdirty wss shutdown demo; do
    check "$cmd --help" 0 --out "^usage: memvisor $cmd" -- "$cli_bin" "$cmd" --help
done
check "unknown command" 2 --err "^memvisor: unknown command 'frobnicate'" -- \
    "$cli_bin" frobnicate
check "unknown option" 2 --err "^memvisor: list: unknown option '--bogus'" -- \
    "$cli_bin" list --bogus
check "grouped short options name the letter" 2 --err "^memvisor: list: unknown option '-x'" -- \
    "$cli_bin" list -xy
check "ambiguous option" 2 --err "'--max' is ambiguous: --maxmem, --max-pages" -- \
    "$cli_bin" create x --max 1G
check "flag given a value" 2 --err "option '--json' takes no value" -- \
    "$cli_bin" list --json=yes
check "daemon names a bad short option" 2 --err "^memvisord: unknown option '-x'" -- \
    "$daemon_bin" -xy
check "daemon explains a bad --fault-cpus" 1 --err "fault_cpus '3-1': range 3-1 runs backwards" -- \
    "$daemon_bin" --socket "$scratch/bad-cpus.sock" --fault-cpus 3-1
check "daemon names a bad --fault-mode" 2 --err "fault-mode: 'fast' is not auto, shared or per-cpu" -- \
    "$daemon_bin" --socket "$scratch/bad-mode.sock" --fault-mode fast
check "daemon names a bad --fault-path" 2 \
    --err "^memvisord: --fault-path: 'vcpu' is not auto or thread \(see memvisord --help\)$" -- \
    "$daemon_bin" --socket "$scratch/bad-path.sock" --fault-path vcpu
expect "the refused daemon left no socket" test ! -e "$scratch/bad-path.sock"
check "daemon --help tells --fault-path" 0 --out "^  --fault-path PATH " -- "$daemon_bin" --help
check "daemon names a bad --scrub-mode" 2 \
    --err "^memvisord: --scrub-mode: 'later' is not sync or background \(see memvisord --help\)$" -- \
    "$daemon_bin" --socket "$scratch/bad-scrub.sock" --scrub-mode later
check "daemon --help tells --scrub-mode" 0 --out "^  --scrub-mode MODE " -- "$daemon_bin" --help
for bad in 0 60001 soon; do
    check "daemon names a bad --cow-settle-ms $bad" 2 \
        --err "^memvisord: --cow-settle-ms: '$bad' is not a number in 1\.\.60000" -- \
        "$daemon_bin" --socket "$scratch/bad-settle.sock" --cow-settle-ms "$bad"
done
check "daemon --help tells --cow-settle-ms" 0 --out "^  --cow-settle-ms MS " -- "$daemon_bin" --help
check "create --help tells --cow-mode" 0 --out "^  --cow-mode MODE +who copies a shared page it writes" -- \
    "$cli_bin" create --help
check "bad copy-on-write mode" 2 \
    --err "^memvisor: create: --cow-mode: 'fork' is not trap or kernel" -- \
    "$cli_bin" create x --maxmem 64M --cow-mode fork
check "wss interval bound" 2 --err "--interval must be 1 to 86400 seconds" -- \
    "$cli_bin" wss web --interval 4294967296
check "bad size" 2 --err "^memvisor: create: --maxmem: '12Q' is not a size" -- \
    "$cli_bin" create x --maxmem 12Q
check "oversized size" 2 --err "too large" -- "$cli_bin" set-target x 99999999999P
check "missing operand" 2 --err "^memvisor: balloon: expects DOMAIN SIZE" -- \
    "$cli_bin" balloon web
check "no daemon" 1 --err "^memvisor: list: cannot reach memvisord" -- \
    "$cli_bin" --socket "$scratch/nobody.sock" list

# ---------------------------------------------------------------------------
# Domains through the daemon

# A full client table makes room by closing a client idle 500 ms (not the
# default 5 s), so that the test of it waits for a state, not a clock.
start_daemon "$MEMVISOR_SOCKET" "$scratch/daemon.log" --idle-evict-ms 500 || exit 1
main_pid=$daemon_pid

check "create web" 0 --out "^created domain 1 \(web\)" -- \
    "$cli_bin" create web --maxmem 256M --target 64M --vcpus 2
check "create db" 0 --out "^created domain 2 \(db\)" -- "$cli_bin" create db --maxmem 128M
check "duplicate name" 1 --err "^memvisor: create: .+: a domain named 'web' exists" -- \
    "$cli_bin" create web --maxmem 64M
check "target above maxmem" 1 --err "^memvisor: create: .+: target .* exceeds maxmem" -- \
    "$cli_bin" create big --maxmem 256M --target 512M
check "unknown domain" 1 --err "^memvisor: pause: no such domain: no domain named 'nosuch'" -- \
    "$cli_bin" pause nosuch
check "workload options need --workload" 2 -- "$cli_bin" create w --maxmem 64M --rate 5
check "list" 0 --out "^ +2 +db +running" -- "$cli_bin" list

check "stats --json" 0 -- "$cli_bin" stats --json
json_check "stats --json has the host and both domains" \
    'd["host"]["budget_pages"] > 0 and d["host"]["domains"] == 2 and
     [x["name"] for x in d["domains"]] == ["web", "db"]'
json_check "stats --json tells the fault service" \
    'd["host"]["fault_mode"] in ("shared", "per-cpu") and d["host"]["fault_threads"] >= 1 and
     d["host"]["fault_path"] == "auto" and d["host"]["scrub_mode"] == "sync" and
     d["host"]["scrub_pending_pages"] == 0'
json_check "stats --json has each counter" \
    'all(k in d["domains"][0] for k in ("state", "maxmem_pages", "target_pages",
         "populated_pages", "pod_pages", "ballooned_pages", "faults", "faults_in_thread",
         "fault_in_thread", "populated_2m",
         "populated_4k", "sweeps", "reclaimed_zero", "pod_waits", "crash_reason",
         "cow_kernel_copies", "workload"))
     and d["domains"][0]["maxmem_pages"] == 65536 and d["domains"][0]["target_pages"] == 16384'
check "stats table" 0 --out "^ +1 +web +running" -- "$cli_bin" stats
expect "stats tells the default fault path" \
    grep -Eq "^host: .* fault threads \((shared|per-cpu)\), fault path auto$" "$scratch/out"
check "stats by id" 0 --out "^ +2 +db " -- "$cli_bin" stats 2

# A target below 2 MiB: every fault populates a single page (a whole 2 MiB
# block is always a fault thread's), which the default path resolves in
# the faulting vCPU's thread.
check "create small" 0 -- "$cli_bin" create small --maxmem 64M --target 1M
check "writes to small" 0 --out "finished, 100 pages" -- \
    "$cli_bin" workload small random --max-pages 100
domain_json small
json_check "faults resolved in the vCPU's thread" \
    'd["domains"][0]["fault_in_thread"] is True and d["domains"][0]["populated_4k"] > 0 and
     0 < d["domains"][0]["faults_in_thread"] <= d["domains"][0]["faults"]'
# Nothing faults in small any more: the table must show the same figures.
faults=$(json_field 'd["domains"][0]["faults"]')
in_thread=$(json_field 'd["domains"][0]["faults_in_thread"]')
check "stats prints them beside the faults" 0 \
    --out "^ +[0-9]+ +small +running .* $faults +$in_thread +0 +$(json_field 'd["domains"][0]["populated_4k"]') " -- \
    "$cli_bin" stats small
expect "under IN-THREAD, after FAULTS" grep -Eq "^ +ID +NAME .* FAULTS +IN-THREAD +2M +4K " "$scratch/out"
check "destroy small" 0 -- "$cli_bin" destroy small

check "pause" 0 -- "$cli_bin" pause web
domain_json web
json_check "paused" 'd["domains"][0]["state"] == "paused"'
check "pause twice" 1 --err "already paused" -- "$cli_bin" pause web
check "unpause" 0 -- "$cli_bin" unpause web
domain_json web
json_check "running again" 'd["domains"][0]["state"] == "running"'

check "scrub to completion" 0 --out "finished, 65536 pages" -- "$cli_bin" workload web scrub
domain_json web
json_check "scrub stayed within target by sweeping zero pages" \
    'd["domains"][0]["populated_pages"] <= d["domains"][0]["target_pages"] and
     d["domains"][0]["sweeps"] > 0 and d["domains"][0]["reclaimed_zero"] > 0 and
     d["domains"][0]["workload"]["finished"]'

check "set-target" 0 -- "$cli_bin" set-target web 128M
domain_json web
json_check "target raised" 'd["domains"][0]["target_pages"] == 32768'
check "set-target above maxmem" 1 --err "exceeds maxmem" -- "$cli_bin" set-target web 1G
check "random writer" 0 --out "finished" -- \
    "$cli_bin" workload web random --duration-ms 500 --rate 2000 --working-set 16M
check "balloon" 0 --out "^balloon: moved 16384 pages" -- "$cli_bin" balloon web 192M
domain_json web
json_check "ballooned" 'd["domains"][0]["ballooned_pages"] == 16384'
check "verify" 0 --out "every page of web" -- "$cli_bin" verify web
check "verify by id" 0 -- "$cli_bin" verify 1
check "verify workload" 0 --out "finished" -- "$cli_bin" workload web verify
check "workload-status --json" 0 -- "$cli_bin" workload-status --json web
json_check "verify workload found no mismatch" \
    'd["workload"]["finished"] and d["workload"]["mismatches"] == 0'
check "detached random writer" 0 --out "started" -- \
    "$cli_bin" workload web random --rate 1000 --working-set 8M
check "workload-stop" 0 -- "$cli_bin" workload-stop web
check "reclaim" 0 --out "^reclaim: examined" -- "$cli_bin" reclaim db
check "audit" 0 --out "invariant" -- "$cli_bin" audit
check "audit one domain" 0 -- "$cli_bin" audit web

# Dirty logging and the working-set estimate
check "logdirty clean before enable" 1 --err "not logging dirty pages" -- \
    "$cli_bin" logdirty web clean
check "logdirty bad action" 2 --err "is not enable" -- "$cli_bin" logdirty web frob
check "create with a dirty-log mode" 0 -- \
    "$cli_bin" create logged --maxmem 64M --logdirty wp-sync
check "stats: a wp-sync domain leaves every fault to the fault threads" 0 \
    --out "^ +[0-9]+ +logged +running +.* 0 +- +0 +0 " -- "$cli_bin" stats logged
check "bad dirty-log mode" 2 --err "is not auto" -- \
    "$cli_bin" create bad --maxmem 64M --logdirty fast
check "logdirty enable" 0 --out "dirty log of logged: on, mechanism wp-sync" -- \
    "$cli_bin" logdirty logged enable
check "logdirty enable twice" 1 --err "already logging" -- "$cli_bin" logdirty logged enable
check "writes while logging" 0 --out "finished" -- \
    "$cli_bin" workload logged random --max-pages 300 --working-set 4M
check "logdirty clean --json" 0 -- "$cli_bin" logdirty --json logged clean
json_check "the written pages are reported" \
    'd["dirty_pages"] >= 256 and d["dirty_pages"] <= 1024 and d["logdirty"]["rounds"] == 1'
check "logdirty clean again: nothing new" 0 --out "^clean: 0 dirty pages" -- \
    "$cli_bin" logdirty logged clean
check "logdirty disable" 0 --out "off" -- "$cli_bin" logdirty logged disable
check "working-set writer" 0 --out "started" -- \
    "$cli_bin" workload logged random --rate 2000 --working-set 8M
check "wss --json" 0 -- "$cli_bin" wss logged --interval 1 --count 2 --json
expect "wss printed two intervals with pages written" python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sys.exit(0 if len(rows) == 2 and all(r["pages"] > 0 for r in rows) else 1)' "$scratch/out"
check "wss left logging off" 0 --out "dirty log of logged: off" -- \
    "$cli_bin" logdirty logged stats
check "stop the working-set writer" 0 -- "$cli_bin" workload-stop logged
check "verify after logging" 0 -- "$cli_bin" verify logged
check "destroy logged" 0 -- "$cli_bin" destroy logged

# Who copies a shared page on a write
check "create with the kernel copy-on-write mode" 0 --out "^created domain [0-9]+ \(kcow\)" -- \
    "$cli_bin" create kcow --maxmem 64M --cow-mode kernel
domain_json kcow
json_check "its info tells the kernel mode, no copy and no trap" \
    'd["domains"][0]["cow_mode"] == "kernel" and d["domains"][0]["cow_kernel_copies"] == 0 and
     d["domains"][0]["cow_trapping"] is False'
check "list tells each domain's copy-on-write mode" 0 --out "^ +[0-9]+ +kcow +running .* kernel$" -- \
    "$cli_bin" list
expect "list: web copies on a trap" grep -Eq "^ +1 +web +running .* trap$" "$scratch/out"
domain_json web
json_check "a domain created without --cow-mode traps" \
    'd["domains"][0]["cow_mode"] == "trap" and d["domains"][0]["cow_trapping"] is False'
check "pause kcow" 0 -- "$cli_bin" pause kcow
domain_json kcow
json_check "a paused kernel-mode domain traps" 'd["domains"][0]["cow_trapping"] is True'
check "unpause kcow" 0 -- "$cli_bin" unpause kcow
domain_json kcow
json_check "and stops trapping when it runs again" 'd["domains"][0]["cow_trapping"] is False'
check "create with the trap copy-on-write mode" 0 -- \
    "$cli_bin" create tcow --maxmem 64M --cow-mode trap
domain_json tcow
json_check "its info tells the trap mode" 'd["domains"][0]["cow_mode"] == "trap"'
check "destroy kcow" 0 -- "$cli_bin" destroy kcow
check "destroy tcow" 0 -- "$cli_bin" destroy tcow

# ---------------------------------------------------------------------------
# The socket spoken to directly

check "malformed and oversized requests" 0 -- python3 - "$MEMVISOR_SOCKET" <<'EOF'
import json, socket, sys

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sys.argv[1])
    return s, s.makefile("rb")

def ask(s, f, raw):
    s.sendall(raw)
    return json.loads(f.readline())

def expect_error(reply, errno, words):
    assert reply["ok"] is False and reply["errno"] == errno, reply
    assert words in reply["detail"], reply

s, f = connect()
expect_error(ask(s, f, b"this is not json\n"), 22, "malformed JSON")
expect_error(ask(s, f, b"[1, 2]\n"), 22, "must be a JSON object")
expect_error(ask(s, f, b'{"cmd": "nope"}\n'), 22, "unknown command 'nope'")
expect_error(ask(s, f, b'{"nocmd": 1}\n'), 22, "missing argument 'cmd'")
expect_error(ask(s, f, b'{"cmd": "create", "name": 7, "maxmem": 4096}\n'), 22,
             "argument 'name' must be a string")
expect_error(ask(s, f, b'{"cmd": "set-target", "domain": "web", "targte": 1}\n'), 22,
             "unknown argument 'targte'")
expect_error(ask(s, f, b'{"cmd": "workload-status", "domain": "web", "wait_ms": 60000}\n'),
             22, "wait_ms")
expect_error(ask(s, f, b'{"cmd": "balloon", "domain": "web", "size": "lots"}\n'), 22,
             "is not a size")
expect_error(ask(s, f, b'{"cmd": "create", "name": "c", "maxmem": 4096, "cow_mode": "fork"}\n'),
             22, "unknown copy-on-write mode 'fork' (trap or kernel)")
expect_error(ask(s, f, b'{"cmd": "create", "name": "c", "maxmem": 4096, "cow_mode": 1}\n'), 22,
             "argument 'cow_mode' must be a string")
expect_error(ask(s, f, b'{"cmd": "share-settle"}\n'), 22, "missing argument 'domain'")
reply = ask(s, f, b'{"cmd": "share-settle", "domain": "web"}\n')
assert reply["ok"] and reply["settled"] == 0, reply
expect_error(ask(s, f, b'{"cmd": "list"' + b" " * 70000 + b"}\n"), 90, "longer than")
reply = ask(s, f, b'{"cmd": "list"}\n')
assert reply["ok"] and len(reply["domains"]) == 2, reply
# Two requests in one write are answered in order.
s.sendall(b'{"cmd": "stats", "domain": "db"}\n{"cmd": "list"}\n')
assert "host" in json.loads(f.readline())
assert "host" not in json.loads(f.readline())
s.close()
EOF
check "daemon answers after bad requests" 0 -- "$cli_bin" list

# Every slot held by a silent connection: one idle for --idle-evict-ms makes
# room.  Each state is polled for, with a deadline, rather than slept for.
check "silent connections do not shut others out" 0 -- python3 - "$MEMVISOR_SOCKET" "$cli_bin" <<'EOF'
import socket, subprocess, sys, time

def list_until(wanted, what):
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run([sys.argv[2], "list"], capture_output=True, text=True)
        if wanted(r):
            return r
        assert time.monotonic() < deadline, (what, r.returncode, r.stderr)
        time.sleep(0.05)

held = []
for i in range(128):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
# Once the daemon has taken all 128, a new client is refused...
start = time.monotonic()
list_until(lambda r: r.returncode == 1 and "maximum of clients" in r.stderr,
           "never refused with every slot taken")
# ... until one of them has been idle long enough to make room.
list_until(lambda r: r.returncode == 0, "no idle client made room")
for s in held:
    s.close()
EOF

# One client's pipelined requests are answered in turn with other clients':
# a request from a second client is not kept waiting behind all of them.
check "a busy client does not starve others" 0 -- python3 - "$MEMVISOR_SOCKET" <<'EOF'
import socket, sys, threading, time

n = 400
a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
a.settimeout(120)
a.connect(sys.argv[1])
done = {}

def drain():
    got = 0
    while got < n:
        data = a.recv(1 << 20)
        assert data, "daemon closed the busy client"
        got += data.count(b"\n")
        started.set()
    done["a"] = time.monotonic()

started = threading.Event()

t = threading.Thread(target=drain)
t.start()
a.sendall(b'{"cmd": "audit"}\n' * n)
# The daemon is answering the first client's requests before the second
# one asks.
assert started.wait(60), "no reply to the first client"
b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
b.settimeout(120)
b.connect(sys.argv[1])
b.sendall(b'{"cmd": "list"}\n')
assert b"domains" in b.makefile("rb").readline()
done["b"] = time.monotonic()
t.join()
assert done["b"] < done["a"], "the second client waited for all of the first's requests"
EOF

check "clients that hang up mid-request" 0 -- python3 - "$MEMVISOR_SOCKET" <<'EOF'
import socket, sys

for raw in (b'{"cmd": "li', b'{"cmd": "stats"}\n' * 50, b"x" * 100000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(raw)
    s.close()
EOF
check "daemon answers after clients hung up" 0 --out "web" -- "$cli_bin" list

check "a stalled client does not block others" 0 -- python3 - "$MEMVISOR_SOCKET" "$cli_bin" <<'EOF'
import json, socket, subprocess, sys

stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
stalled.settimeout(20)
stalled.connect(sys.argv[1])
stalled.sendall(b'{"cmd": "li')
subprocess.run([sys.argv[2], "list"], check=True, timeout=20, stdout=subprocess.DEVNULL)
stalled.sendall(b'st"}\n')
assert json.loads(stalled.makefile("rb").readline())["ok"]
EOF

check "second daemon refuses the socket" 1 --err "another memvisord \(pid $main_pid\)" -- \
    "$daemon_bin" --socket "$MEMVISOR_SOCKET"
check "first daemon unharmed" 0 -- "$cli_bin" list

check "destroy" 0 -- "$cli_bin" destroy db
check "list after destroy" 0 -- "$cli_bin" list
expect "db left the list" test "$(grep -c " db " "$scratch/out")" -eq 0
check "destroy twice" 1 --err "no such domain" -- "$cli_bin" destroy db

# ---------------------------------------------------------------------------
# --fault-path thread: every fault of a vCPU is left to the fault threads

tsock=$scratch/thread.sock
start_daemon "$tsock" "$scratch/thread.log" --fault-path thread --scrub-mode background || exit 1
thread_pid=$daemon_pid
# A target below 2 MiB: every fault populates a single page, which the
# default path resolves in the vCPU's thread (see "faults resolved in the
# vCPU's thread" above).
check "a domain on the thread path" 0 -- \
    "$cli_bin" --socket "$tsock" create tp --maxmem 64M --target 1M
check "its writes" 0 --out "finished, 100 pages" -- \
    "$cli_bin" --socket "$tsock" workload tp random --max-pages 100
check "stats --json on the thread path" 0 -- "$cli_bin" --socket "$tsock" stats --json
json_check "the host tells the thread path" 'd["host"]["fault_path"] == "thread"'
json_check "the fault threads served every single-page fault" \
    'd["domains"][0]["populated_4k"] > 0 and d["domains"][0]["faults"] > 0 and
     d["domains"][0]["faults_in_thread"] == 0 and d["domains"][0]["fault_in_thread"] is False'
faults=$(json_field 'd["domains"][0]["faults"]')
check "stats shows no fault resolved in a vCPU's thread" 0 \
    --out "^ +[0-9]+ +tp +running .* $faults +- +0 +[0-9]+ " -- "$cli_bin" --socket "$tsock" stats tp
check "stats tells the thread path" 0 --out "^host: .* fault threads \([a-z-]+\), fault path thread$" -- \
    "$cli_bin" --socket "$tsock" stats
# This daemon scrubs in the background: a destroyed domain's 64 MiB of
# frames are waiting or scrubbed, whichever the scrubber has reached.
check "destroy tp" 0 -- "$cli_bin" --socket "$tsock" destroy tp
check "stats --json after the destroy" 0 -- "$cli_bin" --socket "$tsock" stats --json
json_check "the host scrubs in the background" \
    'd["host"]["scrub_mode"] == "background" and d["host"]["scrub_failures"] == 0 and
     d["host"]["scrub_pending_pages"] + d["host"]["scrubbed_background_pages"] == 16384 and
     d["host"]["scrub_pending_charged_pages"] <= d["host"]["scrub_pending_pages"]'
check "stats tells the background scrub" 0 \
    --out "^scrub: background, .* of frames waiting \(holding .* of the budget\), .* scrubbed so far, 0 scrubs fell back to zeroing$" -- \
    "$cli_bin" --socket "$tsock" stats
"$cli_bin" --socket "$tsock" shutdown >/dev/null 2>&1
wait_exit "$thread_pid"
expect "the thread-path daemon shuts down with status 0" test "$exit_status" -eq 0

# ---------------------------------------------------------------------------
# Stopping: a dead daemon's socket is replaced, SIGTERM and shutdown are clean

other=$scratch/other.sock
start_daemon "$other" "$scratch/other.log" || exit 1
{ kill -KILL "$daemon_pid"; wait_exit "$daemon_pid"; } 2>/dev/null # no "Killed" notice
expect "socket left by a killed daemon" test -S "$other"
expect "stale socket replaced" start_daemon "$other" "$scratch/other2.log"
check "new daemon serves" 0 -- "$cli_bin" --socket "$other" create solo --maxmem 64M
kill -TERM "$daemon_pid"
wait_exit "$daemon_pid"
expect "SIGTERM exits 0" test "$exit_status" -eq 0
expect "SIGTERM removes socket and lock" test ! -e "$other" -a ! -e "$other.lock"

check "shutdown" 0 -- "$cli_bin" shutdown
wait_exit "$main_pid"
expect "shutdown exits 0" test "$exit_status" -eq 0
expect "shutdown removes socket and lock" \
    test ! -e "$MEMVISOR_SOCKET" -a ! -e "$MEMVISOR_SOCKET.lock"

harness_finish
