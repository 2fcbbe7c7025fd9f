/*
 * schema.h - the memvisord protocol's commands and arguments, written once.
 *
 * Every command the daemon serves is an entry of mv_schema_commands: its
 * wire name, a one-line summary, its arguments (name, type, required or
 * optional, default, range, allowed words, help) and flags.  The readers of
 * the protocol derive their views from it:
 *   - memvisord checks a request against its entry (mv_schema_check) before
 *     the command's handler, which the daemon finds by the wire name;
 *   - the memvisor CLI builds the options that carry request arguments, their
 *     value parsing and the per-command help from it;
 *   - tests/daemon_fuzz builds valid and mutated requests of every command
 *     from the types, limits and examples below.
 * tests/cli_schema.sh checks that each command has a daemon handler, a CLI
 * entry and fuzzer coverage, and that the CLI's help names every argument.
 * docs/protocol.md describes the protocol and its versions.
 */
#ifndef MV_SCHEMA_H
#define MV_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

enum mv_schema_type {
    MV_SCHEMA_STRING,   /* any string without NUL */
    MV_SCHEMA_NAME,     /* the name of a new domain: a string */
    MV_SCHEMA_DOMAIN,   /* a domain: a name, or an id as a number or digits */
    MV_SCHEMA_U64,      /* a JSON integer, 0 .. 2^64-1 */
    MV_SCHEMA_GFN,      /* a guest frame number: a JSON integer */
    MV_SCHEMA_HANDLE,   /* a sharing handle: a JSON integer */
    MV_SCHEMA_SIZE,     /* bytes: a JSON integer or a size string ("256M") */
    MV_SCHEMA_BOOL,     /* true or false */
    MV_SCHEMA_ENUM,     /* one of the words in `values` */
    MV_SCHEMA_OBJECT,   /* an object of the arguments in `members` */
    MV_SCHEMA_TYPES
};

struct mv_schema_arg {
    const char *name;               /* the request member */
    enum mv_schema_type type;
    bool required;
    const char *default_text;       /* what absence means, for help; or NULL */
    uint64_t max;                   /* integers: the largest accepted; 0: any */
    const char *max_hint;           /* said after "NAME N is above MAX" */
    const char *const *values;      /* MV_SCHEMA_ENUM: the words, NULL-ended */
    const char *noun;               /* MV_SCHEMA_ENUM: "unknown NOUN 'x'" */
    const struct mv_schema_arg *members; /* MV_SCHEMA_OBJECT: up to a NULL name */
    const char *option;             /* the CLI's option name when not the name
                                     * with '_' written '-' */
    const char *metavar;            /* the CLI's word for the value */
    const char *help;
    const char *const *examples;    /* valid values as JSON text, NULL-ended:
                                     * what the fuzzer sends as valid */
};

enum mv_schema_flags {
    MV_SCHEMA_LONG_RUNNING = 1,     /* may take seconds (a walk of memory, a wait) */
    MV_SCHEMA_TEST_ONLY = 2,        /* only with memvisord --test-commands */
    MV_SCHEMA_STOPS_DAEMON = 4,     /* success stops the daemon */
};

struct mv_schema_command {
    const char *name;               /* the wire name, "cmd" of a request */
    const char *summary;            /* one line */
    const struct mv_schema_arg *args; /* up to a NULL name */
    unsigned flags;                 /* enum mv_schema_flags */
    const char *alias_of;           /* another name of this command; its
                                     * arguments are those of alias_of */
    const char *replies;            /* the results besides "ok", for help */
};

extern const struct mv_schema_command mv_schema_commands[];
extern const size_t mv_schema_command_count;

/* The command named `name` (an alias is returned as itself), or NULL. */
const struct mv_schema_command *mv_schema_find(const char *name);

/* The command whose handler serves `command`: alias_of's entry for an
 * alias, the command itself otherwise. */
const struct mv_schema_command *mv_schema_target(const struct mv_schema_command *command);

/* The argument `path` of `command` ("maxmem", or "workload.rate" inside an
 * object argument), or NULL. */
const struct mv_schema_arg *mv_schema_arg(const struct mv_schema_command *command,
                                          const char *path);

/* The type's name for help and the schema's JSON: "string", "u64", ... */
const char *mv_schema_type_name(enum mv_schema_type type);

/* "a, b or c": the words of an enum argument, into `buf`. */
const char *mv_schema_words(const struct mv_schema_arg *arg, char *buf, size_t size);

/*
 * Check a request against `command`: no member but "cmd" and its arguments,
 * every required one present, each of its type and within its range, an
 * enum one of its words, an object's members likewise.  0, or -EINVAL with
 * `why` (MV_PROTO_DETAIL_MAX bytes) naming the first argument at fault.
 */
int mv_schema_check(const struct mv_schema_command *command, struct json_object *request,
                    char *why);

/* The schema as JSON: {"protocol": "M.N", "commands": [{"name", "summary",
 * "flags"..., "args": [{"name", "type", "required", ...}]}]}. */
struct json_object *mv_schema_json(void);

#endif /* MV_SCHEMA_H */
