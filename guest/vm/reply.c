/*
 * reply.c - the agent's reply line: one JSON object on one line, built
 * member by member ({"ok":true,...} / {"ok":false,"error":"..."}).  Strings
 * are escaped so that no reply can ever span two lines.
 */
#include "mvguest.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put(struct mvg_reply *r, const char *s, size_t n)
{
    if (r->len + n + 2 > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (r->len + n + 2 > cap)
            cap *= 2;
        char *b = realloc(r->buf, cap);
        if (!b)
            return; /* out of memory: the reply is cut, still one line */
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, s, n);
    r->len += n;
    r->buf[r->len] = '\0';
}

static void puts_(struct mvg_reply *r, const char *s) { put(r, s, strlen(s)); }

static void put_escaped(struct mvg_reply *r, const char *s)
{
    put(r, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char tmp[8];
        if (ch == '"' || ch == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)ch;
            put(r, tmp, 2);
        } else if (ch < 0x20 || ch >= 0x7f) {
            snprintf(tmp, sizeof tmp, "\\u%04x", ch);
            puts_(r, tmp);
        } else {
            put(r, s, 1);
        }
    }
    put(r, "\"", 1);
}

void mvg_reply_begin(struct mvg_reply *r, const char *id, int ok)
{
    r->len = 0;
    put(r, "", 0);
    puts_(r, ok ? "{\"ok\":true" : "{\"ok\":false");
    r->first = 0;
    if (id)
        mvg_reply_str(r, "id", id);
}

void mvg_reply_key(struct mvg_reply *r, const char *key)
{
    if (!r->first)
        put(r, ",", 1);
    r->first = 0;
    put_escaped(r, key);
    put(r, ":", 1);
}

void mvg_reply_raw(struct mvg_reply *r, const char *s) { puts_(r, s); }

void mvg_reply_u64(struct mvg_reply *r, const char *key, uint64_t v)
{
    char tmp[32];
    mvg_reply_key(r, key);
    snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    puts_(r, tmp);
}

void mvg_reply_str(struct mvg_reply *r, const char *key, const char *v)
{
    mvg_reply_key(r, key);
    put_escaped(r, v);
}

void mvg_reply_printf(struct mvg_reply *r, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    puts_(r, tmp);
}

void mvg_reply_end(struct mvg_reply *r) { put(r, "}\n", 2); }

void mvg_reply_error(struct mvg_reply *r, const char *id, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    mvg_reply_begin(r, id, 0);
    mvg_reply_str(r, "error", tmp);
    mvg_reply_end(r);
}
