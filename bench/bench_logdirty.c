/*
 * bench_logdirty.c - `memvisor bench logdirty`: what dirty logging costs a
 * guest and the migration that reads its log, the fast path against the
 * slow ones in the same run.  This is the evaluation of the KVM Forum talk
 * "Fast Write Protection" (KVM_GET_DIRTY_LOG of a 3 GB VM: 64,289,121 ns
 * before, 137,654 ns after), ported to memvisor.
 *
 * Mechanisms, each a domain created with its logdirty_mode:
 *   wp-async     the fast path: UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN
 *   wp-sync      the baseline: the fault thread handles every first write
 *   mprotect     mprotect + SIGSEGV, for completeness
 *   protect-all  the old way, all of guest RAM write-protected again every
 *                round: mv_logdirty_peek + mv_logdirty_disable +
 *                mv_logdirty_enable on the wp-sync domain, timed as a whole;
 *                the enable alone (one UFFDIO_WRITEPROTECT over all RAM,
 *                mv_logdirty_stats().protect_ns) is recorded too
 *   off          the same guest writes with logging off
 *   kernel floor the fetch with no memvisor code: a raw loop of protecting
 *                PAGEMAP_SCAN ioctls (PM_SCAN_WP_MATCHING |
 *                PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN) over a memfd
 *                mapping of the same size registered with a WP_ASYNC
 *                userfaultfd, given the same pattern in the same round
 *                (logdirty_floor.c); case 1 only, beside wp-async.  The
 *                busy case's readers load from the domain's RAM, but they
 *                run in this process, so the floor's flushes must
 *                interrupt them just the same
 * A mechanism the kernel lacks (mv_domain_create fails with -EOPNOTSUPP) is
 * reported as skipped, with the library's reason.
 *
 * Cases:
 *   fetch-scattered, fetch-clustered, fetch-clean, fetch-scattered-busy (case 1)
 *       mv_logdirty_clean of a fully populated --size-mib domain (3 GiB)
 *       after the main thread stored to 0.1% of its pages: one page in each
 *       of as many 2 MiB regions, or the same number in runs of
 *       LD_CLUSTER_RUN pages, or none; and the scattered pattern again
 *       while a vCPU thread on every other CPU reads guest RAM, so that each
 *       TLB shootdown must interrupt a running CPU, as it must while a guest
 *       runs during its migration.  --rounds rounds of one pattern (a
 *       store, then a timed fetch) give its median and p99; the patterns
 *       run one after the other, not interleaved, because the TLB flushes
 *       of one pattern change what the next pays on a virtual machine
 *       (docs/performance.md).  On wp-async each round also stores the
 *       pattern into the floor's mapping and times its scan, the two
 *       fetches taking turns to go first; beside the ratio of their
 *       medians, the median of their ratio round by round (the two see
 *       the same second of a drifting machine).  protect-all runs last, on
 *       wp-sync, with the other CPUs idle and then busy; it is the peer of
 *       the busy case when busy and of the others when idle.
 *   rewrite (case 2)
 *       mv_logdirty_enable on a fully populated --write-mib domain, then
 *       LD_WRITERS vCPU threads store one word to every page, each its own
 *       quarter: the time for vCPUs to make all memory writable again.
 *   rate-fresh, rate-written (cases 3, 4)
 *       LD_WRITERS vCPU threads store to random pages for --duration-ms
 *       while a fetch thread calls mv_logdirty_clean, sleeping
 *       --fetch-interval-ms between calls; on a domain that starts with
 *       nothing populated (every page a PoD entry) or fully populated.
 *
 * Every fetch is checked: case 1 must return exactly the pages stored to,
 * case 2 every page.  A case in which the library does something else fails
 * the run rather than report a figure for the wrong thing.
 */
#include "bench.h"
#include "bench_util.h"
#include "logdirty_floor.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LD_DEFAULT_SIZE_MIB 3072u
#define LD_DEFAULT_WRITE_MIB 1024u
#define LD_MAX_SIZE_MIB (64u * 1024u)
#define LD_DEFAULT_ROUNDS 25u
#define LD_MAX_ROUNDS 1000u
#define LD_DEFAULT_DURATION_MS 3000u
#define LD_DEFAULT_FETCH_INTERVAL_MS 5u
/* vCPU threads of cases 2-4. */
#define LD_WRITERS 4u
/* Case 1 dirties pages / LD_DIRTY_DIVISOR of them (0.1%). */
#define LD_DIRTY_DIVISOR 1000u
/* Pages in one run of the clustered pattern. */
#define LD_CLUSTER_RUN 64u
/* Fetch times kept per rate run; later fetches are counted, not kept. */
#define LD_FETCH_SAMPLES 65536u
/* The goals. */
#define LD_GOAL_FETCH_NS 1e6
#define LD_GOAL_FETCH_SPEEDUP 50.0
#define LD_GOAL_RATE_RATIO 5.0
/* wp-async fetch against the kernel's floor (at most) and against
 * protect-all (at least this many times faster). */
#define LD_GOAL_FLOOR_RATIO 1.1
#define LD_GOAL_PROTECT_ALL_SPEEDUP 50.0
/* Words of a page each kind of store writes (any word dirties the page). */
#define LD_WORD_POPULATE 0u
#define LD_WORD_PATTERN 1u
#define LD_WORD_REWRITE 2u
#define LD_WORD_RANDOM 3u

struct ld_options {
    uint64_t size_mib;
    uint64_t write_mib;
    uint64_t rounds;
    uint64_t duration_ms;
    uint64_t fetch_interval_ms;
    bool json;
};

enum ld_mech { MECH_OFF, MECH_ASYNC, MECH_SYNC, MECH_MPROTECT, MECH_COUNT };

static const enum mv_logdirty_mode mech_modes[MECH_COUNT] = {
    [MECH_OFF] = MV_LOGDIRTY_AUTO, /* never enabled */
    [MECH_ASYNC] = MV_LOGDIRTY_WP_ASYNC,
    [MECH_SYNC] = MV_LOGDIRTY_WP_SYNC,
    [MECH_MPROTECT] = MV_LOGDIRTY_MPROTECT,
};

static const char *mech_name(enum ld_mech m)
{
    return m == MECH_OFF ? "off" : mv_logdirty_mode_name(mech_modes[m]);
}

enum ld_pattern { PAT_SCATTERED, PAT_CLUSTERED, PAT_CLEAN, PAT_SCATTERED_BUSY, PAT_COUNT };

static const struct {
    const char *name;
    const char *what;
} patterns[PAT_COUNT] = {
    [PAT_SCATTERED] = { "fetch-scattered",
        "mv_logdirty_clean after 0.1% of the pages were written, one page in "
        "each of as many 2 MiB regions" },
    [PAT_CLUSTERED] = { "fetch-clustered",
        "mv_logdirty_clean after 0.1% of the pages were written in runs of "
        "64 contiguous pages, one run per 2 MiB region" },
    [PAT_CLEAN] = { "fetch-clean",
        "mv_logdirty_clean with nothing written since the last fetch" },
    [PAT_SCATTERED_BUSY] = { "fetch-scattered-busy",
        "fetch-scattered while a vCPU thread on every other CPU keeps loading "
        "from guest RAM, as running vCPUs do during a migration" },
};

/* What the library logged while a domain lived (its errors are printed on
 * stderr as well): warnings such as a 2 MiB populate falling back to 4 KiB
 * pages change what a figure means, so they are reported with it. */
struct ld_log {
    pthread_mutex_t lock;
    uint64_t messages;
    char first[192];
};

/* Case 1, one mechanism. */
struct ld_fetch {
    struct ld_log log;
    uint64_t populate_ns;      /* vCPUs storing to every page once */
    uint64_t protect_ns;       /* mv_logdirty_enable's protect_ns */
    uint64_t faults;           /* write traps taken over all rounds */
    uint64_t fetch_ns[PAT_COUNT][LD_MAX_ROUNDS];
    uint64_t write_ns[PAT_COUNT][LD_MAX_ROUNDS]; /* storing the pattern */
};

/* Case 1's protect-all peer, on the wp-sync domain; run->protect_all[busy]
 * with the other CPUs idle (0) or running reading vCPUs (1). */
struct ld_protect_all {
    uint64_t round_ns[LD_MAX_ROUNDS];  /* peek + disable + enable */
    uint64_t enable_ns[LD_MAX_ROUNDS]; /* the enable's protect_ns */
};

/* Case 2, one mechanism. */
struct ld_rewrite {
    struct ld_log log;
    uint64_t protect_ns;       /* the enable before the stores */
    uint64_t total_ns;         /* vCPUs storing to every page */
    uint64_t cpu_ns;           /* CPU time of every thread meanwhile */
    uint64_t faults;           /* write traps the library counted */
    uint64_t fetch_ns;         /* mv_logdirty_clean after: all pages dirty */
};

/* Cases 3 and 4, one mechanism. */
struct ld_rate {
    struct ld_log log;
    uint64_t elapsed_ns;
    uint64_t writes;           /* stores, each to a random page */
    uint64_t cpu_ns;
    uint64_t fetches;
    uint64_t fetched_pages;    /* sum of what the fetches returned */
    uint64_t fetch_median_ns;
    uint64_t fetch_p99_ns;
    uint64_t faults;
    uint64_t populated_pages;  /* at the end */
};

enum ld_rate_case { RATE_FRESH, RATE_WRITTEN, RATE_COUNT };

static const struct {
    const char *name;
    const char *what;
} rate_cases[RATE_COUNT] = {
    [RATE_FRESH] = { "rate-fresh",
        "4 vCPUs storing to random pages of a domain that starts with nothing "
        "populated, while a fetch thread cleans the log" },
    [RATE_WRITTEN] = { "rate-written",
        "4 vCPUs storing to random pages of a fully populated domain, while a "
        "fetch thread cleans the log" },
};

struct ld_run {
    struct ld_options opt;
    struct mv_bench_machine machine;
    bool available[MECH_COUNT];
    char skipped[MECH_COUNT][192];  /* why, when not available */
    struct mv_host_stats host;      /* the probe's: the fault service chosen */
    /* case 1 */
    uint64_t fetch_bytes;
    size_t fetch_pages;
    size_t dirty_pages;
    size_t pattern_regions[PAT_COUNT];
    uint64_t *gfns;                 /* the pattern being written */
    uint64_t *expect;               /* its bitmap */
    uint64_t *sorted;               /* scratch for order statistics */
    uint64_t *fetch_samples;        /* a rate run's fetch times */
    struct ld_fetch fetch[MECH_COUNT];
    struct ld_protect_all protect_all[2];
    struct ld_floor floor;          /* open while wp-async's case 1 runs */
    uint64_t floor_ns[PAT_COUNT][LD_MAX_ROUNDS];
    unsigned remote_readers;        /* busy readers pinned off the fetcher's CPU */
    /* cases 2-4 */
    uint64_t write_bytes;
    size_t write_pages;
    struct ld_rewrite rewrite[MECH_COUNT];
    struct ld_rate rate[RATE_COUNT][MECH_COUNT];
};

/* ------------------------------------------------------------------------ */
/* Domains                                                                   */

struct ld_domain {
    mv_host *host;
    uint32_t domid;
    uint8_t *ram;
    size_t pages;
    size_t words;
    uint64_t *dirty;    /* what fetches fill */
    struct ld_log *log; /* what the library logged */
};

static struct mv_domain_config domain_config(uint64_t bytes, enum ld_mech m)
{
    struct mv_domain_config dc;

    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "bench-logdirty-%s", mech_name(m));
    dc.maxmem_bytes = dc.target_bytes = bytes;
    dc.vcpus = LD_WRITERS;
    dc.pod_block_populate = 1;
    dc.logdirty_mode = mech_modes[m];
    return dc;
}

static void count_log(void *opaque, enum mv_log_level level, const char *message)
{
    struct ld_log *log = opaque;

    if (level == MV_LOG_ERROR)
        mv_bench_log(NULL, level, message);
    pthread_mutex_lock(&log->lock);
    if (log->messages++ == 0)
        snprintf(log->first, sizeof(log->first), "%s", message);
    pthread_mutex_unlock(&log->lock);
}

/* A host whose warnings and errors are counted in `log` (NULL: printed). */
static int host_open(mv_host **host, uint64_t bytes, struct ld_log *log)
{
    struct mv_host_config hc;

    mv_bench_host_config_init(&hc);
    hc.budget_bytes = 2 * bytes;
    hc.log = log ? count_log : mv_bench_log;
    hc.log_opaque = log;
    return mv_bench_host_create(&hc, host);
}

/* Which mechanisms the kernel offers: a domain of one 2 MiB block each. */
static int probe_mechanisms(struct ld_run *run)
{
    mv_host *host;
    int rc = host_open(&host, (uint64_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT, NULL);

    if (rc != MV_BENCH_OK)
        return rc;
    if ((rc = mv_host_stats(host, &run->host)) < 0) {
        mv_host_destroy(host);
        return mv_bench_lib_error("mv_host_stats", rc);
    }
    for (int m = 0; m < MECH_COUNT && rc == MV_BENCH_OK; m++) {
        struct mv_domain_config dc =
            domain_config((uint64_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT, m);
        uint32_t domid;
        int err = mv_domain_create(host, &dc, &domid);

        run->available[m] = err == 0;
        if (err == -EOPNOTSUPP)
            snprintf(run->skipped[m], sizeof(run->skipped[m]), "%s", mv_last_error());
        else if (err < 0)
            rc = mv_bench_lib_error("mv_domain_create", err);
        else
            mv_domain_destroy(host, domid);
    }
    mv_host_destroy(host);
    return rc;
}

static void domain_close(struct ld_domain *d)
{
    mv_host_destroy(d->host);
    pthread_mutex_destroy(&d->log->lock);
    free(d->dirty);
}

/* A new host with one domain of `bytes`, every page a PoD entry; what the
 * library logs goes to `log`. */
static int domain_open(struct ld_domain *d, uint64_t bytes, enum ld_mech m,
                       struct ld_log *log)
{
    struct mv_domain_config dc = domain_config(bytes, m);
    uint64_t size;
    void *ram;
    int rc;

    pthread_mutex_init(&log->lock, NULL);
    d->log = log;
    rc = host_open(&d->host, bytes, log);
    if (rc != MV_BENCH_OK) {
        pthread_mutex_destroy(&log->lock);
        return rc;
    }
    d->pages = (size_t)(bytes >> MV_PAGE_SHIFT);
    d->words = mv_logdirty_words(d->pages);
    d->dirty = calloc(d->words, sizeof(*d->dirty));
    rc = mv_domain_create(d->host, &dc, &d->domid);
    if (rc < 0)
        rc = mv_bench_lib_error("mv_domain_create", rc);
    else if ((rc = mv_domain_ram(d->host, d->domid, &ram, &size)) < 0)
        rc = mv_bench_lib_error("mv_domain_ram", rc);
    else if (!d->dirty)
        mv_bench_error("logdirty: no memory for a bitmap of %zu words", d->words);
    if (rc != 0 || !d->dirty) {
        domain_close(d);
        return MV_BENCH_FAILED;
    }
    d->ram = ram;
    return MV_BENCH_OK;
}

static volatile uint64_t *page_word(const struct ld_domain *d, uint64_t gfn, unsigned word)
{
    return (volatile uint64_t *)(d->ram + gfn * MV_PAGE_SIZE) + word;
}

/* The domain must still be running: a crash means no figure is valid. */
static int domain_check_running(const struct ld_domain *d, struct mv_domain_info *info)
{
    int rc = mv_domain_info(d->host, d->domid, info);

    if (rc < 0)
        return mv_bench_lib_error("mv_domain_info", rc);
    if (info->state != MV_DOMAIN_CRASHED)
        return MV_BENCH_OK;
    mv_bench_error("logdirty: the domain crashed: %s", info->crash_reason);
    return MV_BENCH_FAILED;
}

static int enable_logging(const struct ld_domain *d, uint64_t *protect_ns)
{
    struct mv_logdirty_stats stats;
    int rc = mv_logdirty_enable(d->host, d->domid);

    if (rc < 0)
        return mv_bench_lib_error("mv_logdirty_enable", rc);
    rc = mv_logdirty_stats(d->host, d->domid, &stats);
    if (rc < 0)
        return mv_bench_lib_error("mv_logdirty_stats", rc);
    *protect_ns = stats.protect_ns;
    return MV_BENCH_OK;
}

/* Add the write traps taken since logging was enabled to *faults. */
static int add_logdirty_faults(const struct ld_domain *d, uint64_t *faults)
{
    struct mv_logdirty_stats stats;
    int rc = mv_logdirty_stats(d->host, d->domid, &stats);

    if (rc < 0)
        return mv_bench_lib_error("mv_logdirty_stats", rc);
    *faults += stats.faults;
    return MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* vCPUs storing to every page, each its own quarter                        */

struct ld_quarter {
    const struct ld_domain *d;
    size_t first, count;
    unsigned word;
    uint64_t value;
};

static void *store_quarter(void *arg)
{
    const struct ld_quarter *q = arg;

    for (size_t gfn = q->first; gfn < q->first + q->count; gfn++)
        *page_word(q->d, gfn, q->word) = q->value;
    return NULL;
}

/* LD_WRITERS vCPU threads store `value` into word `word` of every page.
 * *wall_ns: from the first start to the last exit; *cpu_ns (may be NULL):
 * CPU time of the whole process meanwhile. */
static int store_every_page(const struct ld_domain *d, unsigned word, uint64_t value,
                            uint64_t *wall_ns, uint64_t *cpu_ns)
{
    struct ld_quarter q[LD_WRITERS];
    struct mv_bench_threads threads;
    size_t share = (d->pages + LD_WRITERS - 1) / LD_WRITERS;
    uint64_t cpu0, t0;
    int rc;

    for (unsigned i = 0; i < LD_WRITERS; i++) {
        size_t first = MV_BENCH_MIN(d->pages, i * share);

        q[i] = (struct ld_quarter){ .d = d, .first = first, .word = word, .value = value,
                                    .count = MV_BENCH_MIN(share, d->pages - first) };
    }
    cpu0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    rc = mv_bench_threads_start(&threads, store_quarter, q, sizeof(q[0]), LD_WRITERS);
    mv_bench_threads_join(&threads);
    *wall_ns = mv_bench_now_ns() - t0;
    if (cpu_ns)
        *cpu_ns = mv_bench_process_cpu_ns() - cpu0;
    return rc;
}

/* Touch every page so that all of the domain is populated. */
static int populate(const struct ld_domain *d, uint64_t *wall_ns)
{
    struct mv_domain_info info;
    int rc = store_every_page(d, LD_WORD_POPULATE, 1, wall_ns, NULL);

    if (rc == MV_BENCH_OK)
        rc = domain_check_running(d, &info);
    if (rc != MV_BENCH_OK || info.populated_pages == d->pages)
        return rc;
    mv_bench_error("logdirty: touching all %zu pages populated %" PRIu64, d->pages,
                   info.populated_pages);
    return MV_BENCH_FAILED;
}

/* ------------------------------------------------------------------------ */
/* Case 1: fetching the log of a big domain with 0.1% of it dirty           */

/* This round's pages of pattern `p` into run->gfns and run->expect; returns
 * how many.  The offsets move with the round, so each round dirties pages
 * the previous one did not. */
static size_t make_pattern(struct ld_run *run, enum ld_pattern p, unsigned round)
{
    size_t regions = run->fetch_pages / MV_BLOCK_PAGES, n = 0;
    size_t runs = (run->dirty_pages + LD_CLUSTER_RUN - 1) / LD_CLUSTER_RUN;

    memset(run->expect, 0, mv_logdirty_words(run->fetch_pages) * sizeof(uint64_t));
    if (p == PAT_SCATTERED || p == PAT_SCATTERED_BUSY) {
        for (size_t i = 0; i < run->dirty_pages; i++) {
            size_t region = i * regions / run->dirty_pages;

            run->gfns[n++] = region * MV_BLOCK_PAGES + (i * 67 + round * 131) % MV_BLOCK_PAGES;
        }
    } else if (p == PAT_CLUSTERED) {
        for (size_t j = 0; j < runs; j++) {
            size_t first = j * regions / runs * MV_BLOCK_PAGES +
                           (size_t)round * LD_CLUSTER_RUN % MV_BLOCK_PAGES;
            size_t length = MV_BENCH_MIN(LD_CLUSTER_RUN, run->dirty_pages - j * LD_CLUSTER_RUN);

            for (size_t k = 0; k < length; k++)
                run->gfns[n++] = first + k;
        }
    }
    for (size_t i = 0; i < n; i++)
        run->expect[run->gfns[i] / 64] |= 1ull << (run->gfns[i] % 64);
    return n;
}

/* Store to this round's pattern from the calling thread; the time taken. */
static uint64_t write_pattern(const struct ld_run *run, const struct ld_domain *d,
                              size_t n, unsigned round)
{
    uint64_t t0 = mv_bench_now_ns();

    for (size_t i = 0; i < n; i++)
        *page_word(d, run->gfns[i], LD_WORD_PATTERN) = round + 1;
    return mv_bench_now_ns() - t0;
}

/* A fetch must return exactly the pages written. */
static int check_fetch(const struct ld_run *run, const struct ld_domain *d,
                       const char *what, int64_t got, size_t n)
{
    if (got < 0)
        return mv_bench_lib_error(what, (int)got);
    if ((size_t)got == n && memcmp(d->dirty, run->expect, d->words * sizeof(uint64_t)) == 0)
        return MV_BENCH_OK;
    mv_bench_error("logdirty: %s after %zu pages were written returned %" PRId64
                   " pages%s", what, n, got,
                   (size_t)got == n ? ", not the ones written" : "");
    return MV_BENCH_FAILED;
}

/* The kernel's floor for this round: the same pattern stored into its
 * mapping, then its scan timed; it must find exactly the pages stored to. */
static int floor_round(struct ld_run *run, enum ld_pattern p, unsigned round, size_t n)
{
    uint64_t t0;
    int64_t got;

    for (size_t i = 0; i < n; i++)
        ((volatile uint64_t *)(run->floor.mem + run->gfns[i] * MV_PAGE_SIZE))[LD_WORD_PATTERN] =
            round + 1;
    t0 = mv_bench_now_ns();
    got = ld_floor_fetch(&run->floor);
    run->floor_ns[p][round] = mv_bench_now_ns() - t0;
    if (got == (int64_t)n)
        return MV_BENCH_OK;
    if (got < 0)
        mv_bench_error("logdirty: the floor's PAGEMAP_SCAN failed: %s", strerror((int)-got));
    else
        mv_bench_error("logdirty: the floor's scan after %zu pages were written "
                       "found %" PRId64, n, got);
    return MV_BENCH_FAILED;
}

static int fetch_round(struct ld_run *run, const struct ld_domain *d, enum ld_mech m,
                       enum ld_pattern p, unsigned round)
{
    size_t n = make_pattern(run, p, round);
    bool floor = m == MECH_ASYNC;
    uint64_t t0;
    int64_t got;
    int rc = MV_BENCH_OK;

    /* The floor goes first every other round: neither fetch always runs
     * right after the other's TLB flushes. */
    if (floor && round % 2)
        rc = floor_round(run, p, round, n);
    if (rc != MV_BENCH_OK)
        return rc;
    run->fetch[m].write_ns[p][round] = write_pattern(run, d, n, round);
    t0 = mv_bench_now_ns();
    got = mv_logdirty_clean(d->host, d->domid, d->dirty, NULL, d->words);
    run->fetch[m].fetch_ns[p][round] = mv_bench_now_ns() - t0;
    rc = check_fetch(run, d, "mv_logdirty_clean", got, n);
    if (rc == MV_BENCH_OK && floor && round % 2 == 0)
        rc = floor_round(run, p, round, n);
    return rc;
}

/* The old way, on the wp-sync domain: read the log, then write-protect all
 * of guest RAM again. */
static int protect_all_round(struct ld_run *run, const struct ld_domain *d, bool busy,
                             unsigned round)
{
    size_t n = make_pattern(run, PAT_SCATTERED, round);
    uint64_t t0;
    int64_t got;
    int rc;

    write_pattern(run, d, n, round);
    rc = add_logdirty_faults(d, &run->fetch[MECH_SYNC].faults); /* enable resets them */
    if (rc != MV_BENCH_OK)
        return rc;
    t0 = mv_bench_now_ns();
    got = mv_logdirty_peek(d->host, d->domid, d->dirty, NULL, d->words);
    if (got < 0)
        return check_fetch(run, d, "mv_logdirty_peek", got, n);
    rc = mv_logdirty_disable(d->host, d->domid);
    if (rc < 0)
        return mv_bench_lib_error("mv_logdirty_disable", rc);
    rc = enable_logging(d, &run->protect_all[busy].enable_ns[round]);
    run->protect_all[busy].round_ns[round] = mv_bench_now_ns() - t0;
    if (rc != MV_BENCH_OK)
        return rc;
    return check_fetch(run, d, "mv_logdirty_peek", got, n);
}

/* A running vCPU that only reads guest RAM: a CPU that is in the guest's
 * address space, so every TLB shootdown must interrupt it. */
struct ld_reader {
    const struct ld_domain *d;
    const atomic_bool *stop;
};

static void *read_loop(void *arg)
{
    const struct ld_reader *r = arg;

    while (!atomic_load_explicit(r->stop, memory_order_relaxed))
        (void)*page_word(r->d, 0, LD_WORD_RANDOM);
    return NULL;
}

struct ld_readers {
    struct ld_reader reader[MV_BENCH_MAX_THREADS];
    struct mv_bench_threads threads;
    atomic_bool stop;
    cpu_set_t caller_cpus;  /* the caller's affinity, restored by readers_stop */
    bool pinned;
};

/* Pin the calling thread to the CPU it is on and a reader to each other CPU
 * it may use.  Left to the scheduler, a reader sometimes shares the
 * caller's CPU while the other CPU idles; the fetch then sends no TLB
 * shootdown at all, and the case measures something else from run to run
 * (docs/performance.md).  Returns how many readers were pinned elsewhere. */
static unsigned readers_pin(struct ld_readers *r, unsigned count)
{
    cpu_set_t own, other;
    int cpu = sched_getcpu();
    unsigned pinned = 0;

    if (cpu < 0 || pthread_getaffinity_np(pthread_self(), sizeof(r->caller_cpus),
                                          &r->caller_cpus) != 0)
        return 0;
    CPU_ZERO(&own);
    CPU_SET(cpu, &own);
    if (pthread_setaffinity_np(pthread_self(), sizeof(own), &own) != 0)
        return 0;
    r->pinned = true;
    for (int c = 0; c < CPU_SETSIZE && pinned < count; c++) {
        if (c == cpu || !CPU_ISSET(c, &r->caller_cpus))
            continue;
        CPU_ZERO(&other);
        CPU_SET(c, &other);
        if (pthread_setaffinity_np(r->threads.thread[pinned], sizeof(other), &other) == 0)
            pinned++;
    }
    return pinned;
}

/* Start a reading vCPU thread on every CPU but the caller's (`busy`) or
 * none; stop them with readers_stop either way. */
static int readers_start(struct ld_run *run, const struct ld_domain *d, bool busy,
                         struct ld_readers *r)
{
    unsigned count = (unsigned)MV_BENCH_MIN(MV_BENCH_MAX(run->machine.cpus_allowed - 1, 1),
                                            MV_BENCH_MAX_THREADS);
    int rc;

    r->threads.count = 0;
    r->pinned = false;
    atomic_init(&r->stop, false);
    if (!busy)
        return MV_BENCH_OK;
    for (unsigned i = 0; i < count; i++)
        r->reader[i] = (struct ld_reader){ .d = d, .stop = &r->stop };
    rc = mv_bench_threads_start(&r->threads, read_loop, r->reader, sizeof(r->reader[0]),
                                count);
    if (rc == MV_BENCH_OK)
        run->remote_readers = readers_pin(r, r->threads.count);
    return rc;
}

static void readers_stop(struct ld_readers *r)
{
    atomic_store(&r->stop, true);
    mv_bench_threads_join(&r->threads);
    if (r->pinned)
        pthread_setaffinity_np(pthread_self(), sizeof(r->caller_cpus), &r->caller_cpus);
    r->pinned = false;
}

static bool pattern_busy(enum ld_pattern p)
{
    return p == PAT_SCATTERED_BUSY;
}

/* --rounds fetches of pattern `p`. */
static int fetch_pattern(struct ld_run *run, const struct ld_domain *d, enum ld_mech m,
                         enum ld_pattern p)
{
    struct ld_readers r;
    int rc = readers_start(run, d, pattern_busy(p), &r);

    for (unsigned round = 0; round < run->opt.rounds && rc == MV_BENCH_OK; round++)
        rc = fetch_round(run, d, m, p, round);
    readers_stop(&r);
    return rc;
}

/* --rounds rounds of protect-all, with the other CPUs idle or busy. */
static int protect_all_rounds(struct ld_run *run, const struct ld_domain *d, bool busy)
{
    struct ld_readers r;
    int rc = readers_start(run, d, busy, &r);

    for (unsigned round = 0; round < run->opt.rounds && rc == MV_BENCH_OK; round++)
        rc = protect_all_round(run, d, busy, round);
    readers_stop(&r);
    return rc;
}

static int fetch_mechanism(struct ld_run *run, enum ld_mech m)
{
    struct ld_fetch *f = &run->fetch[m];
    struct ld_domain d;
    int rc = domain_open(&d, run->fetch_bytes, m, &f->log);

    if (rc != MV_BENCH_OK)
        return rc;
    rc = populate(&d, &f->populate_ns);
    if (rc == MV_BENCH_OK)
        rc = enable_logging(&d, &f->protect_ns);
    if (rc == MV_BENCH_OK && m == MECH_ASYNC) {
        const char *failed = "";
        int err = ld_floor_open(&run->floor, run->fetch_bytes, &failed);

        if (err < 0) {
            mv_bench_error("logdirty: the kernel's floor: %s failed: %s", failed,
                           strerror(-err));
            rc = MV_BENCH_FAILED;
        }
    }
    for (int p = 0; p < PAT_COUNT && rc == MV_BENCH_OK; p++)
        rc = fetch_pattern(run, &d, m, p);
    ld_floor_close(&run->floor);
    for (int busy = 0; busy < 2 && rc == MV_BENCH_OK && m == MECH_SYNC; busy++)
        rc = protect_all_rounds(run, &d, busy);
    if (rc == MV_BENCH_OK)
        rc = add_logdirty_faults(&d, &f->faults);
    domain_close(&d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Case 2: vCPUs making all memory writable again                           */

static int rewrite_mechanism(struct ld_run *run, enum ld_mech m)
{
    struct ld_rewrite *r = &run->rewrite[m];
    struct mv_domain_info info;
    struct ld_domain d;
    uint64_t populate_ns, t0;
    int64_t got;
    int rc = domain_open(&d, run->write_bytes, m, &r->log);

    if (rc != MV_BENCH_OK)
        return rc;
    rc = populate(&d, &populate_ns);
    if (rc == MV_BENCH_OK && m != MECH_OFF)
        rc = enable_logging(&d, &r->protect_ns);
    if (rc == MV_BENCH_OK)
        rc = store_every_page(&d, LD_WORD_REWRITE, 2, &r->total_ns, &r->cpu_ns);
    if (rc == MV_BENCH_OK)
        rc = domain_check_running(&d, &info);
    if (rc == MV_BENCH_OK && m != MECH_OFF)
        rc = add_logdirty_faults(&d, &r->faults);
    if (rc == MV_BENCH_OK && m != MECH_OFF) {
        t0 = mv_bench_now_ns();
        got = mv_logdirty_clean(d.host, d.domid, d.dirty, NULL, d.words);
        r->fetch_ns = mv_bench_now_ns() - t0;
        if (got < 0) {
            rc = mv_bench_lib_error("mv_logdirty_clean", (int)got);
        } else if ((size_t)got != d.pages) {
            mv_bench_error("logdirty: rewrite: %s reported %" PRId64 " of the %zu "
                           "pages written", mech_name(m), got, d.pages);
            rc = MV_BENCH_FAILED;
        }
    }
    domain_close(&d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Cases 3 and 4: the dirty-page rate vCPUs sustain while the log is read   */

struct ld_writer {
    const struct ld_domain *d;
    const atomic_bool *stop;
    uint64_t seed;
    uint64_t writes;
} __attribute__((aligned(64)));

static void *random_writer(void *arg)
{
    struct ld_writer *w = arg;
    uint64_t x = w->seed, writes = 0;

    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        uint64_t gfn;

        x ^= x << 13;   /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        gfn = (uint64_t)(((unsigned __int128)x * w->d->pages) >> 64);
        *page_word(w->d, gfn, LD_WORD_RANDOM) = ++writes;
    }
    w->writes = writes;
    return NULL;
}

struct ld_fetcher {
    const struct ld_domain *d;
    const atomic_bool *stop;
    uint64_t interval_ns;
    uint64_t *samples;         /* LD_FETCH_SAMPLES fetch times */
    uint64_t fetches;
    uint64_t pages;
    int error;                 /* a failed mv_logdirty_clean */
    char detail[256];          /* its mv_last_error() */
};

static void *fetch_loop(void *arg)
{
    struct ld_fetcher *f = arg;
    struct timespec pause = {
        .tv_sec = (time_t)(f->interval_ns / 1000000000u),
        .tv_nsec = (long)(f->interval_ns % 1000000000u),
    };

    while (!atomic_load(f->stop)) {
        uint64_t t0 = mv_bench_now_ns();
        int64_t got = mv_logdirty_clean(f->d->host, f->d->domid, f->d->dirty, NULL,
                                        f->d->words);

        if (got < 0) {
            f->error = (int)got;
            snprintf(f->detail, sizeof(f->detail), "%s", mv_last_error());
            break;
        }
        if (f->fetches < LD_FETCH_SAMPLES)
            f->samples[f->fetches] = mv_bench_now_ns() - t0;
        f->fetches++;
        f->pages += (uint64_t)got;
        if (f->interval_ns)
            nanosleep(&pause, NULL);
    }
    return NULL;
}

/* Run the writers (and, when logging, the fetch thread) for --duration-ms. */
static int run_writers(struct ld_run *run, const struct ld_domain *d, bool logging,
                       struct ld_rate *r)
{
    struct ld_writer w[LD_WRITERS];
    struct ld_fetcher f = {
        .d = d, .interval_ns = run->opt.fetch_interval_ms * 1000000u,
        .samples = run->fetch_samples,
    };
    struct mv_bench_threads writers, fetcher = { .count = 0 };
    atomic_bool stop = false;
    uint64_t t0, cpu0;
    int rc;

    f.stop = &stop;
    for (unsigned i = 0; i < LD_WRITERS; i++)
        w[i] = (struct ld_writer){ .d = d, .stop = &stop,
                                   .seed = 0x9e3779b97f4a7c15ull * (i + 1) };
    cpu0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    rc = mv_bench_threads_start(&writers, random_writer, w, sizeof(w[0]), LD_WRITERS);
    if (rc == MV_BENCH_OK && logging)
        rc = mv_bench_threads_start(&fetcher, fetch_loop, &f, sizeof(f), 1);
    if (rc == MV_BENCH_OK)
        mv_bench_sleep_ms(run->opt.duration_ms);
    atomic_store(&stop, true);
    mv_bench_threads_join(&writers);
    r->elapsed_ns = mv_bench_now_ns() - t0;
    mv_bench_threads_join(&fetcher);
    r->cpu_ns = mv_bench_process_cpu_ns() - cpu0;
    if (rc != MV_BENCH_OK)
        return rc;
    if (f.error) {
        mv_bench_error("mv_logdirty_clean: %s: %s", mv_strerror(f.error), f.detail);
        return MV_BENCH_FAILED;
    }
    for (unsigned i = 0; i < LD_WRITERS; i++)
        r->writes += w[i].writes;
    r->fetches = f.fetches;
    r->fetched_pages = f.pages;
    if (f.fetches) {
        size_t kept = (size_t)MV_BENCH_MIN(f.fetches, LD_FETCH_SAMPLES);

        mv_bench_sort(f.samples, kept);
        r->fetch_median_ns = mv_bench_percentile(f.samples, kept, 50);
        r->fetch_p99_ns = mv_bench_percentile(f.samples, kept, 99);
    }
    return MV_BENCH_OK;
}

static int rate_mechanism(struct ld_run *run, enum ld_rate_case c, enum ld_mech m)
{
    struct ld_rate *r = &run->rate[c][m];
    struct mv_domain_info info;
    struct ld_domain d;
    uint64_t ns;
    int rc = domain_open(&d, run->write_bytes, m, &r->log);

    if (rc != MV_BENCH_OK)
        return rc;
    if (c == RATE_WRITTEN)
        rc = populate(&d, &ns);
    if (rc == MV_BENCH_OK && m != MECH_OFF)
        rc = enable_logging(&d, &ns);
    if (rc == MV_BENCH_OK)
        rc = run_writers(run, &d, m != MECH_OFF, r);
    if (rc == MV_BENCH_OK)
        rc = domain_check_running(&d, &info);
    if (rc == MV_BENCH_OK && m != MECH_OFF)
        rc = add_logdirty_faults(&d, &r->faults);
    if (rc == MV_BENCH_OK)
        r->populated_pages = info.populated_pages;
    domain_close(&d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Order statistics and comparisons                                          */

/* Percentile p of the first `count` values, through run->sorted. */
static uint64_t percentile_of(const struct ld_run *run, const uint64_t *values,
                              size_t count, double p)
{
    memcpy(run->sorted, values, count * sizeof(*values));
    mv_bench_sort(run->sorted, count);
    return mv_bench_percentile(run->sorted, count, p);
}

static uint64_t fetch_stat(const struct ld_run *run, enum ld_mech m, enum ld_pattern p,
                           double percentile)
{
    return percentile_of(run, run->fetch[m].fetch_ns[p], run->opt.rounds, percentile);
}

/* Median over the rounds of wp-async's fetch / the floor's in the same
 * round: on a shared VM the cost of a walk drifts from second to second,
 * and the two fetches of a round see the same machine. */
static double floor_paired_ratio(const struct ld_run *run, enum ld_pattern p)
{
    uint64_t milli[LD_MAX_ROUNDS];

    for (unsigned r = 0; r < run->opt.rounds; r++)
        milli[r] = run->floor_ns[p][r] ? run->fetch[MECH_ASYNC].fetch_ns[p][r] * 1000 /
                                         run->floor_ns[p][r] : 0;
    return (double)percentile_of(run, milli, run->opt.rounds, 50) / 1000.0;
}

/* What the busy case's floor pays beyond the idle one, per written 2 MiB
 * region: PAGEMAP_SCAN flushes the TLB once per region it write-protects,
 * and with a reader on another CPU each flush is a shootdown that waits for
 * that CPU's acknowledgement. */
static double busy_extra_per_region_ns(const struct ld_run *run)
{
    double busy = (double)percentile_of(run, run->floor_ns[PAT_SCATTERED_BUSY],
                                        run->opt.rounds, 50);
    double idle = (double)percentile_of(run, run->floor_ns[PAT_SCATTERED], run->opt.rounds, 50);
    size_t regions = run->pattern_regions[PAT_SCATTERED_BUSY];

    return regions && busy > idle ? (busy - idle) / (double)regions : 0;
}

static double rate_of(const struct ld_rate *r)
{
    return r->elapsed_ns ? (double)r->writes * 1e9 / (double)r->elapsed_ns : 0;
}

#define LD_MAX_COMPARISONS 10

static size_t fetch_comparisons(const struct ld_run *run, enum ld_pattern p,
                                struct mv_bench_comparison *out)
{
    const struct ld_protect_all *pa = &run->protect_all[pattern_busy(p)];
    bool goal = p != PAT_CLEAN;
    double median;
    size_t n = 0;

    if (!run->available[MECH_ASYNC])
        return 0;
    median = (double)fetch_stat(run, MECH_ASYNC, p, 50);
    out[n++] = (struct mv_bench_comparison){
        .figure = "wp-async fetch, median", .unit = "ns", .value = median,
        .peer = "the issue's goal", .peer_value = LD_GOAL_FETCH_NS,
        .goal_max_ratio = goal ? 1.0 : 0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "wp-async fetch, median", .unit = "ns", .value = median,
        .peer = "kernel floor: raw PAGEMAP_SCAN, median",
        .peer_value = (double)percentile_of(run, run->floor_ns[p], run->opt.rounds, 50),
        .goal_max_ratio = LD_GOAL_FLOOR_RATIO,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "wp-async fetch, p99", .unit = "ns",
        .value = (double)fetch_stat(run, MECH_ASYNC, p, 99),
        .peer = "kernel floor: raw PAGEMAP_SCAN, p99",
        .peer_value = (double)percentile_of(run, run->floor_ns[p], run->opt.rounds, 99),
    };
    if (run->available[MECH_SYNC]) {
        out[n++] = (struct mv_bench_comparison){
            .figure = "wp-async fetch, median", .unit = "ns", .value = median,
            .peer = "wp-sync fetch, median",
            .peer_value = (double)fetch_stat(run, MECH_SYNC, p, 50),
            .goal_max_ratio = goal ? 1.0 / LD_GOAL_FETCH_SPEEDUP : 0,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "wp-async fetch, p99", .unit = "ns",
            .value = (double)fetch_stat(run, MECH_ASYNC, p, 99),
            .peer = "wp-sync fetch, p99",
            .peer_value = (double)fetch_stat(run, MECH_SYNC, p, 99),
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "wp-async fetch, median", .unit = "ns", .value = median,
            .peer = pattern_busy(p) ? "protect-all (busy): peek+disable+enable"
                                    : "protect-all: peek+disable+enable",
            .peer_value = (double)percentile_of(run, pa->round_ns, run->opt.rounds, 50),
            .goal_max_ratio = 1.0 / LD_GOAL_PROTECT_ALL_SPEEDUP,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "wp-async fetch, median", .unit = "ns", .value = median,
            .peer = "protect-all: the enable alone",
            .peer_value = (double)percentile_of(run, pa->enable_ns, run->opt.rounds, 50),
        };
    }
    if (run->available[MECH_MPROTECT])
        out[n++] = (struct mv_bench_comparison){
            .figure = "wp-async fetch, median", .unit = "ns", .value = median,
            .peer = "mprotect fetch, median",
            .peer_value = (double)fetch_stat(run, MECH_MPROTECT, p, 50),
        };
    return n;
}

static const char *const rewrite_figures[MECH_COUNT] = {
    [MECH_ASYNC] = "wp-async: every page written",
    [MECH_SYNC] = "wp-sync: every page written",
    [MECH_MPROTECT] = "mprotect: every page written",
};

static size_t rewrite_comparisons(const struct ld_run *run, struct mv_bench_comparison *out)
{
    size_t n = 0;

    for (int m = MECH_ASYNC; m < MECH_COUNT; m++) {
        if (!run->available[m])
            continue;
        out[n++] = (struct mv_bench_comparison){
            .figure = rewrite_figures[m], .unit = "ns",
            .value = (double)run->rewrite[m].total_ns,
            .peer = "the same stores, logging off",
            .peer_value = (double)run->rewrite[MECH_OFF].total_ns,
        };
    }
    if (run->available[MECH_ASYNC] && run->available[MECH_SYNC])
        out[n++] = (struct mv_bench_comparison){
            .figure = rewrite_figures[MECH_ASYNC], .unit = "ns",
            .value = (double)run->rewrite[MECH_ASYNC].total_ns,
            .peer = rewrite_figures[MECH_SYNC],
            .peer_value = (double)run->rewrite[MECH_SYNC].total_ns,
        };
    return n;
}

static const char *const rate_figures[MECH_COUNT] = {
    [MECH_OFF] = "logging off: dirty-page rate",
    [MECH_ASYNC] = "wp-async: dirty-page rate",
    [MECH_SYNC] = "wp-sync: dirty-page rate",
    [MECH_MPROTECT] = "mprotect: dirty-page rate",
};

static size_t rate_comparisons(const struct ld_run *run, enum ld_rate_case c,
                               struct mv_bench_comparison *out)
{
    const struct ld_rate *r = run->rate[c];
    size_t n = 0;

    if (run->available[MECH_ASYNC] && run->available[MECH_SYNC])
        out[n++] = (struct mv_bench_comparison){
            .figure = rate_figures[MECH_ASYNC], .unit = "pages/s",
            .value = rate_of(&r[MECH_ASYNC]),
            .peer = rate_figures[MECH_SYNC], .peer_value = rate_of(&r[MECH_SYNC]),
            .goal_min_ratio = LD_GOAL_RATE_RATIO,
        };
    for (int m = MECH_ASYNC; m < MECH_COUNT; m++) {
        if (!run->available[m])
            continue;
        out[n++] = (struct mv_bench_comparison){
            .figure = rate_figures[m], .unit = "pages/s", .value = rate_of(&r[m]),
            .peer = rate_figures[MECH_OFF], .peer_value = rate_of(&r[MECH_OFF]),
        };
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */

static struct json_object *u64_json(uint64_t value)
{
    return json_object_new_int64((int64_t)value);
}

static struct json_object *rounds_json(const uint64_t *values, size_t count)
{
    struct json_object *a = json_object_new_array();

    for (size_t i = 0; i < count; i++)
        json_object_array_add(a, u64_json(values[i]));
    return a;
}

/* "median_ns", "p99_ns" and "rounds_ns": [...] of `count` values, into `o`. */
static void samples_add(struct json_object *o, const struct ld_run *run, const uint64_t *values,
                        size_t count)
{
    json_object_object_add(o, "median_ns", u64_json(percentile_of(run, values, count, 50)));
    json_object_object_add(o, "p99_ns", u64_json(percentile_of(run, values, count, 99)));
    json_object_object_add(o, "rounds_ns", rounds_json(values, count));
}

/* The same as a new object. */
static struct json_object *samples_json(const struct ld_run *run, const uint64_t *values,
                                        size_t count)
{
    struct json_object *o = json_object_new_object();

    samples_add(o, run, values, count);
    return o;
}

static void log_json(struct json_object *o, const struct ld_log *log)
{
    if (log->messages == 0)
        return;
    json_object_object_add(o, "library_messages", u64_json(log->messages));
    json_object_object_add(o, "first_library_message", json_object_new_string(log->first));
}

/* Mechanism m's object, added to `parent` under its name; NULL when the
 * kernel lacks m, the object then saying why it was skipped. */
static struct json_object *mech_json(const struct ld_run *run, struct json_object *parent,
                                     enum ld_mech m)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(parent, mech_name(m), o);
    if (run->available[m])
        return o;
    json_object_object_add(o, "skipped", json_object_new_string(run->skipped[m]));
    return NULL;
}

/* A case's object: its name, number and what it measures. */
static struct json_object *case_json(const char *name, int number, const char *what)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "case", json_object_new_int(number));
    json_object_object_add(o, "what", json_object_new_string(what));
    return o;
}

static struct json_object *fetch_case_json(const struct ld_run *run, enum ld_pattern p,
                                           bool *met, unsigned *goals)
{
    struct mv_bench_comparison cmp[LD_MAX_COMPARISONS];
    struct json_object *o = case_json(patterns[p].name, 1, patterns[p].what);
    struct json_object *raw = json_object_new_object();
    size_t rounds = run->opt.rounds;

    json_object_object_add(o, "dirty_pages",
                           u64_json(p == PAT_CLEAN ? 0 : run->dirty_pages));
    json_object_object_add(o, "dirty_2m_regions", u64_json(run->pattern_regions[p]));
    if (pattern_busy(p))
        json_object_object_add(o, "readers_on_other_cpus", u64_json(run->remote_readers));
    for (int m = MECH_ASYNC; m < MECH_COUNT; m++) {
        const struct ld_fetch *f = &run->fetch[m];
        struct json_object *mo = mech_json(run, raw, m);

        if (!mo)
            continue;
        samples_add(mo, run, f->fetch_ns[p], rounds);
        if (p != PAT_CLEAN)
            json_object_object_add(mo, "write_pattern",
                                   samples_json(run, f->write_ns[p], rounds));
    }
    if (run->available[MECH_ASYNC]) {
        struct json_object *fo = json_object_new_object();

        samples_add(fo, run, run->floor_ns[p], rounds);
        json_object_object_add(fo, "wp_async_over_floor_paired_median",
                               mv_bench_json_real(floor_paired_ratio(run, p), 3));
        if (pattern_busy(p))
            json_object_object_add(fo, "busy_extra_per_region_ns",
                                   mv_bench_json_real(busy_extra_per_region_ns(run), 0));
        json_object_object_add(raw, "kernel-floor", fo);
    }
    json_object_object_add(o, "raw", raw);
    *met = mv_bench_comparisons_json(o, cmp, fetch_comparisons(run, p, cmp), goals) && *met;
    return o;
}

static struct json_object *fetch_setup_json(const struct ld_run *run)
{
    struct json_object *o = json_object_new_object();

    for (int m = MECH_ASYNC; m < MECH_COUNT; m++) {
        struct json_object *mo = mech_json(run, o, m);

        if (!mo)
            continue;
        json_object_object_add(mo, "populate_ns", u64_json(run->fetch[m].populate_ns));
        json_object_object_add(mo, "enable_protect_ns", u64_json(run->fetch[m].protect_ns));
        json_object_object_add(mo, "write_traps", u64_json(run->fetch[m].faults));
        log_json(mo, &run->fetch[m].log);
    }
    for (int busy = 0; busy < 2 && run->available[MECH_SYNC]; busy++) {
        const struct ld_protect_all *p = &run->protect_all[busy];
        struct json_object *pa = json_object_new_object();

        json_object_object_add(pa, "what", json_object_new_string(busy ?
            "protect-all while a vCPU thread on every other CPU reads guest RAM" :
            "on the wp-sync domain after the scattered pattern was written: "
            "mv_logdirty_peek + mv_logdirty_disable + mv_logdirty_enable"));
        json_object_object_add(pa, "round", samples_json(run, p->round_ns, run->opt.rounds));
        json_object_object_add(pa, "enable_protect",
                               samples_json(run, p->enable_ns, run->opt.rounds));
        json_object_object_add(o, busy ? "protect-all-busy" : "protect-all", pa);
    }
    return o;
}

static struct json_object *rewrite_case_json(const struct ld_run *run, bool *met,
                                             unsigned *goals)
{
    struct mv_bench_comparison cmp[LD_MAX_COMPARISONS];
    struct json_object *o = case_json("rewrite", 2,
        "mv_logdirty_enable on a fully populated domain, then 4 vCPUs store one "
        "word to every page, each its own quarter");
    struct json_object *raw = json_object_new_object();

    for (int m = 0; m < MECH_COUNT; m++) {
        const struct ld_rewrite *r = &run->rewrite[m];
        struct json_object *mo = mech_json(run, raw, m);

        if (!mo)
            continue;
        json_object_object_add(mo, "total_ns", u64_json(r->total_ns));
        json_object_object_add(mo, "per_page_ns", mv_bench_json_real(
            (double)r->total_ns / (double)run->write_pages, 1));
        json_object_object_add(mo, "cpu_all_threads_ns", u64_json(r->cpu_ns));
        if (m != MECH_OFF) {
            json_object_object_add(mo, "enable_protect_ns", u64_json(r->protect_ns));
            json_object_object_add(mo, "write_traps", u64_json(r->faults));
            json_object_object_add(mo, "fetch_all_dirty_ns", u64_json(r->fetch_ns));
        }
        log_json(mo, &r->log);
    }
    json_object_object_add(o, "raw", raw);
    *met = mv_bench_comparisons_json(o, cmp, rewrite_comparisons(run, cmp), goals) && *met;
    return o;
}

static struct json_object *rate_case_json(const struct ld_run *run, enum ld_rate_case c,
                                          bool *met, unsigned *goals)
{
    struct mv_bench_comparison cmp[LD_MAX_COMPARISONS];
    struct json_object *o = case_json(rate_cases[c].name, c == RATE_FRESH ? 3 : 4,
                                      rate_cases[c].what);
    struct json_object *raw = json_object_new_object();

    for (int m = 0; m < MECH_COUNT; m++) {
        const struct ld_rate *r = &run->rate[c][m];
        struct json_object *mo = mech_json(run, raw, m);

        if (!mo)
            continue;
        json_object_object_add(mo, "elapsed_ns", u64_json(r->elapsed_ns));
        json_object_object_add(mo, "writes", u64_json(r->writes));
        json_object_object_add(mo, "pages_per_second", mv_bench_json_real(rate_of(r), 0));
        json_object_object_add(mo, "cpu_all_threads_ns", u64_json(r->cpu_ns));
        json_object_object_add(mo, "populated_pages", u64_json(r->populated_pages));
        if (m != MECH_OFF) {
            json_object_object_add(mo, "fetches", u64_json(r->fetches));
            json_object_object_add(mo, "fetched_pages", u64_json(r->fetched_pages));
            json_object_object_add(mo, "fetch_median_ns", u64_json(r->fetch_median_ns));
            json_object_object_add(mo, "fetch_p99_ns", u64_json(r->fetch_p99_ns));
            json_object_object_add(mo, "write_traps", u64_json(r->faults));
        }
        log_json(mo, &r->log);
    }
    json_object_object_add(o, "raw", raw);
    *met = mv_bench_comparisons_json(o, cmp, rate_comparisons(run, c, cmp), goals) && *met;
    return o;
}

static struct json_object *parameters_json(const struct ld_run *run)
{
    struct json_object *o = json_object_new_object();
    struct mv_host_config hc;

    mv_host_config_init(&hc);
    json_object_object_add(o, "size_mib", u64_json(run->opt.size_mib));
    json_object_object_add(o, "size_pages", u64_json(run->fetch_pages));
    json_object_object_add(o, "dirty_pages", u64_json(run->dirty_pages));
    json_object_object_add(o, "cluster_run_pages", u64_json(LD_CLUSTER_RUN));
    json_object_object_add(o, "rounds", u64_json(run->opt.rounds));
    json_object_object_add(o, "write_mib", u64_json(run->opt.write_mib));
    json_object_object_add(o, "write_pages", u64_json(run->write_pages));
    json_object_object_add(o, "vcpu_threads", u64_json(LD_WRITERS));
    json_object_object_add(o, "duration_ms", u64_json(run->opt.duration_ms));
    json_object_object_add(o, "fetch_interval_ms", u64_json(run->opt.fetch_interval_ms));
    json_object_object_add(o, "fault_threads", u64_json(run->host.fault_threads));
    json_object_object_add(o, "fault_mode",
                           json_object_new_string(mv_fault_mode_name(run->host.fault_mode)));
    json_object_object_add(o, "fault_spin_us", u64_json(hc.fault_spin_us));
    json_object_object_add(o, "pod_block_populate", json_object_new_int(1));
    json_object_object_add(o, "statistic", json_object_new_string(
        "case 1: nearest-rank median and p99 of --rounds fetches; cases 2-4: "
        "one run each; a ratio is value / peer value"));
    json_object_object_add(o, "note", json_object_new_string(
        "the vCPU threads, the fault thread and the fetch thread time-share "
        "the machine's CPUs (see machine.nproc)"));
    return o;
}

static struct json_object *goal_json(void)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "fetch_max_ns", u64_json((uint64_t)LD_GOAL_FETCH_NS));
    json_object_object_add(o, "fetch_min_speedup_vs_wp_sync",
                           mv_bench_json_real(LD_GOAL_FETCH_SPEEDUP, 0));
    json_object_object_add(o, "fetch_max_ratio_vs_kernel_floor",
                           mv_bench_json_real(LD_GOAL_FLOOR_RATIO, 2));
    json_object_object_add(o, "fetch_min_speedup_vs_protect_all",
                           mv_bench_json_real(LD_GOAL_PROTECT_ALL_SPEEDUP, 0));
    json_object_object_add(o, "rate_min_ratio_vs_wp_sync",
                           mv_bench_json_real(LD_GOAL_RATE_RATIO, 0));
    json_object_object_add(o, "source", json_object_new_string(
        "KVM Forum, Fast Write Protection: KVM_GET_DIRTY_LOG of a 3 GB VM, "
        "64,289,121 ns before and 137,654 ns after (their machine)"));
    return o;
}

static int report_json(const struct ld_run *run)
{
    struct json_object *root = mv_bench_json_root("logdirty", &run->machine);
    struct json_object *cases = json_object_new_array(), *mechs = json_object_new_object();
    unsigned goals = 0;
    bool met = true;

    json_object_object_add(root, "parameters", parameters_json(run));
    json_object_object_add(root, "goal", goal_json());
    for (int m = MECH_ASYNC; m < MECH_COUNT; m++)
        json_object_object_add(mechs, mech_name(m), run->available[m] ?
                               json_object_new_string("available") :
                               json_object_new_string(run->skipped[m]));
    json_object_object_add(root, "mechanisms", mechs);
    json_object_object_add(root, "fetch_setup", fetch_setup_json(run));
    for (int p = 0; p < PAT_COUNT; p++)
        json_object_array_add(cases, fetch_case_json(run, p, &met, &goals));
    json_object_array_add(cases, rewrite_case_json(run, &met, &goals));
    for (int c = 0; c < RATE_COUNT; c++)
        json_object_array_add(cases, rate_case_json(run, c, &met, &goals));
    json_object_object_add(root, "cases", cases);
    json_object_object_add(root, "goals_evaluated", json_object_new_int((int)goals));
    json_object_object_add(root, "goals_met", json_object_new_boolean(met && goals > 0));
    return mv_bench_json_emit(root);
}

/* ------------------------------------------------------------------------ */
/* Table                                                                     */

static void print_log(enum ld_mech m, const struct ld_log *log)
{
    if (log->messages)
        printf("    %s: the library logged %" PRIu64 " message%s, the first: %s\n",
               mech_name(m), log->messages, log->messages == 1 ? "" : "s", log->first);
}

static void print_fetch(const struct ld_run *run)
{
    char a[32], b[32], c[32], e[32];

    printf("\ncase 1: fetch the log of a %" PRIu64 " MiB domain, fully populated "
           "(%zu pages), %" PRIu64 " rounds\n", run->opt.size_mib, run->fetch_pages,
           run->opt.rounds);
    printf("    %-12s %14s %16s\n", "mechanism", "populate", "enable (protect)");
    for (int m = MECH_ASYNC; m < MECH_COUNT; m++) {
        if (run->available[m])
            printf("    %-12s %14s %16s\n", mech_name(m),
                   mv_bench_format(a, sizeof(a), (double)run->fetch[m].populate_ns, "ns"),
                   mv_bench_format(b, sizeof(b), (double)run->fetch[m].protect_ns, "ns"));
        else
            printf("    %-12s skipped: %s\n", mech_name(m), run->skipped[m]);
    }
    for (int m = MECH_ASYNC; m < MECH_COUNT; m++)
        print_log(m, &run->fetch[m].log);
    for (int p = 0; p < PAT_COUNT; p++) {
        struct mv_bench_comparison cmp[LD_MAX_COMPARISONS];

        printf("\n%s: %s (%zu pages, %zu 2 MiB regions)\n", patterns[p].name,
               patterns[p].what, p == PAT_CLEAN ? 0 : run->dirty_pages,
               run->pattern_regions[p]);
        printf("    %-12s %12s %12s %18s\n", "mechanism", "fetch median", "fetch p99",
               "first write/page");
        for (int m = MECH_ASYNC; m < MECH_COUNT; m++) {
            if (!run->available[m])
                continue;
            printf("    %-12s %12s %12s %18s\n", mech_name(m),
                   mv_bench_format(a, sizeof(a), (double)fetch_stat(run, m, p, 50), "ns"),
                   mv_bench_format(b, sizeof(b), (double)fetch_stat(run, m, p, 99), "ns"),
                   p == PAT_CLEAN ? "-" : mv_bench_format(c, sizeof(c),
                       (double)percentile_of(run, run->fetch[m].write_ns[p],
                                             run->opt.rounds, 50) /
                       (double)run->dirty_pages, "ns"));
        }
        if (run->available[MECH_ASYNC])
            printf("    %-12s %12s %12s   (raw PAGEMAP_SCAN loop, no memvisor code; "
                   "wp-async / floor in the same round, median: %.3f)\n",
                   "kernel floor",
                   mv_bench_format(a, sizeof(a), (double)percentile_of(
                       run, run->floor_ns[p], run->opt.rounds, 50), "ns"),
                   mv_bench_format(b, sizeof(b), (double)percentile_of(
                       run, run->floor_ns[p], run->opt.rounds, 99), "ns"),
                   floor_paired_ratio(run, p));
        if (run->available[MECH_SYNC] && (p == PAT_SCATTERED || p == PAT_SCATTERED_BUSY)) {
            const struct ld_protect_all *pa = &run->protect_all[pattern_busy(p)];

            printf("    %-12s %12s %12s   (peek+disable+enable; the enable alone: %s)\n",
                   "protect-all",
                   mv_bench_format(a, sizeof(a), (double)percentile_of(
                       run, pa->round_ns, run->opt.rounds, 50), "ns"),
                   mv_bench_format(b, sizeof(b), (double)percentile_of(
                       run, pa->round_ns, run->opt.rounds, 99), "ns"),
                   mv_bench_format(e, sizeof(e), (double)percentile_of(
                       run, pa->enable_ns, run->opt.rounds, 50), "ns"));
        }
        if (pattern_busy(p) && run->available[MECH_ASYNC])
            printf("    readers pinned to other CPUs: %u; the floor pays %s more per "
                   "written 2 MiB region than with them idle (a TLB shootdown each)\n",
                   run->remote_readers,
                   mv_bench_format(a, sizeof(a), busy_extra_per_region_ns(run), "ns"));
        mv_bench_comparisons_print(stdout, cmp, fetch_comparisons(run, p, cmp));
    }
}

static void print_rewrite(const struct ld_run *run)
{
    struct mv_bench_comparison cmp[LD_MAX_COMPARISONS];
    char a[32], b[32], c[32], d[32];

    printf("\nrewrite (case 2): enable on a fully populated %" PRIu64 " MiB domain, "
           "then %u vCPUs store to every page, each its own quarter\n",
           run->opt.write_mib, LD_WRITERS);
    printf("    %-12s %12s %10s %12s %12s %14s\n", "mechanism", "total", "per page",
           "traps", "enable", "fetch after");
    for (int m = 0; m < MECH_COUNT; m++) {
        const struct ld_rewrite *r = &run->rewrite[m];

        if (!run->available[m]) {
            printf("    %-12s skipped: %s\n", mech_name(m), run->skipped[m]);
            continue;
        }
        printf("    %-12s %12s %10s %12" PRIu64 " %12s %14s\n", mech_name(m),
               mv_bench_format(a, sizeof(a), (double)r->total_ns, "ns"),
               mv_bench_format(b, sizeof(b), (double)r->total_ns / (double)run->write_pages,
                               "ns"), r->faults,
               m == MECH_OFF ? "-" : mv_bench_format(c, sizeof(c), (double)r->protect_ns, "ns"),
               m == MECH_OFF ? "-" : mv_bench_format(d, sizeof(d), (double)r->fetch_ns, "ns"));
    }
    for (int m = 0; m < MECH_COUNT; m++)
        print_log(m, &run->rewrite[m].log);
    mv_bench_comparisons_print(stdout, cmp, rewrite_comparisons(run, cmp));
}

static void print_rate(const struct ld_run *run, enum ld_rate_case c)
{
    struct mv_bench_comparison cmp[LD_MAX_COMPARISONS];
    char a[32], b[32];

    printf("\n%s (case %d): %s; %" PRIu64 " MiB, %" PRIu64 " ms, a fetch every %"
           PRIu64 " ms\n", rate_cases[c].name, c == RATE_FRESH ? 3 : 4, rate_cases[c].what,
           run->opt.write_mib, run->opt.duration_ms, run->opt.fetch_interval_ms);
    printf("    %-12s %12s %12s %8s %12s %12s %12s\n", "mechanism", "rate", "writes",
           "fetches", "fetch median", "fetched", "traps");
    for (int m = 0; m < MECH_COUNT; m++) {
        const struct ld_rate *r = &run->rate[c][m];

        if (!run->available[m]) {
            printf("    %-12s skipped: %s\n", mech_name(m), run->skipped[m]);
            continue;
        }
        printf("    %-12s %12s %12" PRIu64 " %8" PRIu64 " %12s %12" PRIu64 " %12" PRIu64 "\n",
               mech_name(m), mv_bench_format(a, sizeof(a), rate_of(r), "pages/s"), r->writes,
               r->fetches, m == MECH_OFF ? "-" :
               mv_bench_format(b, sizeof(b), (double)r->fetch_median_ns, "ns"),
               r->fetched_pages, r->faults);
    }
    for (int m = 0; m < MECH_COUNT; m++)
        print_log(m, &run->rate[c][m].log);
    mv_bench_comparisons_print(stdout, cmp, rate_comparisons(run, c, cmp));
}

static int report_text(const struct ld_run *run)
{
    printf("memvisor bench logdirty: wp-async (fast path) against wp-sync (baseline), "
           "protect-all and mprotect\n");
    mv_bench_machine_print(stdout, &run->machine);
    printf("vCPUs:   %u threads on %ld CPUs time-share them with the fault and "
           "fetch threads\n", LD_WRITERS, run->machine.nproc);
    print_fetch(run);
    print_rewrite(run);
    for (int c = 0; c < RATE_COUNT; c++)
        print_rate(run, c);
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                               */

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor bench logdirty [--json] [--size-mib MIB] [--rounds N]\n"
        "                               [--write-mib MIB] [--duration-ms MS]\n"
        "                               [--fetch-interval-ms MS]\n"
        "\n"
        "Dirty logging: the wp-async fast path against the wp-sync baseline,\n"
        "re-protecting all of guest RAM every round, and mprotect.\n"
        "\n"
        "  --json                  print one JSON object instead of a table\n"
        "  --size-mib MIB          case 1 (fetch) domain, a multiple of 2\n"
        "                          (default %u)\n"
        "  --rounds N              case 1 fetches of each pattern (1..%u,\n"
        "                          default %u)\n"
        "  --write-mib MIB         cases 2-4 (rewrite, rate) domain, a multiple\n"
        "                          of 2 (default %u)\n"
        "  --duration-ms MS        cases 3-4: how long the vCPUs write (default %u)\n"
        "  --fetch-interval-ms MS  cases 3-4: pause between fetches, 0 = back to\n"
        "                          back (default %u)\n"
        "  --help                  this text\n",
        LD_DEFAULT_SIZE_MIB, LD_MAX_ROUNDS, LD_DEFAULT_ROUNDS, LD_DEFAULT_WRITE_MIB,
        LD_DEFAULT_DURATION_MS, LD_DEFAULT_FETCH_INTERVAL_MS);
}

/* One option other than --json and --help. */
static int parse_option(int opt, const char *arg, void *ctx)
{
    struct ld_options *o = ctx;

    switch (opt) {
    case 's':
        return mv_bench_parse_mib("logdirty: --size-mib", arg, LD_MAX_SIZE_MIB, &o->size_mib);
    case 'r':
        return mv_bench_parse_u64("logdirty: --rounds", arg, 1, LD_MAX_ROUNDS, &o->rounds);
    case 'w':
        return mv_bench_parse_mib("logdirty: --write-mib", arg, LD_MAX_SIZE_MIB,
                                  &o->write_mib);
    case 'd':
        return mv_bench_parse_u64("logdirty: --duration-ms", arg, 1, 3600000,
                                  &o->duration_ms);
    case 'i':
        return mv_bench_parse_u64("logdirty: --fetch-interval-ms", arg, 0, 60000,
                                  &o->fetch_interval_ms);
    }
    return MV_BENCH_OK;
}

/* Returns MV_BENCH_OK, or MV_BENCH_USAGE after saying why; `help` is set
 * when --help was given. */
static int parse_options(int argc, char **argv, void *arg, bool *help)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "size-mib", required_argument, NULL, 's' },
        { "rounds", required_argument, NULL, 'r' },
        { "write-mib", required_argument, NULL, 'w' },
        { "duration-ms", required_argument, NULL, 'd' },
        { "fetch-interval-ms", required_argument, NULL, 'i' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct ld_options *o = &((struct ld_run *)arg)->opt;
    int rc;

    *o = (struct ld_options){
        .size_mib = LD_DEFAULT_SIZE_MIB, .write_mib = LD_DEFAULT_WRITE_MIB,
        .rounds = LD_DEFAULT_ROUNDS, .duration_ms = LD_DEFAULT_DURATION_MS,
        .fetch_interval_ms = LD_DEFAULT_FETCH_INTERVAL_MS,
    };
    rc = mv_bench_parse_options("logdirty", argc, argv, options, parse_option, o, &o->json,
                                help);
    return mv_bench_options_done("logdirty", rc, argc, argv);
}

static int measure(struct ld_run *run)
{
    int rc = MV_BENCH_OK;

    for (int m = MECH_ASYNC; m < MECH_COUNT && rc == MV_BENCH_OK; m++)
        if (run->available[m])
            rc = fetch_mechanism(run, m);
    for (int m = 0; m < MECH_COUNT && rc == MV_BENCH_OK; m++)
        if (run->available[m])
            rc = rewrite_mechanism(run, m);
    for (int c = 0; c < RATE_COUNT && rc == MV_BENCH_OK; c++)
        for (int m = 0; m < MECH_COUNT && rc == MV_BENCH_OK; m++)
            if (run->available[m])
                rc = rate_mechanism(run, c, m);
    return rc;
}

static int run_suite(void *arg)
{
    struct ld_run *run = arg;
    struct mv_kernel_features features;
    uint64_t largest;
    size_t words;
    int rc;

    ld_floor_init(&run->floor);
    rc = mv_bench_probe(&features, &run->machine);
    if (rc != MV_BENCH_OK)
        return rc;
    run->fetch_bytes = run->opt.size_mib * MV_BENCH_MIB;
    run->fetch_pages = (size_t)(run->fetch_bytes >> MV_PAGE_SHIFT);
    run->dirty_pages = run->fetch_pages / LD_DIRTY_DIVISOR;
    run->pattern_regions[PAT_SCATTERED] = run->dirty_pages;
    run->pattern_regions[PAT_SCATTERED_BUSY] = run->dirty_pages;
    run->pattern_regions[PAT_CLUSTERED] =
        (run->dirty_pages + LD_CLUSTER_RUN - 1) / LD_CLUSTER_RUN;
    run->write_bytes = run->opt.write_mib * MV_BENCH_MIB;
    run->write_pages = (size_t)(run->write_bytes >> MV_PAGE_SHIFT);
    /* One domain is live at a time, and the floor beside case 1's; leave
     * the host as much again. */
    largest = MV_BENCH_MAX(2 * run->fetch_bytes, run->write_bytes);
    if (features.mem_available / 2 < largest) {
        mv_bench_error("logdirty: %" PRIu64 " MiB of domain and floor need twice that "
                       "available; MemAvailable is %" PRIu64 " MiB",
                       largest / MV_BENCH_MIB, features.mem_available / MV_BENCH_MIB);
        return MV_BENCH_FAILED;
    }
    words = mv_logdirty_words(run->fetch_pages);
    run->gfns = calloc(run->dirty_pages + 1, sizeof(*run->gfns));
    run->expect = calloc(words, sizeof(*run->expect));
    run->sorted = calloc(LD_MAX_ROUNDS, sizeof(*run->sorted));
    run->fetch_samples = calloc(LD_FETCH_SAMPLES, sizeof(*run->fetch_samples));
    if (!run->gfns || !run->expect || !run->sorted || !run->fetch_samples) {
        mv_bench_error("logdirty: out of memory");
        return MV_BENCH_FAILED;
    }
    rc = probe_mechanisms(run);
    if (rc == MV_BENCH_OK)
        rc = measure(run);
    if (rc != MV_BENCH_OK)
        return rc;
    return run->opt.json ? report_json(run) : report_text(run);
}

static void release(void *arg)
{
    struct ld_run *run = arg;

    free(run->gfns);
    free(run->expect);
    free(run->sorted);
    free(run->fetch_samples);
    ld_floor_close(&run->floor);
}

int mv_bench_logdirty(int argc, char **argv)
{
    static const struct mv_bench_suite suite = {
        .name = "logdirty", .run_size = sizeof(struct ld_run), .parse = parse_options,
        .usage = print_usage, .run = run_suite, .release = release,
    };

    return mv_bench_suite_main(&suite, argc, argv);
}
