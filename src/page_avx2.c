/*
 * page_avx2.c - a page's content primitives (page.c) for CPUs with AVX2.
 * This file is built with -mavx2 (x86-64 only), so xxHash's header takes
 * its AVX2 loop, and the repeated-word loop (page_loop.h) 32-byte vectors;
 * page.c says why, and calls these only where the CPU has AVX2.  Nothing
 * else belongs here: any code in this file may use AVX2 instructions.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

uint64_t mv__page_hash_avx2(const uint8_t *page);

uint64_t mv__page_hash_avx2(const uint8_t *page)
{
    return XXH3_64bits(page, MV_PAGE_SIZE);
}

/* The target attribute holds where this file is built without -mavx2 (the
 * fuzz harness builds every source in one command). */
#define MV_VEC_BYTES 32
#define MV_VEC_TARGET __attribute__((target("avx2")))
#include "page_loop.h"

MV_VEC_TARGET bool mv__page_repeats_word_avx2(const uint8_t *page)
{
    return page_repeats_word_loop(page);
}
