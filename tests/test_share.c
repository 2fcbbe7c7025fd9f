/*
 * test_share.c - copy-on-write sharing: the Xen-style primitives, one-call
 * sharing, the scanner, clones, CoW breaks and their memory, exclusion, the
 * mapping limit, and storms of writers while all of it runs.
 *
 * Content comes from the built-in guests: two domains running the random
 * writer with the same seed write the same pages with the same bytes, so
 * they have plenty to share, and the content oracle knows what every page
 * must hold afterwards.
 */
#include "testutil.h"
#include "memvisor-guest.h"
#include "internal.h"
#include "sharing.h"
#include "logdirty.h"

#include <limits.h>
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <unistd.h>

#define SEED 0x5eed5eedull

static uint32_t domain1(mv_host *h, const char *name, uint64_t maxmem, unsigned vcpus)
{
    return tu_domain_with(h, name, maxmem, maxmem, vcpus, MV_POD_WAIT, 0);
}

/* Write `pages` random pages of gfns [0, ws) with the shared seed. */
static void fill(mv_host *h, uint32_t id, uint64_t ws, uint64_t pages)
{
    tu_fill_random(h, id, SEED, ws, pages);
}

/* Statistics change nothing: they count the kernel's copies (MV_COW_KERNEL)
 * once settled.  The cases below settle first, to count every break. */
static struct mv_share_stats stats(mv_host *h)
{
    struct mv_share_stats s;

    mv__share_settle_all(h);
    assert_ok(mv_share_stats(h, &s));
    return s;
}

static struct mv_domain_info info(mv_host *h, uint32_t id)
{
    mv__share_settle_all(h);
    return tu_info(h, id);
}

/* The content oracle and the audits of two domains. */
static void verify_both(mv_host *h, uint32_t a, uint32_t b)
{
    tu_verify(h, a);
    tu_verify(h, b);
}

/* A clone "c" of running domain src, which runs on afterwards. */
static uint32_t clone_running(mv_host *h, uint32_t src)
{
    uint32_t c;

    assert_ok(mv_domain_pause(h, src));
    assert_ok(mv_domain_clone(h, src, "c", &c));
    assert_ok(mv_domain_unpause(h, src));
    return c;
}

/* nominate + share, stale handles, then writes break the sharing on both
 * sides: copies first, takeovers once one side is alone. */
static void nominate_share_and_break(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 64 * MiB, 1), b = domain1(h, "b", 64 * MiB, 1);
    uint64_t shared = 0;
    struct mv_share_stats s;

    (void)state;
    fill(h, a, 64, 400);
    fill(h, b, 64, 400);
    for (uint64_t g = 0; g < 64; g++) {
        mv_share_handle ha, hb;

        if (tu_page_type(h, a, g) != MV_PAGE_RAM)
            continue;
        assert_ok(mv_share_nominate(h, a, g, &ha));
        assert_ok(mv_share_nominate(h, b, g, &hb));
        assert_int_equal(tu_page_type(h, a, g), MV_PAGE_SHARED);
        assert_ok(mv_share_pages(h, a, g, ha, b, g, hb));
        /* The client's handle is retired with its frame. */
        assert_err(mv_share_pages(h, a, g, ha, b, g, hb), -ESTALE);
        assert_ok(mv_share_pages(h, a, g, ha, b, g, ha)); /* one frame: done */
        shared++;
    }
    assert_true(shared > 40);
    s = stats(h);
    assert_int_equal(s.saved_pages, shared);
    assert_int_equal(s.shared_frames, shared);
    assert_int_equal(info(h, b).shared_pages, shared);
    verify_both(h, a, b);

    /* b rewrites its pages: private copies; a sees none of it. */
    fill(h, b, 64, 600);
    s = stats(h);
    assert_true(s.cow_breaks >= shared - 2);
    assert_int_equal(s.cow_takeovers, 0);
    verify_both(h, a, b);
    /* a, now alone on its frames, takes them over. */
    fill(h, a, 64, 600);
    s = stats(h);
    assert_true(s.cow_takeovers >= shared - 4);
    assert_true(info(h, a).cow_takeovers >= shared - 4);
    verify_both(h, a, b);
    /* A populated zero page (the 2 MiB populate left it) nominated, then
     * written: no copy. */
    {
        mv_share_handle hz;

        assert_int_equal(tu_page_type(h, a, 300), MV_PAGE_RAM);
        assert_ok(mv_share_nominate(h, a, 300, &hz));
        assert_int_equal(tu_page_type(h, a, 300), MV_PAGE_SHARED);
        fill(h, a, 512, 5000);
        assert_int_equal(tu_page_type(h, a, 300), MV_PAGE_RAM);
        /* Where the kernel copies on write, it copies zero pages too. */
        if (!getenv("MV_TEST_KERNEL_COW"))
            assert_true(stats(h).cow_nocopy >= 1);
        tu_verify(h, a);
    }
    mv_host_destroy(h);
}

/* make_ro_and_share over whole domains: the first inserts, the others match
 * in runs; zero pages go back to PoD. */
static void make_ro_and_share_across_domains(void **state)
{
    mv_host *h = tu_host();
    uint32_t id[3];
    uint64_t pages = 16 * MiB / MV_PAGE_SIZE;
    enum mv_share_outcome *out = calloc(pages, sizeof(*out));
    struct mv_share_stats s;
    uint64_t inserted = 0, matched = 0, mappings;

    (void)state;
    assert_non_null(out);
    for (int i = 0; i < 3; i++) {
        char name[8];

        snprintf(name, sizeof(name), "d%d", i);
        id[i] = domain1(h, name, 16 * MiB, 2);
        /* gfns [0, 2048) all written (one run), some of the rest zero */
        fill(h, id[i], 2048, 30000);
    }
    mappings = stats(h).vma_count;
    for (int i = 0; i < 3; i++) {
        int64_t n = mv_share_make_ro_and_share(h, id[i], 0, pages, out);

        assert_ok(n);
        for (uint64_t g = 0; g < pages; g++) {
            inserted += out[g] == MV_SHARE_INSERTED;
            matched += out[g] == MV_SHARE_MATCHED;
        }
        if (i == 0)
            assert_int_equal(n, 0);
        else
            assert_true(n > 1000);
    }
    s = stats(h);
    assert_true(inserted > 1000);
    assert_int_equal(matched, 2 * inserted);
    assert_int_equal(s.saved_pages, 2 * inserted);
    /* Runs of consecutive frames: a few mappings, not one per page. */
    assert_true(s.vma_count < mappings + 32);
    /* Again: everything is shared already. */
    assert_ok(mv_share_make_ro_and_share(h, id[1], 0, pages, out));
    assert_int_equal(out[0] == MV_SHARE_ALREADY || out[0] == MV_SHARE_SKIPPED, 1);
    for (int i = 0; i < 3; i++)
        tu_verify(h, id[i]);
    /* All three write on; nothing leaks between them. */
    for (int i = 0; i < 3; i++) {
        struct mv_workload_config w;

        mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
        w.seed = SEED;
        w.working_set_pages = 4096;
        w.max_pages = 1500 * (uint64_t)(i + 1);
        assert_ok(mv_workload_start(h, id[i], &w));
    }
    for (int i = 0; i < 3; i++)
        assert_ok(mv_workload_wait(h, id[i], 60000, NULL));
    for (int i = 0; i < 3; i++)
        tu_verify(h, id[i]);
    free(out);
    mv_host_destroy(h);
}

/* The scanner finds the duplicates itself, returns zero pages to PoD and
 * skips pages that keep changing. */
static void scanner_shares_zero_and_volatile(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 32 * MiB, 1), b = domain1(h, "b", 32 * MiB, 1);
    struct mv_workload_config w;
    struct mv_scan_result r;
    struct mv_share_stats s;
    uint64_t pod_before;

    (void)state;
    fill(h, a, 4096, 3000);
    fill(h, b, 4096, 3000);
    pod_before = info(h, a).pod_pages;
    assert_ok(mv_share_scan(h, 0, &r));
    assert_true(r.pages_scanned > 4000);
    assert_true(r.pages_shared > 2000);
    assert_true(r.pages_zero > 0); /* the block populate left zero pages */
    assert_true(info(h, a).pod_pages > pod_before);
    s = stats(h);
    assert_true(s.saved_pages > 1000);
    assert_int_equal(s.scan_passes, 1);
    verify_both(h, a, b);

    /* A writer keeps changing a's pages while two passes run. */
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed = SEED;
    w.working_set_pages = 8192;
    w.pages_per_second = 20000;
    w.duration_ms = 1500;
    assert_ok(mv_workload_start(h, a, &w));
    assert_ok(mv_share_scan(h, 0, &r));
    assert_ok(mv_share_scan(h, 0, &r));
    assert_ok(mv_workload_wait(h, a, 60000, NULL));
    assert_ok(mv_share_scan(h, 0, &r));
    s = stats(h);
    assert_true(s.scan_volatile > 0);
    verify_both(h, a, b);
    mv_host_destroy(h);
}

/* The first of several hosts given the same pages sets `want` (it shared
 * and freed some); every later one must share and free exactly as much. */
static void expect_same_sharing(const struct mv_share_stats *s, struct mv_share_stats *want,
                                bool first)
{
    if (first) {
        assert_true(s->saved_pages > 1000 && s->zero_reclaimed > 0);
        *want = *s;
        return;
    }
    assert_int_equal(s->saved_pages, want->saved_pages);
    assert_int_equal(s->shared_frames, want->shared_frames);
    assert_int_equal(s->zero_reclaimed, want->zero_reclaimed);
}

/*
 * The scanner copies pages out of the machine memory to read them, and
 * apply copies them again once unmapped.  When a copy fails they are read
 * in place instead: the same pages are shared and freed as on a host where
 * nothing fails (round 0, the reference), the fallbacks are counted, and
 * every byte stays.  Round 1: every copy fails.  Round 2: one copy in
 * three, re-armed after each step of 600 pages, so that in some blocks the
 * scan's copy works and apply's fails, and in others the other way round.
 */
static void scanner_reads_in_place_when_copies_fail(void **state)
{
    struct mv_share_stats want;

    (void)state;
    for (int round = 0; round < 3; round++) {
        struct mv_host_config c;
        mv_host *h;

        tu_host_config(&c, 4 * GiB);
        c.share_read = MV_SHARE_READ_COPY;
        assert_ok(mv_host_create(&c, &h));
        uint32_t a = domain1(h, "a", 32 * MiB, 1), b = domain1(h, "b", 32 * MiB, 1);
        struct mv_scan_result r;
        struct mv_share_stats s;
        unsigned step = 0;

        fill(h, a, 4096, 3000);
        fill(h, b, 4096, 3000);
        /* One whole pass, in steps. */
        do {
            if (round == 1)
                mv__os_inject(MV_OS_READ, EIO, 0, UINT_MAX);
            else if (round == 2)
                mv__os_inject(MV_OS_READ, EIO, step++ % 3, 1);
            assert_ok(mv_share_scan(h, 600, &r));
            mv__os_inject(MV_OS_READ, 0, 0, 0);
            assert_ok(mv_share_stats(h, &s));
        } while (s.scan_passes == 0);
        s = stats(h);
        if (round == 0)
            assert_int_equal(s.read_fallbacks, 0);
        else
            assert_true(s.read_fallbacks > (round == 1 ? 8u : 2u));
        expect_same_sharing(&s, &want, round == 0);
        assert_ok(mv_share_audit(h));
        verify_both(h, a, b);
        mv_host_destroy(h);
    }
}

/*
 * Either way of reading pages (mv_host_config.share_read) shares the same
 * pages, frees the same zero pages and keeps every byte.  Copies fail
 * throughout each scan: a host that reads in place makes none (no
 * fallback), one that copies falls back every time, so a host that read the
 * other way than it says fails here.  AUTO takes one of the two by what it
 * measured and says so, without taking failures injected for guest memory;
 * a way that is neither is refused.
 */
static void share_reads_alike_either_way(void **state)
{
    static const enum mv_share_read reads[] = { MV_SHARE_READ_COPY, MV_SHARE_READ_IN_PLACE,
                                                MV_SHARE_READ_AUTO };
    struct mv_share_stats want = { 0 };
    struct mv_host_config c;
    mv_host *h;

    (void)state;
    /* The process's first AUTO host measures with the kernel's own calls:
     * failures injected for guest memory are left to what they are for. */
    tu_host_config(&c, 4 * GiB);
    mv__os_inject(MV_OS_READ, EIO, 0, 1);
    mv__os_inject(MV_OS_WRITE, EIO, 0, 1);
    assert_ok(mv_host_create(&c, &h));
    assert_int_equal(mv__os_injection_left(MV_OS_READ), 1);
    assert_int_equal(mv__os_injection_left(MV_OS_WRITE), 1);
    mv__os_inject(MV_OS_READ, 0, 0, 0);
    mv__os_inject(MV_OS_WRITE, 0, 0, 0);
    mv_host_destroy(h);
    for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
        struct mv_scan_result r;
        struct mv_share_stats s;
        uint32_t a, b;

        tu_host_config(&c, 4 * GiB);
        c.share_read = reads[i];
        assert_ok(mv_host_create(&c, &h));
        a = domain1(h, "a", 32 * MiB, 1);
        b = domain1(h, "b", 32 * MiB, 1);
        fill(h, a, 4096, 3000);
        fill(h, b, 4096, 3000);
        mv__os_inject(MV_OS_READ, EIO, 0, UINT_MAX);
        assert_ok(mv_share_scan(h, 0, &r));
        mv__os_inject(MV_OS_READ, 0, 0, 0);
        s = stats(h);
        if (reads[i] == MV_SHARE_READ_AUTO) {
            assert_true(s.read_mode == MV_SHARE_READ_COPY || s.read_mode == MV_SHARE_READ_IN_PLACE);
            assert_true(s.read_in_place_ns > 0 && s.read_copy_ns > 0);
            assert_int_equal(s.read_mode == MV_SHARE_READ_IN_PLACE,
                             s.read_in_place_ns <= s.read_copy_ns);
        } else {
            assert_int_equal(s.read_mode, reads[i]);
            assert_int_equal(s.read_in_place_ns, 0);
            assert_int_equal(s.read_copy_ns, 0);
        }
        if (s.read_mode == MV_SHARE_READ_IN_PLACE)
            assert_int_equal(s.read_fallbacks, 0);
        else
            assert_true(s.read_fallbacks > 8);
        expect_same_sharing(&s, &want, i == 0);
        assert_ok(mv_share_audit(h));
        verify_both(h, a, b);
        mv_host_destroy(h);
    }
    tu_host_config(&c, 4 * GiB);
    c.share_read = (enum mv_share_read)3;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "share_read"));
    assert_string_equal(mv_share_read_name(MV_SHARE_READ_AUTO), "auto");
    assert_string_equal(mv_share_read_name(MV_SHARE_READ_COPY), "copy");
    assert_string_equal(mv_share_read_name(MV_SHARE_READ_IN_PLACE), "in-place");
}

/*
 * The scanner's candidate table starts small and doubles during a pass as
 * candidates arrive, keeping those it holds; zero pages take no room in it.
 * z's 8192 zero pages are freed and a's non-zero pages become candidates:
 * the table ends at eight to sixteen slots a candidate, far below the eight
 * a populated page it once took.  b (scanned first, empty then) is then
 * given a's contents, and a step over b alone shares every page of b with
 * a's: it could not had a doubling forgotten candidates remembered before
 * it.  Matched candidates leave the table: it does not grow again.
 */
static void candidate_table_grows_with_candidates_keeping_them(void **state)
{
    mv_host *h = tu_host();
    uint32_t b = domain1(h, "b", 32 * MiB, 1), a = domain1(h, "a", 32 * MiB, 1);
    uint32_t z = domain1(h, "z", 32 * MiB, 1);
    struct mv_scan_result r;
    struct mv_share_stats s;
    uint64_t slots, candidates, populated = 0, size;
    uint8_t *rz;

    (void)state;
    s = stats(h);
    assert_int_equal(s.scan_candidate_slots, 4096);
    assert_ok(mv_domain_ram(h, z, (void **)&rz, &size));
    for (uint64_t g = 0; g < size / MV_PAGE_SIZE; g++)
        tu_guest_fill_page(rz + g * MV_PAGE_SIZE, 0);
    fill(h, a, 4096, 3000);
    populated = info(h, a).populated_pages + info(h, z).populated_pages;
    assert_ok(mv_share_scan(h, 0, &r));
    assert_int_equal(info(h, z).populated_pages, 0);
    /* a's pages are all distinct: each stays private, a candidate. */
    candidates = info(h, a).populated_pages;
    assert_int_equal(info(h, a).shared_pages, 0);
    assert_true(candidates > 1500);
    s = stats(h);
    slots = s.scan_candidate_slots;
    assert_true(slots >= 8 * candidates && slots <= 16 * candidates);
    assert_true(slots < 8 * populated);
    assert_int_equal(s.saved_pages, 0);
    fill(h, b, 4096, 3000);
    assert_ok(mv_share_scan(h, info(h, b).populated_pages, &r));
    s = stats(h);
    assert_int_equal(s.scan_candidate_slots, slots);
    assert_int_equal(info(h, b).shared_pages, candidates);
    assert_int_equal(info(h, a).shared_pages, candidates);
    assert_int_equal(s.saved_pages, candidates);
    assert_ok(mv_share_audit(h));
    verify_both(h, a, b);
    tu_verify(h, z);
    mv_host_destroy(h);
}

/*
 * Two equal domains of 16,384 distinct pages: one pass shares every page.
 * With these bytes, nine of the first domain's candidates fall in one set
 * of the table at eight slots a candidate; a set found full makes the table
 * double rather than forget one (it left one page of the 16,384 private).
 */
static uint64_t distinct_word(uint64_t g, size_t i)
{
    return ((g * 0x9e3779b97f4a7c15ull) ^ i) | 1;
}

static void two_equal_domains_share_every_page_in_one_pass(void **state)
{
    mv_host *h = tu_host();
    uint32_t d[2] = { domain1(h, "a", 64 * MiB, 1), domain1(h, "b", 64 * MiB, 1) };
    const uint64_t pages = 64 * MiB / MV_PAGE_SIZE;
    struct mv_scan_result r;
    struct mv_share_stats s;

    (void)state;
    for (unsigned k = 0; k < 2; k++) {
        uint64_t size, *w;

        assert_ok(mv_domain_ram(h, d[k], (void **)&w, &size));
        for (uint64_t g = 0; g < pages; g++)
            for (size_t i = 0; i < MV_PAGE_SIZE / 8; i++)
                w[g * (MV_PAGE_SIZE / 8) + i] = distinct_word(g, i);
    }
    assert_ok(mv_share_scan(h, 0, &r));
    s = stats(h);
    assert_int_equal(s.saved_pages, pages);
    assert_int_equal(info(h, d[0]).shared_pages, pages);
    assert_int_equal(info(h, d[1]).shared_pages, pages);
    assert_ok(mv_share_audit(h));
    for (unsigned k = 0; k < 2; k++) {
        uint64_t want[MV_PAGE_SIZE / 8], page[MV_PAGE_SIZE / 8];

        for (uint64_t g = 0; g < pages; g += 61) {
            for (size_t i = 0; i < MV_PAGE_SIZE / 8; i++)
                want[i] = distinct_word(g, i);
            assert_ok(mv_domain_read_page(h, d[k], g, page));
            assert_memory_equal(page, want, MV_PAGE_SIZE);
        }
        assert_ok(mv_domain_audit(h, d[k]));
    }
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The warnings whose message holds `needle`, counted. */
struct warnings {
    const char *needle;
    unsigned count;
};

static void count_warnings(void *opaque, enum mv_log_level level, const char *message)
{
    struct warnings *w = opaque;

    if (level == MV_LOG_WARN && strstr(message, w->needle))
        __atomic_fetch_add(&w->count, 1, __ATOMIC_RELAXED);
}

/* A host of `budget` bytes whose log counts into w. */
static mv_host *host_counting(struct warnings *w, uint64_t budget)
{
    struct mv_host_config c;
    mv_host *h;

    tu_host_config(&c, budget);
    c.log = count_warnings;
    c.log_opaque = w;
    assert_ok(mv_host_create(&c, &h));
    return h;
}

/*
 * No memory to grow the candidate table: the pass goes on with the table
 * it has, says so once (not at every insert that would grow it), and keeps
 * every byte; the next pass grows it, and passes until one shares nothing
 * more share every page of b with a's.  Every allocation of the pass under
 * test fails (the scanner's other tables too: it goes on without them).
 */
static void candidate_table_without_memory_stays_and_says_so(void **state)
{
    struct warnings warnings = { "candidate table", 0 };
    mv_host *h = host_counting(&warnings, 4 * GiB);
    struct mv_scan_result r;
    struct mv_share_stats s;
    uint32_t a, b;

    (void)state;
    b = domain1(h, "b", 32 * MiB, 1);
    a = domain1(h, "a", 32 * MiB, 1);
    fill(h, a, 4096, 3000);
    mv__os_inject(MV_OS_ALLOC, ENOMEM, 0, UINT_MAX);
    assert_ok(mv_share_scan(h, 0, &r));
    mv__os_inject(MV_OS_ALLOC, 0, 0, 0);
    assert_int_equal(warnings.count, 1);
    s = stats(h);
    assert_int_equal(s.scan_candidate_slots, 4096);
    assert_int_equal(s.saved_pages, 0);
    tu_verify(h, a);
    fill(h, b, 4096, 3000);
    do
        assert_ok(mv_share_scan(h, 0, &r));
    while (r.pages_shared);
    s = stats(h);
    assert_true(s.scan_candidate_slots > 4096);
    assert_int_equal(warnings.count, 1);
    /* b holds only a's contents: none of its pages stays private. */
    assert_true(info(h, b).shared_pages > 1500);
    assert_int_equal(info(h, b).populated_pages, 0);
    assert_int_equal(s.saved_pages, info(h, b).shared_pages);
    assert_ok(mv_share_audit(h));
    verify_both(h, a, b);
    mv_host_destroy(h);
}

/* Three copies of a content side by side and nowhere else: the first is
 * remembered, the second inserted, and the third, which finds no candidate
 * left and nothing in the index yet, is inserted with it and matched to its
 * frame.  One pass shares all three (it left the third to the next). */
static void three_copies_side_by_side_share_in_one_pass(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 4 * MiB, 1);
    struct mv_scan_result r;
    struct mv_share_stats s;
    uint8_t *ra, page[MV_PAGE_SIZE];
    uint64_t size;

    (void)state;
    assert_ok(mv_domain_ram(h, a, (void **)&ra, &size));
    for (uint64_t g = 4; g < 7; g++)
        tu_guest_fill_page(ra + g * MV_PAGE_SIZE, 0x5a);
    tu_guest_fill_page(ra + 20 * MV_PAGE_SIZE, 0x77); /* unique */
    assert_ok(mv_share_scan(h, 0, &r));
    s = stats(h);
    assert_int_equal(s.shared_frames, 1);
    assert_int_equal(s.shared_refs, 3);
    assert_int_equal(s.saved_pages, 2);
    /* Every byte of every page, read the way the oracle reads pages and
     * as the guest reads them. */
    for (uint64_t g = 0; g < 4 * MiB / MV_PAGE_SIZE; g++) {
        uint8_t want = g >= 4 && g < 7 ? 0x5a : g == 20 ? 0x77 : 0;

        assert_ok(mv_domain_read_page(h, a, g, page));
        for (size_t i = 0; i < MV_PAGE_SIZE; i++)
            assert_int_equal(page[i], want);
        assert_int_equal(tu_guest_load(ra + g * MV_PAGE_SIZE + 99), want);
        if (want == 0x5a)
            assert_int_equal(tu_page_type(h, a, g), MV_PAGE_SHARED);
    }
    assert_int_equal(tu_page_type(h, a, 20), MV_PAGE_RAM);
    assert_ok(mv_share_audit(h));
    assert_ok(mv_domain_audit(h, a));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Three copies of a content in one block of b, one in a: the scanner's
 * candidates make two of b's pages inserts of the same pass.  They end on
 * one frame: a content is never held by two shared frames. */
static void equal_pages_of_a_block_share_one_frame(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 4 * MiB, 1), b = domain1(h, "b", 4 * MiB, 1);
    uint8_t *ra, *rb, page[MV_PAGE_SIZE];
    struct mv_share_stats s;
    uint64_t size;

    (void)state;
    assert_ok(mv_domain_ram(h, a, (void **)&ra, &size));
    assert_ok(mv_domain_ram(h, b, (void **)&rb, &size));
    tu_guest_fill_page(ra + 5 * MV_PAGE_SIZE, 0x5a);
    for (uint64_t g = 10; g < 13; g++)
        tu_guest_fill_page(rb + g * MV_PAGE_SIZE, 0x5a);
    tu_guest_fill_page(rb + 20 * MV_PAGE_SIZE, 0x77); /* unique */
    assert_ok(mv_share_scan(h, 0, NULL));
    s = stats(h);
    assert_int_equal(s.shared_frames, 1);
    assert_int_equal(s.shared_refs, 4);
    assert_int_equal(s.saved_pages, 3);
    assert_int_equal(tu_page_type(h, a, 5), MV_PAGE_SHARED);
    for (uint64_t g = 10; g < 13; g++) {
        assert_int_equal(tu_page_type(h, b, g), MV_PAGE_SHARED);
        assert_ok(mv_domain_read_page(h, b, g, page));
        assert_int_equal(page[0], 0x5a);
        assert_int_equal(page[MV_PAGE_SIZE - 1], 0x5a);
        assert_int_equal(tu_guest_load(rb + g * MV_PAGE_SIZE + 77), 0x5a);
    }
    assert_int_equal(tu_page_type(h, b, 20), MV_PAGE_RAM);
    assert_int_equal(tu_guest_load(rb + 20 * MV_PAGE_SIZE), 0x77);
    /* A write breaks one copy only. */
    tu_guest_store(rb + 11 * MV_PAGE_SIZE, 1);
    assert_int_equal(tu_guest_load(rb + 10 * MV_PAGE_SIZE), 0x5a);
    assert_int_equal(tu_guest_load(ra + 5 * MV_PAGE_SIZE), 0x5a);
    assert_int_equal(tu_guest_load(rb + 11 * MV_PAGE_SIZE), 1);
    assert_ok(mv_share_audit(h));
    assert_ok(mv_domain_audit(h, a));
    assert_ok(mv_domain_audit(h, b));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The same scene with each kind of system call failing at each call in
 * turn: every page keeps its bytes, the audits pass, and a scan without
 * failures ends on one frame. */
static void equal_pages_of_a_block_survive_failures(void **state)
{
    static const enum mv__os_op ops[] = { MV_OS_MMAP, MV_OS_ZAP, MV_OS_PUNCH, MV_OS_WRITE,
                                          MV_OS_UFFD_CONTINUE };
    unsigned failed = 0;

    (void)state;
    for (size_t k = 0; k < MV_ARRAY_SIZE(ops); k++) {
        for (unsigned n = 0; n < 64; n++) {
            mv_host *h = tu_host();
            uint32_t a = domain1(h, "a", 4 * MiB, 1), b = domain1(h, "b", 4 * MiB, 1);
            uint8_t *ra, *rb, page[MV_PAGE_SIZE];
            struct mv_share_stats s;
            uint64_t size;
            unsigned left;
            int rc;

            assert_ok(mv_domain_ram(h, a, (void **)&ra, &size));
            assert_ok(mv_domain_ram(h, b, (void **)&rb, &size));
            tu_guest_fill_page(ra + 5 * MV_PAGE_SIZE, 0x5a);
            for (uint64_t g = 10; g < 13; g++)
                tu_guest_fill_page(rb + g * MV_PAGE_SIZE, 0x5a);
            mv__os_inject(ops[k], EIO, n, 1);
            rc = mv_share_scan(h, 0, NULL);
            left = mv__os_injection_left(ops[k]);
            mv__os_inject(ops[k], 0, 0, 0);
            if (rc < 0)
                assert_true(mv_last_error()[0] != '\0');
            failed += left == 0;
            for (uint64_t g = 10; g < 13; g++) {
                assert_ok(mv_domain_read_page(h, b, g, page));
                assert_int_equal(page[0], 0x5a);
                assert_int_equal(tu_guest_load(rb + g * MV_PAGE_SIZE + 4095), 0x5a);
            }
            assert_int_equal(tu_guest_load(ra + 5 * MV_PAGE_SIZE + 9), 0x5a);
            assert_ok(mv_share_audit(h));
            assert_ok(mv_domain_audit(h, a));
            assert_ok(mv_domain_audit(h, b));
            assert_ok(mv_host_audit(h));
            assert_ok(mv_share_scan(h, 0, NULL));
            assert_ok(mv_share_scan(h, 0, NULL));
            s = stats(h);
            assert_int_equal(s.shared_frames, 1);
            assert_int_equal(s.saved_pages, 3);
            assert_ok(mv_share_audit(h));
            assert_ok(mv_host_audit(h));
            mv_host_destroy(h);
            if (left)
                break; /* no call of this kind was left to fail */
        }
    }
    assert_true(failed >= 5);
}

/*
 * Pages side by side that match frames not side by side (three copies of X
 * in c, X's frame made by a and b, so three mappings of one frame) are one
 * stretch: a mapping per frame run, but one write protection, one search
 * for racing writes, one punch.
 * A failure at any of those, or at the second or third mapping, leaves all
 * three private and intact (never one shared and one not); the next scan
 * shares them.
 */
static void a_stretch_of_matches_survives_failures(void **state)
{
    static const enum mv__os_op ops[] = { MV_OS_MMAP, MV_OS_UFFD_REGISTER,
                                          MV_OS_UFFD_WRITEPROTECT, MV_OS_PUNCH };
    static const uint8_t fills[3] = { 0x11, 0x11, 0x11 };
    unsigned kept_private[MV_ARRAY_SIZE(ops)] = { 0 };

    (void)state;
    for (size_t k = 0; k < MV_ARRAY_SIZE(ops); k++) {
        for (unsigned n = 0; n < 8; n++) {
            mv_host *h = tu_host();
            uint32_t a = domain1(h, "a", 4 * MiB, 1), b = domain1(h, "b", 4 * MiB, 1);
            uint32_t c = domain1(h, "c", 4 * MiB, 1);
            uint8_t *ra, *rb, *rc, page[MV_PAGE_SIZE];
            struct mv_share_stats st;
            uint64_t size;
            unsigned left, private = 0;

            assert_ok(mv_domain_ram(h, a, (void **)&ra, &size));
            assert_ok(mv_domain_ram(h, b, (void **)&rb, &size));
            assert_ok(mv_domain_ram(h, c, (void **)&rc, &size));
            tu_guest_fill_page(ra + 100 * MV_PAGE_SIZE, 0x11);
            tu_guest_fill_page(ra + 101 * MV_PAGE_SIZE, 0x22);
            tu_guest_fill_page(rb + 200 * MV_PAGE_SIZE, 0x11);
            tu_guest_fill_page(rb + 201 * MV_PAGE_SIZE, 0x22);
            assert_ok(mv_share_scan(h, 0, NULL));
            assert_int_equal(stats(h).shared_frames, 2);
            assert_int_equal(stats(h).shared_refs, 4);
            for (uint64_t g = 10; g < 13; g++)
                tu_guest_fill_page(rc + g * MV_PAGE_SIZE, fills[g - 10]);
            mv__os_inject(ops[k], EIO, n, 1);
            (void)mv_share_scan(h, 0, NULL);
            left = mv__os_injection_left(ops[k]);
            mv__os_inject(ops[k], 0, 0, 0);
            for (uint64_t g = 10; g < 13; g++) {
                assert_ok(mv_domain_read_page(h, c, g, page));
                for (size_t i = 0; i < MV_PAGE_SIZE; i++)
                    assert_int_equal(page[i], fills[g - 10]);
                assert_int_equal(tu_guest_load(rc + g * MV_PAGE_SIZE + 123), fills[g - 10]);
                private += tu_page_type(h, c, g) == MV_PAGE_RAM;
            }
            /* All three or none: a failure in the stretch undoes all of it. */
            assert_true(private == 0 || private == 3);
            kept_private[k] += left == 0 && private == 3;
            assert_ok(mv_share_audit(h));
            assert_ok(mv_domain_audit(h, c));
            assert_ok(mv_host_audit(h));
            assert_ok(mv_share_scan(h, 0, NULL));
            st = stats(h);
            assert_int_equal(st.shared_frames, 2);
            assert_int_equal(st.shared_refs, 7);
            assert_int_equal(st.saved_pages, 5);
            for (uint64_t g = 10; g < 13; g++) {
                assert_int_equal(tu_page_type(h, c, g), MV_PAGE_SHARED);
                assert_int_equal(tu_guest_load(rc + g * MV_PAGE_SIZE + 7), fills[g - 10]);
            }
            /* A write breaks one of the three only. */
            tu_guest_store(rc + 11 * MV_PAGE_SIZE, 0x33);
            assert_int_equal(tu_guest_load(rc + 11 * MV_PAGE_SIZE), 0x33);
            assert_int_equal(tu_guest_load(rc + 11 * MV_PAGE_SIZE + 1), 0x11);
            assert_int_equal(tu_guest_load(rc + 10 * MV_PAGE_SIZE), 0x11);
            assert_int_equal(tu_guest_load(rc + 12 * MV_PAGE_SIZE), 0x11);
            assert_int_equal(tu_guest_load(ra + 100 * MV_PAGE_SIZE), 0x11);
            assert_ok(mv_share_audit(h));
            assert_ok(mv_host_audit(h));
            mv_host_destroy(h);
            if (left)
                break; /* no call of this kind was left to fail */
        }
    }
    /* Each operation failed in the stretch at least once (others failed
     * elsewhere: the punches of zero pages around it), and the mapping at
     * each of the stretch's three frames runs. */
    for (size_t k = 0; k < MV_ARRAY_SIZE(ops); k++) {
        /* Domains whose shared pages the kernel copies are not protected. */
        if (ops[k] == MV_OS_UFFD_WRITEPROTECT && getenv("MV_TEST_KERNEL_COW"))
            continue;
        assert_true(kept_private[k] >= 1);
    }
    assert_int_equal(kept_private[0], 3);
}

/* Hinted ranges are shared by the next step without a scan of the rest. */
static void hints_share_first(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 16 * MiB, 1), b = domain1(h, "b", 16 * MiB, 1);
    struct mv_scan_result r;
    struct mv_share_stats s;

    (void)state;
    fill(h, a, 1024, 3000);
    fill(h, b, 1024, 3000);
    assert_err(mv_share_hint(h, a, 0, 1024, 0), -EINVAL);
    assert_err(mv_share_hint(h, a, 4000, 1024, 7), -EINVAL);
    assert_ok(mv_share_hint(h, a, 0, 1024, 7));
    assert_int_equal(stats(h).hints_pending, 1); /* one range: nothing to pair */
    assert_ok(mv_share_hint(h, b, 0, 1024, 7));
    assert_ok(mv_share_scan(h, 1, &r)); /* hints, then one block at most */
    assert_int_equal(r.hinted_pages, 2048);
    s = stats(h);
    assert_int_equal(s.hints_pending, 0);
    assert_true(s.saved_pages > 900);
    assert_int_equal(info(h, b).shared_pages, s.saved_pages);
    verify_both(h, a, b);
    mv_host_destroy(h);
}

/* `gone` is destroyed; `survivor`, the last mapping of what they shared,
 * writes `pages` pages (takeovers), and when it goes too, no shared frame is
 * left. */
static void survivor_takes_over(mv_host *h, uint32_t gone, uint32_t survivor, uint64_t pages)
{
    struct mv_share_stats s;

    assert_ok(mv_domain_destroy(h, gone));
    tu_verify(h, survivor);
    fill(h, survivor, 16384, pages);
    assert_true(info(h, survivor).cow_takeovers > 0);
    tu_verify(h, survivor);
    assert_ok(mv_domain_destroy(h, survivor));
    s = stats(h);
    assert_int_equal(s.shared_frames, 0);
    assert_int_equal(s.shared_refs, 0);
    assert_int_equal(s.clone_pending_frames, 0);
    assert_ok(mv_host_audit(h));
}

/* A clone shares every populated page from the first instant; each side's
 * writes stay its own. */
static void clone_shares_until_written(void **state)
{
    mv_host *h = tu_host();
    uint32_t src = domain1(h, "src", 128 * MiB, 2), c = 0;
    uint64_t populated;
    struct mv_share_stats s;
    struct mv_domain_info ci;

    (void)state;
    fill(h, src, 16384, 20000);
    assert_int_equal(mv_guest_balloon(h, src, 128 * MiB - 4 * MV_PAGE_SIZE), 4);
    populated = info(h, src).populated_pages;
    assert_err(mv_domain_clone(h, src, "c", &c), -EBUSY);
    assert_ok(mv_domain_pause(h, src));
    assert_ok(mv_domain_clone(h, src, "c", &c));
    ci = info(h, c);
    assert_int_equal(ci.shared_pages, populated);
    assert_int_equal(ci.populated_pages, 0);
    assert_int_equal(ci.ballooned_pages, 4);
    assert_int_equal(info(h, src).shared_pages, populated);
    s = stats(h);
    assert_int_equal(s.saved_pages, populated);
    assert_int_equal(s.shared_frames, populated);
    assert_err(mv_domain_clone(h, src, "c", &c), -EEXIST);
    assert_ok(mv_domain_unpause(h, src));
    verify_both(h, src, c);
    /* Both write; then a clone of the clone. */
    fill(h, src, 16384, 5000);
    fill(h, c, 8192, 5000);
    /* Statistics count the kernel's copies once settled. */
    assert_ok(mv_share_settle(h, c));
    assert_true(info(h, c).cow_breaks > 1000);
    if (getenv("MV_TEST_KERNEL_COW"))
        assert_true(info(h, c).cow_kernel_copies > 1000);
    verify_both(h, src, c);
    {
        uint32_t cc;

        assert_ok(mv_domain_pause(h, c));
        assert_ok(mv_domain_clone(h, c, "cc", &cc));
        assert_ok(mv_domain_unpause(h, c));
        fill(h, cc, 16384, 3000);
        tu_verify(h, cc);
        assert_ok(mv_domain_destroy(h, cc));
    }
    survivor_takes_over(h, src, c, 5000);
    mv_host_destroy(h);
}

/* A clone leaves the frames it adopts pending, without records, until
 * something looks at them; handles, reads, writes, a clone of either side,
 * the audit and destroys in either order must find them shared all the
 * same, and freed when neither side maps them. */
static void clone_frames_pending_until_touched(void **state)
{
    mv_host *h = tu_host();
    uint32_t src = domain1(h, "src", 64 * MiB, 2), c, cc;
    mv_share_handle hs, hc;
    uint64_t populated, before, g, page[MV_PAGE_SIZE / 8], other[MV_PAGE_SIZE / 8];
    struct mv_share_stats s;
    enum mv_page_type t;

    (void)state;
    fill(h, src, 16384, 12000);
    /* Shared before the clone: those the clone maps with records. */
    assert_true(mv_share_make_ro_and_share(h, src, 0, 1024, NULL) >= 0);
    populated = info(h, src).populated_pages;
    assert_true(populated > 5000);
    before = stats(h).shared_frames;
    c = clone_running(h, src);
    s = stats(h);
    assert_int_equal(s.clone_pending_frames, populated);
    assert_int_equal(s.shared_frames, before + populated);
    assert_ok(mv_share_audit(h));
    /* A handle names the frame both sides map; reading it is the frame's. */
    for (g = 2048; g < 16384; g++) {
        assert_ok(mv_domain_page_type(h, c, g, &t));
        if (t == MV_PAGE_SHARED)
            break;
    }
    assert_true(g < 16384);
    assert_ok(mv_share_nominate(h, c, g, &hc));
    assert_ok(mv_share_nominate(h, src, g, &hs));
    assert_int_equal(hs, hc);
    assert_ok(mv_domain_read_page(h, c, g, page));
    assert_ok(mv_domain_read_page(h, src, g, other));
    assert_memory_equal(page, other, MV_PAGE_SIZE);
    assert_true(stats(h).clone_pending_frames < populated);
    assert_ok(mv_share_audit(h));
    /* Writes on both sides, then a clone of the clone while frames are
     * still pending: the second clone writes them out first. */
    fill(h, c, 16384, 1500);
    fill(h, src, 16384, 1500);
    verify_both(h, src, c);
    assert_true(stats(h).clone_pending_frames > 0);
    assert_ok(mv_domain_pause(h, c));
    assert_ok(mv_domain_clone(h, c, "cc", &cc));
    assert_ok(mv_domain_unpause(h, c));
    assert_ok(mv_share_audit(h));
    fill(h, cc, 16384, 1500);
    tu_verify(h, cc);
    /* The clone's own pending frames go when cc does; the source's first
     * clone keeps its frames when the source goes, and takes them over. */
    assert_ok(mv_domain_destroy(h, cc));
    assert_ok(mv_share_audit(h));
    survivor_takes_over(h, src, c, 3000);
    mv_host_destroy(h);
}

/* The clone writes no per-frame bookkeeping, whatever the heap holds: the
 * adopted region's frame records must not be cleared inside the clone.  The
 * test puts the heap in the state that once made them so: large blocks
 * served from the heap (glibc does that by itself once a large block has
 * been freed), one such block freed and resident, and a fork() just before
 * the clone, after which every resident heap page takes a fault when first
 * written.  Clearing the records there would cost a fault per page of them. */
static void clone_clears_no_frame_records(void **state)
{
    /* 56 bytes a frame record */
    const uint64_t pages = 32768, record_pages = pages * 56 / MV_PAGE_SIZE;
    mv_host *h;
    uint32_t src, c;
    struct rusage before, after;
    uint8_t *block;
    pid_t child;
    int status;

    (void)state;
    (void)mallopt(M_MMAP_THRESHOLD, 32 << 20);
    (void)mallopt(M_TRIM_THRESHOLD, 256 << 20);
    h = tu_host();
    src = domain1(h, "src", pages * MV_PAGE_SIZE, 1);
    fill(h, src, pages, pages);
    assert_int_equal(info(h, src).populated_pages, pages);
    block = malloc(16 << 20);
    assert_non_null(block);
    memset(block, 0x5a, 16 << 20);
    free(block);
    assert_ok(mv_domain_pause(h, src));
    child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_ok(getrusage(RUSAGE_SELF, &before));
    assert_ok(mv_domain_clone(h, src, "c", &c));
    assert_ok(getrusage(RUSAGE_SELF, &after));
    print_message("clone of %llu pages: %ld minor faults (records: %llu pages)\n",
                  (unsigned long long)pages, after.ru_minflt - before.ru_minflt,
                  (unsigned long long)record_pages);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* (The sanitizers bring their own allocator, and fault in their own
     * shadow of every mapping: only glibc's heap is what this is about.) */
    assert_true((uint64_t)(after.ru_minflt - before.ru_minflt) < record_pages / 2);
#endif
    assert_ok(mv_domain_unpause(h, src));
    assert_int_equal(stats(h).clone_pending_frames, pages);
    verify_both(h, src, c);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
    (void)mallopt(M_MMAP_THRESHOLD, 128 << 10);
    (void)mallopt(M_TRIM_THRESHOLD, 128 << 10);
}

/* Destroys of both sides of a clone nothing touched, in each order: the
 * survivor maps the pending frames alone (a write takes its frame over, no
 * memory needed), and when it goes too they are freed. */
static void clone_destroyed_untouched(void **state)
{
    mv_host *h = tu_host();
    struct mv_host_stats hs;

    (void)state;
    for (int order = 0; order < 2; order++) {
        uint32_t src = domain1(h, "src", 32 * MiB, 1), c, survivor;
        uint64_t populated;
        struct mv_share_stats s;

        fill(h, src, 8192, 6000);
        populated = info(h, src).populated_pages;
        c = clone_running(h, src);
        assert_ok(mv_domain_destroy(h, order == 0 ? c : src));
        survivor = order == 0 ? src : c;
        s = stats(h);
        assert_int_equal(s.clone_pending_frames, populated);
        assert_int_equal(s.shared_frames, populated);
        assert_int_equal(s.saved_pages, 0);
        assert_int_equal(info(h, survivor).shared_pages, populated);
        tu_verify(h, survivor);
        /* A few writes: most frames are still pending when it goes. */
        fill(h, survivor, 8192, 20);
        assert_true(info(h, survivor).cow_takeovers > 0);
        assert_int_equal(info(h, survivor).cow_takeovers,
                         info(h, survivor).cow_breaks);
        tu_verify(h, survivor);
        assert_true(stats(h).clone_pending_frames > populated / 2);
        assert_ok(mv_domain_destroy(h, survivor));
        s = stats(h);
        assert_int_equal(s.shared_frames, 0);
        assert_int_equal(s.clone_pending_frames, 0);
        assert_ok(mv_host_stats(h, &hs));
        assert_int_equal(hs.populated_pages, 0);
        assert_ok(mv_host_audit(h));
    }
    mv_host_destroy(h);
}

/* CoW breaks need memory: the clone's target bounds them, and the PoD
 * policy decides when it is spent. */
static void cow_breaks_follow_pod_policy(void **state)
{
    mv_host *h = tu_host();
    uint32_t src = tu_domain_with(h, "src", 32 * MiB, 32 * MiB, 1, MV_POD_CRASH, 0), c;
    struct mv_domain_info ci;
    struct mv_workload_config w;
    struct mv_workload_status st;

    (void)state;
    fill(h, src, 8192, 8000);
    c = clone_running(h, src);
    assert_ok(mv_domain_set_target(h, c, 4 * MiB));
    ci = info(h, c);
    assert_int_equal(ci.cow_claimable, 1024);
    assert_int_equal(ci.cow_shortfall, ci.shared_pages - 1024);
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed = SEED;
    w.working_set_pages = 8192;
    w.max_pages = 8000;
    st = tu_run(h, c, &w);
    assert_int_equal(st.crashed, 1);
    ci = info(h, c);
    assert_int_equal(ci.state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(ci.crash_reason, "shared"));
    /* The source never noticed. */
    tu_verify(h, src);
    assert_ok(mv_domain_destroy(h, c));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Excluded pages are never shared nor scanned; shared ones are unshared
 * first. */
static void exclude_keeps_pages_private(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 16 * MiB, 1), b = domain1(h, "b", 16 * MiB, 1);
    uint64_t pages = 16 * MiB / MV_PAGE_SIZE;
    mv_share_handle hd;

    (void)state;
    fill(h, a, 512, 2000);
    fill(h, b, 512, 2000);
    assert_ok(mv_share_make_ro_and_share(h, a, 0, pages, NULL));
    assert_ok(mv_share_make_ro_and_share(h, b, 0, pages, NULL));
    assert_true(info(h, b).shared_pages > 400);
    assert_ok(mv_share_exclude(h, b, 0, 256));
    for (uint64_t g = 0; g < 256; g++)
        assert_int_not_equal(tu_page_type(h, b, g), MV_PAGE_SHARED);
    assert_int_equal(info(h, b).excluded_pages, 256);
    assert_err(mv_share_nominate(h, b, 1, &hd), -EPERM);
    assert_ok(mv_share_scan(h, 0, NULL));
    assert_ok(mv_share_make_ro_and_share(h, b, 0, 256, NULL));
    for (uint64_t g = 0; g < 256; g++)
        assert_int_not_equal(tu_page_type(h, b, g), MV_PAGE_SHARED);
    verify_both(h, a, b);
    mv_host_destroy(h);
}

/* Every bad call fails with a clear error and changes nothing. */
static void bad_calls_are_refused(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 16 * MiB, 1), b = domain1(h, "b", 16 * MiB, 1), gone;
    mv_share_handle ha = 0, hb = 0, hx;
    uint64_t g = UINT64_MAX;
    struct mv_share_stats before, after;

    (void)state;
    fill(h, a, 64, 300);
    fill(h, b, 64, 300);
    for (uint64_t i = 0; i < 64 && g == UINT64_MAX; i++)
        if (tu_page_type(h, a, i) == MV_PAGE_RAM)
            g = i;
    assert_ok(mv_share_nominate(h, a, g, &ha));
    assert_ok(mv_share_nominate(h, b, g, &hb));
    before = stats(h);
    assert_err(mv_share_nominate(h, a, 1ull << 30, &hx), -EINVAL);
    assert_err(mv_share_nominate(h, a, 4000, &hx), -EINVAL); /* PoD */
    assert_err(mv_share_nominate(h, 999, 0, &hx), -ESRCH);
    assert_err(mv_share_pages(h, a, g, ha, a, g, ha), -EINVAL);  /* itself */
    assert_err(mv_share_pages(h, a, g, ha + 1000, b, g, hb), -EINVAL); /* forged */
    assert_err(mv_share_pages(h, a, g, hb, b, g, hb), -ESTALE);  /* wrong frame */
    assert_err(mv_share_pages(h, a, 1ull << 30, ha, b, g, hb), -EINVAL);
    assert_err(mv_share_pages(h, a, g, ha, b, g + 1, hb), -ESTALE);
    assert_err(mv_share_add_to_physmap(h, a, g, ha, b, g), -EEXIST);
    assert_err(mv_share_add_to_physmap(h, a, g, ha, b, 1ull << 30), -EINVAL);
    assert_err(mv_share_unshare(h, a, 4000), -EINVAL);
    assert_err(mv_share_make_ro_and_share(h, a, 4000, 1000, NULL), -EINVAL);
    assert_err(mv_share_exclude(h, a, 0, 0), -EINVAL);
    assert_ok(mv_domain_pause(h, b));
    assert_err(mv_share_pages(h, a, g, ha, b, g, hb), -EBUSY);
    assert_err(mv_share_nominate(h, b, g, &hx), -EBUSY);
    assert_ok(mv_domain_unpause(h, b));
    after = stats(h);
    assert_int_equal(after.shared_frames, before.shared_frames);
    assert_int_equal(after.shared_refs, before.shared_refs);
    /* add_to_physmap onto an unpopulated gfn works; then the source goes. */
    assert_ok(mv_share_add_to_physmap(h, a, g, ha, b, 4000));
    assert_int_equal(tu_page_type(h, b, 4000), MV_PAGE_SHARED);
    assert_ok(mv_share_unshare(h, b, 4000));
    assert_int_equal(tu_page_type(h, b, 4000), MV_PAGE_RAM);
    gone = domain1(h, "gone", 16 * MiB, 1);
    assert_ok(mv_domain_destroy(h, gone));
    assert_err(mv_share_pages(h, gone, g, ha, b, g, hb), -ESRCH);
    assert_err(mv_domain_clone(h, gone, "x", &gone), -ESRCH);
    assert_ok(mv_share_pages(h, a, g, ha, b, g, hb));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Near the mapping limit sharing stops, says why, and nothing breaks. */
static void mapping_limit_stops_sharing(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 16 * MiB, 1), b = domain1(h, "b", 16 * MiB, 1);
    struct mv_share_stats s;

    (void)state;
    fill(h, a, 4096, 4000);
    fill(h, b, 4096, 4000);
    s = stats(h);
    mv__share_set_max_vmas(h, (unsigned)s.vma_count + 8);
    assert_ok(mv_share_scan(h, 0, NULL));
    s = stats(h);
    assert_int_equal(s.sharing_stopped, 1);
    assert_true(strstr(s.stop_reason, "max_map_count") != NULL);
    assert_true(s.vma_count <= s.max_map_count);
    verify_both(h, a, b);
    /* Writers still run (breaks never need the limit). */
    fill(h, a, 4096, 2000);
    tu_verify(h, a);
    mv_host_destroy(h);
}

/*
 * Counting the mappings fails (no descriptor left to open /proc/self/maps,
 * say): the limit holds from the last count and what sharing made since,
 * not from no mappings at all; the statistics still answer, with that
 * count; the failure is said once until a count succeeds.
 */
static void mapping_limit_holds_when_mappings_cannot_be_counted(void **state)
{
    struct warnings warnings = { "cannot count this process's mappings", 0 };
    mv_host *h = host_counting(&warnings, 256 * MiB);
    struct mv_share_stats s;
    uint64_t before, now;
    uint32_t a, b;

    (void)state;
    a = domain1(h, "a", 16 * MiB, 1);
    b = domain1(h, "b", 16 * MiB, 1);
    fill(h, a, 4096, 4000);
    fill(h, b, 4096, 4000);
    before = stats(h).vma_count;
    mv__share_set_max_vmas(h, (unsigned)before + 8);
    mv__os_inject(MV_OS_COUNT_MAPPINGS, EMFILE, 0, UINT_MAX);
    assert_ok(mv_share_scan(h, 0, NULL));
    s = stats(h);
    s = stats(h);
    mv__os_inject(MV_OS_COUNT_MAPPINGS, 0, 0, 0);
    assert_int_equal(warnings.count, 1);
    assert_int_equal(s.sharing_stopped, 1);
    assert_true(s.vma_count >= before && s.vma_count <= before + 8);
    /* Counted again: the count is the kernel's (which may have grown
     * apart from sharing: a sanitizer's allocator maps memory too), and
     * nothing more is said. */
    s = stats(h);
    assert_ok(mv__os_count_mappings(&now));
    assert_true(s.vma_count <= now + 2 && now <= s.vma_count + 2);
    assert_int_equal(warnings.count, 1);
    verify_both(h, a, b);
    assert_ok(mv_share_audit(h));
    mv_host_destroy(h);
}

/* Near the limit, CoW breaks scattered over a clone stop splitting its
 * mapping: each takes the rest of its run along, and the mappings stay put. */
static void breaks_near_the_limit_do_not_split(void **state)
{
    mv_host *h = tu_host();
    uint32_t src = domain1(h, "src", 16 * MiB, 1), c;
    uint64_t limit;
    struct mv_share_stats s;

    (void)state;
    fill(h, src, 4096, 6000);
    c = clone_running(h, src);
    s = stats(h);
    assert_int_equal(s.cow_run_unshares, 0);
    /* Room for about 20 splitting breaks, then none. */
    limit = s.vma_count + 40;
    mv__share_set_break_limit(h, limit);
    fill(h, c, 4096, 3000);
    fill(h, src, 4096, 3000);
    s = stats(h);
    assert_true(s.cow_breaks > 100);
    assert_true(s.cow_run_unshares > 0);
    assert_true(s.vma_count <= limit + 16);
    assert_true(info(h, c).shared_pages > 0);
    verify_both(h, src, c);
    assert_ok(mv_share_audit(h));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Near the limit, a break whose run the domain has no memory for splits
 * after all (while the kernel's limit allows) rather than fail the write. */
static void breaks_near_the_limit_without_memory_split(void **state)
{
    mv_host *h = tu_host();
    uint32_t src = tu_domain_with(h, "src", 16 * MiB, 16 * MiB, 1, MV_POD_CRASH, 0), c;
    struct mv_share_stats s;
    struct mv_domain_info ci;

    (void)state;
    fill(h, src, 4096, 6000);
    c = clone_running(h, src);
    assert_ok(mv_domain_set_target(h, c, 64 * MV_PAGE_SIZE));
    s = stats(h);
    mv__share_set_break_limit(h, s.vma_count);
    fill(h, c, 4096, 40); /* crashes c if a break fails */
    ci = info(h, c);
    assert_true(ci.cow_breaks >= 30);
    assert_true(ci.populated_pages <= 64);
    assert_true(stats(h).cow_run_unshares < 64);
    verify_both(h, src, c);
    assert_ok(mv_share_audit(h));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The audit holds while vCPUs write and the scanner shares: a write to a
 * shared page the kernel had unmapped passes through a write-protected copy
 * of the frame, which is not an escaped write. */
static void audit_is_exact_while_guests_run(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 4 * MiB, 1), b = domain1(h, "b", 4 * MiB, 1);
    struct mv_workload_config w;
    struct mv_scanner_config sc;
    struct mv_workload_status st;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed = SEED;
    w.duration_ms = 3000;
    w.pages_per_second = 2000;
    assert_ok(mv_workload_start(h, a, &w));
    assert_ok(mv_workload_start(h, b, &w));
    mv_scanner_config_init(&sc);
    assert_ok(mv_scanner_start(h, &sc));
    for (int i = 0; i < 100; i++) {
        assert_ok(mv_share_audit(h));
        usleep(20000);
    }
    assert_ok(mv_scanner_stop(h));
    assert_true(stats(h).cow_breaks > 0);
    assert_ok(mv_workload_wait(h, a, 60000, &st));
    assert_int_equal(st.crashed, 0);
    assert_ok(mv_workload_wait(h, b, 60000, &st));
    assert_int_equal(st.crashed, 0);
    verify_both(h, a, b);
    mv_host_destroy(h);
}

/* The dirty log sees CoW breaks and sharing, and turning it off never makes
 * a shared frame writable. */
static void logdirty_with_sharing(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain1(h, "a", 16 * MiB, 1), b = domain1(h, "b", 16 * MiB, 1);
    size_t words = mv_logdirty_words(16 * MiB / MV_PAGE_SIZE);
    uint64_t *dirty = calloc(words, 8);
    int64_t n;

    (void)state;
    fill(h, a, 256, 2000);
    fill(h, b, 256, 2000);
    assert_ok(mv_logdirty_enable(h, b));
    assert_ok(mv_share_make_ro_and_share(h, a, 0, 256, NULL));
    assert_ok(mv_share_make_ro_and_share(h, b, 0, 256, NULL));
    assert_true(info(h, b).shared_pages > 200);
    assert_ok(mv_logdirty_clean(h, b, dirty, NULL, words));
    fill(h, b, 256, 100);
    n = mv_logdirty_clean(h, b, dirty, NULL, words);
    assert_ok(n);
    assert_true(n >= 50);
    assert_ok(mv_logdirty_disable(h, b));
    fill(h, b, 256, 2000);
    verify_both(h, a, b);
    free(dirty);
    mv_host_destroy(h);
}

/*
 * A synchronous dirty-log write fault read before its gfn was shared, and
 * served after: serving it must not unprotect the shared mapping (that
 * cleared its copy-on-write protection, and the next write went to an
 * anonymous copy: lost to the domain, caught by the audit).
 */
static void stale_logdirty_fault_on_shared_gfn(void **state)
{
    mv_host *h = tu_host();
    struct mv_domain_config c;
    struct mv_domain *d;
    mv_share_handle handle;
    enum mv_page_type type;
    uint8_t page[MV_PAGE_SIZE];
    uint8_t *ram;
    uint64_t size;
    uint32_t id;

    (void)state;
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "wp");
    c.maxmem_bytes = c.target_bytes = 4 * MiB;
    c.logdirty_mode = MV_LOGDIRTY_WP_SYNC;
    if (mv_domain_create(h, &c, &id) == -EOPNOTSUPP) {
        print_message("skipped: %s\n", mv_last_error());
        mv_host_destroy(h);
        skip();
    }
    assert_ok(mv_domain_ram(h, id, (void **)&ram, &size));
    memset(ram + 7 * MV_PAGE_SIZE, 0x11, MV_PAGE_SIZE);
    assert_ok(mv_logdirty_enable(h, id));
    assert_ok(mv_share_nominate(h, id, 7, &handle));
    /* The fault service's handling of the stale message. */
    d = mv__domain_get(h, id);
    assert_non_null(d);
    mv__mutex_lock(&d->lock);
    mv__logdirty_wp_fault(d, 7);
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    ram[7 * MV_PAGE_SIZE + 100] = 0x42;
    assert_ok(mv_domain_read_page(h, id, 7, page));
    assert_int_equal(page[100], 0x42);
    assert_int_equal(page[0], 0x11);
    assert_ok(mv_domain_page_type(h, id, 7, &type));
    assert_int_equal(type, MV_PAGE_RAM);
    assert_ok(mv_share_audit(h));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Storm: writers on several domains while the background scanner shares,
 * and clones are made and destroyed; audit after every phase, oracle at the
 * end. */
static void storm(void **state)
{
    mv_host *h = tu_host();
    uint32_t id[3], base = domain1(h, "base", 32 * MiB, 1);
    struct mv_scanner_config sc;
    struct mv_workload_config w;
    struct mv_share_stats s;

    (void)state;
    fill(h, base, 8192, 6000);
    for (int i = 0; i < 3; i++) {
        char name[8];

        snprintf(name, sizeof(name), "w%d", i);
        id[i] = domain1(h, name, 32 * MiB, 2);
        fill(h, id[i], 8192, 6000);
    }
    mv_scanner_config_init(&sc);
    assert_ok(mv_scanner_start(h, &sc));
    assert_err(mv_scanner_start(h, &sc), -EALREADY);
    for (int phase = 0; phase < 3; phase++) {
        uint32_t clones[2];

        for (int i = 0; i < 3; i++) {
            mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
            w.seed = SEED;
            w.working_set_pages = 8192;
            w.pages_per_second = 4000;
            w.duration_ms = 700;
            assert_ok(mv_workload_start(h, id[i], &w));
        }
        assert_ok(mv_domain_pause(h, base));
        for (int k = 0; k < 2; k++) {
            char name[16];

            snprintf(name, sizeof(name), "c%d-%d", phase, k);
            assert_ok(mv_domain_clone(h, base, name, &clones[k]));
        }
        assert_ok(mv_domain_unpause(h, base));
        fill(h, clones[0], 8192, 1500);
        for (int i = 0; i < 3; i++)
            assert_ok(mv_workload_wait(h, id[i], 60000, NULL));
        /* The audit wants a quiet host. */
        assert_ok(mv_scanner_stop(h));
        verify_both(h, clones[0], clones[1]);
        for (int i = 0; i < 3; i++)
            tu_verify(h, id[i]);
        assert_ok(mv_domain_destroy(h, clones[0]));
        assert_ok(mv_domain_destroy(h, clones[1]));
        assert_ok(mv_host_audit(h));
        assert_ok(mv_scanner_start(h, &sc));
    }
    /* Three short phases need not be a whole pass on a slow (sanitized)
     * build: give the scanner the time one takes. */
    for (int waited_ms = 0; stats(h).scan_passes == 0 && waited_ms < 60000; waited_ms += 10)
        usleep(10000);
    assert_ok(mv_scanner_stop(h));
    assert_ok(mv_host_audit(h));  /* settles the kernel's copies */
    s = stats(h);
    assert_true(s.saved_pages > 1000);
    assert_true(s.cow_breaks > 0);
    assert_true(s.scan_passes > 0);
    /* Run with the kernel copying, most breaks are its copies. */
    if (getenv("MV_TEST_KERNEL_COW"))
        assert_true(s.cow_kernel_copies > s.cow_breaks / 2);
    else
        assert_int_equal(s.cow_kernel_copies, 0);
    tu_verify(h, base);
    for (int i = 0; i < 3; i++)
        tu_verify(h, id[i]);
    mv_host_destroy(h);
}

/* A host whose settler runs every `settle_ms`. */
static mv_host *host_settling_every(unsigned settle_ms)
{
    struct mv_host_config c;
    mv_host *h = NULL;

    mv_host_config_init(&c);
    c.machine_bytes = 64 * GiB;
    c.budget_bytes = 4 * GiB;
    c.cow_settle_ms = settle_ms;
    assert_ok(mv_host_create(&c, &h));
    return h;
}

static uint32_t kernel_cow_domain(mv_host *h, const char *name, uint64_t bytes)
{
    struct mv_domain_config c;
    uint32_t id;

    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "%s", name);
    c.maxmem_bytes = c.target_bytes = bytes;
    c.vcpus = 2;
    c.cow_mode = MV_COW_KERNEL;
    assert_ok(mv_domain_create(h, &c, &id));
    return id;
}

/* The byte a test writes at offset `at` of gfn g, in round r. */
static uint8_t pattern(uint64_t g, size_t at, unsigned r)
{
    return (uint8_t)(g * 31 + at * 7 + r * 101 + 1);
}

/*
 * MV_COW_KERNEL: writes to shared pages are copied by the kernel without a
 * trap, and settled afterwards into exactly what trapped breaks make (own
 * frames, reverse maps, charges, takeovers); reads of a written page see its
 * copy before and after settling; pause, the dirty log and a short target
 * make writes trap again; bad settings are refused.
 */
static void kernel_copies_settle_into_breaks(void **state)
{
    mv_host *h = host_settling_every(60000);  /* the test settles alone */
    uint32_t src = kernel_cow_domain(h, "src", 16 * MiB), c;
    uint64_t pages = 16 * MiB / MV_PAGE_SIZE, size, faults, g;
    uint8_t *ram, buf[MV_PAGE_SIZE];
    struct mv_domain_info info;
    struct mv_domain_config bad;
    struct mv_share_stats st;

    (void)state;
    /* Bad settings. */
    mv_domain_config_init(&bad);
    snprintf(bad.name, sizeof(bad.name), "bad");
    bad.maxmem_bytes = bad.target_bytes = 4 * MiB;
    bad.cow_mode = (enum mv_cow_mode)7;
    assert_err(mv_domain_create(h, &bad, &c), -EINVAL);
    {
        struct mv_host_config hc;
        mv_host *other = NULL;

        mv_host_config_init(&hc);
        hc.cow_settle_ms = 60001;
        assert_err(mv_host_create(&hc, &other), -EINVAL);
    }
    assert_string_equal(mv_cow_mode_name(MV_COW_KERNEL), "kernel");
    assert_string_equal(mv_cow_mode_name(MV_COW_TRAP), "trap");

    /* The source's pages, written directly, then a clone of it. */
    assert_ok(mv_domain_ram(h, src, (void **)&ram, &size));
    for (g = 0; g < pages; g++)
        tu_guest_fill_page(ram + g * MV_PAGE_SIZE, pattern(g, 0, 0));
    assert_ok(mv_domain_pause(h, src));
    assert_int_equal(tu_info(h, src).cow_trapping, 1);
    assert_ok(mv_domain_clone(h, src, "c", &c));
    assert_ok(mv_domain_unpause(h, src));
    info = tu_info(h, c);
    assert_int_equal(info.cow_mode, MV_COW_KERNEL);
    assert_int_equal(info.cow_trapping, 0);
    assert_int_equal(info.shared_pages, pages);
    assert_int_equal(tu_info(h, src).cow_trapping, 0);
    faults = info.faults;

    /* The clone writes one byte of every other page: no fault is served,
     * and nothing is settled until asked. */
    assert_ok(mv_domain_ram(h, c, (void **)&ram, &size));
    for (g = 0; g < pages; g += 2)
        tu_guest_store(ram + g * MV_PAGE_SIZE + 5, pattern(g, 5, 1));
    /* A read sees the write before it is settled (and settles its page). */
    assert_ok(mv_domain_read_page(h, c, 2, buf));
    assert_int_equal(buf[5], pattern(2, 5, 1));
    assert_int_equal(buf[6], pattern(2, 0, 0));
    assert_int_equal(tu_page_type(h, c, 2), MV_PAGE_RAM);
    assert_int_equal(tu_page_type(h, c, 3), MV_PAGE_SHARED);
    assert_int_equal(mv_share_settle(h, c), pages / 2 - 1);
    assert_int_equal(mv_share_settle(h, c), 0);
    info = tu_info(h, c);
    assert_int_equal(info.faults, faults);
    assert_int_equal(info.cow_breaks, pages / 2);
    assert_int_equal(info.cow_kernel_copies, pages / 2);
    assert_int_equal(info.cow_takeovers, 0);
    assert_int_equal(info.shared_pages, pages / 2);
    assert_int_equal(info.populated_pages, pages / 2);
    st = stats(h);
    assert_int_equal(st.cow_kernel_copies, pages / 2);
    assert_int_equal(st.saved_pages, pages / 2);
    assert_int_equal(st.cow_settle_waiting, 0);
    assert_true(st.cow_settles > 0);
    assert_ok(mv_host_audit(h));

    /* The source is now alone on half the frames: its writes take them
     * over when settled. */
    assert_ok(mv_domain_ram(h, src, (void **)&ram, &size));
    for (g = 0; g < pages; g += 4)
        tu_guest_store(ram + g * MV_PAGE_SIZE + 9, pattern(g, 9, 2));
    assert_int_equal(mv_share_settle(h, src), pages / 4);
    assert_int_equal(tu_info(h, src).cow_takeovers, pages / 4);
    assert_ok(mv_host_audit(h));

    /* While the dirty log is on, writes trap. */
    assert_ok(mv_logdirty_enable(h, c));
    assert_int_equal(tu_info(h, c).cow_trapping, 1);
    assert_ok(mv_domain_ram(h, c, (void **)&ram, &size));
    tu_guest_store(ram + 3 * MV_PAGE_SIZE + 7, pattern(3, 7, 3));
    assert_int_equal(tu_info(h, c).faults, faults + 1);
    assert_int_equal(tu_page_type(h, c, 3), MV_PAGE_RAM);
    assert_ok(mv_logdirty_disable(h, c));
    assert_int_equal(tu_info(h, c).cow_trapping, 0);

    /* A target with no room for a copy of every shared page: writes trap,
     * and the PoD policy decides; room again, and the kernel copies. */
    info = tu_info(h, c);
    assert_ok(mv_domain_set_target(h, c, (info.populated_pages + 16) * MV_PAGE_SIZE));
    assert_int_equal(tu_info(h, c).cow_trapping, 1);
    tu_guest_store(ram + 5 * MV_PAGE_SIZE + 7, pattern(5, 7, 3));
    assert_int_equal(tu_info(h, c).faults, faults + 2);
    assert_ok(mv_domain_set_target(h, c, 16 * MiB));
    assert_ok(mv_share_settle(h, c));
    assert_int_equal(tu_info(h, c).cow_trapping, 0);
    tu_guest_store(ram + 7 * MV_PAGE_SIZE + 7, pattern(7, 7, 3));
    assert_int_equal(mv_share_settle(h, c), 1);
    assert_int_equal(tu_info(h, c).faults, faults + 2);

    /* A full domain sharing its own pages keeps the kernel copying: each
     * page shared frees the room its copy needs. */
    {
        uint32_t m = kernel_cow_domain(h, "m", 4 * MiB);
        uint64_t mp = 4 * MiB / MV_PAGE_SIZE;
        uint8_t *mram;

        assert_ok(mv_domain_ram(h, m, (void **)&mram, &size));
        for (g = 0; g < mp; g++)
            tu_guest_fill_page(mram + g * MV_PAGE_SIZE, pattern(g, 0, 0));
        assert_true(mv_share_make_ro_and_share(h, m, 0, mp, NULL) > 0);
        info = tu_info(h, m);
        assert_int_equal(info.shared_pages + info.pod_pages, mp); /* zero: PoD */
        assert_true(info.shared_pages > mp / 2);
        assert_int_equal(info.cow_trapping, 0);
        faults = info.faults;
        tu_guest_store(mram + 10 * MV_PAGE_SIZE + 1, 0xee);
        assert_int_equal(mv_share_settle(h, m), 1);
        assert_int_equal(tu_info(h, m).faults, faults);
        assert_ok(mv_domain_read_page(h, m, 10, buf));
        assert_int_equal(buf[1], 0xee);
        assert_int_equal(buf[2], pattern(10, 0, 0));
        assert_ok(mv_domain_destroy(h, m));
    }

    /* Every byte of both domains is what was written. */
    for (g = 0; g < pages; g++) {
        uint8_t want[MV_PAGE_SIZE];

        memset(want, pattern(g, 0, 0), sizeof(want));
        if (g % 4 == 0)
            want[9] = pattern(g, 9, 2);
        assert_ok(mv_domain_read_page(h, src, g, buf));
        assert_memory_equal(buf, want, MV_PAGE_SIZE);
        memset(want, pattern(g, 0, 0), sizeof(want));
        if (g % 2 == 0)
            want[5] = pattern(g, 5, 1);
        if (g == 3 || g == 5 || g == 7)
            want[7] = pattern(g, 7, 3);
        assert_ok(mv_domain_read_page(h, c, g, buf));
        assert_memory_equal(buf, want, MV_PAGE_SIZE);
    }
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The settler thread settles kernel copies with no call asking for it: the
 * host budget is charged for them within a few of its intervals. */
static void settler_settles_in_the_background(void **state)
{
    struct mv_host_stats hs;
    mv_host *h = host_settling_every(10);
    uint32_t src, c;
    uint64_t pages = 4 * MiB / MV_PAGE_SIZE, size, before, g;
    uint8_t *ram, buf[MV_PAGE_SIZE];
    int waited_ms = 0;

    (void)state;
    src = kernel_cow_domain(h, "src", 4 * MiB);
    assert_ok(mv_domain_ram(h, src, (void **)&ram, &size));
    for (g = 0; g < pages; g++)
        tu_guest_fill_page(ram + g * MV_PAGE_SIZE, pattern(g, 0, 0));
    assert_ok(mv_domain_pause(h, src));
    assert_ok(mv_domain_clone(h, src, "c", &c));
    assert_ok(mv_domain_unpause(h, src));
    assert_ok(mv_host_stats(h, &hs));
    before = hs.populated_pages;
    assert_ok(mv_domain_ram(h, c, (void **)&ram, &size));
    for (g = 0; g < 100; g++)
        tu_guest_store(ram + g * 3 * MV_PAGE_SIZE + 1, pattern(g, 1, 1));
    do {
        usleep(10000);
        waited_ms += 10;
        assert_ok(mv_host_stats(h, &hs));
    } while (hs.populated_pages < before + 100 && waited_ms < 10000);
    assert_int_equal(hs.populated_pages, before + 100);
    for (g = 0; g < pages; g++) {
        assert_ok(mv_domain_read_page(h, c, g, buf));
        assert_int_equal(buf[0], pattern(g, 0, 0));
        assert_int_equal(buf[1], g % 3 == 0 && g / 3 < 100 ? pattern(g / 3, 1, 1)
                                                            : pattern(g, 0, 0));
    }
    assert_int_equal(info(h, c).cow_kernel_copies, 100);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/*
 * A clone that fails leaves its source as it was.  The source of each round
 * has RAM in two 2 MiB blocks, PoD, ballooned gfns and gfns it shares with a
 * third domain; both are paused.  Every system call the clone makes of each
 * kind fails once in turn (the n-th for n = 0, 1, ... until a clone runs
 * without reaching the failure): the call must return an error and say why,
 * create no domain, and leave the source paused, not crashed, with the same
 * p2m counts, sharing and host accounting, every audit passing; then it must
 * run and hold what its guest wrote, and the third domain must not notice.
 */
struct clone_scene {
    uint32_t src, other;
    struct mv_domain_info src_info, other_info;
    struct mv_share_stats share;
    struct mv_host_stats host;
};

static void scene_build(mv_host *h, struct clone_scene *sc)
{
    struct mv_domain_info *si = &sc->src_info;

    sc->src = domain1(h, "src", 16 * MiB, 1);
    sc->other = domain1(h, "other", 16 * MiB, 1);
    fill(h, sc->src, 1024, 1500);
    fill(h, sc->other, 1024, 1500);
    /* The source's first gfns move to frames of their own, which the third
     * domain's equal pages then share. */
    assert_ok(mv_share_make_ro_and_share(h, sc->src, 0, 64, NULL));
    assert_true(mv_share_make_ro_and_share(h, sc->other, 0, 64, NULL) > 16);
    assert_int_equal(mv_guest_balloon(h, sc->src, 16 * MiB - 4 * MV_PAGE_SIZE), 4);
    assert_ok(mv_domain_pause(h, sc->src));
    assert_ok(mv_domain_pause(h, sc->other));
    *si = tu_info(h, sc->src);
    sc->other_info = tu_info(h, sc->other);
    assert_true(si->populated_pages > 512 && si->shared_pages > 16 && si->pod_pages > 0);
    assert_int_equal(si->ballooned_pages, 4);
    assert_true(sc->other_info.shared_pages > 16);
    sc->share = stats(h);
    assert_ok(mv_host_stats(h, &sc->host));
}

static void scene_same_info(const struct mv_domain_info *was, const struct mv_domain_info *is)
{
    assert_int_equal(is->state, was->state);
    assert_int_equal(is->populated_pages, was->populated_pages);
    assert_int_equal(is->shared_pages, was->shared_pages);
    assert_int_equal(is->pod_pages, was->pod_pages);
    assert_int_equal(is->ballooned_pages, was->ballooned_pages);
}

/* After a failed clone: everything as scene_build left it. */
static void scene_check(mv_host *h, const struct clone_scene *sc)
{
    struct mv_domain_info si = tu_info(h, sc->src), oi = tu_info(h, sc->other);
    struct mv_share_stats s = stats(h);
    struct mv_host_stats hs;
    uint32_t id;

    assert_int_equal(si.state, MV_DOMAIN_PAUSED);
    scene_same_info(&sc->src_info, &si);
    scene_same_info(&sc->other_info, &oi);
    assert_int_equal(s.shared_frames, sc->share.shared_frames);
    assert_int_equal(s.saved_pages, sc->share.saved_pages);
    assert_int_equal(s.clone_pending_frames, sc->share.clone_pending_frames);
    assert_ok(mv_host_stats(h, &hs));
    assert_int_equal(hs.populated_pages, sc->host.populated_pages);
    assert_int_equal(hs.free_frame_pages, sc->host.free_frame_pages);
    assert_int_equal(hs.domains, 2);
    assert_true(mv_domain_lookup(h, "c", &id) < 0);
    assert_ok(mv_domain_audit(h, sc->src));
    assert_ok(mv_domain_audit(h, sc->other));
    assert_ok(mv_share_audit(h));
    tu_verify(h, sc->src);
    tu_verify(h, sc->other);
}

/* The source runs and writes on; the third domain is untouched. */
static void scene_finish(mv_host *h, const struct clone_scene *sc)
{
    struct mv_domain_info oi;

    assert_ok(mv_domain_unpause(h, sc->src));
    fill(h, sc->src, 2048, 1000);
    tu_verify(h, sc->src);
    oi = tu_info(h, sc->other);
    scene_same_info(&sc->other_info, &oi);
    assert_ok(mv_domain_unpause(h, sc->other));
    tu_verify(h, sc->other);
    assert_ok(mv_share_audit(h));
    assert_ok(mv_domain_destroy(h, sc->src));
    assert_ok(mv_domain_destroy(h, sc->other));
}

static void failed_clone_leaves_source_as_it_was(void **state)
{
    static const struct {
        enum mv__os_op op;
        const char *name;
    } ops[] = {
        { MV_OS_MMAP, "mmap" },
        { MV_OS_UFFD_REGISTER, "register" },
        { MV_OS_UFFD_WRITEPROTECT, "write-protect" },
        { MV_OS_PAGEMAP_SCAN, "PAGEMAP_SCAN" },
        { MV_OS_COPY, "copy" },
        { MV_OS_UFFD_OPEN, "userfaultfd" },
        { MV_OS_UFFD_WAKE, "wake" },
        { MV_OS_UFFD_CONTINUE, "continue" },
        { MV_OS_UFFD_ZEROPAGE, "zeropage" },
        { MV_OS_PUNCH, "punch" },
        { MV_OS_ZAP, "zap" },
        { MV_OS_READ, "read" },
        { MV_OS_WRITE, "write" },
    };
    mv_host *h = tu_host();
    unsigned failures = 0;

    (void)state;
    for (size_t i = 0; i < MV_ARRAY_SIZE(ops); i++) {
        struct clone_scene sc;
        unsigned n;

        scene_build(h, &sc);
        if (i == 0) {
            uint32_t c;

            /* A name taken is refused before the source is touched. */
            assert_err(mv_domain_clone(h, sc.src, "other", &c), -EEXIST);
            scene_check(h, &sc);
        }
        for (n = 0; n < 500; n++) {
            uint32_t c = UINT32_MAX;
            unsigned left;
            int rc;

            mv__os_inject(ops[i].op, EIO, n, 1);
            rc = mv_domain_clone(h, sc.src, "c", &c);
            left = mv__os_injection_left(ops[i].op);
            mv__os_inject(ops[i].op, 0, 0, 0);
            if (rc == 0) {
                assert_ok(mv_domain_destroy(h, c));
                if (left)
                    break; /* no call of this kind was left to fail */
                /* A failure the clone could shrug off: the source now
                 * shares its pages, so start again from a fresh one. */
                scene_finish(h, &sc);
                scene_build(h, &sc);
                continue;
            }
            if (left || mv_last_error()[0] == '\0')
                fail_msg("%s #%u: clone = %d (%s), %u failures left, message '%s'",
                         ops[i].name, n, rc, mv_strerror(rc), left, mv_last_error());
            print_message("%s #%u: %s\n", ops[i].name, n, mv_last_error());
            scene_check(h, &sc);
            scene_finish(h, &sc);
            scene_build(h, &sc);
            failures++;
        }
        if (n == 500)
            fail_msg("%s: clones kept reaching the failure", ops[i].name);
        scene_finish(h, &sc);
    }
    /* mmap, register and write-protect fail at least in the source's runs. */
    assert_true(failures >= 10);
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(nominate_share_and_break),
    cmocka_unit_test(make_ro_and_share_across_domains),
    cmocka_unit_test(scanner_shares_zero_and_volatile),
    cmocka_unit_test(scanner_reads_in_place_when_copies_fail),
    cmocka_unit_test(share_reads_alike_either_way),
    cmocka_unit_test(candidate_table_grows_with_candidates_keeping_them),
    cmocka_unit_test(candidate_table_without_memory_stays_and_says_so),
    cmocka_unit_test(two_equal_domains_share_every_page_in_one_pass),
    cmocka_unit_test(equal_pages_of_a_block_share_one_frame),
    cmocka_unit_test(three_copies_side_by_side_share_in_one_pass),
    cmocka_unit_test(equal_pages_of_a_block_survive_failures),
    cmocka_unit_test(a_stretch_of_matches_survives_failures),
    cmocka_unit_test(hints_share_first),
    cmocka_unit_test(clone_shares_until_written),
    cmocka_unit_test(clone_frames_pending_until_touched),
    cmocka_unit_test(clone_clears_no_frame_records),
    cmocka_unit_test(clone_destroyed_untouched),
    cmocka_unit_test(cow_breaks_follow_pod_policy),
    cmocka_unit_test(exclude_keeps_pages_private),
    cmocka_unit_test(bad_calls_are_refused),
    cmocka_unit_test(mapping_limit_stops_sharing),
    cmocka_unit_test(mapping_limit_holds_when_mappings_cannot_be_counted),
    cmocka_unit_test(breaks_near_the_limit_do_not_split),
    cmocka_unit_test(breaks_near_the_limit_without_memory_split),
    cmocka_unit_test(audit_is_exact_while_guests_run),
    cmocka_unit_test(logdirty_with_sharing),
    cmocka_unit_test(stale_logdirty_fault_on_shared_gfn),
    cmocka_unit_test(storm),
    cmocka_unit_test(kernel_copies_settle_into_breaks),
    cmocka_unit_test(settler_settles_in_the_background),
    cmocka_unit_test(failed_clone_leaves_source_as_it_was),
};

TU_MAIN(cases)
