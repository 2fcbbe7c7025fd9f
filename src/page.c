/*
 * page.c - what a page holds, for the mechanisms that look at guest memory:
 * its XXH3-64 hash (mv__page_hash), for finding equal pages (the sharing
 * scanner's content index, tmem's dedup), and whether it is all zero
 * (mv__page_is_zero: zero pages go back to populate-on-demand).  A hash is
 * a hint, never proof: bytes are compared before two pages are taken as
 * equal.
 *
 * Both run on every page a sharing pass reads, so both take the CPU's wide
 * vectors.  libxxhash is built for the architecture's baseline, SSE2 on
 * x86-64: 243 ns for a page in cache and 750 ns for one from memory on the
 * machine of docs/performance.md, against 89 and 370 ns with wider vectors.
 * So the hash is compiled here from xxHash's header, for the baseline and,
 * on x86-64, a second time for AVX2 (page_avx2.c, built with -mavx2), with
 * the zero check beside it; the first call looks at the CPU and picks.
 * XXH3 gives the same hash on every path.
 *
 * State: the choice, made once and kept in an atomic (a race makes it
 * twice, the same way).
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

#include <stdatomic.h>
#include <string.h>

uint64_t mv__page_hash_avx2(const uint8_t *page);

enum { PATH_UNKNOWN, PATH_BASELINE, PATH_AVX2 };

static _Atomic int vector_path = PATH_UNKNOWN;

static int choose_path(void)
{
    int path = PATH_BASELINE;

#ifdef MV_HAVE_AVX2_PAGE
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        path = PATH_AVX2;
#endif
    atomic_store_explicit(&vector_path, path, memory_order_relaxed);
    return path;
}

static inline int page_path(void)
{
    int path = atomic_load_explicit(&vector_path, memory_order_relaxed);

    return mv_likely(path != PATH_UNKNOWN) ? path : choose_path();
}

uint64_t mv__page_hash(const uint8_t *page)
{
#ifdef MV_HAVE_AVX2_PAGE
    if (page_path() == PATH_AVX2)
        return mv__page_hash_avx2(page);
#endif
    return XXH3_64bits(page, MV_PAGE_SIZE);
}

/* 16-byte vectors, which every x86-64 and arm64 CPU has: 34 ns for a page
 * in cache where memcmp(page, page + 8) took 48 (and AVX2 21). */
typedef uint64_t mv_vec16 __attribute__((vector_size(16), aligned(1)));

bool mv__page_is_zero_vec16(const uint8_t *page)
{
    const mv_vec16 *v = (const mv_vec16 *)page;

    for (unsigned i = 0; i < MV_PAGE_SIZE / sizeof(*v); i += 64) {
        mv_vec16 a = v[i], b = v[i + 1], c = v[i + 2], d = v[i + 3];

        for (unsigned j = i + 4; j < i + 64; j += 4) {
            a |= v[j];
            b |= v[j + 1];
            c |= v[j + 2];
            d |= v[j + 3];
        }
        a |= b | c | d;
        if (a[0] | a[1])
            return false;
    }
    return true;
}

/* A page whose first word is set costs that word.  Sharing reads each
 * zero page twice, from memory and then from the cache once the guest's
 * mapping is gone: with these loops rather than memcmp(page, page + 8), a
 * first pass over six real guests' RAM took 7-8% less CPU. */
bool mv__page_is_zero(const uint8_t *page)
{
    uint64_t first;

    memcpy(&first, page, sizeof(first));
    if (first != 0)
        return false;
#ifdef MV_HAVE_AVX2_PAGE
    if (page_path() == PATH_AVX2)
        return mv__page_is_zero_avx2(page);
#endif
    return mv__page_is_zero_vec16(page);
}
