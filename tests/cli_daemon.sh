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
# long call stops it promptly.  The loop: a long call on one connection
# (test-hold, see memvisord --test-commands) does not delay `list` on
# another; a half-sent request is dropped after --request-timeout-ms.
# Everything is ordered by handshakes (replies, files, log lines polled
# with a deadline), never by sleeping.  Every check counts; the last line is
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

harness_finish
