/*
 * test_protocol.c - unit tests of tools/protocol.c, the wire protocol shared
 * by memvisord and the memvisor tool: size and number parsing, the line
 * reader's framing (partial, multiple and oversized lines), message parsing,
 * reply construction and reading, typed arguments, the names of library
 * enums (the copy-on-write mode of create among them), the JSON of domain
 * info and sharing statistics, a whole call over a socket pair, the
 * doctor report, and the protocol's schema (tools/schema.c): its table well
 * formed, its examples accepted and bad requests refused by its check, and
 * protocol versions.  No host is created: these run on any kernel.
 */
#include "testutil.h"

#include "protocol.h"
#include "schema.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Sizes and numbers                                                         */

static void assert_size(const char *text, uint64_t expected)
{
    uint64_t bytes = 12345;

    if (mv_proto_parse_size(text, &bytes) != 0)
        fail_msg("'%s' was rejected", text);
    if (bytes != expected)
        fail_msg("'%s' parsed as %llu, expected %llu", text, (unsigned long long)bytes,
                 (unsigned long long)expected);
}

static void assert_size_error(const char *text, int expected)
{
    uint64_t bytes = 12345;
    int rc = mv_proto_parse_size(text, &bytes);

    if (rc != expected)
        fail_msg("'%s' gave %d, expected %d", text, rc, expected);
    assert_int_equal(bytes, 12345); /* untouched on failure */
}

static void size_parses_bytes_and_binary_units(void **state)
{
    (void)state;
    assert_size("4096", 4096);
    assert_size("4096B", 4096);
    assert_size("1K", 1024);
    assert_size("256M", 256 * MiB);
    assert_size("256m", 256 * MiB);
    assert_size("1G", GiB);
    assert_size("2GiB", 2 * GiB);
    assert_size("3kb", 3 * 1024);
    assert_size("1T", 1024 * GiB);
    assert_size("1P", 1024 * 1024 * GiB);
    assert_size("007M", 7 * MiB);
}

static void size_accepts_zero(void **state)
{
    (void)state;
    assert_size("0", 0);
    assert_size("0G", 0);
}

static void size_rejects_overflow(void **state)
{
    (void)state;
    assert_size("18446744073709551615", UINT64_MAX);
    assert_size_error("18446744073709551616", -ERANGE);
    assert_size_error("99999999999999999999999", -ERANGE);
    assert_size("16777215T", 16777215ull << 40);
    assert_size_error("16777216T", -ERANGE);
    assert_size_error("16384P", -ERANGE);
}

static void size_rejects_garbage(void **state)
{
    static const char *const garbage[] = {
        "", "G", "-1", "+1", " 1", "1 ", "1.5G", "1X", "1GG", "1iB", "1Gi", "0x10",
        "1KiBx", "1 G", "one",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
        assert_size_error(garbage[i], -EINVAL);
}

static void u64_parses_digits_only(void **state)
{
    uint64_t value = 0;

    (void)state;
    assert_int_equal(mv_proto_parse_u64("0", &value), 0);
    assert_int_equal(value, 0);
    assert_int_equal(mv_proto_parse_u64("18446744073709551615", &value), 0);
    assert_true(value == UINT64_MAX);
    assert_int_equal(mv_proto_parse_u64("18446744073709551616", &value), -ERANGE);
    assert_int_equal(mv_proto_parse_u64("4K", &value), -EINVAL);
    assert_int_equal(mv_proto_parse_u64("", &value), -EINVAL);
    assert_int_equal(mv_proto_parse_u64("-3", &value), -EINVAL);
}

static void size_formats_for_humans(void **state)
{
    char buf[32];

    (void)state;
    assert_string_equal(mv_proto_format_size(buf, sizeof(buf), 0), "0 B");
    assert_string_equal(mv_proto_format_size(buf, sizeof(buf), 1023), "1023 B");
    assert_string_equal(mv_proto_format_size(buf, sizeof(buf), 4096), "4 KiB");
    assert_string_equal(mv_proto_format_size(buf, sizeof(buf), 256 * MiB), "256 MiB");
    assert_string_equal(mv_proto_format_size(buf, sizeof(buf), 3 * GiB / 2), "1.5 GiB");
    assert_string_equal(mv_proto_format_size(buf, sizeof(buf), UINT64_MAX), "16.0 EiB");
}

/* ------------------------------------------------------------------------ */
/* Line reader                                                               */

/* Deliver `data` as one read(2) would. */
static void feed(struct mv_proto_reader *reader, const char *data)
{
    size_t room, n = strlen(data);
    char *space = mv_proto_reader_space(reader, &room);

    assert_non_null(space);
    assert_true(room >= n);
    memcpy(space, data, n);
    mv_proto_reader_commit(reader, n);
}

static void expect_line(struct mv_proto_reader *reader, const char *expected)
{
    char *line;
    size_t length;

    assert_int_equal(mv_proto_reader_next(reader, &line, &length), MV_PROTO_LINE);
    assert_string_equal(line, expected);
    assert_int_equal(length, strlen(expected));
}

static void expect_status(struct mv_proto_reader *reader, enum mv_proto_next expected)
{
    char *line;
    size_t length;

    assert_int_equal(mv_proto_reader_next(reader, &line, &length), expected);
}

static void reader_splits_lines_of_one_read(void **state)
{
    struct mv_proto_reader reader;

    (void)state;
    mv_proto_reader_init(&reader, MV_PROTO_MAX_REQUEST);
    feed(&reader, "{\"cmd\":\"list\"}\n{\"cmd\":\"stats\"}\nthird\n");
    expect_line(&reader, "{\"cmd\":\"list\"}");
    expect_line(&reader, "{\"cmd\":\"stats\"}");
    expect_line(&reader, "third");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    assert_false(mv_proto_reader_partial(&reader));
    mv_proto_reader_free(&reader);
}

static void reader_joins_partial_lines(void **state)
{
    struct mv_proto_reader reader;

    (void)state;
    mv_proto_reader_init(&reader, MV_PROTO_MAX_REQUEST);
    feed(&reader, "{\"cmd\"");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    assert_true(mv_proto_reader_partial(&reader));
    feed(&reader, ":\"li");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    feed(&reader, "st\"}\n{\"cmd\":");
    expect_line(&reader, "{\"cmd\":\"list\"}");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    assert_true(mv_proto_reader_partial(&reader));
    feed(&reader, "1}\n");
    expect_line(&reader, "{\"cmd\":1}");
    assert_false(mv_proto_reader_partial(&reader));
    mv_proto_reader_free(&reader);
}

static void reader_strips_cr_and_skips_empty_lines(void **state)
{
    struct mv_proto_reader reader;

    (void)state;
    mv_proto_reader_init(&reader, 64);
    feed(&reader, "\n\r\none\r\n\ntwo\n");
    expect_line(&reader, "one");
    expect_line(&reader, "two");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    mv_proto_reader_free(&reader);
}

static void reader_takes_a_line_of_exactly_max_bytes(void **state)
{
    struct mv_proto_reader reader;
    char line[18];

    (void)state;
    mv_proto_reader_init(&reader, 16);
    memset(line, 'x', 16);
    line[16] = '\n';
    line[17] = '\0';
    feed(&reader, line);
    line[16] = '\0';
    expect_line(&reader, line);
    mv_proto_reader_free(&reader);
}

/* A line that overflows the buffer before its newline arrives is reported
 * once; the rest of it is skipped across reads; the next line is intact. */
static void reader_rejects_oversized_line_and_resyncs(void **state)
{
    struct mv_proto_reader reader;

    (void)state;
    mv_proto_reader_init(&reader, 16);
    feed(&reader, "0123456789");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    feed(&reader, "0123456");
    expect_status(&reader, MV_PROTO_OVERSIZED);
    expect_status(&reader, MV_PROTO_NEED_MORE);
    assert_true(mv_proto_reader_partial(&reader));
    feed(&reader, "still long");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    feed(&reader, "end\nnext\n");
    expect_line(&reader, "next");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    assert_false(mv_proto_reader_partial(&reader));
    mv_proto_reader_free(&reader);
}

/* One byte over the limit is too long, even when its newline comes next. */
static void reader_rejects_a_line_one_byte_too_long(void **state)
{
    struct mv_proto_reader reader;

    (void)state;
    mv_proto_reader_init(&reader, 8);
    feed(&reader, "ok\n123456");
    expect_line(&reader, "ok");
    expect_status(&reader, MV_PROTO_NEED_MORE);
    feed(&reader, "789");
    expect_status(&reader, MV_PROTO_OVERSIZED);
    feed(&reader, "\nafter\n");
    expect_line(&reader, "after");
    mv_proto_reader_free(&reader);
}

/* The buffer grows from small to the limit and no further. */
static void reader_grows_up_to_the_limit(void **state)
{
    struct mv_proto_reader reader;
    size_t total = 0, room;

    (void)state;
    mv_proto_reader_init(&reader, MV_PROTO_MAX_REQUEST);
    for (;;) {
        char *space = mv_proto_reader_space(&reader, &room);

        assert_non_null(space);
        memset(space, 'a', room);
        mv_proto_reader_commit(&reader, room);
        total += room;
        if (total > MV_PROTO_MAX_REQUEST)
            break;
        expect_status(&reader, MV_PROTO_NEED_MORE);
    }
    assert_int_equal(total, MV_PROTO_MAX_REQUEST + 1);
    assert_int_equal(reader.capacity, MV_PROTO_MAX_REQUEST + 1);
    expect_status(&reader, MV_PROTO_OVERSIZED);
    mv_proto_reader_free(&reader);
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */

static int parse(const char *text, struct json_object **message, char *why)
{
    return mv_proto_parse_message(text, strlen(text), message, why);
}

static void message_parses_an_object(void **state)
{
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *message = NULL;
    const char *cmd = NULL;

    (void)state;
    assert_int_equal(parse("{\"cmd\": \"list\", \"x\": [1, 2]} \t", &message, why), 0);
    assert_int_equal(mv_proto_arg_string(message, "cmd", true, &cmd, why), 0);
    assert_string_equal(cmd, "list");
    json_object_put(message);
}

static void message_rejects_malformed_json(void **state)
{
    static const char *const malformed[] = {
        "{", "{\"cmd\":}", "nul", "{'cmd': 'list'}", "{\"cmd\":\"list\"} x",
        "{\"cmd\":\"list\"}{}", "{\"a\":1,}", "\"\xff\xfe\"",
    };
    char why[MV_PROTO_DETAIL_MAX];

    (void)state;
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        struct json_object *message = NULL;

        why[0] = '\0';
        if (parse(malformed[i], &message, why) != -EINVAL)
            fail_msg("'%s' was accepted", malformed[i]);
        assert_null(message);
        assert_true(why[0] != '\0');
    }
}

/* What the JSON parser would silently change is refused: a NUL inside a
 * string (it would cut the string short), integers outside 64 bits (they
 * would be capped) and raw control characters in strings; the largest
 * values that fit, escaped control characters and an escaped backslash
 * before "u0000" are fine. */
static void message_rejects_nul_and_numbers_out_of_range(void **state)
{
    static const struct { const char *text; int err; } cases[] = {
        { "{\"cmd\":\"destroy\",\"domain\":\"web\\u0000x\"}", -EINVAL },
        { "{\"cmd\\u0000zz\":\"list\"}", -EINVAL },
        { "{\"cmd\":\"scan\",\"max_pages\":18446744073709551616}", -EINVAL },
        { "{\"cmd\":\"scan\",\"max_pages\":340282366920938463463374607431768211456}", -EINVAL },
        { "{\"cmd\":\"scan\",\"n\":-9223372036854775809}", -EINVAL },
        { "{\"cmd\":\"scan\",\"max_pages\":18446744073709551615}", 0 },
        { "{\"cmd\":\"scan\",\"n\":-9223372036854775808,\"x\":1.5e400}", 0 },
        { "{\"cmd\":\"list\",\"name\":\"a\\\\u0000\"}", 0 },
        { "{\"cmd\":\"list\",\"name\":\"a\tb\"}", -EINVAL },
        { "{\"cmd\":\"list\",\"name\":\"a\\tb\"}", 0 },
    };
    char why[MV_PROTO_DETAIL_MAX];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *message = NULL;
        int rc = parse(cases[i].text, &message, why);

        if (rc != cases[i].err)
            fail_msg("'%s' gave %d, expected %d", cases[i].text, rc, cases[i].err);
        assert_true(rc == 0 ? message != NULL : message == NULL);
        json_object_put(message);
    }
    /* A raw NUL byte inside the line. */
    {
        static const char raw[] = "{\"cmd\":\"li\0st\"}";
        struct json_object *message = NULL;

        assert_int_equal(mv_proto_parse_message(raw, sizeof(raw) - 1, &message, why), -EINVAL);
        assert_null(message);
    }
}

static void message_rejects_non_objects(void **state)
{
    static const char *const values[] = { "[1]", "42", "\"list\"", "null", "true" };
    char why[MV_PROTO_DETAIL_MAX];

    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        struct json_object *message = NULL;

        if (parse(values[i], &message, why) != -EINVAL)
            fail_msg("'%s' was accepted", values[i]);
        assert_non_null(strstr(why, "must be a JSON object"));
    }
}

/* The refusal names the type the value had: the value is freed only after
 * its type was read (it used to be read from freed memory: "not (null)"). */
static void message_names_the_type_it_refuses(void **state)
{
    static const struct { const char *text, *type; } values[] = {
        { "[]", "array" }, { "[1, 2]", "array" }, { "42", "int" }, { "4.5", "double" },
        { "\"x\"", "string" }, { "true", "boolean" }, { "false", "boolean" },
        { "null", "null" },
    };
    char why[MV_PROTO_DETAIL_MAX], expected[64];

    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        struct json_object *message = NULL;

        memset(why, 0, sizeof(why));
        if (parse(values[i].text, &message, why) != -EINVAL)
            fail_msg("'%s' was accepted", values[i].text);
        assert_null(message);
        snprintf(expected, sizeof(expected), "a message must be a JSON object, not %s",
                 values[i].type);
        if (strcmp(why, expected) != 0)
            fail_msg("'%s': \"%s\", expected \"%s\"", values[i].text, why, expected);
    }
}

/* A message is one line whatever its strings hold. */
static void encoded_message_is_one_line(void **state)
{
    struct json_object *reply = mv_proto_reply_ok();
    size_t length;
    char *line;

    (void)state;
    json_object_object_add(reply, "text", json_object_new_string("two\nlines/"));
    line = mv_proto_encode_line(reply, &length);
    assert_non_null(line);
    assert_int_equal(length, strlen(line));
    assert_true(line[length - 1] == '\n');
    assert_ptr_equal(strchr(line, '\n'), line + length - 1);
    assert_string_equal(line, "{\"ok\":true,\"text\":\"two\\nlines/\"}\n");
    free(line);
    json_object_put(reply);
}

static void error_reply_carries_errno_words_and_detail(void **state)
{
    struct json_object *reply = mv_proto_reply_error(-EINVAL, "target 2 GiB exceeds maxmem");
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *parsed;
    const char *error, *detail;
    size_t length;
    char *line;

    (void)state;
    line = mv_proto_encode_line(reply, &length);
    line[length - 1] = '\0'; /* the reader's view: newline removed */
    assert_int_equal(mv_proto_parse_message(line, length - 1, &parsed, why), 0);
    assert_string_equal(json_object_get_string(json_object_object_get(parsed, "error")),
                        mv_strerror(-EINVAL));
    assert_int_equal(json_object_get_int(json_object_object_get(parsed, "errno")), EINVAL);
    assert_int_equal(mv_proto_reply_status(parsed, &error, &detail), -EINVAL);
    assert_string_equal(error, mv_strerror(-EINVAL));
    assert_string_equal(detail, "target 2 GiB exceeds maxmem");
    free(line);
    json_object_put(parsed);
    json_object_put(reply);
}

static void ok_reply_reads_as_success(void **state)
{
    struct json_object *reply = mv_proto_reply_ok();
    const char *error, *detail;

    (void)state;
    assert_int_equal(mv_proto_reply_status(reply, &error, &detail), 0);
    json_object_put(reply);
}

static void malformed_reply_reads_as_protocol_error(void **state)
{
    static const char *const replies[] = {
        "{}", "{\"ok\":1}", "{\"ok\":false}", "{\"ok\":false,\"errno\":-5}",
        "{\"ok\":false,\"errno\":\"EINVAL\"}",
    };
    char why[MV_PROTO_DETAIL_MAX];
    const char *error, *detail;

    (void)state;
    for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
        struct json_object *reply;

        assert_int_equal(parse(replies[i], &reply, why), 0);
        if (mv_proto_reply_status(reply, &error, &detail) != -EPROTO)
            fail_msg("'%s' was taken for a reply", replies[i]);
        assert_string_equal(error, "malformed reply");
        json_object_put(reply);
    }
}

/* ------------------------------------------------------------------------ */
/* Typed arguments                                                           */

static void arguments_are_typed(void **state)
{
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *m, *object = NULL;
    const char *text = "preset";
    uint64_t value = 7;

    (void)state;
    assert_int_equal(parse("{\"cmd\":\"create\",\"name\":\"web\",\"maxmem\":\"1G\","
                           "\"target\":268435456,\"vcpus\":2,\"neg\":-1,\"real\":1.5,"
                           "\"bad_size\":\"1X\",\"huge\":\"99999999999999999999P\","
                           "\"workload\":{\"kind\":\"scrub\"}}", &m, why), 0);

    assert_int_equal(mv_proto_arg_string(m, "name", true, &text, why), 0);
    assert_string_equal(text, "web");
    assert_int_equal(mv_proto_arg_size(m, "maxmem", true, &value, why), 0);
    assert_true(value == GiB);
    assert_int_equal(mv_proto_arg_size(m, "target", true, &value, why), 0);
    assert_true(value == 256 * MiB);
    assert_int_equal(mv_proto_arg_u64(m, "vcpus", true, &value, why), 0);
    assert_int_equal(value, 2);
    assert_int_equal(mv_proto_arg_object(m, "workload", true, &object, why), 0);
    assert_non_null(object);

    /* Absent: optional leaves the preset, required explains. */
    value = 99;
    assert_int_equal(mv_proto_arg_u64(m, "rate", false, &value, why), 0);
    assert_int_equal(value, 99);
    assert_int_equal(mv_proto_arg_u64(m, "rate", true, &value, why), -EINVAL);
    assert_string_equal(why, "missing argument 'rate'");

    /* Present with the wrong type or value. */
    assert_int_equal(mv_proto_arg_string(m, "vcpus", true, &text, why), -EINVAL);
    assert_string_equal(why, "argument 'vcpus' must be a string");
    assert_int_equal(mv_proto_arg_u64(m, "name", true, &value, why), -EINVAL);
    assert_int_equal(mv_proto_arg_u64(m, "neg", true, &value, why), -EINVAL);
    assert_string_equal(why, "argument 'neg' must not be negative");
    assert_int_equal(mv_proto_arg_u64(m, "real", true, &value, why), -EINVAL);
    assert_int_equal(mv_proto_arg_size(m, "bad_size", true, &value, why), -EINVAL);
    assert_non_null(strstr(why, "'1X' is not a size"));
    assert_int_equal(mv_proto_arg_size(m, "huge", true, &value, why), -EINVAL);
    assert_non_null(strstr(why, "too large"));
    assert_int_equal(mv_proto_arg_object(m, "name", true, &object, why), -EINVAL);
    json_object_put(m);
}

static void unknown_members_are_named(void **state)
{
    static const char *const allowed[] = { "domain", "target", NULL };
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *m;

    (void)state;
    assert_int_equal(parse("{\"cmd\":\"set-target\",\"domain\":\"a\",\"target\":1}", &m, why),
                     0);
    assert_int_equal(mv_proto_check_members(m, allowed, why), 0);
    json_object_put(m);
    assert_int_equal(parse("{\"cmd\":\"set-target\",\"domain\":\"a\",\"targte\":1}", &m, why),
                     0);
    assert_int_equal(mv_proto_check_members(m, allowed, why), -EINVAL);
    assert_string_equal(why, "unknown argument 'targte'");
    json_object_put(m);
}

static void enum_names_round_trip(void **state)
{
    enum mv_workload_kind kind;
    enum mv_pod_policy policy;

    (void)state;
    for (int k = MV_WORKLOAD_SCRUB; k <= MV_WORKLOAD_VERIFY; k++) {
        assert_int_equal(mv_proto_workload_parse(mv_proto_workload_name(k), &kind), 0);
        assert_int_equal(kind, k);
    }
    for (int p = MV_POD_WAIT; p <= MV_POD_CRASH; p++) {
        assert_int_equal(mv_proto_policy_parse(mv_proto_policy_name(p), &policy), 0);
        assert_int_equal(policy, p);
    }
    assert_int_equal(mv_proto_workload_parse("Scrub", &kind), -EINVAL);
    assert_int_equal(mv_proto_policy_parse("", &policy), -EINVAL);
    assert_string_equal(mv_proto_state_name(MV_DOMAIN_CRASHED), "crashed");
    assert_string_equal(mv_proto_state_name((enum mv_domain_state)42), "unknown");
}

static void cow_modes_parse_by_name(void **state)
{
    static const char *const bad[] = { "", "Kernel", "TRAP", "fork", "kernel ", "unknown" };
    enum mv_cow_mode mode = MV_COW_KERNEL;

    (void)state;
    assert_int_equal(mv_proto_cow_mode_parse("trap", &mode), 0);
    assert_int_equal(mode, MV_COW_TRAP);
    assert_int_equal(mv_proto_cow_mode_parse("kernel", &mode), 0);
    assert_int_equal(mode, MV_COW_KERNEL);
    for (int m = MV_COW_TRAP; m <= MV_COW_KERNEL; m++) {
        assert_int_equal(mv_proto_cow_mode_parse(mv_cow_mode_name(m), &mode), 0);
        assert_int_equal(mode, m);
    }
    /* A bad name leaves the mode as it was. */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mode = MV_COW_KERNEL;
        if (mv_proto_cow_mode_parse(bad[i], &mode) != -EINVAL)
            fail_msg("'%s' was taken for a copy-on-write mode", bad[i]);
        assert_int_equal(mode, MV_COW_KERNEL);
    }
}

/* The create request's cow_mode as the daemon reads it: a string naming a
 * mode; any other type, or another word, is refused. */
static void create_takes_a_cow_mode(void **state)
{
    static const char *const allowed[] = { "name", "maxmem", "cow_mode", NULL };
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *m;
    enum mv_cow_mode mode = MV_COW_TRAP;
    const char *name = NULL;

    (void)state;
    assert_int_equal(parse("{\"cmd\":\"create\",\"name\":\"a\",\"maxmem\":4096,"
                           "\"cow_mode\":\"kernel\"}", &m, why), 0);
    assert_int_equal(mv_proto_check_members(m, allowed, why), 0);
    assert_int_equal(mv_proto_arg_string(m, "cow_mode", false, &name, why), 0);
    assert_string_equal(name, "kernel");
    assert_int_equal(mv_proto_cow_mode_parse(name, &mode), 0);
    assert_int_equal(mode, MV_COW_KERNEL);
    json_object_put(m);

    assert_int_equal(parse("{\"cmd\":\"create\",\"cow_mode\":\"fork\"}", &m, why), 0);
    assert_int_equal(mv_proto_arg_string(m, "cow_mode", false, &name, why), 0);
    assert_int_equal(mv_proto_cow_mode_parse(name, &mode), -EINVAL);
    json_object_put(m);

    assert_int_equal(parse("{\"cmd\":\"create\",\"cow_mode\":1}", &m, why), 0);
    assert_int_equal(mv_proto_arg_string(m, "cow_mode", false, &name, why), -EINVAL);
    assert_string_equal(why, "argument 'cow_mode' must be a string");
    json_object_put(m);

    assert_int_equal(parse("{\"cmd\":\"create\",\"cow-mode\":\"kernel\"}", &m, why), 0);
    assert_int_equal(mv_proto_check_members(m, allowed, why), -EINVAL);
    assert_string_equal(why, "unknown argument 'cow-mode'");
    json_object_put(m);
}

/* ------------------------------------------------------------------------ */
/* Library structures as JSON                                                */

static uint64_t member_u64(struct json_object *object, const char *key)
{
    struct json_object *value;

    if (!json_object_object_get_ex(object, key, &value))
        fail_msg("no member '%s'", key);
    assert_true(json_object_is_type(value, json_type_int));
    return json_object_get_uint64(value);
}

static struct json_object *member_of_type(struct json_object *object, const char *key,
                                          json_type type)
{
    struct json_object *value;

    if (!json_object_object_get_ex(object, key, &value))
        fail_msg("no member '%s'", key);
    assert_true(json_object_is_type(value, type));
    return value;
}

static void domain_info_tells_the_cow_mode(void **state)
{
    struct mv_domain_info info = { .domid = 4, .name = "k", .cow_mode = MV_COW_KERNEL,
                                   .cow_breaks = 12, .cow_kernel_copies = 10,
                                   .cow_trapping = 1 };
    struct json_object *o;

    (void)state;
    o = mv_proto_domain_info_json(&info);
    assert_string_equal(json_object_get_string(member_of_type(o, "cow_mode",
                                                              json_type_string)), "kernel");
    assert_int_equal(member_u64(o, "cow_kernel_copies"), 10);
    assert_int_equal(member_u64(o, "cow_breaks"), 12);
    assert_true(json_object_get_boolean(member_of_type(o, "cow_trapping",
                                                       json_type_boolean)));
    json_object_put(o);

    info.cow_mode = MV_COW_TRAP;
    info.cow_kernel_copies = 0;
    info.cow_trapping = 0;
    o = mv_proto_domain_info_json(&info);
    assert_string_equal(json_object_get_string(member_of_type(o, "cow_mode",
                                                              json_type_string)), "trap");
    assert_int_equal(member_u64(o, "cow_kernel_copies"), 0);
    assert_false(json_object_get_boolean(member_of_type(o, "cow_trapping",
                                                        json_type_boolean)));
    json_object_put(o);
}

static void share_stats_tell_the_settling(void **state)
{
    struct mv_share_stats stats = { .cow_breaks = 9, .cow_kernel_copies = 7,
                                    .cow_settles = 3, .cow_settle_ns = 123456789012ull,
                                    .cow_settle_waiting = 2 };
    struct json_object *o;

    (void)state;
    o = mv_proto_share_stats_json(&stats);
    assert_int_equal(member_u64(o, "cow_breaks"), 9);
    assert_int_equal(member_u64(o, "cow_kernel_copies"), 7);
    assert_int_equal(member_u64(o, "cow_settles"), 3);
    assert_true(member_u64(o, "cow_settle_ns") == 123456789012ull);
    assert_int_equal(member_u64(o, "cow_settle_waiting"), 2);
    json_object_put(o);
}

/* ------------------------------------------------------------------------ */
/* Calls and sockets                                                         */

/* The request reaches the peer as one line and the peer's line comes back
 * parsed, even when it arrived before the request was sent. */
static void call_exchanges_one_line_each_way(void **state)
{
    static const char answer[] = "{\"ok\":true,\"domid\":3}\n";
    char why[MV_PROTO_DETAIL_MAX], received[256];
    struct mv_proto_reader reader;
    struct json_object *request = mv_proto_request_new("create"), *reply = NULL;
    int fds[2];
    ssize_t n;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    assert_int_equal(write(fds[1], answer, strlen(answer)), (ssize_t)strlen(answer));
    json_object_object_add(request, "name", json_object_new_string("web"));
    mv_proto_reader_init(&reader, MV_PROTO_MAX_REPLY);
    assert_int_equal(mv_proto_call(fds[0], &reader, request, &reply, why), 0);
    assert_int_equal(json_object_get_int(json_object_object_get(reply, "domid")), 3);
    n = read(fds[1], received, sizeof(received) - 1);
    assert_true(n > 0);
    received[n] = '\0';
    assert_string_equal(received, "{\"cmd\":\"create\",\"name\":\"web\"}\n");

    /* A peer that hangs up without answering. */
    json_object_put(reply);
    close(fds[1]);
    assert_int_equal(mv_proto_call(fds[0], &reader, request, &reply, why) < 0, 1);
    assert_true(why[0] != '\0');
    close(fds[0]);
    mv_proto_reader_free(&reader);
    json_object_put(request);
}

static void socket_path_prefers_option_then_environment(void **state)
{
    (void)state;
    unsetenv(MV_PROTO_SOCKET_ENV);
    assert_string_equal(mv_proto_socket_path(NULL), MV_PROTO_SOCKET_DEFAULT);
    setenv(MV_PROTO_SOCKET_ENV, "", 1);
    assert_string_equal(mv_proto_socket_path(NULL), MV_PROTO_SOCKET_DEFAULT);
    setenv(MV_PROTO_SOCKET_ENV, "env.sock", 1);
    assert_string_equal(mv_proto_socket_path(NULL), "env.sock");
    assert_string_equal(mv_proto_socket_path("option.sock"), "option.sock");
    unsetenv(MV_PROTO_SOCKET_ENV);
}

static void socket_address_rejects_long_paths(void **state)
{
    char why[MV_PROTO_DETAIL_MAX], path[256];
    struct sockaddr_un address;
    socklen_t length;

    (void)state;
    assert_int_equal(mv_proto_socket_address("a.sock", &address, &length, why), 0);
    assert_string_equal(address.sun_path, "a.sock");
    memset(path, 'p', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    assert_int_equal(mv_proto_socket_address(path, &address, &length, why), -ENAMETOOLONG);
    assert_int_equal(mv_proto_socket_address("", &address, &length, why), -EINVAL);
}

/* ------------------------------------------------------------------------ */
/* Doctor report                                                             */

static void doctor_report_gives_verdict_and_advice(void **state)
{
    struct mv_kernel_features features = { .release = "4.19.0", .uffd_available = 1,
                                           .missing_shmem = 1, .max_map_count = 65530 };
    struct json_object *report, *advice;
    const char *joined;

    (void)state;
    report = mv_proto_doctor_json(&features, -EOPNOTSUPP, "userfaultfd lacks MINOR faults");
    assert_false(json_object_get_boolean(json_object_object_get(report, "usable")));
    assert_string_equal(json_object_get_string(json_object_object_get(report, "problem")),
                        "userfaultfd lacks MINOR faults");
    advice = json_object_object_get(report, "advice");
    joined = json_object_to_json_string(advice);
    assert_non_null(strstr(joined, "Linux 5.14"));
    assert_non_null(strstr(joined, "vm.max_map_count"));
    assert_int_equal(json_object_array_length(json_object_object_get(report, "features")), 6);
    json_object_put(report);

    features.minor_shmem = features.wp_shmem = features.wp_unpopulated = 1;
    features.wp_async = features.pagemap_scan = 1;
    features.max_map_count = 1u << 20;
    report = mv_proto_doctor_json(&features, 0, "");
    assert_true(json_object_get_boolean(json_object_object_get(report, "usable")));
    assert_null(json_object_object_get(report, "problem"));
    assert_int_equal(json_object_array_length(json_object_object_get(report, "advice")), 0);
    json_object_put(report);
}

/* ------------------------------------------------------------------------ */
/* The schema                                                                */

static void schema_args_are_well_formed(const char *command, const struct mv_schema_arg *args)
{
    for (const struct mv_schema_arg *a = args; a->name; a++) {
        for (const struct mv_schema_arg *b = a + 1; b->name; b++)
            if (strcmp(a->name, b->name) == 0)
                fail_msg("%s: argument '%s' twice", command, a->name);
        if (!a->help || !a->help[0])
            fail_msg("%s: argument '%s' has no help", command, a->name);
        if (a->type == MV_SCHEMA_ENUM && (!a->values || !a->values[0] || !a->noun))
            fail_msg("%s: enum argument '%s' lacks words or a noun", command, a->name);
        if (a->type == MV_SCHEMA_OBJECT) {
            if (!a->members)
                fail_msg("%s: object argument '%s' has no members", command, a->name);
            schema_args_are_well_formed(command, a->members);
        }
        /* The fuzzer sends these as the valid values. */
        if ((a->type == MV_SCHEMA_U64 || a->type == MV_SCHEMA_SIZE ||
             a->type == MV_SCHEMA_GFN || a->type == MV_SCHEMA_STRING) &&
            (!a->examples || !a->examples[0]))
            fail_msg("%s: argument '%s' has no examples", command, a->name);
    }
}

static void schema_is_well_formed(void **state)
{
    (void)state;
    assert_true(mv_schema_command_count > 30);
    for (size_t i = 0; i < mv_schema_command_count; i++) {
        const struct mv_schema_command *c = &mv_schema_commands[i];

        assert_non_null(c->summary);
        assert_ptr_equal(mv_schema_find(c->name), c);
        if (c->alias_of) {
            assert_non_null(mv_schema_find(c->alias_of));
            assert_null(mv_schema_find(c->alias_of)->alias_of);
        }
        assert_non_null(mv_schema_target(c)->args);
        schema_args_are_well_formed(c->name, mv_schema_target(c)->args);
    }
    assert_null(mv_schema_find("nope"));
    assert_non_null(mv_schema_find("hello"));
    assert_string_equal(mv_schema_arg(mv_schema_find("create"), "workload.rate")->name, "rate");
    assert_null(mv_schema_arg(mv_schema_find("create"), "workload.nope"));
    assert_string_equal(mv_schema_arg(mv_schema_find("info"), "domain")->name, "domain");
}

/* A valid value of `a` as a JSON value: its first example or word. */
static struct json_object *valid_value(const struct mv_schema_arg *a)
{
    struct json_object *object;

    switch (a->type) {
    case MV_SCHEMA_DOMAIN:
    case MV_SCHEMA_NAME:
        return json_object_new_string("web");
    case MV_SCHEMA_HANDLE:
        return json_object_new_uint64(7);
    case MV_SCHEMA_BOOL:
        return json_object_new_boolean(1);
    case MV_SCHEMA_ENUM:
        return json_object_new_string(a->values[0]);
    case MV_SCHEMA_OBJECT:
        object = json_object_new_object();
        for (const struct mv_schema_arg *m = a->members; m->name; m++)
            json_object_object_add(object, m->name, valid_value(m));
        return object;
    default:
        return json_tokener_parse(a->examples[0]);
    }
}

static void schema_check_takes_every_example(void **state)
{
    char why[MV_PROTO_DETAIL_MAX];

    (void)state;
    for (size_t i = 0; i < mv_schema_command_count; i++) {
        const struct mv_schema_command *c = &mv_schema_commands[i];
        struct json_object *request = mv_proto_request_new(c->name), *all;

        /* The required arguments alone, then every argument, then each
         * example of each argument in turn. */
        for (const struct mv_schema_arg *a = mv_schema_target(c)->args; a->name; a++)
            if (a->required)
                json_object_object_add(request, a->name, valid_value(a));
        if (mv_schema_check(c, request, why) != 0)
            fail_msg("%s: its required arguments were refused: %s", c->name, why);
        all = json_object_get(request);
        for (const struct mv_schema_arg *a = mv_schema_target(c)->args; a->name; a++)
            json_object_object_add(all, a->name, valid_value(a));
        if (mv_schema_check(c, all, why) != 0)
            fail_msg("%s: all its arguments were refused: %s", c->name, why);
        for (const struct mv_schema_arg *a = mv_schema_target(c)->args; a->name; a++) {
            for (const char *const *e = a->examples; e && *e; e++) {
                json_object_object_add(all, a->name, json_tokener_parse(*e));
                if (mv_schema_check(c, all, why) != 0)
                    fail_msg("%s: example %s of '%s' was refused: %s", c->name, *e, a->name,
                             why);
            }
            json_object_object_add(all, a->name, valid_value(a));
        }
        json_object_put(all);
        json_object_put(request);
    }
}

/* The detail of checking `text` against its command; "" when it passed. */
static const char *check_detail(const char *text, char *why)
{
    struct json_object *m = NULL;
    const char *cmd = NULL;
    int rc;

    assert_int_equal(parse(text, &m, why), 0);
    assert_int_equal(mv_proto_arg_string(m, "cmd", true, &cmd, why), 0);
    rc = mv_schema_check(mv_schema_find(cmd), m, why);
    json_object_put(m);
    if (rc == 0)
        why[0] = '\0';
    else
        assert_int_equal(rc, -EINVAL);
    return why;
}

static void schema_check_refuses_bad_requests(void **state)
{
    char why[MV_PROTO_DETAIL_MAX];

    (void)state;
    assert_string_equal(check_detail("{\"cmd\":\"set-target\",\"domain\":\"web\","
                                     "\"targte\":1}", why), "unknown argument 'targte'");
    assert_string_equal(check_detail("{\"cmd\":\"share-settle\"}", why),
                        "missing argument 'domain'");
    assert_string_equal(check_detail("{\"cmd\":\"create\",\"name\":7,\"maxmem\":4096}", why),
                        "argument 'name' must be a string");
    assert_string_equal(check_detail("{\"cmd\":\"create\",\"name\":\"c\",\"maxmem\":4096,"
                                     "\"cow_mode\":\"fork\"}", why),
                        "unknown copy-on-write mode 'fork' (trap or kernel)");
    assert_string_equal(check_detail("{\"cmd\":\"logdirty\",\"domain\":1,\"action\":\"x\"}",
                                     why),
                        "unknown dirty-log action 'x' (enable, disable, clean, peek or "
                        "stats)");
    assert_string_equal(check_detail("{\"cmd\":\"workload-status\",\"domain\":\"web\","
                                     "\"wait_ms\":101}", why),
                        "wait_ms 101 is above 100: poll instead");
    assert_string_equal(check_detail("{\"cmd\":\"workload-status\",\"domain\":\"web\","
                                     "\"wait_ms\":100}", why), "");
    assert_string_equal(check_detail("{\"cmd\":\"create\",\"name\":\"c\",\"maxmem\":4096,"
                                     "\"vcpus\":4294967296}", why),
                        "argument 'vcpus' is larger than 4294967295");
    assert_string_equal(check_detail("{\"cmd\":\"balloon\",\"domain\":\"web\","
                                     "\"size\":\"lots\"}", why),
                        "argument 'size': 'lots' is not a size (bytes, or a number with K, "
                        "M, G, T or P)");
    assert_string_equal(check_detail("{\"cmd\":\"destroy\",\"domain\":4294967296}", why),
                        "domain id 4294967296 is out of range");
    assert_string_equal(check_detail("{\"cmd\":\"destroy\",\"domain\":[1]}", why),
                        "argument 'domain' must be a name or an id");
    assert_string_equal(check_detail("{\"cmd\":\"create\",\"name\":\"c\",\"maxmem\":4096,"
                                     "\"workload\":{\"kind\":\"scrub\",\"speed\":1}}", why),
                        "unknown argument 'speed'");
    assert_string_equal(check_detail("{\"cmd\":\"create\",\"name\":\"c\",\"maxmem\":4096,"
                                     "\"workload\":{\"rate\":1}}", why),
                        "missing argument 'kind'");
    assert_string_equal(check_detail("{\"cmd\":\"info\",\"domain\":\"web\",\"x\":1}", why),
                        "unknown argument 'x'");
    assert_string_equal(check_detail("{\"cmd\":\"hello\",\"protocol\":\"1.0\"}", why), "");
}

static void protocol_versions_parse(void **state)
{
    unsigned major = 9, minor = 9;

    (void)state;
    assert_int_equal(mv_proto_parse_version(MV_PROTO_VERSION, &major, &minor), 0);
    assert_int_equal(major, MV_PROTO_VERSION_MAJOR);
    assert_int_equal(minor, MV_PROTO_VERSION_MINOR);
    assert_int_equal(mv_proto_parse_version("12.345", &major, &minor), 0);
    assert_int_equal(major, 12);
    assert_int_equal(minor, 345);
    assert_int_equal(mv_proto_parse_version("1", &major, &minor), -EINVAL);
    assert_int_equal(mv_proto_parse_version("1.", &major, &minor), -EINVAL);
    assert_int_equal(mv_proto_parse_version(".1", &major, &minor), -EINVAL);
    assert_int_equal(mv_proto_parse_version("1.0.0", &major, &minor), -EINVAL);
    assert_int_equal(mv_proto_parse_version("-1.0", &major, &minor), -EINVAL);
    assert_int_equal(mv_proto_parse_version("4294967296.0", &major, &minor), -EINVAL);
}

static void schema_json_lists_every_command(void **state)
{
    struct json_object *schema = mv_schema_json(), *commands;

    (void)state;
    assert_string_equal(json_object_get_string(json_object_object_get(schema, "protocol")),
                        MV_PROTO_VERSION);
    commands = json_object_object_get(schema, "commands");
    assert_int_equal(json_object_array_length(commands), mv_schema_command_count);
    for (size_t i = 0; i < mv_schema_command_count; i++) {
        struct json_object *c = json_object_array_get_idx(commands, i);

        assert_string_equal(json_object_get_string(json_object_object_get(c, "name")),
                            mv_schema_commands[i].name);
        assert_true(json_object_is_type(json_object_object_get(c, "args"), json_type_array));
    }
    json_object_put(schema);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(size_parses_bytes_and_binary_units),
    cmocka_unit_test(size_accepts_zero),
    cmocka_unit_test(size_rejects_overflow),
    cmocka_unit_test(size_rejects_garbage),
    cmocka_unit_test(u64_parses_digits_only),
    cmocka_unit_test(size_formats_for_humans),
    cmocka_unit_test(reader_splits_lines_of_one_read),
    cmocka_unit_test(reader_joins_partial_lines),
    cmocka_unit_test(reader_strips_cr_and_skips_empty_lines),
    cmocka_unit_test(reader_takes_a_line_of_exactly_max_bytes),
    cmocka_unit_test(reader_rejects_oversized_line_and_resyncs),
    cmocka_unit_test(reader_rejects_a_line_one_byte_too_long),
    cmocka_unit_test(reader_grows_up_to_the_limit),
    cmocka_unit_test(message_parses_an_object),
    cmocka_unit_test(message_rejects_malformed_json),
    cmocka_unit_test(message_rejects_nul_and_numbers_out_of_range),
    cmocka_unit_test(message_rejects_non_objects),
    cmocka_unit_test(message_names_the_type_it_refuses),
    cmocka_unit_test(encoded_message_is_one_line),
    cmocka_unit_test(error_reply_carries_errno_words_and_detail),
    cmocka_unit_test(ok_reply_reads_as_success),
    cmocka_unit_test(malformed_reply_reads_as_protocol_error),
    cmocka_unit_test(arguments_are_typed),
    cmocka_unit_test(unknown_members_are_named),
    cmocka_unit_test(enum_names_round_trip),
    cmocka_unit_test(cow_modes_parse_by_name),
    cmocka_unit_test(create_takes_a_cow_mode),
    cmocka_unit_test(domain_info_tells_the_cow_mode),
    cmocka_unit_test(share_stats_tell_the_settling),
    cmocka_unit_test(call_exchanges_one_line_each_way),
    cmocka_unit_test(socket_path_prefers_option_then_environment),
    cmocka_unit_test(socket_address_rejects_long_paths),
    cmocka_unit_test(doctor_report_gives_verdict_and_advice),
    cmocka_unit_test(schema_is_well_formed),
    cmocka_unit_test(schema_check_takes_every_example),
    cmocka_unit_test(schema_check_refuses_bad_requests),
    cmocka_unit_test(protocol_versions_parse),
    cmocka_unit_test(schema_json_lists_every_command),
};

TU_MAIN(tests)
