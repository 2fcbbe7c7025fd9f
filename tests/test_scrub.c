/*
 * test_scrub.c - frames a destroyed domain gives back, scrubbed in the
 * background (MV_SCRUB_BACKGROUND): destroy returns with the frames queued
 * and still charged, the audits count them, nothing is given out again
 * before it is scrubbed, charges and allocations that need the memory wait
 * for the scrubber, a failed punch falls back to zeros and says so, and a
 * host destroyed with frames queued finishes them.  Every case ends with
 * the content oracle (where a domain lives on) and the host audit.
 */
#include "testutil.h"
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#define SEED 0x5c2b5c2bull

static mv_host *background_host(uint64_t budget, uint64_t machine, mv_log_fn log, void *opaque)
{
    struct mv_host_config c;
    mv_host *h = NULL;

    tu_host_config(&c, budget);
    if (machine)
        c.machine_bytes = machine;
    c.scrub_mode = MV_SCRUB_BACKGROUND;
    c.log = log;
    c.log_opaque = opaque;
    assert_ok(mv_host_create(&c, &h));
    return h;
}

static void fill(mv_host *h, uint32_t id, uint64_t ws, uint64_t pages)
{
    tu_fill_random(h, id, SEED, ws, pages);
}

static struct mv_host_stats host_stats(mv_host *h)
{
    struct mv_host_stats s;

    assert_ok(mv_host_stats(h, &s));
    return s;
}

/* No frame of the machine holds memory. */
static void assert_machine_empty(mv_host *h)
{
    int fd = mv_host_machine_fd(h);

    assert_true(fd >= 0);
    assert_int_equal(lseek(fd, 0, SEEK_DATA), -1);
    assert_int_equal(errno, ENXIO);
}

static void destroy_returns_before_the_scrub(void **state)
{
    mv_host *h = background_host(1 * GiB, 0, NULL, NULL);
    uint32_t a = tu_domain(h, "a", 32 * MiB, 32 * MiB);
    uint64_t populated, free_before;
    struct mv_host_stats s;

    (void)state;
    free_before = host_stats(h).free_frame_pages; /* a's block is out */
    fill(h, a, 8192, 6000);
    populated = tu_info(h, a).populated_pages;
    assert_true(populated > 4000);
    tu_verify(h, a);
    s = host_stats(h);
    assert_int_equal(s.scrub_mode, MV_SCRUB_BACKGROUND);
    assert_int_equal(s.scrub_pending_pages, 0);

    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, a));
    s = host_stats(h);
    /* Queued: still charged, its block still out of the allocator. */
    assert_int_equal(s.domains, 0);
    assert_int_equal(s.scrub_pending_pages, 8192);
    assert_int_equal(s.scrub_pending_charged_pages, populated);
    assert_int_equal(s.populated_pages, populated);
    assert_int_equal(s.free_frame_pages, free_before);
    assert_int_equal(s.scrubbed_background_pages, 0);
    assert_ok(mv_host_audit(h));

    mv__scrub_hold(&h->machine, false);
    assert_ok(mv_host_wait_freed(h));
    s = host_stats(h);
    assert_int_equal(s.scrub_pending_pages, 0);
    assert_int_equal(s.scrub_pending_charged_pages, 0);
    assert_int_equal(s.populated_pages, 0);
    assert_int_equal(s.free_frame_pages, free_before + 8192);
    assert_int_equal(s.scrubbed_background_pages, 8192);
    assert_int_equal(s.scrub_failures, 0);
    assert_machine_empty(h);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A machine of 64 MiB holds one 64 MiB domain: the second can only have
 * the first's frames, and only once they are scrubbed. */
static void frames_are_given_out_only_scrubbed(void **state)
{
    mv_host *h = background_host(64 * MiB, 64 * MiB, NULL, NULL);
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB), b;

    (void)state;
    fill(h, a, 16384, 12000);
    tu_verify(h, a);
    assert_ok(mv_domain_destroy(h, a));
    /* The allocation waits for the give-back if it has to. */
    b = tu_domain(h, "b", 64 * MiB, 64 * MiB);
    assert_int_equal(host_stats(h).free_frame_pages, 0);
    assert_machine_empty(h);
    fill(h, b, 16384, 12000);
    tu_verify(h, b);
    assert_ok(mv_domain_destroy(h, b));
    assert_ok(mv_host_wait_freed(h));
    assert_machine_empty(h);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

struct filler {
    mv_host *h;
    uint32_t id;
};

static void *fill_thread(void *arg)
{
    struct filler *f = arg;

    fill(f->h, f->id, 8192, 8192);
    return NULL;
}

static unsigned scrub_waiters(mv_host *h)
{
    struct mv__scrub_counts c;

    mv__scrub_counts(&h->machine, &c);
    return c.waiters;
}

/* Start `fn(arg)` on a thread of its own, see it wait for the held
 * scrubber (not for a timeout), let the scrubber go and join the thread.
 * The caller holds the scrubber and checked that `fn` must wait. */
static void run_past_the_held_scrubber(mv_host *h, void *(*fn)(void *), void *arg)
{
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, fn, arg), 0);
    tu_wait_until(scrub_waiters(h) > 0);
    mv__scrub_hold(&h->machine, false);
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* The budget has room for one domain's pages: the second's populates wait
 * for the first's to be scrubbed and uncharged. */
static void charges_wait_for_the_scrubber(void **state)
{
    mv_host *h = background_host(40 * MiB, 0, NULL, NULL);
    uint32_t a = tu_domain(h, "a", 32 * MiB, 32 * MiB), b;
    struct filler f;

    (void)state;
    fill(h, a, 8192, 8192);
    assert_true(tu_info(h, a).populated_pages > 7000);
    b = tu_domain(h, "b", 32 * MiB, 32 * MiB);
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, a));
    assert_int_equal(host_stats(h).scrub_pending_pages, 8192);
    f = (struct filler){ .h = h, .id = b };
    /* b runs out of budget and waits for the scrubber, holding b's lock:
     * nothing here may ask for b until it is let go. */
    run_past_the_held_scrubber(h, fill_thread, &f);
    assert_true(tu_info(h, b).populated_pages > 7000);
    assert_int_not_equal(tu_info(h, b).state, MV_DOMAIN_CRASHED);
    tu_verify(h, b);
    assert_int_equal(host_stats(h).scrub_pending_pages, 0);
    mv_host_destroy(h);
}

struct budget_waiter {
    mv_host *h;
    uint32_t dom;
    int pool;
    int rc;
};

/* 4096 distinct pages that do not compress into a persistent tmem pool:
 * 16 MiB of frames. */
static void *put_thread(void *arg)
{
    struct budget_waiter *w = arg;
    uint64_t oid[3] = { 7, 0, 0 };
    uint8_t page[4096];

    w->rc = 0;
    for (uint32_t i = 0; i < 4096 && w->rc >= 0; i++) {
        for (size_t b = 0; b < sizeof(page); b += 8) {
            uint64_t v = ((uint64_t)i << 32 | b) * 0x9e3779b97f4a7c15ull;

            memcpy(page + b, &v, 8);
        }
        w->rc = mv_tmem_put_page(w->h, w->dom, (uint32_t)w->pool, oid, i, page, sizeof(page));
        if (w->rc == 1)
            w->rc = 0;
    }
    return NULL;
}

static void *set_budget_thread(void *arg)
{
    struct budget_waiter *w = arg;

    w->rc = mv_host_set_budget(w->h, 24 * MiB);
    return NULL;
}

/* tmem's frames and a lower budget wait for the scrubber too, rather than
 * failing (tmem would evict, the budget refuse) while memory is on its way
 * back. */
static void tmem_and_budget_wait_for_the_scrubber(void **state)
{
    mv_host *h = background_host(40 * MiB, 0, NULL, NULL);
    uint32_t a = tu_domain(h, "a", 32 * MiB, 32 * MiB), c;
    struct budget_waiter w;

    (void)state;
    c = tu_domain(h, "client", 8 * MiB, 8 * MiB);
    w = (struct budget_waiter){ .h = h, .dom = c };
    assert_ok(mv_tmem_set_client(h, c, 100, UINT64_MAX)); /* no quota */
    w.pool = mv_tmem_new_pool(h, c, MV_TMEM_PERSISTENT, NULL);
    assert_true(w.pool >= 0);

    fill(h, a, 8192, 8192);
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, a));
    /* The puts cannot all fit beside what a still holds. */
    assert_true(host_stats(h).populated_pages + 4096 > 40 * MiB / 4096);
    run_past_the_held_scrubber(h, put_thread, &w);
    assert_ok(w.rc);
    assert_ok(mv_host_audit(h));

    a = tu_domain(h, "a2", 32 * MiB, 32 * MiB);
    fill(h, a, 8192, 8192);
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, a));
    /* Over the new budget only until a2's frames are scrubbed. */
    assert_true(host_stats(h).populated_pages > 24 * MiB / 4096);
    assert_true(host_stats(h).populated_pages - host_stats(h).scrub_pending_charged_pages <=
                24 * MiB / 4096);
    run_past_the_held_scrubber(h, set_budget_thread, &w);
    assert_ok(w.rc);
    assert_int_equal(host_stats(h).budget_pages, 24 * MiB / 4096);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A clone and its source share the source's former frames in place; when
 * both are gone those frames, and the region holding them, go back through
 * the scrubber in order. */
static void clone_frames_are_scrubbed_in_background(void **state)
{
    mv_host *h = background_host(1 * GiB, 0, NULL, NULL);
    uint32_t src = tu_domain(h, "src", 32 * MiB, 32 * MiB), c;
    struct mv_share_stats ss;
    struct mv_host_stats s;
    uint64_t populated;

    (void)state;
    fill(h, src, 8192, 6000);
    populated = tu_info(h, src).populated_pages;
    assert_ok(mv_domain_pause(h, src));
    assert_ok(mv_domain_clone(h, src, "c", &c));
    tu_verify(h, c);
    assert_ok(mv_domain_destroy(h, c));
    tu_verify(h, src);
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, src));
    s = host_stats(h);
    /* The shared frames (a run each) and the region's block and the
     * source's own, all waiting. */
    assert_int_equal(s.scrub_pending_charged_pages, populated);
    assert_int_equal(s.populated_pages, populated);
    assert_true(s.scrub_pending_pages >= 2 * 8192);
    assert_ok(mv_share_stats(h, &ss));
    assert_int_equal(ss.shared_frames, 0);
    assert_ok(mv_host_audit(h));
    mv__scrub_hold(&h->machine, false);
    assert_ok(mv_host_wait_freed(h));
    s = host_stats(h);
    assert_int_equal(s.populated_pages, 0);
    assert_int_equal(s.scrub_pending_pages, 0);
    assert_machine_empty(h);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Two more domains share the clone's frames: when the clone and its
 * source go, their region stays, and the frames they alone held are
 * scrubbed at once (the region's audit finds no memory outside its live
 * frames), the scrubber held or not. */
static void a_region_that_stays_is_scrubbed_at_once(void **state)
{
    mv_host *h = background_host(1 * GiB, 0, NULL, NULL);
    uint32_t src = tu_domain(h, "src", 32 * MiB, 32 * MiB), c, x, y;
    struct mv_share_stats ss;

    (void)state;
    fill(h, src, 8192, 6000);
    x = tu_domain(h, "x", 32 * MiB, 32 * MiB);
    fill(h, x, 8192, 6000);         /* the same seed: the same pages */
    y = tu_domain(h, "y", 32 * MiB, 32 * MiB);
    fill(h, y, 8192, 6000);
    assert_ok(mv_domain_pause(h, src));
    assert_ok(mv_domain_clone(h, src, "c", &c));
    /* x and y take the clone's frame of a few gfns (those three domains
     * wrote alike); every other frame of the region stays pending. */
    for (uint64_t g = 0, done = 0; g < 8192 && done < 16; g++) {
        mv_share_handle hc, hx, hy;

        if (tu_page_type(h, c, g) != MV_PAGE_SHARED || tu_page_type(h, x, g) != MV_PAGE_RAM ||
            tu_page_type(h, y, g) != MV_PAGE_RAM)
            continue;
        assert_ok(mv_share_nominate(h, c, g, &hc));
        assert_ok(mv_share_nominate(h, x, g, &hx));
        assert_ok(mv_share_nominate(h, y, g, &hy));
        if (mv_share_pages(h, c, g, hc, x, g, hx) < 0 ||
            mv_share_pages(h, c, g, hc, y, g, hy) < 0)
            continue; /* written a different number of times */
        done++;
    }
    assert_ok(mv_share_stats(h, &ss));
    assert_true(ss.clone_pending_frames > 4000);
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, c));
    assert_ok(mv_domain_destroy(h, src));
    assert_ok(mv_share_stats(h, &ss));
    assert_true(ss.shared_frames >= 8);          /* x and y still share them */
    assert_ok(mv_host_audit(h));
    mv__scrub_hold(&h->machine, false);
    assert_ok(mv_host_wait_freed(h));
    tu_verify(h, x);
    tu_verify(h, y);
    assert_ok(mv_domain_destroy(h, x));
    assert_ok(mv_domain_destroy(h, y));
    assert_ok(mv_host_wait_freed(h));
    assert_int_equal(host_stats(h).populated_pages, 0);
    assert_machine_empty(h);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

struct log_capture {
    pthread_mutex_t lock;
    char last_error[512];
};

static void capture_log(void *opaque, enum mv_log_level level, const char *message)
{
    struct log_capture *lc = opaque;

    if (level != MV_LOG_ERROR)
        return;
    pthread_mutex_lock(&lc->lock);
    snprintf(lc->last_error, sizeof(lc->last_error), "%s", message);
    pthread_mutex_unlock(&lc->lock);
}

/* The scrubber's punches fail: the frames are overwritten with zeros, the
 * failure is logged and counted, and the memory is accounted as given back. */
static void failed_background_scrub_zeroes_and_says_so(void **state)
{
    struct log_capture lc = { .lock = PTHREAD_MUTEX_INITIALIZER };
    mv_host *h = background_host(1 * GiB, 0, capture_log, &lc);
    uint32_t a = tu_domain(h, "a", 8 * MiB, 8 * MiB);
    uint64_t base;
    uint8_t *buf = malloc(8 * MiB);
    struct mv_host_stats s;

    (void)state;
    assert_non_null(buf);
    fill(h, a, 2048, 2048);
    tu_verify(h, a);
    {
        struct mv_domain *d = mv__domain_get(h, a);

        assert_non_null(d);
        base = d->base_mfn;
        mv__domain_put(d);
    }
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, a));
    mv__os_inject(MV_OS_PUNCH, EIO, 0, MV_SCRUB_TRIES);
    mv__scrub_hold(&h->machine, false);
    assert_ok(mv_host_wait_freed(h));
    assert_int_equal(mv__os_injection_left(MV_OS_PUNCH), 0);
    s = host_stats(h);
    assert_int_equal(s.scrub_failures, 1);
    assert_int_equal(s.populated_pages, 0);
    pthread_mutex_lock(&lc.lock);
    assert_non_null(strstr(lc.last_error, "background scrub"));
    assert_non_null(strstr(lc.last_error, "zeroed"));
    pthread_mutex_unlock(&lc.lock);
    /* Zeros where the domain's bytes were. */
    assert_int_equal(pread(mv_host_machine_fd(h), buf, 8 * MiB, (off_t)(base << 12)),
                     (ssize_t)(8 * MiB));
    for (size_t i = 0; i < 8 * MiB; i++)
        if (buf[i])
            fail_msg("byte %zu of the scrubbed frames is %#x", i, buf[i]);
    free(buf);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A host destroyed with frames queued finishes them first. */
static void host_destroy_finishes_the_queue(void **state)
{
    mv_host *h = background_host(1 * GiB, 0, NULL, NULL);
    uint32_t a = tu_domain(h, "a", 16 * MiB, 16 * MiB);
    int fd;

    (void)state;
    fill(h, a, 4096, 3000);
    tu_verify(h, a);
    fd = dup(mv_host_machine_fd(h));
    assert_true(fd >= 0);
    mv__scrub_hold(&h->machine, true);
    assert_ok(mv_domain_destroy(h, a));
    assert_int_equal(host_stats(h).scrub_pending_pages, 4096);
    mv_host_destroy(h);
    /* Punched before the host let go of the memfd. */
    assert_int_equal(lseek(fd, 0, SEEK_DATA), -1);
    assert_int_equal(errno, ENXIO);
    close(fd);
}

static void scrub_mode_is_validated(void **state)
{
    struct mv_host_config c;
    mv_host *h = NULL;

    (void)state;
    tu_host_config(&c, 64 * MiB);
    c.scrub_mode = (enum mv_scrub_mode)7;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "scrub_mode 7"));
    assert_null(h);
    assert_string_equal(mv_scrub_mode_name(MV_SCRUB_SYNC), "sync");
    assert_string_equal(mv_scrub_mode_name(MV_SCRUB_BACKGROUND), "background");
    /* The default scrubs at once: nothing is ever pending. */
    c.scrub_mode = MV_SCRUB_SYNC;
    assert_ok(mv_host_create(&c, &h));
    assert_ok(mv_domain_destroy(h, tu_domain(h, "a", 8 * MiB, 8 * MiB)));
    assert_int_equal(host_stats(h).scrub_pending_pages, 0);
    assert_int_equal(host_stats(h).scrub_mode, MV_SCRUB_SYNC);
    assert_ok(mv_host_wait_freed(h));
    assert_err(mv_host_wait_freed(NULL), -EINVAL);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(destroy_returns_before_the_scrub),
    cmocka_unit_test(frames_are_given_out_only_scrubbed),
    cmocka_unit_test(charges_wait_for_the_scrubber),
    cmocka_unit_test(tmem_and_budget_wait_for_the_scrubber),
    cmocka_unit_test(clone_frames_are_scrubbed_in_background),
    cmocka_unit_test(a_region_that_stays_is_scrubbed_at_once),
    cmocka_unit_test(failed_background_scrub_zeroes_and_says_so),
    cmocka_unit_test(host_destroy_finishes_the_queue),
    cmocka_unit_test(scrub_mode_is_validated),
};

TU_MAIN(cases)
