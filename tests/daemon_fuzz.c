/*
 * daemon_fuzz.c - a deterministic fuzz test of memvisord's wire protocol:
 * every request gets one well-formed reply, every invalid request an error,
 * and no request crashes, wedges or disconnects the daemon.
 *
 * Usage: daemon_fuzz [--socket PATH] [--seed N] [--requests N] [--list-commands]
 *
 * Talks to a running daemon ($MEMVISOR_SOCKET or the default socket when
 * --socket is not given).  It first creates two 16 MiB domains with written
 * pages, so that requests naming a domain reach real paths, and sends the
 * valid request of every command of the protocol's schema (tools/schema.c)
 * once; --list-commands says which commands of the schema it covers.  Then each
 * request is one of those, mutated: arguments missing, of a JSON type the
 * command does not take, numbers negative, fractional, huge or overflowing,
 * sizes with bad units, strings empty, long or holding NUL and control
 * characters, nesting too deep, unknown commands and members, members given
 * twice; or, at the byte level, truncated or trailing JSON, values that are
 * not objects, garbage, raw control and non-UTF-8 bytes, lines longer than
 * MV_PROTO_MAX_REQUEST (the daemon answers EMSGSIZE, skips the line and keeps
 * the connection), lines sent in pieces, several lines in one write, blank
 * lines, and clients that hang up.  Domains come from the fixtures (by name,
 * id or digits), from stale ids and from names that match nothing.
 *
 * Each reply must be {"ok": true, ...} or {"ok": false} with an errno, its
 * word and a detail; an invalid request must get an error (EINVAL when the
 * command or a member name is wrong, EMSGSIZE for an oversized line).  Valid
 * requests stay cheap and harmless: never a valid `shutdown`, no size above
 * 64 MiB, waits of at most 20 ms.  Every UPKEEP_EVERY requests the host is
 * put back in shape (other domains destroyed, crashed fixtures recreated,
 * paused ones unpaused, workloads and the scanner stopped), and once more at
 * the end, when the daemon must still answer a new connection.  Each upkeep
 * ends with a host audit and a sharing audit, once the guests are quiet: a
 * failed one is a failure, with its detail.  So is, for any request, an audit verdict (EUCLEAN), an internal
 * inconsistency (EPROTO) or an error detail naming "(null)".  The same seed
 * sends the same bytes; without --seed one is drawn from the clock and the
 * pid, and printed first, so that any run can be replayed.
 *
 * Prints the first FAILURES_SHOWN failures, each with the request behind it,
 * then a summary; the exit status is 1 when anything failed, 2 on a usage
 * error.
 */
#include "protocol.h"
#include "schema.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_REQUESTS 5000u
/* Longest a reply may take: a pause alone may wait 5 s for vCPUs. */
#define REPLY_TIMEOUT_MS 20000
#define UPKEEP_EVERY 100u
#define FIXTURE_COUNT 2
#define FIXTURE_SEED "6061"
/* The largest size, and the longest wait_ms, sent as valid values. */
#define VALID_SIZE_MAX (64ull << 20)
#define VALID_WAIT_MS 20u
#define MAX_MEMBERS 16
#define MAX_REPLIES 8
#define MAX_PIECES 6
#define MAX_ERROR_WORDS 32
#define FAILURES_SHOWN 40u
#define SHOWN_BYTES 240u

#define COUNT(array) (sizeof(array) / sizeof((array)[0]))
#define PICK(array) ((array)[random_below(COUNT(array))])

/* ------------------------------------------------------------------------ */
/* Random numbers: splitmix64, so that a seed names one run                  */

static uint64_t random_state;

static uint64_t random_next(void)
{
    uint64_t z = (random_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t random_below(size_t n)
{
    return (size_t)(random_next() % n);
}

static bool random_percent(unsigned percent)
{
    return random_below(100) < percent;
}

/* ------------------------------------------------------------------------ */
/* Growing byte strings                                                      */

struct text {
    char *data;          /* NUL-terminated, may hold NULs */
    size_t length;
    size_t capacity;
};

static void text_reserve(struct text *t, size_t more)
{
    size_t capacity = t->capacity ? t->capacity : 64;
    char *data;

    if (t->length + more < t->capacity)
        return;
    while (capacity <= t->length + more)
        capacity *= 2;
    data = realloc(t->data, capacity);
    if (!data) {
        fputs("daemon_fuzz: out of memory\n", stderr);
        exit(EXIT_FAILURE);
    }
    t->data = data;
    t->capacity = capacity;
}

static void text_add(struct text *t, const void *bytes, size_t n)
{
    text_reserve(t, n);
    memcpy(t->data + t->length, bytes, n);
    t->length += n;
    t->data[t->length] = '\0';
}

static void text_addf(struct text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void text_addf(struct text *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    text_reserve(t, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(t->data + t->length, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->length += (size_t)n;
}

static void text_append(struct text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

static void text_repeat(struct text *t, const char *unit, size_t times)
{
    for (size_t i = 0; i < times; i++)
        text_add(t, unit, strlen(unit));
}

/* `n` bytes as a JSON string: quotes, backslashes and control characters
 * (NUL included) escaped, every other byte as it is. */
static void text_add_json_string(struct text *t, const char *bytes, size_t n)
{
    text_append(t, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)bytes[i];

        if (c == '"' || c == '\\')
            text_addf(t, "\\%c", c);
        else if (c < 0x20)
            text_addf(t, "\\u%04x", c);
        else
            text_add(t, &bytes[i], 1);
    }
    text_append(t, "\"");
}

static void text_set(struct text *t, const char *s)
{
    t->length = 0;
    text_append(t, s);
}

static void text_free(struct text *t)
{
    free(t->data);
    memset(t, 0, sizeof(*t));
}

/* ------------------------------------------------------------------------ */
/* The daemon's commands                                                     */

enum arg_kind {
    ARG_DOMAIN,     /* a domain: a name, or an id as a number or digits */
    ARG_NAME,       /* the name of a new domain */
    ARG_WORD,       /* one of the words in `samples` */
    ARG_STRING,     /* any string; `samples` are valid ones as JSON text */
    ARG_SIZE,       /* bytes: an integer or a size string */
    ARG_NUMBER,     /* an unsigned integer */
    ARG_GFN,        /* a guest frame number */
    ARG_HANDLE,     /* a sharing handle, preferably one the daemon issued */
    ARG_WORKLOAD,   /* an object of workload arguments */
};

struct arg {
    const char *key;
    enum arg_kind kind;
    bool required;
    const char *const *samples; /* valid values as JSON text; ARG_WORD: the words */
    uint64_t cap;               /* non-zero: no larger number is sent as valid... */
    uint64_t refused_above;     /* ...unless the daemon refuses it outright */
};

struct command {
    const char *name;
    const struct arg *args;     /* up to a NULL key */
    bool fatal;                 /* valid, it stops the daemon: never sent valid */
};

#define SAMPLES(...) ((const char *const[]){ __VA_ARGS__, NULL })

/*
 * The commands come from the protocol's schema (tools/schema.c): each
 * argument's type gives the kind of values sent, its examples the valid
 * ones, its range what the daemon refuses outright.  A command with an
 * argument of a type this fuzzer cannot make is left out, and listed as
 * such by --list-commands (tests/cli_schema.sh fails on it).  Test-only
 * commands are not sent.
 */
#define MAX_COMMANDS 64
#define MAX_ARGS 512

static struct command commands[MAX_COMMANDS];
static size_t command_count;
static struct arg arg_pool[MAX_ARGS];
static size_t arg_pool_used;
/* The members of the workload object (create's "workload"). */
static const struct arg *workload_args;
static const struct mv_schema_arg *workload_members;

/* Valid values that are not harmless: no domain above VALID_SIZE_MAX, no
 * wait above VALID_WAIT_MS. */
static uint64_t harmless_cap(const struct mv_schema_arg *a)
{
    if (strcmp(a->name, "maxmem") == 0)
        return VALID_SIZE_MAX;
    if (strcmp(a->name, "wait_ms") == 0)
        return VALID_WAIT_MS;
    return 0;
}

static const struct arg *convert_args(const struct mv_schema_arg *args);

/* One schema argument as the fuzzer's; false when it cannot make its values. */
static bool convert_arg(const struct mv_schema_arg *a, struct arg *out)
{
    *out = (struct arg){ .key = a->name, .required = a->required, .samples = a->examples,
                         .cap = harmless_cap(a), .refused_above = a->max };
    switch (a->type) {
    case MV_SCHEMA_DOMAIN:
        out->kind = ARG_DOMAIN;
        return true;
    case MV_SCHEMA_NAME:
        out->kind = ARG_NAME;
        return true;
    case MV_SCHEMA_HANDLE:
        out->kind = ARG_HANDLE;
        return true;
    case MV_SCHEMA_ENUM:
        out->kind = ARG_WORD;
        out->samples = a->values;
        return a->values && a->values[0];
    case MV_SCHEMA_STRING:
        out->kind = ARG_STRING;
        return a->examples && a->examples[0];
    case MV_SCHEMA_SIZE:
        out->kind = ARG_SIZE;
        return a->examples && a->examples[0];
    case MV_SCHEMA_U64:
        out->kind = ARG_NUMBER;
        return a->examples && a->examples[0];
    case MV_SCHEMA_GFN:
        out->kind = ARG_GFN;
        return a->examples && a->examples[0];
    case MV_SCHEMA_OBJECT:
        /* One object shape is known: the workload's. */
        if (workload_members && workload_members != a->members)
            return false;
        if (!workload_members) {
            workload_members = a->members;
            workload_args = convert_args(a->members);
        }
        out->kind = ARG_WORKLOAD;
        return workload_args != NULL;
    default:
        return false;
    }
}

/* A schema argument list as the fuzzer's, NULL-key ended; NULL when one of
 * them cannot be made. */
static const struct arg *convert_args(const struct mv_schema_arg *args)
{
    size_t n = 0, start = arg_pool_used;

    while (args[n].name)
        n++;
    if (start + n + 1 > MAX_ARGS)
        return NULL;
    arg_pool_used += n + 1;
    for (size_t i = 0; i < n; i++)
        if (!convert_arg(&args[i], &arg_pool[start + i]))
            return NULL;
    arg_pool[start + n] = (struct arg){ .key = NULL };
    return &arg_pool[start];
}

/* Every command of the schema this fuzzer can make requests of. */
static void build_commands(void)
{
    for (size_t i = 0; i < mv_schema_command_count && command_count < MAX_COMMANDS; i++) {
        const struct mv_schema_command *c = &mv_schema_commands[i];
        const struct arg *args;

        if (c->flags & MV_SCHEMA_TEST_ONLY)
            continue;
        args = convert_args(mv_schema_target(c)->args);
        if (!args)
            continue;
        commands[command_count++] = (struct command){
            .name = c->name, .args = args, .fatal = (c->flags & MV_SCHEMA_STOPS_DAEMON) != 0,
        };
    }
}

/* --list-commands: each schema command, "covered" or "not covered" (a
 * test-only one is "test-only"). */
static void list_commands(void)
{
    for (size_t i = 0; i < mv_schema_command_count; i++) {
        const struct mv_schema_command *c = &mv_schema_commands[i];
        bool covered = false;

        for (size_t j = 0; j < command_count; j++)
            covered |= strcmp(commands[j].name, c->name) == 0;
        printf("%s %s\n", c->name, (c->flags & MV_SCHEMA_TEST_ONLY) ? "test-only"
                                    : covered ? "covered" : "not covered");
    }
}

/* ------------------------------------------------------------------------ */
/* Bad values                                                                */

enum number_class {
    NUMBER_VALID,       /* a JSON integer in 0..UINT64_MAX */
    NUMBER_NEGATIVE,
    NUMBER_FRACTION,    /* a JSON number that is not an integer literal */
    NUMBER_OVERFLOW,    /* an integer literal beyond 64 bits */
    NUMBER_NOT_JSON,
};

struct number_case {
    const char *text;
    enum number_class class;
    uint64_t value;     /* NUMBER_VALID */
};

static const struct number_case number_cases[] = {
    { "0", NUMBER_VALID, 0 },
    { "-0", NUMBER_VALID, 0 },
    { "1", NUMBER_VALID, 1 },
    { "4095", NUMBER_VALID, 4095 },
    { "4096", NUMBER_VALID, 4096 },
    { "4097", NUMBER_VALID, 4097 },
    { "65536", NUMBER_VALID, 65536 },
    { "16777216", NUMBER_VALID, 16777216 },
    { "67108864", NUMBER_VALID, 67108864 },
    { "67108865", NUMBER_VALID, 67108865 },
    { "2147483647", NUMBER_VALID, 2147483647ull },
    { "2147483648", NUMBER_VALID, 2147483648ull },
    { "4294967295", NUMBER_VALID, 4294967295ull },
    { "4294967296", NUMBER_VALID, 4294967296ull },
    { "9007199254740993", NUMBER_VALID, 9007199254740993ull },
    { "9223372036854775807", NUMBER_VALID, 9223372036854775807ull },
    { "9223372036854775808", NUMBER_VALID, 9223372036854775808ull },
    { "18446744073709551615", NUMBER_VALID, UINT64_MAX },
    { "-1", NUMBER_NEGATIVE, 0 },
    { "-4096", NUMBER_NEGATIVE, 0 },
    { "-2147483648", NUMBER_NEGATIVE, 0 },
    { "-9223372036854775808", NUMBER_NEGATIVE, 0 },
    { "-9223372036854775809", NUMBER_NEGATIVE, 0 },
    { "-18446744073709551616", NUMBER_NEGATIVE, 0 },
    { "0.5", NUMBER_FRACTION, 0 },
    { "1.0", NUMBER_FRACTION, 0 },
    { "-1.5", NUMBER_FRACTION, 0 },
    { "1e3", NUMBER_FRACTION, 0 },
    { "1E+2", NUMBER_FRACTION, 0 },
    { "4096.0", NUMBER_FRACTION, 0 },
    { "2.5e9", NUMBER_FRACTION, 0 },
    { "1e400", NUMBER_FRACTION, 0 },
    { "-1e400", NUMBER_FRACTION, 0 },
    { "1e-400", NUMBER_FRACTION, 0 },
    { "1.7976931348623157e308", NUMBER_FRACTION, 0 },
    { "18446744073709551616", NUMBER_OVERFLOW, 0 },
    { "99999999999999999999999", NUMBER_OVERFLOW, 0 },
    { "340282366920938463463374607431768211456", NUMBER_OVERFLOW, 0 },
    { "01", NUMBER_NOT_JSON, 0 },
    { "+1", NUMBER_NOT_JSON, 0 },
    { ".5", NUMBER_NOT_JSON, 0 },
    { "1.", NUMBER_NOT_JSON, 0 },
    { "0x10", NUMBER_NOT_JSON, 0 },
    { "NaN", NUMBER_NOT_JSON, 0 },
    { "Infinity", NUMBER_NOT_JSON, 0 },
    { "-Infinity", NUMBER_NOT_JSON, 0 },
    { "-", NUMBER_NOT_JSON, 0 },
    { "1e", NUMBER_NOT_JSON, 0 },
    { "--1", NUMBER_NOT_JSON, 0 },
};

struct size_case {
    const char *text;
    bool valid;
    uint64_t bytes;     /* when valid */
};

static const struct size_case size_cases[] = {
    { "0", true, 0 },
    { "1B", true, 1 },
    { "4096", true, 4096 },
    { "4097", true, 4097 },
    { "4K", true, 4096 },
    { "4kb", true, 4096 },
    { "4KiB", true, 4096 },
    { "16M", true, 16ull << 20 },
    { "16mib", true, 16ull << 20 },
    { "64M", true, 64ull << 20 },
    { "007M", true, 7ull << 20 },
    { "1G", true, 1ull << 30 },
    { "1T", true, 1ull << 40 },
    { "16383P", true, 16383ull << 50 },
    { "", false, 0 },
    { "M", false, 0 },
    { "K4", false, 0 },
    { "1Q", false, 0 },
    { "1KK", false, 0 },
    { "1.5M", false, 0 },
    { "-1M", false, 0 },
    { "+1M", false, 0 },
    { " 1M", false, 0 },
    { "1M ", false, 0 },
    { "1 M", false, 0 },
    { "1MiBB", false, 0 },
    { "1Mi", false, 0 },
    { "1iB", false, 0 },
    { "0x1000", false, 0 },
    { "1e6", false, 0 },
    { "16777216.0", false, 0 },
    { "16384P", false, 0 },
    { "99999999999P", false, 0 },
    { "18446744073709551616", false, 0 },
    { "18446744073709551615K", false, 0 },
    { "\xd9\xa1\xd9\xa6M", false, 0 },
};

/* Strings for string arguments; long ones are made on the spot. */
static const char *const odd_strings[] = {
    "", " ", "x", "-", "fuzz-a ", " fuzz-a", "FUZZ-A", "fuzz-a\n", "a\tb", "\x01",
    "\x1f", "\x7f", "\xce\xb4\xce\xbf\xce\xbc\xce\xae", "\xf0\x9f\x98\x80", "%s%s%n%x",
    "../../../../etc/passwd", "0", "-1", "1.5", "4294967295", "4294967296", "0x10",
    "1e3", "null", "true", "[]", "{}", "\\", "\"", "'",
};

static const size_t long_string_lengths[] = { 63, 64, 255, 4000, 60000 };

/* Member names no command takes. */
static const char *const extra_keys[] = {
    "bogus", "", "Domain", "domain ", " domain", "cmd ", "CMD", "ok", "errno", "detail",
    "__proto__", "domains", "name2", "\x01", "\xc3\xa9",
};

static const char *const extra_values[] = { "1", "null", "\"x\"", "[]", "{}", "true" };

/* JSON values by type, for arguments given the wrong one. */
enum json_kind { JSON_STRING, JSON_INTEGER, JSON_DOUBLE, JSON_BOOLEAN, JSON_NULL,
                 JSON_ARRAY, JSON_OBJECT, JSON_KINDS };

static const char *const *const values_of_kind[JSON_KINDS] = {
    [JSON_STRING] = SAMPLES("\"16M\"", "\"abc\"", "\"1\"", "\"\""),
    [JSON_INTEGER] = SAMPLES("1", "0", "4096"),
    [JSON_DOUBLE] = SAMPLES("1.5", "-0.25", "1e3"),
    [JSON_BOOLEAN] = SAMPLES("true", "false"),
    [JSON_NULL] = SAMPLES("null"),
    [JSON_ARRAY] = SAMPLES("[]", "[1,2]", "[\"fuzz-a\"]", "[{\"cmd\":\"list\"}]"),
    [JSON_OBJECT] = SAMPLES("{}", "{\"a\":1}", "{\"kind\":\"scrub\"}"),
};

static bool kind_accepts(enum arg_kind kind, enum json_kind json)
{
    switch (kind) {
    case ARG_DOMAIN:
    case ARG_SIZE:
        return json == JSON_STRING || json == JSON_INTEGER;
    case ARG_NAME:
    case ARG_WORD:
    case ARG_STRING:
        return json == JSON_STRING;
    case ARG_NUMBER:
    case ARG_GFN:
    case ARG_HANDLE:
        return json == JSON_INTEGER;
    case ARG_WORKLOAD:
        return json == JSON_OBJECT;
    }
    return false;
}

/* Whether `value`, which the protocol accepts, may be sent for `arg`: not
 * above its cap unless the daemon refuses it before acting on it. */
static bool is_harmless(const struct arg *arg, uint64_t value)
{
    if (!arg->cap || value <= arg->cap)
        return true;
    if (arg->refused_above && value > arg->refused_above)
        return true;
    return arg->kind == ARG_SIZE && value % MV_PAGE_SIZE != 0;
}

/* ------------------------------------------------------------------------ */
/* Requests as members of JSON text                                          */

/* How wrong a member or a request is. */
enum fault {
    FAULT_NONE,         /* may be valid */
    FAULT_ARGUMENT,     /* an argument is wrong: an error reply */
    FAULT_REQUEST,      /* the command or a member name is wrong: EINVAL */
};

struct member {
    struct text key;    /* the name's bytes */
    struct text value;  /* JSON text */
    enum fault fault;
};

struct message {
    struct member members[MAX_MEMBERS];
    size_t count;
};

static int message_find(const struct message *m, const char *key)
{
    size_t n = strlen(key);

    for (size_t i = 0; i < m->count; i++)
        if (m->members[i].key.length == n && memcmp(m->members[i].key.data, key, n) == 0)
            return (int)i;
    return -1;
}

static struct member *message_add(struct message *m, const char *key, size_t key_length)
{
    struct member *member;

    if (m->count == MAX_MEMBERS)
        return NULL;
    member = &m->members[m->count++];
    memset(member, 0, sizeof(*member));
    text_add(&member->key, key, key_length);
    return member;
}

static void message_remove(struct message *m, size_t index)
{
    text_free(&m->members[index].key);
    text_free(&m->members[index].value);
    memmove(&m->members[index], &m->members[index + 1],
            (m->count - index - 1) * sizeof(m->members[0]));
    m->count--;
}

static void message_free(struct message *m)
{
    while (m->count)
        message_remove(m, m->count - 1);
}

/* The message as one JSON object, without a newline. */
static void message_encode(const struct message *m, bool spaced, struct text *out)
{
    const char *gap = spaced ? " " : "";

    text_append(out, "{");
    for (size_t i = 0; i < m->count; i++) {
        if (i)
            text_addf(out, ",%s", gap);
        text_add_json_string(out, m->members[i].key.data, m->members[i].key.length);
        text_addf(out, ":%s", gap);
        text_add(out, m->members[i].value.data, m->members[i].value.length);
    }
    text_append(out, "}");
}

static const struct arg *find_arg(const struct arg *args, const struct member *member)
{
    for (const struct arg *a = args; a->key; a++)
        if (member->key.length == strlen(a->key) &&
            memcmp(member->key.data, a->key, member->key.length) == 0)
            return a;
    return NULL;
}

/* How wrong the whole message is: its worst member, a missing required
 * argument, and for a request a missing command. */
static enum fault assess_message(const struct message *m, const struct arg *args, bool request)
{
    enum fault worst = FAULT_NONE;

    for (size_t i = 0; i < m->count; i++)
        if (m->members[i].fault > worst)
            worst = m->members[i].fault;
    for (const struct arg *a = args; a->key; a++)
        if (a->required && message_find(m, a->key) < 0 && worst < FAULT_ARGUMENT)
            worst = FAULT_ARGUMENT;
    if (request && message_find(m, "cmd") < 0)
        worst = FAULT_REQUEST;
    return worst;
}

/* ------------------------------------------------------------------------ */
/* Fuzzer state                                                              */

struct fixture {
    const char *name;
    uint32_t domid;
    bool nominated;           /* gfn and handle come from share-nominate */
    uint64_t gfn, handle;
};

struct connection {
    int fd;
    struct mv_proto_reader reader;
};

struct error_word {
    char word[64];
    unsigned count;
};

struct fuzz {
    const char *socket_path;
    struct connection conn;
    struct fixture fixtures[FIXTURE_COUNT];
    uint32_t stale_domid;     /* a domain that was destroyed */
    unsigned names_made;
    /* this request's fixtures: [0] for its domain or source, [1] for its client;
     * whether it names them, and uses what share-nominate gave */
    size_t side_fixture[2];
    bool side_valid[2];
    bool side_nominated[2];
    /* counters */
    unsigned requests;
    unsigned lines;
    unsigned upkeep_requests;
    unsigned ok_replies;
    unsigned error_replies;
    struct error_word error_words[MAX_ERROR_WORDS];
    unsigned failures;
    bool stopped;             /* the daemon is gone or stopped answering */
};

static void report_failure(struct fuzz *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void report_failure(struct fuzz *f, const char *fmt, ...)
{
    va_list ap;

    if (++f->failures > FAILURES_SHOWN)
        return;
    fputs("daemon_fuzz: FAIL ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
}

static void count_error_word(struct fuzz *f, const char *word)
{
    size_t i = 0;

    while (i < MAX_ERROR_WORDS && f->error_words[i].count &&
           strcmp(f->error_words[i].word, word) != 0)
        i++;
    if (i == MAX_ERROR_WORDS)
        return;
    snprintf(f->error_words[i].word, sizeof(f->error_words[i].word), "%s", word);
    f->error_words[i].count++;
}

/* ------------------------------------------------------------------------ */
/* Valid values                                                              */

/* A domain argument: the side's fixture by name, id or digits, or a domain
 * that does not exist. */
static void choose_domain(struct fuzz *f, size_t side, struct text *out)
{
    const struct fixture *x = &f->fixtures[f->side_fixture[side]];
    static const char *const nowhere[] = {
        "0", "99999", "4294967295", "4294967296", "\"4294967296\"", "\"nosuch\"", "\"\"",
        "\"fuzz\"",
    };

    if (!f->side_valid[side]) {
        if (random_percent(25))
            text_addf(out, "%" PRIu32, f->stale_domid);
        else
            text_set(out, PICK(nowhere));
        return;
    }
    switch (random_below(4)) {
    case 0:
        text_addf(out, "%" PRIu32, x->domid);
        break;
    case 1:
        text_addf(out, "\"%" PRIu32 "\"", x->domid);
        break;
    default:
        text_add_json_string(out, x->name, strlen(x->name));
        break;
    }
}

static void choose_value(struct fuzz *f, const struct arg *arg, struct text *out);

/* A workload object: its kind and some of its other arguments. */
static void choose_workload(struct fuzz *f, struct message *m)
{
    for (const struct arg *a = workload_args; a->key; a++) {
        struct member *member;

        if (!a->required && !random_percent(40))
            continue;
        member = message_add(m, a->key, strlen(a->key));
        choose_value(f, a, &member->value);
    }
}

/* A valid-looking value for `arg` as JSON text. */
static void choose_value(struct fuzz *f, const struct arg *arg, struct text *out)
{
    size_t side = strncmp(arg->key, "client_", 7) == 0;
    const struct fixture *x = &f->fixtures[f->side_fixture[side]];
    struct message workload = { .count = 0 };
    const char *word;
    size_t samples = 0;

    out->length = 0;
    while (arg->samples && arg->samples[samples])
        samples++;
    switch (arg->kind) {
    case ARG_DOMAIN:
        choose_domain(f, side, out);
        break;
    case ARG_NAME:
        if (random_percent(15))
            text_add_json_string(out, x->name, strlen(x->name));
        else
            text_addf(out, "\"fz-%u\"", ++f->names_made);
        break;
    case ARG_WORD:
        word = arg->samples[random_below(samples)];
        text_add_json_string(out, word, strlen(word));
        break;
    case ARG_GFN:
        if (f->side_nominated[side])
            text_addf(out, "%" PRIu64, x->gfn);
        else
            text_set(out, arg->samples[random_below(samples)]);
        break;
    case ARG_HANDLE:
        if (f->side_nominated[side])
            text_addf(out, "%" PRIu64, x->handle);
        else
            text_set(out, random_percent(50) ? "1" : "18446744073709551615");
        break;
    case ARG_WORKLOAD:
        choose_workload(f, &workload);
        message_encode(&workload, false, out);
        message_free(&workload);
        break;
    case ARG_SIZE:
    case ARG_NUMBER:
    case ARG_STRING:
        text_set(out, arg->samples[random_below(samples)]);
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Mutations                                                                 */

enum mutation {
    MUTATE_OMIT,        /* drop an argument */
    MUTATE_TYPE,        /* an argument of a JSON type the command does not take */
    MUTATE_NUMBER,      /* negative, huge, fractional, overflowing, not JSON */
    MUTATE_SIZE,        /* a size string with a bad unit, sign, spaces... */
    MUTATE_STRING,      /* a string argument empty, long or odd */
    MUTATE_NUL,         /* a NUL inside the command, a member name or a string */
    MUTATE_NEST,        /* arrays or objects nested deep */
    MUTATE_EXTRA,       /* a member no command takes */
    MUTATE_COMMAND,     /* an unknown command, or none, or not a string */
    MUTATE_WORKLOAD,    /* a mutation inside the workload object */
    MUTATE_DUPLICATE,   /* an argument given twice: the last one counts */
    MUTATIONS,
};

struct mutating {
    struct fuzz *f;
    struct message *m;
    const struct arg *args;
    const char *command;      /* NULL inside a nested object */
    struct text *notes;       /* what was done, for messages */
};

/* A random member that is one of the arguments, of a kind `accepts` says
 * yes to (NULL: any); -1 when there is none. */
static int pick_argument(const struct mutating *mu, bool (*accepts)(enum arg_kind))
{
    int candidates[MAX_MEMBERS];
    size_t n = 0;

    for (size_t i = 0; i < mu->m->count; i++) {
        const struct arg *a = find_arg(mu->args, &mu->m->members[i]);

        if (a && (!accepts || accepts(a->kind)))
            candidates[n++] = (int)i;
    }
    return n ? candidates[random_below(n)] : -1;
}

static bool kind_is_size(enum arg_kind kind)
{
    return kind == ARG_SIZE;
}

static bool kind_is_string(enum arg_kind kind)
{
    return kind == ARG_DOMAIN || kind == ARG_NAME || kind == ARG_WORD || kind == ARG_STRING;
}

static bool kind_is_workload(enum arg_kind kind)
{
    return kind == ARG_WORKLOAD;
}

static void note(struct mutating *mu, const struct member *member, const char *what)
{
    text_addf(mu->notes, "; %s '%.*s'", what, (int)member->key.length, member->key.data);
}

static bool mutate_omit(struct mutating *mu)
{
    int i = pick_argument(mu, NULL);

    if (i < 0)
        return false;
    note(mu, &mu->m->members[i], "without");
    message_remove(mu->m, (size_t)i);
    return true;
}

static bool mutate_type(struct mutating *mu)
{
    int i = pick_argument(mu, NULL);
    struct member *member;
    const struct arg *a;
    enum json_kind json;
    size_t n = 0;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    a = find_arg(mu->args, member);
    do
        json = (enum json_kind)random_below(JSON_KINDS);
    while (kind_accepts(a->kind, json));
    while (values_of_kind[json][n])
        n++;
    text_set(&member->value, values_of_kind[json][random_below(n)]);
    /* json-c gives a null member as absent: the default of an optional one. */
    member->fault = json == JSON_NULL && !a->required ? FAULT_NONE : FAULT_ARGUMENT;
    note(mu, member, "wrong type for");
    return true;
}

static bool mutate_number(struct mutating *mu)
{
    int i = pick_argument(mu, NULL);
    const struct number_case *c;
    struct member *member;
    const struct arg *a;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    a = find_arg(mu->args, member);
    do
        c = &PICK(number_cases);
    while (c->class == NUMBER_VALID && !is_harmless(a, c->value));
    text_set(&member->value, c->text);
    member->fault = c->class == NUMBER_VALID && kind_accepts(a->kind, JSON_INTEGER)
                        ? FAULT_NONE : FAULT_ARGUMENT;
    note(mu, member, "odd number for");
    return true;
}

static bool mutate_size(struct mutating *mu)
{
    int i = pick_argument(mu, kind_is_size);
    const struct size_case *c;
    struct member *member;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    do
        c = &PICK(size_cases);
    while (c->valid && !is_harmless(find_arg(mu->args, member), c->bytes));
    member->value.length = 0;
    text_add_json_string(&member->value, c->text, strlen(c->text));
    member->fault = c->valid ? FAULT_NONE : FAULT_ARGUMENT;
    note(mu, member, "odd size for");
    return true;
}

static bool is_word_of(const struct arg *a, const char *text, size_t length)
{
    for (size_t i = 0; a->samples[i]; i++)
        if (strlen(a->samples[i]) == length && memcmp(a->samples[i], text, length) == 0)
            return true;
    return false;
}

static bool mutate_string(struct mutating *mu)
{
    int i = pick_argument(mu, kind_is_string);
    struct text s = { .length = 0 };
    struct member *member;
    const struct arg *a;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    a = find_arg(mu->args, member);
    if (random_percent(25))
        text_repeat(&s, "a", PICK(long_string_lengths));
    else
        text_set(&s, PICK(odd_strings));
    member->value.length = 0;
    text_add_json_string(&member->value, s.data, s.length);
    if (a->kind == ARG_WORD)
        member->fault = is_word_of(a, s.data, s.length) ? FAULT_NONE : FAULT_ARGUMENT;
    else if (a->kind == ARG_NAME)
        member->fault = s.length == 0 || s.length >= MV_NAME_MAX ? FAULT_ARGUMENT : FAULT_NONE;
    else
        member->fault = FAULT_NONE;
    note(mu, member, "odd string for");
    text_free(&s);
    return true;
}

/*
 * A NUL where no valid request has one: after the command's name, after a
 * member's name, or inside a string value.  None names anything the daemon
 * knows, so each must be refused like any other unknown name or value.
 */
static bool mutate_nul(struct mutating *mu)
{
    static const char nul_suffix[] = "\0x";
    int i = -1;
    struct member *member;

    switch (random_below(3)) {
    case 0:
        if (!mu->command)
            return false;
        i = message_find(mu->m, "cmd");
        if (i < 0)
            return false;
        member = &mu->m->members[i];
        member->value.length = 0;
        text_add_json_string(&member->value, mu->command, strlen(mu->command));
        member->value.length--;
        text_append(&member->value, "\\u0000x\"");
        member->fault = FAULT_REQUEST;
        note(mu, member, "NUL in the command of");
        return true;
    case 1:
        i = pick_argument(mu, NULL);
        if (i < 0)
            return false;
        member = &mu->m->members[i];
        text_add(&member->key, nul_suffix, sizeof(nul_suffix) - 1);
        member->fault = FAULT_REQUEST;
        note(mu, member, "NUL in the name");
        return true;
    default:
        i = pick_argument(mu, NULL);
        if (i < 0)
            return false;
        member = &mu->m->members[i];
        if (member->value.length < 2 || member->value.data[0] != '"')
            return false;
        member->value.length--;
        text_append(&member->value, "\\u0000x\"");
        member->fault = FAULT_ARGUMENT;
        note(mu, member, "NUL in the string of");
        return true;
    }
}

static bool mutate_nest(struct mutating *mu)
{
    static const size_t depths[] = { 2, 31, 32, 33, 200, 20000 };
    int i = pick_argument(mu, NULL);
    size_t depth = PICK(depths);
    struct member *member;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    member->value.length = 0;
    if (random_percent(50)) {
        text_repeat(&member->value, "[", depth);
        text_repeat(&member->value, "]", depth);
    } else {
        text_repeat(&member->value, "{\"a\":", depth);
        text_append(&member->value, "1");
        text_repeat(&member->value, "}", depth);
    }
    member->fault = FAULT_ARGUMENT;
    note(mu, member, "nested value for");
    return true;
}

static bool mutate_extra(struct mutating *mu)
{
    const char *key = PICK(extra_keys);
    struct text long_key = { .length = 0 };
    struct member *member;

    if (random_percent(10))
        text_repeat(&long_key, "k", 300);
    else
        text_set(&long_key, key);
    member = message_add(mu->m, long_key.data, long_key.length);
    text_free(&long_key);
    if (!member)
        return false;
    text_set(&member->value, PICK(extra_values));
    member->fault = FAULT_REQUEST;
    note(mu, member, "unknown member");
    return true;
}

static bool mutate_command(struct mutating *mu)
{
    static const char *const others[] = { "1", "null", "[]", "{}", "true", "[\"list\"]", "1.5" };
    int i = mu->command ? message_find(mu->m, "cmd") : -1;
    struct text name = { .length = 0 };
    struct member *member;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    text_set(&name, mu->command);
    switch (random_below(9)) {
    case 0:
        for (size_t k = 0; k < name.length; k++)
            if (name.data[k] >= 'a' && name.data[k] <= 'z')
                name.data[k] = (char)(name.data[k] - 'a' + 'A');
        break;
    case 1:
        text_append(&name, " ");
        break;
    case 2:
        text_set(&name, " ");
        text_add(&name, mu->command, strlen(mu->command));
        break;
    case 3:
        for (size_t k = 0; k < name.length; k++)
            if (name.data[k] == '-')
                name.data[k] = '_';
        text_append(&name, "s");
        break;
    case 4:
        text_set(&name, PICK(odd_strings));
        break;
    case 5:
        text_set(&name, "nope");
        break;
    case 6:
        note(mu, member, "without");
        message_remove(mu->m, (size_t)i);
        text_free(&name);
        return true;
    default:
        text_set(&member->value, PICK(others));
        member->fault = FAULT_REQUEST;
        note(mu, member, "wrong type for");
        text_free(&name);
        return true;
    }
    member->value.length = 0;
    text_add_json_string(&member->value, name.data, name.length);
    member->fault = FAULT_REQUEST;
    note(mu, member, "unknown command in");
    text_free(&name);
    return true;
}

static void mutate(struct mutating *mu, unsigned count);

static bool mutate_workload(struct mutating *mu)
{
    int i = pick_argument(mu, kind_is_workload);
    struct message nested = { .count = 0 };
    struct mutating inner = { mu->f, &nested, workload_args, NULL, mu->notes };
    struct member *member;

    if (i < 0)
        return false;
    member = &mu->m->members[i];
    choose_workload(mu->f, &nested);
    text_append(mu->notes, "; in the workload");
    mutate(&inner, 1 + (unsigned)random_below(2));
    member->value.length = 0;
    message_encode(&nested, false, &member->value);
    /* The object's own members are checked after the other arguments. */
    member->fault = assess_message(&nested, workload_args, false) ? FAULT_ARGUMENT : FAULT_NONE;
    message_free(&nested);
    return true;
}

/* Give an argument again with a valid value: json-c keeps the last one. */
static bool mutate_duplicate(struct mutating *mu)
{
    int i = pick_argument(mu, NULL);
    struct member *earlier, *later;
    const struct arg *a;

    if (i < 0 || mu->m->count == MAX_MEMBERS)
        return false;
    earlier = &mu->m->members[i];
    a = find_arg(mu->args, earlier);
    later = message_add(mu->m, earlier->key.data, earlier->key.length);
    earlier = &mu->m->members[i];
    choose_value(mu->f, a, &later->value);
    earlier->fault = FAULT_NONE;
    note(mu, later, "twice");
    return true;
}

/* Apply `count` mutations; a duplicate only comes last, so that no later
 * mutation changes the member it superseded. */
static void mutate(struct mutating *mu, unsigned count)
{
    static bool (*const apply[MUTATIONS])(struct mutating *) = {
        [MUTATE_OMIT] = mutate_omit,
        [MUTATE_TYPE] = mutate_type,
        [MUTATE_NUMBER] = mutate_number,
        [MUTATE_SIZE] = mutate_size,
        [MUTATE_STRING] = mutate_string,
        [MUTATE_NUL] = mutate_nul,
        [MUTATE_NEST] = mutate_nest,
        [MUTATE_EXTRA] = mutate_extra,
        [MUTATE_COMMAND] = mutate_command,
        [MUTATE_WORKLOAD] = mutate_workload,
        [MUTATE_DUPLICATE] = mutate_duplicate,
    };

    for (unsigned done = 0; done < count;) {
        size_t choices = done + 1 == count ? MUTATIONS : MUTATE_DUPLICATE;

        if (apply[random_below(choices)](mu))
            done++;
    }
}

/* ------------------------------------------------------------------------ */
/* Exchanges: bytes to send and the replies they must get                    */

enum outcome { EXPECT_ANY, EXPECT_OK, EXPECT_ERROR };

struct expectation {
    enum outcome outcome;
    int err;                  /* EXPECT_ERROR: this errno, or 0 for any */
};

struct exchange {
    struct text bytes;                  /* what goes on the connection */
    size_t cuts[MAX_PIECES];            /* sent in pieces, cut at these offsets */
    size_t cut_count;
    struct expectation replies[MAX_REPLIES];
    size_t reply_count;
    struct text what;                   /* what the bytes are, for messages */
    struct text side;                   /* sent on a connection that then hangs up */
    int nominating;                     /* fixture a valid share-nominate names, or -1 */
    uint64_t nominated_gfn;
};

static struct expectation expect(enum outcome outcome, int err)
{
    return (struct expectation){ outcome, err };
}

static struct expectation expect_fault(enum fault fault)
{
    return fault == FAULT_REQUEST ? expect(EXPECT_ERROR, EINVAL)
           : fault == FAULT_ARGUMENT ? expect(EXPECT_ERROR, 0)
                                     : expect(EXPECT_ANY, 0);
}

/* Add one line (`line` without its end) and the reply it must get; a line
 * longer than the daemon takes gets EMSGSIZE whatever it holds. */
static void add_line(struct exchange *x, const struct text *line, struct expectation e)
{
    bool crlf = random_percent(10);

    text_add(&x->bytes, line->data, line->length);
    text_append(&x->bytes, crlf ? "\r\n" : "\n");
    if (line->length + crlf > MV_PROTO_MAX_REQUEST)
        e = expect(EXPECT_ERROR, EMSGSIZE);
    x->replies[x->reply_count++] = e;
}

/*
 * A request of a random command, with `mutations` mutations (a fatal command
 * gets an unknown member and nothing else), into `line`; returns the reply it
 * must get.  An unmutated share-nominate marks the exchange so that the
 * handle it gets can be used.
 */
static struct expectation build_request(struct fuzz *f, struct exchange *x, unsigned mutations,
                                        struct text *line)
{
    const struct command *c = &commands[random_below(command_count)];
    struct message m = { .count = 0 };
    struct mutating mu = { f, &m, c->args, c->name, &x->what };
    struct member *cmd;
    enum fault fault;

    f->side_fixture[0] = random_below(FIXTURE_COUNT);
    f->side_fixture[1] = (f->side_fixture[0] + 1) % FIXTURE_COUNT;
    for (size_t side = 0; side < 2; side++) {
        f->side_nominated[side] = f->fixtures[f->side_fixture[side]].nominated &&
                                  random_percent(70);
        f->side_valid[side] = f->side_nominated[side] || random_percent(70);
    }
    cmd = message_add(&m, "cmd", 3);
    text_add_json_string(&cmd->value, c->name, strlen(c->name));
    for (const struct arg *a = c->args; a->key; a++) {
        if (a->required || random_percent(50))
            choose_value(f, a, &message_add(&m, a->key, strlen(a->key))->value);
    }
    if (x->what.length)
        text_append(&x->what, " | ");
    text_add(&x->what, c->name, strlen(c->name));
    if (c->fatal)
        mutate_extra(&mu);
    else
        mutate(&mu, mutations);
    if (!c->fatal && !mutations && strcmp(c->name, "share-nominate") == 0) {
        x->nominating = (int)f->side_fixture[0];
        x->nominated_gfn = strtoull(m.members[message_find(&m, "gfn")].value.data, NULL, 10);
    }
    fault = assess_message(&m, c->args, true);
    line->length = 0;
    message_encode(&m, random_percent(30), line);
    message_free(&m);
    return expect_fault(fault);
}

static unsigned pick_mutation_count(void)
{
    unsigned roll = (unsigned)random_below(100);

    return roll < 12 ? 0 : roll < 62 ? 1 : roll < 87 ? 2 : 3;
}

static void add_request(struct fuzz *f, struct exchange *x, unsigned mutations)
{
    struct text line = { .length = 0 };
    struct expectation e = build_request(f, x, mutations, &line);

    add_line(x, &line, e);
    text_free(&line);
}

/* One request, sent in pieces with pauses so that the daemon sees partial lines. */
static void build_split(struct fuzz *f, struct exchange *x)
{
    size_t pieces = 2 + random_below(MAX_PIECES - 1);

    add_request(f, x, pick_mutation_count());
    text_append(&x->what, " (in pieces)");
    for (size_t i = 0; i + 1 < pieces; i++) {
        size_t cut = 1 + random_below(x->bytes.length - 1);

        if (!x->cut_count || cut > x->cuts[x->cut_count - 1])
            x->cuts[x->cut_count++] = cut;
    }
}

/* Several requests in one write, with blank lines between some. */
static void build_pipeline(struct fuzz *f, struct exchange *x)
{
    size_t count = 2 + random_below(3);

    for (size_t i = 0; i < count; i++) {
        if (random_percent(20))
            text_append(&x->bytes, random_percent(50) ? "\n" : "\r\n");
        add_request(f, x, pick_mutation_count());
    }
    text_append(&x->what, " (in one write)");
}

/* A valid request cut short, or followed by more than whitespace. */
static void build_truncated(struct fuzz *f, struct exchange *x, bool trailing)
{
    static const char *const junk[] = { " x", "}", "{}", ",", "]", "\"", " {\"cmd\":\"list\"}",
                                        "\x01", "null" };
    struct text line = { .length = 0 };
    const char *tail = PICK(junk);

    build_request(f, x, 0, &line);
    if (trailing) {
        text_add(&line, tail, strlen(tail));
        text_append(&x->what, " + trailing bytes");
    } else {
        line.length = 1 + random_below(line.length - 1);
        text_append(&x->what, " (truncated)");
    }
    add_line(x, &line, expect(EXPECT_ERROR, EINVAL));
    text_free(&line);
}

/* A raw byte no JSON text may hold where it is: a control byte (inside a
 * string it still makes every name and value wrong) or one that is not UTF-8. */
static void build_raw_byte(struct fuzz *f, struct exchange *x)
{
    static const unsigned char bytes[] = { 0x00, 0x01, 0x07, 0x08, 0x0b, 0x0c, 0x0e, 0x1b,
                                           0x1f, 0x80, 0xbf, 0xc0, 0xc1, 0xf5, 0xff };
    struct text line = { .length = 0 }, edited = { .length = 0 };
    unsigned char byte = PICK(bytes);
    size_t at;

    build_request(f, x, 0, &line);
    at = random_below(line.length + 1);
    text_add(&edited, line.data, at);
    text_add(&edited, &byte, 1);
    text_add(&edited, line.data + at, line.length - at);
    text_addf(&x->what, " + byte 0x%02x at %zu", byte, at);
    add_line(x, &edited, expect(EXPECT_ERROR, 0));
    text_free(&line);
    text_free(&edited);
}

static void build_not_object(struct exchange *x)
{
    static const char *const values[] = { "[]", "[{\"cmd\":\"list\"}]", "1", "-1", "1.5",
                                          "\"list\"", "null", "true", "false", "\"\"" };
    struct text line = { .length = 0 };

    text_set(&line, PICK(values));
    text_append(&x->what, "not an object");
    add_line(x, &line, expect(EXPECT_ERROR, EINVAL));
    text_free(&line);
}

/* Random bytes, none of them a newline, the first not blank. */
static void build_garbage(struct exchange *x)
{
    static const char starts[] = "{}[]\":,0xtn-";
    size_t length = 1 + random_below(300);
    struct text line = { .length = 0 };

    text_add(&line, &starts[random_below(sizeof(starts) - 1)], 1);
    for (size_t i = 1; i < length; i++) {
        char c = (char)random_below(256);

        text_add(&line, c == '\n' ? "?" : &c, 1);
    }
    text_append(&x->what, "garbage");
    add_line(x, &line, expect(EXPECT_ERROR, EINVAL));
    text_free(&line);
}

/* {"cmd":"list"} padded with blanks to exactly `length` bytes. */
static void make_padded_list(struct text *line, size_t length)
{
    line->length = 0;
    text_append(line, "{\"cmd\":\"list\"");
    text_repeat(line, " ", length - 14);
    text_append(line, "}");
}

/*
 * Lines longer than the daemon takes: it answers EMSGSIZE, skips to the
 * newline and keeps the connection (the next exchange uses it).  The
 * longest line it takes is answered as usual.
 */
static void build_oversized(struct exchange *x)
{
    struct text line = { .length = 0 };
    size_t length;

    switch (random_below(7)) {
    case 0:
        /* The longest line taken; ended with \r\n it is one byte too
         * long, and add_line expects EMSGSIZE. */
        make_padded_list(&line, MV_PROTO_MAX_REQUEST);
        text_append(&x->what, "list of the longest line");
        add_line(x, &line, expect(EXPECT_OK, 0));
        break;
    case 1:
        make_padded_list(&line, MV_PROTO_MAX_REQUEST + 1);
        text_append(&x->what, "list one byte too long");
        add_line(x, &line, expect(EXPECT_ERROR, EMSGSIZE));
        break;
    case 2:
        length = MV_PROTO_MAX_REQUEST + 1 + random_below(3 * MV_PROTO_MAX_REQUEST);
        for (size_t i = 0; i < length; i++)
            text_add(&line, &"abc {}\"\\:,\x01"[random_below(11)], 1);
        text_addf(&x->what, "%zu junk bytes", length);
        add_line(x, &line, expect(EXPECT_ERROR, EMSGSIZE));
        break;
    case 3:
        text_repeat(&line, "x", 1u << 20);
        text_append(&x->what, "1 MiB line");
        add_line(x, &line, expect(EXPECT_ERROR, EMSGSIZE));
        break;
    case 4:
        make_padded_list(&line, 2 * MV_PROTO_MAX_REQUEST);
        text_append(&x->what, "long line then list");
        add_line(x, &line, expect(EXPECT_ERROR, EMSGSIZE));
        make_padded_list(&line, 15);
        add_line(x, &line, expect(EXPECT_OK, 0));
        break;
    default:
        make_padded_list(&line, MV_PROTO_MAX_REQUEST + 8 + random_below(MV_PROTO_MAX_REQUEST));
        text_append(&x->what, "long line in pieces");
        add_line(x, &line, expect(EXPECT_ERROR, EMSGSIZE));
        x->cuts[x->cut_count++] = MV_PROTO_MAX_REQUEST / 2;
        x->cuts[x->cut_count++] = MV_PROTO_MAX_REQUEST + 7;
        break;
    }
    text_free(&line);
}

static void build_deep(struct exchange *x)
{
    static const size_t depths[] = { 33, 1000, 30000 };
    size_t depth = PICK(depths);
    struct text line = { .length = 0 };

    if (random_percent(50)) {
        text_repeat(&line, "[", depth);
    } else {
        text_append(&line, "{\"cmd\":\"list\",\"domain\":");
        text_repeat(&line, "{\"a\":", depth);
    }
    text_addf(&x->what, "nesting %zu deep", depth);
    add_line(x, &line, expect(EXPECT_ERROR, EINVAL));
    text_free(&line);
}

/* Empty lines get no reply; a line of blanks is not JSON. */
static void build_blank(struct fuzz *f, struct exchange *x)
{
    static const char *const empties[] = { "\n", "\r\n", "\n\n\r\n" };
    static const char *const blanks[] = { " ", "\t", " \t ", "\r\r" };
    struct text line = { .length = 0 };
    const char *empty = PICK(empties);

    text_append(&x->bytes, empty);
    text_append(&x->what, "empty lines");
    if (random_percent(50)) {
        text_set(&line, PICK(blanks));
        add_line(x, &line, expect(EXPECT_ERROR, EINVAL));
        text_append(&x->what, " | a line of blanks");
    }
    add_request(f, x, pick_mutation_count());
    text_free(&line);
}

/* Another client sends something and hangs up without reading; then this
 * one must still be served. */
static void build_hangup(struct exchange *x)
{
    struct text line = { .length = 0 };

    switch (random_below(4)) {
    case 0:
        text_set(&x->side, "{\"cmd\":\"li");
        break;
    case 1:
        text_repeat(&x->side, "{\"cmd\":\"stats\"}\n", 50);
        break;
    case 2:
        text_repeat(&x->side, "x", 100000);
        break;
    default:
        text_repeat(&x->side, "{\"cmd\":\"doctor\"}\n", 3);
        text_append(&x->side, "{\"cmd\":\"doc");
        break;
    }
    text_append(&x->what, "another client hung up | list");
    make_padded_list(&line, 15);
    add_line(x, &line, expect(EXPECT_OK, 0));
    text_free(&line);
}

static void build_exchange(struct fuzz *f, struct exchange *x)
{
    unsigned roll = (unsigned)random_below(100);

    if (roll < 60)
        add_request(f, x, pick_mutation_count());
    else if (roll < 68)
        build_split(f, x);
    else if (roll < 74)
        build_pipeline(f, x);
    else if (roll < 78)
        build_truncated(f, x, false);
    else if (roll < 81)
        build_truncated(f, x, true);
    else if (roll < 86)
        build_raw_byte(f, x);
    else if (roll < 88)
        build_not_object(x);
    else if (roll < 91)
        build_garbage(x);
    else if (roll < 95)
        build_oversized(x);
    else if (roll < 96)
        build_deep(x);
    else if (roll < 98)
        build_blank(f, x);
    else
        build_hangup(x);
}

static void exchange_free(struct exchange *x)
{
    text_free(&x->bytes);
    text_free(&x->what);
    text_free(&x->side);
}

/* ------------------------------------------------------------------------ */
/* The connection                                                            */

static int connection_open(struct connection *c, const char *path, char *why)
{
    struct sockaddr_un address;
    socklen_t length;
    int rc = mv_proto_socket_address(path, &address, &length, why);

    c->fd = -1;
    mv_proto_reader_init(&c->reader, MV_PROTO_MAX_REPLY);
    if (rc < 0)
        return rc;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&address, length) < 0) {
        rc = -errno;
        snprintf(why, MV_PROTO_DETAIL_MAX, "cannot connect to %s: %s", path, strerror(errno));
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
        return rc;
    }
    return 0;
}

static void connection_close(struct connection *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    mv_proto_reader_free(&c->reader);
}

static int send_bytes(int fd, const char *data, size_t length, char *why)
{
    while (length) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);

        if (n < 0) {
            snprintf(why, MV_PROTO_DETAIL_MAX, "cannot send: %s", strerror(errno));
            return -errno;
        }
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

/* The next reply line, parsed; a negative errno with `why` when none comes
 * in time, the connection ends, or the line is not a JSON object. */
static int receive_reply(struct connection *c, struct json_object **reply, char *why)
{
    for (;;) {
        struct pollfd poller = { .fd = c->fd, .events = POLLIN };
        char *line, *space;
        size_t length, room;
        ssize_t n;
        int ready;

        switch (mv_proto_reader_next(&c->reader, &line, &length)) {
        case MV_PROTO_LINE:
            return mv_proto_parse_message(line, length, reply, why);
        case MV_PROTO_OVERSIZED:
            snprintf(why, MV_PROTO_DETAIL_MAX, "a reply longer than %d bytes",
                     MV_PROTO_MAX_REPLY);
            return -EMSGSIZE;
        case MV_PROTO_NEED_MORE:
            break;
        }
        ready = poll(&poller, 1, REPLY_TIMEOUT_MS);
        if (ready == 0) {
            snprintf(why, MV_PROTO_DETAIL_MAX, "no reply within %d ms", REPLY_TIMEOUT_MS);
            return -ETIMEDOUT;
        }
        space = mv_proto_reader_space(&c->reader, &room);
        if (ready < 0 || !space) {
            snprintf(why, MV_PROTO_DETAIL_MAX, "cannot wait for the reply: %s",
                     space ? strerror(errno) : "out of memory");
            return -EIO;
        }
        n = recv(c->fd, space, room, 0);
        if (n <= 0) {
            snprintf(why, MV_PROTO_DETAIL_MAX, "the daemon %s",
                     n == 0 ? "closed the connection" : strerror(errno));
            return n == 0 ? -ECONNRESET : -errno;
        }
        mv_proto_reader_commit(&c->reader, (size_t)n);
    }
}

/* The bytes of a request for a message, escaped and shortened. */
static void describe_bytes(const struct text *bytes, struct text *out)
{
    size_t shown = bytes->length < SHOWN_BYTES ? bytes->length : SHOWN_BYTES;

    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)bytes->data[i];

        if (c == '\\')
            text_append(out, "\\\\");
        else if (c >= 0x20 && c < 0x7f)
            text_add(out, &bytes->data[i], 1);
        else
            text_addf(out, "\\x%02x", c);
    }
    if (shown < bytes->length)
        text_addf(out, "... (%zu bytes)", bytes->length);
}

/* ------------------------------------------------------------------------ */
/* Judging replies                                                           */

/* Whether `reply` is well formed and what `e` asks: NULL when it is, else
 * what is wrong (the detail of an error reply in `why`).  Counts it. */
static const char *judge_reply(struct fuzz *f, struct json_object *reply,
                               const struct expectation *e, char *why)
{
    const char *error, *detail;
    int rc = mv_proto_reply_status(reply, &error, &detail);

    if (rc == -EPROTO && strcmp(error, "malformed reply") == 0)
        return "a malformed reply";
    if (rc < 0 && (!error[0] || !detail[0]))
        return "an error reply without its errno word or detail";
    if (rc < 0 && strcmp(error, mv_strerror(rc)) != 0)
        return "an error reply whose word does not match its errno";
    if (rc < 0)
        snprintf(why, MV_PROTO_DETAIL_MAX, "%s", detail);
    /* Whatever was asked, these are the daemon's or the library's fault.
     * The host audit is exact while guests run (it answers EAGAIN when it
     * found no view that held still), so any verdict is a failure. */
    if (rc == -EUCLEAN)
        return "an audit found a broken invariant";
    if (rc == -EPROTO)
        return "an internal inconsistency (EPROTO)";
    if (rc < 0 && strstr(detail, "(null)"))
        return "an error detail naming (null)";
    if (rc == 0) {
        f->ok_replies++;
        return e->outcome == EXPECT_ERROR ? "an invalid request accepted" : NULL;
    }
    f->error_replies++;
    count_error_word(f, error);
    snprintf(why, MV_PROTO_DETAIL_MAX, "%s", detail);
    if (e->outcome == EXPECT_OK)
        return "an error to a valid request";
    if (e->err && rc != -e->err)
        return "an error with the wrong errno";
    return NULL;
}

/*
 * After a failed exchange: a new connection, or the end of the run when
 * the daemon is gone or stopped answering (each further request would only
 * wait as long again).
 */
static void recover(struct fuzz *f, int rc)
{
    char why[MV_PROTO_DETAIL_MAX];

    connection_close(&f->conn);
    if (rc == -ETIMEDOUT) {
        report_failure(f, "the daemon stopped answering; giving up");
        f->stopped = true;
    } else if (connection_open(&f->conn, f->socket_path, why) < 0) {
        report_failure(f, "the daemon is gone: %s", why);
        f->stopped = true;
    }
}

/* Another client that sends its bytes and hangs up without reading. */
static void hang_up_client(struct fuzz *f, const struct text *bytes)
{
    struct connection side;
    char why[MV_PROTO_DETAIL_MAX];

    if (connection_open(&side, f->socket_path, why) < 0 ||
        send_bytes(side.fd, bytes->data, bytes->length, why) < 0)
        report_failure(f, "request %u: another client: %s", f->requests, why);
    connection_close(&side);
}

static void pause_briefly(void)
{
    struct timespec nap = { 0, 500000 };

    nanosleep(&nap, NULL);
}

/* Keep the handle a valid share-nominate got, for sharing requests. */
static void record_nomination(struct fuzz *f, const struct exchange *x,
                              struct json_object *reply)
{
    struct fixture *fixture = &f->fixtures[x->nominating];
    struct json_object *handle;

    if (!json_object_object_get_ex(reply, "handle", &handle))
        return;
    fixture->nominated = true;
    fixture->gfn = x->nominated_gfn;
    fixture->handle = json_object_get_uint64(handle);
}

static void report_exchange(struct fuzz *f, const struct exchange *x, size_t reply,
                            const char *problem, const char *why)
{
    struct text sent = { .length = 0 };

    describe_bytes(&x->bytes, &sent);
    report_failure(f, "request %u (%s), reply %zu of %zu: %s%s%s\n    sent: %s", f->requests,
                   x->what.data, reply + 1, x->reply_count, problem, why[0] ? ": " : "",
                   why, sent.data);
    text_free(&sent);
}

static void run_exchange(struct fuzz *f, struct exchange *x)
{
    char why[MV_PROTO_DETAIL_MAX] = "";
    size_t sent = 0;
    int rc = 0;

    f->requests++;
    f->lines += (unsigned)x->reply_count;
    if (x->side.length)
        hang_up_client(f, &x->side);
    for (size_t i = 0; rc == 0 && i <= x->cut_count; i++) {
        size_t end = i < x->cut_count ? x->cuts[i] : x->bytes.length;

        rc = send_bytes(f->conn.fd, x->bytes.data + sent, end - sent, why);
        sent = end;
        if (i < x->cut_count)
            pause_briefly();
    }
    if (rc < 0)
        report_exchange(f, x, 0, "the request was not taken", why);
    for (size_t i = 0; rc == 0 && i < x->reply_count; i++) {
        struct json_object *reply = NULL;
        const char *problem;

        why[0] = '\0';
        rc = receive_reply(&f->conn, &reply, why);
        if (rc < 0) {
            report_exchange(f, x, i, "no reply", why);
        } else if ((problem = judge_reply(f, reply, &x->replies[i], why))) {
            report_exchange(f, x, i, problem, why);
        } else if (x->nominating >= 0 && x->reply_count == 1) {
            record_nomination(f, x, reply);
        }
        json_object_put(reply);
    }
    if (rc < 0)
        recover(f, rc);
}

/* ------------------------------------------------------------------------ */
/* Upkeep: plain requests that keep the host in shape                        */

/* Send `request` (consumed): its reply when it is ok, else NULL, reporting
 * why unless the error is `tolerated`. */
static struct json_object *call(struct fuzz *f, struct json_object *request, int tolerated)
{
    char why[MV_PROTO_DETAIL_MAX] = "";
    struct json_object *reply = NULL;
    const char *error, *detail;
    size_t length;
    char *line = mv_proto_encode_line(request, &length);
    int rc = line ? 0 : -ENOMEM;

    f->upkeep_requests++;
    if (rc == 0 && !f->stopped && (rc = send_bytes(f->conn.fd, line, length, why)) == 0)
        rc = receive_reply(&f->conn, &reply, why);
    if (rc < 0 && !f->stopped)
        report_failure(f, "upkeep request %s: %s", json_object_to_json_string(request), why);
    free(line);
    if (rc < 0) {
        json_object_put(request);
        if (!f->stopped)
            recover(f, rc);
        return NULL;
    }
    rc = mv_proto_reply_status(reply, &error, &detail);
    if (rc < 0 && rc != -tolerated)
        report_failure(f, "upkeep request %s: %s: %s", json_object_to_json_string(request),
                       error, detail);
    json_object_put(request);
    if (rc == 0)
        return reply;
    json_object_put(reply);
    return NULL;
}

static struct json_object *make_request(const char *cmd, uint32_t domid)
{
    struct json_object *request = mv_proto_request_new(cmd);

    json_object_object_add(request, "domain", json_object_new_uint64(domid));
    return request;
}

static void call_quietly(struct fuzz *f, struct json_object *request, int tolerated)
{
    json_object_put(call(f, request, tolerated));
}

/* The member `key` of a JSON object, or NULL. */
static struct json_object *find_member(struct json_object *object, const char *key)
{
    struct json_object *member;

    return json_object_object_get_ex(object, key, &member) ? member : NULL;
}

/* A 16 MiB domain whose first pages hold what its writer wrote, the same in
 * every fixture (same seed), so that sharing finds equal pages. */
static void create_fixture(struct fuzz *f, struct fixture *x)
{
    struct json_object *request = mv_proto_request_new("create"), *reply;

    json_object_object_add(request, "name", json_object_new_string(x->name));
    json_object_object_add(request, "maxmem", json_object_new_string("16M"));
    json_object_object_add(request, "wait_timeout_ms", json_object_new_int(100));
    reply = call(f, request, 0);
    if (!reply)
        return;
    x->domid = (uint32_t)json_object_get_uint64(find_member(reply, "domid"));
    x->nominated = false;
    json_object_put(reply);

    request = make_request("workload-start", x->domid);
    json_object_object_add(request, "kind", json_object_new_string("random"));
    json_object_object_add(request, "working_set", json_object_new_string("8M"));
    json_object_object_add(request, "max_pages", json_object_new_int(1024));
    json_object_object_add(request, "seed", json_object_new_int(atoi(FIXTURE_SEED)));
    call_quietly(f, request, 0);
    for (int i = 0; i < 100 && !f->stopped; i++) {
        bool finished;

        request = make_request("workload-status", x->domid);
        json_object_object_add(request, "wait_ms", json_object_new_int(MV_PROTO_MAX_WAIT_MS));
        reply = call(f, request, 0);
        finished = !reply ||
                   json_object_get_boolean(find_member(find_member(reply, "workload"), "finished"));
        json_object_put(reply);
        if (finished)
            break;
    }
}

static struct fixture *find_fixture(struct fuzz *f, const char *name)
{
    for (size_t i = 0; name && i < FIXTURE_COUNT; i++)
        if (strcmp(f->fixtures[i].name, name) == 0)
            return &f->fixtures[i];
    return NULL;
}

/*
 * Put the host back in shape: every domain but the fixtures destroyed, a
 * crashed or missing fixture created again, a paused one unpaused, their
 * workloads and the background scanner stopped.
 */
static void keep_up(struct fuzz *f)
{
    struct json_object *reply = call(f, mv_proto_request_new("stats"), 0);
    struct json_object *domains = find_member(reply, "domains");
    bool present[FIXTURE_COUNT] = { false };

    if (reply && !json_object_is_type(domains, json_type_array))
        report_failure(f, "a stats reply without a domains array");
    for (size_t i = 0; json_object_is_type(domains, json_type_array) &&
                       i < json_object_array_length(domains); i++) {
        struct json_object *d = json_object_array_get_idx(domains, i);
        struct fixture *x = find_fixture(f, json_object_get_string(find_member(d, "name")));
        const char *state = json_object_get_string(find_member(d, "state"));
        uint32_t domid = (uint32_t)json_object_get_uint64(find_member(d, "domid"));

        if (!x || present[x - f->fixtures] || !state || strcmp(state, "crashed") == 0) {
            call_quietly(f, make_request("destroy", domid), 0);
            f->stale_domid = domid;
            continue;
        }
        present[x - f->fixtures] = true;
        if (x->domid != domid) {
            x->domid = domid;
            x->nominated = false;
        }
        if (strcmp(state, "paused") == 0)
            call_quietly(f, make_request("unpause", domid), 0);
        if (json_object_get_uint64(find_member(find_member(d, "workload"), "running")))
            call_quietly(f, make_request("workload-stop", domid), 0);
    }
    json_object_put(reply);
    for (size_t i = 0; i < FIXTURE_COUNT && !f->stopped; i++)
        if (!present[i])
            create_fixture(f, &f->fixtures[i]);
    call_quietly(f, mv_proto_request_new("scanner-stop"), EINVAL);
    /* The guests are quiet now, so the host audit is exact: any verdict
     * but "holds" is a failure, reported with its detail. */
    call_quietly(f, mv_proto_request_new("audit"), 0);
    call_quietly(f, mv_proto_request_new("share-audit"), 0);
}

/* ------------------------------------------------------------------------ */
/* The run                                                                   */

/* The valid request of `c` with every argument, naming the fixtures. */
static void send_valid(struct fuzz *f, const struct command *c)
{
    struct exchange x = { .nominating = -1 };
    struct message m = { .count = 0 };
    struct text line = { .length = 0 };

    f->side_fixture[0] = 0;
    f->side_fixture[1] = 1;
    f->side_valid[0] = f->side_valid[1] = true;
    f->side_nominated[0] = f->side_nominated[1] = false;
    text_add_json_string(&message_add(&m, "cmd", 3)->value, c->name, strlen(c->name));
    for (const struct arg *a = c->args; a->key; a++)
        choose_value(f, a, &message_add(&m, a->key, strlen(a->key))->value);
    message_encode(&m, false, &line);
    text_set(&x.what, c->name);
    add_line(&x, &line, expect(EXPECT_ANY, 0));
    run_exchange(f, &x);
    message_free(&m);
    text_free(&line);
    exchange_free(&x);
}

/* The valid request of every command but the fatal ones, destroy last. */
static void send_every_command(struct fuzz *f)
{
    const struct command *destroy = NULL;

    for (size_t i = 0; i < command_count && !f->stopped; i++) {
        if (strcmp(commands[i].name, "destroy") == 0)
            destroy = &commands[i];
        else if (!commands[i].fatal)
            send_valid(f, &commands[i]);
    }
    if (destroy && !f->stopped)
        send_valid(f, destroy);
}

/* A new client must still be served. */
static void check_still_serving(struct fuzz *f)
{
    struct json_object *reply;
    char why[MV_PROTO_DETAIL_MAX];

    connection_close(&f->conn);
    if (connection_open(&f->conn, f->socket_path, why) < 0) {
        report_failure(f, "no new connection at the end: %s", why);
        return;
    }
    reply = call(f, mv_proto_request_new("list"), 0);
    if (reply && !json_object_is_type(find_member(reply, "domains"), json_type_array))
        report_failure(f, "the final list has no domains array");
    json_object_put(reply);
    call_quietly(f, mv_proto_request_new("doctor"), 0);
}

static void print_summary(const struct fuzz *f, uint64_t seed)
{
    printf("daemon_fuzz: seed %#" PRIx64 ": %u requests (%u lines) sent, %u ok replies, "
           "%u error replies (", seed, f->requests, f->lines, f->ok_replies, f->error_replies);
    for (size_t i = 0; i < MAX_ERROR_WORDS && f->error_words[i].count; i++)
        printf("%s%s %u", i ? ", " : "", f->error_words[i].word, f->error_words[i].count);
    printf("), %u upkeep requests, %u failures\n", f->upkeep_requests, f->failures);
    if (f->failures > FAILURES_SHOWN)
        printf("daemon_fuzz: only the first %u failures were shown\n", FAILURES_SHOWN);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("daemon_fuzz: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nusage: daemon_fuzz [--socket PATH] [--seed N] [--requests N] "
          "[--list-commands]\n", stderr);
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        { "socket", required_argument, NULL, 's' },
        { "seed", required_argument, NULL, 'S' },
        { "requests", required_argument, NULL, 'n' },
        { "list-commands", no_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    struct fuzz f = { .fixtures = { { .name = "fuzz-a" }, { .name = "fuzz-b" } },
                      .stale_domid = 4242 };
    uint64_t seed = 0, requests = DEFAULT_REQUESTS;
    bool seeded = false;
    const char *socket_option = NULL;
    char why[MV_PROTO_DETAIL_MAX];
    int opt;

    build_commands();
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'l':
            list_commands();
            return 0;
        case 's':
            socket_option = optarg;
            break;
        case 'S':
            if (mv_proto_parse_number(optarg, &seed) < 0)
                return usage_error("--seed: '%s' is not a number", optarg);
            seeded = true;
            break;
        case 'n':
            if (mv_proto_parse_u64(optarg, &requests) < 0 || requests > UINT_MAX)
                return usage_error("--requests: '%s' is not a number", optarg);
            break;
        default:
            return usage_error("unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (!seeded) {
        struct timespec now;

        clock_gettime(CLOCK_REALTIME, &now);
        random_state = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
        seed = random_next() ^ ((uint64_t)getpid() << 32);
    }
    printf("daemon_fuzz: seed %#" PRIx64 " (replay with --seed %#" PRIx64 ")\n", seed, seed);
    fflush(stdout);
    random_state = seed;
    f.socket_path = mv_proto_socket_path(socket_option);
    if (connection_open(&f.conn, f.socket_path, why) < 0) {
        fprintf(stderr, "daemon_fuzz: %s\n", why);
        return 1;
    }

    keep_up(&f);
    send_every_command(&f);
    while (f.requests < requests && !f.stopped) {
        struct exchange x = { .nominating = -1 };

        if (f.requests % UPKEEP_EVERY == 0)
            keep_up(&f);
        build_exchange(&f, &x);
        run_exchange(&f, &x);
        exchange_free(&x);
    }
    if (!f.stopped)
        keep_up(&f);
    if (!f.stopped)
        check_still_serving(&f);
    connection_close(&f.conn);
    print_summary(&f, seed);
    return f.failures ? 1 : 0;
}
