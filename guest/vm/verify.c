/*
 * verify.c - the data-verifying writer and its report (verify-check).
 * Keeps MiB of anonymous memory filled with a pattern that is a function of
 * (seed, page index, version), rewrites pages with new versions at a steady
 * pace and re-checks every page continually, counting mismatches.  It never
 * stops on its own: a test proves no guest byte was lost by asking
 * verify-check for 0 mismatches.
 */
#include "mvguest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define WORDS (MVG_PAGE / 8u)
#define TICK_MS 20u
#define CHECK_PER_TICK 256u   /* pages: at most 1 MiB checked per tick */
#define REWRITE_PER_TICK 32u  /* pages rewritten per tick (~6 MiB/s) */

static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 32;
    return x;
}

static inline uint64_t page_base(uint64_t seed, uint64_t page, uint64_t version)
{
    return mix(seed ^ mix(page * 0x9e3779b97f4a7c15ull ^ (version << 40)));
}

static inline uint64_t word_of(uint64_t base, uint64_t w)
{
    return mix(base + w * 0x9e3779b97f4a7c15ull);
}

static void fill(uint64_t *p, uint64_t seed, uint64_t page, uint64_t version)
{
    uint64_t base = page_base(seed, page, version);
    for (uint64_t w = 0; w < WORDS; w++)
        p[w] = word_of(base, w);
}

/* Returns the first bad word index, or -1. */
static long check(const uint64_t *p, uint64_t seed, uint64_t page, uint64_t version,
                  uint64_t *expected, uint64_t *found)
{
    uint64_t base = page_base(seed, page, version);
    for (uint64_t w = 0; w < WORDS; w++) {
        uint64_t e = word_of(base, w);
        uint64_t f = ((const volatile uint64_t *)p)[w];
        if (e != f) {
            *expected = e;
            *found = f;
            return (long)w;
        }
    }
    return -1;
}

void mvg_verify_main(uint64_t mib, struct mvg_counters *c)
{
    uint64_t pages = (mib << 20) / MVG_PAGE;
    uint64_t seed = mix(mvg_mono_us() ^ ((uint64_t)getpid() << 32));
    char *mem = mmap(NULL, (size_t)(pages * MVG_PAGE), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *ver = calloc((size_t)pages, sizeof *ver);
    if (mem == MAP_FAILED || !ver) {
        mvg_log("verify: cannot allocate %" PRIu64 " MiB", mib);
        _exit(1);
    }
    for (uint64_t p = 0; p < pages; p++) {
        ver[p] = 1;
        fill((uint64_t *)(mem + p * MVG_PAGE), seed, p, 1);
    }
    MVG_SET(c->pages, pages);
    MVG_SET(c->bytes, pages * MVG_PAGE);
    MVG_SET(c->ready, 1);
    mvg_log("verify: %" PRIu64 " pages filled (seed %016" PRIx64 ")", pages, seed);

    /* rewrites walk the pages with a stride coprime to their count, so
     * they spread over the whole area instead of sweeping it in order */
    uint64_t stride = 1;
    for (uint64_t s = pages / 3 + 1; s < pages; s++) {
        uint64_t a = s, b = pages;
        while (b) {
            uint64_t t = a % b;
            a = b;
            b = t;
        }
        if (a == 1) {
            stride = s;
            break;
        }
    }
    uint64_t ccur = 0, wcur = 0, sweeps = 0;
    uint64_t next = mvg_mono_us();
    for (;;) {
        for (unsigned i = 0; i < CHECK_PER_TICK && i < pages; i++) {
            uint64_t e, f;
            uint64_t *pp = (uint64_t *)(mem + ccur * MVG_PAGE);
            long w = check(pp, seed, ccur, ver[ccur], &e, &f);
            if (w >= 0) {
                if (MVG_GET(c->mismatches) == 0) {
                    MVG_SET(c->bad_page, ccur);
                    MVG_SET(c->bad_word, (uint64_t)w);
                    MVG_SET(c->expected, e);
                    MVG_SET(c->found, f);
                }
                MVG_ADD(c->mismatches, 1);
                mvg_log("verify: MISMATCH page %" PRIu64 " version %u word %ld: expected %016" PRIx64
                        " found %016" PRIx64,
                        ccur, ver[ccur], w, e, f);
                /* count the event once: start the page over */
                ver[ccur]++;
                fill(pp, seed, ccur, ver[ccur]);
            }
            MVG_ADD(c->checks, 1);
            if (++ccur == pages) {
                ccur = 0;
                sweeps++;
                MVG_SET(c->ops, sweeps);
            }
        }
        for (unsigned i = 0; i < REWRITE_PER_TICK && i < pages; i++) {
            ver[wcur]++;
            fill((uint64_t *)(mem + wcur * MVG_PAGE), seed, wcur, ver[wcur]);
            MVG_ADD(c->rewrites, 1);
            wcur = (wcur + stride) % pages;
        }
        next += TICK_MS * 1000u;
        uint64_t now = mvg_mono_us();
        if (next > now)
            mvg_sleep_ms((unsigned)((next - now) / 1000u));
        else
            next = now;
    }
}

void mvg_verify_report(struct mvg_reply *r, const char *id, const struct mvg_slot *s)
{
    const struct mvg_counters *c = &s->c;
    uint64_t mm = MVG_GET(c->mismatches);
    mvg_reply_begin(r, id, mm == 0);
    mvg_reply_u64(r, "pages", MVG_GET(c->pages));
    mvg_reply_u64(r, "checks", MVG_GET(c->checks));
    mvg_reply_u64(r, "mismatches", mm);
    mvg_reply_u64(r, "rewrites", MVG_GET(c->rewrites));
    mvg_reply_u64(r, "sweeps", MVG_GET(c->ops));
    mvg_reply_u64(r, "ready", MVG_GET(c->ready));
    if (mm) {
        char e[24], f[24];
        snprintf(e, sizeof e, "%016" PRIx64, MVG_GET(c->expected));
        snprintf(f, sizeof f, "%016" PRIx64, MVG_GET(c->found));
        mvg_reply_u64(r, "first_bad_page", MVG_GET(c->bad_page));
        mvg_reply_u64(r, "word", MVG_GET(c->bad_word));
        mvg_reply_str(r, "expected", e);
        mvg_reply_str(r, "found", f);
        mvg_reply_key(r, "error");
        mvg_reply_printf(r, "\"%" PRIu64 " mismatches, first at page %" PRIu64 " word %" PRIu64
                         ": expected %s found %s\"",
                         mm, MVG_GET(c->bad_page), MVG_GET(c->bad_word), e, f);
    }
    mvg_reply_end(r);
}
