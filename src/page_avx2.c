/*
 * page_avx2.c - a page's content primitives (page.c) for CPUs with AVX2.
 * This file is built with -mavx2 (x86-64 only), so xxHash's header takes its
 * AVX2 loop, and the check for a repeated word uses 32-byte loads; page.c says why, and
 * calls these only where the CPU has AVX2.  Nothing else belongs here: any
 * code in this file may use AVX2 instructions.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

#include <immintrin.h>
#include <string.h>

uint64_t mv__page_hash_avx2(const uint8_t *page);

uint64_t mv__page_hash_avx2(const uint8_t *page)
{
    return XXH3_64bits(page, MV_PAGE_SIZE);
}

/* Each 32 bytes XORed with the first word repeated, four accumulators of
 * ORs over each KiB so that the loads do not wait on one another; a KiB
 * with a bit set ends the check.  The target attribute holds where this
 * file is built without -mavx2 (the fuzz harness builds every source in
 * one command). */
__attribute__((target("avx2"))) bool mv__page_repeats_word_avx2(const uint8_t *page)
{
    long long word;

    memcpy(&word, page, sizeof(word));
    const __m256i w = _mm256_set1_epi64x(word);

    for (unsigned kib = 0; kib < MV_PAGE_SIZE; kib += 1024) {
        const __m256i *v = (const __m256i *)(page + kib);
        __m256i a = _mm256_xor_si256(_mm256_loadu_si256(v), w),
                b = _mm256_xor_si256(_mm256_loadu_si256(v + 1), w),
                c = _mm256_xor_si256(_mm256_loadu_si256(v + 2), w),
                d = _mm256_xor_si256(_mm256_loadu_si256(v + 3), w);

        for (unsigned i = 4; i < 1024 / sizeof(__m256i); i += 4) {
            a = _mm256_or_si256(a, _mm256_xor_si256(_mm256_loadu_si256(v + i), w));
            b = _mm256_or_si256(b, _mm256_xor_si256(_mm256_loadu_si256(v + i + 1), w));
            c = _mm256_or_si256(c, _mm256_xor_si256(_mm256_loadu_si256(v + i + 2), w));
            d = _mm256_or_si256(d, _mm256_xor_si256(_mm256_loadu_si256(v + i + 3), w));
        }
        a = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
        if (!_mm256_testz_si256(a, a))
            return false;
    }
    return true;
}
