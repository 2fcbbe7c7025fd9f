# harness.sh - what the shell tests share: a private socket and scratch
# directory, counted checks, starting and stopping daemons, the summary.
#
# Sourced by a test after it set `suite` (its name), `daemon_bin` and
# `cli_bin`.  Checks print "ok   WHAT" or "FAIL WHAT: WHY"; harness_finish
# prints "SUITE: N passed, M failed" and returns non-zero when any failed.
# harness_skip_unless_supported exits 0 when the kernel lacks what memvisor
# needs.

scratch=$(mktemp -d)
export MEMVISOR_SOCKET=$scratch/memvisord.sock
passed=0
failed=0
daemon_pids=()

cleanup() {
    for pid in "${daemon_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    rm -rf "$scratch"
}
trap cleanup EXIT

pass() {
    passed=$((passed + 1))
    echo "ok   $1"
}

fail() {
    failed=$((failed + 1))
    echo "FAIL $1: $2"
}

# The output of the last command, indented, after a failure.
show_output() {
    sed 's/^/     | /' "$scratch/out" "$scratch/err" | head -20
}

# expect DESCRIPTION COMMAND...: COMMAND (a test(1) expression or any
# command) must succeed.
expect() {
    local what=$1
    shift
    if "$@" 2>/dev/null; then
        pass "$what"
    else
        fail "$what" "false: $*"
    fi
}

# check DESCRIPTION STATUS [--out REGEX] [--err REGEX] -- COMMAND...
# Runs COMMAND (output in $scratch/out and $scratch/err) and expects its exit
# status and, when given, a line of stdout or stderr matching each REGEX.
check() {
    local what=$1 expected=$2 out_re="" err_re="" status
    shift 2
    while [ "$1" != "--" ]; do
        case $1 in
        --out) out_re=$2 ;;
        --err) err_re=$2 ;;
        esac
        shift 2
    done
    shift
    timeout 60 "$@" >"$scratch/out" 2>"$scratch/err"
    status=$?
    if [ "$status" -ne "$expected" ]; then
        fail "$what" "exit status $status, expected $expected"
        show_output
    elif [ -n "$out_re" ] && ! grep -Eq -- "$out_re" "$scratch/out"; then
        fail "$what" "stdout lacks /$out_re/"
        show_output
    elif [ -n "$err_re" ] && ! grep -Eq -- "$err_re" "$scratch/err"; then
        fail "$what" "stderr lacks /$err_re/"
        show_output
    else
        pass "$what"
    fi
}

# json_check DESCRIPTION PYTHON_EXPRESSION: the expression, over `d` (the
# JSON the last command printed), must be true.
json_check() {
    if python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if eval("(" + sys.argv[2] + ")") else 1)' "$scratch/out" "$2" 2>>"$scratch/err"; then
        pass "$1"
    else
        fail "$1" "not true of the JSON: $2"
        show_output
    fi
}


# start_daemon SOCKET LOG [OPTION...]: start memvisord and wait until it answers.
start_daemon() {
    "$daemon_bin" --socket "$1" --log-level debug "${@:3}" 2>"$2" &
    daemon_pid=$!
    daemon_pids+=("$daemon_pid")
    for _ in $(seq 100); do
        if "$cli_bin" --socket "$1" list >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "memvisord did not start on $1:" >&2
    cat "$2" >&2
    return 1
}

# wait_exit PID: wait up to 10 s for a daemon to exit; its status in $exit_status.
wait_exit() {
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    wait "$1"
    exit_status=$?
}


harness_skip_unless_supported() {
    if ! "$cli_bin" doctor >"$scratch/out" 2>&1; then
        echo "$suite: skipped, the kernel lacks what memvisor needs:"
        cat "$scratch/out"
        exit 0
    fi
}

harness_finish() {
    echo "$suite: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
