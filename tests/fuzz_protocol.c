/*
 * fuzz_protocol.c - a coverage-guided libFuzzer target for the two parts of
 * tools/protocol.c that read bytes from the socket: the line reader and the
 * message parser (with the typed argument accessors behind them).
 *
 * One input is a byte stream as a client would send it.  Its first byte
 * picks the size of the reads it is cut into (so partial lines, lines
 * split across reads and oversized lines all happen), the rest is fed
 * through an mv_proto_reader with a small max_line; every line it yields
 * goes to mv_proto_parse_message, and every message parsed is read back
 * through each accessor, checked against a member list, encoded, and must
 * parse again into a message encoding to the same line.  Sizes and numbers
 * are parsed from the line too.  Any sanitizer report, or an abort() on a
 * broken invariant, is a finding.
 *
 * Built by clang with -fsanitize=fuzzer,address,undefined when clang is
 * found (tests/CMakeLists.txt); not part of the normal gcc build.  Keeps no
 * state between inputs.
 */
#include "protocol.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Small enough that the fuzzer reaches it; the daemon uses 64 KiB. */
#define FUZZ_MAX_LINE 512u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool condition, const char *what)
{
    if (!condition) {
        fprintf(stderr, "fuzz_protocol: broken invariant: %s\n", what);
        abort();
    }
}

/* Every accessor over every member of a parsed message. */
static void read_arguments(struct json_object *message)
{
    static const char *const allowed[] = { "domain", "name", "maxmem", "gfn", NULL };
    char why[MV_PROTO_DETAIL_MAX];
    const char *error, *detail;

    json_object_object_foreach(message, key, value) {
        const char *text = NULL;
        uint64_t number = 0;
        struct json_object *object = NULL;

        (void)value;
        why[0] = 0;
        if (mv_proto_arg_string(message, key, true, &text, why) == 0)
            check(text != NULL, "a string argument came back NULL");
        else
            check(why[0] != 0, "a refused string argument has no reason");
        why[0] = 0;
        if (mv_proto_arg_u64(message, key, true, &number, why) < 0)
            check(why[0] != 0, "a refused number argument has no reason");
        why[0] = 0;
        if (mv_proto_arg_size(message, key, true, &number, why) < 0)
            check(why[0] != 0, "a refused size argument has no reason");
        why[0] = 0;
        if (mv_proto_arg_object(message, key, true, &object, why) == 0)
            check(json_object_is_type(object, json_type_object), "an object that is not one");
    }
    why[0] = 0;
    if (mv_proto_check_members(message, allowed, why) < 0)
        check(why[0] != 0, "a refused member has no reason");
    (void)mv_proto_reply_status(message, &error, &detail);
    check(error != NULL && detail != NULL, "a reply status without words");
}

/* Encoding a parsed message and parsing it again gives the same line. */
static void round_trip(struct json_object *message)
{
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *again = NULL;
    size_t length, length_again;
    char *line = mv_proto_encode_line(message, &length);
    char *line_again;

    check(line != NULL && length > 0 && line[length - 1] == '\n', "encoding");
    check(memchr(line, '\n', length - 1) == NULL, "an encoded message spans lines");
    line[length - 1] = 0;
    if (mv_proto_parse_message(line, length - 1, &again, why) != 0) {
        fprintf(stderr, "fuzz_protocol: '%s' does not parse again: %s\n", line, why);
        abort();
    }
    line_again = mv_proto_encode_line(again, &length_again);
    check(line_again && length_again == length && memcmp(line, line_again, length - 1) == 0,
          "a message encodes differently once parsed again");
    free(line_again);
    json_object_put(again);
    free(line);
}

static void parse_line(const char *line, size_t length)
{
    char why[MV_PROTO_DETAIL_MAX];
    struct json_object *message = NULL;
    uint64_t value;
    int rc;

    why[0] = 0;
    rc = mv_proto_parse_message(line, length, &message, why);
    if (rc == 0) {
        check(json_object_is_type(message, json_type_object), "a message that is no object");
        read_arguments(message);
        round_trip(message);
        json_object_put(message);
    } else {
        check(rc == -EINVAL || rc == -ENOMEM, "an unexpected parse error");
        check(message == NULL, "a refused message was returned");
        check(why[0] != 0 && strstr(why, "(null)") == NULL, "a refusal without its reason");
    }
    (void)mv_proto_parse_size(line, &value);
    (void)mv_proto_parse_number(line, &value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mv_proto_reader reader;
    size_t chunk, offset = 1;

    if (size == 0)
        return 0;
    chunk = (size_t)data[0] % 64 + 1;
    mv_proto_reader_init(&reader, FUZZ_MAX_LINE);
    while (offset < size) {
        size_t room, n;
        char *space = mv_proto_reader_space(&reader, &room), *line;
        size_t length;
        enum mv_proto_next next;

        check(space != NULL && room > 0, "the reader gave no room");
        n = size - offset;
        if (n > chunk)
            n = chunk;
        if (n > room)
            n = room;
        memcpy(space, data + offset, n);
        mv_proto_reader_commit(&reader, n);
        offset += n;
        while ((next = mv_proto_reader_next(&reader, &line, &length)) != MV_PROTO_NEED_MORE) {
            if (next == MV_PROTO_OVERSIZED)
                continue;
            check(length > 0 && length <= FUZZ_MAX_LINE, "a line of a bad length");
            check(line[length] == 0 && memchr(line, '\n', length) == NULL,
                  "a line not cut at its newline");
            parse_line(line, length);
        }
        check(reader.end - reader.start <= FUZZ_MAX_LINE + 1, "the reader holds too much");
    }
    mv_proto_reader_free(&reader);
    return 0;
}
