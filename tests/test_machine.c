/*
 * test_machine.c - the frame allocator and the budget, through the internal
 * interface: allocation alignment, splitting, merging back to one block,
 * exhaustion, the audit catching a corrupted free list, a machine that
 * cannot be made, frees that need no memory, allocations refused in a
 * signal handler, and the page hash.
 */
#include "testutil.h"
#include "internal.h"

#include <stdlib.h>

/* The reference hash: xxHash's header, compiled for this test's target. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define MACHINE (64 * MiB) /* 16384 frames */

static void blocks_are_aligned_and_disjoint(void **state)
{
    struct mv__machine m;
    uint64_t a, b, c;

    (void)state;
    assert_ok(mv__machine_init(&m, MACHINE, 1024));
    assert_ok(mv__machine_alloc(&m, 512, &a));
    assert_ok(mv__machine_alloc(&m, 1000, &b)); /* rounded to 1024, tail freed */
    assert_ok(mv__machine_alloc(&m, 1, &c));
    assert_int_equal(a % 512, 0);
    assert_int_equal(b % 1024, 0);
    assert_true(a + 512 <= b || b + 1000 <= a);
    assert_true(c < b || c >= b + 1000); /* may land in b's freed tail */
    assert_true(c < a || c >= a + 512);
    assert_int_equal(m.free_pages, 16384 - 512 - 1000 - 1);
    assert_ok(mv__machine_audit(&m));
    mv__machine_free(&m, a, 512);
    mv__machine_free(&m, b, 1000);
    mv__machine_free(&m, c, 1);
    assert_ok(mv__machine_audit(&m));
    /* Everything merged back into the one block it started as. */
    assert_int_equal(m.free[14].count, 1);
    assert_int_equal(m.free_pages, 16384);
    mv__machine_fini(&m);
}

static void exhaustion_and_fragmentation_are_reported(void **state)
{
    struct mv__machine m;
    uint64_t first[16], x;

    (void)state;
    assert_ok(mv__machine_init(&m, MACHINE, 1024));
    for (int i = 0; i < 16; i++)
        assert_ok(mv__machine_alloc(&m, 1024, &first[i]));
    assert_err(mv__machine_alloc(&m, 1, &x), -ENOSPC);
    for (int i = 0; i < 16; i += 2)
        mv__machine_free(&m, first[i], 1024);
    /* Half the frames are free, but no run of 2048 is. */
    assert_err(mv__machine_alloc(&m, 2048, &x), -ENOSPC);
    assert_non_null(strstr(mv_last_error(), "8192 frames free"));
    assert_err(mv__machine_alloc(&m, 1u << 20, &x), -E2BIG);
    assert_ok(mv__machine_audit(&m));
    mv__machine_fini(&m);
}

static void audit_catches_a_corrupt_free_list(void **state)
{
    struct mv__machine m;
    struct mv__free_list *list;
    uint64_t a;

    (void)state;
    assert_ok(mv__machine_init(&m, MACHINE, 1024));
    assert_ok(mv__machine_alloc(&m, 4096, &a));
    list = &m.free[12]; /* holds a's buddy, so it has room */
    /* Claim the allocated block is free too. */
    list->starts[list->count++] = a;
    m.free_pages += 4096;
    assert_err(mv__machine_audit(&m), -EUCLEAN);
    assert_non_null(strstr(mv_last_error(), "both free"));
    /* A misaligned block. */
    list->starts[list->count - 1] = a + 1;
    assert_err(mv__machine_audit(&m), -EUCLEAN);
    assert_non_null(strstr(mv_last_error(), "misaligned"));
    /* A counter out of step. */
    list->count--;
    assert_err(mv__machine_audit(&m), -EUCLEAN);
    m.free_pages -= 4096;
    assert_ok(mv__machine_audit(&m));
    mv__machine_fini(&m);
}

static void budget_counts_populated_frames(void **state)
{
    struct mv__machine m;

    (void)state;
    assert_ok(mv__machine_init(&m, MACHINE, 100));
    assert_true(mv__machine_charge(&m, 60));
    assert_false(mv__machine_charge(&m, 41));
    assert_true(mv__machine_charge(&m, 40));
    assert_false(mv__machine_charge(&m, 1));
    mv__machine_uncharge(&m, 50);
    assert_true(mv__machine_charge(&m, 1));
    assert_int_equal(atomic_load(&m.populated_pages), 51);
    assert_int_equal(atomic_load(&m.peak_populated_pages), 100);
    assert_ok(mv__machine_audit(&m));
    mv__machine_fini(&m);
}

static void machine_size_is_validated(void **state)
{
    struct mv__machine m;

    (void)state;
    assert_err(mv__machine_init(&m, 1 * MiB, 1), -EINVAL);
    assert_err(mv__machine_init(&m, 1ull << 50, 1), -EINVAL);
}

/* The process's mappings, as lines of /proc/self/maps. */
static unsigned mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    unsigned n = 0;
    int c;

    assert_non_null(f);
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* A machine whose memfd, view or free lists cannot be made fails with a
 * message and leaves nothing open or mapped. */
static void failed_machine_init_leaves_nothing(void **state)
{
    static const enum mv__os_op ops[] = { MV_OS_MEMFD, MV_OS_MMAP, MV_OS_ALLOC };
    struct mv__machine m;

    (void)state;
    for (size_t i = 0; i < MV_ARRAY_SIZE(ops); i++) {
        unsigned fds = tu_open_fds(), maps = mappings();

        mv__os_inject(ops[i], ENOMEM, 0, 1);
        assert_err(mv__machine_init(&m, MACHINE, 1024), -ENOMEM);
        assert_int_equal(mv__os_injection_left(ops[i]), 0);
        mv__os_inject(ops[i], 0, 0, 0);
        assert_true(mv_last_error()[0] != '\0');
        assert_int_equal(tu_open_fds(), fds);
        assert_int_equal(mappings(), maps);
    }
    assert_ok(mv__machine_init(&m, MACHINE, 1024));
    assert_non_null(m.view);
    mv__machine_fini(&m);
}

/* Freeing frames never needs memory: with every allocation failing, a
 * thousand scattered single frames go back to the free lists and merge
 * again into one block (the lists grew with realloc, and frames whose
 * entry could not be stored were lost to the allocator). */
static void frees_never_fail_for_want_of_memory(void **state)
{
    static uint64_t frames[2048];
    struct mv__machine m;

    (void)state;
    assert_ok(mv__machine_init(&m, MACHINE, 1024));
    mv__os_inject(MV_OS_ALLOC, ENOMEM, 0, UINT_MAX);
    for (size_t i = 0; i < MV_ARRAY_SIZE(frames); i++)
        assert_ok(mv__machine_alloc(&m, 1, &frames[i]));
    for (size_t i = 0; i < MV_ARRAY_SIZE(frames); i += 2)
        mv__machine_free(&m, frames[i], 1);
    assert_true(m.free[0].count >= MV_ARRAY_SIZE(frames) / 2);
    assert_int_equal(m.free_pages, m.pages - MV_ARRAY_SIZE(frames) / 2);
    for (size_t i = 1; i < MV_ARRAY_SIZE(frames); i += 2)
        mv__machine_free(&m, frames[i], 1);
    mv__os_inject(MV_OS_ALLOC, 0, 0, 0);
    assert_int_equal(m.free_pages, m.pages);
    assert_ok(mv__machine_audit(&m));
    assert_int_equal(m.free[14].count, 1); /* 16384 frames: one block again */
    mv__machine_fini(&m);
}

/* In a signal handler of the library's every allocation fails and is
 * counted (malloc there could deadlock); outside, allocations work. */
static void allocations_fail_in_a_signal_handler(void **state)
{
    uint64_t before = mv__os_allocations_in_signal();
    void *p;

    (void)state;
    mv__os_signal_context(true);
    errno = 0;
    assert_null(mv__malloc(16));
    assert_int_equal(errno, ENOMEM);
    assert_null(mv__calloc(1, 16));
    assert_null(mv__os_table_alloc(MV_PAGE_SIZE));
    mv__os_signal_context(false);
    assert_int_equal(mv__os_allocations_in_signal(), before + 3);
    p = mv__malloc(16);
    assert_non_null(p);
    free(p);
    assert_int_equal(mv__os_allocations_in_signal(), before + 3);
}

/* mv__page_hash is XXH3-64, whichever vector unit the library picked for
 * it on this CPU: the path it took must hash as the reference does. */
static void page_hash_is_xxh3_on_every_path(void **state)
{
    static uint8_t pages[16][MV_PAGE_SIZE] __attribute__((aligned(64)));
    uint64_t before;

    (void)state;
    srand(7);
    for (size_t p = 1; p < MV_ARRAY_SIZE(pages); p++)
        for (size_t i = 0; i < MV_PAGE_SIZE; i++)
            pages[p][i] = (uint8_t)(p < 8 ? rand() : (int)(i % p)); /* random, then patterned */
    for (size_t p = 0; p < MV_ARRAY_SIZE(pages); p++) {
        assert_true(mv__page_hash(pages[p]) == XXH3_64bits(pages[p], MV_PAGE_SIZE));
        assert_true(mv__page_hash(pages[p]) == mv__page_hash(pages[p]));
    }
    /* Its last byte changed, a page hashes differently. */
    before = mv__page_hash(pages[3]);
    pages[3][MV_PAGE_SIZE - 1] ^= 1;
    assert_true(mv__page_hash(pages[3]) != before);
    assert_true(mv__page_hash(pages[3]) == XXH3_64bits(pages[3], MV_PAGE_SIZE));
}

/* One repeated-word check: a page of one word repeated is, at any
 * alignment and for any word; one bit flipped anywhere makes it not. */
static void check_repeats_path(bool (*repeats_word)(const uint8_t *))
{
    static const uint64_t words[] = { 0, 0x0123456789abcdefull, ~0ull };
    static uint8_t buf[MV_PAGE_SIZE + 64] __attribute__((aligned(64)));

    for (size_t w = 0; w < MV_ARRAY_SIZE(words); w++) {
        for (size_t offset = 0; offset < 64; offset += 7) {
            uint8_t *page = buf + offset;

            memset(buf, 0x5a, sizeof(buf));
            for (size_t i = 0; i < MV_PAGE_SIZE; i += sizeof(words[w]))
                memcpy(page + i, &words[w], sizeof(words[w]));
            assert_true(repeats_word(page));
            for (size_t i = 0; i < MV_PAGE_SIZE; i++) {
                page[i] ^= (uint8_t)(1u << (i % 8));
                assert_false(repeats_word(page));
                page[i] ^= (uint8_t)(1u << (i % 8));
            }
            /* Bytes just outside the page (0x5a) are not its own. */
            assert_true(repeats_word(page));
        }
    }
}

/* mv__page_repeats_word and each path it may take; mv__page_is_zero on
 * top of it. */
static void page_checks_see_every_bit_on_every_path(void **state)
{
    static uint8_t page[MV_PAGE_SIZE] __attribute__((aligned(64)));

    (void)state;
    check_repeats_path(mv__page_repeats_word);
    check_repeats_path(mv__page_repeats_word_vec16);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        check_repeats_path(mv__page_repeats_word_avx2);
    else
        print_message("no AVX2 on this CPU: its loop is not run\n");
#endif
    memset(page, 0, sizeof(page));
    assert_true(mv__page_is_zero(page));
    for (size_t i = 0; i < MV_PAGE_SIZE; i += 511) {
        page[i] = 0x80;
        assert_false(mv__page_is_zero(page));
        page[i] = 0;
    }
    memset(page, 0x11, sizeof(page)); /* one word repeated, not zero */
    assert_false(mv__page_is_zero(page));
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(blocks_are_aligned_and_disjoint),
    cmocka_unit_test(exhaustion_and_fragmentation_are_reported),
    cmocka_unit_test(audit_catches_a_corrupt_free_list),
    cmocka_unit_test(budget_counts_populated_frames),
    cmocka_unit_test(machine_size_is_validated),
    cmocka_unit_test(failed_machine_init_leaves_nothing),
    cmocka_unit_test(frees_never_fail_for_want_of_memory),
    cmocka_unit_test(allocations_fail_in_a_signal_handler),
    cmocka_unit_test(page_hash_is_xxh3_on_every_path),
    cmocka_unit_test(page_checks_see_every_bit_on_every_path),
};

TU_MAIN(cases)
