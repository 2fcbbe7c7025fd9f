/*
 * protocol.c - the memvisord wire protocol: what the daemon and the
 * `memvisor` tool share (see protocol.h for the message format).
 *
 * Sections, in order: socket path, sizes and numbers, the line reader,
 * messages and typed arguments, enum names, JSON encoders of library
 * structures, the doctor report.  Nothing here keeps state between calls;
 * everything is safe to use from any thread on distinct objects.
 */
#include "protocol.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define READER_INITIAL_CAPACITY 4096u
/* Below this, sharing many pages runs out of mappings (see doctor advice). */
#define RECOMMENDED_MAX_MAP_COUNT 262144u

int mv_proto_fail(char *why, size_t why_len, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return err;
}

uint64_t mv_proto_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* Socket                                                                    */

const char *mv_proto_socket_path(const char *option)
{
    const char *env = getenv(MV_PROTO_SOCKET_ENV);

    if (option)
        return option;
    if (env && env[0])
        return env;
    return MV_PROTO_SOCKET_DEFAULT;
}

int mv_proto_socket_address(const char *path, struct sockaddr_un *address,
                            socklen_t *length, char *why)
{
    size_t n = strlen(path);

    if (n == 0)
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "the socket path is empty");
    if (n >= sizeof(address->sun_path))
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -ENAMETOOLONG, "socket path '%s' is longer than %zu bytes",
                        path, sizeof(address->sun_path) - 1);
    memset(address, 0, sizeof(*address));
    address->sun_family = AF_UNIX;
    memcpy(address->sun_path, path, n + 1);
    *length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sizes and numbers                                                         */

/* Digits at the start of `text`: their value in *value, the rest in *end. */
static int parse_digits(const char *text, uint64_t *value, const char **end)
{
    uint64_t v = 0;
    const char *p = text;

    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');

        if (v > (UINT64_MAX - digit) / 10)
            return -ERANGE;
        v = v * 10 + digit;
    }
    *value = v;
    *end = p;
    return 0;
}

int mv_proto_parse_u64(const char *text, uint64_t *value)
{
    const char *end;
    uint64_t v;
    int rc = parse_digits(text, &v, &end);

    if (rc < 0)
        return rc;
    if (*end)
        return -EINVAL;
    *value = v;
    return 0;
}

int mv_proto_parse_version(const char *text, unsigned *major, unsigned *minor)
{
    const char *dot = strchr(text, '.');
    char first[24];
    uint64_t a, b;

    if (!dot || (size_t)(dot - text) >= sizeof(first))
        return -EINVAL;
    memcpy(first, text, (size_t)(dot - text));
    first[dot - text] = '\0';
    if (mv_proto_parse_u64(first, &a) < 0 || mv_proto_parse_u64(dot + 1, &b) < 0 ||
        a > UINT_MAX || b > UINT_MAX)
        return -EINVAL;
    *major = (unsigned)a;
    *minor = (unsigned)b;
    return 0;
}

int mv_proto_parse_number(const char *text, uint64_t *value)
{
    const char *p = text + 2;
    uint64_t v = 0;

    if (text[0] != '0' || (text[1] != 'x' && text[1] != 'X'))
        return mv_proto_parse_u64(text, value);
    if (!*p)
        return -EINVAL;
    for (; *p; p++) {
        unsigned digit;

        if (*p >= '0' && *p <= '9')
            digit = (unsigned)(*p - '0');
        else if (*p >= 'a' && *p <= 'f')
            digit = (unsigned)(*p - 'a' + 10);
        else if (*p >= 'A' && *p <= 'F')
            digit = (unsigned)(*p - 'A' + 10);
        else
            return -EINVAL;
        if (v >> 60)
            return -ERANGE;
        v = v << 4 | digit;
    }
    *value = v;
    return 0;
}

/* log2 of the unit a size suffix names, or -1 when it names none. */
static int size_unit_shift(const char *suffix)
{
    static const char units[] = "KMGTP";
    const char *unit;

    if (suffix[0] == '\0' || strcasecmp(suffix, "B") == 0)
        return 0;
    unit = memchr(units, toupper((unsigned char)suffix[0]), sizeof(units) - 1);
    if (!unit)
        return -1;
    if (suffix[1] != '\0' && strcasecmp(suffix + 1, "B") != 0 &&
        strcasecmp(suffix + 1, "iB") != 0)
        return -1;
    return 10 * (int)(unit - units + 1);
}

int mv_proto_parse_size(const char *text, uint64_t *bytes)
{
    const char *suffix;
    uint64_t v;
    int shift, rc = parse_digits(text, &v, &suffix);

    if (rc < 0)
        return rc;
    shift = size_unit_shift(suffix);
    if (shift < 0)
        return -EINVAL;
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *bytes = v << shift;
    return 0;
}

const char *mv_proto_size_error(int err)
{
    return err == -ERANGE ? "too large for 64 bits"
                          : "not a size (bytes, or a number with K, M, G, T or P)";
}

const char *mv_proto_format_size(char *buf, size_t size, uint64_t bytes)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    unsigned u = 0;

    while (u + 1 < sizeof(units) / sizeof(units[0]) && bytes >> (10 * (u + 1)))
        u++;
    if (bytes & ((1ull << (10 * u)) - 1))
        snprintf(buf, size, "%.1f %s", (double)bytes / (double)(1ull << (10 * u)),
                 units[u]);
    else
        snprintf(buf, size, "%" PRIu64 " %s", bytes >> (10 * u), units[u]);
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Line reader                                                               */

void mv_proto_reader_init(struct mv_proto_reader *reader, size_t max_line)
{
    memset(reader, 0, sizeof(*reader));
    reader->max_line = max_line;
}

void mv_proto_reader_free(struct mv_proto_reader *reader)
{
    free(reader->data);
    mv_proto_reader_init(reader, reader->max_line);
}

char *mv_proto_reader_space(struct mv_proto_reader *reader, size_t *room)
{
    size_t held = reader->end - reader->start;
    size_t limit = reader->max_line + 1;

    if (reader->start) {
        memmove(reader->data, reader->data + reader->start, held);
        reader->start = 0;
        reader->end = held;
    }
    if (reader->end == reader->capacity && reader->capacity < limit) {
        size_t grown = reader->capacity ? reader->capacity * 2 : READER_INITIAL_CAPACITY;
        char *data;

        if (grown > limit)
            grown = limit;
        data = realloc(reader->data, grown);
        if (!data)
            return NULL;
        reader->data = data;
        reader->capacity = grown;
    }
    *room = reader->capacity - reader->end;
    return reader->data + reader->end;
}

void mv_proto_reader_commit(struct mv_proto_reader *reader, size_t count)
{
    reader->end += count;
}

enum mv_proto_next mv_proto_reader_next(struct mv_proto_reader *reader,
                                        char **line, size_t *length)
{
    while (reader->start < reader->end) {
        char *begin = reader->data + reader->start;
        size_t held = reader->end - reader->start;
        char *newline = memchr(begin, '\n', held);
        size_t n = newline ? (size_t)(newline - begin) : held;

        if (!newline) {
            if (reader->discarding) {
                reader->start = reader->end = 0;
            } else if (n > reader->max_line) {
                reader->discarding = true;
                reader->start = reader->end = 0;
                return MV_PROTO_OVERSIZED;
            }
            return MV_PROTO_NEED_MORE;
        }
        reader->start += n + 1;
        if (reader->discarding) {
            reader->discarding = false;
            continue;
        }
        /* n <= max_line here: the buffer never holds more than max_line + 1. */
        if (n && begin[n - 1] == '\r')
            n--;
        if (n == 0)
            continue;
        begin[n] = '\0';
        *line = begin;
        *length = n;
        return MV_PROTO_LINE;
    }
    return MV_PROTO_NEED_MORE;
}

bool mv_proto_reader_partial(const struct mv_proto_reader *reader)
{
    return reader->end > reader->start || reader->discarding;
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */

/* An integer literal at line[start, end) that fits in 64 bits: an unsigned
 * one up to UINT64_MAX, a negative one down to INT64_MIN. */
static bool integer_fits(const char *line, size_t start, size_t end)
{
    char digits[24];
    size_t length = end - start;

    if (length >= sizeof(digits))
        return false;
    memcpy(digits, line + start, length);
    digits[length] = 0;
    errno = 0;
    if (digits[0] == '-')
        (void)strtoll(digits, NULL, 10);
    else
        (void)strtoull(digits, NULL, 10);
    return errno != ERANGE;
}

/*
 * Refuse what the JSON parser would accept but silently change: a NUL in a
 * string (\u0000 or a raw byte: the string would end there, so
 * "web\u0000x" would name "web") and an integer outside 64 bits (it would
 * be capped at the largest value); and raw control characters in strings,
 * which JSON does not allow and the parser lets through.  The scan follows strings and escapes;
 * anything malformed is left to the parser to report.
 */
static int check_literals(const char *line, size_t length, char *why)
{
    bool in_string = false;

    if (memchr(line, 0, length))
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "a message must not contain NUL bytes");
    for (size_t i = 0; i < length; i++) {
        size_t start = i;

        if (in_string) {
            if ((unsigned char)line[i] < 0x20)
                return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "a string holds the control character "
                                "%#x at byte %zu (JSON wants it escaped)",
                                (unsigned char)line[i], i);
            if (line[i] == '"')
                in_string = false;
            else if (line[i] == '\\' && i + 5 < length && line[i + 1] == 'u' &&
                     memcmp(line + i + 2, "0000", 4) == 0)
                return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "a string holds a NUL character "
                                "(\\u0000) at byte %zu", i);
            else if (line[i] == '\\')
                i++;
            continue;
        }
        if (line[i] == '"') {
            in_string = true;
            continue;
        }
        if (line[i] != '-' && !isdigit((unsigned char)line[i]))
            continue;
        for (i++; i < length && isdigit((unsigned char)line[i]); i++)
            ;
        if (i < length && (line[i] == '.' || line[i] == 'e' || line[i] == 'E')) {
            /* A fraction or exponent: the parser makes it a double. */
            while (i < length && (isdigit((unsigned char)line[i]) || line[i] == '.' ||
                                  line[i] == 'e' || line[i] == 'E' || line[i] == '+' ||
                                  line[i] == '-'))
                i++;
        } else if (i > start + (line[start] == '-') && !integer_fits(line, start, i)) {
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "the number at byte %zu does not fit in 64 "
                            "bits", start);
        }
        i--;
    }
    return 0;
}

int mv_proto_parse_message(const char *line, size_t length,
                           struct json_object **message, char *why)
{
    struct json_tokener *tokener = json_tokener_new();
    struct json_object *parsed;
    enum json_tokener_error error;
    size_t end;
    int rc;

    if (!tokener)
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -ENOMEM, "no memory for a JSON parser");
    if (length > INT32_MAX - 1) {
        json_tokener_free(tokener);
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "message of %zu bytes is too long", length);
    }
    rc = check_literals(line, length, why);
    if (rc < 0) {
        json_tokener_free(tokener);
        return rc;
    }
    json_tokener_set_flags(tokener, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    /* Passing the terminating NUL tells the parser the input ends there. */
    parsed = json_tokener_parse_ex(tokener, line, (int)length + 1);
    error = json_tokener_get_error(tokener);
    end = json_tokener_get_parse_end(tokener);
    json_tokener_free(tokener);
    /* json-c parses a JSON null successfully into NULL. */
    if (!parsed && error != json_tokener_success)
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "malformed JSON at byte %zu: %s", end,
                        json_tokener_error_desc(error));
    for (; end < length; end++) {
        if (line[end] != ' ' && line[end] != '\t' && line[end] != '\r') {
            json_object_put(parsed);
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "unexpected data after the JSON value at "
                            "byte %zu", end);
        }
    }
    if (!json_object_is_type(parsed, json_type_object)) {
        /* Name the type before the value is freed (json-c names a NULL
         * value, a JSON null, "null"). */
        const char *type = json_type_to_name(json_object_get_type(parsed));

        json_object_put(parsed);
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "a message must be a JSON object, not %s", type);
    }
    *message = parsed;
    return 0;
}

char *mv_proto_encode_line(struct json_object *message, size_t *length)
{
    size_t n;
    const char *text = json_object_to_json_string_length(
        message, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    char *line;

    if (!text)
        return NULL;
    line = malloc(n + 2);
    if (!line)
        return NULL;
    memcpy(line, text, n);
    line[n] = '\n';
    line[n + 1] = '\0';
    *length = n + 1;
    return line;
}

struct json_object *mv_proto_request_new(const char *cmd)
{
    struct json_object *request = json_object_new_object();

    json_object_object_add(request, "cmd", json_object_new_string(cmd));
    return request;
}

struct json_object *mv_proto_reply_ok(void)
{
    struct json_object *reply = json_object_new_object();

    json_object_object_add(reply, "ok", json_object_new_boolean(1));
    return reply;
}

struct json_object *mv_proto_reply_error(int err, const char *detail)
{
    struct json_object *reply = json_object_new_object();

    json_object_object_add(reply, "ok", json_object_new_boolean(0));
    json_object_object_add(reply, "errno", json_object_new_int(err < 0 ? -err : err));
    json_object_object_add(reply, "error", json_object_new_string(mv_strerror(err)));
    json_object_object_add(reply, "detail", json_object_new_string(detail ? detail : ""));
    return reply;
}

static const char *member_string(struct json_object *object, const char *key)
{
    struct json_object *member;

    if (json_object_object_get_ex(object, key, &member) &&
        json_object_is_type(member, json_type_string))
        return json_object_get_string(member);
    return "";
}

int mv_proto_reply_status(struct json_object *reply, const char **error,
                          const char **detail)
{
    struct json_object *ok, *err;
    int64_t value;

    *error = "malformed reply";
    *detail = "";
    if (!json_object_is_type(reply, json_type_object) ||
        !json_object_object_get_ex(reply, "ok", &ok) ||
        !json_object_is_type(ok, json_type_boolean))
        return -EPROTO;
    if (json_object_get_boolean(ok)) {
        *error = "";
        return 0;
    }
    if (!json_object_object_get_ex(reply, "errno", &err) ||
        !json_object_is_type(err, json_type_int))
        return -EPROTO;
    value = json_object_get_int64(err);
    if (value <= 0 || value > 4095)
        return -EPROTO;
    *error = member_string(reply, "error");
    *detail = member_string(reply, "detail");
    return (int)-value;
}

static int send_all(int fd, const char *data, size_t length, char *why)
{
    while (length) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue; /* a signal the caller handles (the CLI's Ctrl-C) */
        if (n < 0)
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -errno, "cannot send the request: %s", strerror(errno));
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

int mv_proto_call(int fd, struct mv_proto_reader *reader,
                  struct json_object *request, struct json_object **reply,
                  char *why)
{
    size_t length;
    char *line = mv_proto_encode_line(request, &length);
    int rc;

    if (!line)
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -ENOMEM, "no memory to encode the request");
    rc = send_all(fd, line, length, why);
    free(line);
    /* Hung up before reading the request: it may have said why first (a
     * daemon refusing a client does), and that is the better answer. */
    if (rc == -EPIPE || rc == -ECONNRESET) {
        char *sent;
        enum mv_proto_next got = mv_proto_reader_next(reader, &sent, &length);

        if (got == MV_PROTO_NEED_MORE) {
            char *space = mv_proto_reader_space(reader, &length);
            ssize_t n = space ? recv(fd, space, length, MSG_DONTWAIT) : -1;

            if (n > 0) {
                mv_proto_reader_commit(reader, (size_t)n);
                got = mv_proto_reader_next(reader, &sent, &length);
            }
        }
        if (got == MV_PROTO_LINE)
            return mv_proto_parse_message(sent, length, reply, why);
    }
    while (rc == 0) {
        size_t room;
        char *space;
        ssize_t n;

        switch (mv_proto_reader_next(reader, &line, &length)) {
        case MV_PROTO_LINE:
            return mv_proto_parse_message(line, length, reply, why);
        case MV_PROTO_OVERSIZED:
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EMSGSIZE, "the reply is longer than %zu bytes",
                            reader->max_line);
        case MV_PROTO_NEED_MORE:
            break;
        }
        space = mv_proto_reader_space(reader, &room);
        if (!space)
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -ENOMEM, "no memory for the reply");
        n = recv(fd, space, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -errno, "cannot receive the reply: %s", strerror(errno));
        if (n == 0)
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -ECONNRESET, "memvisord closed the connection "
                            "without replying");
        mv_proto_reader_commit(reader, (size_t)n);
    }
    return rc;
}

/* The member `key`, or NULL when absent. */
static struct json_object *member(struct json_object *message, const char *key)
{
    struct json_object *value;

    return json_object_object_get_ex(message, key, &value) ? value : NULL;
}

static int missing_argument(const char *key, bool required, char *why)
{
    if (!required)
        return 0;
    return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "missing argument '%s'", key);
}

int mv_proto_arg_string(struct json_object *message, const char *key,
                        bool required, const char **out, char *why)
{
    struct json_object *value = member(message, key);

    if (!value)
        return missing_argument(key, required, why);
    if (!json_object_is_type(value, json_type_string))
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "argument '%s' must be a string", key);
    *out = json_object_get_string(value);
    if (strlen(*out) != (size_t)json_object_get_string_len(value))
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "argument '%s' holds a NUL character", key);
    return 0;
}

/* A JSON integer >= 0 as a uint64_t. */
static int integer_value(struct json_object *value, const char *key, uint64_t *out,
                         char *why)
{
    if (!json_object_is_type(value, json_type_int))
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "argument '%s' must be an integer", key);
    if (json_object_get_int64(value) < 0)
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "argument '%s' must not be negative", key);
    *out = json_object_get_uint64(value);
    return 0;
}

int mv_proto_arg_u64(struct json_object *message, const char *key,
                     bool required, uint64_t *out, char *why)
{
    struct json_object *value = member(message, key);

    if (!value)
        return missing_argument(key, required, why);
    return integer_value(value, key, out, why);
}

int mv_proto_arg_size(struct json_object *message, const char *key,
                      bool required, uint64_t *out, char *why)
{
    struct json_object *value = member(message, key);
    int rc;

    if (!value)
        return missing_argument(key, required, why);
    if (!json_object_is_type(value, json_type_string))
        return integer_value(value, key, out, why);
    rc = mv_proto_parse_size(json_object_get_string(value), out);
    if (rc < 0)
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "argument '%s': '%s' is %s", key,
                        json_object_get_string(value), mv_proto_size_error(rc));
    return 0;
}

int mv_proto_arg_object(struct json_object *message, const char *key,
                        bool required, struct json_object **out, char *why)
{
    struct json_object *value = member(message, key);

    if (!value)
        return missing_argument(key, required, why);
    if (!json_object_is_type(value, json_type_object))
        return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "argument '%s' must be an object", key);
    *out = value;
    return 0;
}

int mv_proto_check_members(struct json_object *message,
                           const char *const *allowed, char *why)
{
    json_object_object_foreach(message, key, value) {
        const char *const *name = allowed;

        (void)value;
        if (strcmp(key, "cmd") == 0)
            continue;
        while (*name && strcmp(*name, key) != 0)
            name++;
        if (!*name)
            return mv_proto_fail(why, MV_PROTO_DETAIL_MAX, -EINVAL, "unknown argument '%s'", key);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Library enums on the wire                                                 */

static const char *const state_names[] = {
    [MV_DOMAIN_RUNNING] = "running",
    [MV_DOMAIN_PAUSED] = "paused",
    [MV_DOMAIN_CRASHED] = "crashed",
};

static const char *const policy_names[] = {
    [MV_POD_WAIT] = "wait",
    [MV_POD_CRASH] = "crash",
};

static const char *const workload_names[] = {
    [MV_WORKLOAD_SCRUB] = "scrub",
    [MV_WORKLOAD_RANDOM] = "random",
    [MV_WORKLOAD_VERIFY] = "verify",
    [MV_WORKLOAD_CLEANCACHE] = "cleancache",
    [MV_WORKLOAD_FRONTSWAP] = "frontswap",
};

static const char *const share_outcome_names[] = {
    [MV_SHARE_MATCHED] = "matched",
    [MV_SHARE_INSERTED] = "inserted",
    [MV_SHARE_ZERO] = "zero",
    [MV_SHARE_ALREADY] = "already",
    [MV_SHARE_SKIPPED] = "skipped",
};

#define NAME_OR_UNKNOWN(table, value)                                          \
    ((size_t)(value) < sizeof(table) / sizeof(table[0]) && table[value]        \
         ? table[value] : "unknown")

/* Index of `name` in `table`, or -EINVAL. */
static int name_index(const char *const *table, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (table[i] && strcmp(table[i], name) == 0)
            return (int)i;
    return -EINVAL;
}

const char *mv_proto_state_name(enum mv_domain_state state)
{
    return NAME_OR_UNKNOWN(state_names, state);
}

const char *mv_proto_policy_name(enum mv_pod_policy policy)
{
    return NAME_OR_UNKNOWN(policy_names, policy);
}

const char *mv_proto_workload_name(enum mv_workload_kind kind)
{
    return NAME_OR_UNKNOWN(workload_names, kind);
}

const char *mv_proto_share_outcome_name(enum mv_share_outcome outcome)
{
    return NAME_OR_UNKNOWN(share_outcome_names, outcome);
}

int mv_proto_policy_parse(const char *name, enum mv_pod_policy *policy)
{
    int i = name_index(policy_names, sizeof(policy_names) / sizeof(policy_names[0]), name);

    if (i < 0)
        return i;
    *policy = (enum mv_pod_policy)i;
    return 0;
}

int mv_proto_workload_parse(const char *name, enum mv_workload_kind *kind)
{
    int i = name_index(workload_names, sizeof(workload_names) / sizeof(workload_names[0]),
                       name);

    if (i < 0)
        return i;
    *kind = (enum mv_workload_kind)i;
    return 0;
}

int mv_proto_logdirty_mode_parse(const char *name, enum mv_logdirty_mode *mode)
{
    static const enum mv_logdirty_mode modes[] = {
        MV_LOGDIRTY_AUTO, MV_LOGDIRTY_WP_ASYNC, MV_LOGDIRTY_WP_SYNC, MV_LOGDIRTY_MPROTECT,
    };

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(name, mv_logdirty_mode_name(modes[i])) == 0) {
            *mode = modes[i];
            return 0;
        }
    }
    return -EINVAL;
}

int mv_proto_cow_mode_parse(const char *name, enum mv_cow_mode *mode)
{
    for (int m = MV_COW_TRAP; m <= MV_COW_KERNEL; m++) {
        if (strcmp(name, mv_cow_mode_name((enum mv_cow_mode)m)) == 0) {
            *mode = (enum mv_cow_mode)m;
            return 0;
        }
    }
    return -EINVAL;
}

/* ------------------------------------------------------------------------ */
/* Library structures as JSON                                                */

static void add_u64(struct json_object *object, const char *key, uint64_t value)
{
    json_object_object_add(object, key, json_object_new_uint64(value));
}

static void add_string(struct json_object *object, const char *key, const char *value)
{
    json_object_object_add(object, key, json_object_new_string(value));
}

static void add_bool(struct json_object *object, const char *key, bool value)
{
    json_object_object_add(object, key, json_object_new_boolean(value));
}

struct json_object *mv_proto_host_stats_json(const struct mv_host_stats *stats)
{
    struct json_object *o = json_object_new_object();

    add_u64(o, "page_size", MV_PAGE_SIZE);
    add_u64(o, "budget_pages", stats->budget_pages);
    add_u64(o, "populated_pages", stats->populated_pages);
    add_u64(o, "peak_populated_pages", stats->peak_populated_pages);
    add_u64(o, "machine_pages", stats->machine_pages);
    add_u64(o, "free_frame_pages", stats->free_frame_pages);
    add_u64(o, "domains", stats->domains);
    add_u64(o, "faults", stats->faults);
    add_u64(o, "fault_wakeups", stats->fault_wakeups);
    add_u64(o, "fault_wait_errors", stats->fault_wait_errors);
    add_u64(o, "metadata_bytes", stats->metadata_bytes);
    add_u64(o, "fault_threads", stats->fault_threads);
    add_string(o, "fault_mode", mv_fault_mode_name(stats->fault_mode));
    add_string(o, "fault_path", mv_fault_path_name(stats->fault_path));
    add_string(o, "scrub_mode", mv_scrub_mode_name(stats->scrub_mode));
    add_u64(o, "scrub_pending_pages", stats->scrub_pending_pages);
    add_u64(o, "scrub_pending_charged_pages", stats->scrub_pending_charged_pages);
    add_u64(o, "scrubbed_background_pages", stats->scrubbed_background_pages);
    add_u64(o, "scrub_failures", stats->scrub_failures);
    return o;
}

struct json_object *mv_proto_domain_info_json(const struct mv_domain_info *info)
{
    struct json_object *o = json_object_new_object();

    add_u64(o, "domid", info->domid);
    add_string(o, "name", info->name);
    add_string(o, "state", mv_proto_state_name(info->state));
    add_string(o, "pod_policy", mv_proto_policy_name(info->pod_policy));
    add_u64(o, "vcpus", info->vcpus);
    add_u64(o, "maxmem_pages", info->maxmem_pages);
    add_u64(o, "target_pages", info->target_pages);
    add_u64(o, "populated_pages", info->populated_pages);
    add_u64(o, "pod_pages", info->pod_pages);
    add_u64(o, "ballooned_pages", info->ballooned_pages);
    add_u64(o, "faults", info->faults);
    add_u64(o, "faults_in_thread", info->faults_in_thread);
    add_bool(o, "fault_in_thread", info->fault_in_thread);
    add_u64(o, "populated_4k", info->populated_4k);
    add_u64(o, "populated_2m", info->populated_2m);
    add_u64(o, "sweeps", info->sweeps);
    add_u64(o, "sweep_scanned", info->sweep_scanned);
    add_u64(o, "reclaimed_zero", info->reclaimed_zero);
    add_u64(o, "pod_waits", info->pod_waits);
    add_u64(o, "pod_wait_ns", info->pod_wait_ns);
    add_u64(o, "held_faults", info->held_faults);
    add_u64(o, "shared_pages", info->shared_pages);
    add_u64(o, "cow_breaks", info->cow_breaks);
    add_u64(o, "cow_takeovers", info->cow_takeovers);
    add_u64(o, "cow_nocopy", info->cow_nocopy);
    add_string(o, "cow_mode", mv_cow_mode_name(info->cow_mode));
    add_u64(o, "cow_kernel_copies", info->cow_kernel_copies);
    add_bool(o, "cow_trapping", info->cow_trapping);
    add_u64(o, "cow_claimable", info->cow_claimable);
    add_u64(o, "cow_shortfall", info->cow_shortfall);
    add_u64(o, "excluded_pages", info->excluded_pages);
    add_u64(o, "metadata_bytes", info->metadata_bytes);
    add_string(o, "crash_reason", info->crash_reason);
    return o;
}

struct json_object *mv_proto_workload_status_json(const struct mv_workload_status *status,
                                                  bool finished)
{
    struct json_object *o = json_object_new_object();

    add_bool(o, "finished", finished);
    add_u64(o, "running", (uint64_t)status->running);
    add_u64(o, "pages_done", status->pages_done);
    add_u64(o, "mismatches", status->mismatches);
    json_object_object_add(o, "first_bad_gfn", status->first_bad_gfn == UINT64_MAX
                                                   ? NULL
                                                   : json_object_new_uint64(status->first_bad_gfn));
    add_bool(o, "crashed", status->crashed);
    add_u64(o, "elapsed_ns", status->elapsed_ns);
    return o;
}

struct json_object *mv_proto_logdirty_stats_json(const struct mv_logdirty_stats *stats)
{
    struct json_object *o = json_object_new_object();

    add_bool(o, "enabled", stats->enabled);
    json_object_object_add(o, "mode", json_object_new_string(mv_logdirty_mode_name(stats->mode)));
    add_u64(o, "rounds", stats->rounds);
    add_u64(o, "last_dirty", stats->last_dirty);
    add_u64(o, "total_dirty", stats->total_dirty);
    add_u64(o, "last_fetch_ns", stats->last_fetch_ns);
    add_u64(o, "total_fetch_ns", stats->total_fetch_ns);
    add_u64(o, "faults", stats->faults);
    add_u64(o, "protect_ns", stats->protect_ns);
    return o;
}

struct json_object *mv_proto_share_stats_json(const struct mv_share_stats *stats)
{
    struct json_object *o = json_object_new_object();

    add_u64(o, "shared_frames", stats->shared_frames);
    add_u64(o, "shared_refs", stats->shared_refs);
    add_u64(o, "saved_pages", stats->saved_pages);
    add_u64(o, "indexed_frames", stats->indexed_frames);
    add_u64(o, "cow_breaks", stats->cow_breaks);
    add_u64(o, "cow_takeovers", stats->cow_takeovers);
    add_u64(o, "cow_nocopy", stats->cow_nocopy);
    add_u64(o, "cow_run_unshares", stats->cow_run_unshares);
    add_u64(o, "clone_pending_frames", stats->clone_pending_frames);
    add_u64(o, "cow_kernel_copies", stats->cow_kernel_copies);
    add_u64(o, "cow_settles", stats->cow_settles);
    add_u64(o, "cow_settle_ns", stats->cow_settle_ns);
    add_u64(o, "cow_settle_waiting", stats->cow_settle_waiting);
    add_u64(o, "zero_reclaimed", stats->zero_reclaimed);
    add_u64(o, "hash_collisions", stats->hash_collisions);
    add_u64(o, "hints_pending", stats->hints_pending);
    add_u64(o, "hinted_pages", stats->hinted_pages);
    add_bool(o, "scanner_running", stats->scanner_running);
    add_u64(o, "scan_passes", stats->scan_passes);
    add_u64(o, "scan_pages", stats->scan_pages);
    add_u64(o, "scan_volatile", stats->scan_volatile);
    add_u64(o, "scan_unchanged", stats->scan_unchanged);
    add_u64(o, "scan_cpu_ns", stats->scan_cpu_ns);
    add_u64(o, "read_fallbacks", stats->read_fallbacks);
    add_string(o, "read_mode", mv_share_read_name(stats->read_mode));
    add_u64(o, "read_in_place_ns", stats->read_in_place_ns);
    add_u64(o, "read_copy_ns", stats->read_copy_ns);
    add_u64(o, "scan_candidate_slots", stats->scan_candidate_slots);
    add_u64(o, "zero_in_guest", stats->zero_in_guest);
    add_u64(o, "guest_read_fallbacks", stats->guest_read_fallbacks);
    json_object_object_add(o, "scan_rate", json_object_new_double(stats->scan_rate));
    add_u64(o, "vma_count", stats->vma_count);
    add_u64(o, "max_map_count", stats->max_map_count);
    add_bool(o, "sharing_stopped", stats->sharing_stopped);
    add_string(o, "stop_reason", stats->stop_reason);
    return o;
}

struct json_object *mv_proto_scan_result_json(const struct mv_scan_result *result)
{
    struct json_object *o = json_object_new_object();

    add_u64(o, "pages_scanned", result->pages_scanned);
    add_u64(o, "pages_shared", result->pages_shared);
    add_u64(o, "pages_zero", result->pages_zero);
    add_u64(o, "volatile_skips", result->volatile_skips);
    add_u64(o, "pages_unchanged", result->pages_unchanged);
    add_u64(o, "hinted_pages", result->hinted_pages);
    add_u64(o, "elapsed_ns", result->elapsed_ns);
    add_u64(o, "read_ns", result->read_ns);
    add_u64(o, "zero_ns", result->zero_ns);
    add_u64(o, "index_ns", result->index_ns);
    add_u64(o, "share_ns", result->share_ns);
    return o;
}

/* ------------------------------------------------------------------------ */
/* The doctor report                                                         */

struct kernel_feature {
    const char *name;
    const char *description;
    const char *since;          /* Linux version that introduced it */
    bool required;              /* memvisor cannot run without it */
    const char *without;        /* what is lost when it is missing */
};

static const struct kernel_feature kernel_features[] = {
    { "missing_shmem", "MISSING faults on shmem", "4.11", true,
      "populate-on-demand cannot trap first touches" },
    { "minor_shmem", "MINOR faults on shmem", "5.14", true,
      "the zero sweep cannot hand pages back to the guest" },
    { "wp_shmem", "write-protect faults on shmem", "5.19", false,
      "dirty logging falls back to mprotect" },
    { "wp_unpopulated", "write-protect of unpopulated pages", "6.4", false,
      "dirty logging must populate page tables before protecting them" },
    { "wp_async", "kernel-resolved write-protect faults (WP_ASYNC)", "6.7", false,
      "dirty logging traps every first write in userspace" },
    { "pagemap_scan", "PAGEMAP_SCAN ioctl", "6.7", false,
      "dirty logging cannot fetch written pages in one call" },
};

static bool feature_present(const struct mv_kernel_features *f, size_t index)
{
    const int present[] = { f->missing_shmem, f->minor_shmem, f->wp_shmem,
                            f->wp_unpopulated, f->wp_async, f->pagemap_scan };

    _Static_assert(sizeof(present) / sizeof(present[0]) ==
                       sizeof(kernel_features) / sizeof(kernel_features[0]),
                   "one presence flag per kernel feature");
    return present[index];
}

static void add_advice(struct json_object *advice, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add_advice(struct json_object *advice, const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_object_array_add(advice, json_object_new_string(text));
}

static struct json_object *doctor_advice(const struct mv_kernel_features *f)
{
    struct json_object *advice = json_object_new_array();

    if (!f->uffd_available) {
        add_advice(advice, "userfaultfd cannot be opened: run memvisord as root, give "
                   "its user access to /dev/userfaultfd (Linux 6.1+), or set "
                   "'sysctl -w vm.unprivileged_userfaultfd=1'; the kernel must be "
                   "built with CONFIG_USERFAULTFD=y");
        return advice;
    }
    if (f->uffd_user_mode_only)
        add_advice(advice, "only user-mode faults are trapped (unprivileged "
                   "userfaultfd): built-in guests work, but a VMM whose kernel "
                   "touches guest memory needs root or /dev/userfaultfd");
    for (size_t i = 0; i < sizeof(kernel_features) / sizeof(kernel_features[0]); i++) {
        const struct kernel_feature *k = &kernel_features[i];

        if (!feature_present(f, i))
            add_advice(advice, "%s %s Linux %s or later; without it %s",
                       k->description, k->required ? "needs" : "comes with",
                       k->since, k->without);
    }
    if (f->max_map_count < RECOMMENDED_MAX_MAP_COUNT)
        add_advice(advice, "vm.max_map_count is %" PRIu64 ": each shared page costs "
                   "a mapping, so raise it before sharing many pages "
                   "('sysctl -w vm.max_map_count=%u')",
                   f->max_map_count, RECOMMENDED_MAX_MAP_COUNT);
    return advice;
}

struct json_object *mv_proto_doctor_json(const struct mv_kernel_features *f,
                                         int probe_rc, const char *problem)
{
    struct json_object *report = json_object_new_object();
    struct json_object *uffd = json_object_new_object();
    struct json_object *features = json_object_new_array();
    char bits[32];

    add_string(report, "kernel_release", f->release);
    add_bool(uffd, "available", f->uffd_available);
    add_string(uffd, "opened_through", !f->uffd_available ? "nothing"
                                       : f->uffd_dev ? "/dev/userfaultfd"
                                                     : "the userfaultfd system call");
    add_bool(uffd, "user_mode_only", f->uffd_user_mode_only);
    snprintf(bits, sizeof(bits), "%#" PRIx64, f->uffd_features);
    add_string(uffd, "features", bits);
    json_object_object_add(report, "userfaultfd", uffd);
    for (size_t i = 0; i < sizeof(kernel_features) / sizeof(kernel_features[0]); i++) {
        const struct kernel_feature *k = &kernel_features[i];
        struct json_object *row = json_object_new_object();

        add_string(row, "name", k->name);
        add_string(row, "description", k->description);
        add_bool(row, "present", feature_present(f, i));
        add_string(row, "since", k->since);
        add_bool(row, "required", k->required);
        json_object_array_add(features, row);
    }
    json_object_object_add(report, "features", features);
    add_u64(report, "max_map_count", f->max_map_count);
    add_string(report, "shmem_thp", f->shmem_thp);
    add_u64(report, "mem_available_bytes", f->mem_available);
    add_bool(report, "usable", probe_rc == 0);
    if (probe_rc < 0)
        add_string(report, "problem", problem && problem[0] ? problem
                                                             : mv_strerror(probe_rc));
    json_object_object_add(report, "advice", doctor_advice(f));
    return report;
}

/* ------------------------------------------------------------------------ */
/* Option errors                                                             */

void mv_tool_bad_option(char *const *argv, const struct option *options, int result,
                        char *why, size_t size)
{
    const char *word = argv[optind - 1], *value;
    size_t length, used, matches = 0;

    if (optopt > 0 && optopt < 256 && strncmp(word, "--", 2) != 0) {
        snprintf(why, size, result == ':' ? "option '-%c' needs a value"
                                          : "unknown option '-%c'", optopt);
        return;
    }
    if (strncmp(word, "--", 2) != 0) {
        snprintf(why, size, "unknown option '%s'", word);
        return;
    }
    value = strchr(word, '=');
    length = value ? (size_t)(value - word) - 2 : strlen(word) - 2;
    for (const struct option *o = options; o->name; o++) {
        if (strlen(o->name) == length && strncmp(o->name, word + 2, length) == 0) {
            /* An exact name fails only for a missing or an unwanted value. */
            snprintf(why, size, result == ':' ? "option '--%s' needs a value"
                                              : "option '--%s' takes no value", o->name);
            return;
        }
    }
    used = (size_t)snprintf(why, size, "option '%.*s' is ambiguous:", (int)length + 2, word);
    for (const struct option *o = options; o->name; o++) {
        if (strncmp(o->name, word + 2, length) == 0) {
            matches++;
            if (used < size)
                used += (size_t)snprintf(why + used, size - used, "%s --%s",
                                         matches > 1 ? "," : "", o->name);
        }
    }
    if (matches < 2)
        snprintf(why, size, "unknown option '%.*s'", (int)length + 2, word);
}
