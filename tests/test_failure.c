/*
 * test_failure.c - the failure rule, shown by injecting failures.
 *
 * An operation that fails returns an error and leaves everything as it was;
 * where that is impossible it crashes the one domain concerned, never the
 * host and never another domain; a vCPU never waits forever; no write is
 * ever lost.
 *
 * The table case runs every public operation that reaches the OS layer
 * (os.c) with one failure of one OS operation injected, for every OS
 * operation (heap allocations included) and every position n along the
 * operation's path (the n-th call fails), until a run passes without the
 * injection being reached.  After each run it checks: the call's result
 * (success, or an error with a message), what the operation itself promises
 * (tmem: every key holds the page of its last successful put, or nothing
 * after a failed one, never an older page), that no vCPU hangs (every
 * workload finishes within a deadline), the host audit, the content oracle
 * of every domain, and that the domains the operation was not about did not
 * change at all.  Each operation is its own case, so CTest runs each in its
 * own process under a timeout.
 *
 * The other cases reproduce one finding each, and fail without its fix.
 */
#include "testutil.h"
#include "memvisor-guest.h"
#include "internal.h"
#include "sharing.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define SEED 0x5eed5eedull
#define OTHER_SEED 0xb157a4d3ull
#define DEADLINE_MS 30000u
#define MAX_STEPS 400u
#define WATCHDOG_S 120u  /* one run of the table, at most (sanitizers included) */
#define TMEM_KEYS 48u    /* the tmem operations' keys: one object, indexes 0..47 */
#define SCENE_BYTES (8 * MiB) /* each domain of the table's scenes */
#define DIRTY_WORDS (SCENE_BYTES / MV_PAGE_SIZE / 64) /* its dirty bitmap */

/* ------------------------------------------------------------------------ */
/* shared helpers                                                            */

static uint32_t domain_with(mv_host *h, const char *name, uint64_t maxmem,
                            enum mv_cow_mode cow, enum mv_logdirty_mode ld)
{
    struct mv_domain_config c;
    uint32_t id = 0;

    tu_domain_config(&c, name, maxmem, maxmem);
    c.vcpus = 1;
    c.wait_timeout_ms = 2000;
    c.cow_mode = cow;
    c.logdirty_mode = ld;
    assert_ok(mv_domain_create(h, &c, &id));
    return id;
}

/* Run a workload to its end within the deadline: a vCPU that never comes
 * back fails the test.  Returns whether the domain crashed under it. */
static bool run_bounded(mv_host *h, uint32_t id, enum mv_workload_kind kind,
                        uint64_t seed, uint64_t ws, uint64_t pages)
{
    struct mv_workload_config w;
    struct mv_workload_status st;
    int rc;

    mv_workload_config_init(&w, kind);
    w.seed = seed;
    w.working_set_pages = ws;
    w.max_pages = pages;
    assert_ok(mv_workload_start(h, id, &w));
    rc = mv_workload_wait(h, id, DEADLINE_MS, &st);
    if (rc == -ETIMEDOUT)
        fail_msg("domain %u: a vCPU still waits after %u ms", id, DEADLINE_MS);
    assert_ok(rc);
    return st.crashed != 0;
}

static void fill(mv_host *h, uint32_t id, uint64_t seed, uint64_t ws, uint64_t pages)
{
    if (run_bounded(h, id, MV_WORKLOAD_RANDOM, seed, ws, pages))
        fail_msg("domain %u crashed: %s", id, tu_info(h, id).crash_reason);
}

/* The host audit, taken again while it cannot get a consistent view. */
static void audit_host(mv_host *h)
{
    int rc;

    for (int i = 0; i < 100 && (rc = mv_host_audit(h)) == -EAGAIN; i++)
        ;
    if (rc < 0)
        fail_msg("host audit: %s", mv_last_error());
}

static void verify_oracle(mv_host *h, uint32_t id)
{
    uint64_t bad = 0;
    int64_t n = mv_oracle_verify(h, id, &bad);

    assert_ok(n);
    if (n)
        fail_msg("domain %u: %lld pages differ from the oracle, first gfn %#llx",
                 id, (long long)n, (unsigned long long)bad);
}

static struct mv_domain_info info_of(mv_host *h, uint32_t id)
{
    mv__share_settle_all(h);
    return tu_info(h, id);
}

static void disarm_all(void)
{
    for (int op = 0; op < MV_OS_OP_COUNT; op++)
        mv__os_inject((enum mv__os_op)op, 0, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* the injection table                                                       */

/*
 * A scene: the victim v (the domain the operation is about), a partner p
 * with the same content at the same gfns (for sharing), and a bystander b
 * that nothing is about.  The operation may change v (and, for sharing, p's
 * mappings but never p's bytes); b must not change at all.
 */
struct scene {
    mv_host *h;
    uint32_t v, p, b, c;   /* c: a clone the operation made */
    enum mv_cow_mode cow;
    enum mv_logdirty_mode ld;
    uint64_t dirty[DIRTY_WORDS];
    char why[256];      /* the error message, when calls after it clear it */
    /* tmem: the victim's pool and, per index, the page a get must find:
     * a version number, or 0 for none (an ephemeral pool may also have
     * dropped it). */
    int pool;
    unsigned pool_flags;
    int expect[TMEM_KEYS];
};

struct operation {
    const char *name;
    /* Brings the scene to just before the call under test. */
    void (*prepare)(struct scene *s);
    /* The call under test: 0 or more, or a negative errno with a message.
     * May leave v crashed. */
    int64_t (*run)(struct scene *s);
    bool needs_partner;
    enum mv_cow_mode cow;
    enum mv_logdirty_mode ld;
    /* What the operation's own result must be, checked once nothing is
     * armed (NULL: the table's checks are enough). */
    void (*check)(struct scene *s);
};

#define WS 256u        /* working set of the fills, in pages */

static void prepare_nothing(struct scene *s)
{
    (void)s;
}

static int64_t run_populate(struct scene *s)
{
    /* Fresh pages of the victim's second half: 2 MiB blocks and pages. */
    struct mv_workload_config w;
    struct mv_workload_status st;
    int rc;

    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed = SEED;
    w.max_pages = 200;
    assert_ok(mv_workload_start(s->h, s->v, &w));
    rc = mv_workload_wait(s->h, s->v, DEADLINE_MS, &st);
    if (rc == -ETIMEDOUT)
        fail_msg("populate: a vCPU still waits after %u ms", DEADLINE_MS);
    return rc;
}

static void prepare_zero_pages(struct scene *s)
{
    /* Scrub zeroes all of maxmem: every page populated, most zero. */
    assert_false(run_bounded(s->h, s->v, MV_WORKLOAD_SCRUB, SEED, 0, 0));
    fill(s->h, s->v, SEED, WS / 2, 100);
}

static int64_t run_sweep(struct scene *s)
{
    return mv_domain_reclaim_zero(s->h, s->v, 0, NULL);
}

static int64_t run_balloon(struct scene *s)
{
    return mv_guest_balloon(s->h, s->v, 1 * MiB);
}

static int64_t run_deflate(struct scene *s)
{
    return mv_guest_balloon(s->h, s->v, SCENE_BYTES);
}

static void prepare_ballooned(struct scene *s)
{
    assert_ok(mv_guest_balloon(s->h, s->v, 1 * MiB));
}

static int64_t run_set_target(struct scene *s)
{
    return mv_domain_set_target(s->h, s->v, 1 * MiB);
}

static int64_t run_share_pages(struct scene *s)
{
    int64_t shared = 0;

    for (uint64_t g = 0; g < 8; g++) {
        mv_share_handle hv, hp;
        enum mv_page_type t;
        int rc;

        assert_ok(mv_domain_page_type(s->h, s->v, g, &t));
        if (t != MV_PAGE_RAM)
            continue;
        if ((rc = mv_share_nominate(s->h, s->v, g, &hv)) < 0 ||
            (rc = mv_share_nominate(s->h, s->p, g, &hp)) < 0 ||
            (rc = mv_share_pages(s->h, s->v, g, hv, s->p, g, hp)) < 0)
            return rc;
        shared++;
    }
    return shared;
}

static int64_t run_make_ro_and_share(struct scene *s)
{
    int64_t rc = mv_share_make_ro_and_share(s->h, s->v, 0, 64, NULL);

    if (rc >= 0)
        rc = mv_share_make_ro_and_share(s->h, s->p, 0, 64, NULL);
    return rc;
}

static void prepare_shared(struct scene *s)
{
    assert_ok(mv_share_make_ro_and_share(s->h, s->v, 0, WS, NULL));
    assert_ok(mv_share_make_ro_and_share(s->h, s->p, 0, WS, NULL));
    assert_true(info_of(s->h, s->p).shared_pages > 50);
}

static int64_t run_unshare(struct scene *s)
{
    int64_t done = 0;

    for (uint64_t g = 0; g < 32; g++) {
        enum mv_page_type t;
        int rc;

        assert_ok(mv_domain_page_type(s->h, s->v, g, &t));
        if (t != MV_PAGE_SHARED)
            continue;
        if ((rc = mv_share_unshare(s->h, s->v, g)) < 0)
            return rc;
        done++;
    }
    return done;
}

/* The victim writes its shared pages: copy-on-write breaks (trapped or the
 * kernel's copies, settled at the end). */
static int64_t run_cow_writes(struct scene *s)
{
    if (run_bounded(s->h, s->v, MV_WORKLOAD_RANDOM, SEED, WS, 24))
        return 0;
    return mv_share_settle(s->h, s->v);
}

static void prepare_shared_written(struct scene *s)
{
    prepare_shared(s);
    fill(s->h, s->v, SEED, WS, 100);
}

static int64_t run_settle(struct scene *s)
{
    return mv_share_settle(s->h, s->v);
}

/* Paused before the failures are armed: only the clone meets them (a
 * kernel-copying domain's pause protects its shared pages). */
static void prepare_shared_paused(struct scene *s)
{
    prepare_shared(s);
    assert_ok(mv_domain_pause(s->h, s->v));
}

/* The source stays paused: the checks after the run unpause it. */
static int64_t run_clone(struct scene *s)
{
    uint32_t c;
    int rc;

    rc = mv_domain_clone(s->h, s->v, "clone", &c);
    snprintf(s->why, sizeof(s->why), "%s", mv_last_error());
    if (rc == 0) {
        s->c = c;
        return 0;
    }
    /* A snapshot never harms what it copies. */
    assert_int_equal(info_of(s->h, s->v).state, MV_DOMAIN_PAUSED);
    return rc;
}

static int64_t run_logdirty_enable(struct scene *s)
{
    return mv_logdirty_enable(s->h, s->v);
}

static void prepare_logging(struct scene *s)
{
    assert_ok(mv_logdirty_enable(s->h, s->v));
    fill(s->h, s->v, SEED, WS, 100);
}

static int64_t run_logdirty_clean(struct scene *s)
{
    int64_t n = mv_logdirty_clean(s->h, s->v, s->dirty, NULL, DIRTY_WORDS);

    if (n < 0)
        return n;
    /* A write after the clean is reported by the next one. */
    fill(s->h, s->v, SEED, 64, 1);
    n = mv_logdirty_clean(s->h, s->v, s->dirty, NULL, DIRTY_WORDS);
    if (n == 0)
        fail_msg("a write after a clean was not reported");
    return n;
}

/* A peek, then a clean: every page the peek reported, and every write
 * before it, is reported by the clean, even after a peek that failed. */
static int64_t run_logdirty_peek(struct scene *s)
{
    uint64_t seen[DIRTY_WORDS] = { 0 };
    int64_t n = mv_logdirty_peek(s->h, s->v, seen, NULL, DIRTY_WORDS), cleaned;

    if (n < 0)
        snprintf(s->why, sizeof(s->why), "%s", mv_last_error());
    cleaned = mv_logdirty_clean(s->h, s->v, s->dirty, NULL, DIRTY_WORDS);
    if (cleaned < 0)
        return cleaned;
    for (size_t w = 0; w < DIRTY_WORDS; w++)
        if (seen[w] & ~s->dirty[w])
            fail_msg("pages the peek reported were not reported by the clean (word %zu)", w);
    if (cleaned == 0)
        fail_msg("the writes before the peek were not reported by the clean");
    return n;
}

/* Hinted ranges of v and p: the next scan step verifies and shares them. */
static int64_t run_share_hint(struct scene *s)
{
    struct mv_scan_result r;
    int rc;

    if ((rc = mv_share_hint(s->h, s->v, 0, WS, 0x51)) < 0 ||
        (rc = mv_share_hint(s->h, s->p, 0, WS, 0x51)) < 0)
        return rc;
    return mv_share_scan(s->h, 1, &r);
}

static int64_t run_logdirty_disable(struct scene *s)
{
    return mv_logdirty_disable(s->h, s->v);
}

static int64_t run_destroy(struct scene *s)
{
    int rc = mv_domain_destroy(s->h, s->v);

    s->v = 0;
    return rc;
}

/* A new domain, made whole or not at all. */
static int64_t run_domain_create(struct scene *s)
{
    struct mv_domain_config c;
    uint32_t id = 0;
    int rc;

    tu_domain_config(&c, "new", SCENE_BYTES, SCENE_BYTES);
    c.vcpus = 1;
    c.wait_timeout_ms = 2000;
    rc = mv_domain_create(s->h, &c, &id);
    if (rc == 0)
        s->c = id;
    else
        assert_int_equal(mv_domain_lookup(s->h, "new", &id), -ESRCH);
    return rc;
}

/* A pass of the sharing scanner: v and p share, their zero pages go back to
 * PoD; b is excluded, so that it must not change. */
static void prepare_scan(struct scene *s)
{
    assert_ok(mv_share_exclude(s->h, s->b, 0, SCENE_BYTES / MV_PAGE_SIZE));
}

static int64_t run_share_scan(struct scene *s)
{
    struct mv_scan_result r;

    return mv_share_scan(s->h, 0, &r);
}

/* The background threads: the scanner's and host paging's start (or fail
 * to, saying why) and stop.  Paging starts far above what the domains
 * hold, and the scanner skips b: b must not change. */
static int64_t run_background_start(struct scene *s)
{
    struct mv_scanner_config sc;
    int rc;

    mv_scanner_config_init(&sc);
    if ((rc = mv_scanner_start(s->h, &sc)) < 0)
        return rc;
    rc = mv_tmem_auto_paging(s->h, 90, 80);
    snprintf(s->why, sizeof(s->why), "%s", mv_last_error());
    assert_ok(mv_scanner_stop(s->h));
    if (rc == 0)
        assert_ok(mv_tmem_auto_paging(s->h, 0, 0));
    return rc;
}

/* tmem: version `version` of the page at `index` (0..TMEM_KEYS-1).  Half
 * the contents repeat (for deduplication) and every page compresses. */
static void tmem_page(uint8_t *page, uint32_t index, int version)
{
    uint64_t x = ((uint64_t)(index % (TMEM_KEYS / 2)) << 8 | (uint64_t)version) *
                 0x9e3779b97f4a7c15ull;

    memset(page, 0, MV_PAGE_SIZE);
    for (size_t i = 0; i < MV_PAGE_SIZE / 4; i += sizeof(x)) {
        x ^= x >> 29;
        x *= 0xbf58476d1ce4e5b9ull;
        memcpy(page + i, &x, sizeof(x));
    }
}

static const uint64_t tmem_oid[3] = { 7, 0, 0 };
static const uint8_t tmem_uuid[MV_TMEM_UUID_SIZE] = { 0x6d, 0x76, 0x1 };

/* Every key of the victim's pool holds version 1.  A shared pool is the
 * partner's too. */
static void prepare_pool(struct scene *s, unsigned flags)
{
    bool shared = flags & MV_TMEM_SHARED;
    uint8_t page[MV_PAGE_SIZE];

    s->pool_flags = flags;
    if (shared) {
        assert_ok(mv_tmem_authorize(s->h, s->v, tmem_uuid));
        assert_ok(mv_tmem_authorize(s->h, s->p, tmem_uuid));
    }
    s->pool = mv_tmem_new_pool(s->h, s->v, flags, shared ? tmem_uuid : NULL);
    assert_true(s->pool >= 0);
    if (shared)
        assert_int_equal(mv_tmem_new_pool(s->h, s->p, flags, tmem_uuid), s->pool);
    for (uint32_t i = 0; i < TMEM_KEYS; i++) {
        tmem_page(page, i, 1);
        assert_int_equal(mv_tmem_put_page(s->h, s->v, (uint32_t)s->pool, tmem_oid, i, page,
                                          MV_PAGE_SIZE), 1);
        s->expect[i] = 1;
    }
}

static void prepare_persistent_pool(struct scene *s)
{
    prepare_pool(s, MV_TMEM_PERSISTENT | MV_TMEM_DEDUP);
}

static void prepare_ephemeral_pool(struct scene *s)
{
    prepare_pool(s, MV_TMEM_ZSTD);
}

static void prepare_shared_pool(struct scene *s)
{
    prepare_pool(s, MV_TMEM_SHARED | MV_TMEM_PERSISTENT | MV_TMEM_DEDUP);
}

/* Who reads the pool back: the partner, when it shares it. */
static uint32_t pool_reader(const struct scene *s)
{
    return s->pool_flags & MV_TMEM_SHARED ? s->p : s->v;
}

/* Every key's version 1 replaced by version 2: a put that stores it holds
 * version 2; one that fails, or an ephemeral one dropped, leaves the key
 * empty.  A persistent pool's pages are then read back. */
static int64_t run_tmem_puts(struct scene *s)
{
    uint8_t page[MV_PAGE_SIZE], want[MV_PAGE_SIZE];
    int64_t stored = 0;
    int rc = 0;

    for (uint32_t i = 0; i < TMEM_KEYS && rc >= 0; i++) {
        tmem_page(page, i, 2);
        rc = mv_tmem_put_page(s->h, s->v, (uint32_t)s->pool, tmem_oid, i, page, MV_PAGE_SIZE);
        s->expect[i] = rc == 1 ? 2 : 0;
        stored += rc == 1;
    }
    if (rc < 0 || !(s->pool_flags & MV_TMEM_PERSISTENT))
        return rc < 0 ? rc : stored;
    for (uint32_t i = 0; i < TMEM_KEYS; i++) {
        rc = mv_tmem_get_page(s->h, pool_reader(s), (uint32_t)s->pool, tmem_oid, i, page,
                              MV_PAGE_SIZE);
        if (rc < 0)
            return rc;
        assert_int_equal(rc, 1);
        tmem_page(want, i, 2);
        assert_memory_equal(page, want, MV_PAGE_SIZE);
    }
    return stored;
}

/* Gives memory back: evictions of ephemeral pages, scrubbed frames
 * returned to the budget, compaction. */
static int64_t run_tmem_relinquish(struct scene *s)
{
    int64_t rc;

    if ((rc = mv_tmem_evict_npages(s->h, 4)) < 0 ||
        (rc = mv_tmem_relinquish_pages(s->h, 4)) < 0 ||
        (rc = mv_tmem_relinquish_page(s->h)) < 0 ||
        (rc = mv_tmem_compact(s->h)) < 0)
        return rc;
    return 0;
}

/* Every key holds what the model says: a persistent pool exactly; an
 * ephemeral one that, or nothing (it may drop pages), never an older
 * version. */
static void check_pool(struct scene *s)
{
    bool persistent = s->pool_flags & MV_TMEM_PERSISTENT;
    uint8_t page[MV_PAGE_SIZE], want[MV_PAGE_SIZE];

    for (uint32_t i = 0; i < TMEM_KEYS; i++) {
        int version = s->expect[i];
        int rc = mv_tmem_get_page(s->h, pool_reader(s), (uint32_t)s->pool, tmem_oid, i,
                                  page, MV_PAGE_SIZE);

        assert_true(rc == 0 || rc == 1);
        if (rc == 0 && version && persistent)
            fail_msg("tmem: key %u lost its page (version %d)", i, version);
        if (rc == 1 && !version)
            fail_msg("tmem: key %u holds a page after its put failed", i);
        if (rc == 1) {
            tmem_page(want, i, version);
            if (memcmp(page, want, MV_PAGE_SIZE) != 0)
                fail_msg("tmem: key %u does not hold version %d", i, version);
        }
    }
    if (mv_tmem_audit(s->h) < 0)
        fail_msg("tmem audit: %s", mv_last_error());
}

/* Host paging: the victim's pages out to tmem (their faults bring them
 * back in the checks after the run). */
static int64_t run_page_out(struct scene *s)
{
    return mv_tmem_page_out(s->h, s->v, 48);
}

/* The fault service's own wait (epoll) failing under running guests. */
static int64_t run_fault_service(struct scene *s)
{
    return run_populate(s);
}

/* The victim's copy-on-write and dirty-log modes are the defaults unless
 * named: MV_COW_TRAP, MV_LOGDIRTY_AUTO. */
static const struct operation operations[] = {
    { .name = "populate", .prepare = prepare_nothing, .run = run_populate },
    { .name = "sweep", .prepare = prepare_zero_pages, .run = run_sweep },
    { .name = "balloon", .prepare = prepare_nothing, .run = run_balloon },
    { .name = "deflate", .prepare = prepare_ballooned, .run = run_deflate },
    { .name = "set_target", .prepare = prepare_nothing, .run = run_set_target },
    { .name = "share", .prepare = prepare_nothing, .run = run_share_pages,
      .needs_partner = true },
    { .name = "make_ro_and_share", .prepare = prepare_nothing, .run = run_make_ro_and_share,
      .needs_partner = true },
    { .name = "unshare", .prepare = prepare_shared, .run = run_unshare,
      .needs_partner = true },
    { .name = "cow_break_trap", .prepare = prepare_shared, .run = run_cow_writes,
      .needs_partner = true },
    { .name = "cow_break_kernel", .prepare = prepare_shared, .run = run_cow_writes,
      .needs_partner = true, .cow = MV_COW_KERNEL },
    { .name = "settle", .prepare = prepare_shared_written, .run = run_settle,
      .needs_partner = true, .cow = MV_COW_KERNEL },
    { .name = "clone", .prepare = prepare_shared_paused, .run = run_clone,
      .needs_partner = true },
    { .name = "clone_kernel", .prepare = prepare_shared_paused, .run = run_clone,
      .needs_partner = true, .cow = MV_COW_KERNEL },
    { .name = "logdirty_enable_wp_async", .prepare = prepare_nothing, .run = run_logdirty_enable,
      .ld = MV_LOGDIRTY_WP_ASYNC },
    { .name = "logdirty_enable_wp_sync", .prepare = prepare_nothing, .run = run_logdirty_enable,
      .ld = MV_LOGDIRTY_WP_SYNC },
    { .name = "logdirty_enable_mprotect", .prepare = prepare_nothing, .run = run_logdirty_enable,
      .ld = MV_LOGDIRTY_MPROTECT },
    { .name = "logdirty_clean_wp_async", .prepare = prepare_logging, .run = run_logdirty_clean,
      .ld = MV_LOGDIRTY_WP_ASYNC },
    { .name = "logdirty_clean_wp_sync", .prepare = prepare_logging, .run = run_logdirty_clean,
      .ld = MV_LOGDIRTY_WP_SYNC },
    { .name = "logdirty_clean_mprotect", .prepare = prepare_logging, .run = run_logdirty_clean,
      .ld = MV_LOGDIRTY_MPROTECT },
    { .name = "logdirty_disable_wp_async", .prepare = prepare_logging, .run = run_logdirty_disable,
      .ld = MV_LOGDIRTY_WP_ASYNC },
    { .name = "logdirty_disable_wp_sync", .prepare = prepare_logging, .run = run_logdirty_disable,
      .ld = MV_LOGDIRTY_WP_SYNC },
    { .name = "logdirty_disable_mprotect", .prepare = prepare_logging, .run = run_logdirty_disable,
      .ld = MV_LOGDIRTY_MPROTECT },
    { .name = "logdirty_peek_wp_async", .prepare = prepare_logging, .run = run_logdirty_peek,
      .ld = MV_LOGDIRTY_WP_ASYNC },
    { .name = "logdirty_peek_mprotect", .prepare = prepare_logging, .run = run_logdirty_peek,
      .ld = MV_LOGDIRTY_MPROTECT },
    { .name = "destroy", .prepare = prepare_shared, .run = run_destroy,
      .needs_partner = true },
    { .name = "fault_service", .prepare = prepare_nothing, .run = run_fault_service },
    { .name = "domain_create", .prepare = prepare_nothing, .run = run_domain_create },
    { .name = "share_scan", .prepare = prepare_scan, .run = run_share_scan,
      .needs_partner = true },
    { .name = "share_hint", .prepare = prepare_scan, .run = run_share_hint,
      .needs_partner = true },
    { .name = "tmem_put_persistent", .prepare = prepare_persistent_pool, .run = run_tmem_puts,
      .check = check_pool },
    { .name = "tmem_put_ephemeral", .prepare = prepare_ephemeral_pool, .run = run_tmem_puts,
      .check = check_pool },
    { .name = "tmem_put_shared", .prepare = prepare_shared_pool, .run = run_tmem_puts,
      .needs_partner = true, .check = check_pool },
    { .name = "tmem_relinquish", .prepare = prepare_ephemeral_pool, .run = run_tmem_relinquish,
      .check = check_pool },
    { .name = "tmem_page_out", .prepare = prepare_nothing, .run = run_page_out },
    { .name = "background_start", .prepare = prepare_scan, .run = run_background_start },
};

/* The errno each OS operation fails with: what the kernel would say. */
static int injected_errno(enum mv__os_op op)
{
    switch (op) {
    case MV_OS_READ:
    case MV_OS_WRITE:
    case MV_OS_COPY:
    case MV_OS_PUNCH:
        return EIO;
    case MV_OS_EPOLL_WAIT:
        return EBADF;
    case MV_OS_UFFD_WAKE:
    case MV_OS_UFFD_CONTINUE:
    case MV_OS_UFFD_WRITEPROTECT:
        return EINVAL;
    default:
        return ENOMEM;
    }
}

/* What a domain is, for "did it change": its counts and state. */
struct snapshot {
    enum mv_domain_state state;
    uint64_t populated, pod, ballooned, shared;
};

static struct snapshot snapshot_of(mv_host *h, uint32_t id)
{
    struct mv_domain_info i = info_of(h, id);

    return (struct snapshot){ i.state, i.populated_pages, i.pod_pages,
                              i.ballooned_pages, i.shared_pages };
}

static bool same_snapshot(struct snapshot x, struct snapshot y)
{
    return x.state == y.state && x.populated == y.populated && x.pod == y.pod &&
           x.ballooned == y.ballooned && x.shared == y.shared;
}

static void set_up(struct scene *s, const struct operation *o)
{
    memset(s, 0, sizeof(*s));
    s->h = tu_host_with(1 * GiB, MV_FAULT_SPIN_DEFAULT);
    s->v = domain_with(s->h, "v", SCENE_BYTES, o->cow, o->ld);
    s->b = domain_with(s->h, "b", SCENE_BYTES, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    fill(s->h, s->v, SEED, WS, 400);
    fill(s->h, s->b, OTHER_SEED, WS, 400);
    if (o->needs_partner) {
        s->p = domain_with(s->h, "p", SCENE_BYTES, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
        fill(s->h, s->p, SEED, WS, 400);
    }
    o->prepare(s);
}

/*
 * One run: fail the (skip+1)-th call of `op` during the operation.
 * Returns whether the injection was reached.
 */
static bool run_injected(const struct operation *o, enum mv__os_op op, unsigned skip)
{
    struct scene s;
    struct snapshot before_b, before_p = { 0 };
    bool reached;
    int64_t rc;

    set_up(&s, o);
    before_b = snapshot_of(s.h, s.b);
    if (s.p)
        before_p = snapshot_of(s.h, s.p);
    mv__clear_error();
    mv__os_inject(op, injected_errno(op), skip, 1);
    rc = o->run(&s);
    reached = mv__os_injection_left(op) == 0;
    disarm_all();
    if (rc < 0 && mv_last_error()[0] == '\0' && s.why[0] == '\0' && rc != -ESRCH)
        fail_msg("%s, op %d failing call %u: error %lld without a message", o->name,
                 (int)op, skip + 1, (long long)rc);
    /* With nothing injected, the operation works (else the table would
     * sweep failures through an operation that never ran). */
    if (!reached && rc < 0)
        fail_msg("%s failed with no failure injected: %lld (%s)", o->name, (long long)rc,
                 s.why[0] ? s.why : mv_last_error());
    if (o->check)
        o->check(&s);
    /* The domains it was not about: unchanged, running, content intact. */
    assert_true(same_snapshot(before_b, snapshot_of(s.h, s.b)));
    verify_oracle(s.h, s.b);
    if (s.p) {
        struct snapshot now = snapshot_of(s.h, s.p);

        assert_int_equal(now.state, MV_DOMAIN_RUNNING);
        assert_int_equal(now.ballooned, before_p.ballooned);
        verify_oracle(s.h, s.p);
    }
    audit_host(s.h);
    if (s.c) {
        verify_oracle(s.h, s.c);
        assert_ok(mv_domain_destroy(s.h, s.c));
    }
    if (s.v && info_of(s.h, s.v).state != MV_DOMAIN_CRASHED) {
        /* The victim runs on: every vCPU comes back, every byte is right. */
        verify_oracle(s.h, s.v);
        if (info_of(s.h, s.v).state == MV_DOMAIN_PAUSED)
            assert_ok(mv_domain_unpause(s.h, s.v));
        if (!run_bounded(s.h, s.v, MV_WORKLOAD_RANDOM, SEED, WS, 100))
            verify_oracle(s.h, s.v);
    }
    if (s.p) {
        assert_false(run_bounded(s.h, s.p, MV_WORKLOAD_RANDOM, SEED, WS, 100));
        verify_oracle(s.h, s.p);
    }
    audit_host(s.h);
    mv_host_destroy(s.h);
    return reached;
}

/* Where the table is: a run that never ends says which one it was. */
static const char *watch_name;
static volatile sig_atomic_t watch_op, watch_skip;

static void watchdog_fired(int sig)
{
    char line[160];
    int n = snprintf(line, sizeof(line), "test_failure: %s, op %d failing call %d "
                     "did not finish within %u s\n", watch_name, (int)watch_op,
                     (int)watch_skip + 1, WATCHDOG_S);

    (void)sig;
    if (n > 0)
        (void)!write(STDERR_FILENO, line, (size_t)MV_MIN(n, (int)sizeof(line) - 1));
    /* For a developer chasing a hang: every thread's stack, from gdb. */
    if (getenv("MV_TEST_GDB_ON_HANG")) {
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "gdb -batch -p %d -ex 'thread apply all bt 20' >&2",
                 (int)getpid());
        (void)!system(cmd);
    }
    abort();
}

static void run_operation(const char *name)
{
    const struct operation *o = NULL;
    unsigned runs = 0;

    for (size_t i = 0; i < MV_ARRAY_SIZE(operations); i++)
        if (strcmp(operations[i].name, name) == 0)
            o = &operations[i];
    assert_non_null(o);
    signal(SIGALRM, watchdog_fired);
    /* MV_TEST_ONLY=OP:N replays the run that fails the N-th call of OP. */
    if (getenv("MV_TEST_ONLY")) {
        int op = 0;
        unsigned n = 1;

        assert_int_equal(sscanf(getenv("MV_TEST_ONLY"), "%d:%u", &op, &n), 2);
        assert_true(op >= 0 && op < MV_OS_OP_COUNT && n > 0);
        run_injected(o, (enum mv__os_op)op, n - 1);
        return;
    }
    for (int op = 0; op < MV_OS_OP_COUNT; op++) {
        unsigned skip = 0;

        for (;;) {
            bool reached;

            watch_name = name;
            watch_op = op;
            watch_skip = (sig_atomic_t)skip;
            alarm(WATCHDOG_S);
            reached = run_injected(o, (enum mv__os_op)op, skip);
            alarm(0);
            if (!reached)
                break;
            runs++;
            if (getenv("MV_TEST_VERBOSE"))
                print_message("%s: op %d, call %u failed\n", name, op, skip + 1);
            if (++skip == MAX_STEPS)
                fail_msg("%s: op %d still reached after %u calls", name, op, skip);
        }
    }
    print_message("%s: %u runs with a failure injected\n", name, runs);
    /* An operation that meets no failure has no business in the table. */
    assert_true(runs > 0);
}

#define TABLE_CASE(op)                                                         \
    static void inject_##op(void **state)                                      \
    {                                                                          \
        (void)state;                                                           \
        run_operation(#op);                                                    \
    }

TABLE_CASE(populate)
TABLE_CASE(sweep)
TABLE_CASE(balloon)
TABLE_CASE(deflate)
TABLE_CASE(set_target)
TABLE_CASE(share)
TABLE_CASE(make_ro_and_share)
TABLE_CASE(unshare)
TABLE_CASE(cow_break_trap)
TABLE_CASE(cow_break_kernel)
TABLE_CASE(settle)
TABLE_CASE(clone)
TABLE_CASE(clone_kernel)
TABLE_CASE(logdirty_enable_wp_async)
TABLE_CASE(logdirty_enable_wp_sync)
TABLE_CASE(logdirty_enable_mprotect)
TABLE_CASE(logdirty_clean_wp_async)
TABLE_CASE(logdirty_clean_wp_sync)
TABLE_CASE(logdirty_clean_mprotect)
TABLE_CASE(logdirty_disable_wp_async)
TABLE_CASE(logdirty_disable_wp_sync)
TABLE_CASE(logdirty_disable_mprotect)
TABLE_CASE(logdirty_peek_wp_async)
TABLE_CASE(logdirty_peek_mprotect)
TABLE_CASE(destroy)
TABLE_CASE(fault_service)
TABLE_CASE(domain_create)
TABLE_CASE(share_scan)
TABLE_CASE(share_hint)
TABLE_CASE(tmem_put_persistent)
TABLE_CASE(tmem_put_ephemeral)
TABLE_CASE(tmem_put_shared)
TABLE_CASE(tmem_relinquish)
TABLE_CASE(tmem_page_out)
TABLE_CASE(background_start)

/* ------------------------------------------------------------------------ */
/* one case per finding                                                      */

/* A 2 MiB populate that fails half-way populated the faulting page
 * already: the fallback must serve it as it is, not punch it out under the
 * guest's write (nor charge it twice). */
static void half_failed_block_populate_keeps_the_write(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = domain_with(h, "v", 8 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    volatile uint8_t *ram;
    uint64_t size;
    struct mv_domain_info i;

    (void)state;
    assert_ok(mv_domain_ram(h, id, (void **)&ram, &size));
    mv__os_inject(MV_OS_UFFD_ZEROPAGE_MIDWAY, ENOMEM, 0, 1);
    /* gfn 512 + 7 is in the half the failed block populate kept. */
    ram[(512 + 7) * MV_PAGE_SIZE + 100] = 0x5a;
    disarm_all();
    assert_int_equal(ram[(512 + 7) * MV_PAGE_SIZE + 100], 0x5a);
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, 256);
    assert_int_equal(i.state, MV_DOMAIN_RUNNING);
    audit_host(h);
    assert_int_equal(ram[(512 + 7) * MV_PAGE_SIZE + 100], 0x5a);
    mv_host_destroy(h);
}

/* Sharing whose own frames cannot be freed keeps the pages private (with
 * their memory charged) and says so, rather than sharing pages whose old
 * frames still hold memory. */
static void failed_punch_keeps_pages_private(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain_with(h, "a", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    uint32_t b = domain_with(h, "b", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    struct mv_domain_info before, after;
    int64_t rc;

    (void)state;
    fill(h, a, SEED, 512, 600);
    fill(h, b, SEED, 512, 600);
    assert_ok(mv_share_make_ro_and_share(h, a, 0, 512, NULL));
    /* No zero pages left to reclaim: the punch that fails is the one that
     * frees the frames of pages just shared. */
    assert_ok(mv_domain_reclaim_zero(h, b, 0, NULL));
    before = tu_info(h, b);
    mv__os_inject(MV_OS_PUNCH, EIO, 0, 1);
    rc = mv_share_make_ro_and_share(h, b, 0, 512, NULL);
    disarm_all();
    assert_int_equal(rc, -EIO);
    assert_non_null(strstr(mv_last_error(), "to share them"));
    after = tu_info(h, b);
    assert_int_equal(after.state, MV_DOMAIN_RUNNING);
    assert_int_equal(after.populated_pages + after.shared_pages,
                     before.populated_pages + before.shared_pages);
    audit_host(h);
    verify_oracle(h, a);
    verify_oracle(h, b);
    /* Asked again, the pages are shared. */
    assert_true(mv_share_make_ro_and_share(h, b, 0, 512, NULL) > 0);
    audit_host(h);
    verify_oracle(h, b);
    mv_host_destroy(h);
}

/* A wake that fails on the copy-on-write path is tried again; one that
 * keeps failing crashes the domain, whose vCPU then leaves through SIGBUS:
 * never a vCPU blocked forever. */
static void failed_wakes_never_hang_a_vcpu(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain_with(h, "a", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    uint32_t b = domain_with(h, "b", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    uint32_t c = domain_with(h, "c", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);

    (void)state;
    fill(h, a, SEED, 256, 400);
    fill(h, b, SEED, 256, 400);
    fill(h, c, OTHER_SEED, 256, 400);
    assert_ok(mv_share_make_ro_and_share(h, a, 0, 256, NULL));
    assert_ok(mv_share_make_ro_and_share(h, b, 0, 256, NULL));
    assert_true(tu_info(h, b).shared_pages > 100);
    /* One failure: the wake is tried again and the writers go on. */
    mv__os_inject(MV_OS_UFFD_WAKE, EINVAL, 0, 1);
    assert_false(run_bounded(h, b, MV_WORKLOAD_RANDOM, SEED, 256, 200));
    assert_int_equal(mv__os_injection_left(MV_OS_UFFD_WAKE), 0);
    disarm_all();
    verify_oracle(h, b);
    /* Every try fails: the domain crashes and its vCPU leaves. */
    mv__os_inject(MV_OS_UFFD_WAKE, EINVAL, 0, MV_WAKE_TRIES);
    assert_true(run_bounded(h, a, MV_WORKLOAD_RANDOM, SEED, 256, 200));
    disarm_all();
    assert_int_equal(tu_info(h, a).state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(tu_info(h, a).crash_reason, "cannot wake"));
    /* Nobody else was harmed. */
    verify_oracle(h, b);
    verify_oracle(h, c);
    assert_int_equal(tu_info(h, b).state, MV_DOMAIN_RUNNING);
    audit_host(h);
    mv_host_destroy(h);
}

/* A fault thread whose wait fails keeps serving faults. */
static void fault_threads_survive_wait_errors(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain_with(h, "a", 64 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    struct mv_host_stats hs;

    (void)state;
    /* The threads wait already: a kick brings them back to a wait that
     * fails, before the guest faults. */
    mv__os_inject(MV_OS_EPOLL_WAIT, EBADF, 0, 1000000);
    mv__fault_kick(h);
    tu_wait_until(mv_host_stats(h, &hs) == 0 && hs.fault_wait_errors > 0);
    fill(h, a, SEED, 8192, 3000);
    assert_true(mv__os_injection_left(MV_OS_EPOLL_WAIT) > 0); /* failing throughout */
    disarm_all();
    assert_ok(mv_host_stats(h, &hs));
    assert_true(hs.fault_wait_errors > 0);
    assert_int_equal(tu_info(h, a).state, MV_DOMAIN_RUNNING);
    verify_oracle(h, a);
    fill(h, a, SEED, 8192, 1000);
    verify_oracle(h, a);
    audit_host(h);
    mv_host_destroy(h);
}

/* A host whose settler looks every settle_ms, with a MV_COW_KERNEL domain
 * its workload filled (*src) and a clone of it (*c). */
static mv_host *host_with_kernel_clone(unsigned settle_ms, uint32_t *src, uint32_t *c)
{
    struct mv_host_config hc;
    mv_host *h;

    mv_host_config_init(&hc);
    hc.machine_bytes = 64 * GiB;
    hc.budget_bytes = 4 * GiB;
    hc.cow_settle_ms = settle_ms;
    assert_ok(mv_host_create(&hc, &h));
    *src = domain_with(h, "src", 16 * MiB, MV_COW_KERNEL, MV_LOGDIRTY_AUTO);
    fill(h, *src, SEED, 1024, 1500);
    assert_ok(mv_domain_pause(h, *src));
    assert_ok(mv_domain_clone(h, *src, "c", c));
    assert_ok(mv_domain_unpause(h, *src));
    return h;
}

/* Reading statistics changes nothing: a kernel copy stays unsettled (and
 * uncounted) until something settles it. */
static void statistics_change_nothing(void **state)
{
    struct mv_share_stats st;
    uint32_t src, c;
    /* The settler stays out of the way. */
    mv_host *h = host_with_kernel_clone(60000, &src, &c);

    (void)state;
    fill(h, c, SEED, 1024, 100);
    for (int i = 0; i < 3; i++) {
        assert_ok(mv_share_stats(h, &st));
        assert_int_equal(st.cow_kernel_copies, 0);
        assert_int_equal(tu_info(h, c).cow_kernel_copies, 0);
    }
    assert_true(mv_share_settle(h, c) > 0);
    assert_ok(mv_share_stats(h, &st));
    assert_true(st.cow_kernel_copies > 0);
    assert_int_equal(tu_info(h, c).cow_kernel_copies, st.cow_kernel_copies);
    audit_host(h);
    verify_oracle(h, src);
    verify_oracle(h, c);
    mv_host_destroy(h);
}

/* A clone write-protects a large populated run of its source with two
 * threads (clone.c): a failure in either half undoes the clone, and the
 * source is as it was. */
static void clone_split_protection_failure_undoes(void **state)
{
    mv_host *h = tu_host();
    uint32_t src = domain_with(h, "src", 48 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO), c;
    struct mv_domain_info before, after;

    (void)state;
    /* Every page populated: one run of 48 MiB. */
    assert_false(run_bounded(h, src, MV_WORKLOAD_SCRUB, SEED, 0, 0));
    fill(h, src, SEED, 4096, 2000);
    assert_ok(mv_domain_pause(h, src));
    for (unsigned skip = 0; skip < 2; skip++) {
        before = info_of(h, src);
        mv__os_inject(MV_OS_UFFD_WRITEPROTECT, EINVAL, skip, 1);
        assert_err(mv_domain_clone(h, src, "c", &c), -EINVAL);
        assert_int_equal(mv__os_injection_left(MV_OS_UFFD_WRITEPROTECT), 0);
        disarm_all();
        after = info_of(h, src);
        assert_int_equal(after.state, MV_DOMAIN_PAUSED);
        assert_int_equal(after.populated_pages, before.populated_pages);
        assert_int_equal(after.shared_pages, 0);
        audit_host(h);
        verify_oracle(h, src);
    }
    assert_ok(mv_domain_clone(h, src, "c", &c));
    assert_int_equal(info_of(h, c).shared_pages, info_of(h, src).shared_pages);
    audit_host(h);
    assert_ok(mv_domain_unpause(h, src));
    fill(h, src, SEED, 4096, 1000);
    fill(h, c, SEED, 4096, 1000);
    audit_host(h);
    verify_oracle(h, src);
    verify_oracle(h, c);
    mv_host_destroy(h);
}

/* The scanner tells apart domains whose ids differ past bit 23 (it packed
 * a domain and a gfn in one word and took them for the same page). */
static void scanner_tells_large_domids_apart(void **state)
{
    mv_host *h = tu_host();
    uint32_t a, b;
    struct mv_share_stats st;

    (void)state;
    h->next_domid = 5;
    a = domain_with(h, "a", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    h->next_domid = 5 + (1u << 23);
    b = domain_with(h, "b", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    assert_int_equal(b, a + (1u << 23));
    fill(h, a, SEED, 512, 400);
    fill(h, b, SEED, 512, 400);
    for (int pass = 0; pass < 3; pass++)
        assert_ok(mv_share_scan(h, 0, NULL));
    assert_ok(mv_share_stats(h, &st));
    assert_true(st.saved_pages > 100);
    audit_host(h);
    verify_oracle(h, a);
    verify_oracle(h, b);
    mv_host_destroy(h);
}

/* The audit is exact while the scanner shares and guests write: it passes,
 * or says it could not take a consistent view, and never reports a
 * violation that is not there. */
static void audit_is_exact_while_mechanisms_run(void **state)
{
    mv_host *h = tu_host();
    uint32_t a = domain_with(h, "a", 32 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    uint32_t b = domain_with(h, "b", 32 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);
    struct mv_scanner_config sc;
    struct mv_workload_config w;
    unsigned exact = 0;

    (void)state;
    fill(h, a, SEED, 4096, 6000);
    fill(h, b, SEED, 4096, 6000);
    mv_scanner_config_init(&sc);
    assert_ok(mv_scanner_start(h, &sc));
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed = SEED;
    w.working_set_pages = 8192;
    w.max_pages = 20000;
    assert_ok(mv_workload_start(h, a, &w));
    for (int i = 0; i < 40; i++) {
        int rc = mv_host_audit(h);

        if (rc == -EUCLEAN)
            fail_msg("audit %d while the scanner runs: %s", i, mv_last_error());
        if (rc != -EAGAIN)
            assert_ok(rc);
        exact += rc == 0;
    }
    assert_true(exact > 0);
    assert_ok(mv_workload_wait(h, a, DEADLINE_MS, NULL));
    assert_ok(mv_scanner_stop(h));
    audit_host(h);
    verify_oracle(h, a);
    verify_oracle(h, b);
    mv_host_destroy(h);
}

/* A domain whose address space cannot be reserved is refused cleanly. */
static void failed_reservation_refuses_the_domain(void **state)
{
    mv_host *h = tu_host();
    struct mv_domain_config c;
    uint32_t id;

    (void)state;
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "x");
    c.maxmem_bytes = c.target_bytes = 16 * MiB;
    /* Each mapping a domain's creation makes, failed in turn. */
    for (unsigned skip = 0;; skip++) {
        int rc;

        mv__os_inject(MV_OS_MMAP, ENOMEM, skip, 1);
        rc = mv_domain_create(h, &c, &id);
        if (mv__os_injection_left(MV_OS_MMAP)) {
            disarm_all();
            assert_ok(rc);
            assert_ok(mv_domain_destroy(h, id));
            break;
        }
        assert_err(rc, -ENOMEM);
        assert_err(mv_domain_lookup(h, "x", &id), -ESRCH);
        audit_host(h);
    }
    disarm_all();
    assert_ok(mv_domain_create(h, &c, &id));
    fill(h, id, SEED, 1024, 100);
    verify_oracle(h, id);
    audit_host(h);
    mv_host_destroy(h);
}

/* mv_host_create with each OS operation failing at each step: an error
 * with a message and no descriptor left open (memory left behind is the
 * sanitizer build's to find), or a host that works. */
static void host_create_fails_whole_at_every_step(void **state)
{
    unsigned runs = 0;

    (void)state;
    for (int op = 0; op < MV_OS_OP_COUNT; op++) {
        for (unsigned skip = 0;; skip++) {
            unsigned fds = tu_open_fds();
            struct mv_host_config c;
            mv_host *h = NULL;
            bool reached;
            int rc;

            tu_host_config(&c, 64 * MiB);
            mv__clear_error();
            mv__os_inject((enum mv__os_op)op, injected_errno(op), skip, 1);
            rc = mv_host_create(&c, &h);
            reached = mv__os_injection_left((enum mv__os_op)op) == 0;
            disarm_all();
            if (rc < 0) {
                if (mv_last_error()[0] == '\0')
                    fail_msg("host create, op %d failing call %u: error %d without a "
                             "message", op, skip + 1, rc);
                assert_null(h);
            } else {
                uint32_t id = domain_with(h, "a", 8 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);

                fill(h, id, SEED, WS, 100);
                verify_oracle(h, id);
                audit_host(h);
                mv_host_destroy(h);
            }
            if (tu_open_fds() != fds)
                fail_msg("host create, op %d failing call %u: %u descriptors left open",
                         op, skip + 1, tu_open_fds() - fds);
            if (!reached)
                break;
            runs++;
            if (skip + 1 == MAX_STEPS)
                fail_msg("host create: op %d still reached after %u calls", op, MAX_STEPS);
        }
    }
    print_message("host create: %u runs with a failure injected\n", runs);
    assert_true(runs > 0);
}

static int host_stats_of(mv_host *h)
{
    struct mv_host_stats st;

    return mv_host_stats(h, &st);
}

/* Without the memory to list the host's domains, a call that looks at
 * every domain fails with the reason (an audit used to pass over none of
 * them), and works again once the memory is there. */
static void unlisted_domains_fail_the_call(void **state)
{
    static const struct {
        const char *name;
        int (*call)(mv_host *h);
    } calls[] = {
        { "mv_host_audit", mv_host_audit },
        { "mv_share_audit", mv_share_audit },
        { "mv_tmem_audit", mv_tmem_audit },
        { "mv_host_stats", host_stats_of },
    };
    mv_host *h = tu_host();
    uint32_t id = domain_with(h, "listed", 16 * MiB, MV_COW_TRAP, MV_LOGDIRTY_AUTO);

    (void)state;
    fill(h, id, SEED, 1024, 100);
    for (size_t i = 0; i < MV_ARRAY_SIZE(calls); i++) {
        mv__os_inject(MV_OS_DOMAIN_LIST, ENOMEM, 0, 1);
        if (calls[i].call(h) != -ENOMEM || !strstr(mv_last_error(), "no memory to list"))
            fail_msg("%s: expected -ENOMEM, got \"%s\"", calls[i].name, mv_last_error());
        assert_int_equal(mv__os_injection_left(MV_OS_DOMAIN_LIST), 0);
        assert_ok(calls[i].call(h));
    }
    disarm_all();
    verify_oracle(h, id);
    audit_host(h);
    mv_host_destroy(h);
}

static uint64_t settled_copies(mv_host *h)
{
    struct mv_share_stats st;

    assert_ok(mv_share_stats(h, &st));
    return st.cow_kernel_copies;
}

/* The settler, when it cannot list the domains, looks again at its next
 * interval: the kernel's copies are settled all the same. */
static void settler_outlasts_a_failed_list_of_domains(void **state)
{
    uint32_t src, c;
    mv_host *h = host_with_kernel_clone(5, &src, &c);

    (void)state;
    mv__os_inject(MV_OS_DOMAIN_LIST, ENOMEM, 0, 2);
    fill(h, c, SEED, 1024, 100);
    tu_wait_until(mv__os_injection_left(MV_OS_DOMAIN_LIST) == 0);
    tu_wait_until(settled_copies(h) > 0);
    disarm_all();
    audit_host(h);
    verify_oracle(h, src);
    verify_oracle(h, c);
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(half_failed_block_populate_keeps_the_write),
    cmocka_unit_test(failed_punch_keeps_pages_private),
    cmocka_unit_test(failed_wakes_never_hang_a_vcpu),
    cmocka_unit_test(fault_threads_survive_wait_errors),
    cmocka_unit_test(statistics_change_nothing),
    cmocka_unit_test(clone_split_protection_failure_undoes),
    cmocka_unit_test(scanner_tells_large_domids_apart),
    cmocka_unit_test(audit_is_exact_while_mechanisms_run),
    cmocka_unit_test(failed_reservation_refuses_the_domain),
    cmocka_unit_test(unlisted_domains_fail_the_call),
    cmocka_unit_test(host_create_fails_whole_at_every_step),
    cmocka_unit_test(settler_outlasts_a_failed_list_of_domains),
    cmocka_unit_test(inject_populate),
    cmocka_unit_test(inject_sweep),
    cmocka_unit_test(inject_balloon),
    cmocka_unit_test(inject_deflate),
    cmocka_unit_test(inject_set_target),
    cmocka_unit_test(inject_share),
    cmocka_unit_test(inject_make_ro_and_share),
    cmocka_unit_test(inject_unshare),
    cmocka_unit_test(inject_cow_break_trap),
    cmocka_unit_test(inject_cow_break_kernel),
    cmocka_unit_test(inject_settle),
    cmocka_unit_test(inject_clone),
    cmocka_unit_test(inject_clone_kernel),
    cmocka_unit_test(inject_logdirty_enable_wp_async),
    cmocka_unit_test(inject_logdirty_enable_wp_sync),
    cmocka_unit_test(inject_logdirty_enable_mprotect),
    cmocka_unit_test(inject_logdirty_clean_wp_async),
    cmocka_unit_test(inject_logdirty_clean_wp_sync),
    cmocka_unit_test(inject_logdirty_clean_mprotect),
    cmocka_unit_test(inject_logdirty_disable_wp_async),
    cmocka_unit_test(inject_logdirty_disable_wp_sync),
    cmocka_unit_test(inject_logdirty_disable_mprotect),
    cmocka_unit_test(inject_logdirty_peek_wp_async),
    cmocka_unit_test(inject_logdirty_peek_mprotect),
    cmocka_unit_test(inject_destroy),
    cmocka_unit_test(inject_fault_service),
    cmocka_unit_test(inject_domain_create),
    cmocka_unit_test(inject_share_scan),
    cmocka_unit_test(inject_share_hint),
    cmocka_unit_test(inject_tmem_put_persistent),
    cmocka_unit_test(inject_tmem_put_ephemeral),
    cmocka_unit_test(inject_tmem_put_shared),
    cmocka_unit_test(inject_tmem_relinquish),
    cmocka_unit_test(inject_tmem_page_out),
    cmocka_unit_test(inject_background_start),
};

TU_MAIN(cases)
