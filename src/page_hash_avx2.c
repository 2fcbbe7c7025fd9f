/*
 * page_hash_avx2.c - mv__page_hash for CPUs with AVX2.  This file is built
 * with -mavx2 (x86-64 only), so xxHash's header takes its AVX2 loop;
 * page_hash.c says why, and calls it only where the CPU has AVX2.  Nothing
 * else belongs here: any code in this file may use AVX2 instructions.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "memvisor.h"

uint64_t mv__page_hash_avx2(const uint8_t *page);

uint64_t mv__page_hash_avx2(const uint8_t *page)
{
    return XXH3_64bits(page, MV_PAGE_SIZE);
}
