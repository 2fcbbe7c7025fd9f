#!/usr/bin/env bash
# cli_schema.sh - the protocol's schema against its three readers, the hello
# exchange, --json errors and the benchmark program.
#
# Usage: bash tests/cli_schema.sh PATH/TO/memvisord PATH/TO/memvisor PATH/TO/daemon_fuzz
#
# The schema (tools/schema.c, printed by `memvisor help --json`) lists every
# command; each must have a handler in memvisord (the daemon's hello lists
# the commands it has handlers for), a CLI command that sends it (the "cli"
# of `help --json`, from the CLI's table) and fuzzer coverage
# (`daemon_fuzz --list-commands`), and the CLI's help of each command must
# name every argument of the requests it sends.  Then: a daemon of another
# major protocol version is refused with a clear error, one older than the
# hello is still served, failures under --json are JSON objects on stdout,
# and `memvisor bench` runs memvisor-bench.
set -u

if [ $# -ne 3 ]; then
    echo "usage: $0 MEMVISORD MEMVISOR DAEMON_FUZZ" >&2
    exit 2
fi
daemon_bin=$1
cli_bin=$2
fuzz_bin=$3
suite=cli_schema
. "$(dirname "$0")/harness.sh"

# ---------------------------------------------------------------------------
# The schema's readers (no kernel support needed for these)

check "help --json prints the schema" 0 -- "$cli_bin" help --json
cp "$scratch/out" "$scratch/schema.json"
check "daemon_fuzz --list-commands" 0 -- "$fuzz_bin" --list-commands
cp "$scratch/out" "$scratch/fuzz.txt"

log=$scratch/daemon.log
# The daemon serves with --test-commands so that its hello lists them too.
"$daemon_bin" --socket "$MEMVISOR_SOCKET" --log-level debug --test-commands 2>"$log" &
daemon_pid=$!
daemon_pids+=("$daemon_pid")
for _ in $(seq 100); do
    "$cli_bin" hello >/dev/null 2>&1 && break
    sleep 0.1
done
check "hello --json lists the daemon's commands" 0 -- "$cli_bin" hello --json
cp "$scratch/out" "$scratch/hello.json"
json_check "hello tells both protocol versions and the library's" \
    'd["protocol"] == "1.2" and d["client_protocol"] == "1.2" and d["library"] and d["daemon"] == "memvisord"'

check "every command has a daemon handler, a CLI command and fuzzer coverage" 0 -- \
    python3 - "$scratch/schema.json" "$scratch/hello.json" "$scratch/fuzz.txt" "$cli_bin" <<'EOF'
import json, subprocess, sys

schema = json.load(open(sys.argv[1]))
served = set(json.load(open(sys.argv[2]))["commands"])
fuzzed = dict(line.split(" ", 1) for line in open(sys.argv[3]).read().splitlines())
cli = sys.argv[4]
problems = []

def arg_names(args, prefix=""):
    for a in args:
        yield prefix + a["name"]
        yield from arg_names(a.get("members", []), prefix + a["name"] + ".")

assert schema["commands"], "the schema lists no command"
for c in schema["commands"]:
    name = c["name"]
    if name not in served:
        problems.append(f"{name}: memvisord has no handler for it")
    if fuzzed.get(name) not in ("covered", "test-only"):
        problems.append(f"{name}: daemon_fuzz says {fuzzed.get(name, 'nothing')}")
    if c["test_only"] != (fuzzed.get(name) == "test-only"):
        problems.append(f"{name}: test-only in one reader only")
    if c["test_only"] or c.get("alias_of"):
        continue
    if not c["cli"]:
        problems.append(f"{name}: no memvisor command sends it")
    for sender in c["cli"]:
        text = subprocess.run([cli, "help"] + sender.split(), capture_output=True,
                              text=True).stdout
        if f"memvisord request '{name}'" not in text:
            problems.append(f"{name}: 'memvisor help {sender}' does not describe it")
        for arg in arg_names(c["args"]):
            if arg not in text:
                problems.append(f"{name}: 'memvisor help {sender}' does not mention {arg}")
for extra in served - {c["name"] for c in schema["commands"]}:
    problems.append(f"{extra}: served by memvisord but not in the schema")
for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
EOF

check "a command's --help names its request's arguments" 0 \
    --out "^  workload\.working_set +size" -- "$cli_bin" create --help
check "help COMMAND is COMMAND --help" 0 --out "^usage: memvisor share make" -- \
    "$cli_bin" help share make

# ---------------------------------------------------------------------------
# hello on the wire

check "hello and requests without one" 0 -- python3 - "$MEMVISOR_SOCKET" <<'EOF'
import json, socket, sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sys.argv[1])
f = s.makefile("rb")

def ask(request):
    s.sendall(json.dumps(request).encode() + b"\n")
    return json.loads(f.readline())

# A client that never says hello is served as before.
reply = ask({"cmd": "list"})
assert reply["ok"] and reply["domains"] == [], reply
reply = ask({"cmd": "hello", "protocol": "1.0", "client": "cli_schema"})
assert reply["ok"] and reply["protocol"] == "1.2" and "hello" in reply["commands"], reply
assert isinstance(reply["library"], str) and reply["library"], reply
# Another major version is answered too: the client decides.
reply = ask({"cmd": "hello", "protocol": "2.3"})
assert reply["ok"] and reply["protocol"] == "1.2", reply
for bad in ("1", "x.y", "", "1.0.0", "-1.0"):
    reply = ask({"cmd": "hello", "protocol": bad})
    assert not reply["ok"] and reply["errno"] == 22, (bad, reply)
reply = ask({"cmd": "hello"})
assert not reply["ok"] and "missing argument 'protocol'" in reply["detail"], reply
reply = ask({"cmd": "hello", "protocol": "1.0", "colour": 1})
assert not reply["ok"] and "unknown argument 'colour'" in reply["detail"], reply
EOF

# A stand-in daemon: answers hello as told (argv[2]: "2.0" for a newer major
# version, "old" for a daemon older than hello) and any other request ok.
fake_daemon() {
    python3 - "$1" "$2" <<'EOF' &
import json, os, socket, sys

path, mode = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(8)
while True:
    conn, _ = server.accept()
    f = conn.makefile("rb")
    for line in f:
        request = json.loads(line)
        if request.get("cmd") == "hello" and mode == "old":
            reply = {"ok": False, "errno": 22, "error": "Invalid argument",
                     "detail": "unknown command 'hello'"}
        elif request.get("cmd") == "hello":
            reply = {"ok": True, "protocol": mode, "library": "9.0.0",
                     "daemon": "memvisord", "commands": ["hello", "list"]}
        else:
            reply = {"ok": True, "domains": []}
        conn.sendall(json.dumps(reply).encode() + b"\n")
    conn.close()
EOF
    daemon_pids+=("$!")
    for _ in $(seq 50); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
}

fake_daemon "$scratch/newer.sock" 2.0
check "a daemon of another major version is refused" 1 \
    --err "memvisord speaks protocol 2.0 and this memvisor 1.2: their major versions differ" -- \
    "$cli_bin" --socket "$scratch/newer.sock" list
check "... as JSON under --json" 1 -- "$cli_bin" --socket "$scratch/newer.sock" list --json
json_check "the version error is EPROTONOSUPPORT" \
    'd["ok"] is False and d["errno"] == 93 and "major versions differ" in d["detail"]'
fake_daemon "$scratch/minor.sock" 1.9
check "a daemon of a newer minor version is served" 0 -- \
    "$cli_bin" --socket "$scratch/minor.sock" list
fake_daemon "$scratch/old.sock" old
check "a daemon older than hello is served" 0 -- "$cli_bin" --socket "$scratch/old.sock" list
check "hello with a daemon older than hello" 0 --out "predates the hello" -- \
    "$cli_bin" --socket "$scratch/old.sock" hello

# ---------------------------------------------------------------------------
# Failures under --json

# json_error DESCRIPTION STATUS ERRNO WORD -- COMMAND...: COMMAND fails with
# STATUS, printing one JSON error object with ERRNO and WORD on stdout and
# nothing on stderr.
json_error() {
    local what=$1 status=$2 errno=$3 word=$4
    shift 5
    check "$what" "$status" -- "$@"
    json_check "$what: a JSON error, errno $errno" \
        "d == {'ok': False, 'error': d['error'], 'errno': $errno, 'detail': d['detail']} and '$word' in d['error'] and d['detail']"
    expect "$what: nothing on stderr" test ! -s "$scratch/err"
}

json_error "a daemon error under --json" 1 3 "no such domain" -- \
    "$cli_bin" stats --json nosuch
json_error "a usage error under --json" 2 22 "Invalid argument" -- \
    "$cli_bin" list --json --bogus
json_error "a bad option value under --json" 2 22 "Invalid argument" -- \
    "$cli_bin" share scan --json --pages lots
json_error "a connection error under --json" 1 2 "No such file" -- \
    "$cli_bin" --socket "$scratch/nowhere.sock" list --json
check "without --json a failure is a line on stderr" 1 \
    --err "^memvisor: stats: no such domain" -- "$cli_bin" stats nosuch
expect "... and nothing on stdout" test ! -s "$scratch/out"

# ---------------------------------------------------------------------------
# The benchmarks are a program of their own

check "memvisor bench --help runs memvisor-bench" 0 --out "^usage: memvisor bench" -- \
    "$cli_bin" bench --help
check "an unknown suite is a usage error" 2 --err "unknown suite" -- "$cli_bin" bench nope
expect "the CLI links no benchmark code" bash -c "! grep -q mv_bench_main '$cli_bin'"

check "shutdown" 0 -- "$cli_bin" shutdown
wait_exit "$daemon_pid"
expect "shutdown exits 0" test "$exit_status" -eq 0

harness_finish
