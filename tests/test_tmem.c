/*
 * test_tmem.c - transcendent memory: Xen's pool semantics (ephemeral and
 * persistent, private and shared, exclusive gets, replacing puts, quotas),
 * bad input and foreign pools, the compressed store (markers, poor
 * compressions, zstd, dedup, compaction), giving memory back (the
 * relinquish API, eviction by weight, the host's budget-short hook, the
 * repayment reserve), domains destroyed with pages in pools, injected
 * failures, both stores (mapped and copied frames), random sequences of calls against a model of what each key
 * must hold, and mv_tmem_audit / mv_host_audit after each.
 */
#include "testutil.h"
#include "internal.h"
#include "tmem/tmem.h"

#include <lz4.h>
#include <pthread.h>
#include <stdatomic.h>

#define PAGE MV_PAGE_SIZE

/* Page contents that compress the way guest pages do, a function of
 * (seed, kind): 0 zero, 1 same-filled, 2 text-like, 3 incompressible. */
static void fill(uint8_t *p, uint64_t seed, int kind)
{
    static const char *words[] = { "memory", "page ", "domain", "the ", "tmem ",
                                   "kernel", "0x7f3a", "ret\n", "mov ", "\t" };
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

    switch (kind) {
    case 0:
        memset(p, 0, PAGE);
        break;
    case 1:
        for (unsigned i = 0; i < PAGE / 8; i++)
            ((uint64_t *)p)[i] = seed | 0x0101010101010101ull;
        break;
    case 2:
        for (unsigned i = 0; i < PAGE;) {
            const char *w;

            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            w = words[x % 10];
            for (; *w && i < PAGE; w++)
                p[i++] = (uint8_t)*w;
        }
        memcpy(p, &seed, sizeof(seed));
        break;
    default:
        for (unsigned i = 0; i < PAGE / 8; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            ((uint64_t *)p)[i] = x;
        }
    }
}

static void oid_of(uint64_t oid[3], uint64_t n)
{
    oid[0] = n;
    oid[1] = ~n;
    oid[2] = n * 7;
}

static void expect_page(mv_host *h, uint32_t dom, int pool, uint64_t obj, uint32_t idx,
                        uint64_t seed, int kind)
{
    uint8_t want[PAGE], got[PAGE];
    uint64_t oid[3];

    oid_of(oid, obj);
    fill(want, seed, kind);
    memset(got, 0xa5, PAGE);
    assert_int_equal(mv_tmem_get_page(h, dom, (uint32_t)pool, oid, idx, got, PAGE), 1);
    assert_memory_equal(got, want, PAGE);
}

static int put(mv_host *h, uint32_t dom, int pool, uint64_t obj, uint32_t idx,
               uint64_t seed, int kind)
{
    uint8_t p[PAGE];
    uint64_t oid[3];

    oid_of(oid, obj);
    fill(p, seed, kind);
    return mv_tmem_put_page(h, dom, (uint32_t)pool, oid, idx, p, PAGE);
}

static struct mv_tmem_stats stats(mv_host *h)
{
    struct mv_tmem_stats s;

    assert_ok(mv_tmem_stats(h, &s));
    return s;
}

static struct mv_tmem_client_info client(mv_host *h, uint32_t dom)
{
    int n = mv_tmem_client_list(h, NULL, 0);
    struct mv_tmem_client_info *c = calloc((size_t)n + 1, sizeof(*c)), found;

    assert_ok(n);
    assert_int_equal(mv_tmem_client_list(h, c, (size_t)n), n);
    for (int i = 0; i < n; i++) {
        if (c[i].domid == dom) {
            found = c[i];
            free(c);
            return found;
        }
    }
    fail_msg("domain %u has no tmem client", dom);
    return *c;
}

static void audit(mv_host *h)
{
    assert_ok(mv_tmem_audit(h));
    assert_ok(mv_host_audit(h));
}

static void persistent_pages_round_trip(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    struct mv_tmem_stats s;

    (void)state;
    assert_ok(pool);
    for (uint32_t i = 0; i < 400; i++)
        assert_int_equal(put(h, d, pool, i % 7, i, i, (int)(i % 4)), 1);
    audit(h);
    for (uint32_t i = 0; i < 400; i++)
        expect_page(h, d, pool, i % 7, i, i, (int)(i % 4));
    /* A persistent get leaves the page. */
    for (uint32_t i = 0; i < 400; i += 3)
        expect_page(h, d, pool, i % 7, i, i, (int)(i % 4));
    s = stats(h);
    assert_int_equal(s.counts.pages, 400);
    assert_int_equal(s.counts.same_filled, 200);
    assert_int_equal(s.counts.poor_compressions, 100);
    assert_true(s.counts.found_gets == s.counts.gets);
    assert_true(s.frames > 0 && s.frames < 200);
    assert_true(mv_tmem_ratio(&s.counts) > 1.5);
    audit(h);
    mv_host_destroy(h);
}

/* A page is a same-filled marker only when it is one 8-byte word repeated
 * to its last byte: a word of eight different bytes repeated is one; a page
 * that is one but for a single byte (first, within the first word, right
 * after it, last) is stored whole.  Every page comes back as it was put. */
static void same_filled_pages_are_exactly_those(void **state)
{
    (void)state;
    static const unsigned flip[] = { 0, 7, 8, 9, PAGE / 2, PAGE - 8, PAGE - 1 };
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    uint8_t page[PAGE], got[PAGE];
    uint64_t oid[3], word = 0x0807060504030201ull;
    uint32_t n = 0;

    assert_true(pool >= 0);
    oid_of(oid, 5);
    for (unsigned i = 0; i < PAGE / 8; i++)
        memcpy(page + i * 8, &word, 8);
    assert_int_equal(mv_tmem_put_page(h, d, (uint32_t)pool, oid, n++, page, PAGE), 1);
    assert_int_equal(stats(h).counts.same_filled, 1);
    for (size_t f = 0; f < sizeof(flip) / sizeof(flip[0]); f++) {
        page[flip[f]] ^= 0x40;
        assert_int_equal(mv_tmem_put_page(h, d, (uint32_t)pool, oid, n++, page, PAGE), 1);
        page[flip[f]] ^= 0x40;
    }
    assert_int_equal(stats(h).counts.same_filled, 1);
    assert_int_equal(stats(h).counts.pages, n);
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(mv_tmem_get_page(h, d, (uint32_t)pool, oid, i, got, PAGE), 1);
        if (i > 0)
            page[flip[i - 1]] ^= 0x40;
        assert_memory_equal(got, page, PAGE);
        if (i > 0)
            page[flip[i - 1]] ^= 0x40;
    }
    audit(h);
    mv_host_destroy(h);
}

static void ephemeral_get_is_exclusive_unless_shared(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    uint8_t uuid[16] = { 1, 2, 3 }, buf[PAGE];
    uint64_t oid[3];
    int priv = mv_tmem_new_pool(h, a, 0, NULL), shared;

    (void)state;
    assert_ok(priv);
    assert_int_equal(put(h, a, priv, 1, 5, 42, 2), 1);
    expect_page(h, a, priv, 1, 5, 42, 2);
    oid_of(oid, 1);
    assert_int_equal(mv_tmem_get_page(h, a, (uint32_t)priv, oid, 5, buf, PAGE), 0);

    assert_ok(mv_tmem_authorize(h, a, uuid));
    assert_ok(mv_tmem_authorize(h, b, uuid));
    shared = mv_tmem_new_pool(h, a, MV_TMEM_SHARED, uuid);
    assert_ok(shared);
    assert_int_equal(mv_tmem_new_pool(h, b, MV_TMEM_SHARED, uuid), shared);
    assert_int_equal(put(h, a, shared, 9, 1, 77, 2), 1);
    expect_page(h, b, shared, 9, 1, 77, 2);
    expect_page(h, a, shared, 9, 1, 77, 2);
    audit(h);
    mv_host_destroy(h);
}

static void duplicate_put_replaces_and_flushes_work(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    uint8_t buf[PAGE];
    uint64_t oid[3];

    (void)state;
    assert_int_equal(put(h, d, pool, 1, 1, 10, 2), 1);
    assert_int_equal(put(h, d, pool, 1, 1, 11, 3), 1);
    expect_page(h, d, pool, 1, 1, 11, 3);
    assert_int_equal(stats(h).counts.pages, 1);
    for (uint32_t i = 0; i < 50; i++)
        assert_int_equal(put(h, d, pool, 2, i, i, 2), 1);
    oid_of(oid, 1);
    assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)pool, oid, 1), 1);
    assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)pool, oid, 1), 0);
    assert_int_equal(mv_tmem_get_page(h, d, (uint32_t)pool, oid, 1, buf, PAGE), 0);
    oid_of(oid, 2);
    assert_int_equal(mv_tmem_flush_object(h, d, (uint32_t)pool, oid), 50);
    assert_int_equal(mv_tmem_flush_object(h, d, (uint32_t)pool, oid), 0);
    assert_int_equal(stats(h).counts.pages, 0);
    assert_int_equal(stats(h).used_frames, 0);
    assert_int_equal(stats(h).counts.flushes, 51);
    audit(h);
    mv_host_destroy(h);
}

static void persistent_quota_fails_at_once(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    uint8_t buf[PAGE];
    uint64_t oid[3];

    (void)state;
    assert_ok(mv_tmem_set_client(h, d, 100, 10));
    for (uint32_t i = 0; i < 10; i++)
        assert_int_equal(put(h, d, pool, 1, i, i, 2), 1);
    assert_err(put(h, d, pool, 1, 10, 10, 2), -EDQUOT);
    /* Replacing a page stays within the quota. */
    assert_int_equal(put(h, d, pool, 1, 3, 99, 2), 1);
    expect_page(h, d, pool, 1, 3, 99, 2);
    assert_ok(mv_tmem_set_client(h, d, 100, 9));
    /* A replacing put that fails leaves the key empty. */
    assert_err(put(h, d, pool, 1, 4, 100, 2), -EDQUOT);
    oid_of(oid, 1);
    assert_int_equal(mv_tmem_get_page(h, d, (uint32_t)pool, oid, 4, buf, PAGE), 0);
    assert_int_equal(client(h, d).persistent_pages, 9);
    audit(h);
    mv_host_destroy(h);
}

static void bad_input_is_refused_with_a_reason(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    int pa = mv_tmem_new_pool(h, a, MV_TMEM_PERSISTENT, NULL);
    uint8_t page[PAGE] = { 1 }, uuid[16] = { 9 };
    uint64_t oid[3] = { 1, 2, 3 };

    (void)state;
    assert_ok(pa);
    assert_err(mv_tmem_put_page(h, a, 999, oid, 0, page, PAGE), -ENOENT);
    assert_err(mv_tmem_put_page(h, a, 5000, oid, 0, page, PAGE), -ENOENT);
    assert_err(mv_tmem_put_page(h, b, (uint32_t)pa, oid, 0, page, PAGE), -EPERM);
    assert_err(mv_tmem_get_page(h, b, (uint32_t)pa, oid, 0, page, PAGE), -EPERM);
    assert_err(mv_tmem_flush_page(h, b, (uint32_t)pa, oid, 0), -EPERM);
    assert_err(mv_tmem_flush_object(h, b, (uint32_t)pa, oid), -EPERM);
    assert_err(mv_tmem_destroy_pool(h, b, (uint32_t)pa), -EPERM);
    assert_err(mv_tmem_put_page(h, a, (uint32_t)pa, oid, 0, page, PAGE - 1), -EINVAL);
    assert_err(mv_tmem_put_page(h, a, (uint32_t)pa, oid, 0, NULL, PAGE), -EINVAL);
    assert_err(mv_tmem_get_page(h, a, (uint32_t)pa, oid, 0, page, 2 * PAGE), -EINVAL);
    assert_err(mv_tmem_put_page(h, a, (uint32_t)pa, NULL, 0, page, PAGE), -EINVAL);
    assert_err(mv_tmem_new_pool(h, a, 0x100, NULL), -EINVAL);
    assert_err(mv_tmem_new_pool(h, a, MV_TMEM_SHARED, NULL), -EINVAL);
    assert_err(mv_tmem_new_pool(h, a, MV_TMEM_SHARED, uuid), -EPERM);
    assert_err(mv_tmem_new_pool(h, 777, 0, NULL), -ESRCH);
    assert_err(mv_tmem_set_client(h, a, 0, 10), -EINVAL);
    assert_err(mv_tmem_relinquish_pageblock(h, 99), -EINVAL);
    /* The host's paging pool is nobody's, not even "domain UINT32_MAX"'s. */
    {
        struct mv_tmem_pool_info info[8];
        uint64_t size;
        void *ram;
        int n, host_pools = 0;

        assert_ok(mv_domain_ram(h, a, &ram, &size));
        ((volatile uint8_t *)ram)[0] = 1;
        assert_int_equal(mv_tmem_page_out(h, a, 1), 1);
        n = mv_tmem_pool_list(h, info, 8);
        for (int i = 0; i < n; i++) {
            uint64_t hk[3] = { a, 0, 0 };

            if (info[i].owner != UINT32_MAX)
                continue;
            host_pools++;
            assert_err(mv_tmem_flush_object(h, UINT32_MAX, info[i].pool, hk), -EPERM);
            assert_err(mv_tmem_destroy_pool(h, UINT32_MAX, info[i].pool), -EPERM);
            assert_err(mv_tmem_put_page(h, UINT32_MAX, info[i].pool, hk, 0, page, PAGE),
                       -EPERM);
        }
        assert_int_equal(host_pools, 1);
    }
    assert_ok(mv_tmem_authorize(h, a, uuid));
    assert_ok(mv_tmem_authorize(h, b, uuid));
    assert_ok(mv_tmem_new_pool(h, a, MV_TMEM_SHARED, uuid));
    assert_err(mv_tmem_new_pool(h, b, MV_TMEM_SHARED | MV_TMEM_PERSISTENT, uuid), -EINVAL);
    assert_ok(mv_tmem_destroy_pool(h, a, (uint32_t)pa));
    assert_err(mv_tmem_destroy_pool(h, a, (uint32_t)pa), -ENOENT);
    audit(h);
    mv_host_destroy(h);
}

static void pages_never_reach_another_domain(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b;
    int pa = mv_tmem_new_pool(h, a, MV_TMEM_PERSISTENT | MV_TMEM_DEDUP, NULL), pb;
    uint8_t buf[PAGE];
    uint64_t oid[3];

    (void)state;
    for (uint32_t i = 0; i < 100; i++)
        assert_int_equal(put(h, a, pa, 1, i, i, 2), 1);
    assert_ok(mv_domain_destroy(h, a));
    assert_int_equal(stats(h).counts.pages, 0);
    audit(h);
    /* The freed pool id is given to the next domain: it finds nothing. */
    b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    pb = mv_tmem_new_pool(h, b, MV_TMEM_PERSISTENT | MV_TMEM_DEDUP, NULL);
    assert_int_equal(pb, pa);
    oid_of(oid, 1);
    for (uint32_t i = 0; i < 100; i++)
        assert_int_equal(mv_tmem_get_page(h, b, (uint32_t)pb, oid, i, buf, PAGE), 0);
    /* Identical content put by b is not deduplicated against anything of a. */
    assert_int_equal(put(h, b, pb, 1, 0, 0, 2), 1);
    assert_int_equal(stats(h).counts.dedup_hits, 0);
    audit(h);
    mv_host_destroy(h);
}

static void shared_pool_needs_authorisation(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    uint32_t c = tu_domain(h, "c", 64 * MiB, 64 * MiB);
    uint8_t uuid[16] = { 0xde, 0xad }, buf[PAGE];
    uint64_t oid[3];
    int pool;

    (void)state;
    assert_ok(mv_tmem_authorize(h, a, uuid));
    assert_ok(mv_tmem_authorize(h, b, uuid));
    pool = mv_tmem_new_pool(h, a, MV_TMEM_SHARED | MV_TMEM_PERSISTENT, uuid);
    assert_ok(pool);
    assert_int_equal(mv_tmem_new_pool(h, b, MV_TMEM_SHARED | MV_TMEM_PERSISTENT, uuid), pool);
    assert_err(mv_tmem_new_pool(h, c, MV_TMEM_SHARED | MV_TMEM_PERSISTENT, uuid), -EPERM);
    assert_err(put(h, c, pool, 1, 1, 1, 2), -EPERM);
    assert_int_equal(put(h, b, pool, 1, 1, 5, 2), 1);
    assert_int_equal(put(h, a, pool, 1, 2, 6, 2), 1);
    expect_page(h, a, pool, 1, 1, 5, 2);
    /* b leaves: its pages go, a's stay. */
    assert_ok(mv_tmem_destroy_pool(h, b, (uint32_t)pool));
    oid_of(oid, 1);
    assert_int_equal(mv_tmem_get_page(h, a, (uint32_t)pool, oid, 1, buf, PAGE), 0);
    expect_page(h, a, pool, 1, 2, 6, 2);
    assert_err(put(h, b, pool, 1, 1, 1, 2), -EPERM);
    /* The last member's destroy frees the pool. */
    assert_ok(mv_domain_destroy(h, a));
    assert_int_equal(stats(h).pools, 0);
    audit(h);
    mv_host_destroy(h);
}

static void zstd_and_dedup_pools(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int z = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT | MV_TMEM_ZSTD, NULL);
    int dd = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT | MV_TMEM_DEDUP, NULL);
    struct mv_tmem_pool_info info[4];
    uint64_t oid[3];

    (void)state;
    for (uint32_t i = 0; i < 100; i++) {
        assert_int_equal(put(h, d, z, 1, i, i, 2 + (i % 2)), 1);
        assert_int_equal(put(h, d, dd, 1, i, 1234, 2), 1); /* all the same */
    }
    assert_int_equal(mv_tmem_pool_list(h, info, 4), 2);
    for (int i = 0; i < 2; i++) {
        if (info[i].pool == (uint32_t)dd) {
            assert_int_equal(info[i].counts.dedup_hits, 99);
            assert_true(info[i].counts.stored_bytes < PAGE);
            /* Pages count by codec, blobs shared or not. */
            assert_int_equal(info[i].counts.lz4_pages, 100);
            assert_int_equal(info[i].counts.zstd_pages, 0);
        } else {
            assert_int_equal(info[i].counts.poor_compressions, 50);
            assert_int_equal(info[i].counts.zstd_pages, 50);
            assert_int_equal(info[i].counts.lz4_pages, 0);
        }
    }
    for (uint32_t i = 0; i < 100; i++) {
        expect_page(h, d, z, 1, i, i, 2 + (i % 2));
        expect_page(h, d, dd, 1, i, 1234, 2);
    }
    oid_of(oid, 1);
    for (uint32_t i = 0; i < 99; i++)
        assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)dd, oid, i), 1);
    expect_page(h, d, dd, 1, 99, 1234, 2);
    /* A pool id used again with the other codec: puts compress (before the
     * lock or under it) with the codec of the pool they find. */
    for (int round = 0; round < 2; round++) {
        unsigned flags = MV_TMEM_PERSISTENT | (round ? 0 : MV_TMEM_ZSTD);
        int again;

        assert_ok(mv_tmem_destroy_pool(h, d, (uint32_t)z));
        again = mv_tmem_new_pool(h, d, flags, NULL);
        assert_int_equal(again, z);
        for (uint32_t i = 0; i < 50; i++)
            assert_int_equal(put(h, d, z, 2, i, i + 77, i % 4), 1);
        for (uint32_t i = 0; i < 50; i++)
            expect_page(h, d, z, 2, i, i + 77, i % 4);
        assert_int_equal(mv_tmem_pool_list(h, info, 4), 2);
        for (int i = 0; i < 2; i++) {
            if (info[i].pool != (uint32_t)z)
                continue;
            assert_int_equal(info[i].flags, flags);
            /* Kinds 0 and 1 are markers, 3 raw: the 12 pages of kind 2
             * are compressed, by this pool's codec only. */
            assert_int_equal(info[i].counts.marker_pages, 26);
            assert_int_equal(info[i].counts.poor_compressions, 12);
            assert_int_equal(round ? info[i].counts.lz4_pages : info[i].counts.zstd_pages, 12);
            assert_int_equal(round ? info[i].counts.zstd_pages : info[i].counts.lz4_pages, 0);
        }
    }
    audit(h);
    mv_host_destroy(h);
}

static void compaction_frees_frames_and_keeps_pages(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    uint64_t oid[3], before;

    (void)state;
    for (uint32_t i = 0; i < 2000; i++)
        assert_int_equal(put(h, d, pool, 1, i, i, 2), 1);
    oid_of(oid, 1);
    for (uint32_t i = 0; i < 2000; i++)
        if (i % 4)
            assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)pool, oid, i), 1);
    before = stats(h).used_frames;
    assert_true(mv_tmem_compact(h) > 0);
    assert_true(stats(h).used_frames < before / 2);
    assert_true(stats(h).compact_moves > 0);
    for (uint32_t i = 0; i < 2000; i += 4)
        expect_page(h, d, pool, 1, i, i, 2);
    assert_true(mv_tmem_relinquish_pages(h, 1000) > 0);
    assert_int_equal(stats(h).spare_frames, 0);
    audit(h);
    mv_host_destroy(h);
}

/* Frames emptied by flushes are kept spare up to TM_SPARE_MAX; past that
 * they are scrubbed and given back in batches, never kept for good. */
static void emptied_frames_go_back_in_batches(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    struct mv_host_stats hs0, hs1;
    struct mv_tmem_stats s;
    uint64_t oid[3], most = 0;

    (void)state;
    assert_ok(mv_host_stats(h, &hs0));
    for (uint32_t i = 0; i < 3000; i++)
        assert_int_equal(put(h, d, pool, 1, i, i, 2), 1);
    assert_true(stats(h).used_frames > 500);
    oid_of(oid, 1);
    for (uint32_t i = 0; i < 3000; i++) {
        assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)pool, oid, i), 1);
        most = MV_MAX(most, stats(h).spare_frames);
    }
    s = stats(h);
    assert_int_equal(s.used_frames, 0);
    assert_true(most < TM_SPARE_MAX + TM_SPARE_SLACK);
    assert_true(s.spare_frames < TM_SPARE_MAX + TM_SPARE_SLACK);
    /* What tmem keeps is what the budget is charged for, no more. */
    assert_ok(mv_host_stats(h, &hs1));
    assert_int_equal(hs1.populated_pages - hs0.populated_pages, s.spare_frames);
    audit(h);
    assert_true(mv_tmem_relinquish_pages(h, UINT64_MAX) == (int64_t)s.spare_frames);
    assert_ok(mv_host_stats(h, &hs1));
    assert_int_equal(hs1.populated_pages, hs0.populated_pages);
    audit(h);
    mv_host_destroy(h);
}

static void relinquish_api_gives_back_ephemeral_only(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int eph = mv_tmem_new_pool(h, d, 0, NULL);
    int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    struct mv_host_stats hs0, hs1;
    struct mv_tmem_stats s;

    (void)state;
    for (uint32_t i = 0; i < 600; i++) {
        assert_int_equal(put(h, d, eph, 1, i, i, 3), 1);
        assert_int_equal(put(h, d, per, 1, i, i + 1000000, 3), 1);
    }
    assert_ok(mv_host_stats(h, &hs0));
    assert_true(mv_tmem_evict_npages(h, 100) >= 100);
    s = stats(h);
    assert_true(s.spare_frames >= 100);
    assert_true(s.evictions >= 100);
    assert_int_equal(mv_tmem_relinquish_pages(h, 50), 50);
    assert_ok(mv_host_stats(h, &hs1));
    assert_int_equal(hs0.populated_pages - hs1.populated_pages, 50);
    assert_int_equal(mv_tmem_relinquish_page(h), 1);
    assert_ok(mv_tmem_relinquish_pageblock(h, 4));
    /* Everything ephemeral can go; the persistent pages stay. */
    while (mv_tmem_relinquish_page(h) == 1)
        ;
    s = stats(h);
    assert_int_equal(client(h, d).ephemeral_pages, 0);
    assert_int_equal(client(h, d).persistent_pages, 600);
    assert_int_equal(s.spare_frames, 0);
    for (uint32_t i = 0; i < 600; i++)
        expect_page(h, d, per, 1, i, i + 1000000, 3);
    audit(h);
    mv_host_destroy(h);
}

/* freeable_frames is what evicting every ephemeral page gives back: the
 * spare frames and those of zspages holding no persistent page, not those
 * a persistent page shares with ephemeral ones. */
static void freeable_frames_are_what_eviction_gives_back(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int eph = mv_tmem_new_pool(h, d, 0, NULL);
    int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    struct mv_tmem_stats s0, s1;

    (void)state;
    /* Text-like pages of many sizes, one persistent in eight: some
     * zspages hold both kinds, most only ephemeral ones. */
    for (uint32_t i = 0; i < 2000; i++)
        assert_int_equal(put(h, d, i % 8 ? eph : per, 1, i, i, i % 16 ? 2 : 3), 1);
    assert_true(mv_tmem_evict_npages(h, 3) >= 3);
    s0 = stats(h);
    assert_true(s0.spare_frames > 0);
    assert_true(s0.freeable_frames > s0.spare_frames && s0.freeable_frames < s0.frames);
    assert_true(mv_tmem_evict_npages(h, UINT64_MAX) >= 0);
    assert_true(mv_tmem_relinquish_pages(h, UINT64_MAX) >= 0);
    s1 = stats(h);
    assert_int_equal(client(h, d).ephemeral_pages, 0);
    assert_int_equal(s0.frames - s1.frames, s0.freeable_frames);
    assert_int_equal(s1.freeable_frames, 0);
    for (uint32_t i = 0; i < 2000; i += 8)
        expect_page(h, d, per, 1, i, i, i % 16 ? 2 : 3);
    audit(h);
    mv_host_destroy(h);
}

static void eviction_takes_from_the_domain_over_its_share(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    int pa = mv_tmem_new_pool(h, a, 0, NULL), pb = mv_tmem_new_pool(h, b, 0, NULL);

    (void)state;
    assert_ok(mv_tmem_set_client(h, a, 100, 0));
    assert_ok(mv_tmem_set_client(h, b, 300, 0));
    for (uint32_t i = 0; i < 400; i++) {
        assert_int_equal(put(h, a, pa, 1, i, i, 3), 1);
        assert_int_equal(put(h, b, pb, 1, i, i, 3), 1);
    }
    /* a holds 400 at weight 100, b 400 at weight 300: a loses until it
     * is down to a third of b. */
    assert_true(mv_tmem_evict_npages(h, 200) >= 200);
    assert_int_equal(client(h, b).ephemeral_pages, 400);
    assert_int_equal(client(h, a).counts.evictions, 400 - client(h, a).ephemeral_pages);
    assert_ok(mv_tmem_evict_npages(h, 300));
    assert_true(client(h, b).ephemeral_pages < 400);
    assert_true(client(h, a).ephemeral_pages * 3 <= client(h, b).ephemeral_pages + 3);
    /* The oldest pages went first: a's newest are still there. */
    if (client(h, a).ephemeral_pages)
        expect_page(h, a, pa, 1, 399, 399, 3);
    audit(h);
    mv_host_destroy(h);
}

/* Guest RAM touched by this thread: populates through the fault service. */
static void touch(mv_host *h, uint32_t d, uint64_t pages, uint8_t v)
{
    void *ram;
    uint64_t size;

    assert_ok(mv_domain_ram(h, d, &ram, &size));
    for (uint64_t i = 0; i < pages; i++)
        ((volatile uint8_t *)ram)[i * PAGE + 1] = v;
}

/* 1,000 persistent pages into `per`, then `n` ephemeral ones into `eph`,
 * each stored or dropped: how many ephemeral ones were stored. */
static uint32_t fill_budget(mv_host *h, uint32_t dom, int per, int eph, uint32_t n)
{
    uint32_t stored = 0;
    int rc;

    for (uint32_t i = 0; i < 1000; i++)
        assert_int_equal(put(h, dom, per, 1, i, i, 3), 1);
    for (uint32_t i = 0; i < n; i++) {
        rc = put(h, dom, eph, 1, i, i, 3);
        assert_true(rc == 0 || rc == 1);
        stored += (uint32_t)rc;
    }
    return stored;
}

static void budget_short_takes_tmem_memory_first(void **state)
{
    mv_host *h = tu_host_with(16 * MiB, MV_FAULT_SPIN_DEFAULT);
    uint32_t a = tu_domain_with(h, "a", 16 * MiB, 16 * MiB, 1, MV_POD_CRASH, 0);
    int eph = mv_tmem_new_pool(h, a, 0, NULL);
    int per = mv_tmem_new_pool(h, a, MV_TMEM_PERSISTENT, NULL);
    struct mv_domain_config c;
    struct mv_tmem_stats s;
    uint32_t stored, b;

    (void)state;
    /* The persistent pool takes a quarter of the budget; ephemeral puts
     * fill the rest and are dropped (0), not failed, beyond it. */
    stored = fill_budget(h, a, per, eph, 6000);
    assert_true(stored > 2000);
    /* A domain populating its RAM gets the budget back from tmem. */
    tu_domain_config(&c, "b", 8 * MiB, 8 * MiB);
    c.pod_policy = MV_POD_CRASH;
    c.pod_block_populate = 0;
    assert_ok(mv_domain_create(h, &c, &b));
    touch(h, b, 2048, 7);
    assert_int_equal(tu_info(h, b).state, MV_DOMAIN_RUNNING);
    s = stats(h);
    assert_true(s.budget_short_calls > 0);
    assert_true(s.budget_short_freed > 0);
    assert_true(s.evictions > 0);
    for (uint32_t i = 0; i < 1000; i++)
        expect_page(h, a, per, 1, i, i, 3);
    audit(h);
    mv_host_destroy(h);
}

/* Frames the host budget has room for. */
static uint64_t budget_room(mv_host *h)
{
    struct mv_host_stats hs;

    assert_ok(mv_host_stats(h, &hs));
    return hs.budget_pages > hs.populated_pages ? hs.budget_pages - hs.populated_pages : 0;
}

/* relinquish_pageblock makes room for a block in the budget, not only in
 * the frame space: ephemeral pages go, persistent ones stay, and a block
 * they leave no room for is refused before any page is evicted. */
static void relinquish_pageblock_makes_room_in_the_budget(void **state)
{
    mv_host *h = tu_host_with(16 * MiB, MV_FAULT_SPIN_DEFAULT);
    uint32_t a = tu_domain_with(h, "a", 16 * MiB, 16 * MiB, 1, MV_POD_CRASH, 0), b;
    int eph = mv_tmem_new_pool(h, a, 0, NULL);
    int per = mv_tmem_new_pool(h, a, MV_TMEM_PERSISTENT, NULL);
    struct mv_domain_config c;
    uint64_t kept, evictions;

    (void)state;
    fill_budget(h, a, per, eph, 8000);
    assert_true(budget_room(h) < 64);
    kept = client(h, a).ephemeral_pages;
    assert_ok(mv_tmem_relinquish_pageblock(h, 6));
    assert_true(budget_room(h) >= 64);
    assert_true(client(h, a).ephemeral_pages < kept);
    assert_true(client(h, a).counts.evictions > 0);
    audit(h);
    /* The room is the budget's: a domain populates 64 pages in it without
     * tmem being asked for memory again. */
    tu_domain_config(&c, "b", 256 * 1024, 256 * 1024);
    c.pod_policy = MV_POD_CRASH;
    c.pod_block_populate = 0;
    assert_ok(mv_domain_create(h, &c, &b));
    kept = stats(h).budget_short_calls;
    touch(h, b, 64, 5);
    assert_int_equal(tu_info(h, b).state, MV_DOMAIN_RUNNING);
    assert_int_equal(stats(h).budget_short_calls, kept);
    /* Half the budget: within what evicting can make, also when every
     * hole punch fails (the frames are zeroed by hand and still given
     * back). */
    mv__os_inject(MV_OS_PUNCH, EIO, 0, 100000);
    assert_ok(mv_tmem_relinquish_pageblock(h, 11));
    assert_true(mv__os_injection_left(MV_OS_PUNCH) < 100000); /* punches failed */
    mv__os_inject(MV_OS_PUNCH, 0, 0, 0);
    assert_true(budget_room(h) >= 2048);
    audit(h);
    kept = client(h, a).ephemeral_pages;
    assert_true(kept > 0);
    /* The whole budget cannot be made, the persistent pages holding a
     * quarter of it: the call says so at once and evicts nothing. */
    evictions = stats(h).evictions;
    assert_err(mv_tmem_relinquish_pageblock(h, 12), -ENOMEM);
    assert_non_null(strstr(mv_last_error(), "nothing was evicted"));
    assert_int_equal(client(h, a).ephemeral_pages, kept);
    assert_int_equal(stats(h).evictions, evictions);
    for (uint32_t i = 0; i < 1000; i++)
        expect_page(h, a, per, 1, i, i, 3);
    audit(h);
    mv_host_destroy(h);
}

static void repayment_comes_from_the_domains_own_collateral(void **state)
{
    mv_host *h = tu_host_with(16 * MiB, MV_FAULT_SPIN_DEFAULT);
    struct mv_domain_config c;
    uint32_t a, b;
    int pa, pb;

    (void)state;
    tu_domain_config(&c, "a", 8 * MiB, 8 * MiB);
    c.pod_policy = MV_POD_CRASH;
    c.pod_block_populate = 0;
    assert_ok(mv_domain_create(h, &c, &a));
    snprintf(c.name, sizeof(c.name), "b");
    assert_ok(mv_domain_create(h, &c, &b));
    pa = mv_tmem_new_pool(h, a, 0, NULL);
    pb = mv_tmem_new_pool(h, b, 0, NULL);
    /* b is far over its share, but a pledged its own pages. */
    for (uint32_t i = 0; i < 1500; i++)
        assert_int_equal(put(h, a, pa, 1, i, i, 3), 1);
    for (uint32_t i = 0; i < 2500; i++)
        assert_true(put(h, b, pb, 1, i, i, 3) >= 0);
    assert_ok(mv_tmem_set_collateral(h, a, 1500));
    assert_int_equal(client(h, a).collateral_pages, 1500);
    touch(h, a, 1500, 3);
    assert_int_equal(tu_info(h, a).state, MV_DOMAIN_RUNNING);
    assert_true(client(h, a).repaid_pages > 0);
    assert_true(client(h, a).counts.evictions > 0);
    assert_int_equal(client(h, b).repaid_pages, 0);
    assert_int_equal(client(h, b).counts.evictions, 0);
    assert_true(stats(h).repaid == client(h, a).repaid_pages);
    audit(h);
    mv_host_destroy(h);
}

struct race {
    mv_host *h;
    uint32_t d;
    int pool;
    atomic_bool stop;
    atomic_int bad;
    atomic_int found;           /* gets that found their page */
    atomic_int gone;            /* gets that found the pool destroyed */
};

static void *getter(void *arg)
{
    struct race *r = arg;
    uint8_t buf[PAGE];
    uint64_t oid[3];

    oid_of(oid, 1);
    for (uint32_t i = 0; !atomic_load(&r->stop); i = (i + 1) % 500) {
        int rc = mv_tmem_get_page(r->h, r->d, (uint32_t)r->pool, oid, i, buf, PAGE);

        if (rc == 1) {
            uint8_t want[PAGE];

            fill(want, i, 2);
            if (memcmp(want, buf, PAGE))
                atomic_fetch_add(&r->bad, 1);
            atomic_fetch_add(&r->found, 1);
        } else if (rc == -ENOENT) {
            atomic_fetch_add(&r->gone, 1);
        } else if (rc != 0) {
            atomic_fetch_add(&r->bad, 1);
        }
    }
    return NULL;
}

static void destroy_pool_while_gets_are_in_flight(void **state)
{
    mv_host *h = tu_host();
    struct race r = { .h = h };
    pthread_t th[2];

    (void)state;
    r.d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    for (int round = 0; round < 20; round++) {
        r.pool = mv_tmem_new_pool(h, r.d, MV_TMEM_PERSISTENT, NULL);
        assert_ok(r.pool);
        for (uint32_t i = 0; i < 500; i++)
            assert_int_equal(put(h, r.d, r.pool, 1, i, i, 2), 1);
        atomic_store(&r.stop, false);
        atomic_store(&r.found, 0);
        atomic_store(&r.gone, 0);
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_create(&th[i], NULL, getter, &r), 0);
        /* Destroyed while both keep getting: after gets found pages, and
         * until gets find the pool gone. */
        tu_wait_until(atomic_load(&r.found) >= 200);
        assert_ok(mv_tmem_destroy_pool(h, r.d, (uint32_t)r.pool));
        tu_wait_until(atomic_load(&r.gone) >= 2);
        atomic_store(&r.stop, true);
        for (int i = 0; i < 2; i++)
            pthread_join(th[i], NULL);
    }
    assert_int_equal(atomic_load(&r.bad), 0);
    assert_int_equal(stats(h).counts.pages, 0);
    audit(h);
    mv_host_destroy(h);
}

static void domain_destroyed_with_pages_in_pools(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    uint8_t uuid[16] = { 7 };
    int pa = mv_tmem_new_pool(h, a, 0, NULL), ps;
    struct mv_host_stats hs;

    (void)state;
    assert_ok(mv_tmem_authorize(h, a, uuid));
    assert_ok(mv_tmem_authorize(h, b, uuid));
    ps = mv_tmem_new_pool(h, a, MV_TMEM_SHARED | MV_TMEM_PERSISTENT, uuid);
    assert_int_equal(mv_tmem_new_pool(h, b, MV_TMEM_SHARED | MV_TMEM_PERSISTENT, uuid), ps);
    for (uint32_t i = 0; i < 300; i++) {
        assert_int_equal(put(h, a, pa, 1, i, i, 2), 1);
        assert_int_equal(put(h, a, ps, 1, i, i, 3), 1);
        assert_int_equal(put(h, b, ps, 2, i, i, 2), 1);
    }
    assert_ok(mv_domain_destroy(h, a));
    assert_int_equal(stats(h).counts.pages, 300);
    expect_page(h, b, ps, 2, 7, 7, 2);
    audit(h);
    assert_ok(mv_domain_destroy(h, b));
    assert_int_equal(stats(h).counts.pages, 0);
    assert_int_equal(stats(h).pools, 0);
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    assert_int_equal(stats(h).frames, 0);
    assert_int_equal(stats(h).chunks, 0);
    assert_ok(mv_host_stats(h, &hs));
    assert_int_equal(hs.populated_pages, 0);
    audit(h);
    mv_host_destroy(h);
}

/* A host whose tmem keeps its frames the way `store` says, whatever the
 * environment asks. */
static mv_host *host_with_store(enum mv_tmem_store store)
{
    struct mv_host_config c;
    mv_host *h = NULL;

    tu_host_config(&c, 4 * GiB);
    c.tmem_store = store;
    assert_ok(mv_host_create(&c, &h));
    return h;
}

static void injected_failures_lose_and_leak_nothing(void **state)
{
    /* What fails here is the mapped store's own. */
    mv_host *h = host_with_store(MV_TMEM_STORE_MAPPED);
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    int eph = mv_tmem_new_pool(h, d, 0, NULL);
    struct mv_host_stats hs;

    (void)state;
    /* No chunk can be mapped: a persistent put fails at once, an
     * ephemeral one is dropped. */
    mv__os_inject(MV_OS_MMAP, ENOMEM, 0, 2);
    assert_err(put(h, d, per, 1, 0, 0, 2), -ENOMEM);
    assert_int_equal(put(h, d, eph, 1, 0, 0, 2), 0);
    mv__os_inject(MV_OS_MMAP, 0, 0, 0);
    assert_int_equal(stats(h).chunks, 0);
    audit(h);
    /* Filling new zspages' frames in one write fails: each frame is
     * populated by the first store into it instead, and nothing is lost. */
    mv__os_inject(MV_OS_WRITE, EIO, 0, 3);
    for (uint32_t i = 0; i < 300; i++)
        assert_int_equal(put(h, d, per, 2, i, i, 2), 1);
    assert_int_equal(mv__os_injected(MV_OS_WRITE), 0); /* all three failed a write */
    for (uint32_t i = 0; i < 300; i++)
        expect_page(h, d, per, 2, i, i, 2);
    audit(h);
    /* A page stored raw goes to its new frame by one write; when that
     * fails, it is stored through the mapping instead. */
    mv__os_inject(MV_OS_WRITE, EIO, 0, 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(put(h, d, per, 3, i, i, 3), 1);
    assert_int_equal(mv__os_injected(MV_OS_WRITE), 0);
    for (uint32_t i = 0; i < 3; i++)
        expect_page(h, d, per, 3, i, i, 3);
    audit(h);
    for (uint32_t i = 0; i < 300; i++)
        assert_int_equal(put(h, d, per, 1, i, i, 3), 1);
    /* Scrubbing fails: the frames are zeroed by hand and still given back. */
    mv__os_inject(MV_OS_PUNCH, EIO, 0, 1000);
    for (uint32_t i = 0; i < 300; i++) {
        uint64_t oid[3];

        oid_of(oid, 1);
        if (i % 2)
            assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)per, oid, i), 1);
    }
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    mv__os_inject(MV_OS_PUNCH, 0, 0, 0);
    for (uint32_t i = 0; i < 300; i += 2)
        expect_page(h, d, per, 1, i, i, 3);
    audit(h);
    assert_ok(mv_domain_destroy(h, d));
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    assert_ok(mv_host_stats(h, &hs));
    assert_int_equal(hs.populated_pages, 0);
    audit(h);
    mv_host_destroy(h);
}

/* Pages of one size class: the same text but for their first 8 bytes,
 * so that lz4 makes them all the same length. */
static int put_same_class(mv_host *h, uint32_t dom, int pool, uint32_t idx)
{
    uint8_t p[PAGE];
    uint64_t oid[3], n = idx;

    oid_of(oid, 9);
    fill(p, 7, 2);
    memcpy(p, &n, sizeof(n));
    return mv_tmem_put_page(h, dom, (uint32_t)pool, oid, idx, p, PAGE);
}

static void expect_same_class(mv_host *h, uint32_t dom, int pool, uint32_t idx)
{
    uint8_t want[PAGE], got[PAGE];
    uint64_t oid[3], n = idx;

    oid_of(oid, 9);
    fill(want, 7, 2);
    memcpy(want, &n, sizeof(n));
    assert_int_equal(mv_tmem_get_page(h, dom, (uint32_t)pool, oid, idx, got, PAGE), 1);
    assert_memory_equal(got, want, PAGE);
}

static void both_stores_keep_every_page_and_say_which(void **state)
{
    static const enum mv_tmem_store stores[] = { MV_TMEM_STORE_MAPPED, MV_TMEM_STORE_COPIED,
                                                 MV_TMEM_STORE_AUTO };
    struct mv_host_config c;
    mv_host *bad = NULL;

    (void)state;
    tu_host_config(&c, 1 * GiB);
    c.tmem_store = (enum mv_tmem_store)3;
    assert_err(mv_host_create(&c, &bad), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "tmem_store"));
    assert_string_equal(mv_tmem_store_name(MV_TMEM_STORE_COPIED), "copied");
    for (size_t m = 0; m < sizeof(stores) / sizeof(stores[0]); m++) {
        mv_host *h = host_with_store(stores[m]);
        uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
        int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
        int dz = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT | MV_TMEM_ZSTD | MV_TMEM_DEDUP,
                                  NULL);
        struct mv_tmem_stats st = stats(h);
        uint64_t oid[3];

        assert_true(per >= 0 && dz >= 0);
        if (stores[m] == MV_TMEM_STORE_AUTO) {
            /* It measured both and chose one. */
            assert_true(st.store == MV_TMEM_STORE_MAPPED || st.store == MV_TMEM_STORE_COPIED);
            assert_true(st.store_mapped_ns > 0 && st.store_copied_ns > 0);
            assert_int_equal(st.store == MV_TMEM_STORE_COPIED,
                             st.store_mapped_ns * 100 > st.store_copied_ns *
                                                        MV_TMEM_STORE_COPY_PCT);
        } else {
            assert_int_equal(st.store, stores[m]);
            assert_int_equal(st.store_mapped_ns, 0);
            assert_int_equal(st.store_copied_ns, 0);
        }
        /* Every kind of page, many zspages of each class, and duplicates. */
        for (uint32_t i = 0; i < 600; i++) {
            assert_int_equal(put(h, d, per, 1, i, i, (int)(i % 4)), 1);
            assert_int_equal(put(h, d, dz, 2, i, i % 150, (int)(i % 4)), 1);
        }
        assert_true(stats(h).counts.dedup_hits > 0);
        for (uint32_t i = 0; i < 600; i++) {
            expect_page(h, d, per, 1, i, i, (int)(i % 4));
            expect_page(h, d, dz, 2, i, i % 150, (int)(i % 4));
        }
        /* Holes everywhere, then compaction moves what is left. */
        oid_of(oid, 1);
        for (uint32_t i = 0; i < 600; i++)
            if (i % 3)
                assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)per, oid, i), 1);
        assert_true(mv_tmem_compact(h) > 0);
        assert_true(stats(h).compact_moves > 0);
        audit(h);
        for (uint32_t i = 0; i < 600; i += 3)
            expect_page(h, d, per, 1, i, i, (int)(i % 4));
        for (uint32_t i = 0; i < 600; i++)
            expect_page(h, d, dz, 2, i, i % 150, (int)(i % 4));
        audit(h);
        assert_ok(mv_domain_destroy(h, d));
        assert_int_equal(stats(h).used_frames, 0);
        audit(h);
        mv_host_destroy(h);
    }
}

static void copied_store_failures_lose_nothing(void **state)
{
    mv_host *h = host_with_store(MV_TMEM_STORE_COPIED);
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    int dd = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT | MV_TMEM_DEDUP, NULL);
    uint8_t page[PAGE];
    uint64_t oid[3];

    (void)state;
    assert_true(per >= 0 && dd >= 0);
    /* Raw pages take a zspage each: the second put writes the first's
     * (staged) to its frame.  That write fails: the put fails, the first
     * page is still there, and the next put writes it. */
    assert_int_equal(put(h, d, per, 1, 0, 0, 3), 1);
    mv__os_inject(MV_OS_WRITE, EIO, 0, 1);
    assert_err(put(h, d, per, 1, 1, 1, 3), -EIO);
    assert_int_equal(mv__os_injected(MV_OS_WRITE), 0);
    expect_page(h, d, per, 1, 0, 0, 3);
    audit(h);
    assert_int_equal(put(h, d, per, 1, 1, 1, 3), 1);
    assert_int_equal(put(h, d, per, 1, 2, 2, 3), 1);
    for (uint32_t i = 0; i < 3; i++)
        expect_page(h, d, per, 1, i, i, 3);
    /* A slot freed in a zspage written out takes the next put of its
     * class, by one write of the slot; that write fails. */
    for (uint32_t i = 0; i < 64; i++)
        assert_int_equal(put_same_class(h, d, per, i), 1);
    oid_of(oid, 9);
    assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)per, oid, 0), 1);
    mv__os_inject(MV_OS_WRITE, EIO, 0, 1);
    assert_err(put_same_class(h, d, per, 64), -EIO);
    assert_int_equal(mv__os_injected(MV_OS_WRITE), 0);
    for (uint32_t i = 1; i < 64; i++)
        expect_same_class(h, d, per, i);
    audit(h);
    assert_int_equal(put_same_class(h, d, per, 64), 1);
    expect_same_class(h, d, per, 64);
    /* A get whose read fails fails, and the page stays (page 40: of a
     * zspage no read-ahead holds, the last gets having read the first
     * one's; a private ephemeral pool's, whose get would remove it, in
     * copied_store_reads_ahead_for_gets_in_order). */
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    oid_of(oid, 9);
    assert_err(mv_tmem_get_page(h, d, (uint32_t)per, oid, 40, page, PAGE), -EIO);
    assert_int_equal(mv__os_injected(MV_OS_READ), 0);
    expect_same_class(h, d, per, 40);
    audit(h);
    /* A duplicate whose stored twin cannot be read for the comparison:
     * the put fails, the twin stays. */
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(put(h, d, dd, 3, i, i, 3), 1);
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    assert_err(put(h, d, dd, 4, 0, 0, 3), -EIO);
    mv__os_inject(MV_OS_READ, 0, 0, 0);
    assert_int_equal(put(h, d, dd, 4, 0, 0, 3), 1);
    assert_int_equal(stats(h).counts.dedup_hits, 1);
    expect_page(h, d, dd, 3, 0, 0, 3);
    expect_page(h, d, dd, 4, 0, 0, 3);
    audit(h);
    /* Compaction that cannot read a slot stops there; nothing moves twice
     * or goes missing, and it finishes once reads work. */
    oid_of(oid, 9);
    for (uint32_t i = 2; i < 64; i += 2)
        assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)per, oid, i), 1);
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    assert_true(mv_tmem_compact(h) >= 0);
    assert_int_equal(mv__os_injected(MV_OS_READ), 0);
    audit(h);
    assert_true(mv_tmem_compact(h) > 0);
    for (uint32_t i = 1; i < 64; i += 2)
        expect_same_class(h, d, per, i);
    expect_same_class(h, d, per, 64);
    for (uint32_t i = 0; i < 3; i++)
        expect_page(h, d, per, 1, i, i, 3);
    audit(h);
    assert_ok(mv_domain_destroy(h, d));
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    audit(h);
    mv_host_destroy(h);
}

/* A page whose first `n` bytes are noise and the rest zeros: lz4 makes
 * it a little over n bytes long. */
static void fill_noise_head(uint8_t *p, unsigned n)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;

    memset(p, 0, PAGE);
    for (unsigned i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

/* Size classes are 16 bytes apart, and the classes whose zspages come out
 * the same (frames and slots) are one: the largest of them takes their
 * pages, so that they fill one part-filled zspage instead of one each.
 * Two pages of two such classes share a zspage, and come back whole. */
static void classes_of_one_shape_share_a_zspage(void **state)
{
    (void)state;
    mv_host *h = host_with_store(MV_TMEM_STORE_COPIED);
    struct mv__tmem *t = tm_of(h);
    uint8_t page[2][PAGE], got[PAGE], lz[PAGE];
    unsigned n[2] = {0, 0}, cls[2] = {0, 0}, merged = 0;
    uint64_t oid[3];

    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        unsigned home = t->class_home[c];

        assert_true(home >= c);
        assert_int_equal(t->class_home[home], home);
        assert_int_equal(t->cls[home].frames, t->cls[c].frames);
        assert_int_equal(t->cls[home].slots, t->cls[c].slots);
        if (home == c && c + 1 < TM_CLASS_COUNT) /* merged as far as it goes */
            assert_false(t->cls[c].frames == t->cls[c + 1].frames &&
                         t->cls[c].slots == t->cls[c + 1].slots);
        merged += home != c;
    }
    assert_true(merged > 0);

    /* Two pages whose lengths fall in two classes of one shape. */
    for (unsigned len = 1024; len < 3 * PAGE / 4 && !n[1]; len++) {
        int z;

        fill_noise_head(page[0], len);
        z = LZ4_compress_default((const char *)page[0], (char *)lz, PAGE, PAGE);
        assert_true(z > 0);
        unsigned c = (unsigned)(z - 1) >> TM_CLASS_SHIFT;
        if (!n[0] && t->class_home[c] != c) {
            n[0] = len;
            cls[0] = c;
        } else if (n[0] && c != cls[0] && t->class_home[c] == t->class_home[cls[0]]) {
            n[1] = len;
            cls[1] = c;
        }
    }
    assert_true(n[1] > 0);
    uint32_t d = tu_domain(h, "d", 64 * MiB, 64 * MiB);
    int pool = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    assert_true(pool >= 0);
    oid_of(oid, 3);
    for (int i = 0; i < 2; i++) {
        fill_noise_head(page[i], n[i]);
        assert_int_equal(mv_tmem_put_page(h, d, (uint32_t)pool, oid, (uint32_t)i, page[i],
                                          PAGE), 1);
    }
    unsigned home = t->class_home[cls[0]];
    assert_int_equal(t->cls[home].used_slots, 2);
    assert_int_equal(t->cls[home].zspage_count, 1);
    assert_int_equal(t->cls[cls[0]].zspage_count, 0); /* cls[0] is not its own home */
    assert_int_equal(t->zspage_count, 1);
    audit(h);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(mv_tmem_get_page(h, d, (uint32_t)pool, oid, (uint32_t)i, got, PAGE),
                         1);
        assert_memory_equal(got, page[i], PAGE);
    }
    audit(h);
    mv_host_destroy(h);
}

/* The one class holding pages of kind 2 put by put_same_class. */
static struct tm_class *class_of_same_class_pages(struct mv__tmem *t, unsigned *size)
{
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        if (t->cls[c].used_slots && t->cls[c].slots > 1) {
            *size = (c + 1) << TM_CLASS_SHIFT;
            return &t->cls[c];
        }
    }
    fail_msg("no class holds the pages");
    return NULL;
}

/* COPIED: the zspage a class is filling (staged) is charged only for the
 * frames its slots reach, so a part-filled one costs what its bytes need;
 * the frames after are held for it, holes, and charged as slots reach
 * them.  When the budget has no room for the next frame, the put fails
 * with a reason and loses nothing; with room again, it goes on there. */
static void copied_store_charges_frames_as_slots_reach_them(void **state)
{
    (void)state;
    struct mv_host_config hc;
    mv_host *h = NULL;

    tu_host_config(&hc, 8 * MiB); /* below the domain's persistent quota */
    hc.tmem_store = MV_TMEM_STORE_COPIED;
    assert_ok(mv_host_create(&hc, &h));
    struct mv__tmem *t = tm_of(h);
    uint32_t d = tu_domain(h, "a", 16 * MiB, 16 * MiB);
    int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    unsigned size = 0, n = 0, raw = 0;
    struct tm_class *cl;
    int rc;

    assert_true(per >= 0);
    assert_int_equal(put_same_class(h, d, per, n++), 1);
    cl = class_of_same_class_pages(t, &size);
    assert_true(cl->frames > 1); /* else there is nothing to hold */
    /* Each put charges the frames its slot reaches, no more. */
    for (; n <= cl->slots; n++) {
        assert_int_equal(stats(h).frames, ((uint64_t)n * size + PAGE - 1) / PAGE);
        audit(h);
        assert_int_equal(put_same_class(h, d, per, n), 1);
    }
    /* The first zspage is full and written; the second has one slot. */
    assert_int_equal(cl->zspage_count, 2);
    assert_int_equal(stats(h).frames, cl->frames + 1);
    audit(h);

    /* Fill the budget with raw pages (a frame each): then puts fill the
     * staged zspage's first frame, and the one reaching a held frame
     * fails. */
    while ((rc = put(h, d, per, 2, raw, raw, 3)) == 1)
        raw++;
    assert_err(rc, -ENOMEM);
    assert_true(raw > 0);
    for (;; n++) {
        uint64_t frames = stats(h).frames;

        rc = put_same_class(h, d, per, n);
        if (rc != 1)
            break;
        assert_int_equal(stats(h).frames, frames); /* fits its charged frame */
    }
    assert_err(rc, -ENOMEM);
    assert_non_null(strstr(mv_last_error(), "budget"));
    audit(h);
    for (uint32_t i = 0; i < n; i++)
        expect_same_class(h, d, per, i);
    /* A raw page flushed makes room: the put charges the held frame. */
    uint64_t oid[3];
    uint64_t frames = stats(h).frames;

    oid_of(oid, 2);
    assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)per, oid, 0), 1);
    assert_int_equal(put_same_class(h, d, per, n), 1);
    assert_int_equal(stats(h).frames, frames); /* one frame out, one in */
    audit(h);
    for (uint32_t i = 0; i <= n; i++)
        expect_same_class(h, d, per, i);
    for (uint32_t i = 1; i < raw; i++)
        expect_page(h, d, per, 2, i, i, 3);
    /* Emptied, the staged zspage gives its held frames back as holes. */
    assert_ok(mv_tmem_destroy_pool(h, d, (uint32_t)per));
    assert_int_equal(stats(h).used_frames, 0);
    audit(h);
    mv_host_destroy(h);
}

/* The slots per zspage of the one class holding pages now. */
static unsigned slots_of_the_class_in_use(mv_host *h)
{
    struct mv__tmem *t = tm_of(h);
    unsigned slots = 0;

    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        if (!t->cls[c].used_slots)
            continue;
        assert_int_equal(slots, 0);
        slots = t->cls[c].slots;
    }
    assert_true(slots > 0);
    return slots;
}

/* A host with the copied store that has read nothing yet, and a domain
 * with `pages` pages of one class in a private ephemeral pool. */
static mv_host *copied_host_with_ephemeral_pages(uint32_t pages, uint32_t *d, int *eph)
{
    mv_host *h = host_with_store(MV_TMEM_STORE_COPIED);

    *d = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    *eph = mv_tmem_new_pool(h, *d, 0, NULL);
    assert_true(*eph >= 0);
    for (uint32_t i = 0; i < pages; i++)
        assert_int_equal(put_same_class(h, *d, *eph, i), 1);
    return h;
}

/* COPIED: gets in the order of the puts read a zspage whole once two in a
 * row come from it, and the gets after it make no system call; the stream
 * goes on into the next zspage without a slot's read.  Gets that jump from
 * zspage to zspage do not read ahead.  What a read-ahead holds
 * stays what the frames hold when the slots it covers are written again
 * (a put into a slot a get freed, compaction moving pages into it), and a
 * read-ahead that cannot be read fails its get and loses nothing. */
static void copied_store_reads_ahead_for_gets_in_order(void **state)
{
    mv_host *h = host_with_store(MV_TMEM_STORE_COPIED);
    uint32_t d = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    int per = mv_tmem_new_pool(h, d, MV_TMEM_PERSISTENT, NULL);
    struct mv_tmem_stats s0, s1;
    uint8_t page[PAGE];
    uint64_t oid[3];
    unsigned S, n;
    int eph;

    (void)state;
    assert_true(per >= 0);
    assert_int_equal(put_same_class(h, d, per, 0), 1);
    S = slots_of_the_class_in_use(h);
    assert_true(S > 8 && S < 64);
    /* Four zspages of the class, the last still staged (read from the
     * stage, never from the memfd). */
    n = 4 * S;
    for (uint32_t i = 1; i < n; i++)
        assert_int_equal(put_same_class(h, d, per, i), 1);
    s0 = stats(h);
    assert_int_equal(s0.store, MV_TMEM_STORE_COPIED);
    for (uint32_t i = 0; i < n; i++)
        expect_same_class(h, d, per, i);
    s1 = stats(h);
    /* The first zspage's first get reads one slot, its second reads it
     * whole; each zspage after it is read whole at its first get (the one
     * before it was served to its last page).  Every get but the first is
     * served from a read-ahead. */
    assert_int_equal(s1.store_read_aheads - s0.store_read_aheads, 3);
    assert_int_equal(s1.store_read_ahead_hits - s0.store_read_ahead_hits, 3 * S - 1);
    audit(h);
    /* Jumping from zspage to zspage (each round takes the next page of
     * each): the first get reads its zspage ahead (the stream before it
     * had reached a last page), and is served from it with the rest of
     * that zspage's pages; every other get reads its slot alone. */
    s0 = stats(h);
    for (uint32_t i = 0; i < n; i++)
        expect_same_class(h, d, per, (i % 4) * S + i / 4);
    s1 = stats(h);
    assert_int_equal(s1.store_read_aheads - s0.store_read_aheads, 1);
    assert_int_equal(s1.store_read_ahead_hits - s0.store_read_ahead_hits, S);
    assert_ok(mv_tmem_destroy_pool(h, d, (uint32_t)per));
    audit(h);
    assert_ok(mv_domain_destroy(h, d));
    mv_host_destroy(h);

    /* A private ephemeral pool, on a host that has read nothing yet: gets
     * are exclusive and free their slots. */
    h = copied_host_with_ephemeral_pages(2 * S, &d, &eph);
    s0 = stats(h);
    for (uint32_t i = 0; i < 4; i++)
        expect_same_class(h, d, eph, i);
    s1 = stats(h);
    assert_int_equal(s1.store_read_aheads - s0.store_read_aheads, 1);
    assert_int_equal(s1.store_read_ahead_hits - s0.store_read_ahead_hits, 3);
    /* New pages fill the four slots those gets freed, in the zspage read
     * ahead; getting them back is served from the read-ahead, and must
     * give the new bytes. */
    for (uint32_t i = 1000; i < 1004; i++)
        assert_int_equal(put_same_class(h, d, eph, i), 1);
    audit(h);
    s0 = stats(h);
    for (uint32_t i = 1000; i < 1004; i++)
        expect_same_class(h, d, eph, i);
    s1 = stats(h);
    assert_int_equal(s1.store_read_ahead_hits - s0.store_read_ahead_hits, 4);
    assert_int_equal(s1.store_read_aheads, s0.store_read_aheads);
    /* Compaction moves the second zspage's last four pages into the four
     * free slots of the first, the one read ahead. */
    oid_of(oid, 9);
    for (uint32_t i = S + 4; i < 2 * S; i++)
        assert_int_equal(mv_tmem_flush_page(h, d, (uint32_t)eph, oid, i), 1);
    s0 = stats(h);
    assert_true(mv_tmem_compact(h) > 0);
    assert_int_equal(stats(h).compact_moves - s0.compact_moves, 4);
    audit(h);
    for (uint32_t i = S; i < S + 4; i++)
        expect_same_class(h, d, eph, i);
    s1 = stats(h);
    assert_int_equal(s1.store_read_ahead_hits - s0.store_read_ahead_hits, 4);
    assert_int_equal(s1.store_read_aheads, s0.store_read_aheads);
    for (uint32_t i = 4; i < S; i++)
        expect_same_class(h, d, eph, i);
    audit(h);

    assert_ok(mv_domain_destroy(h, d));
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    audit(h);
    mv_host_destroy(h);

    /* Reads that fail, on a host that has read nothing yet, in a private
     * ephemeral pool, whose get would remove the page: a get of one slot
     * whose read fails fails and the page stays, and so does a get whose
     * read-ahead fails (the first of the second zspage: the stream went
     * on from the first one's last page); the next get of each reads its
     * zspage ahead and finds the page. */
    h = copied_host_with_ephemeral_pages(3 * S, &d, &eph);
    oid_of(oid, 9);
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    assert_err(mv_tmem_get_page(h, d, (uint32_t)eph, oid, 0, page, PAGE), -EIO);
    assert_int_equal(mv__os_injected(MV_OS_READ), 0);
    audit(h);
    for (uint32_t i = 0; i < S; i++)
        expect_same_class(h, d, eph, i);
    assert_int_equal(stats(h).store_read_aheads, 1);
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    assert_err(mv_tmem_get_page(h, d, (uint32_t)eph, oid, S, page, PAGE), -EIO);
    assert_int_equal(mv__os_injected(MV_OS_READ), 0);
    assert_int_equal(stats(h).store_read_aheads, 1);
    audit(h);
    for (uint32_t i = S; i < 3 * S; i++)
        expect_same_class(h, d, eph, i);
    assert_int_equal(stats(h).store_read_aheads, 2);
    assert_int_equal(stats(h).store_read_ahead_hits, 2 * S);
    audit(h);
    assert_ok(mv_domain_destroy(h, d));
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    audit(h);
    mv_host_destroy(h);
}

/* COPIED: a size class left with no stored page gives its stage and
 * read-ahead buffers back when memory is relinquished (a class still
 * holding a page keeps them), and a put after it has them again. */
static void relinquishing_frees_empty_classes_buffers(void **state)
{
    const uint64_t most = (uint64_t)(TM_ZSPAGE_MAX_FRAMES + TM_AHEAD_FRAMES) * PAGE;
    uint64_t m0, freed, after, ra;
    uint32_t d;
    int eph;
    mv_host *h = copied_host_with_ephemeral_pages(64, &d, &eph);

    (void)state;
    /* Gets from a private ephemeral pool take the pages: all but page 0. */
    for (uint32_t i = 1; i < 64; i++)
        expect_same_class(h, d, eph, i);
    assert_true(stats(h).store_read_aheads > 0);
    m0 = stats(h).metadata_bytes;
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    assert_int_equal(stats(h).metadata_bytes, m0);
    audit(h);
    expect_same_class(h, d, eph, 0);
    m0 = stats(h).metadata_bytes;
    assert_true(mv_tmem_relinquish_pages(h, UINT64_MAX) > 0);
    after = stats(h).metadata_bytes;
    freed = m0 - after;
    /* The emptied chunk's record, and the class's stage and read-ahead. */
    freed -= sizeof(struct tm_chunk);
    assert_int_equal(freed % PAGE, 0);
    assert_in_range(freed, (1 + TM_AHEAD_FRAMES) * PAGE, most);
    audit(h);
    /* The class stages and reads ahead again. */
    for (uint32_t i = 0; i < 64; i++)
        assert_int_equal(put_same_class(h, d, eph, i), 1);
    assert_true(stats(h).metadata_bytes >= after + (1 + TM_AHEAD_FRAMES) * PAGE);
    ra = stats(h).store_read_aheads;
    for (uint32_t i = 0; i < 64; i++)
        expect_same_class(h, d, eph, i);
    assert_true(stats(h).store_read_aheads > ra);
    audit(h);
    assert_ok(mv_domain_destroy(h, d));
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    audit(h);
    mv_host_destroy(h);
}

static void page_out_and_fault_back_in(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 32 * MiB, 32 * MiB);
    struct mv_workload_config w;
    struct mv_workload_status st;
    struct mv_host_stats before, after;
    struct mv_tmem_stats s;
    enum mv_page_type type;
    uint64_t populated, paged = 0;
    int64_t n;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed |= MV_SEED_COMPRESSIBLE;
    w.max_pages = 6000;
    w.working_set_pages = 4096;
    st = tu_run(h, d, &w);
    assert_false(st.crashed);
    populated = tu_info(h, d).populated_pages;
    assert_ok(mv_host_stats(h, &before));
    n = mv_tmem_page_out(h, d, 2000);
    assert_int_equal(n, 2000);
    assert_int_equal(tu_info(h, d).paged_pages, 2000);
    assert_int_equal(tu_info(h, d).populated_pages, populated - 2000);
    assert_ok(mv_host_stats(h, &after));
    /* Compressible pages: far fewer frames than pages. */
    assert_true(before.populated_pages - after.populated_pages > 1500);
    for (uint64_t g = 0; g < 8192 && !paged; g++) {
        assert_ok(mv_domain_page_type(h, d, g, &type));
        paged = type == MV_PAGE_PAGED;
        /* Sharing refuses a paged-out page, saying so (it once took it for
         * a shared one). */
        if (paged) {
            mv_share_handle handle;

            assert_err(mv_share_nominate(h, d, g, &handle), -EINVAL);
            assert_non_null(strstr(mv_last_error(), "paged out"));
        }
    }
    assert_true(paged);
    audit(h);
    /* The oracle reads paged pages without paging them in... */
    assert_int_equal(mv_oracle_verify(h, d, NULL), 0);
    assert_int_equal(tu_info(h, d).paged_pages, 2000);
    /* ... the guest's own reads page them in, transparently. */
    mv_workload_config_init(&w, MV_WORKLOAD_VERIFY);
    w.seed |= MV_SEED_COMPRESSIBLE;
    st = tu_run(h, d, &w);
    assert_int_equal(st.mismatches, 0);
    assert_int_equal(tu_info(h, d).paged_pages, 0);
    s = stats(h);
    assert_int_equal(s.page_ins, 2000);
    assert_int_equal(s.paged_out, 0);
    tu_verify(h, d);
    audit(h);
    mv_host_destroy(h);
}

/* A host whose domain *d resolves its vCPUs' faults in their threads, of
 * single pages, with 1000 of the 6000 pages a guest wrote paged out; tmem
 * keeps them the way `store` says (AUTO: as the test's environment asks).
 * Skips, saying why, when the kernel cannot raise SIGBUS for a fault. */
static mv_host *host_with_paged_vcpu_domain(enum mv_tmem_store store, uint32_t *d)
{
    struct mv_host_config c;
    struct mv_domain_config dc;
    struct mv_workload_config w;
    mv_host *h;

    tu_host_config(&c, 4 * GiB);
    c.fault_path = MV_FAULT_PATH_AUTO;
    if (store != MV_TMEM_STORE_AUTO)
        c.tmem_store = store;
    assert_ok(mv_host_create(&c, &h));
    /* Single pages: a whole 2 MiB block is always a fault thread's. */
    tu_domain_config(&dc, "a", 32 * MiB, 32 * MiB);
    dc.pod_block_populate = 0;
    assert_ok(mv_domain_create(h, &dc, d));
    if (!tu_info(h, *d).fault_in_thread) {
        mv_host_destroy(h);
        print_message("skipped: the kernel lacks UFFD_FEATURE_SIGBUS\n");
        skip();
    }
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed |= MV_SEED_COMPRESSIBLE;
    w.max_pages = 6000;
    w.working_set_pages = 4096;
    assert_false(tu_run(h, *d, &w).crashed);
    assert_int_equal(mv_tmem_page_out(h, *d, 1000), 1000);
    return h;
}

/* A vCPU's fault on a paged page is resolved in the vCPU's own thread: one
 * UFFDIO_COPY fills, maps and returns.  When that cannot be done, a fault
 * thread serves it as before; nothing is lost either way. */
static void paged_faults_resolved_in_the_vcpus_thread(void **state)
{
    struct mv_workload_config w;
    struct mv_domain_info i0, i1;
    struct mv_tmem_counts g0, g1;
    uint32_t d;
    mv_host *h = host_with_paged_vcpu_domain(MV_TMEM_STORE_AUTO, &d);

    (void)state;
    /* Every fault of the guest's reads, paged pages and aged ones alike,
     * is resolved in the thread that took it, but one in each
     * TM_FLUSH_LATER_MAX + 1 page-ins: the fault thread that serves it
     * drops the pool's copies the vCPUs' page-ins left. */
    i0 = tu_info(h, d);
    g0 = client(h, UINT32_MAX).counts;
    mv_workload_config_init(&w, MV_WORKLOAD_VERIFY);
    w.seed |= MV_SEED_COMPRESSIBLE;
    assert_int_equal(tu_run(h, d, &w).mismatches, 0);
    i1 = tu_info(h, d);
    g1 = client(h, UINT32_MAX).counts;
    assert_int_equal(i1.paged_pages, 0);
    assert_int_equal(stats(h).page_ins, 1000);
    /* One get a page-in, wherever it was served. */
    assert_int_equal(g1.gets - g0.gets, 1000);
    assert_int_equal(g1.found_gets - g0.found_gets, 1000);
    assert_true(i1.faults_in_thread - i0.faults_in_thread >= 1000 - 1000 / TM_FLUSH_LATER_MAX);
    assert_true(i1.faults - i1.faults_in_thread - (i0.faults - i0.faults_in_thread) <=
                1000 / TM_FLUSH_LATER_MAX);
    audit(h);
    /* The copy fails in the vCPU's thread, then in the fault thread: the
     * frame is written and mapped there instead. */
    assert_int_equal(mv_tmem_page_out(h, d, 200), 200);
    i0 = tu_info(h, d);
    g0 = client(h, UINT32_MAX).counts;
    mv__os_inject(MV_OS_UFFD_COPY, ENOMEM, 0, 2);
    assert_int_equal(tu_run(h, d, &w).mismatches, 0);
    assert_int_equal(mv__os_injection_left(MV_OS_UFFD_COPY), 0);
    mv__os_inject(MV_OS_UFFD_COPY, 0, 0, 0);
    i1 = tu_info(h, d);
    g1 = client(h, UINT32_MAX).counts;
    assert_int_equal(i1.state, MV_DOMAIN_RUNNING);
    assert_int_equal(i1.paged_pages, 0);
    assert_int_equal(stats(h).page_ins, 1200);
    /* The get the vCPU's thread handed on counts once, in the fault thread. */
    assert_int_equal(g1.gets - g0.gets, 200);
    assert_int_equal(g1.found_gets - g0.found_gets, 200);
    assert_true(i1.faults - i0.faults > i1.faults_in_thread - i0.faults_in_thread);
    tu_verify(h, d);
    audit(h);
    /* Pages back in vCPUs' threads, their copies not dropped yet: a domain
     * destroyed then leaves nothing in the host pool. */
    assert_int_equal(mv_tmem_page_out(h, d, 100), 100);
    assert_int_equal(tu_run(h, d, &w).mismatches, 0);
    assert_int_equal(tu_info(h, d).paged_pages, 0);
    assert_ok(mv_domain_destroy(h, d));
    assert_int_equal(stats(h).paged_out, 0);
    assert_int_equal(stats(h).counts.pages, 0);
    audit(h);
    /* The page-ins in vCPUs' SIGBUS handlers allocated nothing. */
    assert_int_equal(mv__os_allocations_in_signal(), 0);
    mv_host_destroy(h);
}

/* A vCPU that made a failing library call, then touched a paged page whose
 * page-in failed in its thread (a fault thread then served it), still finds
 * that call's message in mv_last_error(). */
struct message_keeper {
    mv_host *host;
    uint32_t domid;
    volatile uint8_t *page;
    uint8_t byte;
    char before[256], after[256];
};

static void *message_keeper_main(void *arg)
{
    struct message_keeper *k = arg;

    assert_int_equal(mv_vcpu_enter(k->host, k->domid), 1);
    assert_int_equal(mv_domain_set_target(k->host, k->domid, 12345), -EINVAL);
    snprintf(k->before, sizeof(k->before), "%s", mv_last_error());
    k->byte = k->page[0];
    snprintf(k->after, sizeof(k->after), "%s", mv_last_error());
    mv_vcpu_exit();
    return NULL;
}

static void failed_page_in_keeps_the_vcpus_last_error(void **state)
{
    struct message_keeper k;
    enum mv_page_type type = MV_PAGE_RAM;
    pthread_t thread;
    uint8_t *ram;
    uint64_t size, g;
    uint32_t d;
    /* The copied store: a page-in reads its slot. */
    mv_host *h = host_with_paged_vcpu_domain(MV_TMEM_STORE_COPIED, &d);

    (void)state;
    for (g = 0; g < 4096 && type != MV_PAGE_PAGED; g++)
        assert_ok(mv_domain_page_type(h, d, g, &type));
    assert_int_equal(type, MV_PAGE_PAGED);
    assert_ok(mv_domain_ram(h, d, (void **)&ram, &size));
    k = (struct message_keeper){ .host = h, .domid = d, .page = ram + (g - 1) * PAGE };
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    assert_int_equal(pthread_create(&thread, NULL, message_keeper_main, &k), 0);
    pthread_join(thread, NULL);
    assert_int_equal(mv__os_injected(MV_OS_READ), 0);
    assert_non_null(strstr(k.before, "not a multiple of the page size"));
    assert_string_equal(k.after, k.before);
    assert_ok(mv_domain_page_type(h, d, g - 1, &type));
    assert_int_equal(type, MV_PAGE_RAM);
    tu_verify(h, d);
    audit(h);
    mv_host_destroy(h);
}

/* Charges the host budget a page at a time until told to stop, as the
 * faults of another domain do when the budget is full. */
struct budget_taker {
    mv_host *h;
    atomic_bool stop;
    _Atomic uint64_t taken;
};

static void *budget_taker_main(void *arg)
{
    struct budget_taker *k = arg;

    while (!atomic_load(&k->stop))
        if (mv__machine_charge(&k->h->machine, 1))
            atomic_fetch_add(&k->taken, 1);
    return NULL;
}

/* A page-out hands its frames' charge to tmem for the compressed copies.
 * It once gave it back to the budget first: a charge racing with it took
 * that memory, the store found none, and the pages went back over the
 * budget. */
static void page_out_keeps_its_memory_from_racing_charges(void **state)
{
    mv_host *h = tu_host_with(24 * MiB, MV_FAULT_SPIN_DEFAULT);
    uint32_t d = tu_domain(h, "a", 16 * MiB, 16 * MiB);
    struct budget_taker k = { .h = h };
    struct mv_workload_config w;
    struct mv_host_stats hs;
    pthread_t thread;
    uint64_t full;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed |= MV_SEED_COMPRESSIBLE;
    w.max_pages = 6000;
    assert_false(tu_run(h, d, &w).crashed);
    assert_int_equal(pthread_create(&thread, NULL, budget_taker_main, &k), 0);
    while (mv__machine_room(&h->machine) > 0)
        sched_yield();
    full = atomic_load(&k.taken);
    assert_int_equal(mv_tmem_page_out(h, d, 2000), 2000);
    atomic_store(&k.stop, true);
    pthread_join(thread, NULL);
    assert_int_equal(stats(h).page_outs, 2000);
    assert_ok(mv_host_stats(h, &hs));
    assert_true(hs.peak_populated_pages <= hs.budget_pages);
    /* What the compressed copies did not need went back to the budget, and
     * the other side took it. */
    assert_true(atomic_load(&k.taken) > full);
    mv__machine_uncharge(&h->machine, atomic_load(&k.taken));
    tu_verify(h, d);
    audit(h);
    mv_host_destroy(h);
}

/* A page-out whose store fails puts the pages back on the charge it kept;
 * one whose put-back fails too crashes the domain, and the budget still
 * counts exactly what the domains hold.  The copied store writes a raw
 * page's staged zspage at the next put: the first write of a page-out. */
static void page_out_failures_keep_the_budget_exact(void **state)
{
    for (unsigned writes = 1; writes <= 2; writes++) {
        mv_host *h = host_with_store(MV_TMEM_STORE_COPIED);
        uint32_t d = tu_domain(h, "a", 16 * MiB, 16 * MiB);
        struct mv_workload_config w;
        int64_t n;

        (void)state;
        mv_workload_config_init(&w, MV_WORKLOAD_RANDOM); /* incompressible */
        w.max_pages = 3000;
        assert_false(tu_run(h, d, &w).crashed);
        mv__os_inject(MV_OS_WRITE, EIO, 0, writes);
        n = mv_tmem_page_out(h, d, 64);
        assert_int_equal(mv__os_injected(MV_OS_WRITE), 0);
        if (writes == 1) {
            /* Stored after all, by the batches that followed. */
            assert_int_equal(n, 64);
            assert_int_equal(tu_info(h, d).state, MV_DOMAIN_RUNNING);
            tu_verify(h, d);
        } else {
            assert_err(n, -EFAULT);
            assert_int_equal(tu_info(h, d).state, MV_DOMAIN_CRASHED);
            assert_non_null(strstr(tu_info(h, d).crash_reason, "after a failed page-out"));
        }
        audit(h);
        mv_host_destroy(h);
    }
}

static void paged_pages_balloon_clone_and_destroy(void **state)
{
    mv_host *h = tu_host();
    uint32_t d = tu_domain(h, "a", 16 * MiB, 16 * MiB), c;
    struct mv_workload_config w;
    uint64_t gfns[64], n = 0;
    enum mv_page_type type;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed |= MV_SEED_COMPRESSIBLE;
    w.max_pages = 3000;
    tu_run(h, d, &w);
    assert_true(mv_tmem_page_out(h, d, 1000) > 0);
    /* Ballooning a paged gfn drops its copy. */
    for (uint64_t g = 0; g < 4096 && n < 64; g++) {
        assert_ok(mv_domain_page_type(h, d, g, &type));
        if (type == MV_PAGE_PAGED)
            gfns[n++] = g;
    }
    assert_int_equal(n, 64);
    assert_int_equal(mv_domain_decrease_reservation(h, d, gfns, 64), 64);
    assert_ok(mv_domain_increase_reservation(h, d, gfns, 64));
    audit(h);
    /* A clone pages its source back in first. */
    assert_ok(mv_domain_pause(h, d));
    assert_ok(mv_domain_clone(h, d, "c", &c));
    assert_int_equal(tu_info(h, d).paged_pages, 0);
    audit(h);
    assert_ok(mv_domain_unpause(h, d));
    assert_true(mv_tmem_page_out(h, d, 500) >= 0);
    assert_ok(mv_domain_destroy(h, d));
    assert_int_equal(stats(h).paged_out, 0);
    audit(h);
    mv_host_destroy(h);
}

struct thrash {
    mv_host *h;
    uint32_t d;
    int eph, per;
    atomic_bool stop;
    atomic_int bad;
    uint64_t gets, hits;
};

/* A guest using tmem as a page cache (ephemeral) and as swap (persistent):
 * every page it gets back must be what it put; no persistent page lost. */
static void *thrasher(void *arg)
{
    struct thrash *t = arg;
    uint8_t p[PAGE];
    uint64_t oid[3];
    uint32_t i = 0;

    oid_of(oid, 5);
    while (!atomic_load(&t->stop)) {
        int rc;

        i = (i + 1) % 3000;
        if (put(t->h, t->d, t->eph, 5, i, i, 2) < 0)
            atomic_fetch_add(&t->bad, 1);
        rc = mv_tmem_get_page(t->h, t->d, (uint32_t)t->eph, oid, (i * 7) % 3000, p, PAGE);
        t->gets++;
        if (rc == 1) {
            uint8_t want[PAGE];

            t->hits++;
            fill(want, (i * 7) % 3000, 2);
            if (memcmp(want, p, PAGE))
                atomic_fetch_add(&t->bad, 1);
        } else if (rc < 0) {
            atomic_fetch_add(&t->bad, 1);
        }
        if (i < 500) {
            rc = mv_tmem_get_page(t->h, t->d, (uint32_t)t->per, oid, i, p, PAGE);
            if (rc != 1) {
                atomic_fetch_add(&t->bad, 1);
            } else {
                uint8_t want[PAGE];

                fill(want, i + 7, 2);
                if (memcmp(want, p, PAGE))
                    atomic_fetch_add(&t->bad, 1);
            }
        }
    }
    return NULL;
}

/* A domain crashed under pressure: say why, and where the memory was. */
static void fail_crashed(mv_host *h, uint32_t dom)
{
    struct mv_host_stats hs;
    struct mv_tmem_stats s = stats(h);

    assert_ok(mv_host_stats(h, &hs));
    fail_msg("domain %u crashed: %s; host populated %llu of %llu; "
             "tmem frames %llu used %llu spare %llu paged %llu chunks %llu", dom,
             tu_info(h, dom).crash_reason, (unsigned long long)hs.populated_pages,
             (unsigned long long)hs.budget_pages,
             (unsigned long long)s.frames, (unsigned long long)s.used_frames,
             (unsigned long long)s.spare_frames, (unsigned long long)s.paged_out,
             (unsigned long long)s.chunks);
}

static void pressure_paging_cow_and_tmem_at_once(void **state)
{
    /* Demand: three domains of 24 MiB plus a clone and tmem, on a budget of
     * 24 MiB. */
    mv_host *h = tu_host_with(24 * MiB, MV_FAULT_SPIN_DEFAULT);
    uint32_t d[4];
    struct mv_workload_config w;
    struct mv_workload_status st;
    struct thrash th = { .h = h };
    pthread_t thread;
    struct mv_tmem_stats s;
    struct mv_share_stats ss;

    (void)state;
    for (int i = 0; i < 3; i++) {
        char name[8];

        snprintf(name, sizeof(name), "d%d", i);
        d[i] = tu_domain_with(h, name, 24 * MiB, 24 * MiB, 2, MV_POD_WAIT, 60000);
    }
    assert_ok(mv_tmem_auto_paging(h, 90, 70));
    th.d = d[0];
    th.eph = mv_tmem_new_pool(h, d[0], 0, NULL);
    th.per = mv_tmem_new_pool(h, d[0], MV_TMEM_PERSISTENT, NULL);
    for (uint32_t i = 0; i < 500; i++)
        assert_int_equal(put(h, d[0], th.per, 5, i, i + 7, 2), 1);
    /* d0 fills its RAM and is cloned: the clone shares every page, and
     * writes to either break copy-on-write. */
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed |= MV_SEED_COMPRESSIBLE;
    w.max_pages = 6000;
    st = tu_run(h, d[0], &w);
    if (st.crashed)
        fail_crashed(h, d[0]);
    assert_ok(mv_domain_pause(h, d[0]));
    assert_ok(mv_domain_clone(h, d[0], "clone", &d[3]));
    assert_ok(mv_domain_unpause(h, d[0]));
    assert_int_equal(pthread_create(&thread, NULL, thrasher, &th), 0);
    w.max_pages = 12000;
    for (int i = 0; i < 4; i++)
        assert_ok(mv_workload_start(h, d[i], &w));
    for (int i = 0; i < 4; i++) {
        assert_ok(mv_workload_wait(h, d[i], 120000, &st));
        if (st.crashed)
            fail_crashed(h, d[i]);
    }
    atomic_store(&th.stop, true);
    pthread_join(thread, NULL);
    assert_int_equal(atomic_load(&th.bad), 0);
    s = stats(h);
    print_message("paged out %llu (auto %llu), paged in %llu, evictions %llu, "
                  "budget short %llu, tmem gets %llu hits %llu\n",
                  (unsigned long long)s.page_outs, (unsigned long long)s.auto_paged,
                  (unsigned long long)s.page_ins, (unsigned long long)s.evictions,
                  (unsigned long long)s.budget_short_calls,
                  (unsigned long long)th.gets, (unsigned long long)th.hits);
    assert_true(s.page_outs > 0);
    assert_ok(mv_share_stats(h, &ss));
    print_message("copy-on-write breaks %llu\n", (unsigned long long)ss.cow_breaks);
    assert_true(ss.cow_breaks > 0);
    assert_ok(mv_tmem_auto_paging(h, 0, 0));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(mv_oracle_verify(h, d[i], NULL), 0);
        assert_int_equal(tu_info(h, d[i]).state, MV_DOMAIN_RUNNING);
    }
    for (uint32_t i = 0; i < 500; i++)
        expect_page(h, d[0], th.per, 5, i, i + 7, 2);
    audit(h);
    mv_host_destroy(h);
}

static void guest_page_cache_and_swap_over_tmem(void **state)
{
    mv_host *h = tu_host_with(64 * MiB, MV_FAULT_SPIN_DEFAULT);
    uint32_t d = tu_domain(h, "g", 32 * MiB, 32 * MiB);
    struct mv_workload_config w;
    struct mv_workload_status st;
    struct mv_tmem_pool_info pools[4];
    int n;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_CLEANCACHE);
    w.working_set_pages = 256;
    w.max_pages = 20000;
    st = tu_run(h, d, &w);
    assert_false(st.crashed);
    assert_int_equal(st.mismatches, 0);
    mv_workload_config_init(&w, MV_WORKLOAD_FRONTSWAP);
    w.working_set_pages = 256;
    w.max_pages = 20000;
    st = tu_run(h, d, &w);
    assert_false(st.crashed);
    assert_int_equal(st.mismatches, 0);
    n = mv_tmem_pool_list(h, pools, 4);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; i++) {
        print_message("pool %u (%s): puts %llu gets %llu found %llu\n", pools[i].pool,
                      pools[i].flags & MV_TMEM_PERSISTENT ? "frontswap" : "cleancache",
                      (unsigned long long)pools[i].counts.puts,
                      (unsigned long long)pools[i].counts.gets,
                      (unsigned long long)pools[i].counts.found_gets);
        assert_true(pools[i].counts.found_gets > 1000);
        assert_int_equal(pools[i].counts.pages, 0); /* flushed at the end */
    }
    tu_verify(h, d);
    audit(h);
    mv_host_destroy(h);
}

static void guest_tmem_clients_under_a_tight_budget(void **state)
{
    /* The page cache's puts are dropped and its pages evicted; the swap's
     * puts fail at once when there is no room, and it never loses one. */
    mv_host *h = tu_host_with(8 * MiB, MV_FAULT_SPIN_DEFAULT);
    uint32_t a = tu_domain_with(h, "a", 16 * MiB, 16 * MiB, 2, MV_POD_WAIT, 30000);
    uint32_t b = tu_domain_with(h, "b", 16 * MiB, 16 * MiB, 2, MV_POD_WAIT, 30000);
    struct mv_workload_config w;
    struct mv_workload_status st;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_CLEANCACHE);
    w.working_set_pages = 512;
    w.max_pages = 20000;
    assert_ok(mv_workload_start(h, a, &w));
    w.kind = MV_WORKLOAD_FRONTSWAP;
    assert_ok(mv_workload_start(h, b, &w));
    assert_ok(mv_workload_wait(h, a, 60000, &st));
    assert_false(st.crashed);
    assert_int_equal(st.mismatches, 0);
    assert_ok(mv_workload_wait(h, b, 60000, &st));
    assert_false(st.crashed);
    assert_int_equal(st.mismatches, 0);
    tu_verify(h, a);
    tu_verify(h, b);
    audit(h);
    mv_host_destroy(h);
}

struct pool_maker {
    mv_host *h;
    uint32_t d;
    atomic_int made;
};

static void *make_pools(void *arg)
{
    struct pool_maker *m = arg;
    uint8_t page[PAGE] = { 3 };
    uint64_t oid[3] = { 1, 2, 3 };

    for (int i = 0; i < 200; i++) {
        int pool = mv_tmem_new_pool(m->h, m->d, MV_TMEM_PERSISTENT, NULL);

        if (pool < 0)
            break;
        atomic_fetch_add(&m->made, 1);
        mv_tmem_put_page(m->h, m->d, (uint32_t)pool, oid, (uint32_t)i, page, PAGE);
    }
    return NULL;
}

static void pools_made_while_the_domain_dies_are_not_left_behind(void **state)
{
    mv_host *h = tu_host();

    (void)state;
    for (int round = 0; round < 20; round++) {
        struct pool_maker m = { .h = h };
        pthread_t thread;

        m.d = tu_domain(h, "dying", 16 * MiB, 16 * MiB);
        assert_int_equal(pthread_create(&thread, NULL, make_pools, &m), 0);
        if (round % 2)
            usleep(200);
        assert_ok(mv_domain_destroy(h, m.d));
        pthread_join(thread, NULL);
        assert_int_equal(stats(h).pools, 0);
        assert_int_equal(stats(h).counts.pages, 0);
    }
    audit(h);
    mv_host_destroy(h);
}

/* Hundreds of domains' clients, more than the id hash has buckets: each
 * domain's calls find its own client and pool, with some domains gone. */
static void many_domains_find_their_own_clients(void **state)
{
    enum { DOMAINS = 300 };
    mv_host *h = tu_host();
    uint32_t *d = calloc(DOMAINS, sizeof(*d));
    int *pool = calloc(DOMAINS, sizeof(*pool));

    (void)state;
    for (int i = 0; i < DOMAINS; i++) {
        char name[32];

        snprintf(name, sizeof(name), "d%d", i);
        d[i] = tu_domain(h, name, 2 * MiB, 2 * MiB);
        pool[i] = mv_tmem_new_pool(h, d[i], MV_TMEM_PERSISTENT, NULL);
        assert_ok(pool[i]);
        assert_int_equal(put(h, d[i], pool[i], 1, 0, (uint64_t)i, 2), 1);
    }
    assert_int_equal(stats(h).counts.pages, DOMAINS);
    audit(h);
    for (int i = 0; i < DOMAINS; i += 3)
        assert_ok(mv_domain_destroy(h, d[i]));
    audit(h);
    for (int i = 0; i < DOMAINS; i++) {
        if (i % 3 == 0)
            continue;
        expect_page(h, d[i], pool[i], 1, 0, (uint64_t)i, 2);
        assert_int_equal(client(h, d[i]).persistent_pages, 1);
        /* Another domain's pool stays another's. */
        assert_err(put(h, d[i], pool[(i + 1) % DOMAINS], 1, 1, 1, 2),
                   (i + 1) % 3 ? -EPERM : -ENOENT);
    }
    assert_int_equal(stats(h).counts.pages, DOMAINS - (DOMAINS + 2) / 3);
    audit(h);
    mv_host_destroy(h);
    free(d);
    free(pool);
}

/* The clients of the n domains in ids, in that order; zeros for those gone. */
static struct mv_tmem_client_info *clients_by_id(mv_host *h, const uint32_t *ids,
                                                 const bool *gone, int n)
{
    struct mv_tmem_client_info *by_id = calloc((size_t)n, sizeof(*by_id));

    for (int i = 0; i < n; i++)
        if (!gone[i])
            by_id[i] = client(h, ids[i]);
    return by_id;
}

/* Each batch of evictions takes every page from the domain then furthest
 * over its weighted share: a domain that lost pages in a batch was, before
 * its last loss, at least as far over as any other is now.  The order is
 * kept as pages come and go, weights change and domains go away. */
static void eviction_follows_shares_across_many_domains(void **state)
{
    enum { DOMAINS = 40 };
    mv_host *h = tu_host();
    uint32_t d[DOMAINS];
    int pool[DOMAINS];
    bool gone[DOMAINS] = { false };

    (void)state;
    for (int i = 0; i < DOMAINS; i++) {
        char name[32];

        snprintf(name, sizeof(name), "d%d", i);
        d[i] = tu_domain(h, name, 2 * MiB, 2 * MiB);
        pool[i] = mv_tmem_new_pool(h, d[i], 0, NULL);
        assert_ok(pool[i]);
        assert_ok(mv_tmem_set_client(h, d[i], 50 + (unsigned)(i * 37 % 400), 0));
        for (uint32_t k = 0; k < 20 + (uint32_t)(i * 7 % 90); k++)
            assert_int_equal(put(h, d[i], pool[i], 1, k, (uint64_t)i << 16 | k, 3), 1);
    }
    audit(h);
    for (int round = 0; round < 8; round++) {
        struct mv_tmem_client_info *before = clients_by_id(h, d, gone, DOMAINS), *after;
        uint64_t lost = 0;

        assert_true(mv_tmem_evict_npages(h, 4) > 0);
        after = clients_by_id(h, d, gone, DOMAINS);
        for (int a = 0; a < DOMAINS; a++) {
            if (gone[a] || after[a].ephemeral_pages == before[a].ephemeral_pages)
                continue;
            lost += before[a].ephemeral_pages - after[a].ephemeral_pages;
            for (int x = 0; x < DOMAINS; x++)
                if (!gone[x] && after[x].ephemeral_pages * after[a].weight >
                                    (after[a].ephemeral_pages + 1) * after[x].weight)
                    fail_msg("round %d: domain %u lost pages while domain %u was "
                             "further over its share (%llu at weight %u against %llu "
                             "at %u)", round, d[a], d[x],
                             (unsigned long long)after[x].ephemeral_pages, after[x].weight,
                             (unsigned long long)after[a].ephemeral_pages, after[a].weight);
        }
        assert_true(lost > 0);
        free(before);
        free(after);
        audit(h);
        /* Change the order: a new weight, new pages, a domain gone. */
        {
            int reweigh = round * 5 % DOMAINS, grow = round * 3 % DOMAINS;
            int doomed = (round * 7 + 1) % DOMAINS;

            if (!gone[reweigh])
                assert_ok(mv_tmem_set_client(h, d[reweigh], 1 + (unsigned)round * 300, 0));
            for (uint32_t k = 0; k < 30 && !gone[grow]; k++)
                assert_int_equal(put(h, d[grow], pool[grow], 2, (uint32_t)round << 8 | k,
                                     (uint64_t)round << 24 | k, 3), 1);
            if (!gone[doomed]) {
                assert_ok(mv_domain_destroy(h, d[doomed]));
                gone[doomed] = true;
            }
        }
        audit(h);
    }
    mv_host_destroy(h);
}

/* ---- random calls against a model ---- */

enum { MD_DOMAINS = 3, MD_POOLS = 8, MD_OBJS = 3, MD_INDEXES = 64, MD_QUOTA = 64 };

/* What a pool must hold: per key, 0 for nothing, else the value put
 * (seed << 3 | kind) and the domain that put it. */
struct md_pool {
    int id;                      /* -1: gone */
    unsigned flags;
    uint8_t uuid[MV_TMEM_UUID_SIZE];
    unsigned members;            /* bit per domain index */
    uint16_t val[MD_OBJS][MD_INDEXES];
    uint8_t putter[MD_OBJS][MD_INDEXES];
};

struct md {
    mv_host *h;
    uint32_t dom[MD_DOMAINS];
    struct md_pool pool[MD_POOLS];
    uint64_t x;                  /* the sequence's random state */
    unsigned step;
};

static uint64_t md_rand(struct md *m, uint64_t n)
{
    m->x ^= m->x << 13, m->x ^= m->x >> 7, m->x ^= m->x << 17;
    return m->x % n;
}

/* Pool i: for each domain a persistent and an ephemeral private pool (the
 * codec and dedup chosen at random each time one is made); pools 6 and 7
 * are shared, ephemeral by domains 0 and 1, persistent by 1 and 2. */
static void md_pool_make(struct md *m, unsigned i, unsigned d)
{
    struct md_pool *p = &m->pool[i];
    int id;

    if (i < 2 * MD_DOMAINS) {
        p->flags = (i % 2 ? 0 : MV_TMEM_PERSISTENT) |
                   (md_rand(m, 2) ? MV_TMEM_ZSTD : 0) | (md_rand(m, 2) ? MV_TMEM_DEDUP : 0);
    } else {
        p->flags = MV_TMEM_SHARED | (i == 7 ? MV_TMEM_PERSISTENT | MV_TMEM_DEDUP : 0);
        memset(p->uuid, (int)i, sizeof(p->uuid));
    }
    id = mv_tmem_new_pool(m->h, m->dom[d], p->flags, p->flags & MV_TMEM_SHARED ? p->uuid : NULL);
    assert_true(id >= 0);
    if (!p->members)
        memset(p->val, 0, sizeof(p->val));
    else
        assert_int_equal(id, p->id); /* joined the pool that was there */
    p->id = id;
    p->members |= 1u << d;
}

/* The domain's leave of pool i: its pages go, and the pool with its last
 * member. */
static void md_pool_leave(struct md *m, unsigned i, unsigned d)
{
    struct md_pool *p = &m->pool[i];

    assert_ok(mv_tmem_destroy_pool(m->h, m->dom[d], (uint32_t)p->id));
    p->members &= ~(1u << d);
    for (unsigned o = 0; o < MD_OBJS; o++)
        for (unsigned k = 0; k < MD_INDEXES; k++)
            if (!p->members || p->putter[o][k] == d)
                p->val[o][k] = 0;
    if (!p->members)
        p->id = -1;
}

static bool md_member(const struct md *m, unsigned i, unsigned d)
{
    return m->pool[i].id >= 0 && (m->pool[i].members >> d & 1);
}

/* A get checked against the model: a page is never one other than the
 * last put under its key, and a persistent one is never missing. */
static void md_get(struct md *m, unsigned i, unsigned d, unsigned o, unsigned k)
{
    struct md_pool *p = &m->pool[i];
    uint8_t want[PAGE], got[PAGE];
    uint64_t oid[3];
    unsigned v = p->val[o][k];
    int rc;

    oid_of(oid, o);
    memset(got, 0xa5, PAGE);
    rc = mv_tmem_get_page(m->h, m->dom[d], (uint32_t)p->id, oid, k, got, PAGE);
    if (rc == 1 && v) {
        fill(want, v >> 3, (int)(v & 7));
        if (memcmp(got, want, PAGE) != 0)
            fail_msg("step %u: pool %d obj %u index %u holds other bytes than the "
                     "last put", m->step, p->id, o, k);
    } else if (rc == 1 || (rc == 0 && v && (p->flags & MV_TMEM_PERSISTENT)) || rc < 0) {
        fail_msg("step %u: a get of pool %d obj %u index %u returned %d where the "
                 "model holds %s", m->step, p->id, o, k, rc, v ? "a page" : "none");
    }
    /* Gone when evicted, or taken by an exclusive get. */
    if (rc == 0 || !(p->flags & (MV_TMEM_PERSISTENT | MV_TMEM_SHARED)))
        p->val[o][k] = 0;
}

/* The pools domain d may be in: its own two, and the shared ones it is
 * authorised for (domain 1 for both). */
static unsigned md_pool_of(struct md *m, unsigned d)
{
    unsigned pick = (unsigned)md_rand(m, d == 1 ? 4 : 3);

    if (pick < 2)
        return 2 * d + pick;
    return pick == 3 || d == 2 ? 7 : 6;
}

static void md_step(struct md *m)
{
    unsigned d = (unsigned)md_rand(m, MD_DOMAINS), i = md_pool_of(m, d);
    unsigned o = (unsigned)md_rand(m, MD_OBJS), k = (unsigned)md_rand(m, MD_INDEXES);
    unsigned op = (unsigned)md_rand(m, 1000);
    struct md_pool *p = &m->pool[i];
    uint64_t oid[3];
    int64_t rc;

    oid_of(oid, o);
    if (op >= 990) {
        /* The host takes memory back, one of five ways. */
        switch (md_rand(m, 5)) {
        case 0: assert_true(mv_tmem_evict_npages(m->h, md_rand(m, 8) + 1) >= 0); break;
        case 1: assert_true(mv_tmem_relinquish_page(m->h) >= 0); break;
        case 2: assert_true(mv_tmem_relinquish_pages(m->h, md_rand(m, 16)) >= 0); break;
        case 3: rc = mv_tmem_relinquish_pageblock(m->h, (unsigned)md_rand(m, 5));
                assert_true(rc == 0 || rc == -ENOMEM); break;
        default: assert_true(mv_tmem_compact(m->h) >= 0); break;
        }
        return;
    }
    if (op >= 985) {
        assert_ok(mv_tmem_set_client(m->h, m->dom[d], 1 + (unsigned)md_rand(m, 400),
                                     MD_QUOTA));
        return;
    }
    if (!md_member(m, i, d)) {
        md_pool_make(m, i, d);
        return;
    }
    if (op >= 982) {
        md_pool_leave(m, i, d);
    } else if (op >= 970) {
        uint64_t persistent = 0, present = 0;

        for (unsigned j = 0; j < MD_INDEXES; j++) {
            present += p->val[o][j] != 0;
            persistent += p->val[o][j] && (p->flags & MV_TMEM_PERSISTENT);
            p->val[o][j] = 0;
        }
        rc = mv_tmem_flush_object(m->h, m->dom[d], (uint32_t)p->id, oid);
        assert_true(rc >= (int64_t)persistent && rc <= (int64_t)present);
    } else if (op >= 900) {
        rc = mv_tmem_flush_page(m->h, m->dom[d], (uint32_t)p->id, oid, k);
        assert_true(rc == 0 || rc == 1);
        assert_true(rc == 0 || p->val[o][k]);
        assert_true(rc == 1 || !p->val[o][k] || !(p->flags & MV_TMEM_PERSISTENT));
        p->val[o][k] = 0;
    } else if (op >= 550) {
        md_get(m, i, d, o, k);
    } else {
        /* Few seeds, so that pages repeat (dedup); every kind of page. */
        unsigned v = (unsigned)(md_rand(m, 24) + 1) << 3 | (unsigned)md_rand(m, 4);

        rc = put(m->h, m->dom[d], p->id, o, k, v >> 3, (int)(v & 7));
        if (p->flags & MV_TMEM_PERSISTENT)
            assert_true(rc == 1 || rc == -ENOMEM || rc == -EDQUOT);
        else
            assert_true(rc == 1 || rc == 0);
        p->val[o][k] = rc == 1 ? (uint16_t)v : 0;
        p->putter[o][k] = (uint8_t)d;
    }
}

/* Random tmem calls by three domains (private and shared pools, both
 * codecs, dedup, replacing puts, exclusive gets, flushes, pools left and
 * made again, weights, quotas) with the host taking memory back between
 * them, in what the domains' RAM leaves of the budget, so that puts evict
 * and fail: every get returns the last page put under its key or none, no
 * persistent page is ever lost, and the audits hold throughout. */
static void random_calls_match_a_model(void **state)
{
    static const uint64_t seeds[] = { 20261205, 7, 0x9e3779b97f4a7c15ull };
    /* The domains' RAM takes all of the budget but MD_ROOM frames. */
    enum { BUDGET = 5 * MiB, MD_ROOM = 110, MD_RAM = (BUDGET / PAGE - MD_ROOM) / MD_DOMAINS };

    uint8_t uuid6[MV_TMEM_UUID_SIZE], uuid7[MV_TMEM_UUID_SIZE];

    (void)state;
    /* The shared pools' names, as md_pool_make gives them. */
    memset(uuid6, 6, sizeof(uuid6));
    memset(uuid7, 7, sizeof(uuid7));
    for (size_t s = 0; s < sizeof(seeds) / sizeof(seeds[0]); s++) {
        struct md m = { .h = tu_host_with(BUDGET, MV_FAULT_SPIN_DEFAULT), .x = seeds[s] };
        struct mv_domain_config c;

        for (unsigned d = 0; d < MD_DOMAINS; d++) {
            char name[16];

            snprintf(name, sizeof(name), "m%u", d);
            tu_domain_config(&c, name, 4 * MiB, 4 * MiB);
            c.pod_policy = MV_POD_CRASH;
            c.pod_block_populate = 0;
            assert_ok(mv_domain_create(m.h, &c, &m.dom[d]));
            assert_ok(mv_tmem_set_client(m.h, m.dom[d], 100, MD_QUOTA));
            touch(m.h, m.dom[d], MD_RAM, 1);
            assert_ok(mv_tmem_authorize(m.h, m.dom[d], d < 2 ? uuid6 : uuid7));
            if (d == 1)
                assert_ok(mv_tmem_authorize(m.h, m.dom[d], uuid7));
        }
        for (unsigned i = 0; i < MD_POOLS; i++)
            m.pool[i].id = -1;
        for (m.step = 0; m.step < 20000; m.step++) {
            md_step(&m);
            if (m.step % 500 == 0)
                audit(m.h);
        }
        /* Every key of every pool, against the model. */
        for (unsigned i = 0; i < MD_POOLS; i++)
            for (unsigned d = 0; d < MD_DOMAINS; d++)
                for (unsigned o = 0; md_member(&m, i, d) && o < MD_OBJS; o++)
                    for (unsigned k = 0; k < MD_INDEXES; k++)
                        md_get(&m, i, d, o, k);
        for (unsigned d = 0; d < MD_DOMAINS; d++)
            assert_int_equal(tu_info(m.h, m.dom[d]).state, MV_DOMAIN_RUNNING);
        audit(m.h);
        mv_host_destroy(m.h);
    }
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(persistent_pages_round_trip),
    cmocka_unit_test(same_filled_pages_are_exactly_those),
    cmocka_unit_test(ephemeral_get_is_exclusive_unless_shared),
    cmocka_unit_test(duplicate_put_replaces_and_flushes_work),
    cmocka_unit_test(persistent_quota_fails_at_once),
    cmocka_unit_test(bad_input_is_refused_with_a_reason),
    cmocka_unit_test(pages_never_reach_another_domain),
    cmocka_unit_test(shared_pool_needs_authorisation),
    cmocka_unit_test(zstd_and_dedup_pools),
    cmocka_unit_test(compaction_frees_frames_and_keeps_pages),
    cmocka_unit_test(emptied_frames_go_back_in_batches),
    cmocka_unit_test(relinquish_api_gives_back_ephemeral_only),
    cmocka_unit_test(eviction_takes_from_the_domain_over_its_share),
    cmocka_unit_test(freeable_frames_are_what_eviction_gives_back),
    cmocka_unit_test(budget_short_takes_tmem_memory_first),
    cmocka_unit_test(relinquish_pageblock_makes_room_in_the_budget),
    cmocka_unit_test(repayment_comes_from_the_domains_own_collateral),
    cmocka_unit_test(destroy_pool_while_gets_are_in_flight),
    cmocka_unit_test(domain_destroyed_with_pages_in_pools),
    cmocka_unit_test(injected_failures_lose_and_leak_nothing),
    cmocka_unit_test(both_stores_keep_every_page_and_say_which),
    cmocka_unit_test(copied_store_failures_lose_nothing),
    cmocka_unit_test(classes_of_one_shape_share_a_zspage),
    cmocka_unit_test(copied_store_charges_frames_as_slots_reach_them),
    cmocka_unit_test(copied_store_reads_ahead_for_gets_in_order),
    cmocka_unit_test(relinquishing_frees_empty_classes_buffers),
    cmocka_unit_test(page_out_and_fault_back_in),
    cmocka_unit_test(page_out_keeps_its_memory_from_racing_charges),
    cmocka_unit_test(page_out_failures_keep_the_budget_exact),
    cmocka_unit_test(paged_faults_resolved_in_the_vcpus_thread),
    cmocka_unit_test(failed_page_in_keeps_the_vcpus_last_error),
    cmocka_unit_test(paged_pages_balloon_clone_and_destroy),
    cmocka_unit_test(pressure_paging_cow_and_tmem_at_once),
    cmocka_unit_test(guest_page_cache_and_swap_over_tmem),
    cmocka_unit_test(guest_tmem_clients_under_a_tight_budget),
    cmocka_unit_test(pools_made_while_the_domain_dies_are_not_left_behind),
    cmocka_unit_test(many_domains_find_their_own_clients),
    cmocka_unit_test(eviction_follows_shares_across_many_domains),
    cmocka_unit_test(random_calls_match_a_model),
};

TU_MAIN(cases)
