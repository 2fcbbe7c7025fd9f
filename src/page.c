/*
 * page.c - what a page holds, for the mechanisms that look at guest memory:
 * its XXH3-64 hash (mv__page_hash), for finding equal pages (the sharing
 * scanner's content index, tmem's dedup), whether it is all zero
 * (mv__page_is_zero: zero pages go back to populate-on-demand) and whether
 * it is one word repeated (mv__page_repeats_word: tmem keeps such a page as
 * its word).  A hash is a hint, never proof: bytes are compared before two
 * pages are taken as equal.
 *
 * The hash and the zero check run on every page a sharing pass reads, so
 * they take the CPU's wide vectors.  libxxhash is built for the
 * architecture's baseline, SSE2 on x86-64: 243 ns for a page in cache and
 * 750 ns for one from memory on the machine of docs/performance.md, against
 * 89 and 370 ns with wider vectors.  So the hash is compiled here from
 * xxHash's header, for the baseline and, on x86-64, a second time for AVX2
 * (page_avx2.c, built with -mavx2); the repeated-word loop (page_loop.h)
 * likewise, with 16- and 32-byte vectors.  The first call looks at the CPU
 * and picks.  XXH3 gives the same hash on every path.
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

#define MV_VEC_BYTES 16
#define MV_VEC_TARGET
#include "page_loop.h"

bool mv__page_repeats_word_vec16(const uint8_t *page)
{
    return page_repeats_word_loop(page);
}

/* Most pages that are not one word repeated differ within their first
 * line: those cost that line, not a vector loop over a KiB. */
bool mv__page_repeats_word(const uint8_t *page)
{
    uint64_t words[8];

    memcpy(words, page, sizeof(words));
    for (unsigned i = 1; i < MV_ARRAY_SIZE(words); i++)
        if (words[i] != words[0])
            return false;
#ifdef MV_HAVE_AVX2_PAGE
    if (page_path() == PATH_AVX2)
        return mv__page_repeats_word_avx2(page);
#endif
    return mv__page_repeats_word_vec16(page);
}

/* A page whose first word is set costs that word.  Sharing reads each
 * zero page twice, from memory and then from the cache once the guest's
 * mapping is gone: with the vector loops rather than memcmp(page, page + 8),
 * a first pass over six real guests' RAM took 7-8% less CPU. */
bool mv__page_is_zero(const uint8_t *page)
{
    uint64_t first;

    memcpy(&first, page, sizeof(first));
    return first == 0 && mv__page_repeats_word(page);
}
