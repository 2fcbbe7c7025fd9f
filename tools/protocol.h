/*
 * protocol.h - the memvisord wire protocol and what the daemon and the
 * `memvisor` tool share.
 *
 * Framing: one JSON object per line, newline-terminated, each way, over a
 * Unix stream socket.  A request is {"cmd": "<name>", <arguments>...}; a
 * reply is {"ok": true, <results>...} or
 *   {"ok": false, "errno": N, "error": "<mv_strerror words>",
 *    "detail": "<mv_last_error() sentence>"}
 * where N is the positive errno value.  A request line holds at most
 * MV_PROTO_MAX_REQUEST bytes before its newline; a connection may carry any
 * number of requests, answered in order.
 *
 * Sizes in requests are JSON integers (bytes) or strings parsed by
 * mv_proto_parse_size ("256M").  Page counts in replies mirror the library's
 * structures field by field (struct mv_domain_info -> "maxmem_pages", ...).
 * "domain" is a name, or an id: a number, or a string of digits that names
 * no domain.  An argument a command does not take is an error.
 *
 * The commands and their arguments are written once, in tools/schema.c
 * (`memvisor help --json` prints them); the summary below is for reading.
 *
 * Versions: a client may begin with {"cmd": "hello", "protocol": "M.N",
 * "client": "<name>"}; the reply carries the daemon's "protocol" (MAJOR.MINOR),
 * "library" (libmemvisor's version), "daemon" and "commands" (what it
 * serves).  Clients and daemons of the same MAJOR understand each other; a
 * request without a hello is served as before (docs/protocol.md).
 *
 * Commands: arguments (* required) -> results besides "ok"
 *   hello            protocol*, client -> protocol, library, daemon, commands
 *   create           name*, maxmem*, target (default maxmem), vcpus,
 *                    policy ("wait"|"crash"), wait_timeout_ms, logdirty
 *                    ("auto"|"wp-async"|"wp-sync"|"mprotect"), cow_mode
 *                    ("trap"|"kernel"), workload (an object with the
 *                    arguments of workload-start but domain) -> domid, name
 *   destroy, pause, unpause, workload-stop             domain*
 *   list             domain -> domains: [domain info]
 *   stats (or info)  domain -> host: {host stats},
 *                    domains: [domain info + workload: {status}]
 *   set-target       domain*, target*
 *   balloon          domain*, size* -> pages_moved
 *   reclaim          domain*, max_pages -> scanned, reclaimed, elapsed_ns
 *   workload-start   domain*, kind* ("scrub"|"random"|"verify"), rate (pages
 *                    per second), duration_ms, max_pages, working_set (size),
 *                    seed
 *   workload-status  domain*, wait_ms (<= MV_PROTO_MAX_WAIT_MS)
 *                    -> workload: {status}
 *   verify           domain* -> mismatches, first_bad_gfn (null when none)
 *   audit            domain (default: the whole host)
 *   logdirty         domain*, action* ("enable"|"disable"|"clean"|"peek"|
 *                    "stats") -> dirty_pages, zero_pages (clean, peek),
 *                    logdirty: {dirty-log stats}
 *   doctor           -> doctor: {kernel report, see mv_proto_doctor_json}
 *   shutdown
 *   test-hold, test-release -> released (only with memvisord --test-commands:
 *                    a call held on a daemon worker until released)
 *
 * A new domain's name (create, clone) must not be all digits: it would read
 * as an id.  Access is the daemon's business: a peer it does not serve gets
 * one EACCES error reply and the connection is closed.  A request begun must
 * be complete within memvisord --request-timeout-ms, or the reply is an
 * ETIMEDOUT error and the connection is closed.
 *
 * Copy-on-write sharing (gfns, counts, handles and keys are JSON integers;
 * a handle is any 64-bit unsigned value):
 *   clone            domain*, name* -> domid, name  (the source must be paused)
 *   share-nominate   domain*, gfn* -> handle
 *   share-pages      source_domain*, source_gfn*, source_handle*,
 *                    client_domain*, client_gfn*, client_handle*
 *   share-add-to-physmap  source_domain*, source_gfn*, source_handle*,
 *                    client_domain*, client_gfn*
 *   share-unshare    domain*, gfn*
 *   share-make       domain*, gfn*, count (default 1) -> shared, and the gfns
 *                    of each outcome: matched, inserted, zero, already, skipped
 *   share-hint       domain*, gfn*, count*, key*
 *   share-exclude    domain*, gfn*, count*
 *   share-settle     domain* -> settled  (the kernel's copies moved into the
 *                    domain's own frames; 0 for a "trap" domain)
 *   share-scan       max_pages -> scan: {scan result}
 *   scanner-start    rate (pages per second), cpu_percent, max_vmas
 *   scanner-stop
 *   share-stats      domain -> share: {sharing stats}, domains: [domain info]
 *   share-audit
 *
 * Contents: socket path defaults; size and number parsing; the line reader
 * both ends use; message parsing, encoding and typed argument access; the
 * names of library enums on the wire; the JSON encoders of the library's
 * structures; the kernel report behind `doctor`.
 */
#ifndef MV_PROTOCOL_H
#define MV_PROTOCOL_H

#include "memvisor.h"
#include "memvisor-guest.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

struct json_object;

#define MV_PROTO_SOCKET_DEFAULT "/run/memvisor/memvisord.sock"
#define MV_PROTO_SOCKET_ENV "MEMVISOR_SOCKET"
/* Bytes of one request line, newline excluded. */
#define MV_PROTO_MAX_REQUEST (64 * 1024)
/* Bytes of one reply line: a stats reply grows with the domain count. */
#define MV_PROTO_MAX_REPLY (16 * 1024 * 1024)
/* Size of every `why` buffer below. */
#define MV_PROTO_DETAIL_MAX 256

/* Put the message in why (why_len bytes) and return err: the tools' way
 * of failing with a reason. */
int mv_proto_fail(char *why, size_t why_len, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* CLOCK_MONOTONIC in milliseconds. */
uint64_t mv_proto_now_ms(void);
/* The protocol's version: MAJOR changes when an old client or daemon would
 * misread the other (a command or argument removed or changed in meaning),
 * MINOR when something is added. */
#define MV_PROTO_VERSION_MAJOR 1
#define MV_PROTO_VERSION_MINOR 2
#define MV_PROTO_STRINGIFY_(x) #x
#define MV_PROTO_STRINGIFY(x) MV_PROTO_STRINGIFY_(x)
#define MV_PROTO_VERSION MV_PROTO_STRINGIFY(MV_PROTO_VERSION_MAJOR) "." \
                         MV_PROTO_STRINGIFY(MV_PROTO_VERSION_MINOR)
/* Longest a workload-status request may make the daemon wait. */
#define MV_PROTO_MAX_WAIT_MS 100u

/* ------------------------------------------------------------------------ */
/* Socket                                                                    */

/* The socket to use: `option` when given, else $MEMVISOR_SOCKET when set
 * and non-empty, else MV_PROTO_SOCKET_DEFAULT. */
const char *mv_proto_socket_path(const char *option);

/* Fill a Unix socket address.  -ENAMETOOLONG (with `why`) when `path` does
 * not fit in sun_path. */
int mv_proto_socket_address(const char *path, struct sockaddr_un *address,
                            socklen_t *length, char *why);

/* ------------------------------------------------------------------------ */
/* Sizes and numbers                                                         */

/*
 * Parse a size: decimal digits, optionally followed by a binary unit K, M,
 * G, T or P (any case, optionally with "B" or "iB": "4096", "256M", "1GiB").
 * Returns 0, -EINVAL for anything else (empty, sign, spaces, fractions), or
 * -ERANGE when the value does not fit in 64 bits.  Zero is a valid size.
 */
int mv_proto_parse_size(const char *text, uint64_t *bytes);

/* Why mv_proto_parse_size failed with `err`, worded to follow "'TEXT' is ". */
const char *mv_proto_size_error(int err);

/* Parse a protocol version "MAJOR.MINOR": 0, or -EINVAL. */
int mv_proto_parse_version(const char *text, unsigned *major, unsigned *minor);

/* Parse plain decimal digits: 0, -EINVAL or -ERANGE as above. */
int mv_proto_parse_u64(const char *text, uint64_t *value);

/* Parse a number written in decimal or, after "0x" or "0X", in hexadecimal
 * (guest frame numbers, handles, keys): 0, -EINVAL or -ERANGE as above. */
int mv_proto_parse_number(const char *text, uint64_t *value);

/* A size for humans into `buf`: "0 B", "4 KiB", "256 MiB", "1.5 GiB". */
const char *mv_proto_format_size(char *buf, size_t size, uint64_t bytes);

/* ------------------------------------------------------------------------ */
/* Line reader                                                               */

/*
 * Splits a byte stream into lines without ever holding more than
 * max_line + 1 bytes.  Use: mv_proto_reader_space, read(2) into it,
 * mv_proto_reader_commit, then mv_proto_reader_next until it says
 * MV_PROTO_NEED_MORE.  A line longer than max_line is reported once as
 * MV_PROTO_OVERSIZED and its remaining bytes are skipped up to and including
 * its newline; the lines after it are read normally.
 */
struct mv_proto_reader {
    char *data;
    size_t capacity;
    size_t start;        /* first byte not yet returned */
    size_t end;          /* one past the last byte received */
    size_t max_line;
    bool discarding;     /* inside an oversized line */
};

enum mv_proto_next {
    MV_PROTO_NEED_MORE,  /* no complete line held */
    MV_PROTO_LINE,       /* *line is a NUL-terminated line, newline removed */
    MV_PROTO_OVERSIZED,  /* a line exceeded max_line */
};

void mv_proto_reader_init(struct mv_proto_reader *reader, size_t max_line);
void mv_proto_reader_free(struct mv_proto_reader *reader);
/* Room to read into (at least one byte); NULL when out of memory.  Lines
 * returned earlier become invalid. */
char *mv_proto_reader_space(struct mv_proto_reader *reader, size_t *room);
void mv_proto_reader_commit(struct mv_proto_reader *reader, size_t count);
/* Next line: a trailing "\r" is removed and empty lines are skipped.  The
 * line stays valid until the next mv_proto_reader_space call. */
enum mv_proto_next mv_proto_reader_next(struct mv_proto_reader *reader,
                                        char **line, size_t *length);
/* True when bytes of an incomplete line are held. */
bool mv_proto_reader_partial(const struct mv_proto_reader *reader);

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */

/* Parse one line (NUL-terminated, `length` bytes before the NUL) as a JSON
 * object in strict mode.  0 and *message, or -EINVAL with `why`. */
int mv_proto_parse_message(const char *line, size_t length,
                           struct json_object **message, char *why);

/* The message as one line, newline included, in a malloc'ed buffer; NULL
 * when out of memory. */
char *mv_proto_encode_line(struct json_object *message, size_t *length);

/* {"cmd": cmd}, to which the caller adds arguments. */
struct json_object *mv_proto_request_new(const char *cmd);
/* {"ok": true}, to which the caller adds results. */
struct json_object *mv_proto_reply_ok(void);
/* An error reply for the negative errno `err`; `detail` may be empty. */
struct json_object *mv_proto_reply_error(int err, const char *detail);

/*
 * Read a reply's verdict: 0 for {"ok": true}; the negative errno it carries
 * otherwise, with *error and *detail pointing into the reply ("" when
 * absent); -EPROTO with *error "malformed reply" when it is not a reply.
 */
int mv_proto_reply_status(struct json_object *reply, const char **error,
                          const char **detail);

/*
 * Send `request` on the blocking socket `fd` and wait for one reply line.
 * 0 and *reply (an error reply is still 0: see mv_proto_reply_status), or
 * a negative errno with `why` when the exchange itself failed.
 */
int mv_proto_call(int fd, struct mv_proto_reader *reader,
                  struct json_object *request, struct json_object **reply,
                  char *why);

/*
 * Typed arguments.  Each returns 0 and stores the member `key` of `message`;
 * when the member is absent it returns 0 leaving *out untouched (preset the
 * default) unless `required`.  Otherwise -EINVAL with `why` naming the
 * argument and the type it must have.
 */
int mv_proto_arg_string(struct json_object *message, const char *key,
                        bool required, const char **out, char *why);
int mv_proto_arg_u64(struct json_object *message, const char *key,
                     bool required, uint64_t *out, char *why);
/* An integer of bytes or a size string. */
int mv_proto_arg_size(struct json_object *message, const char *key,
                      bool required, uint64_t *out, char *why);
/* A nested object. */
int mv_proto_arg_object(struct json_object *message, const char *key,
                        bool required, struct json_object **out, char *why);

/* -EINVAL with `why` when `message` has a member other than "cmd" and the
 * NULL-terminated `allowed` names. */
int mv_proto_check_members(struct json_object *message,
                           const char *const *allowed, char *why);

/* ------------------------------------------------------------------------ */
/* Library enums on the wire                                                 */

const char *mv_proto_state_name(enum mv_domain_state state);
const char *mv_proto_policy_name(enum mv_pod_policy policy);
const char *mv_proto_workload_name(enum mv_workload_kind kind);
/* 0, or -EINVAL for an unknown name ("wait"/"crash"; "scrub"/"random"/
 * "verify"). */
int mv_proto_policy_parse(const char *name, enum mv_pod_policy *policy);
int mv_proto_workload_parse(const char *name, enum mv_workload_kind *kind);
/* "auto", "wp-async", "wp-sync" or "mprotect" (mv_logdirty_mode_name). */
int mv_proto_logdirty_mode_parse(const char *name, enum mv_logdirty_mode *mode);
/* "trap" or "kernel" (mv_cow_mode_name). */
int mv_proto_cow_mode_parse(const char *name, enum mv_cow_mode *mode);
/* "matched", "inserted", "zero", "already" or "skipped": the reply keys of
 * share-make. */
const char *mv_proto_share_outcome_name(enum mv_share_outcome outcome);

/* ------------------------------------------------------------------------ */
/* Library structures as JSON (every field under its own name)               */

struct json_object *mv_proto_host_stats_json(const struct mv_host_stats *stats);
struct json_object *mv_proto_domain_info_json(const struct mv_domain_info *info);
/* `finished`: mv_workload_wait returned 0.  first_bad_gfn is null when no
 * page differed. */
struct json_object *mv_proto_workload_status_json(const struct mv_workload_status *status,
                                                  bool finished);
struct json_object *mv_proto_logdirty_stats_json(const struct mv_logdirty_stats *stats);
struct json_object *mv_proto_share_stats_json(const struct mv_share_stats *stats);
struct json_object *mv_proto_scan_result_json(const struct mv_scan_result *result);

/*
 * The `doctor` report of a kernel probe: release, userfaultfd access, each
 * feature with the Linux version that brought it and whether memvisor needs
 * it, the limits that matter, "usable" (probe_rc == 0), "problem" (the
 * probe's explanation, when not usable) and "advice" (what to change).
 */
struct json_object *mv_proto_doctor_json(const struct mv_kernel_features *features,
                                         int probe_rc, const char *problem);

/*
 * Shared by the two programs' option parsing: after getopt_long returned
 * '?' (or ':' for a missing value), what went wrong, in `why`: "unknown
 * option '-x'" (the letter itself, also inside a group such as -xy),
 * "option '--max' is ambiguous: --maxmem, --max-pages", "option '--json'
 * takes no value", "option '--rate' needs a value" or "unknown option
 * '--frob'".  `options` is the table given to getopt_long.
 */
struct option;
void mv_tool_bad_option(char *const *argv, const struct option *options, int result,
                        char *why, size_t size);

#endif /* MV_PROTOCOL_H */
