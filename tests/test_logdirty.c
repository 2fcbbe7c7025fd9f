/*
 * test_logdirty.c - dirty logging on every mechanism: no lost write and no
 * false dirty page with writers on several threads while rounds are fetched
 * (by clean, or by a consumer of the live bitmap), the same answers from all
 * three mechanisms on one write pattern, pages changed by memvisor itself
 * (populate, zero reclaim, balloon) reported with the right zero bits, the
 * shared bitmap, bad calls, the signal handlers (errno, chaining, a failed
 * install), and injected system-call failures in enable, clean and disable:
 * an error, no hung vCPU, no lost write, no other domain changed.
 */
#include "testutil.h"
#include "memvisor-guest.h"

#include "internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 16384u /* 64 MiB domains */
#define WORDS (PAGES / 64)

static bool mode_available(enum mv_logdirty_mode mode)
{
    struct mv_kernel_features f;

    mv_probe_kernel(&f);
    switch (mode) {
    case MV_LOGDIRTY_WP_ASYNC:
        return f.wp_async && f.pagemap_scan && f.wp_shmem;
    case MV_LOGDIRTY_WP_SYNC:
        return f.wp_shmem;
    case MV_LOGDIRTY_AUTO:
    case MV_LOGDIRTY_MPROTECT:
        break;
    }
    return true;
}

/* A domain with every page populated and no room for the sweep to act, so
 * that only guest writes make pages dirty. */
static uint32_t logging_domain(mv_host *h, const char *name, enum mv_logdirty_mode mode)
{
    struct mv_domain_config c;
    uint64_t size;
    uint32_t id;
    void *ram;

    if (!mode_available(mode)) {
        print_message("skipped: the kernel lacks %s\n", mv_logdirty_mode_name(mode));
        skip();
    }
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "%s", name);
    c.maxmem_bytes = c.target_bytes = (uint64_t)PAGES * MV_PAGE_SIZE;
    c.logdirty_mode = mode;
    assert_ok(mv_domain_create(h, &c, &id));
    assert_ok(mv_domain_ram(h, id, &ram, &size));
    for (uint64_t p = 0; p < PAGES; p++)
        ((volatile uint8_t *)ram)[p * MV_PAGE_SIZE] = 0;
    return id;
}

static uint8_t *ram_of(mv_host *h, uint32_t id)
{
    uint64_t size;
    void *ram;

    assert_ok(mv_domain_ram(h, id, &ram, &size));
    return ram;
}

static bool bit(const uint64_t *bm, uint64_t gfn)
{
    return (bm[gfn / 64] >> (gfn % 64)) & 1;
}

static uint64_t popcount(const uint64_t *bm)
{
    uint64_t n = 0;

    for (size_t i = 0; i < WORDS; i++)
        n += (uint64_t)__builtin_popcountll(bm[i]);
    return n;
}

/* ------------------------------------------------------------------------ */

static void bad_calls_are_refused(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "bad", (uint64_t)PAGES * 4096, 16 * MiB);
    uint64_t bm[WORDS + 1];
    struct mv_logdirty_stats s;

    (void)state;
    assert_err(mv_logdirty_disable(h, id), -EINVAL);
    assert_err(mv_logdirty_clean(h, id, bm, NULL, WORDS), -EINVAL);
    assert_ok(mv_logdirty_enable(h, id));
    assert_err(mv_logdirty_enable(h, id), -EALREADY);
    assert_err(mv_logdirty_clean(h, id, bm, NULL, WORDS + 1), -EINVAL);
    assert_err(mv_logdirty_peek(h, id, bm, NULL, WORDS - 1), -EINVAL);
    assert_err(mv_logdirty_clean(h, id, NULL, NULL, WORDS), -EINVAL);
    assert_int_equal(mv_logdirty_clean(h, 999, bm, NULL, WORDS), -ESRCH);
    assert_ok(mv_logdirty_stats(h, id, &s));
    assert_true(s.enabled);
    assert_int_not_equal(s.mode, MV_LOGDIRTY_AUTO);
    assert_ok(mv_logdirty_disable(h, id));
    assert_err(mv_logdirty_disable(h, id), -EINVAL);
    /* Destroyed while logging: nothing leaks, nothing crashes. */
    assert_ok(mv_logdirty_enable(h, id));
    assert_ok(mv_domain_destroy(h, id));
    assert_int_equal(mv_logdirty_clean(h, id, bm, NULL, WORDS), -ESRCH);
    mv_host_destroy(h);
}

static void unavailable_mode_is_explained(void **state)
{
    struct mv_domain_config c;
    mv_host *h = tu_host();
    uint32_t id;

    (void)state;
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "x");
    c.maxmem_bytes = 16 * MiB;
    c.logdirty_mode = (enum mv_logdirty_mode)42;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    mv_host_destroy(h);
}

/* ------------------------------------------------------------------------ */
/* Exact answers on a scripted pattern, identical on every mechanism.       */

static void write_page(uint8_t *ram, uint64_t gfn, uint64_t value)
{
    ((volatile uint64_t *)(ram + gfn * MV_PAGE_SIZE))[1] = value;
}

static void scripted_rounds(enum mv_logdirty_mode mode)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "script", mode);
    uint8_t *ram = ram_of(h, id);
    uint64_t dirty[WORDS], zero[WORDS], gfn;

    assert_ok(mv_logdirty_enable(h, id));
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 0);

    /* Round 1: scattered writes, some twice; reads are not writes. */
    for (gfn = 5; gfn < PAGES; gfn += 97)
        write_page(ram, gfn, gfn);
    write_page(ram, 5, 1);
    for (gfn = 0; gfn < PAGES; gfn += 3)
        (void)((volatile uint8_t *)ram)[gfn * MV_PAGE_SIZE];
    assert_int_equal(mv_logdirty_peek(h, id, dirty, NULL, WORDS), (PAGES - 5 + 96) / 97);
    assert_int_equal(mv_logdirty_peek(h, id, dirty, NULL, WORDS), (PAGES - 5 + 96) / 97);
    assert_int_equal(mv_logdirty_clean(h, id, dirty, zero, WORDS), (PAGES - 5 + 96) / 97);
    for (gfn = 0; gfn < PAGES; gfn++) {
        assert_int_equal(bit(dirty, gfn), gfn >= 5 && (gfn - 5) % 97 == 0);
        assert_false(bit(zero, gfn));
    }
    /* Nothing written since: nothing reported. */
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 0);

    /* Round 2: a contiguous run, and the same pages again. */
    for (int pass = 0; pass < 2; pass++)
        for (gfn = 1000; gfn < 1300; gfn++)
            write_page(ram, gfn, pass);
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 300);
    assert_true(bit(dirty, 1000) && bit(dirty, 1299) && !bit(dirty, 999) && !bit(dirty, 1300));

    /* Round 3: memvisor's own changes.  Pages 1000..1299 are zero again
     * after this: the sweep reclaims them and reports them as zero. */
    for (gfn = 1000; gfn < 1300; gfn++)
        ((volatile uint64_t *)(ram + gfn * MV_PAGE_SIZE))[1] = 0;
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 300);
    {
        struct mv_sweep_result r;
        uint64_t balloon[] = { 7, 8 };

        assert_ok(mv_domain_reclaim_zero(h, id, 0, &r));
        assert_true(r.reclaimed >= 300);
        assert_int_equal(mv_domain_decrease_reservation(h, id, balloon, 2), 2);
        assert_true(mv_logdirty_clean(h, id, dirty, zero, WORDS) >= 302);
        assert_true(bit(dirty, 1000) && bit(zero, 1000));
        assert_true(bit(dirty, 7) && bit(zero, 7));
        for (gfn = 0; gfn < PAGES; gfn++)
            assert_int_equal(bit(dirty, gfn), bit(zero, gfn)); /* all reclaimed */
        /* Touching a reclaimed page populates it: dirty, with data. */
        write_page(ram, 1000, 9);
        assert_true(mv_logdirty_clean(h, id, dirty, zero, WORDS) >= 1);
        assert_true(bit(dirty, 1000) && !bit(zero, 1000));
    }
    assert_ok(mv_logdirty_disable(h, id));
    /* Not logging: writes are free again and the domain is sound. */
    write_page(ram, 3, 3);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void scripted_rounds_wp_async(void **state)
{
    (void)state;
    scripted_rounds(MV_LOGDIRTY_WP_ASYNC);
}

static void scripted_rounds_wp_sync(void **state)
{
    (void)state;
    scripted_rounds(MV_LOGDIRTY_WP_SYNC);
}

static void scripted_rounds_mprotect(void **state)
{
    (void)state;
    scripted_rounds(MV_LOGDIRTY_MPROTECT);
}

/* ------------------------------------------------------------------------ */
/* Writers on several threads while rounds are fetched.                     */

#define WRITERS 3
#define ROUNDS 60
#define WRITES_PER_WRITER 40000

struct write_record {
    uint32_t gfn;
    uint32_t after;  /* cleans completed before the write began */
    uint32_t before; /* cleans started when the write had finished */
};

struct race {
    uint8_t *ram;
    atomic_uint cleans_started;
    atomic_uint cleans_done;
    atomic_bool stop;
    struct write_record *log[WRITERS];
    size_t logged[WRITERS];
    uint64_t last_value[PAGES];
};

struct writer {
    struct race *race;
    unsigned index;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct race *r = w->race;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (w->index + 1);

    for (size_t n = 0; n < WRITES_PER_WRITER && !atomic_load(&r->stop); n++) {
        struct write_record *rec = &r->log[w->index][n];
        uint64_t gfn;

        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        gfn = (rng % (PAGES / WRITERS)) * WRITERS + w->index; /* owned gfns */
        rec->gfn = (uint32_t)gfn;
        rec->after = atomic_load(&r->cleans_done);
        ((volatile uint64_t *)(r->ram + gfn * MV_PAGE_SIZE))[0] = n + 1;
        r->last_value[gfn] = n + 1;
        rec->before = atomic_load(&r->cleans_started);
        r->logged[w->index] = n + 1;
        if ((n & 255) == 0)
            usleep(200);
    }
    return NULL;
}

/* One round of a consumer of the live bitmap: harvest, then take every
 * word with an atomic exchange. */
static void take_round(mv_host *h, uint32_t id, uint64_t *out)
{
    uint64_t *live;
    size_t words;

    assert_ok(mv_logdirty_bitmap(h, id, &live, &words));
    assert_int_equal(words, WORDS);
    assert_ok(mv_logdirty_harvest(h, id));
    for (size_t i = 0; i < WORDS; i++)
        out[i] = atomic_exchange((_Atomic uint64_t *)&live[i], 0);
}

/* Rounds are fetched with mv_logdirty_clean, or when `exported` by a
 * consumer of the live bitmap (take_round). */
static void concurrent_writers(enum mv_logdirty_mode mode, bool exported)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "race", mode);
    static struct race r;
    struct writer writers[WRITERS];
    pthread_t threads[WRITERS];
    uint64_t (*rounds)[WORDS] = calloc(ROUNDS + 2, sizeof(*rounds));
    unsigned done = 0;
    uint64_t lost = 0, false_dirty = 0;

    memset(&r, 0, sizeof(r));
    r.ram = ram_of(h, id);
    assert_ok(mv_logdirty_enable(h, id));
    for (unsigned i = 0; i < WRITERS; i++) {
        r.log[i] = calloc(WRITES_PER_WRITER, sizeof(struct write_record));
        writers[i] = (struct writer){ .race = &r, .index = i };
        assert_int_equal(pthread_create(&threads[i], NULL, writer_main, &writers[i]), 0);
    }
    /* Rounds 1..ROUNDS while writing; the last one after the writers stop. */
    for (done = 1; done <= ROUNDS; done++) {
        usleep(3000);
        atomic_store(&r.cleans_started, done);
        if (exported)
            take_round(h, id, rounds[done]);
        else
            assert_ok(mv_logdirty_clean(h, id, rounds[done], NULL, WORDS));
        atomic_store(&r.cleans_done, done);
    }
    atomic_store(&r.stop, true);
    for (unsigned i = 0; i < WRITERS; i++)
        pthread_join(threads[i], NULL);
    atomic_store(&r.cleans_started, done);
    if (exported)
        take_round(h, id, rounds[done]);
    else
        assert_ok(mv_logdirty_clean(h, id, rounds[done], NULL, WORDS));

    /* No lost write: each write is in a round in (after, before + 1]. */
    for (unsigned i = 0; i < WRITERS; i++) {
        for (size_t n = 0; n < r.logged[i]; n++) {
            const struct write_record *w = &r.log[i][n];
            bool seen = false;

            for (unsigned k = w->after + 1; k <= w->before + 1 && k <= done && !seen; k++)
                seen = bit(rounds[k], w->gfn);
            lost += !seen;
        }
    }
    /* No false dirty: each reported page had a write that could be in it. */
    for (unsigned k = 1; k <= done; k++) {
        for (uint64_t gfn = 0; gfn < PAGES; gfn++) {
            unsigned i = (unsigned)(gfn % WRITERS);
            bool explained = false;

            if (!bit(rounds[k], gfn))
                continue;
            for (size_t n = 0; n < r.logged[i] && !explained; n++) {
                const struct write_record *w = &r.log[i][n];

                explained = w->gfn == gfn && w->after < k && k <= w->before + 1;
            }
            false_dirty += !explained;
        }
    }
    print_message("%s%s: %u rounds, %zu+%zu+%zu writes, %llu lost, %llu false dirty\n",
                  mv_logdirty_mode_name(mode), exported ? " (live bitmap)" : "",
                  done, r.logged[0], r.logged[1],
                  r.logged[2], (unsigned long long)lost,
                  (unsigned long long)false_dirty);
    assert_int_equal(lost, 0);
    assert_int_equal(false_dirty, 0);
    /* The content check: every page holds the last value written to it. */
    for (uint64_t gfn = 0; gfn < PAGES; gfn++)
        assert_int_equal(((uint64_t *)(r.ram + gfn * MV_PAGE_SIZE))[0], r.last_value[gfn]);
    assert_ok(mv_host_audit(h));
    for (unsigned i = 0; i < WRITERS; i++)
        free(r.log[i]);
    free(rounds);
    mv_host_destroy(h);
}

static void concurrent_writers_wp_async(void **state)
{
    (void)state;
    concurrent_writers(MV_LOGDIRTY_WP_ASYNC, false);
}

static void concurrent_writers_wp_sync(void **state)
{
    (void)state;
    concurrent_writers(MV_LOGDIRTY_WP_SYNC, false);
}

static void concurrent_writers_mprotect(void **state)
{
    (void)state;
    concurrent_writers(MV_LOGDIRTY_MPROTECT, false);
    /* The writes its SIGSEGV handler let through allocated nothing. */
    assert_int_equal(mv__os_allocations_in_signal(), 0);
}

/* ------------------------------------------------------------------------ */

/* The built-in guest under logging: its vCPUs write, fetches run, and the
 * oracle still holds; every page the workload wrote was reported. */
static void guest_workload_under_logging(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "guest", (uint64_t)PAGES * 4096, 32 * MiB);
    struct mv_workload_config w;
    uint64_t dirty[WORDS], seen[WORDS] = { 0 };
    uint64_t page[MV_PAGE_SIZE / 8];
    struct mv_workload_status st;

    (void)state;
    assert_ok(mv_logdirty_enable(h, id));
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.working_set_pages = 4096;
    w.max_pages = 30000;
    assert_ok(mv_workload_start(h, id, &w));
    while (mv_workload_wait(h, id, 5, &st) == -ETIMEDOUT) {
        assert_ok(mv_logdirty_clean(h, id, dirty, NULL, WORDS));
        for (size_t i = 0; i < WORDS; i++)
            seen[i] |= dirty[i];
    }
    assert_ok(mv_logdirty_clean(h, id, dirty, NULL, WORDS));
    for (size_t i = 0; i < WORDS; i++)
        seen[i] |= dirty[i];
    for (uint64_t gfn = 0; gfn < PAGES; gfn++) {
        assert_ok(mv_domain_read_page(h, id, gfn, page));
        if (page[0] || page[1])
            assert_true(bit(seen, gfn)); /* written, so reported */
    }
    assert_true(popcount(seen) >= 4096 - 64);
    tu_verify(h, id);
    mv_host_destroy(h);
}

/* A consumer thread drains the live bitmap with atomic exchanges while a
 * producer writes: everything written is consumed exactly once or more. */
static void shared_bitmap_consumer(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "shared", MV_LOGDIRTY_WP_SYNC);
    uint8_t *ram = ram_of(h, id);
    uint64_t *live, seen[WORDS] = { 0 }, dirty[WORDS];
    size_t words;
    int fd;
    uint64_t *mapped;

    (void)state;
    assert_ok(mv_logdirty_enable(h, id));
    assert_ok(mv_logdirty_bitmap(h, id, &live, &words));
    assert_int_equal(words, WORDS);
    assert_ok(mv_logdirty_bitmap_fd(h, id, &fd));
    mapped = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(mapped != MAP_FAILED);
    for (uint64_t gfn = 0; gfn < PAGES; gfn += 2)
        write_page(ram, gfn, 1);
    /* Another mapping of the same bitmap sees the producer's bits. */
    assert_true(bit(mapped, 0) && bit(mapped, 2) && !bit(mapped, 1));
    assert_int_equal(mv_logdirty_harvest(h, id), PAGES / 2);
    for (size_t i = 0; i < words; i++)
        seen[i] |= atomic_exchange((_Atomic uint64_t *)&live[i], 0);
    for (uint64_t gfn = 0; gfn < PAGES; gfn++)
        assert_int_equal(bit(seen, gfn), gfn % 2 == 0);
    /* Consumed words are gone from the next fetch. */
    assert_int_equal(mv_logdirty_peek(h, id, dirty, NULL, WORDS), 0);
    munmap(mapped, words * 8);
    close(fd);
    mv_host_destroy(h);
}

/* With wp-async the kernel keeps guest writes until harvested: harvest
 * moves exactly the written pages into the live bitmap, once. */
static void harvest_fills_the_live_bitmap(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "harvest", MV_LOGDIRTY_WP_ASYNC);
    uint8_t *ram = ram_of(h, id);
    uint64_t *live, seen[WORDS] = { 0 };
    size_t words;

    (void)state;
    assert_ok(mv_logdirty_enable(h, id));
    assert_ok(mv_logdirty_bitmap(h, id, &live, &words));
    for (uint64_t gfn = 0; gfn < PAGES; gfn += 3)
        write_page(ram, gfn, 2);
    assert_int_equal(mv_logdirty_harvest(h, id), (PAGES + 2) / 3);
    for (size_t i = 0; i < words; i++)
        seen[i] = atomic_exchange((_Atomic uint64_t *)&live[i], 0);
    for (uint64_t gfn = 0; gfn < PAGES; gfn++)
        assert_int_equal(bit(seen, gfn), gfn % 3 == 0);
    /* Harvested pages are protected again: nothing is left to move. */
    assert_int_equal(mv_logdirty_harvest(h, id), 0);
    assert_err(mv_logdirty_harvest(h, 999), -ESRCH);
    mv_host_destroy(h);
}

/*
 * wp-async clean scans into the caller's bitmap after taking the live
 * words: a scan that fails after its first batch (the kernel re-protected
 * those pages already) must put everything it took back into the live
 * bitmap -- the batch's pages and a page a harvest had moved there -- so
 * the next clean reports every write exactly, and stats count only the
 * successful fetch.
 */
static void failed_scan_puts_back_what_it_took(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "putback", MV_LOGDIRTY_WP_ASYNC);
    uint8_t *ram = ram_of(h, id);
    uint64_t dirty[WORDS], *live;
    struct mv_logdirty_stats st;
    size_t words;
    uint64_t written = 0;

    (void)state;
    assert_ok(mv_logdirty_enable(h, id));
    assert_ok(mv_logdirty_bitmap(h, id, &live, &words));
    /* One page in the live bitmap through a harvest... */
    write_page(ram, PAGES - 1, 5);
    assert_int_equal(mv_logdirty_harvest(h, id), 1);
    /* ... and 600 separate runs: more than one batch of scan results. */
    for (uint64_t gfn = 0; gfn < 1200; gfn += 2, written++)
        write_page(ram, gfn, 5);
    mv__os_inject(MV_OS_PAGEMAP_SCAN, EIO, 1, 1);
    assert_err(mv_logdirty_clean(h, id, dirty, NULL, WORDS), -EIO);
    assert_int_equal(mv__os_injection_left(MV_OS_PAGEMAP_SCAN), 0);
    mv__os_inject(MV_OS_PAGEMAP_SCAN, 0, 0, 0);
    /* The first batch is protected again and back in the live bitmap. */
    assert_true(bit(live, 0));
    assert_true(bit(live, PAGES - 1));
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), (int64_t)written + 1);
    for (uint64_t gfn = 0; gfn < PAGES; gfn++)
        assert_int_equal(bit(dirty, gfn), gfn == PAGES - 1 || (gfn < 1200 && gfn % 2 == 0));
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 0);
    assert_ok(mv_logdirty_stats(h, id, &st));
    assert_int_equal(st.rounds, 2);
    assert_int_equal(st.total_dirty, written + 1);
    mv_host_destroy(h);
}

/* ------------------------------------------------------------------------ */
/* A consumer of the live bitmap: what it takes is written again, and
 * reported again, in every mode.                                          */

/* Pages whose bits a consumer took are re-armed: written again after the
 * exchange, they are reported by the next round of that consumer, and by
 * a clean when the exchange had no harvest before it. */
static void taken_pages_are_reported_again(enum mv_logdirty_mode mode)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "again", mode);
    uint8_t *ram = ram_of(h, id);
    uint64_t *live, taken[WORDS], dirty[WORDS];
    size_t words;

    assert_ok(mv_logdirty_enable(h, id));
    assert_ok(mv_logdirty_bitmap(h, id, &live, &words));
    for (int pass = 0; pass < 3; pass++) {
        for (uint64_t gfn = 11; gfn < PAGES; gfn += 101)
            write_page(ram, gfn, pass + 1);
        take_round(h, id, taken);
        for (uint64_t gfn = 0; gfn < PAGES; gfn++)
            assert_int_equal(bit(taken, gfn), gfn >= 11 && (gfn - 11) % 101 == 0);
    }
    /* Taken without a harvest first: a clean still reports the writes
     * that follow (once more for the taken ones, which may have been
     * written unseen in between). */
    for (uint64_t gfn = 7; gfn < PAGES; gfn += 89)
        write_page(ram, gfn, 1);
    for (size_t i = 0; i < words; i++)
        (void)atomic_exchange((_Atomic uint64_t *)&live[i], 0);
    for (uint64_t gfn = 7; gfn < PAGES; gfn += 89)
        write_page(ram, gfn, 2);
    assert_ok(mv_logdirty_clean(h, id, dirty, NULL, WORDS));
    for (uint64_t gfn = 7; gfn < PAGES; gfn += 89)
        assert_true(bit(dirty, gfn));
    /* Everything is protected again: exact from here on. */
    write_page(ram, 5, 3);
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 1);
    assert_true(bit(dirty, 5));
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 0);
    assert_ok(mv_logdirty_disable(h, id));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void live_bitmap_consumer_wp_async(void **state)
{
    (void)state;
    concurrent_writers(MV_LOGDIRTY_WP_ASYNC, true);
    taken_pages_are_reported_again(MV_LOGDIRTY_WP_ASYNC);
}

static void live_bitmap_consumer_wp_sync(void **state)
{
    (void)state;
    concurrent_writers(MV_LOGDIRTY_WP_SYNC, true);
    taken_pages_are_reported_again(MV_LOGDIRTY_WP_SYNC);
}

static void live_bitmap_consumer_mprotect(void **state)
{
    (void)state;
    concurrent_writers(MV_LOGDIRTY_MPROTECT, true);
    taken_pages_are_reported_again(MV_LOGDIRTY_MPROTECT);
}

/* ------------------------------------------------------------------------ */
/* Failures: an operation that fails returns an error and leaves the log as
 * it was; no vCPU hangs, no write is lost, no other domain changes.        */

static bool logging(mv_host *h, uint32_t id)
{
    struct mv_logdirty_stats s;

    assert_ok(mv_logdirty_stats(h, id, &s));
    return s.enabled;
}

/* mprotect: a disable that cannot make RAM writable again keeps the log,
 * and the handler, so the next store is served, not fatal; an enable whose
 * undo fails keeps the handler for the pages it left protected. */
static void failed_disable_keeps_the_host_alive(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "disable", MV_LOGDIRTY_MPROTECT);
    uint8_t *ram = ram_of(h, id);
    uint64_t dirty[WORDS];

    (void)state;
    assert_ok(mv_logdirty_enable(h, id));
    write_page(ram, 10, 1);
    mv__os_inject(MV_OS_MPROTECT, EIO, 0, 1);
    assert_err(mv_logdirty_disable(h, id), -EIO);
    assert_true(logging(h, id));
    write_page(ram, 20, 2); /* traps: RAM is still protected */
    /* Part of RAM may have been unprotected: every page is reported. */
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), PAGES);
    write_page(ram, 30, 3);
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 1);
    assert_true(bit(dirty, 30));
    assert_ok(mv_logdirty_disable(h, id));
    assert_false(logging(h, id));
    write_page(ram, 40, 4);

    /* The write-protect fails, and so does the undo: not logging, and the
     * pages left protected are still let through. */
    mv__os_inject(MV_OS_MPROTECT, EIO, 0, 2);
    assert_err(mv_logdirty_enable(h, id), -EIO);
    assert_false(logging(h, id));
    for (uint64_t gfn = 0; gfn < PAGES; gfn += 7)
        write_page(ram, gfn, 5);
    assert_ok(mv_logdirty_enable(h, id));
    write_page(ram, 50, 6);
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 1);
    assert_ok(mv_logdirty_disable(h, id));
    write_page(ram, 60, 7);
    assert_int_equal(((volatile uint64_t *)(ram + 60 * MV_PAGE_SIZE))[1], 7);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The handler preserves errno, also when its mprotect fails (it then
 * unprotects and reports the page's whole 2 MiB block). */
static void errno_survives_a_handled_fault(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "errno", MV_LOGDIRTY_MPROTECT);
    uint8_t *ram = ram_of(h, id);
    uint64_t dirty[WORDS];
    volatile int *err = &errno;

    (void)state;
    assert_ok(mv_logdirty_enable(h, id));
    *err = EDOM;
    write_page(ram, 3, 1);
    assert_int_equal(*err, EDOM);
    mv__os_inject(MV_OS_MPROTECT, ENOMEM, 0, 1);
    write_page(ram, MV_BLOCK_PAGES + 3, 1);
    assert_int_equal(*err, EDOM);
    assert_int_equal(mv_logdirty_clean(h, id, dirty, NULL, WORDS), 1 + MV_BLOCK_PAGES);
    assert_true(bit(dirty, 3) && bit(dirty, MV_BLOCK_PAGES) &&
                bit(dirty, 2 * MV_BLOCK_PAGES - 1) && !bit(dirty, 2 * MV_BLOCK_PAGES));
    assert_ok(mv_logdirty_disable(h, id));
    mv_host_destroy(h);
}

/* An application handler that was in place first gets the faults that are
 * not the library's (SIGSEGV of the dirty log, SIGBUS of the vCPUs), and
 * errno comes back as it was. */
static uint8_t *foreign_page;
static int foreign_fd;
static volatile sig_atomic_t foreign_grown;

static void foreign_handler(int sig)
{
    errno = ERANGE;
    if (sig == SIGSEGV)
        mprotect(foreign_page, MV_PAGE_SIZE, PROT_READ | PROT_WRITE);
    else
        foreign_grown = ftruncate(foreign_fd, MV_PAGE_SIZE) == 0;
}

static void foreign_faults_reach_the_previous_handler(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "foreign", MV_LOGDIRTY_MPROTECT);
    uint8_t *ram = ram_of(h, id);
    struct sigaction sa;
    struct mv_workload_config w;
    volatile int *err = &errno;

    (void)state;
    foreign_page = mmap(NULL, MV_PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(foreign_page != MAP_FAILED);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = foreign_handler;
    assert_int_equal(sigaction(SIGSEGV, &sa, NULL), 0);
    assert_ok(mv_logdirty_enable(h, id));
    write_page(ram, 1, 1);
    *err = EDOM;
    ((volatile uint8_t *)foreign_page)[0] = 1;
    assert_int_equal(*err, EDOM);
    assert_int_equal(foreign_page[0], 1);
    assert_ok(mv_logdirty_disable(h, id));
    munmap(foreign_page, MV_PAGE_SIZE);

    /* SIGBUS: past the end of an empty file, until the handler grows it. */
    foreign_fd = memfd_create("foreign", 0);
    assert_true(foreign_fd >= 0);
    foreign_page = mmap(NULL, MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                        foreign_fd, 0);
    assert_true(foreign_page != MAP_FAILED);
    assert_int_equal(sigaction(SIGBUS, &sa, NULL), 0);
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.max_pages = 10;
    assert_ok(mv_workload_start(h, id, &w)); /* installs the SIGBUS handler */
    assert_ok(mv_workload_wait(h, id, 60000, NULL));
    *err = EDOM;
    ((volatile uint8_t *)foreign_page)[0] = 2;
    assert_int_equal(*err, EDOM);
    assert_int_equal(foreign_page[0], 2);
    assert_true(foreign_grown);
    munmap(foreign_page, MV_PAGE_SIZE);
    close(foreign_fd);
    mv_host_destroy(h);
}

/* A handler that cannot be installed fails the call that needs it. */
static void failed_handler_install_is_reported(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = logging_domain(h, "install", MV_LOGDIRTY_MPROTECT);
    uint32_t g = tu_domain(h, "guest", 16 * MiB, 16 * MiB);
    uint8_t *ram = ram_of(h, id);
    struct mv_workload_config w;
    struct mv_workload_status st;
    struct sigaction sa, now;

    (void)state;
    /* As if the application had replaced the library's handlers. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    assert_int_equal(sigaction(SIGSEGV, &sa, NULL), 0);
    assert_int_equal(sigaction(SIGBUS, &sa, NULL), 0);
    mv__os_inject(MV_OS_SIGACTION, EIO, 0, 1);
    assert_err(mv_logdirty_enable(h, id), -EIO);
    assert_false(logging(h, id));
    write_page(ram, 4, 4); /* nothing protected */
    assert_ok(mv_logdirty_enable(h, id));
    assert_int_equal(sigaction(SIGSEGV, NULL, &now), 0);
    assert_true((now.sa_flags & SA_SIGINFO) && now.sa_sigaction != NULL);
    assert_ok(mv_logdirty_disable(h, id));

    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.max_pages = 100;
    mv__os_inject(MV_OS_SIGACTION, EIO, 0, 1);
    assert_err(mv_workload_start(h, g, &w), -EIO);
    assert_ok(mv_workload_start(h, g, &w));
    assert_ok(mv_workload_wait(h, g, 60000, &st));
    assert_false(st.crashed);
    tu_verify(h, g);
    mv_host_destroy(h);
}

/* Creating a logging domain fails cleanly at each of its mappings, the
 * dirty bitmap's among them, and leaves the host as it was. */
static void failed_mapping_fails_the_create(void **state)
{
    mv_host *h = tu_host();
    uint32_t other = logging_domain(h, "other", MV_LOGDIRTY_MPROTECT), id;
    struct mv_domain_config c;
    bool bitmap_failed = false;
    int rc = -1;

    (void)state;
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "new");
    c.maxmem_bytes = c.target_bytes = 16 * MiB;
    c.logdirty_mode = MV_LOGDIRTY_MPROTECT;
    for (unsigned skip = 0; rc < 0; skip++) {
        assert_true(skip < 64);
        mv__os_inject(MV_OS_MMAP, ENOMEM, skip, 1);
        rc = mv_domain_create(h, &c, &id);
        mv__os_inject(MV_OS_MMAP, 0, 0, 0);
        if (rc < 0) {
            assert_err(rc, -ENOMEM);
            bitmap_failed |= strstr(mv_last_error(), "dirty bitmap") != NULL;
            assert_ok(mv_host_audit(h));
        }
    }
    assert_true(bitmap_failed);
    assert_ok(mv_logdirty_enable(h, id));
    write_page(ram_of(h, id), 1, 1);
    assert_ok(mv_logdirty_disable(h, id));
    assert_ok(mv_domain_audit(h, other));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

#define GPAGES 4096u /* 16 MiB guests */

static uint32_t guest_domain(mv_host *h, const char *name, enum mv_logdirty_mode mode)
{
    struct mv_domain_config c;
    uint32_t id;

    if (!mode_available(mode)) {
        print_message("skipped: the kernel lacks %s\n", mv_logdirty_mode_name(mode));
        skip();
    }
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "%s", name);
    c.maxmem_bytes = c.target_bytes = (uint64_t)GPAGES * MV_PAGE_SIZE;
    c.vcpus = 2;
    c.logdirty_mode = mode;
    assert_ok(mv_domain_create(h, &c, &id));
    return id;
}

/* Run the built-in guest to its end: a vCPU that hung would show as a
 * timeout here. */
static void run_guest(mv_host *h, uint32_t id)
{
    struct mv_workload_config w;
    struct mv_workload_status st;

    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.max_pages = 3000;
    w.seed = 42;
    assert_ok(mv_workload_start(h, id, &w));
    assert_ok(mv_workload_wait(h, id, 60000, &st));
    assert_false(st.crashed);
}

static void hash_pages(mv_host *h, uint32_t id, uint64_t *hash)
{
    static uint64_t page[MV_PAGE_SIZE / 8];

    for (uint64_t gfn = 0; gfn < GPAGES; gfn++) {
        int rc = mv_domain_read_page(h, id, gfn, page);
        uint64_t x = 0xcbf29ce484222325ull;

        if (rc != -ENODATA)
            assert_ok(rc);
        for (size_t i = 0; rc == 0 && i < MV_PAGE_SIZE / 8; i++)
            x = (x ^ page[i]) * 0x100000001b3ull;
        hash[gfn] = x;
    }
}

/* Every page whose content differs from `before` is in `dirty`. */
static void assert_changes_reported(mv_host *h, uint32_t id, const uint64_t *before,
                                    const uint64_t *dirty)
{
    static uint64_t after[GPAGES];
    uint64_t changed = 0;

    hash_pages(h, id, after);
    for (uint64_t gfn = 0; gfn < GPAGES; gfn++) {
        if (after[gfn] == before[gfn])
            continue;
        changed++;
        if (!bit(dirty, gfn))
            fail_msg("gfn %#llx was written and not reported", (unsigned long long)gfn);
    }
    assert_true(changed > 0);
}

/*
 * The system call each step of `mode` makes on guest memory fails once (and
 * the enable's undo too): the call says so, the guest's vCPUs run on to
 * their end, every write is reported by the next successful fetch, the
 * oracle and audits hold, and a bystander domain is unchanged.
 */
static void injected_failures(enum mv_logdirty_mode mode)
{
    enum mv__os_op protect_op = mode == MV_LOGDIRTY_MPROTECT ? MV_OS_MPROTECT
                              : MV_OS_UFFD_WRITEPROTECT;
    enum mv__os_op fetch_op = mode == MV_LOGDIRTY_WP_ASYNC ? MV_OS_PAGEMAP_SCAN
                            : protect_op;
    mv_host *h = tu_host();
    uint32_t a = guest_domain(h, "a", mode), b = guest_domain(h, "b", mode);
    static uint64_t before[GPAGES], bystander[GPAGES], now[GPAGES];
    uint64_t dirty[GPAGES / 64];

    /* The bystander logs too, and holds data. */
    run_guest(h, b);
    assert_ok(mv_logdirty_enable(h, b));
    run_guest(h, b);
    assert_ok(mv_logdirty_clean(h, b, dirty, NULL, GPAGES / 64));
    hash_pages(h, b, bystander);
    run_guest(h, a);

    /* enable: the protect fails; then the protect and its undo. */
    for (unsigned failures = 1; failures <= 2; failures++) {
        mv__os_inject(protect_op, EIO, 0, failures);
        assert_err(mv_logdirty_enable(h, a), -EIO);
        mv__os_inject(protect_op, 0, 0, 0);
        assert_false(logging(h, a));
        run_guest(h, a);
        tu_verify(h, a);
    }
    assert_ok(mv_logdirty_enable(h, a));
    assert_ok(mv_logdirty_clean(h, a, dirty, NULL, GPAGES / 64));
    hash_pages(h, a, before);

    /* clean */
    run_guest(h, a);
    mv__os_inject(fetch_op, EIO, 0, 1);
    assert_err(mv_logdirty_clean(h, a, dirty, NULL, GPAGES / 64), -EIO);
    mv__os_inject(fetch_op, 0, 0, 0);
    assert_true(logging(h, a));
    run_guest(h, a);
    assert_ok(mv_logdirty_clean(h, a, dirty, NULL, GPAGES / 64));
    assert_changes_reported(h, a, before, dirty);
    tu_verify(h, a);
    hash_pages(h, a, before);

    /* disable */
    run_guest(h, a);
    mv__os_inject(protect_op, EIO, 0, 1);
    assert_err(mv_logdirty_disable(h, a), -EIO);
    mv__os_inject(protect_op, 0, 0, 0);
    assert_true(logging(h, a));
    run_guest(h, a);
    assert_ok(mv_logdirty_clean(h, a, dirty, NULL, GPAGES / 64));
    assert_changes_reported(h, a, before, dirty);
    assert_ok(mv_logdirty_disable(h, a));
    run_guest(h, a);
    tu_verify(h, a);

    /* The bystander: same bytes, nothing dirty, oracle and audit hold. */
    hash_pages(h, b, now);
    assert_memory_equal(now, bystander, sizeof(now));
    assert_int_equal(mv_logdirty_clean(h, b, dirty, NULL, GPAGES / 64), 0);
    assert_ok(mv_domain_audit(h, b));
    tu_verify(h, b);
    mv_host_destroy(h);
}

static void injected_failures_wp_async(void **state)
{
    (void)state;
    injected_failures(MV_LOGDIRTY_WP_ASYNC);
}

static void injected_failures_wp_sync(void **state)
{
    (void)state;
    injected_failures(MV_LOGDIRTY_WP_SYNC);
}

static void injected_failures_mprotect(void **state)
{
    (void)state;
    injected_failures(MV_LOGDIRTY_MPROTECT);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(bad_calls_are_refused),
    cmocka_unit_test(unavailable_mode_is_explained),
    cmocka_unit_test(scripted_rounds_wp_async),
    cmocka_unit_test(scripted_rounds_wp_sync),
    cmocka_unit_test(scripted_rounds_mprotect),
    cmocka_unit_test(concurrent_writers_wp_async),
    cmocka_unit_test(concurrent_writers_wp_sync),
    cmocka_unit_test(concurrent_writers_mprotect),
    cmocka_unit_test(guest_workload_under_logging),
    cmocka_unit_test(shared_bitmap_consumer),
    cmocka_unit_test(harvest_fills_the_live_bitmap),
    cmocka_unit_test(failed_scan_puts_back_what_it_took),
    cmocka_unit_test(live_bitmap_consumer_wp_async),
    cmocka_unit_test(live_bitmap_consumer_wp_sync),
    cmocka_unit_test(live_bitmap_consumer_mprotect),
    cmocka_unit_test(failed_disable_keeps_the_host_alive),
    cmocka_unit_test(errno_survives_a_handled_fault),
    cmocka_unit_test(foreign_faults_reach_the_previous_handler),
    cmocka_unit_test(failed_handler_install_is_reported),
    cmocka_unit_test(failed_mapping_fails_the_create),
    cmocka_unit_test(injected_failures_wp_async),
    cmocka_unit_test(injected_failures_wp_sync),
    cmocka_unit_test(injected_failures_mprotect),
};

TU_MAIN(cases)
