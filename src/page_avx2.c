/*
 * page_avx2.c - a page's content primitives (page.c) for CPUs with AVX2.
 * This file is built with -mavx2 (x86-64 only), so xxHash's header takes its
 * AVX2 loop and the zero check uses 32-byte loads; page.c says why, and
 * calls these only where the CPU has AVX2.  Nothing else belongs here: any
 * code in this file may use AVX2 instructions.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

#include <immintrin.h>

uint64_t mv__page_hash_avx2(const uint8_t *page);

uint64_t mv__page_hash_avx2(const uint8_t *page)
{
    return XXH3_64bits(page, MV_PAGE_SIZE);
}

/* Four accumulators of 32 bytes over each KiB, so that the loads do not
 * wait on one another; a KiB with a set bit ends the check.  The target
 * attribute holds where this file is built without -mavx2 (the fuzz
 * harness builds every source in one command). */
__attribute__((target("avx2"))) bool mv__page_is_zero_avx2(const uint8_t *page)
{
    for (unsigned kib = 0; kib < MV_PAGE_SIZE; kib += 1024) {
        const __m256i *v = (const __m256i *)(page + kib);
        __m256i a = _mm256_loadu_si256(v), b = _mm256_loadu_si256(v + 1),
                c = _mm256_loadu_si256(v + 2), d = _mm256_loadu_si256(v + 3);

        for (unsigned i = 4; i < 1024 / sizeof(__m256i); i += 4) {
            a = _mm256_or_si256(a, _mm256_loadu_si256(v + i));
            b = _mm256_or_si256(b, _mm256_loadu_si256(v + i + 1));
            c = _mm256_or_si256(c, _mm256_loadu_si256(v + i + 2));
            d = _mm256_or_si256(d, _mm256_loadu_si256(v + i + 3));
        }
        a = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
        if (!_mm256_testz_si256(a, a))
            return false;
    }
    return true;
}
