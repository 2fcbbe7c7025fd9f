/*
 * page_loop.h - the loop of mv__page_repeats_word (page.c), written once
 * for the vector width its includer defines: MV_VEC_BYTES, and
 * MV_VEC_TARGET, the target attribute that width needs.  page.c includes it
 * with 16-byte vectors, which every x86-64 and arm64 CPU has; page_avx2.c
 * with 32-byte ones, for CPUs with AVX2.
 *
 * Each vector is XORed with the first word repeated, and four accumulators
 * of ORs run over each KiB, so that the loads do not wait on one another; a
 * KiB with a bit set ends the check.  A page of one word in L2, in one run
 * on the machine of docs/performance.md: 42 ns with 32-byte vectors, 57 ns
 * with 16-byte ones, where memcmp(page, page + 8) took 75.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef uint64_t mv_vec __attribute__((vector_size(MV_VEC_BYTES), aligned(1)));

MV_VEC_TARGET static inline bool page_repeats_word_loop(const uint8_t *page)
{
    enum { PER_KIB = 1024 / sizeof(mv_vec), WORDS = sizeof(mv_vec) / sizeof(uint64_t) };
    const mv_vec *v = (const mv_vec *)page;
    mv_vec w = { 0 };
    uint64_t word;

    memcpy(&word, page, sizeof(word));
    w += word;
    for (unsigned i = 0; i < MV_PAGE_SIZE / sizeof(mv_vec); i += PER_KIB) {
        mv_vec a = v[i] ^ w, b = v[i + 1] ^ w, c = v[i + 2] ^ w, d = v[i + 3] ^ w;
        uint64_t set = 0;

        for (unsigned j = i + 4; j < i + PER_KIB; j += 4) {
            a |= v[j] ^ w;
            b |= v[j + 1] ^ w;
            c |= v[j + 2] ^ w;
            d |= v[j + 3] ^ w;
        }
        a |= b | c | d;
        for (unsigned k = 0; k < WORDS; k++)
            set |= a[k];
        if (set)
            return false;
    }
    return true;
}
