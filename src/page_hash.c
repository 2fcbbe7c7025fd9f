/*
 * page_hash.c - a page's XXH3-64 hash (mv__page_hash), for finding equal
 * pages: the sharing scanner's content index, tmem's dedup.  A hint, never
 * proof: bytes are compared before two pages are taken as equal.
 *
 * libxxhash is built for the architecture's baseline, SSE2 on x86-64: 243 ns
 * for a page in cache and 750 ns for one from memory on the machine of
 * docs/performance.md, against 89 and 370 ns with wider vectors.  So the
 * hash is compiled here from xxHash's header, for the baseline and, on
 * x86-64, a second time for AVX2 (page_hash_avx2.c, built with -mavx2);
 * the first call looks at the CPU and picks.  XXH3 gives the same hash on
 * every path.
 *
 * State: the choice, made once and kept in an atomic (a race makes it
 * twice, the same way).
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

#include <stdatomic.h>

uint64_t mv__page_hash_avx2(const uint8_t *page);

enum { HASH_UNKNOWN, HASH_BASELINE, HASH_AVX2 };

static _Atomic int hash_path = HASH_UNKNOWN;

static int choose_path(void)
{
    int path = HASH_BASELINE;

#ifdef MV_HAVE_AVX2_PAGE_HASH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        path = HASH_AVX2;
#endif
    atomic_store_explicit(&hash_path, path, memory_order_relaxed);
    return path;
}

uint64_t mv__page_hash(const uint8_t *page)
{
    int path = atomic_load_explicit(&hash_path, memory_order_relaxed);

    if (mv_unlikely(path == HASH_UNKNOWN))
        path = choose_path();
#ifdef MV_HAVE_AVX2_PAGE_HASH
    if (path == HASH_AVX2)
        return mv__page_hash_avx2(page);
#endif
    return XXH3_64bits(page, MV_PAGE_SIZE);
}
