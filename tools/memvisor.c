/*
 * memvisor.c - the memvisor command-line tool, in the manner of Xen's `xl`:
 * one subcommand per operation, each a request to memvisord (protocol.h),
 * plus `doctor` (runs here), `bench` (runs memvisor-bench, found beside this
 * program), `demo` and `help`.
 *
 * Organisation: exit statuses and messages (as JSON under --json); options,
 * described once in a table from which both getopt's table and the --help
 * text are built, those that carry request arguments taking their name,
 * type and help from the protocol's schema (schema.h), and whose values
 * land in a JSON object under their request argument names; the connection
 * to memvisord, which begins with a hello; output formatting; one function
 * per subcommand (the `share` subcommands have a table of their own); the
 * demo; the command table (each command with the requests it sends, its
 * `wire` list) and main.
 *
 * Exit statuses: 0 success, 1 the daemon or the library said no (printed as
 * "memvisor: <cmd>: <error>: <detail>"), 2 a usage error (one line).  With
 * --json among the arguments a failure is instead one JSON object on stdout,
 * {"ok": false, "error": WORD, "errno": N, "detail": TEXT}.
 */
#include "qemu.h"
#include "memvisor-guest.h"
#include "protocol.h"
#include "schema.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

enum exit_status { STATUS_OK = 0, STATUS_FAILED = 1, STATUS_USAGE = 2 };

/* How long a waiting command sleeps in the daemon per workload-status. */
#define WSS_MAX_INTERVAL_S 86400u
#define WORKLOAD_POLL_MS 50u  /* between status polls, slept here: the daemon's loop
                                  serves everyone, and must not wait for us */
/* --help layout: lines of at most HELP_WIDTH columns, option names in a
 * column of their own. */
#define HELP_WIDTH 80
#define HELP_OPTION_WIDTH 22
/* getopt_long's value for a command's option i: OPTION_VALUE_BASE + i, clear
 * of the characters it returns itself. */
#define OPTION_VALUE_BASE 256

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */

/*
 * With --json anywhere among the arguments, a failure is one JSON object on
 * stdout, {"ok": false, "error": WORD, "errno": N, "detail": TEXT}, in the
 * shape of the daemon's error replies (and with the daemon's own words when
 * it said no), instead of a line on stderr; the exit status is the same.
 * Only the first failure of a run is printed so: stdout stays one object.
 */
static bool json_errors;
static bool json_error_printed;

/* Report a failure with errno `err` (positive); `word` is the error's word
 * (NULL: mv_strerror's) and `detail` what went wrong. */
static void report_json(int err, const char *word, const char *detail)
{
    struct json_object *error;

    if (json_error_printed)
        return;
    json_error_printed = true;
    error = json_object_new_object();
    json_object_object_add(error, "ok", json_object_new_boolean(0));
    json_object_object_add(error, "error", json_object_new_string(word ? word
                                                                       : mv_strerror(-err)));
    json_object_object_add(error, "errno", json_object_new_int(err));
    json_object_object_add(error, "detail", json_object_new_string(detail));
    printf("%s\n", json_object_to_json_string_ext(error, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE));
    fflush(stdout);
    json_object_put(error);
}

static void vreport(const char *command, int err, const char *suffix, const char *fmt,
                    va_list ap)
{
    char message[1024];

    vsnprintf(message, sizeof(message), fmt, ap);
    if (json_errors) {
        report_json(err, NULL, message);
        return;
    }
    fprintf(stderr, "memvisor: %s%s%s%s\n", command ? command : "", command ? ": " : "",
            message, suffix);
}

/* A usage error: one line, status 2. */
static int usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int usage_error(const char *command, const char *fmt, ...)
{
    char suffix[96];
    va_list ap;

    snprintf(suffix, sizeof(suffix), " (see memvisor%s%s --help)", command ? " " : "",
             command ? command : "");
    va_start(ap, fmt);
    vreport(command, EINVAL, suffix, fmt, ap);
    va_end(ap);
    return STATUS_USAGE;
}

/* A failure with errno `err`: one line, status 1. */
static int command_failed_errno(const char *command, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int command_failed_errno(const char *command, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport(command, err, "", fmt, ap);
    va_end(ap);
    return STATUS_FAILED;
}

/* A failure that no errno names (pages differ, a workload crashed its
 * domain): EIO for --json. */
#define command_failed(command, ...) command_failed_errno(command, EIO, __VA_ARGS__)

/* The daemon said no: its errno, word and detail. */
static int daemon_refused(const char *command, int err, const char *word, const char *detail)
{
    if (json_errors) {
        report_json(err, word, detail);
        return STATUS_FAILED;
    }
    if (detail[0])
        fprintf(stderr, "memvisor: %s: %s: %s\n", command, word, detail);
    else
        fprintf(stderr, "memvisor: %s: %s\n", command, word);
    return STATUS_FAILED;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                   */

enum value_kind {
    VALUE_FLAG,       /* no value: stored as true */
    VALUE_SIZE,       /* mv_proto_parse_size */
    VALUE_NUMBER,     /* mv_proto_parse_u64 */
    VALUE_ENUM,       /* one of the schema argument's words */
    VALUE_STRING,     /* any text */
};

/*
 * An option: either one of this tool's own (--json, --detach...), described
 * here, or the carrier of a request argument, named by `wire` (the schema
 * command) and `arg` (the argument's path there), whose name, value type,
 * words, metavar and help all come from the schema unless given here.
 */
struct cli_option {
    const char *name;       /* --name */
    enum value_kind kind;
    const char *key;        /* where the value goes in the parsed options */
    const char *metavar;    /* what --help shows as the value */
    const char *help;
    const char *wire, *arg; /* the request argument it carries */
};

/* An option as parsing and help see it, the schema's part filled in. */
struct resolved_option {
    struct cli_option o;
    const struct mv_schema_arg *arg; /* NULL for the tool's own */
    char name[40];
};

#define WIRE_OPTION(command, path) { .wire = (command), .arg = (path) }
#define TOOL_OPTION(option, value_kind, where, value, text)                            \
    { .name = (option), .kind = (value_kind), .key = (where), .metavar = (value),       \
      .help = (text) }

static const struct cli_option
    opt_json = TOOL_OPTION("json", VALUE_FLAG, "json", NULL, "print JSON instead of text"),
    opt_daemon = TOOL_OPTION("daemon", VALUE_FLAG, "daemon", NULL,
                   "ask memvisord what it sees instead of probing here"),
    opt_maxmem = WIRE_OPTION("create", "maxmem"),
    opt_target = WIRE_OPTION("create", "target"),
    opt_vcpus = WIRE_OPTION("create", "vcpus"),
    opt_policy = WIRE_OPTION("create", "policy"),
    opt_wait_timeout = WIRE_OPTION("create", "wait_timeout_ms"),
    opt_start_workload = { .name = "workload", .wire = "create", .arg = "workload.kind",
                           .help = "start a workload at once: scrub, random, verify, "
                                   "cleancache or frontswap (options below as for "
                                   "'memvisor workload')" },
    opt_create_rate = WIRE_OPTION("create", "workload.rate"),
    opt_create_duration = WIRE_OPTION("create", "workload.duration_ms"),
    opt_create_max_pages = WIRE_OPTION("create", "workload.max_pages"),
    opt_create_working_set = WIRE_OPTION("create", "workload.working_set"),
    opt_create_seed = WIRE_OPTION("create", "workload.seed"),
    opt_rate = WIRE_OPTION("workload-start", "rate"),
    opt_duration = WIRE_OPTION("workload-start", "duration_ms"),
    opt_workload_max_pages = WIRE_OPTION("workload-start", "max_pages"),
    opt_working_set = WIRE_OPTION("workload-start", "working_set"),
    opt_seed = WIRE_OPTION("workload-start", "seed"),
    opt_detach = TOOL_OPTION("detach", VALUE_FLAG, "detach", NULL,
                   "return once the workload started instead of waiting for it"),
    opt_reclaim_max_pages = WIRE_OPTION("reclaim", "max_pages"),
    opt_logdirty = WIRE_OPTION("create", "logdirty"),
    opt_cow_mode = WIRE_OPTION("create", "cow_mode"),
    opt_vmm = WIRE_OPTION("create", "vmm"),
    opt_kernel = WIRE_OPTION("create", "kernel"),
    opt_initrd = WIRE_OPTION("create", "initrd"),
    opt_append = WIRE_OPTION("create", "append"),
    opt_accel = WIRE_OPTION("create", "accel"),
    opt_console_bytes = WIRE_OPTION("console", "bytes"),
    opt_interval = TOOL_OPTION("interval", VALUE_NUMBER, "interval", "S",
                     "seconds between two fetches (default 1)"),
    opt_count = TOOL_OPTION("count", VALUE_NUMBER, "count", "N",
                  "stop after N intervals (default: until interrupted)"),
    opt_scan_pages = WIRE_OPTION("share-scan", "max_pages"),
    opt_scanner_rate = WIRE_OPTION("scanner-start", "rate"),
    opt_scanner_cpu = WIRE_OPTION("scanner-start", "cpu_percent"),
    opt_scanner_max_vmas = WIRE_OPTION("scanner-start", "max_vmas");

/* Fill in an option from the schema.  A reference to an argument the
 * schema lacks is this program's bug: said, and the option is left out. */
static bool resolve_option(const struct cli_option *o, struct resolved_option *out)
{
    const struct mv_schema_arg *a;
    const char *key;

    memset(out, 0, sizeof(*out));
    out->o = *o;
    if (!o->wire)
        return true;
    a = mv_schema_arg(mv_schema_find(o->wire), o->arg);
    if (!mv_schema_find(o->wire) || !a) {
        fprintf(stderr, "memvisor: internal error: no argument '%s' of '%s' in the "
                "schema\n", o->arg, o->wire);
        return false;
    }
    out->arg = a;
    key = strrchr(o->arg, '.');
    out->o.key = key ? key + 1 : o->arg;
    if (!o->name) {
        snprintf(out->name, sizeof(out->name), "%s", a->option ? a->option : a->name);
        for (char *c = out->name; *c; c++)
            if (*c == '_')
                *c = '-';
        out->o.name = out->name;
    }
    out->o.kind = a->type == MV_SCHEMA_SIZE ? VALUE_SIZE
                  : a->type == MV_SCHEMA_ENUM ? VALUE_ENUM
                  : a->type == MV_SCHEMA_BOOL ? VALUE_FLAG
                  : a->type == MV_SCHEMA_STRING ? VALUE_STRING : VALUE_NUMBER;
    if (!o->metavar)
        out->o.metavar = a->metavar ? a->metavar : "VALUE";
    if (!o->help)
        out->o.help = a->help;
    return true;
}

/* The request arguments that describe a workload. */
static const char *const workload_keys[] = {
    "kind", "rate", "duration_ms", "max_pages", "working_set", "seed", NULL,
};

struct invocation;

#define OPTIONS(...) ((const struct cli_option *const[]){ __VA_ARGS__, NULL })

struct command {
    const char *name;
    const char *operands;     /* synopsis of the operands */
    int min_operands, max_operands;
    const char *summary;      /* one line for `memvisor --help` */
    const char *description;  /* what `memvisor NAME --help` explains */
    const struct cli_option *const *options;
    int (*run)(const struct invocation *inv);
    bool own_arguments;       /* run parses its arguments itself */
    const char *const *wire;  /* the schema commands it sends, NULL-ended:
                               * --help describes their arguments */
};

#define WIRE(...) ((const char *const[]){ __VA_ARGS__, NULL })

struct invocation {
    const struct command *command;
    int argc;                 /* the command's arguments, name first */
    char **argv;
    const char *socket_path;
    char **operands;
    int operand_count;
    struct json_object *options;  /* option values under their keys */
};

static bool option_set(const struct invocation *inv, const char *key)
{
    return json_object_object_get_ex(inv->options, key, NULL);
}

/* A number option's value, 0 when it was not given. */
static uint64_t option_u64(const struct invocation *inv, const char *key)
{
    struct json_object *value;

    return json_object_object_get_ex(inv->options, key, &value)
           ? json_object_get_uint64(value) : 0;
}

static size_t option_count(const struct command *command)
{
    size_t n = 0;

    while (command->options && command->options[n])
        n++;
    return n;
}

/* Print `text` from column `column`, wrapped before HELP_WIDTH with
 * continuation lines starting at column `indent`. */
static void print_wrapped(const char *text, int column, int indent)
{
    while (*text) {
        int word = (int)strcspn(text, " ");

        if (column > indent && column + 1 + word > HELP_WIDTH) {
            printf("\n%*s", indent, "");
            column = indent;
        } else if (column > indent) {
            putchar(' ');
            column++;
        }
        printf("%.*s", word, text);
        column += word;
        text += word;
        text += strspn(text, " ");
    }
    putchar('\n');
}

/* One argument of a request, and the members of an object argument, for
 * --help: "NAME  TYPE, required|default X, at most N: HELP". */
static void print_request_arg(const struct mv_schema_arg *a, const char *prefix)
{
    char left[64], text[640], words[128];
    int n;

    snprintf(left, sizeof(left), "%s%s", prefix, a->name);
    n = snprintf(text, sizeof(text), "%s", mv_schema_type_name(a->type));
    if (a->type == MV_SCHEMA_ENUM)
        n += snprintf(text + n, sizeof(text) - (size_t)n, " (%s)",
                      mv_schema_words(a, words, sizeof(words)));
    if (a->required)
        n += snprintf(text + n, sizeof(text) - (size_t)n, ", required");
    else if (a->default_text)
        n += snprintf(text + n, sizeof(text) - (size_t)n, ", default %s", a->default_text);
    if (a->max)
        n += snprintf(text + n, sizeof(text) - (size_t)n, ", at most %" PRIu64, a->max);
    snprintf(text + n, sizeof(text) - (size_t)n, ": %s", a->help ? a->help : "");
    printf("  %-*s ", HELP_OPTION_WIDTH, left);
    print_wrapped(text, HELP_OPTION_WIDTH + 3, HELP_OPTION_WIDTH + 3);
    for (const struct mv_schema_arg *m = a->members; m && m->name; m++) {
        char nested[64];

        snprintf(nested, sizeof(nested), "%s%s.", prefix, a->name);
        print_request_arg(m, nested);
    }
}

/* The requests a command sends, from the schema. */
static void print_requests(const struct command *command)
{
    for (const char *const *w = command->wire; w && *w; w++) {
        const struct mv_schema_command *c = mv_schema_find(*w);

        if (!c)
            continue;
        printf("\nmemvisord request '%s'%s%s%s:\n", c->name,
               c->replies ? " (replies " : "", c->replies ? c->replies : "",
               c->replies ? ")" : "");
        if (!mv_schema_target(c)->args[0].name)
            printf("  (no arguments)\n");
        for (const struct mv_schema_arg *a = mv_schema_target(c)->args; a->name; a++)
            print_request_arg(a, "");
    }
}

static void print_command_help(const struct command *command)
{
    size_t n = option_count(command);

    printf("usage: memvisor %s%s%s%s\n\n%s\n", command->name, n ? " [options]" : "",
           command->operands[0] ? " " : "", command->operands, command->description);
    printf("\noptions:\n");
    for (size_t i = 0; i < n; i++) {
        struct resolved_option r;
        char left[64];

        if (!resolve_option(command->options[i], &r))
            continue;
        snprintf(left, sizeof(left), "--%s%s%s", r.o.name, r.o.metavar ? " " : "",
                 r.o.metavar ? r.o.metavar : "");
        printf("  %-*s ", HELP_OPTION_WIDTH, left);
        print_wrapped(r.o.help, HELP_OPTION_WIDTH + 3, HELP_OPTION_WIDTH + 3);
    }
    printf("  %-*s %s\n", HELP_OPTION_WIDTH, "--help", "show this help");
    print_requests(command);
}

/* Parse one option's value into inv->options. */
static int store_option(const struct invocation *inv, const struct resolved_option *r,
                        const char *value)
{
    const char *command = inv->command->name;
    const struct cli_option *o = &r->o;
    struct json_object *stored = NULL;
    char words[128];
    uint64_t number;
    bool known = false;
    int rc;

    switch (o->kind) {
    case VALUE_FLAG:
        stored = json_object_new_boolean(1);
        break;
    case VALUE_SIZE:
        rc = mv_proto_parse_size(value, &number);
        if (rc < 0)
            return usage_error(command, "--%s: '%s' is %s", o->name, value,
                               mv_proto_size_error(rc));
        stored = json_object_new_uint64(number);
        break;
    case VALUE_NUMBER:
        rc = mv_proto_parse_u64(value, &number);
        if (rc < 0)
            return usage_error(command, "--%s: '%s' is %s", o->name, value,
                               rc == -ERANGE ? "too large for 64 bits" : "not a number");
        stored = json_object_new_uint64(number);
        break;
    case VALUE_ENUM:
        for (const char *const *w = r->arg->values; w && *w; w++)
            known |= strcmp(*w, value) == 0;
        if (!known)
            return usage_error(command, "--%s: '%s' is not %s", o->name, value,
                               mv_schema_words(r->arg, words, sizeof(words)));
        stored = json_object_new_string(value);
        break;
    case VALUE_STRING:
        stored = json_object_new_string(value);
        break;
    }
    json_object_object_add(inv->options, o->key, stored);
    return STATUS_OK;
}

/*
 * Parse a subcommand's options and operands (argv[0] is its name).
 * Returns -1 to go on, or the exit status (after --help: 0).
 */
static int parse_command_line(struct invocation *inv, int argc, char **argv)
{
    const struct command *command = inv->command;
    size_t n = option_count(command);
    struct option *table = calloc(n + 2, sizeof(*table));
    struct resolved_option *resolved = calloc(n + 1, sizeof(*resolved));
    int opt, status = -1;

    if (!table || !resolved) {
        free(table);
        free(resolved);
        return command_failed_errno(command->name, ENOMEM, "no memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (!resolve_option(command->options[i], &resolved[i])) {
            free(table);
            free(resolved);
            return command_failed_errno(command->name, EPROTO, "the schema lacks an "
                                        "argument this command needs");
        }
        table[i] = (struct option){ resolved[i].o.name,
                                    resolved[i].o.kind == VALUE_FLAG
                                        ? no_argument : required_argument,
                                    NULL, OPTION_VALUE_BASE + (int)i };
    }
    table[n] = (struct option){ "help", no_argument, NULL, 'h' };
    optind = 0; /* a fresh scan of a new argument vector */
    opterr = 0;
    while (status < 0 && (opt = getopt_long(argc, argv, ":h", table, NULL)) != -1) {
        if (opt == 'h') {
            print_command_help(command);
            status = STATUS_OK;
        } else if (opt == ':' || opt == '?') {
            char why[160];

            mv_tool_bad_option(argv, table, opt, why, sizeof(why));
            status = usage_error(command->name, "%s", why);
        } else if (store_option(inv, &resolved[opt - OPTION_VALUE_BASE], optarg) !=
                   STATUS_OK) {
            status = STATUS_USAGE;
        }
    }
    free(table);
    free(resolved);
    if (status >= 0)
        return status;
    inv->operands = argv + optind;
    inv->operand_count = argc - optind;
    if (inv->operand_count < command->min_operands)
        return usage_error(command->name, "expects %s", command->operands);
    if (inv->operand_count > command->max_operands)
        return usage_error(command->name, "unexpected argument '%s'",
                           inv->operands[command->max_operands]);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* The connection to memvisord                                               */

struct connection {
    int fd;
    struct mv_proto_reader reader;
    const char *command;      /* for messages */
    struct json_object *hello; /* the daemon's reply to our hello; NULL from a
                                * daemon older than the hello */
};

/*
 * Say hello: our protocol version and name; the daemon's versions come
 * back.  A daemon of another major version is refused here, before any
 * request it could misread.  A daemon older than the hello says "unknown
 * command 'hello'": it speaks protocol 1.0, and is served as before.
 */
static int connection_hello(struct connection *conn, bool quiet)
{
    struct json_object *request = mv_proto_request_new("hello"), *reply = NULL;
    const char *error, *detail, *protocol = "";
    char why[MV_PROTO_DETAIL_MAX], client[48];
    unsigned major, minor;
    int rc;

    snprintf(client, sizeof(client), "memvisor %d.%d.%d", MV_VERSION_MAJOR,
             MV_VERSION_MINOR, MV_VERSION_PATCH);
    json_object_object_add(request, "protocol", json_object_new_string(MV_PROTO_VERSION));
    json_object_object_add(request, "client", json_object_new_string(client));
    rc = mv_proto_call(conn->fd, &conn->reader, request, &reply, why);
    json_object_put(request);
    if (rc < 0)
        return quiet ? STATUS_FAILED : command_failed_errno(conn->command, -rc, "%s", why);
    rc = mv_proto_reply_status(reply, &error, &detail);
    if (rc == -EINVAL && strstr(detail, "unknown command 'hello'")) {
        json_object_put(reply);
        return STATUS_OK;
    }
    if (rc < 0) {
        int status = quiet ? STATUS_FAILED
                           : daemon_refused(conn->command, -rc, error, detail);

        json_object_put(reply);
        return status;
    }
    mv_proto_arg_string(reply, "protocol", false, &protocol, why);
    if (mv_proto_parse_version(protocol, &major, &minor) < 0 ||
        major != MV_PROTO_VERSION_MAJOR) {
        rc = quiet ? STATUS_FAILED
                   : command_failed_errno(conn->command, EPROTONOSUPPORT,
                                          "memvisord speaks protocol %s and this memvisor "
                                          "%s: their major versions differ, so neither "
                                          "can trust what the other means; use the "
                                          "memvisor of memvisord's release",
                                          protocol[0] ? protocol : "(none)",
                                          MV_PROTO_VERSION);
        json_object_put(reply);
        return rc;
    }
    conn->hello = reply;
    return STATUS_OK;
}

static int connection_open(struct connection *conn, const char *command,
                           const char *socket_path, bool quiet)
{
    char why[MV_PROTO_DETAIL_MAX];
    struct sockaddr_un address;
    socklen_t length;
    int rc = mv_proto_socket_address(socket_path, &address, &length, why);

    conn->command = command;
    conn->fd = -1;
    conn->hello = NULL;
    mv_proto_reader_init(&conn->reader, MV_PROTO_MAX_REPLY);
    if (rc < 0)
        return quiet ? STATUS_FAILED : command_failed_errno(command, -rc, "%s", why);
    conn->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (conn->fd >= 0 && connect(conn->fd, (struct sockaddr *)&address, length) == 0) {
        rc = connection_hello(conn, quiet);
        if (rc != STATUS_OK) {
            close(conn->fd);
            conn->fd = -1;
        }
        return rc;
    }
    rc = errno;
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
    if (quiet)
        return STATUS_FAILED;
    return command_failed_errno(command, rc, "cannot reach memvisord at %s: %s (is it running? "
                          "--socket and $%s choose the socket)", socket_path,
                          strerror(rc), MV_PROTO_SOCKET_ENV);
}

static void connection_close(struct connection *conn)
{
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
    json_object_put(conn->hello);
    conn->hello = NULL;
    mv_proto_reader_free(&conn->reader);
}

/*
 * Send `request` (consumed) and take the reply.  STATUS_OK with *reply set,
 * or STATUS_FAILED after printing why (the daemon's error reply included).
 */
static int connection_call(struct connection *conn, struct json_object *request,
                           struct json_object **reply)
{
    char why[MV_PROTO_DETAIL_MAX];
    const char *error, *detail;
    int rc = mv_proto_call(conn->fd, &conn->reader, request, reply, why);

    json_object_put(request);
    if (rc < 0)
        return command_failed_errno(conn->command, -rc, "%s", why);
    rc = mv_proto_reply_status(*reply, &error, &detail);
    if (rc == 0)
        return STATUS_OK;
    daemon_refused(conn->command, -rc, error, detail);
    json_object_put(*reply);
    *reply = NULL;
    return STATUS_FAILED;
}

/* One request on a connection of its own; the reply goes to *reply when
 * `reply` is not NULL. */
static int request_once(const struct invocation *inv, struct json_object *request,
                        struct json_object **reply)
{
    struct connection conn;
    struct json_object *answer = NULL;
    int status = connection_open(&conn, inv->command->name, inv->socket_path, false);

    if (status == STATUS_OK)
        status = connection_call(&conn, request, &answer);
    else
        json_object_put(request);
    connection_close(&conn);
    if (reply)
        *reply = answer;
    else
        json_object_put(answer);
    return status;
}

/* A request for this command with {"domain": operand 0}. */
static struct json_object *domain_request(const struct invocation *inv, const char *cmd)
{
    struct json_object *request = mv_proto_request_new(cmd);

    json_object_object_add(request, "domain", json_object_new_string(inv->operands[0]));
    return request;
}

/* Copy option `key`, when given, into `request`. */
static void copy_option(const struct invocation *inv, struct json_object *request,
                        const char *key)
{
    struct json_object *value;

    if (json_object_object_get_ex(inv->options, key, &value))
        json_object_object_add(request, key, json_object_get(value));
}

/* ------------------------------------------------------------------------ */
/* Reading replies and printing                                              */

/* The member `key` of a reply object, or NULL. */
static struct json_object *field(struct json_object *object, const char *key)
{
    struct json_object *value = NULL;

    json_object_object_get_ex(object, key, &value);
    return value;
}

static uint64_t field_u64(struct json_object *object, const char *key)
{
    char why[MV_PROTO_DETAIL_MAX];
    uint64_t value = 0;

    mv_proto_arg_u64(object, key, false, &value, why);
    return value;
}

static const char *field_string(struct json_object *object, const char *key)
{
    char why[MV_PROTO_DETAIL_MAX];
    const char *value = "";

    mv_proto_arg_string(object, key, false, &value, why);
    return value;
}

static bool field_bool(struct json_object *object, const char *key)
{
    return json_object_get_boolean(field(object, key));
}

/* Elements of an array member; 0 when it is not an array. */
static size_t field_length(struct json_object *object, const char *key)
{
    struct json_object *array = field(object, key);

    return json_object_is_type(array, json_type_array) ? json_object_array_length(array) : 0;
}

static struct json_object *field_item(struct json_object *object, const char *key, size_t i)
{
    return json_object_array_get_idx(field(object, key), i);
}

/* Pages as a size for humans. */
static const char *pages_text(char *buf, size_t size, uint64_t pages)
{
    return mv_proto_format_size(buf, size, pages * MV_PAGE_SIZE);
}

static double seconds(uint64_t ns)
{
    return (double)ns / 1e9;
}

/* Print a reply as JSON, without its "ok". */
static void print_json(struct json_object *reply)
{
    json_object_object_del(reply, "ok");
    printf("%s\n", json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PRETTY |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* ------------------------------------------------------------------------ */
/* doctor                                                                    */

static void print_doctor(struct json_object *report)
{
    struct json_object *uffd = field(report, "userfaultfd");
    char size[32];

    printf("kernel            %s\n", field_string(report, "kernel_release"));
    if (field_bool(uffd, "available"))
        printf("userfaultfd       opened through %s, %s (features %s)\n",
               field_string(uffd, "opened_through"),
               field_bool(uffd, "user_mode_only") ? "user-mode faults only"
                                                  : "user and kernel faults",
               field_string(uffd, "features"));
    else
        printf("userfaultfd       not available\n");
    printf("features\n");
    for (size_t i = 0; i < field_length(report, "features"); i++) {
        struct json_object *f = field_item(report, "features", i);

        printf("  %-4s %s (Linux %s%s)\n", field_bool(f, "present") ? "yes" : "NO",
               field_string(f, "description"), field_string(f, "since"),
               field_bool(f, "required") ? ", required" : "");
    }
    printf("vm.max_map_count  %" PRIu64 "\n", field_u64(report, "max_map_count"));
    printf("shmem THP         %s\n", field_string(report, "shmem_thp"));
    printf("MemAvailable      %s\n",
           mv_proto_format_size(size, sizeof(size), field_u64(report, "mem_available_bytes")));
    if (field_length(report, "advice")) {
        printf("advice\n");
        for (size_t i = 0; i < field_length(report, "advice"); i++)
            printf("  - %s\n", json_object_get_string(field_item(report, "advice", i)));
    }
    if (field_bool(report, "usable"))
        printf("memvisor can run on this kernel.\n");
    else
        printf("memvisor cannot run on this kernel: %s\n", field_string(report, "problem"));
}

/* The local doctor report (caller owns it); *usable tells the verdict. */
static struct json_object *doctor_report_here(bool *usable)
{
    struct mv_kernel_features features;
    int rc = mv_probe_kernel(&features);

    *usable = rc == 0;
    return mv_proto_doctor_json(&features, rc, mv_last_error());
}

static int run_doctor(const struct invocation *inv)
{
    struct json_object *reply = NULL, *report;
    bool usable;
    int status;

    if (option_set(inv, "daemon")) {
        status = request_once(inv, mv_proto_request_new("doctor"), &reply);
        if (status != STATUS_OK)
            return status;
        report = json_object_get(field(reply, "doctor"));
        json_object_put(reply);
        if (!json_object_is_type(report, json_type_object)) {
            json_object_put(report);
            return command_failed(inv->command->name, "memvisord sent no report");
        }
        usable = field_bool(report, "usable");
    } else {
        report = doctor_report_here(&usable);
    }
    if (option_set(inv, "json"))
        print_json(report);
    else
        print_doctor(report);
    json_object_put(report);
    return usable ? STATUS_OK : STATUS_FAILED;
}

/* ------------------------------------------------------------------------ */
/* Domain life cycle                                                         */

static int run_create(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("create"), *reply;
    int status;

    if (!option_set(inv, "maxmem")) {
        json_object_put(request);
        return usage_error(inv->command->name, "--maxmem is required");
    }
    json_object_object_add(request, "name", json_object_new_string(inv->operands[0]));
    copy_option(inv, request, "maxmem");
    copy_option(inv, request, "target");
    copy_option(inv, request, "vcpus");
    copy_option(inv, request, "policy");
    copy_option(inv, request, "wait_timeout_ms");
    copy_option(inv, request, "logdirty");
    copy_option(inv, request, "cow_mode");
    copy_option(inv, request, "vmm");
    copy_option(inv, request, "kernel");
    copy_option(inv, request, "initrd");
    copy_option(inv, request, "append");
    copy_option(inv, request, "accel");
    if (option_set(inv, "kind")) {
        struct json_object *workload = json_object_new_object();

        for (const char *const *key = workload_keys; *key; key++)
            copy_option(inv, workload, *key);
        json_object_object_add(request, "workload", workload);
    } else {
        for (const char *const *key = workload_keys; *key; key++) {
            if (option_set(inv, *key)) {
                json_object_put(request);
                return usage_error(inv->command->name, "workload options need "
                                   "--workload KIND");
            }
        }
    }
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("created domain %" PRIu64 " (%s)\n", field_u64(reply, "domid"),
           field_string(reply, "name"));
    if (field(reply, "pid"))
        printf("QEMU %" PRIu64 "; console %s, guest control %s, QMP %s\n",
               field_u64(reply, "pid"), field_string(reply, "console"),
               field_string(reply, "control"), field_string(reply, "qmp"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_console(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "console"), *reply;
    int status;

    copy_option(inv, request, "bytes");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    fputs(field_string(reply, "text"), stdout);
    json_object_put(reply);
    return STATUS_OK;
}

static int run_qmp(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "qmp"), *reply;
    int status;

    json_object_object_add(request, "command", json_object_new_string(inv->operands[1]));
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("%s\n", field_string(reply, "reply"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_destroy(const struct invocation *inv)
{
    return request_once(inv, domain_request(inv, "destroy"), NULL);
}

static int run_pause(const struct invocation *inv)
{
    return request_once(inv, domain_request(inv, "pause"), NULL);
}

static int run_unpause(const struct invocation *inv)
{
    return request_once(inv, domain_request(inv, "unpause"), NULL);
}

static int run_list(const struct invocation *inv)
{
    struct json_object *reply;
    char maxmem[32], target[32], populated[32], shared[32];
    int status = request_once(inv, mv_proto_request_new("list"), &reply);

    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json")) {
        print_json(reply);
        json_object_put(reply);
        return STATUS_OK;
    }
    printf("%4s  %-16s %-8s %5s %10s %10s %10s %10s %s\n", "ID", "NAME", "STATE", "VCPUS",
           "MAXMEM", "TARGET", "POPULATED", "SHARED", "COW");
    for (size_t i = 0; i < field_length(reply, "domains"); i++) {
        struct json_object *d = field_item(reply, "domains", i);

        printf("%4" PRIu64 "  %-16s %-8s %5" PRIu64 " %10s %10s %10s %10s %s\n",
               field_u64(d, "domid"), field_string(d, "name"), field_string(d, "state"),
               field_u64(d, "vcpus"),
               pages_text(maxmem, sizeof(maxmem), field_u64(d, "maxmem_pages")),
               pages_text(target, sizeof(target), field_u64(d, "target_pages")),
               pages_text(populated, sizeof(populated), field_u64(d, "populated_pages")),
               pages_text(shared, sizeof(shared), field_u64(d, "shared_pages")),
               field_string(d, "cow_mode"));
    }
    json_object_put(reply);
    return STATUS_OK;
}

/* ------------------------------------------------------------------------ */
/* stats                                                                     */

static void print_stats(struct json_object *reply)
{
    struct json_object *host = field(reply, "host");
    size_t count = field_length(reply, "domains");
    char budget[32], populated[32], peak[32], metadata[32];
    const char *fault_path = field_string(host, "fault_path");
    bool crash_seen = false;

    /* A daemon older than --fault-path does not tell it. */
    printf("host: budget %s, populated %s (peak %s), metadata %s, domains %" PRIu64
           ", faults served %" PRIu64 " by %" PRIu64 " fault threads (%s)%s%s\n",
           pages_text(budget, sizeof(budget), field_u64(host, "budget_pages")),
           pages_text(populated, sizeof(populated), field_u64(host, "populated_pages")),
           pages_text(peak, sizeof(peak), field_u64(host, "peak_populated_pages")),
           mv_proto_format_size(metadata, sizeof(metadata), field_u64(host, "metadata_bytes")),
           field_u64(host, "domains"), field_u64(host, "faults"),
           field_u64(host, "fault_threads"), field_string(host, "fault_mode"),
           fault_path[0] ? ", fault path " : "", fault_path);
    /* Background scrubbing: what destroyed domains still hold. */
    if (strcmp(field_string(host, "scrub_mode"), "background") == 0) {
        char pending[32], charged[32], scrubbed[32];

        printf("scrub: background, %s of frames waiting (holding %s of the budget), "
               "%s scrubbed so far, %" PRIu64 " scrubs fell back to zeroing\n",
               pages_text(pending, sizeof(pending), field_u64(host, "scrub_pending_pages")),
               pages_text(charged, sizeof(charged),
                          field_u64(host, "scrub_pending_charged_pages")),
               pages_text(scrubbed, sizeof(scrubbed),
                          field_u64(host, "scrubbed_background_pages")),
               field_u64(host, "scrub_failures"));
    }
    printf("\n");
    printf("%4s  %-12s %-7s %10s %10s %10s %10s %10s %8s %9s %6s %8s %6s %10s %6s %10s "
           "%9s %9s\n",
           "ID", "NAME", "STATE", "MAXMEM", "TARGET", "POPULATED", "POD", "BALLOONED",
           "FAULTS", "IN-THREAD", "2M", "4K", "SWEEPS", "RECLAIMED", "WAITS", "SHARED",
           "COWBREAKS", "METADATA");
    for (size_t i = 0; i < count; i++) {
        struct json_object *d = field_item(reply, "domains", i);
        char sizes[8][32], in_thread[24];

        /* Of the faults, those its vCPUs resolved in their own threads;
         * "-" when every fault of the domain goes to the fault threads
         * (fault path thread, a real guest, wp-sync dirty logging). */
        if (field_bool(d, "fault_in_thread") || field_u64(d, "faults_in_thread"))
            snprintf(in_thread, sizeof(in_thread), "%" PRIu64,
                     field_u64(d, "faults_in_thread"));
        else
            snprintf(in_thread, sizeof(in_thread), "-");
        printf("%4" PRIu64 "  %-12s %-7s %10s %10s %10s %10s %10s %8" PRIu64 " %9s %6" PRIu64
               " %8" PRIu64 " %6" PRIu64 " %10s %6" PRIu64 " %10s %9" PRIu64 " %9s\n",
               field_u64(d, "domid"), field_string(d, "name"), field_string(d, "state"),
               pages_text(sizes[0], sizeof(sizes[0]), field_u64(d, "maxmem_pages")),
               pages_text(sizes[1], sizeof(sizes[1]), field_u64(d, "target_pages")),
               pages_text(sizes[2], sizeof(sizes[2]), field_u64(d, "populated_pages")),
               pages_text(sizes[3], sizeof(sizes[3]), field_u64(d, "pod_pages")),
               pages_text(sizes[4], sizeof(sizes[4]), field_u64(d, "ballooned_pages")),
               field_u64(d, "faults"), in_thread, field_u64(d, "populated_2m"),
               field_u64(d, "populated_4k"), field_u64(d, "sweeps"),
               pages_text(sizes[5], sizeof(sizes[5]), field_u64(d, "reclaimed_zero")),
               field_u64(d, "pod_waits"),
               pages_text(sizes[6], sizeof(sizes[6]), field_u64(d, "shared_pages")),
               field_u64(d, "cow_breaks"),
               mv_proto_format_size(sizes[7], sizeof(sizes[7]), field_u64(d, "metadata_bytes")));
    }
    for (size_t i = 0; i < count; i++) {
        struct json_object *d = field_item(reply, "domains", i);

        if (!field_string(d, "crash_reason")[0])
            continue;
        printf("%sdomain %" PRIu64 " (%s) crashed: %s%s%s\n", crash_seen ? "" : "\n",
               field_u64(d, "domid"), field_string(d, "name"),
               field_string(d, "crash_reason"), field_string(d, "vmm_exit")[0] ? "; " : "",
               field_string(d, "vmm_exit"));
        crash_seen = true;
    }
}

/* A report of every domain, or of the one named: as JSON or through
 * `print`. */
static int run_report(const struct invocation *inv, const char *type,
                      void (*print)(struct json_object *reply))
{
    struct json_object *request = mv_proto_request_new(type), *reply;
    int status;

    if (inv->operand_count)
        json_object_object_add(request, "domain", json_object_new_string(inv->operands[0]));
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json"))
        print_json(reply);
    else
        print(reply);
    json_object_put(reply);
    return STATUS_OK;
}

static int run_stats(const struct invocation *inv)
{
    return run_report(inv, "stats", print_stats);
}

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */

/* Operand `index` as a size, or a usage error. */
static int size_operand(const struct invocation *inv, int index, uint64_t *bytes)
{
    const char *text = inv->operands[index];
    int rc = mv_proto_parse_size(text, bytes);

    if (rc < 0)
        return usage_error(inv->command->name, "'%s' is %s", text, mv_proto_size_error(rc));
    return STATUS_OK;
}

static int run_set_target(const struct invocation *inv)
{
    struct json_object *request;
    uint64_t target;
    int status = size_operand(inv, 1, &target);

    if (status != STATUS_OK)
        return status;
    request = domain_request(inv, "set-target");
    json_object_object_add(request, "target", json_object_new_uint64(target));
    return request_once(inv, request, NULL);
}

static int run_balloon(const struct invocation *inv)
{
    struct json_object *request, *reply;
    char moved[32];
    uint64_t size;
    int status = size_operand(inv, 1, &size);

    if (status != STATUS_OK)
        return status;
    request = domain_request(inv, "balloon");
    json_object_object_add(request, "size", json_object_new_uint64(size));
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("balloon: moved %" PRIu64 " pages (%s)\n", field_u64(reply, "pages_moved"),
           pages_text(moved, sizeof(moved), field_u64(reply, "pages_moved")));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_reclaim(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "reclaim"), *reply;
    char reclaimed[32];
    int status;

    copy_option(inv, request, "max_pages");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("reclaim: examined %" PRIu64 " pages, returned %" PRIu64 " zero pages (%s) "
           "to the host in %.3f s\n", field_u64(reply, "scanned"),
           field_u64(reply, "reclaimed"),
           pages_text(reclaimed, sizeof(reclaimed), field_u64(reply, "reclaimed")),
           seconds(field_u64(reply, "elapsed_ns")));
    if (json_object_object_get_ex(reply, "vmm_pages_freed", NULL))
        printf("reclaim: QEMU's own blocks gave back %" PRIu64 " zero pages (%s)\n",
               field_u64(reply, "vmm_pages_freed"),
               pages_text(reclaimed, sizeof(reclaimed), field_u64(reply, "vmm_pages_freed")));
    json_object_put(reply);
    return STATUS_OK;
}

/* ------------------------------------------------------------------------ */
/* Workloads and checks                                                      */

static void print_workload_status(const char *domain, struct json_object *status)
{
    printf("workload on %s: %s, %" PRIu64 " pages in %.2f s", domain,
           field_bool(status, "finished") ? "finished" : "running",
           field_u64(status, "pages_done"), seconds(field_u64(status, "elapsed_ns")));
    if (field_u64(status, "mismatches"))
        printf(", %" PRIu64 " pages differ from the oracle (first at gfn %#" PRIx64 ")",
               field_u64(status, "mismatches"), field_u64(status, "first_bad_gfn"));
    if (field_bool(status, "crashed"))
        printf(", the domain crashed (see memvisor stats %s)", domain);
    printf("\n");
}

/* Exit status of a finished workload: failed when it found or caused harm. */
static int workload_outcome(const struct invocation *inv, struct json_object *status)
{
    if (field_bool(status, "crashed"))
        return command_failed(inv->command->name, "domain %s crashed during the workload",
                              inv->operands[0]);
    if (field_u64(status, "mismatches"))
        return command_failed(inv->command->name, "%" PRIu64 " pages of %s differ from "
                              "the oracle", field_u64(status, "mismatches"),
                              inv->operands[0]);
    return STATUS_OK;
}

/* Poll workload-status on `conn` until the workload of `domain` finishes;
 * *status gets its last status. */
static int workload_wait(struct connection *conn, const char *domain,
                         struct json_object **status)
{
    struct json_object *reply = NULL;

    for (;;) {
        struct json_object *request = mv_proto_request_new("workload-status");
        int rc;

        json_object_object_add(request, "domain", json_object_new_string(domain));
        rc = connection_call(conn, request, &reply);
        if (rc != STATUS_OK)
            return rc;
        if (field_bool(field(reply, "workload"), "finished"))
            break;
        json_object_put(reply);
        usleep(WORKLOAD_POLL_MS * 1000);
    }
    *status = json_object_get(field(reply, "workload"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_workload(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "workload-start"), *reply, *status;
    const char *kind = inv->operands[1];
    enum mv_workload_kind parsed;
    struct connection conn;
    bool endless;
    int rc;

    if (mv_proto_workload_parse(kind, &parsed) < 0) {
        json_object_put(request);
        return usage_error(inv->command->name,
                           "'%s' is not scrub, random, verify, cleancache or frontswap", kind);
    }
    json_object_object_add(request, "kind", json_object_new_string(kind));
    for (const char *const *key = workload_keys + 1; *key; key++)
        copy_option(inv, request, *key);
    /* 0 is "no limit" to the library, as is leaving the option out. */
    endless = parsed == MV_WORKLOAD_RANDOM && option_u64(inv, "duration_ms") == 0 &&
              option_u64(inv, "max_pages") == 0;

    rc = connection_open(&conn, inv->command->name, inv->socket_path, false);
    if (rc != STATUS_OK) {
        json_object_put(request);
        return rc;
    }
    rc = connection_call(&conn, request, &reply);
    if (rc == STATUS_OK) {
        json_object_put(reply);
        if (option_set(inv, "detach") || endless) {
            printf("%s started on %s%s\n", kind, inv->operands[0],
                   endless ? "; stop it with 'memvisor workload-stop'" : "");
        } else {
            rc = workload_wait(&conn, inv->operands[0], &status);
            if (rc == STATUS_OK) {
                print_workload_status(inv->operands[0], status);
                rc = workload_outcome(inv, status);
                json_object_put(status);
            }
        }
    }
    connection_close(&conn);
    return rc;
}

static int run_workload_status(const struct invocation *inv)
{
    struct json_object *reply;
    int status = request_once(inv, domain_request(inv, "workload-status"), &reply);

    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json"))
        print_json(reply);
    else
        print_workload_status(inv->operands[0], field(reply, "workload"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_workload_stop(const struct invocation *inv)
{
    return request_once(inv, domain_request(inv, "workload-stop"), NULL);
}

/* ------------------------------------------------------------------------ */
/* Dirty logging                                                             */

static void print_logdirty_stats(const char *domain, struct json_object *l)
{
    printf("dirty log of %s: %s, mechanism %s; %" PRIu64 " rounds, %" PRIu64
           " pages in the last (fetched in %.3f ms), %" PRIu64 " in all; %" PRIu64
           " write traps; protecting all memory took %.3f ms\n", domain,
           field_bool(l, "enabled") ? "on" : "off", field_string(l, "mode"),
           field_u64(l, "rounds"), field_u64(l, "last_dirty"),
           (double)field_u64(l, "last_fetch_ns") / 1e6, field_u64(l, "total_dirty"),
           field_u64(l, "faults"), (double)field_u64(l, "protect_ns") / 1e6);
}

static int logdirty_request(const struct invocation *inv, const char *action,
                            struct json_object **reply)
{
    struct json_object *request = domain_request(inv, "logdirty");

    json_object_object_add(request, "action", json_object_new_string(action));
    return request_once(inv, request, reply);
}

static int run_logdirty(const struct invocation *inv)
{
    static const char *const actions[] = { "enable", "disable", "clean", "peek", "stats" };
    const char *action = inv->operands[1];
    struct json_object *reply;
    bool known = false;
    int status;

    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        known |= strcmp(action, actions[i]) == 0;
    if (!known)
        return usage_error(inv->command->name, "'%s' is not enable, disable, clean, "
                           "peek or stats", action);
    status = logdirty_request(inv, action, &reply);
    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json")) {
        print_json(reply);
    } else {
        if (json_object_object_get_ex(reply, "dirty_pages", NULL))
            printf("%s: %" PRIu64 " dirty pages, %" PRIu64 " of them now hold no data\n",
                   action, field_u64(reply, "dirty_pages"), field_u64(reply, "zero_pages"));
        print_logdirty_stats(inv->operands[0], field(reply, "logdirty"));
    }
    json_object_put(reply);
    return STATUS_OK;
}

static volatile sig_atomic_t wss_interrupted;

static void on_wss_interrupt(int sig)
{
    (void)sig;
    wss_interrupted = 1;
}

/* The working-set estimate: pages written per interval, from dirty-log
 * rounds.  Logging is switched on for the measurement if it was off, and off
 * again afterwards. */
static int run_wss(const struct invocation *inv)
{
    uint64_t interval = 1, count = 0;
    struct json_object *reply, *option;
    struct sigaction sa = { .sa_handler = on_wss_interrupt };
    bool enabled_here = false;
    int status;

    if (json_object_object_get_ex(inv->options, "interval", &option))
        interval = json_object_get_uint64(option);
    if (json_object_object_get_ex(inv->options, "count", &option))
        count = json_object_get_uint64(option);
    if (interval == 0 || interval > WSS_MAX_INTERVAL_S)
        return usage_error(inv->command->name, "--interval must be 1 to %u seconds",
                           WSS_MAX_INTERVAL_S);
    status = logdirty_request(inv, "stats", &reply);
    if (status != STATUS_OK)
        return status;
    if (!field_bool(field(reply, "logdirty"), "enabled")) {
        json_object_put(reply);
        status = logdirty_request(inv, "enable", &reply);
        if (status != STATUS_OK)
            return status;
        enabled_here = true;
    }
    json_object_put(reply);
    /* A first fetch sets the baseline: what was written before we looked. */
    status = logdirty_request(inv, "clean", &reply);
    if (status != STATUS_OK)
        return status;
    json_object_put(reply);
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (!option_set(inv, "json"))
        printf("%8s  %12s  %12s  %10s\n", "seconds", "pages", "written", "fetch ms");
    for (uint64_t i = 1; (count == 0 || i <= count) && !wss_interrupted; i++) {
        char size[32];

        sleep((unsigned)interval);
        if (wss_interrupted)
            break;
        status = logdirty_request(inv, "clean", &reply);
        if (status != STATUS_OK)
            break;
        if (option_set(inv, "json")) {
            printf("{\"seconds\":%" PRIu64 ",\"pages\":%" PRIu64 ",\"zero_pages\":%"
                   PRIu64 ",\"fetch_ns\":%" PRIu64 "}\n", i * interval,
                   field_u64(reply, "dirty_pages"), field_u64(reply, "zero_pages"),
                   field_u64(field(reply, "logdirty"), "last_fetch_ns"));
        } else {
            printf("%8" PRIu64 "  %12" PRIu64 "  %12s  %10.3f\n", i * interval,
                   field_u64(reply, "dirty_pages"),
                   pages_text(size, sizeof(size), field_u64(reply, "dirty_pages")),
                   (double)field_u64(field(reply, "logdirty"), "last_fetch_ns") / 1e6);
        }
        fflush(stdout);
        json_object_put(reply);
    }
    if (enabled_here) {
        int off = logdirty_request(inv, "disable", &reply);

        if (off == STATUS_OK)
            json_object_put(reply);
        else if (status == STATUS_OK)
            status = off;
    }
    return status;
}

static int run_verify(const struct invocation *inv)
{
    struct json_object *reply;
    uint64_t mismatches;
    int status = request_once(inv, domain_request(inv, "verify"), &reply);

    if (status != STATUS_OK)
        return status;
    mismatches = field_u64(reply, "mismatches");
    if (mismatches)
        status = command_failed(inv->command->name, "%" PRIu64 " pages of %s differ from "
                                "the content oracle, the first at gfn %#" PRIx64,
                                mismatches, inv->operands[0],
                                field_u64(reply, "first_bad_gfn"));
    else
        printf("content oracle: every page of %s holds what its guest wrote\n",
               inv->operands[0]);
    json_object_put(reply);
    return status;
}

static int run_audit(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("audit");
    int status;

    if (inv->operand_count)
        json_object_object_add(request, "domain", json_object_new_string(inv->operands[0]));
    status = request_once(inv, request, NULL);
    if (status == STATUS_OK)
        printf("audit: every invariant of %s holds\n",
               inv->operand_count ? inv->operands[0] : "the host");
    return status;
}

static int run_shutdown(const struct invocation *inv)
{
    return request_once(inv, mv_proto_request_new("shutdown"), NULL);
}

/* The program `name` beside this one into `path`: memvisord, memvisor-bench. */
static int sibling_path(const char *command, const char *name, char *path, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    if (n < 0)
        return command_failed_errno(command, errno, "cannot find this program: "
                                    "/proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    if (snprintf(path, size, "%s/%s", dirname(self), name) >= (int)size ||
        access(path, X_OK) < 0)
        return command_failed_errno(command, errno, "cannot run %s: %s (%s must sit next "
                                    "to memvisor)", path, strerror(errno), name);
    return STATUS_OK;
}

/* `memvisor bench SUITE ...` is memvisor-bench SUITE ...: the benchmarks are
 * a program of their own. */
static int run_bench(const struct invocation *inv)
{
    char path[PATH_MAX];
    int status = sibling_path("bench", "memvisor-bench", path, sizeof(path));

    if (status != STATUS_OK)
        return status;
    fflush(NULL);
    inv->argv[0] = path;
    execv(path, inv->argv);
    return command_failed_errno("bench", errno, "cannot run %s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------ */
/* Copy-on-write sharing                                                     */

/* Operand `index` as a number (decimal or 0x hex) naming `what`, or a usage
 * error. */
static int number_operand(const struct invocation *inv, int index, const char *what,
                          uint64_t *value)
{
    const char *text = inv->operands[index];
    int rc = mv_proto_parse_number(text, value);

    if (rc < 0)
        return usage_error(inv->command->name, "%s '%s' is %s", what, text,
                           rc == -ERANGE ? "too large for 64 bits"
                                         : "not a number (decimal, or hex after 0x)");
    return STATUS_OK;
}

/* Add operand `index`, a number, to `request` under `key`.  The request is
 * released on a usage error. */
static int add_number_operand(const struct invocation *inv, struct json_object *request,
                              int index, const char *what, const char *key)
{
    uint64_t value;
    int status = number_operand(inv, index, what, &value);

    if (status != STATUS_OK) {
        json_object_put(request);
        return status;
    }
    json_object_object_add(request, key, json_object_new_uint64(value));
    return STATUS_OK;
}

/* A request for `cmd` with {"domain": operand 0, "gfn": operand 1}, the
 * operands after them in `keys` (NULL-terminated, named `whats`), or NULL
 * after a usage error (its status in *status). */
static struct json_object *page_request(const struct invocation *inv, const char *cmd,
                                        const char *const *keys, const char *const *whats,
                                        int *status)
{
    struct json_object *request = domain_request(inv, cmd);

    *status = add_number_operand(inv, request, 1, "GFN", "gfn");
    for (int i = 0; *status == STATUS_OK && keys && keys[i]; i++) {
        if (2 + i >= inv->operand_count)
            break;
        *status = add_number_operand(inv, request, 2 + i, whats[i], keys[i]);
    }
    return *status == STATUS_OK ? request : NULL;
}

static int run_clone(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "clone"), *reply;
    int status;

    json_object_object_add(request, "name", json_object_new_string(inv->operands[1]));
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("created domain %" PRIu64 " (%s), a clone of %s\n", field_u64(reply, "domid"),
           field_string(reply, "name"), inv->operands[0]);
    json_object_put(reply);
    return STATUS_OK;
}

static int run_share_nominate(const struct invocation *inv)
{
    struct json_object *request, *reply;
    int status;

    request = page_request(inv, "share-nominate", NULL, NULL, &status);
    if (!request)
        return status;
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("%" PRIu64 "\n", field_u64(reply, "handle"));
    json_object_put(reply);
    return STATUS_OK;
}

/* The source page (operands 0..2: domain, gfn, handle) and the client page
 * (operands 3..: domain, gfn, and a handle when there is one). */
static struct json_object *pair_request(const struct invocation *inv, const char *cmd,
                                        int *status)
{
    struct json_object *request = mv_proto_request_new(cmd);

    json_object_object_add(request, "source_domain",
                           json_object_new_string(inv->operands[0]));
    json_object_object_add(request, "client_domain",
                           json_object_new_string(inv->operands[3]));
    if ((*status = add_number_operand(inv, request, 1, "SRC_GFN", "source_gfn")) !=
            STATUS_OK ||
        (*status = add_number_operand(inv, request, 2, "SRC_HANDLE", "source_handle")) !=
            STATUS_OK ||
        (*status = add_number_operand(inv, request, 4, "CLIENT_GFN", "client_gfn")) !=
            STATUS_OK)
        return NULL;
    if (inv->operand_count > 5 &&
        (*status = add_number_operand(inv, request, 5, "CLIENT_HANDLE", "client_handle")) !=
            STATUS_OK)
        return NULL;
    return request;
}

static int run_share_pages(const struct invocation *inv)
{
    int status;
    struct json_object *request = pair_request(inv, "share-pages", &status);

    return request ? request_once(inv, request, NULL) : status;
}

static int run_share_add_to_physmap(const struct invocation *inv)
{
    int status;
    struct json_object *request = pair_request(inv, "share-add-to-physmap", &status);

    return request ? request_once(inv, request, NULL) : status;
}

static int run_share_unshare(const struct invocation *inv)
{
    int status;
    struct json_object *request = page_request(inv, "share-unshare", NULL, NULL, &status);

    return request ? request_once(inv, request, NULL) : status;
}

static int run_share_settle(const struct invocation *inv)
{
    struct json_object *reply;
    int status = request_once(inv, domain_request(inv, "share-settle"), &reply);

    if (status != STATUS_OK)
        return status;
    printf("settle: %" PRIu64 " copies the kernel made moved into %s's own memory\n",
           field_u64(reply, "settled"), inv->operands[0]);
    json_object_put(reply);
    return STATUS_OK;
}

static int run_share_make(const struct invocation *inv)
{
    static const char *const keys[] = { "count", NULL }, *const whats[] = { "COUNT" };
    struct json_object *request, *reply;
    int status;

    request = page_request(inv, "share-make", keys, whats, &status);
    if (!request)
        return status;
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json")) {
        print_json(reply);
    } else if (!json_object_object_get_ex(reply, "matched", NULL)) {
        printf("make: %" PRIu64 " gfns shared\n", field_u64(reply, "shared"));
    } else {
        uint64_t count = 0;

        for (unsigned o = 0; o <= MV_SHARE_SKIPPED; o++)
            count += field_u64(reply, mv_proto_share_outcome_name((enum mv_share_outcome)o));
        printf("make: %" PRIu64 " gfns: %" PRIu64 " matched and shared, %" PRIu64
               " inserted into the index, %" PRIu64 " zero (returned to the host), %"
               PRIu64 " already shared, %" PRIu64 " skipped\n", count,
               field_u64(reply, "matched"), field_u64(reply, "inserted"),
               field_u64(reply, "zero"), field_u64(reply, "already"),
               field_u64(reply, "skipped"));
    }
    json_object_put(reply);
    return STATUS_OK;
}

static int run_share_hint(const struct invocation *inv)
{
    static const char *const keys[] = { "count", "key", NULL },
                             *const whats[] = { "COUNT", "KEY" };
    int status;
    struct json_object *request = page_request(inv, "share-hint", keys, whats, &status);

    return request ? request_once(inv, request, NULL) : status;
}

static int run_share_exclude(const struct invocation *inv)
{
    static const char *const keys[] = { "count", NULL }, *const whats[] = { "COUNT" };
    int status;
    struct json_object *request = page_request(inv, "share-exclude", keys, whats, &status);

    return request ? request_once(inv, request, NULL) : status;
}

static int run_share_scan(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("share-scan"), *reply, *scan;
    char shared[32];
    int status;

    copy_option(inv, request, "max_pages");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    scan = field(reply, "scan");
    if (option_set(inv, "json")) {
        print_json(reply);
    } else {
        printf("scan: hashed %" PRIu64 " pages in %.3f s: %" PRIu64 " newly shared (%s), %"
               PRIu64 " zero pages returned to the host, %" PRIu64 " volatile pages "
               "skipped, %" PRIu64 " pages of hinted ranges\n",
               field_u64(scan, "pages_scanned"), seconds(field_u64(scan, "elapsed_ns")),
               field_u64(scan, "pages_shared"),
               pages_text(shared, sizeof(shared), field_u64(scan, "pages_shared")),
               field_u64(scan, "pages_zero"), field_u64(scan, "volatile_skips"),
               field_u64(scan, "hinted_pages"));
        printf("  time: reading pages %.3f s, freeing zero pages %.3f s, index "
               "lookups %.3f s, sharing %.3f s\n", seconds(field_u64(scan, "read_ns")),
               seconds(field_u64(scan, "zero_ns")), seconds(field_u64(scan, "index_ns")),
               seconds(field_u64(scan, "share_ns")));
    }
    json_object_put(reply);
    return STATUS_OK;
}

static int run_scanner_start(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("scanner-start");

    copy_option(inv, request, "rate");
    copy_option(inv, request, "cpu_percent");
    copy_option(inv, request, "max_vmas");
    return request_once(inv, request, NULL);
}

static int run_scanner_stop(const struct invocation *inv)
{
    return request_once(inv, mv_proto_request_new("scanner-stop"), NULL);
}

static void print_share_stats(struct json_object *reply)
{
    struct json_object *s = field(reply, "share");
    char saved[32];

    printf("sharing: %" PRIu64 " shared frames mapped %" PRIu64 " times, saving %" PRIu64
           " pages (%s); %" PRIu64 " frames in the content index, %" PRIu64
           " hash collisions\n",
           field_u64(s, "shared_frames"), field_u64(s, "shared_refs"),
           field_u64(s, "saved_pages"),
           pages_text(saved, sizeof(saved), field_u64(s, "saved_pages")),
           field_u64(s, "indexed_frames"), field_u64(s, "hash_collisions"));
    printf("copy on write: %" PRIu64 " breaks, %" PRIu64 " takeovers, %" PRIu64
           " without a copy, %" PRIu64 " pages unshared with a neighbour's break near "
           "the mapping limit; %" PRIu64 " zero pages returned to the host\n",
           field_u64(s, "cow_breaks"), field_u64(s, "cow_takeovers"),
           field_u64(s, "cow_nocopy"), field_u64(s, "cow_run_unshares"),
           field_u64(s, "zero_reclaimed"));
    printf("kernel copies: %" PRIu64 " settled (counted in the breaks) by %" PRIu64
           " settle passes in %.3f s; %" PRIu64 " found no memory to settle them (their "
           "writers trap)\n",
           field_u64(s, "cow_kernel_copies"), field_u64(s, "cow_settles"),
           seconds(field_u64(s, "cow_settle_ns")), field_u64(s, "cow_settle_waiting"));
    printf("clones: %" PRIu64 " adopted frames untouched since (no records written yet)\n",
           field_u64(s, "clone_pending_frames"));
    printf("hints: %" PRIu64 " ranges pending, %" PRIu64 " pages processed\n",
           field_u64(s, "hints_pending"), field_u64(s, "hinted_pages"));
    printf("scanner: %s; %" PRIu64 " passes, %" PRIu64 " pages (%" PRIu64 " not read again: "
           "unwritten since), %" PRIu64 " volatile, "
           "%.3f s of CPU, %.0f pages/s over the last pass; %" PRIu64 " blocks read in "
           "place because copying them out failed; %" PRIu64 " candidate slots (%" PRIu64
           " KiB)\n",
           field_bool(s, "scanner_running") ? "running" : "stopped",
           field_u64(s, "scan_passes"), field_u64(s, "scan_pages"),
           field_u64(s, "scan_unchanged"),
           field_u64(s, "scan_volatile"), seconds(field_u64(s, "scan_cpu_ns")),
           json_object_get_double(field(s, "scan_rate")), field_u64(s, "read_fallbacks"),
           field_u64(s, "scan_candidate_slots"), field_u64(s, "scan_candidate_slots") * 16 / 1024);
    printf("zero pages freed where the guest maps them: %" PRIu64 " (%" PRIu64
           " reads there fell back to the machine's view)\n", field_u64(s, "zero_in_guest"),
           field_u64(s, "guest_read_fallbacks"));
    printf("pages read: %s", field_string(s, "read_mode"));
    if (field_u64(s, "read_in_place_ns") || field_u64(s, "read_copy_ns"))
        printf(" (chosen: a page read in place %" PRIu64 " ns, copied out %" PRIu64 " ns)",
               field_u64(s, "read_in_place_ns"), field_u64(s, "read_copy_ns"));
    printf("\n");
    printf("mappings: %" PRIu64 " of vm.max_map_count %" PRIu64 "%s%s\n",
           field_u64(s, "vma_count"), field_u64(s, "max_map_count"),
           field_bool(s, "sharing_stopped") ? "; sharing stopped at its last attempt: " : "",
           field_bool(s, "sharing_stopped") ? field_string(s, "stop_reason") : "");
    printf("\n%4s  %-12s %10s %10s %10s %10s %10s %10s %10s %-6s %10s %s\n", "ID", "NAME",
           "SHARED", "COWBREAKS", "TAKEOVERS", "NOCOPY", "CLAIMABLE", "SHORTFALL", "EXCLUDED",
           "COW", "KCOPIES", "TRAPPING");
    for (size_t i = 0; i < field_length(reply, "domains"); i++) {
        struct json_object *d = field_item(reply, "domains", i);
        bool kernel =
            strcmp(field_string(d, "cow_mode"), mv_cow_mode_name(MV_COW_KERNEL)) == 0;

        printf("%4" PRIu64 "  %-12s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64
               " %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %-6s %10" PRIu64 " %s\n",
               field_u64(d, "domid"), field_string(d, "name"), field_u64(d, "shared_pages"),
               field_u64(d, "cow_breaks"), field_u64(d, "cow_takeovers"),
               field_u64(d, "cow_nocopy"), field_u64(d, "cow_claimable"),
               field_u64(d, "cow_shortfall"), field_u64(d, "excluded_pages"),
               field_string(d, "cow_mode"), field_u64(d, "cow_kernel_copies"),
               !kernel ? "-" : field_bool(d, "cow_trapping") ? "yes" : "no");
    }
}

static int run_share_stats(const struct invocation *inv)
{
    return run_report(inv, "share-stats", print_share_stats);
}

static int run_share_audit(const struct invocation *inv)
{
    int status = request_once(inv, mv_proto_request_new("share-audit"), NULL);

    if (status == STATUS_OK)
        printf("share audit: every sharing invariant holds\n");
    return status;
}

/* The subcommands of `memvisor share`, named in full for their messages and
 * --help. */
static const struct command share_commands[] = {
    {
        .name = "share nominate", .operands = "DOMAIN GFN", .min_operands = 2,
        .max_operands = 2,
        .summary = "make a page shareable; prints its handle",
        .description =
            "Move DOMAIN's populated page GFN into a shared frame of its own, read-only,\n"
            "and print the frame's handle (alone on a line, for scripts).  A write to\n"
            "the page breaks it back into a private page and the handle goes stale.\n"
            "GFN is decimal or hex after 0x.",
        .run = run_share_nominate, .wire = WIRE("share-nominate"),
    },
    {
        .name = "share pages",
        .operands = "SRC_DOMAIN SRC_GFN SRC_HANDLE CLIENT_DOMAIN CLIENT_GFN CLIENT_HANDLE",
        .min_operands = 6, .max_operands = 6,
        .summary = "share two nominated pages with equal bytes",
        .description =
            "Compare the two nominated pages and, when their bytes are equal, map the\n"
            "source's frame at the client gfn; the client's frame is freed when that\n"
            "was its last mapping.  Both handles must be current.",
        .run = run_share_pages, .wire = WIRE("share-pages"),
    },
    {
        .name = "share add-to-physmap",
        .operands = "SRC_DOMAIN SRC_GFN SRC_HANDLE CLIENT_DOMAIN CLIENT_GFN",
        .min_operands = 5, .max_operands = 5,
        .summary = "map a shared frame at a gfn that holds no data",
        .description =
            "Map the source's shared frame read-only at CLIENT_GFN, which must be a\n"
            "populate-on-demand entry (neither populated nor shared nor ballooned).",
        .run = run_share_add_to_physmap, .wire = WIRE("share-add-to-physmap"),
    },
    {
        .name = "share unshare", .operands = "DOMAIN GFN", .min_operands = 2,
        .max_operands = 2,
        .summary = "give a shared gfn its private copy now",
        .description = "Break the sharing of DOMAIN's GFN as a write would: it gets a\n"
                       "private copy from the domain's target and the host budget.",
        .run = run_share_unshare, .wire = WIRE("share-unshare"),
    },
    {
        .name = "share settle", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "settle the copies the kernel made for a domain now",
        .description =
            "For a domain created with --cow-mode kernel: move every page the kernel\n"
            "copied on a write into the domain's own memory, charge it and update the\n"
            "sharing records, as a trapped break would have; memvisord does so in the\n"
            "background anyway (its --cow-settle-ms).  Prints the copies settled (0 for\n"
            "a --cow-mode trap domain); copies with no memory to settle them stay as\n"
            "they are.",
        .run = run_share_settle, .wire = WIRE("share-settle"),
    },
    {
        .name = "share make", .operands = "DOMAIN GFN [COUNT]", .min_operands = 2,
        .max_operands = 3,
        .summary = "share COUNT pages through the content index",
        .description =
            "For each of COUNT (default 1) gfns from GFN: look its bytes up in the\n"
            "host's content index and share it on a match, insert it on a miss;\n"
            "all-zero pages go back to the host as populate-on-demand entries.  Prints\n"
            "how many gfns had each outcome.",
        .options = OPTIONS(&opt_json), .run = run_share_make, .wire = WIRE("share-make"),
    },
    {
        .name = "share hint", .operands = "DOMAIN GFN COUNT KEY", .min_operands = 4,
        .max_operands = 4,
        .summary = "say that a range holds content others hold too",
        .description =
            "Tell the scanner that COUNT pages from GFN hold the same content as other\n"
            "ranges hinted with KEY (a non-zero number, e.g. a block of a shared base\n"
            "image): they are verified and shared first, by the next scan step.",
        .run = run_share_hint, .wire = WIRE("share-hint"),
    },
    {
        .name = "share exclude", .operands = "DOMAIN GFN COUNT", .min_operands = 3,
        .max_operands = 3,
        .summary = "keep a range out of sharing for good",
        .description =
            "Never share nor scan COUNT pages of DOMAIN from GFN (secrets, and the\n"
            "timing side channel of copy-on-write faults).  Pages of the range shared\n"
            "now are unshared first.",
        .run = run_share_exclude, .wire = WIRE("share-exclude"),
    },
    {
        .name = "share scan", .operands = "",
        .summary = "run one scan now and show what it did",
        .description =
            "Run the scanner's work once, here and now: pending hints, then up to\n"
            "--pages populated pages (default: one whole pass over every domain).\n"
            "Prints the pages hashed, newly shared, returned as zero and skipped as\n"
            "volatile.  Works whether or not the background scanner runs.",
        .options = OPTIONS(&opt_scan_pages, &opt_json), .run = run_share_scan,
        .wire = WIRE("share-scan"),
    },
    {
        .name = "share scanner start", .operands = "",
        .summary = "start the background scanner",
        .description =
            "Start the thread that walks every running domain's populated memory,\n"
            "hinted ranges first, sharing pages with equal bytes and returning zero\n"
            "pages to the host.",
        .options = OPTIONS(&opt_scanner_rate, &opt_scanner_cpu, &opt_scanner_max_vmas),
        .run = run_scanner_start, .wire = WIRE("scanner-start"),
    },
    {
        .name = "share scanner stop", .operands = "",
        .summary = "stop the background scanner",
        .description = "Stop the background scanner; what it shared stays shared.",
        .run = run_scanner_stop, .wire = WIRE("scanner-stop"),
    },
    {
        .name = "share stats", .operands = "[DOMAIN]", .max_operands = 1,
        .summary = "show what sharing saves and costs",
        .description =
            "Shared frames, their mappings and the pages saved; copy-on-write breaks;\n"
            "the kernel's copies settled; the content index, hints, the scanner and the\n"
            "mappings in use; then, for each domain (or DOMAIN only), its shared pages,\n"
            "breaks, the breaks its target still covers and those it does not, its\n"
            "excluded pages, who copies its shared pages on a write, the kernel's\n"
            "copies settled and whether its shared pages trap for now.",
        .options = OPTIONS(&opt_json), .run = run_share_stats,
        .wire = WIRE("share-stats"),
    },
    {
        .name = "share audit", .operands = "",
        .summary = "check every sharing invariant",
        .description =
            "Check reference counts against reverse maps, every shared gfn against its\n"
            "frame, the pages saved, the content index against the frames' bytes, and\n"
            "that no guest write slipped past copy-on-write.  Exact while the guests\n"
            "are quiet.",
        .run = run_share_audit, .wire = WIRE("share-audit"),
    },
};

static void print_share_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor share COMMAND [options] [arguments]\n"
        "\n"
        "Copy-on-write page sharing: pages with equal bytes are kept once, read-only,\n"
        "and a write gets a private copy.  DOMAIN is a name or an id; GFN, COUNT,\n"
        "handles and keys are decimal or hex after 0x.\n"
        "\n"
        "commands:\n");
    for (size_t i = 0; i < sizeof(share_commands) / sizeof(share_commands[0]); i++)
        fprintf(out, "  %-22s %s\n", share_commands[i].name + strlen("share "),
                share_commands[i].summary);
    fprintf(out, "\n'memvisor share COMMAND --help' explains a command.\n");
}

/* `memvisor share COMMAND ...`: find the subcommand ("scanner" takes one
 * more word) and run it as a command of its own. */
static int run_share(const struct invocation *inv)
{
    struct invocation sub = *inv;
    char **argv = inv->argv + 1;
    int argc = inv->argc - 1, status;
    char name[64];

    if (argc < 1)
        return usage_error("share", "expects a command");
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        print_share_usage(stdout);
        return STATUS_OK;
    }
    if (strcmp(argv[0], "scanner") == 0) {
        if (argc < 2)
            return usage_error("share scanner", "expects start or stop");
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
            print_share_usage(stdout);
            return STATUS_OK;
        }
        snprintf(name, sizeof(name), "share scanner %s", argv[1]);
        argv++;
        argc--;
    } else {
        snprintf(name, sizeof(name), "share %s", argv[0]);
    }
    sub.command = NULL;
    for (size_t i = 0; i < sizeof(share_commands) / sizeof(share_commands[0]); i++)
        if (strcmp(share_commands[i].name, name) == 0)
            sub.command = &share_commands[i];
    if (!sub.command)
        return usage_error(strncmp(name, "share scanner ", 14) == 0 ? "share scanner"
                                                                      : "share",
                           "unknown command '%s'", argv[0]);
    sub.argc = argc;
    sub.argv = argv;
    status = parse_command_line(&sub, argc, argv);
    if (status < 0)
        status = sub.command->run(&sub);
    return status;
}

/* ------------------------------------------------------------------------ */
/* tmem and page-out (self-contained: these functions, their tables, and    */
/* one line each in `commands`, senders_json and run_help)                   */

static const struct cli_option
    opt_tmem_codec = WIRE_OPTION("tmem-new-pool", "codec"),
    opt_tmem_dedup = WIRE_OPTION("tmem-new-pool", "dedup"),
    opt_tmem_put_seed = WIRE_OPTION("tmem-put", "seed"),
    opt_tmem_size = WIRE_OPTION("tmem-put", "size"),
    opt_tmem_get_seed = WIRE_OPTION("tmem-get", "seed"),
    opt_tmem_relinquish_pages = WIRE_OPTION("tmem-relinquish", "pages"),
    opt_tmem_relinquish_order = WIRE_OPTION("tmem-relinquish-block", "order"),
    opt_page_out_pages = WIRE_OPTION("page-out", "pages");

/* {"domain", "pool", "object"[, "index"]} from operands 0..3. */
static struct json_object *tmem_key_request(const struct invocation *inv, const char *cmd,
                                            bool with_object, int *status)
{
    struct json_object *request = domain_request(inv, cmd);

    *status = add_number_operand(inv, request, 1, "POOL", "pool");
    if (*status != STATUS_OK || !with_object)
        return *status == STATUS_OK ? request : NULL;
    json_object_object_add(request, "object", json_object_new_string(inv->operands[2]));
    if (inv->operand_count > 3)
        *status = add_number_operand(inv, request, 3, "INDEX", "index");
    return *status == STATUS_OK ? request : NULL;
}

static void print_tmem_counts(const char *what, struct json_object *c)
{
    uint64_t pages = field_u64(c, "pages"), markers = field_u64(c, "marker_pages");
    uint64_t lz4 = field_u64(c, "lz4_pages"), zstd = field_u64(c, "zstd_pages");

    printf("%s: %" PRIu64 " pages in %" PRIu64 " bytes (ratio %.2f; %" PRIu64 " lz4, %" PRIu64
           " zstd, %" PRIu64 " raw, %" PRIu64 " markers); puts %" PRIu64
           " (%" PRIu64 " stored), gets %" PRIu64 " (%" PRIu64 " found), flushes %" PRIu64
           " (%" PRIu64 " objects), evictions %" PRIu64 ", poor compressions %" PRIu64
           ", same-filled %" PRIu64 ", dedup hits %" PRIu64 "\n",
           what, pages, field_u64(c, "stored_bytes"),
           json_object_get_double(field(c, "ratio")), lz4, zstd,
           pages - markers - lz4 - zstd, markers, field_u64(c, "puts"),
           field_u64(c, "puts_stored"), field_u64(c, "gets"), field_u64(c, "found_gets"),
           field_u64(c, "flushes"), field_u64(c, "flush_objects"), field_u64(c, "evictions"),
           field_u64(c, "poor_compressions"), field_u64(c, "same_filled"),
           field_u64(c, "dedup_hits"));
}

static void print_tmem_list(struct json_object *reply)
{
    struct json_object *t = field(reply, "tmem");

    printf("tmem: %" PRIu64 " frames (%" PRIu64 " used, %" PRIu64 " spare, %" PRIu64
           " freeable), %" PRIu64 " relinquished, %" PRIu64 " evictions, %" PRIu64
           " budget shortages (%" PRIu64 " frames given), %" PRIu64
           " repaid from collateral; host paging: %" PRIu64 " pages out now, %" PRIu64
           " out and %" PRIu64 " in so far\n",
           field_u64(t, "frames"), field_u64(t, "used_frames"), field_u64(t, "spare_frames"),
           field_u64(t, "freeable_frames"), field_u64(t, "relinquished"),
           field_u64(t, "evictions"),
           field_u64(t, "budget_short_calls"), field_u64(t, "budget_short_freed"),
           field_u64(t, "repaid"), field_u64(t, "paged_out"), field_u64(t, "page_outs"),
           field_u64(t, "page_ins"));
    printf("store: frames %s", field_string(t, "store"));
    if (field_u64(t, "store_mapped_ns"))
        printf(" (chosen: a frame measured at %" PRIu64 " ns mapped, %" PRIu64 " ns copied)",
               field_u64(t, "store_mapped_ns"), field_u64(t, "store_copied_ns"));
    if (field_u64(t, "store_read_aheads"))
        printf("; %" PRIu64 " read-aheads for gets in order served %" PRIu64 " gets",
               field_u64(t, "store_read_aheads"), field_u64(t, "store_read_ahead_hits"));
    printf("\n");
    print_tmem_counts("all pools", field(t, "counts"));
    printf("\n%5s %6s %-10s %-8s %-5s %5s %10s %10s %10s %10s %8s %7s\n", "POOL", "OWNER",
           "KIND", "SHARING", "CODEC", "DEDUP", "PAGES", "PUTS", "GETS", "FOUND", "EVICTED",
           "RATIO");
    for (size_t i = 0; i < field_length(reply, "pools"); i++) {
        struct json_object *p = field_item(reply, "pools", i), *c = field(p, "counts");

        printf("%5" PRIu64 " %6s %-10s %-8s %-5s %5s %10" PRIu64 " %10" PRIu64 " %10" PRIu64
               " %10" PRIu64 " %8" PRIu64 " %7.2f\n", field_u64(p, "pool"),
               json_object_get_string(field(p, "owner")), field_string(p, "kind"),
               field_string(p, "sharing"), field_string(p, "codec"),
               field_bool(p, "dedup") ? "on" : "off", field_u64(c, "pages"),
               field_u64(c, "puts"), field_u64(c, "gets"), field_u64(c, "found_gets"),
               field_u64(c, "evictions"), json_object_get_double(field(c, "ratio")));
    }
    printf("\n%6s %6s %10s %10s %10s %10s %10s\n", "DOMAIN", "WEIGHT", "PERSIST",
           "EPHEMERAL", "QUOTA", "COLLATERAL", "REPAID");
    for (size_t i = 0; i < field_length(reply, "clients"); i++) {
        struct json_object *c = field_item(reply, "clients", i);

        printf("%6s %6" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64
               " %10" PRIu64 "\n", json_object_get_string(field(c, "domid")),
               field_u64(c, "weight"), field_u64(c, "persistent_pages"),
               field_u64(c, "ephemeral_pages"), field_u64(c, "quota_pages"),
               field_u64(c, "collateral_pages"), field_u64(c, "repaid_pages"));
    }
}

static int run_tmem_list(const struct invocation *inv)
{
    return run_report(inv, "tmem-list", print_tmem_list);
}

static int run_tmem_authorize(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "tmem-authorize");

    json_object_object_add(request, "uuid", json_object_new_string(inv->operands[1]));
    return request_once(inv, request, NULL);
}

static int run_tmem_new_pool(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "tmem-new-pool"), *reply;
    int status;

    json_object_object_add(request, "kind", json_object_new_string(inv->operands[1]));
    if (inv->operand_count > 2) {
        json_object_object_add(request, "sharing", json_object_new_string("shared"));
        json_object_object_add(request, "uuid", json_object_new_string(inv->operands[2]));
    }
    copy_option(inv, request, "codec");
    copy_option(inv, request, "dedup");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("%" PRIu64 "\n", field_u64(reply, "pool"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_tmem_destroy_pool(const struct invocation *inv)
{
    int status;
    struct json_object *request = tmem_key_request(inv, "tmem-destroy-pool", false, &status);

    return request ? request_once(inv, request, NULL) : status;
}

static int run_tmem_put(const struct invocation *inv)
{
    int status;
    struct json_object *request = tmem_key_request(inv, "tmem-put", true, &status), *reply;

    if (!request)
        return status;
    copy_option(inv, request, "seed");
    copy_option(inv, request, "size");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json"))
        print_json(reply);
    else
        printf("%s\n", field_bool(reply, "stored") ? "stored" : "dropped");
    json_object_put(reply);
    return STATUS_OK;
}

static int run_tmem_get(const struct invocation *inv)
{
    int status;
    struct json_object *request = tmem_key_request(inv, "tmem-get", true, &status), *reply;

    if (!request)
        return status;
    copy_option(inv, request, "seed");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json"))
        print_json(reply);
    else if (!field_bool(reply, "found"))
        printf("missing\n");
    else
        printf("found%s\n", !field(reply, "matches") ? ""
                            : field_bool(reply, "matches") ? ", matches" : ", DIFFERS");
    /* A page that differs from the one put is a failure of the command. */
    status = field(reply, "matches") && !field_bool(reply, "matches") ? STATUS_FAILED
                                                                      : STATUS_OK;
    json_object_put(reply);
    return status;
}

static int run_tmem_flush(const struct invocation *inv)
{
    int status;
    struct json_object *request = tmem_key_request(inv, "tmem-flush", true, &status), *reply;

    if (!request)
        return status;
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("%" PRIu64 " pages flushed\n", field_u64(reply, "flushed"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_tmem_relinquish(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("tmem-relinquish"), *reply;
    int status;

    copy_option(inv, request, "pages");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("%" PRIu64 " frames given back to the host\n", field_u64(reply, "relinquished"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_tmem_relinquish_block(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("tmem-relinquish-block"), *reply;
    uint64_t order;
    int status;

    copy_option(inv, request, "order");
    order = field_u64(request, "order");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("room made for 2^%" PRIu64 " frames: %" PRIu64 " frames given back, %" PRIu64
           " pages evicted\n", order, field_u64(reply, "relinquished"),
           field_u64(reply, "evictions"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_page_out(const struct invocation *inv)
{
    struct json_object *request = domain_request(inv, "page-out"), *reply;
    int status;

    copy_option(inv, request, "pages");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    if (option_set(inv, "json"))
        print_json(reply);
    else
        printf("%" PRIu64 " pages paged out\n", field_u64(reply, "paged"));
    json_object_put(reply);
    return STATUS_OK;
}

static const struct command tmem_commands[] = {
    {
        .name = "tmem list", .operands = "[DOMAIN]", .max_operands = 1,
        .summary = "show pools, domains and host figures (like xl tmem-list)",
        .description =
            "Host figures (frames, evictions, relinquished frames, budget shortages,\n"
            "repayment, host paging), then every pool (or DOMAIN's) with its puts,\n"
            "gets, found gets, flushes, evictions, compression ratio and pages by\n"
            "codec (lz4, zstd, raw, same-filled markers), then every domain's pages,\n"
            "quota, collateral and repaid frames.",
        .options = OPTIONS(&opt_json), .run = run_tmem_list, .wire = WIRE("tmem-list"),
    },
    {
        .name = "tmem authorize", .operands = "DOMAIN UUID", .min_operands = 2,
        .max_operands = 2, .summary = "let DOMAIN join the shared pool of UUID",
        .description = "Authorise DOMAIN to create or join the shared tmem pool named UUID\n"
                       "(32 hex digits, dashes allowed).",
        .run = run_tmem_authorize, .wire = WIRE("tmem-authorize"),
    },
    {
        .name = "tmem new-pool", .operands = "DOMAIN ephemeral|persistent [UUID]",
        .min_operands = 2, .max_operands = 3,
        .summary = "create a pool for DOMAIN; prints its id",
        .description =
            "Create a private pool for DOMAIN, or with UUID create or join the shared\n"
            "pool of that UUID (DOMAIN must be authorised).  Prints the pool id.",
        .options = OPTIONS(&opt_tmem_codec, &opt_tmem_dedup), .run = run_tmem_new_pool,
        .wire = WIRE("tmem-new-pool"),
    },
    {
        .name = "tmem destroy-pool", .operands = "DOMAIN POOL", .min_operands = 2,
        .max_operands = 2, .summary = "leave a pool (a private one is freed)",
        .description = "DOMAIN leaves POOL; its pages go, and the pool with its last member.",
        .run = run_tmem_destroy_pool, .wire = WIRE("tmem-destroy-pool"),
    },
    {
        .name = "tmem put", .operands = "DOMAIN POOL OID INDEX", .min_operands = 4,
        .max_operands = 4, .summary = "put a test page made from --seed",
        .description =
            "Put the page made from --seed (text-like bytes) under (POOL, OID, INDEX)\n"
            "as DOMAIN would.  OID is N or N:N:N.  Prints stored, or dropped when an\n"
            "ephemeral pool had no room.",
        .options = OPTIONS(&opt_tmem_put_seed, &opt_tmem_size, &opt_json),
        .run = run_tmem_put, .wire = WIRE("tmem-put"),
    },
    {
        .name = "tmem get", .operands = "DOMAIN POOL OID INDEX", .min_operands = 4,
        .max_operands = 4, .summary = "get a page; with --seed, compare it",
        .description =
            "Get the page under (POOL, OID, INDEX) as DOMAIN would (from a private\n"
            "ephemeral pool this removes it).  Prints missing or found; with --seed,\n"
            "whether it matches the page made from that seed (exit 1 when not).",
        .options = OPTIONS(&opt_tmem_get_seed, &opt_json), .run = run_tmem_get,
        .wire = WIRE("tmem-get"),
    },
    {
        .name = "tmem flush", .operands = "DOMAIN POOL OID [INDEX]", .min_operands = 3,
        .max_operands = 4, .summary = "flush a page, or a whole object",
        .description = "Remove page INDEX of object OID, or every page of it.",
        .run = run_tmem_flush, .wire = WIRE("tmem-flush"),
    },
    {
        .name = "tmem relinquish", .operands = "",
        .summary = "give tmem frames back to the host",
        .description = "Scrub and give back up to --pages frames: spare ones first, then\n"
                       "evicting ephemeral pages (never persistent ones).",
        .options = OPTIONS(&opt_tmem_relinquish_pages), .run = run_tmem_relinquish,
        .wire = WIRE("tmem-relinquish"),
    },
    {
        .name = "tmem relinquish-block", .operands = "",
        .summary = "make room for a block of 2^K frames",
        .description = "Make room for a naturally aligned block of 2^K frames: as many\n"
                       "frames free in the host budget and a free run of them, tmem giving\n"
                       "back spare frames, then evicting ephemeral pages and compacting\n"
                       "(never persistent ones). Fails, saying how much room there is,\n"
                       "when what is left is persistent pages or others' memory; when\n"
                       "even evicting everything could not make the room, before\n"
                       "evicting anything.",
        .options = OPTIONS(&opt_tmem_relinquish_order), .run = run_tmem_relinquish_block,
        .wire = WIRE("tmem-relinquish-block"),
    },
};

/* ------------------------------------------------------------------------ */
/* snapshot VMs: Firecracker's page-fault-handler hand-over                  */

static const struct cli_option
    opt_fc_mem_file = WIRE_OPTION("fc-listen", "mem_file"),
    opt_fc_target = WIRE_OPTION("fc-listen", "target"),
    opt_fc_policy = WIRE_OPTION("fc-listen", "policy");

static int run_fc_listen(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("fc-listen"), *reply;
    int status;

    json_object_object_add(request, "vm", json_object_new_string(inv->operands[0]));
    json_object_object_add(request, "socket", json_object_new_string(inv->operands[1]));
    copy_option(inv, request, "mem_file");
    copy_option(inv, request, "target");
    copy_option(inv, request, "policy");
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    printf("%s: waiting for its VMM on %s\n", field_string(reply, "vm"),
           field_string(reply, "socket"));
    json_object_put(reply);
    return STATUS_OK;
}

static void print_fc_list(struct json_object *reply)
{
    printf("%-16s %-9s %7s %10s %10s %10s %8s %9s\n", "NAME", "STATE", "PID", "FILLED",
           "LOADED", "REMOVED", "FAULTS", "WP-FAULTS");
    for (size_t i = 0; i < field_length(reply, "vms"); i++) {
        struct json_object *v = field_item(reply, "vms", i);
        char filled[32], loaded[32], removed[32];

        if (!field(v, "pid")) {
            printf("%-16s %-9s %s\n", field_string(v, "vm"), field_string(v, "state"),
                   field_string(v, "reason")[0] ? field_string(v, "reason")
                                                : field_string(v, "socket"));
            continue;
        }
        printf("%-16s %-9s %7" PRIu64 " %10s %10s %10s %8" PRIu64 " %9" PRIu64 "%s%s\n",
               field_string(v, "vm"), field_string(v, "state"), field_u64(v, "pid"),
               pages_text(filled, sizeof(filled), field_u64(v, "populated_pages")),
               pages_text(loaded, sizeof(loaded), field_u64(v, "loaded_pages")),
               pages_text(removed, sizeof(removed), field_u64(v, "removed_pages")),
               field_u64(v, "faults"), field_u64(v, "write_faults"),
               field_string(v, "reason")[0] ? "  " : "", field_string(v, "reason"));
    }
}

static int run_fc_list(const struct invocation *inv)
{
    return run_report(inv, "fc-list", print_fc_list);
}

static int run_fc_logdirty(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("fc-logdirty"), *reply;
    int status;

    json_object_object_add(request, "vm", json_object_new_string(inv->operands[0]));
    json_object_object_add(request, "action", json_object_new_string(inv->operands[1]));
    status = request_once(inv, request, &reply);
    if (status != STATUS_OK)
        return status;
    if (field(reply, "dirty_pages"))
        printf("clean: %" PRIu64 " dirty pages\n", field_u64(reply, "dirty_pages"));
    json_object_put(reply);
    return STATUS_OK;
}

static int run_fc_stop(const struct invocation *inv)
{
    struct json_object *request = mv_proto_request_new("fc-stop");

    json_object_object_add(request, "vm", json_object_new_string(inv->operands[0]));
    return request_once(inv, request, NULL);
}

static const struct command fc_commands[] = {
    {
        .name = "fc listen", .operands = "NAME SOCKET", .min_operands = 2, .max_operands = 2,
        .summary = "serve a VMM restoring a snapshot (Firecracker's backend_path)",
        .description =
            "Listen on SOCKET (an absolute path) for a VMM that hands its guest memory's\n"
            "userfaultfd over as Firecracker does on snapshot restore (a JSON list of\n"
            "regions and the userfaultfd), then serve its faults: pages from --mem-file\n"
            "(the snapshot's memory, loaded lazily) or zeros, within --target, with\n"
            "--policy when memory runs out; balloon removals give memory back.",
        .options = OPTIONS(&opt_fc_mem_file, &opt_fc_target, &opt_fc_policy),
        .run = run_fc_listen, .wire = WIRE("fc-listen"),
    },
    {
        .name = "fc list", .operands = "",
        .summary = "the snapshot VMs and their counters",
        .description = "Each snapshot VM: its state, its VMM, the memory filled (from the\n"
                       "file, or zeros), removed by its balloon, and its faults.",
        .options = OPTIONS(&opt_json), .run = run_fc_list, .wire = WIRE("fc-list"),
    },
    {
        .name = "fc logdirty", .operands = "NAME enable|clean|disable", .min_operands = 2,
        .max_operands = 2, .summary = "dirty logging of a snapshot VM",
        .description = "enable write-protects its filled pages (the VMM must have registered\n"
                       "them for write protection); clean counts the pages written since and\n"
                       "protects them again; disable stops.",
        .run = run_fc_logdirty, .wire = WIRE("fc-logdirty"),
    },
    {
        .name = "fc stop", .operands = "NAME", .min_operands = 1, .max_operands = 1,
        .summary = "stop serving a snapshot VM",
        .description = "Stop serving NAME: its VMM, whose next fault would wait forever, is\n"
                       "killed, and its memory uncharged.",
        .run = run_fc_stop, .wire = WIRE("fc-stop"),
    },
};

/* ------------------------------------------------------------------------ */
/* command groups: `memvisor tmem COMMAND`, `memvisor fc COMMAND`            */

struct command_group {
    const char *name;
    const char *about;
    const struct command *commands;
    size_t count;
};

static const struct command_group groups[] = {
    { "tmem",
      "Transcendent memory: pools of compressed pages that domains put to and get\n"
      "from by (pool, object id, index); ephemeral pages may be dropped, persistent\n"
      "ones are kept.  The page commands act as the guest would, for tests.\n",
      tmem_commands, sizeof(tmem_commands) / sizeof(tmem_commands[0]) },
    { "fc",
      "Snapshot VMs: a VMM restoring a snapshot hands its guest memory's userfaultfd\n"
      "over (Firecracker's page-fault-handler hand-over) and memvisor serves it.\n",
      fc_commands, sizeof(fc_commands) / sizeof(fc_commands[0]) },
};

static const struct command_group *group_named(const char *name)
{
    for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
        if (strcmp(groups[i].name, name) == 0)
            return &groups[i];
    return NULL;
}

static void print_group_usage(const struct command_group *g, FILE *out)
{
    fprintf(out, "usage: memvisor %s COMMAND [options] [arguments]\n\n%s\ncommands:\n",
            g->name, g->about);
    for (size_t i = 0; i < g->count; i++)
        fprintf(out, "  %-22s %s\n", g->commands[i].name + strlen(g->name) + 1,
                g->commands[i].summary);
    fprintf(out, "\n'memvisor %s COMMAND --help' explains a command.\n", g->name);
}

/* The grouped command named `name` ("tmem put", "fc list"), or NULL. */
static const struct command *group_command(const char *name)
{
    for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++)
        for (size_t i = 0; i < groups[g].count; i++)
            if (strcmp(groups[g].commands[i].name, name) == 0)
                return &groups[g].commands[i];
    return NULL;
}

/* `memvisor GROUP COMMAND ...`: run the subcommand as a command of its own. */
static int run_group(const struct invocation *inv)
{
    const struct command_group *g = group_named(inv->command->name);
    struct invocation sub = *inv;
    char name[64];
    int status;

    if (inv->argc < 2)
        return usage_error(g->name, "expects a command");
    if (strcmp(inv->argv[1], "--help") == 0 || strcmp(inv->argv[1], "-h") == 0) {
        print_group_usage(g, stdout);
        return STATUS_OK;
    }
    snprintf(name, sizeof(name), "%s %s", g->name, inv->argv[1]);
    sub.command = group_command(name);
    if (!sub.command)
        return usage_error(g->name, "unknown command '%s'", inv->argv[1]);
    sub.argc = inv->argc - 1;
    sub.argv = inv->argv + 1;
    status = parse_command_line(&sub, sub.argc, sub.argv);
    if (status < 0)
        status = sub.command->run(&sub);
    return status;
}

/* ------------------------------------------------------------------------ */
/* demo                                                                      */

/*
 * The demo runs its own memvisord on a private socket, so that it needs
 * nothing set up and leaves nothing behind: four guests that scrub 1 GiB at
 * boot while allowed 256 MiB each, then random writers, the content oracle
 * and an audit.
 */
#define DEMO_DOMAINS 4
#define DEMO_MAXMEM (1ull << 30)
#define DEMO_TARGET (256ull << 20)
#define DEMO_VCPUS 2
#define DEMO_SCRUB_TIMEOUT_S 40
#define DEMO_RANDOM_RATE 4000        /* pages per second per domain */
#define DEMO_RANDOM_MS 2000
#define DEMO_WORKING_SET (64ull << 20)
#define DEMO_DAEMON_START_S 10

static volatile sig_atomic_t demo_interrupted;

static void demo_on_signal(int sig)
{
    (void)sig;
    demo_interrupted = 1;
}

struct demo {
    char dir[PATH_MAX];
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    pid_t daemon;
    struct connection conn;
};

/* memvisord sits next to this binary. */
static int demo_daemon_path(char *path, size_t size)
{
    return sibling_path("demo", "memvisord", path, size);
}

static int demo_start_daemon(struct demo *demo)
{
    const char *tmp = getenv("TMPDIR");
    char daemon_path[PATH_MAX];
    char *argv[] = { daemon_path, "--socket", demo->socket_path, "--log-level", "warn",
                     NULL };
    int rc = demo_daemon_path(daemon_path, sizeof(daemon_path));

    if (rc != STATUS_OK)
        return rc;
    snprintf(demo->dir, sizeof(demo->dir), "%s/memvisor-demo.XXXXXX",
             tmp && tmp[0] ? tmp : P_tmpdir);
    if (!mkdtemp(demo->dir)) {
        demo->dir[0] = '\0';
        return command_failed("demo", "cannot create a directory for the socket: %s",
                              strerror(errno));
    }
    if (snprintf(demo->socket_path, sizeof(demo->socket_path), "%s/memvisord.sock",
                 demo->dir) >= (int)sizeof(demo->socket_path))
        return command_failed("demo", "%s is too long a path for a Unix socket; set TMPDIR "
                              "to a shorter directory", demo->dir);
    rc = posix_spawn(&demo->daemon, daemon_path, NULL, NULL, argv, environ);
    if (rc) {
        demo->daemon = 0;
        return command_failed("demo", "cannot start %s: %s", daemon_path, strerror(rc));
    }
    for (int tries = 0; tries < DEMO_DAEMON_START_S * 20 && !demo_interrupted; tries++) {
        int wstatus;

        if (connection_open(&demo->conn, "demo", demo->socket_path, true) == STATUS_OK)
            return STATUS_OK;
        connection_close(&demo->conn);
        if (waitpid(demo->daemon, &wstatus, WNOHANG) == demo->daemon) {
            demo->daemon = 0;
            return command_failed("demo", "memvisord exited (status %d) before it listened",
                                  WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);
        }
        usleep(50 * 1000);
    }
    return command_failed("demo", "memvisord did not listen on %s within %d s",
                          demo->socket_path, DEMO_DAEMON_START_S);
}

/* Stop the daemon (politely, then firmly) and remove what the demo made.
 * STATUS_FAILED when the daemon did not exit cleanly. */
static int demo_cleanup(struct demo *demo)
{
    char path[PATH_MAX + 8];
    int status = STATUS_OK;

    if (demo->daemon > 0) {
        struct json_object *request = mv_proto_request_new("shutdown"), *reply = NULL;
        char why[MV_PROTO_DETAIL_MAX];
        int wstatus;

        /* Quietly: after a ^C the daemon may be gone already. */
        if (demo->conn.fd < 0 || mv_proto_call(demo->conn.fd, &demo->conn.reader, request,
                                               &reply, why) < 0)
            kill(demo->daemon, SIGTERM);
        json_object_put(request);
        json_object_put(reply);
        for (int tries = 0; waitpid(demo->daemon, &wstatus, WNOHANG) == 0; tries++) {
            if (tries == 200)
                kill(demo->daemon, SIGKILL);
            usleep(50 * 1000);
        }
        if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
            status = command_failed("demo", "memvisord did not exit cleanly (%s %d)",
                                    WIFEXITED(wstatus) ? "status" : "signal",
                                    WIFEXITED(wstatus) ? WEXITSTATUS(wstatus)
                                                       : WTERMSIG(wstatus));
    }
    connection_close(&demo->conn);
    if (demo->dir[0]) {
        unlink(demo->socket_path);
        snprintf(path, sizeof(path), "%s.lock", demo->socket_path);
        unlink(path);
        rmdir(demo->dir);
    }
    return status;
}

static int demo_call(struct demo *demo, struct json_object *request,
                     struct json_object **reply)
{
    if (demo_interrupted) {
        json_object_put(request);
        return command_failed("demo", "interrupted");
    }
    return connection_call(&demo->conn, request, reply);
}

static int demo_create_domains(struct demo *demo)
{
    for (int i = 1; i <= DEMO_DOMAINS; i++) {
        struct json_object *request = mv_proto_request_new("create"), *workload, *reply;
        char name[MV_NAME_MAX];
        int rc;

        snprintf(name, sizeof(name), "demo-%d", i);
        json_object_object_add(request, "name", json_object_new_string(name));
        json_object_object_add(request, "maxmem", json_object_new_uint64(DEMO_MAXMEM));
        json_object_object_add(request, "target", json_object_new_uint64(DEMO_TARGET));
        json_object_object_add(request, "vcpus", json_object_new_int(DEMO_VCPUS));
        workload = json_object_new_object();
        json_object_object_add(workload, "kind", json_object_new_string("scrub"));
        json_object_object_add(request, "workload", workload);
        rc = demo_call(demo, request, &reply);
        if (rc != STATUS_OK)
            return rc;
        json_object_put(reply);
    }
    return STATUS_OK;
}

/* One line per domain; *done tells whether every workload finished. */
static int demo_print_progress(struct demo *demo, unsigned second, bool *done)
{
    struct json_object *reply;
    int rc = demo_call(demo, mv_proto_request_new("stats"), &reply);

    if (rc != STATUS_OK)
        return rc;
    *done = true;
    if (second > 1)
        printf("\n");
    for (size_t i = 0; i < field_length(reply, "domains"); i++) {
        struct json_object *d = field_item(reply, "domains", i);
        struct json_object *w = field(d, "workload");
        char populated[32], target[32], reclaimed[32];

        if (strcmp(field_string(d, "state"), "crashed") == 0) {
            rc = command_failed("demo", "%s crashed: %s", field_string(d, "name"),
                                field_string(d, "crash_reason"));
            break;
        }
        *done = *done && field_bool(w, "finished");
        printf("%3us  %-7s populated %9s of %-8s faults %7" PRIu64 "  sweeps %5" PRIu64
               "  reclaimed %9s  scrubbed %3" PRIu64 "%%\n", second,
               field_string(d, "name"),
               pages_text(populated, sizeof(populated), field_u64(d, "populated_pages")),
               pages_text(target, sizeof(target), field_u64(d, "target_pages")),
               field_u64(d, "faults"), field_u64(d, "sweeps"),
               pages_text(reclaimed, sizeof(reclaimed), field_u64(d, "reclaimed_zero")),
               field_u64(w, "pages_done") * 100 / (field_u64(d, "maxmem_pages") ?: 1));
    }
    fflush(stdout);
    json_object_put(reply);
    return rc;
}

static int demo_scrub(struct demo *demo)
{
    bool done = false;
    unsigned second;
    int rc;

    printf("Booting %d guests ballooned: maxmem %llu MiB, target %llu MiB, %d vCPUs each.\n"
           "Each zeroes all of its memory at boot, as Windows and many kernels do;\n"
           "populate-on-demand keeps it within its target by sweeping zero pages back.\n\n",
           DEMO_DOMAINS, DEMO_MAXMEM >> 20, DEMO_TARGET >> 20, DEMO_VCPUS);
    rc = demo_create_domains(demo);
    for (second = 1; rc == STATUS_OK && !done; second++) {
        if (second > DEMO_SCRUB_TIMEOUT_S)
            return command_failed("demo", "the scrubbers did not finish within %d s",
                                  DEMO_SCRUB_TIMEOUT_S);
        sleep(1);
        rc = demo_print_progress(demo, second, &done);
    }
    if (rc == STATUS_OK)
        printf("\nEvery guest scrubbed %llu MiB.\n", DEMO_MAXMEM >> 20);
    return rc;
}

/* Random writers on every domain, waited for. */
static int demo_random(struct demo *demo)
{
    int rc = STATUS_OK;

    printf("Random writers: %.1f s at %d pages/s per guest over its first %llu MiB...\n",
           DEMO_RANDOM_MS / 1000.0, DEMO_RANDOM_RATE, DEMO_WORKING_SET >> 20);
    fflush(stdout);
    for (int i = 1; rc == STATUS_OK && i <= DEMO_DOMAINS; i++) {
        struct json_object *request = mv_proto_request_new("workload-start"), *reply;
        char name[MV_NAME_MAX];

        snprintf(name, sizeof(name), "demo-%d", i);
        json_object_object_add(request, "domain", json_object_new_string(name));
        json_object_object_add(request, "kind", json_object_new_string("random"));
        json_object_object_add(request, "rate", json_object_new_int(DEMO_RANDOM_RATE));
        json_object_object_add(request, "duration_ms", json_object_new_int(DEMO_RANDOM_MS));
        json_object_object_add(request, "working_set", json_object_new_uint64(DEMO_WORKING_SET));
        rc = demo_call(demo, request, &reply);
        if (rc == STATUS_OK)
            json_object_put(reply);
    }
    for (int i = 1; rc == STATUS_OK && i <= DEMO_DOMAINS; i++) {
        struct json_object *status;
        char name[MV_NAME_MAX];

        snprintf(name, sizeof(name), "demo-%d", i);
        rc = workload_wait(&demo->conn, name, &status);
        if (rc != STATUS_OK)
            break;
        if (field_bool(status, "crashed"))
            rc = command_failed("demo", "%s crashed during the random writes", name);
        else
            printf("  %s wrote %" PRIu64 " pages\n", name, field_u64(status, "pages_done"));
        json_object_put(status);
    }
    return rc;
}

/* The content oracle of every domain, then the host audit. */
static int demo_check(struct demo *demo, uint64_t *mismatches)
{
    struct json_object *reply;
    int rc = STATUS_OK;

    *mismatches = 0;
    for (int i = 1; rc == STATUS_OK && i <= DEMO_DOMAINS; i++) {
        struct json_object *request = mv_proto_request_new("verify");
        char name[MV_NAME_MAX];

        snprintf(name, sizeof(name), "demo-%d", i);
        json_object_object_add(request, "domain", json_object_new_string(name));
        rc = demo_call(demo, request, &reply);
        if (rc == STATUS_OK) {
            *mismatches += field_u64(reply, "mismatches");
            json_object_put(reply);
        }
    }
    if (rc == STATUS_OK)
        rc = demo_call(demo, mv_proto_request_new("audit"), &reply);
    if (rc == STATUS_OK) {
        json_object_put(reply);
        printf("Content oracle: %" PRIu64 " mismatching pages; host audit: every "
               "invariant holds.\n", *mismatches);
    }
    return rc;
}

static int demo_summary(struct demo *demo, uint64_t mismatches)
{
    struct json_object *reply;
    uint64_t sweeps = 0, reclaimed = 0, peak, naive = DEMO_DOMAINS * DEMO_MAXMEM;
    char naive_text[32], peak_text[32], reclaimed_text[32];
    int rc = demo_call(demo, mv_proto_request_new("stats"), &reply);

    if (rc != STATUS_OK)
        return rc;
    for (size_t i = 0; i < field_length(reply, "domains"); i++) {
        sweeps += field_u64(field_item(reply, "domains", i), "sweeps");
        reclaimed += field_u64(field_item(reply, "domains", i), "reclaimed_zero");
    }
    peak = field_u64(field(reply, "host"), "peak_populated_pages") * MV_PAGE_SIZE;
    json_object_put(reply);
    printf("\nSummary\n"
           "  naive allocation, %d x %llu MiB   %s\n"
           "  peak populated on the host      %s (%.1fx less)\n"
           "  emergency zero sweeps           %" PRIu64 "\n"
           "  zero pages reclaimed            %s\n"
           "  content oracle mismatches       %" PRIu64 "\n",
           DEMO_DOMAINS, DEMO_MAXMEM >> 20,
           mv_proto_format_size(naive_text, sizeof(naive_text), naive),
           mv_proto_format_size(peak_text, sizeof(peak_text), peak),
           peak ? (double)naive / (double)peak : 0.0, sweeps,
           pages_text(reclaimed_text, sizeof(reclaimed_text), reclaimed), mismatches);
    if (mismatches)
        return command_failed("demo", "%" PRIu64 " pages lost or corrupted", mismatches);
    return STATUS_OK;
}

/*
 * The demo with real guests, where QEMU and the guest image are here: four
 * unmodified QEMU guests of 1 GiB each, booted ballooned with a 384 MiB
 * target (Debian's kernel zeroes all memory at boot with init_on_free=1,
 * and the zero sweep keeps each within its target), two of them busy; then
 * the sharing scanner, a balloon, the zero sweep, every guest's own
 * verifier and the audit, and naive against used memory.
 */
#define DEMO_VM_TARGET (384ull << 20)
#define DEMO_VM_BOOT_S 90
#define DEMO_VM_BALLOON (256ull << 20)

struct demo_vm {
    char image[PATH_MAX];
    struct mv_qemu guests[DEMO_DOMAINS];
};

/* The guest image and QEMU, or why the demo cannot use them (in why). */
static bool demo_vm_available(struct demo_vm *vm, char *why, size_t len)
{
    const char *env = getenv("MV_GUEST_IMAGE");
    char self[PATH_MAX], kernel[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    if (env && env[0]) {
        snprintf(vm->image, sizeof(vm->image), "%s", env);
    } else if (n > 0) {
        self[n] = '\0';
        snprintf(vm->image, sizeof(vm->image), "%s/vm", dirname(self));
    }
    if (system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0) {
        snprintf(why, len, "qemu-system-x86_64 is not installed (Debian package "
                 "qemu-system-x86)");
        return false;
    }
    snprintf(kernel, sizeof(kernel), "%s/vmlinuz", vm->image);
    if (access(kernel, R_OK) != 0) {
        snprintf(why, len, "no guest image in %s (scripts/guest-image.sh builds it)",
                 vm->image);
        return false;
    }
    return true;
}

static int demo_vm_create(struct demo *demo, struct demo_vm *vm)
{
    for (int i = 0; i < DEMO_DOMAINS; i++) {
        struct json_object *request = mv_proto_request_new("create"), *reply;
        char name[MV_NAME_MAX], path[PATH_MAX + 32];
        int rc;

        snprintf(name, sizeof(name), "vm-%d", i + 1);
        json_object_object_add(request, "name", json_object_new_string(name));
        json_object_object_add(request, "maxmem", json_object_new_uint64(DEMO_MAXMEM));
        json_object_object_add(request, "target", json_object_new_uint64(DEMO_VM_TARGET));
        json_object_object_add(request, "vmm", json_object_new_string("qemu"));
        snprintf(path, sizeof(path), "%s/vmlinuz", vm->image);
        json_object_object_add(request, "kernel", json_object_new_string(path));
        snprintf(path, sizeof(path), "%s/initramfs.cpio.gz", vm->image);
        json_object_object_add(request, "initrd", json_object_new_string(path));
        /* Two busy guests (a data-verifying writer and a page-cache reader),
         * two idle ones. */
        json_object_object_add(request, "append", json_object_new_string(
            i < 2 ? "console=ttyS0 init_on_free=1 quiet mv.run=verify:32,pagecache:32"
                  : "console=ttyS0 init_on_free=1 quiet mv.run=verify:8"));
        rc = demo_call(demo, request, &reply);
        if (rc != STATUS_OK)
            return rc;
        snprintf(vm->guests[i].name, sizeof(vm->guests[i].name), "%s", name);
        snprintf(vm->guests[i].ctl_path, sizeof(vm->guests[i].ctl_path), "%s",
                 field_string(reply, "control"));
        json_object_put(reply);
    }
    return STATUS_OK;
}

/* One line per guest; *booted when every guest's agent answers. */
static int demo_vm_progress(struct demo *demo, struct demo_vm *vm, unsigned second,
                            bool *booted)
{
    struct json_object *reply;
    int rc = demo_call(demo, mv_proto_request_new("stats"), &reply);

    if (rc != STATUS_OK)
        return rc;
    *booted = true;
    printf("%s", second > 1 ? "\n" : "");
    for (size_t i = 0; i < field_length(reply, "domains") && i < DEMO_DOMAINS; i++) {
        struct json_object *d = field_item(reply, "domains", i);
        char populated[32], target[32], reclaimed[32], answer[256], why[128];
        bool up;

        if (strcmp(field_string(d, "state"), "crashed") == 0) {
            rc = command_failed("demo", "%s crashed: %s", field_string(d, "name"),
                                field_string(d, "crash_reason"));
            break;
        }
        up = mv_qemu_guest_command(&vm->guests[i], "ping", answer, sizeof(answer), 300,
                                   why, sizeof(why)) == 0;
        *booted = *booted && up;
        printf("%3us  %-5s %-8s populated %9s of %-8s faults %7" PRIu64
               "  zero pages reclaimed %9s\n", second, field_string(d, "name"),
               up ? "running" : "booting",
               pages_text(populated, sizeof(populated), field_u64(d, "populated_pages")),
               pages_text(target, sizeof(target), field_u64(d, "target_pages")),
               field_u64(d, "faults"),
               pages_text(reclaimed, sizeof(reclaimed), field_u64(d, "reclaimed_zero")));
    }
    fflush(stdout);
    json_object_put(reply);
    return rc;
}

/* A number in a guest agent's reply. */
static uint64_t demo_vm_number(const char *reply, const char *key)
{
    char pattern[64];
    const char *at;

    snprintf(pattern, sizeof(pattern), "\"%s\":", key);
    at = strstr(reply, pattern);
    return at ? strtoull(at + strlen(pattern), NULL, 10) : UINT64_MAX;
}

/* Used memory now: the host's populated frames (own and shared). */
static int demo_vm_used(struct demo *demo, uint64_t *bytes, uint64_t *saved)
{
    struct json_object *reply;
    int rc = demo_call(demo, mv_proto_request_new("stats"), &reply);

    if (rc != STATUS_OK)
        return rc;
    *bytes = field_u64(field(reply, "host"), "populated_pages") * MV_PAGE_SIZE;
    json_object_put(reply);
    rc = demo_call(demo, mv_proto_request_new("share-stats"), &reply);
    if (rc != STATUS_OK)
        return rc;
    *saved = field_u64(field(reply, "share"), "saved_pages") * MV_PAGE_SIZE;
    json_object_put(reply);
    return STATUS_OK;
}

static int demo_vm_run(struct demo *demo, struct demo_vm *vm)
{
    struct json_object *request, *reply;
    uint64_t used_boot = 0, used = 0, saved = 0, mismatches = 0;
    char a[32], b[32], c[32], d[32], answer[512], why[256];
    bool booted = false;
    int rc;

    printf("Booting %d real guests under QEMU (Debian's kernel, busybox, TCG): maxmem "
           "%llu MiB,\ntarget %llu MiB each.  Each kernel zeroes all of its memory at boot "
           "(init_on_free=1);\npopulate-on-demand keeps it within its target by sweeping "
           "zero pages back.\n\n", DEMO_DOMAINS, DEMO_MAXMEM >> 20, DEMO_VM_TARGET >> 20);
    rc = demo_vm_create(demo, vm);
    for (unsigned second = 1; rc == STATUS_OK && !booted; second++) {
        if (second > DEMO_VM_BOOT_S)
            return command_failed("demo", "the guests did not boot within %d s",
                                  DEMO_VM_BOOT_S);
        sleep(1);
        rc = demo_vm_progress(demo, vm, second, &booted);
    }
    if (rc == STATUS_OK)
        rc = demo_vm_used(demo, &used_boot, &saved);
    if (rc != STATUS_OK)
        return rc;
    printf("\nEvery guest booted; the host holds %s for them.\n",
           mv_proto_format_size(a, sizeof(a), used_boot));

    printf("Sharing scanner: equal pages across the guests (the same kernel, the same "
           "programs)...\n");
    for (int pass = 0; rc == STATUS_OK && pass < 2; pass++) {
        rc = demo_call(demo, mv_proto_request_new("share-scan"), &reply);
        if (rc == STATUS_OK)
            json_object_put(reply);
    }
    if (rc == STATUS_OK)
        rc = demo_vm_used(demo, &used, &saved);
    if (rc != STATUS_OK)
        return rc;
    printf("  %s saved by sharing.\n", mv_proto_format_size(a, sizeof(a), saved));

    printf("Balloon: vm-4 gives its memory back down to %llu MiB (QEMU's virtio-balloon)...\n",
           DEMO_VM_BALLOON >> 20);
    request = mv_proto_request_new("balloon");
    json_object_object_add(request, "domain", json_object_new_string("vm-4"));
    json_object_object_add(request, "size", json_object_new_uint64(DEMO_VM_BALLOON));
    rc = demo_call(demo, request, &reply);
    if (rc != STATUS_OK)
        return rc;
    json_object_put(reply);
    for (int tries = 0; tries < 100; tries++) {
        if (mv_qemu_guest_command(&vm->guests[3], "meminfo", answer, sizeof(answer), 5000,
                                  why, sizeof(why)) == 0 &&
            demo_vm_number(answer, "MemTotal") < (DEMO_VM_BALLOON >> 10) + 64 * 1024)
            break;
        usleep(100 * 1000);
    }
    printf("  vm-4 sees MemTotal %llu MiB now.\n",
           (unsigned long long)(demo_vm_number(answer, "MemTotal") >> 10));

    printf("Zero sweep of every guest...\n");
    for (int i = 0; rc == STATUS_OK && i < DEMO_DOMAINS; i++) {
        request = mv_proto_request_new("reclaim");
        json_object_object_add(request, "domain", json_object_new_string(vm->guests[i].name));
        rc = demo_call(demo, request, &reply);
        if (rc == STATUS_OK)
            json_object_put(reply);
    }
    for (int i = 0; rc == STATUS_OK && i < DEMO_DOMAINS; i++) {
        if (mv_qemu_guest_command(&vm->guests[i], "verify-check", answer, sizeof(answer),
                                  10000, why, sizeof(why)) < 0)
            return command_failed("demo", "%s: %s", vm->guests[i].name, why);
        if (demo_vm_number(answer, "mismatches") == UINT64_MAX)
            return command_failed("demo", "%s's verifier answered %s", vm->guests[i].name,
                                  answer);
        mismatches += demo_vm_number(answer, "mismatches");
    }
    if (rc == STATUS_OK)
        rc = demo_call(demo, mv_proto_request_new("audit"), &reply);
    if (rc == STATUS_OK) {
        json_object_put(reply);
        rc = demo_vm_used(demo, &used, &saved);
    }
    if (rc != STATUS_OK)
        return rc;
    printf("Every guest's own verifier: %" PRIu64 " mismatching pages; host audit: every "
           "invariant holds.\n", mismatches);
    printf("\nSummary\n"
           "  naive allocation, %d x %llu MiB   %s\n"
           "  used after boot                 %s\n"
           "  used now                        %s (%.1fx less than naive)\n"
           "  saved by sharing                %s\n",
           DEMO_DOMAINS, DEMO_MAXMEM >> 20,
           mv_proto_format_size(a, sizeof(a), DEMO_DOMAINS * DEMO_MAXMEM),
           mv_proto_format_size(b, sizeof(b), used_boot),
           mv_proto_format_size(c, sizeof(c), used),
           used ? (double)(DEMO_DOMAINS * DEMO_MAXMEM) / (double)used : 0.0,
           mv_proto_format_size(d, sizeof(d), saved));
    if (mismatches)
        return command_failed("demo", "%" PRIu64 " guest pages lost or corrupted", mismatches);
    return STATUS_OK;
}

static int run_demo(const struct invocation *inv)
{
    struct demo demo = { .conn = { .fd = -1 } };
    struct sigaction sa = { .sa_handler = demo_on_signal };
    static struct demo_vm vm;
    char why[PATH_MAX + 64];
    bool real;
    struct json_object *report;
    uint64_t mismatches = 0;
    bool usable;
    int rc;

    (void)inv;
    report = doctor_report_here(&usable);
    if (!usable) {
        print_doctor(report);
        json_object_put(report);
        return STATUS_FAILED;
    }
    /* The daemon's default budget is 80% of MemAvailable. */
    if (field_u64(report, "mem_available_bytes") / 10 * 8 < DEMO_DOMAINS * DEMO_TARGET) {
        char available[32];

        mv_proto_format_size(available, sizeof(available),
                             field_u64(report, "mem_available_bytes"));
        json_object_put(report);
        return command_failed("demo", "the guests need %llu MiB, more than 80%% of "
                              "MemAvailable (%s)", DEMO_DOMAINS * DEMO_TARGET >> 20,
                              available);
    }
    json_object_put(report);
    /* No SA_RESTART: an interrupted call returns and the demo cleans up. */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    real = demo_vm_available(&vm, why, sizeof(why));
    if (!real)
        printf("Real guests need QEMU and the guest image: %s.\nRunning built-in "
               "guests instead.\n\n", why);
    rc = demo_start_daemon(&demo);
    if (rc == STATUS_OK && real) {
        rc = demo_vm_run(&demo, &vm);
    } else if (rc == STATUS_OK) {
        rc = demo_scrub(&demo);
        if (rc == STATUS_OK)
            rc = demo_random(&demo);
        if (rc == STATUS_OK)
            rc = demo_check(&demo, &mismatches);
        if (rc == STATUS_OK)
            rc = demo_summary(&demo, mismatches);
    }
    if (demo_cleanup(&demo) != STATUS_OK && rc == STATUS_OK)
        rc = STATUS_FAILED;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* hello and help                                                            */

static int run_hello(const struct invocation *inv)
{
    struct connection conn;
    struct json_object *commands;
    int status = connection_open(&conn, inv->command->name, inv->socket_path, false);

    if (status != STATUS_OK) {
        connection_close(&conn);
        return status;
    }
    if (option_set(inv, "json")) {
        struct json_object *out = conn.hello ? json_object_get(conn.hello)
                                             : json_object_new_object();

        json_object_object_add(out, "client_protocol",
                               json_object_new_string(MV_PROTO_VERSION));
        print_json(out);
        json_object_put(out);
    } else if (!conn.hello) {
        printf("memvisor %d.%d.%d, protocol %s; memvisord predates the hello (protocol "
               "1.0)\n", MV_VERSION_MAJOR, MV_VERSION_MINOR, MV_VERSION_PATCH,
               MV_PROTO_VERSION);
    } else {
        printf("memvisor %d.%d.%d, protocol %s\n", MV_VERSION_MAJOR, MV_VERSION_MINOR,
               MV_VERSION_PATCH, MV_PROTO_VERSION);
        printf("%s: protocol %s, library %s\ncommands:", field_string(conn.hello, "daemon"),
               field_string(conn.hello, "protocol"), field_string(conn.hello, "library"));
        commands = field(conn.hello, "commands");
        for (size_t i = 0; i < field_length(conn.hello, "commands"); i++)
            printf(" %s", json_object_get_string(json_object_array_get_idx(commands, i)));
        printf("\n");
    }
    connection_close(&conn);
    return STATUS_OK;
}

static int run_help(const struct invocation *inv);

/* ------------------------------------------------------------------------ */
/* Commands and main                                                         */

static const struct command commands[] = {
    {
        .name = "doctor", .operands = "",
        .summary = "check what this kernel offers memvisor",
        .description =
            "Probe the running kernel here (no daemon needed): release, userfaultfd\n"
            "access, each feature memvisor uses with the Linux version that brought it,\n"
            "vm.max_map_count, the shmem THP policy and MemAvailable, with advice for\n"
            "whatever is missing.  Exits 1 when a required feature is missing.",
        .options = OPTIONS(&opt_json, &opt_daemon), .run = run_doctor,
        .wire = WIRE("doctor"),
    },
    {
        .name = "create", .operands = "NAME", .min_operands = 1, .max_operands = 1,
        .summary = "create a domain, booted ballooned",
        .description =
            "Create a domain: NAME gets --maxmem of guest-physical memory, all of it\n"
            "populate-on-demand, of which at most --target may be populated at once.\n"
            "Prints the new domain's id.",
        .options = OPTIONS(&opt_maxmem, &opt_target, &opt_vcpus, &opt_policy,
                           &opt_wait_timeout, &opt_logdirty, &opt_cow_mode,
                           &opt_start_workload, &opt_create_rate, &opt_create_duration,
                           &opt_create_max_pages, &opt_create_working_set,
                           &opt_create_seed, &opt_vmm, &opt_kernel, &opt_initrd,
                           &opt_append, &opt_accel),
        .run = run_create, .wire = WIRE("create"),
    },
    {
        .name = "console", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "show a real guest's serial console",
        .description = "Print the last bytes of the serial console of DOMAIN, a guest "
                       "created with --vmm qemu.",
        .options = OPTIONS(&opt_console_bytes),
        .run = run_console, .wire = WIRE("console"),
    },
    {
        .name = "qmp", .operands = "DOMAIN JSON", .min_operands = 2, .max_operands = 2,
        .summary = "send a QMP command to a real guest's QEMU",
        .description = "Send JSON, one QMP command object, to the QEMU of DOMAIN and print "
                       "its answer, e.g. memvisor qmp vm1 '{\"execute\":\"query-status\"}'.",
        .run = run_qmp, .wire = WIRE("qmp"),
    },
    {
        .name = "destroy", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "destroy a domain",
        .description = "Stop DOMAIN's vCPUs and return all of its memory to the host, "
                       "scrubbed.",
        .run = run_destroy, .wire = WIRE("destroy"),
    },
    {
        .name = "list", .operands = "",
        .summary = "list the domains",
        .description = "One line per domain: id, name, state, vCPUs, maxmem, target, "
                       "populated,\nshared (memory mapping shared frames) and who copies "
                       "its shared pages\non a write (--cow-mode of create).",
        .options = OPTIONS(&opt_json), .run = run_list, .wire = WIRE("list"),
    },
    {
        .name = "pause", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "pause a domain",
        .description = "Stop DOMAIN's vCPUs at their next page and hold its faults until\n"
                       "unpause (waits up to 5 s for the vCPUs).",
        .run = run_pause, .wire = WIRE("pause"),
    },
    {
        .name = "unpause", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "let a paused domain run again",
        .description = "Resume DOMAIN's vCPUs and release its held faults.",
        .run = run_unpause, .wire = WIRE("unpause"),
    },
    {
        .name = "stats", .operands = "[DOMAIN]", .max_operands = 1,
        .summary = "show host and domain counters",
        .description =
            "The host's budget and populated memory, and for each domain (or DOMAIN\n"
            "only) its state, sizes, faults, 2 MiB and 4 KiB populates, zero sweeps,\n"
            "reclaimed memory, waits for memory, shared memory, copy-on-write breaks\n"
            "and crash reason.",
        .options = OPTIONS(&opt_json), .run = run_stats, .wire = WIRE("stats"),
    },
    {
        .name = "set-target", .operands = "DOMAIN SIZE", .min_operands = 2,
        .max_operands = 2,
        .summary = "change a domain's PoD target",
        .description =
            "Let DOMAIN have at most SIZE populated.  Lowering it below what is\n"
            "populated first reclaims zero pages, and fails with nothing changed when\n"
            "more pages hold data (balloon first).",
        .run = run_set_target, .wire = WIRE("set-target"),
    },
    {
        .name = "balloon", .operands = "DOMAIN SIZE", .min_operands = 2, .max_operands = 2,
        .summary = "resize a guest with its balloon driver",
        .description =
            "Ask DOMAIN's built-in balloon driver to leave the guest SIZE of usable\n"
            "memory: it gives unused pages back to the host (decrease_reservation) or\n"
            "takes them back (increase_reservation).  Prints the pages moved.",
        .run = run_balloon, .wire = WIRE("balloon"),
    },
    {
        .name = "reclaim", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "return a domain's zero pages to the host now",
        .description =
            "Run a zero-page sweep over DOMAIN's populated memory: every all-zero page\n"
            "goes back to the host and becomes populate-on-demand again.",
        .options = OPTIONS(&opt_reclaim_max_pages), .run = run_reclaim,
        .wire = WIRE("reclaim"),
    },
    {
        .name = "workload", .operands = "DOMAIN scrub|random|verify|cleancache|frontswap",
        .min_operands = 2, .max_operands = 2,
        .summary = "run a built-in guest workload",
        .description =
            "Run a workload on all of DOMAIN's vCPUs: scrub zeroes all of maxmem once,\n"
            "as operating systems do at boot; random writes random pages; verify reads\n"
            "every page through guest memory and checks it against the content oracle;\n"
            "cleancache and frontswap are tmem clients (a page cache and swap over\n"
            "transcendent memory) that verify every page they get back.\n"
            "Waits for the workload and reports it (exit 1 when pages differ or the\n"
            "domain crashed), unless --detach or a random workload without a limit.",
        .options = OPTIONS(&opt_rate, &opt_duration, &opt_workload_max_pages,
                           &opt_working_set, &opt_seed, &opt_detach),
        .run = run_workload, .wire = WIRE("workload-start", "workload-status"),
    },
    {
        .name = "workload-status", .operands = "DOMAIN", .min_operands = 1,
        .max_operands = 1,
        .summary = "show a domain's workload",
        .description = "Whether DOMAIN's workload still runs, pages done, time taken, "
                       "oracle\nmismatches and whether the domain crashed.",
        .options = OPTIONS(&opt_json), .run = run_workload_status,
        .wire = WIRE("workload-status"),
    },
    {
        .name = "workload-stop", .operands = "DOMAIN", .min_operands = 1,
        .max_operands = 1,
        .summary = "stop a domain's workload",
        .description = "Ask DOMAIN's vCPUs to stop their workload and wait for them.",
        .run = run_workload_stop, .wire = WIRE("workload-stop"),
    },
    {
        .name = "verify", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "check a domain against the content oracle",
        .description =
            "Compare every page of DOMAIN, from the host side, with what its built-in\n"
            "workloads last wrote.  Exits 1 when any page differs.",
        .run = run_verify, .wire = WIRE("verify"),
    },
    {
        .name = "audit", .operands = "[DOMAIN]", .max_operands = 1,
        .summary = "check every invariant",
        .description = "Walk the host's structures (or DOMAIN's only) and check every\n"
                       "invariant.  Exact while the guests are quiet.",
        .run = run_audit, .wire = WIRE("audit"),
    },
    {
        .name = "logdirty", .operands = "DOMAIN enable|disable|clean|peek|stats",
        .min_operands = 2, .max_operands = 2,
        .summary = "write-protect a domain and learn which pages it writes",
        .description =
            "enable write-protects all of DOMAIN's memory and starts its dirty log;\n"
            "clean fetches the pages written since the last clean and protects them\n"
            "again (peek fetches without clearing); disable stops logging.  Prints the\n"
            "counts and the log's counters: rounds, fetch time, write traps.",
        .options = OPTIONS(&opt_json), .run = run_logdirty, .wire = WIRE("logdirty"),
    },
    {
        .name = "wss", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "estimate a domain's working set from its dirty log",
        .description =
            "Print the pages DOMAIN writes in each interval (its writable working\n"
            "set), from dirty-log rounds.  Turns logging on for the measurement when\n"
            "it was off, and off again at the end or on Ctrl-C.",
        .options = OPTIONS(&opt_interval, &opt_count, &opt_json), .run = run_wss,
        .wire = WIRE("logdirty"),
    },
    {
        .name = "clone", .operands = "SRC_DOMAIN NEW_NAME", .min_operands = 2,
        .max_operands = 2,
        .summary = "clone a paused domain, sharing all of its memory",
        .description =
            "Create NEW_NAME with SRC_DOMAIN's configuration, sharing every populated\n"
            "page with it copy-on-write: no byte is copied until one side writes.\n"
            "SRC_DOMAIN must be paused ('memvisor pause') and stays paused; the clone\n"
            "runs.  Prints the new domain's id.",
        .run = run_clone, .wire = WIRE("clone"),
    },
    {
        .name = "share", .operands = "COMMAND [options] [arguments]",
        .summary = "copy-on-write page sharing ('memvisor share --help' lists them)",
        .run = run_share, .own_arguments = true,
    },
    {
        .name = "tmem", .operands = "COMMAND [options] [arguments]",
        .summary = "transcendent memory ('memvisor tmem --help' lists them)",
        .run = run_group, .own_arguments = true,
    },
    {
        .name = "fc", .operands = "COMMAND [options] [arguments]",
        .summary = "snapshot VMs: Firecracker's page-fault-handler hand-over "
                   "('memvisor fc --help')",
        .run = run_group, .own_arguments = true,
    },
    {
        .name = "page-out", .operands = "DOMAIN", .min_operands = 1, .max_operands = 1,
        .summary = "page cold pages of a domain out into compressed host memory",
        .description =
            "Page out up to --pages of DOMAIN's populated pages, cold ones first (not\n"
            "touched since the last paging pass), into a compressed pool the host owns.\n"
            "Their frames go back to the host; a touch pages them back in.",
        .options = OPTIONS(&opt_page_out_pages, &opt_json), .run = run_page_out,
        .wire = WIRE("page-out"),
    },
    {
        .name = "shutdown", .operands = "",
        .summary = "stop memvisord",
        .description = "Destroy every domain and stop the daemon.",
        .run = run_shutdown, .wire = WIRE("shutdown"),
    },
    {
        .name = "hello", .operands = "",
        .summary = "show the versions of memvisor and memvisord",
        .description =
            "Exchange protocol versions with memvisord (as every command does when it\n"
            "connects) and print both ends' versions and the commands the daemon\n"
            "serves.  Exits 1 when their major protocol versions differ.",
        .options = OPTIONS(&opt_json), .run = run_hello, .wire = WIRE("hello"),
    },
    {
        .name = "help", .operands = "[COMMAND] [--json]",
        .summary = "explain the commands ('help --json': the protocol's schema)",
        .run = run_help, .own_arguments = true,
    },
    {
        .name = "bench", .operands = "SUITE [options]",
        .summary = "run a benchmark suite ('memvisor bench --help' lists them)",
        .run = run_bench, .own_arguments = true,
    },
    {
        .name = "demo", .operands = "",
        .summary = "show populate-on-demand at work (about 10 s)",
        .description =
            "Start a private memvisord, boot four 1 GiB guests with 256 MiB each, let\n"
            "them zero all their memory, write randomly, check every page against the\n"
            "content oracle and audit; then compare the memory used with a naive\n"
            "allocation.  Exits 1 when a page was lost.",
        .run = run_demo,
    },
};

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor [--socket PATH] COMMAND [options] [arguments]\n"
        "\n"
        "Drive memvisord, the memvisor host daemon.  DOMAIN is a name or an id;\n"
        "SIZE is bytes or a number with K, M, G, T or P (binary units).\n"
        "\n"
        "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
        "\n"
        "options:\n"
        "  --socket PATH    memvisord's socket (default $%s, else\n"
        "                   %s)\n"
        "  --help           show this help; 'memvisor COMMAND --help' for a command\n"
        "  --version        show the version\n",
        MV_PROTO_SOCKET_ENV, MV_PROTO_SOCKET_DEFAULT);
}

/* The CLI commands that send the schema command `wire`, as a JSON list. */
static struct json_object *senders_json(const char *wire)
{
    struct json_object *list = json_object_new_array();
    const struct command *tables[] = { commands, share_commands, tmem_commands,
                                       fc_commands };
    size_t counts[] = { sizeof(commands) / sizeof(commands[0]),
                        sizeof(share_commands) / sizeof(share_commands[0]),
                        sizeof(tmem_commands) / sizeof(tmem_commands[0]),
                        sizeof(fc_commands) / sizeof(fc_commands[0]) };

    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++)
        for (size_t i = 0; i < counts[t]; i++)
            for (const char *const *w = tables[t][i].wire; w && *w; w++)
                if (strcmp(*w, wire) == 0)
                    json_object_array_add(list, json_object_new_string(tables[t][i].name));
    return list;
}

/*
 * `memvisor help`: the usage; `help COMMAND` (or `help share COMMAND`): the
 * command's help; `help --json`: the protocol's schema, each command with
 * the CLI commands that send it ("cli").
 */
static int run_help(const struct invocation *inv)
{
    char name[64] = "";

    if (inv->argc == 2 && strcmp(inv->argv[1], "--json") == 0) {
        struct json_object *schema = mv_schema_json(), *list;

        json_object_object_get_ex(schema, "commands", &list);
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            struct json_object *c = json_object_array_get_idx(list, i);

            json_object_object_add(c, "cli", senders_json(field_string(c, "name")));
        }
        print_json(schema);
        json_object_put(schema);
        return STATUS_OK;
    }
    if (inv->argc == 1 || strcmp(inv->argv[1], "--help") == 0 ||
        strcmp(inv->argv[1], "-h") == 0) {
        print_usage(stdout);
        return STATUS_OK;
    }
    for (int i = 1; i < inv->argc && i < 4; i++)
        snprintf(name + strlen(name), sizeof(name) - strlen(name), "%s%s", i > 1 ? " " : "",
                 inv->argv[i]);
    if (strcmp(name, "share") == 0) {
        print_share_usage(stdout);
        return STATUS_OK;
    }
    if (group_named(name)) {
        print_group_usage(group_named(name), stdout);
        return STATUS_OK;
    }
    if (group_command(name)) {
        print_command_help(group_command(name));
        return STATUS_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, name) == 0 && commands[i].description) {
            print_command_help(&commands[i]);
            return STATUS_OK;
        }
    for (size_t i = 0; i < sizeof(share_commands) / sizeof(share_commands[0]); i++)
        if (strcmp(share_commands[i].name, name) == 0) {
            print_command_help(&share_commands[i]);
            return STATUS_OK;
        }
    return usage_error("help", "no command '%s' to explain", name);
}

/* Whether --json is among the arguments (before a "--"): failures are then
 * reported as JSON. */
static bool wants_json(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--json") == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    enum { OPT_SOCKET = 256, OPT_VERSION };
    static const struct option global_options[] = {
        { "socket", required_argument, NULL, OPT_SOCKET },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, OPT_VERSION },
        { NULL, 0, NULL, 0 },
    };
    struct invocation inv = { 0 };
    const char *socket_option = NULL;
    int opt, status;

    json_errors = wants_json(argc, argv);
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+:h", global_options, NULL)) != -1) {
        switch (opt) {
        case OPT_SOCKET:
            socket_option = optarg;
            break;
        case 'h':
            print_usage(stdout);
            return STATUS_OK;
        case OPT_VERSION:
            printf("memvisor %d.%d.%d\n", MV_VERSION_MAJOR, MV_VERSION_MINOR,
                   MV_VERSION_PATCH);
            return STATUS_OK;
        default: {
            char why[160];

            mv_tool_bad_option(argv, global_options, opt, why, sizeof(why));
            return usage_error(NULL, "%s", why);
        }
        }
    }
    if (optind == argc)
        return usage_error(NULL, "no command given");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, argv[optind]) == 0)
            inv.command = &commands[i];
    if (!inv.command)
        return usage_error(NULL, "unknown command '%s'", argv[optind]);
    inv.argc = argc - optind;
    inv.argv = argv + optind;
    inv.socket_path = mv_proto_socket_path(socket_option);
    inv.options = json_object_new_object();
    status = inv.command->own_arguments ? -1 : parse_command_line(&inv, inv.argc, inv.argv);
    if (status < 0)
        status = inv.command->run(&inv);
    json_object_put(inv.options);
    return status;
}
