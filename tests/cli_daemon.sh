#!/usr/bin/env bash
# cli_daemon.sh - memvisord's guard rails: who may connect, the files it
# makes and removes, signals, and a loop that long calls do not stall.
#
# Usage: bash tests/cli_daemon.sh PATH/TO/memvisord PATH/TO/memvisor
#
# Access: under umask 000 the socket is still 0600; with --socket-group it
# is 0660 of that group; a peer of another uid is refused (the socket's mode
# bypassed with CAP_DAC_OVERRIDE, so that the daemon's own check is what
# refuses), a member of the group is served.  Files: a symbolic link
# planted at the lock file or the pidfile is refused and its target left
# intact; a second daemon on a socket a live daemon answers on is refused
# even without the lock file; a daemon removes only files it created.
# Signals: SIGHUP, SIGUSR1 and SIGUSR2 leave it serving; SIGTERM during a
# long call stops it promptly (the socket goes at once; a call that cannot
# be interrupted is waited for, unless a second SIGTERM comes).  The loop: a long call on one connection
# (test-hold, see memvisord --test-commands) does not delay `list` on
# another; a half-sent request is dropped after --request-timeout-ms.
# Everything is ordered by handshakes (replies, files, log lines polled
# with a deadline), never by sleeping.  Names: an all-digit domain name
# (it would read as an id) is refused; sharing is not reported stopped once
# every domain is gone.  A --budget above the machine's memory needs
# --overcommit.  Every check counts; the last line is
# "cli_daemon: N passed, M failed".  Skips (exit 0) when the kernel lacks
# what memvisor needs.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
suite=cli_daemon
. "$(dirname "$0")/harness.sh"
harness_skip_unless_supported

# wait_for SECONDS COMMAND...: poll COMMAND every 20 ms until it succeeds,
# for at most SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" 2>/dev/null; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.02
    done
}

# stop_daemon PID SOCKET: shutdown through SOCKET and wait for the exit.
stop_daemon() {
    "$cli_bin" --socket "$2" shutdown >/dev/null 2>&1
    wait_exit "$1"
}

# ---------------------------------------------------------------------------
# Access

sock=$scratch/access.sock
umask 000
start_daemon "$sock" "$scratch/access.log" || exit 1
umask 022
access_pid=$daemon_pid
expect "started under umask 000, the socket is 0600" \
    test "$(stat -c %a "$sock")" = 600
expect "the lock file is 0600" test "$(stat -c %a "$sock.lock")" = 600
check "root is served" 0 -- "$cli_bin" --socket "$sock" list

can_drop=false
if setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+dac_override \
       --ambient-caps=+dac_override true 2>/dev/null; then
    can_drop=true
fi
if $can_drop; then
    check "another uid past the socket's mode is refused" 1 \
        --err "uid 65534 may not use memvisord" -- \
        setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+dac_override \
        --ambient-caps=+dac_override "$cli_bin" --socket "$sock" list
    expect "the refusal is logged" \
        grep -q "refused a client: pid [0-9]*, uid 65534" "$scratch/access.log"
    check "without the capability, the socket's mode refuses it" 1 --err "ermission denied" -- \
        setpriv --reuid=65534 --regid=65534 --clear-groups "$cli_bin" --socket "$sock" list
else
    echo "skip: setpriv cannot drop to uid 65534 with CAP_DAC_OVERRIDE here"
fi
stop_daemon "$access_pid" "$sock"

# --socket-group: 0660 of the group, and its members are served.
pub=$(mktemp -d /tmp/memvisor-pub.XXXXXX)
chmod 755 "$pub"
gsock=$pub/group.sock
start_daemon "$gsock" "$scratch/group.log" --socket-group users || exit 1
group_pid=$daemon_pid
expect "with --socket-group, the socket is 0660 of that group" \
    test "$(stat -c %a:%G "$gsock")" = 660:users
if $can_drop; then
    check "a member of the socket group is served" 0 -- \
        setpriv --reuid=65534 --regid=65534 --groups=100 "$cli_bin" --socket "$gsock" list
    check "a non-member is refused" 1 --err "uid 65534 may not use memvisord" -- \
        setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+dac_override \
        --ambient-caps=+dac_override "$cli_bin" --socket "$gsock" list
fi
stop_daemon "$group_pid" "$gsock"
rm -rf "$pub"
check "an unknown --socket-group is refused" 1 --err "no group named 'no-such-group'" -- \
    "$daemon_bin" --socket "$scratch/nogroup.sock" --socket-group no-such-group

# ---------------------------------------------------------------------------
# Files

fsock=$scratch/files.sock
echo "precious" >"$scratch/target"
ln -s "$scratch/target" "$fsock.lock"
check "a symbolic link at the lock file is refused" 1 --err "lock file .* is a symbolic link" -- \
    "$daemon_bin" --socket "$fsock"
expect "its target is intact" test "$(cat "$scratch/target")" = precious
expect "no socket was made" test ! -e "$fsock"
rm -f "$fsock.lock"

ln -s "$scratch/target" "$scratch/pid.link"
check "a symbolic link at the pidfile is refused" 1 --err "pidfile .* is a symbolic link" -- \
    "$daemon_bin" --socket "$fsock" --pidfile "$scratch/pid.link"
expect "its target is intact" test "$(cat "$scratch/target")" = precious
expect "the refused daemon removed its socket and lock" test ! -e "$fsock" -a ! -e "$fsock.lock"

echo 999999 >"$scratch/old.pid"
start_daemon "$fsock" "$scratch/files.log" --pidfile "$scratch/old.pid" || exit 1
files_pid=$daemon_pid
expect "a pidfile left behind is replaced" test "$(cat "$scratch/old.pid")" = "$files_pid"

# Someone removed the lock file: the socket still answers, so a second
# daemon must not take it.
rm -f "$fsock.lock"
check "a second daemon on a live socket is refused" 1 --err "a daemon answers on" -- \
    "$daemon_bin" --socket "$fsock"
check "the first still serves" 0 -- "$cli_bin" --socket "$fsock" list
expect "the socket is still the first's" test -S "$fsock"

# Files replaced behind the daemon's back are not its to remove.
mv "$scratch/old.pid" "$scratch/moved.pid"
echo "someone else's" >"$scratch/old.pid"
stop_daemon "$files_pid" "$fsock"
expect "shutdown exits 0" test "$exit_status" -eq 0
expect "it removed its socket" test ! -e "$fsock"
expect "it left the pidfile that is not its own" \
    test "$(cat "$scratch/old.pid" 2>/dev/null)" = "someone else's"

# ---------------------------------------------------------------------------
# Signals

ssock=$scratch/signals.sock
slog=$scratch/signals.log
start_daemon "$ssock" "$slog" --test-commands || exit 1
signals_pid=$daemon_pid
check "a domain to keep" 0 -- "$cli_bin" --socket "$ssock" create keeper --maxmem 64M
for sig in HUP USR1 USR2; do
    case $sig in
    HUP) said="Hangup: ignored" ;;
    USR1) said="SIGUSR1: 1 domains, [0-9]+ of [0-9]+ budget pages populated" ;;
    USR2) said="User defined signal 2: ignored" ;;
    esac
    kill -"$sig" "$signals_pid"
    expect "SIG$sig is logged" wait_for 10 grep -Eq "$said" "$slog"
    expect "the daemon survives SIG$sig" kill -0 "$signals_pid"
    check "and its domain is still served after SIG$sig" 0 --out "keeper" -- \
        "$cli_bin" --socket "$ssock" list
done

# SIGTERM while a long call runs: obeyed at once (the held call gives up).
python3 - "$ssock" >"$scratch/held.out" 2>&1 <<'EOF2' &
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(b'{"cmd": "test-hold"}\n')
print(s.makefile("rb").readline().decode().strip())
EOF2
held_pid=$!
expect "a call is held on a worker" wait_for 10 grep -q "test-hold: holding" "$slog"
start=$(date +%s%N)
kill -TERM "$signals_pid"
wait_exit "$signals_pid"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
expect "SIGTERM during a long call exits 0" test "$exit_status" -eq 0
expect "within 5 s (took $elapsed_ms ms)" test "$elapsed_ms" -lt 5000
expect "SIGTERM removes socket and lock" test ! -e "$ssock" -a ! -e "$ssock.lock"
wait "$held_pid"
expect "the held call is told the daemon stopped" grep -q "memvisord is stopping" "$scratch/held.out"

# A call that cannot be interrupted: SIGTERM closes the socket at once and
# waits for it; a second SIGTERM exits without waiting.
ssock=$scratch/stubborn.sock
slog=$scratch/stubborn.log
start_daemon "$ssock" "$slog" --test-commands || exit 1
stubborn_pid=$daemon_pid
python3 - "$ssock" >/dev/null 2>&1 <<'EOF2' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(b'{"cmd": "test-hold", "stubborn": 1}\n')
s.recv(1)
EOF2
held_pid=$!
expect "an uninterruptible call is held" wait_for 10 grep -q "test-hold: holding" "$slog"
kill -TERM "$stubborn_pid"
expect "SIGTERM closes the socket at once" wait_for 5 test ! -e "$ssock"
expect "and waits for the call" wait_for 5 grep -q "waiting for 1 calls in progress" "$slog"
expect "the daemon is still alive meanwhile" kill -0 "$stubborn_pid"
kill -TERM "$stubborn_pid"
wait_exit "$stubborn_pid"
expect "a second SIGTERM exits without waiting (status 1)" test "$exit_status" -eq 1
expect "and says so" grep -q "exiting without waiting for 1 calls in progress" "$slog"
expect "it removes its lock too" test ! -e "$ssock.lock"
wait "$held_pid"

# ---------------------------------------------------------------------------
# One loop serves everyone: a long call does not stall the others

lsock=$scratch/loop.sock
llog=$scratch/loop.log
start_daemon "$lsock" "$llog" --test-commands --request-timeout-ms 300 || exit 1
loop_pid=$daemon_pid
check "a domain to list" 0 -- "$cli_bin" --socket "$lsock" create busy --maxmem 64M
check "a long call does not stall list on another connection" 0 -- \
    python3 - "$lsock" "$llog" <<'EOF2'
import json, select, socket, sys, time

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sys.argv[1])
    return s, s.makefile("rb")

def held():
    return "test-hold: holding" in open(sys.argv[2]).read()

a, fa = connect()
a.sendall(b'{"cmd": "test-hold"}\n')
deadline = time.monotonic() + 10
while not held():
    assert time.monotonic() < deadline, "the hold never started"
    time.sleep(0.02)
# The hold runs: a list and a stats on another connection are answered
# while it still does (its reply has not come).
b, fb = connect()
b.settimeout(5)
for request in (b'{"cmd": "list"}\n', b'{"cmd": "stats"}\n', b'{"cmd": "audit"}\n'):
    b.sendall(request)
    reply = json.loads(fb.readline())
    assert reply["ok"], reply
assert select.select([a], [], [], 0)[0] == [], "the held call answered early"
b.sendall(b'{"cmd": "test-release"}\n')
reply = json.loads(fb.readline())
assert reply["ok"] and reply["released"] == 1, reply
reply = json.loads(fa.readline())
assert reply["ok"], reply
# The held connection is served again afterwards.
a.sendall(b'{"cmd": "list"}\n')
assert json.loads(fa.readline())["ok"]
EOF2

check "a half-sent request is dropped after --request-timeout-ms" 0 -- \
    python3 - "$lsock" <<'EOF2'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
start = time.monotonic()
s.sendall(b'{"cmd": "li')
reply = json.loads(s.makefile("rb").readline())
assert reply["ok"] is False and reply["errno"] == 110, reply
assert "not complete after 300 ms" in reply["detail"], reply
assert s.recv(1) == b"", "the connection stayed open"
assert time.monotonic() - start < 5
EOF2
expect "the drop is logged" grep -q "request not complete after 300 ms; dropped" "$llog"
check "a quiet connection (no request begun) is not dropped" 0 -- \
    python3 - "$lsock" <<'EOF2'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
# Twice the deadline: time passing is what is tested, not an ordering.
time.sleep(0.6)
s.sendall(b'{"cmd": "list"}\n')
assert json.loads(s.makefile("rb").readline())["ok"]
EOF2
stop_daemon "$loop_pid" "$lsock"
expect "shutdown exits 0" test "$exit_status" -eq 0

# ---------------------------------------------------------------------------
# Names, budgets, the sharing verdict

nsock=$scratch/names.sock
start_daemon "$nsock" "$scratch/names.log" || exit 1
names_pid=$daemon_pid
check "an all-digit name is refused" 1 --err "domain name '7' is all digits" -- \
    "$cli_bin" --socket "$nsock" create 7 --maxmem 64M
check "a name with a letter is fine" 0 -- "$cli_bin" --socket "$nsock" create 7a --maxmem 64M
check "pause 7a" 0 -- "$cli_bin" --socket "$nsock" pause 7a
check "an all-digit clone name is refused" 1 --err "domain name '1' is all digits" -- \
    "$cli_bin" --socket "$nsock" clone 7a 1
# Stop sharing (a mapping limit of 1), then let every domain go.
check "a scanner with a mapping limit of 1" 0 -- \
    "$cli_bin" --socket "$nsock" share scanner start --max-vmas 1
check "a clone at the mapping limit is refused and says why" 1 \
    --err "clone: .*sharing is stopped: [0-9]+ mappings of a limit of 1 .*; the clone needed up to [0-9]+ new mappings \([0-9]+ runs of pages\), [0-9]+ are in use$" -- \
    "$cli_bin" --socket "$nsock" clone 7a copy
check "share stats say sharing stopped at its last attempt" 0 \
    --out "sharing stopped at its last attempt: " -- "$cli_bin" --socket "$nsock" share stats
check "scanner stop" 0 -- "$cli_bin" --socket "$nsock" share scanner stop
check "destroy 7a" 0 -- "$cli_bin" --socket "$nsock" destroy 7a
check "share stats --json with every domain gone" 0 -- \
    "$cli_bin" --socket "$nsock" share stats --json
json_check "sharing is not stopped once every domain is gone" \
    'not d["share"]["sharing_stopped"] and d["share"]["stop_reason"] == ""'
stop_daemon "$names_pid" "$nsock"

check "a budget above the machine's memory is refused" 1 \
    --err "--budget 1 PiB is more than the machine's memory .*--overcommit" -- \
    "$daemon_bin" --socket "$scratch/budget.sock" --budget 1P
expect "the refused daemon left no file" test ! -e "$scratch/budget.sock" -a ! -e "$scratch/budget.sock.lock"
start_daemon "$scratch/budget.sock" "$scratch/budget.log" --budget 1P --overcommit || exit 1
expect "--overcommit accepts it with a warning" \
    grep -q "warn: --budget 1 PiB is more than the machine's memory" "$scratch/budget.log"
stop_daemon "$daemon_pid" "$scratch/budget.sock"

if grep -Eq "Sanitizer|runtime error:" "$scratch"/*.log; then
    fail "no sanitizer report in the daemons' logs" "found one:"
    grep -E -A40 "Sanitizer|runtime error:" "$scratch"/*.log | head -60 | sed 's/^/     | /'
else
    pass "no sanitizer report in the daemons' logs"
fi

harness_finish
