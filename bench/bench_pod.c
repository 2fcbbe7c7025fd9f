/*
 * bench_pod.c - `memvisor bench pod`: what populate-on-demand costs a guest,
 * measured against the kernel doing the same job in the same run.
 *
 * Peers, measured afresh at the start of every round:
 *   kernel first touch   a MAP_SHARED mapping of a new memfd, no
 *                        userfaultfd: a vCPU thread writes one word of every
 *                        page, timing each store with CLOCK_MONOTONIC.
 *   one-core read        the main thread summing every 64-bit word of the
 *                        untimed pass's buffer once it is populated.
 *
 * Cases, each on a new host and domain (maxmem = target = --size):
 *   pod-4k-*, pod-2m-*   the same touch loop on mv_domain_ram(), with
 *                        pod_block_populate 0 (a fault per page) or 1 (the
 *                        first touch of a 2 MiB block populates all of it),
 *                        with the fault thread spinning --spin-us after a
 *                        fault (the library's default) or sleeping at once
 *                        (fault_spin_us = 0), one thread for all CPUs
 *                        (fault_mode shared); pod-4k-per-cpu with one fault
 *                        thread pinned to each CPU (fault_mode per-CPU).
 *                        These take every fault to a fault thread
 *                        (fault_path thread), as the library did before
 *                        faults were resolved in the faulting thread.
 *   pod-*-vcpu           fault_path auto, the touching thread registered as
 *                        a vCPU (mv_vcpu_enter): each 4 KiB fault is
 *                        resolved in that thread's SIGBUS handler, a 2 MiB
 *                        block handed from there to a fault thread; pod-4k-vcpu with the
 *                        default fault-around for a sequential toucher
 *                        (pod_fault_around), pod-4k-vcpu-single with none
 *                        (a fault per page).
 *   pod-4k-forward       fault_path auto, the touching thread not a vCPU:
 *                        each fault is handed from its SIGBUS handler to a
 *                        fault thread (what any other thread pays).
 *   sweep-*              mv_domain_reclaim_zero() over a fully populated
 *                        domain whose pages are all zero, have data in their
 *                        first word, or have data only in their last word.
 *                        A sweep that reclaims nothing leaves the domain as
 *                        it found it, so it is run a second time at once:
 *                        the difference is what the first sweep paid to map
 *                        the frames into the host's view of machine memory.
 *
 * A touch figure comes from two passes over fresh memory: a timed pass
 * (every store's latency) and an untimed pass (total time and CPU time, free
 * of the timer's own cost).  Every round measures every peer and case once,
 * in turn, so that drift on a shared machine hits them alike; a figure is
 * the median of its rounds and a ratio is the case's median over the peer's.
 */
#include "bench.h"
#include "bench_util.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define POD_DEFAULT_SIZE_MIB 256u
#define POD_MAX_SIZE_MIB (64u * 1024u)
#define POD_DEFAULT_ROUNDS 3u
#define POD_PAGE_WORDS (MV_PAGE_SIZE / sizeof(uint64_t))
/* What the sweep cases write into pages that must not be reclaimed: any
 * non-zero word ("memvisor" in memory). */
#define POD_PATTERN UINT64_C(0x726f7369766d656d)

struct pod_options {
    uint64_t size_mib;
    uint64_t rounds;
    uint64_t spin_us;
    uint64_t fault_around;  /* pod-4k-vcpu's pod_fault_around; 0: default */
    bool json;
};

/* Everything a peer or a case may measure, once per round. */
enum pod_figure {
    FIG_TOUCH_MEDIAN,   /* timed pass: first store to each page */
    FIG_TOUCH_P99,
    FIG_BLOCK_MEDIAN,   /* timed pass: first store to each 2 MiB block */
    FIG_BLOCK_P99,
    FIG_TOTAL,          /* untimed pass: storing to every page */
    FIG_CPU,            /* untimed pass: CPU time of every thread */
    FIG_VCPU_CPU,       /* untimed pass: CPU time of the vCPU thread */
    FIG_VOLUNTARY_SWITCHES,   /* untimed pass, every thread: went to sleep */
    FIG_INVOLUNTARY_SWITCHES, /* untimed pass, every thread: preempted */
    FIG_FAULTS,         /* untimed pass: faults the domain served */
    FIG_WAKEUPS,        /* untimed pass: fault threads woken from sleep */
    FIG_BLOCKS_2M,      /* untimed pass: 2 MiB blocks populated whole */
    FIG_PAGES_4K,       /* untimed pass: single pages populated */
    FIG_FAULTS_IN_THREAD, /* untimed pass: faults resolved in the vCPU */
    FIG_READ,           /* one core summing every word */
    FIG_SWEEP,          /* mv_domain_reclaim_zero over the whole domain */
    FIG_SWEEP_AGAIN,    /* the same sweep at once again, where it reclaims
                           nothing: the host's view of the frames is mapped */
    FIG_SCANNED,
    FIG_RECLAIMED,
    FIG_COUNT
};

static const char *const figure_names[FIG_COUNT] = {
    [FIG_TOUCH_MEDIAN] = "first_touch_median_ns",
    [FIG_TOUCH_P99] = "first_touch_p99_ns",
    [FIG_BLOCK_MEDIAN] = "block_fault_median_ns",
    [FIG_BLOCK_P99] = "block_fault_p99_ns",
    [FIG_TOTAL] = "touch_total_ns",
    [FIG_CPU] = "cpu_all_threads_ns",
    [FIG_VCPU_CPU] = "cpu_vcpu_thread_ns",
    [FIG_VOLUNTARY_SWITCHES] = "voluntary_context_switches",
    [FIG_INVOLUNTARY_SWITCHES] = "involuntary_context_switches",
    [FIG_FAULTS] = "faults_served",
    [FIG_WAKEUPS] = "fault_thread_wakeups",
    [FIG_BLOCKS_2M] = "populated_2m_blocks",
    [FIG_PAGES_4K] = "populated_4k_pages",
    [FIG_FAULTS_IN_THREAD] = "faults_in_thread",
    [FIG_READ] = "read_ns",
    [FIG_SWEEP] = "sweep_ns",
    [FIG_SWEEP_AGAIN] = "sweep_again_ns",
    [FIG_SCANNED] = "sweep_scanned_pages",
    [FIG_RECLAIMED] = "sweep_reclaimed_pages",
};

struct pod_record {
    bool has[FIG_COUNT];
    uint64_t round[FIG_COUNT][MV_BENCH_MAX_ROUNDS];
};

enum pod_case_kind { CASE_FAULT, CASE_SWEEP };

struct pod_case {
    const char *name;
    const char *what;
    enum pod_case_kind kind;
    int block_populate;
    bool sleeping;      /* fault_spin_us = 0 instead of --spin-us */
    bool per_cpu;       /* MV_FAULT_PER_CPU (its threads never spin), else
                         * MV_FAULT_SHARED */
    bool auto_path;     /* fault_path auto, else thread */
    bool vcpu;          /* the touching thread calls mv_vcpu_enter */
    unsigned fault_around; /* pod_fault_around (0: the library's default) */
    unsigned word;      /* sweep: each page gets `value` in this word */
    uint64_t value;
};

static const struct pod_case pod_cases[] = {
    { .name = "pod-4k-spin", .kind = CASE_FAULT, .block_populate = 0,
      .what = "a fault per page (pod_block_populate = 0); the fault thread "
              "spins --spin-us after each fault" },
    { .name = "pod-4k-sleep", .kind = CASE_FAULT, .block_populate = 0,
      .sleeping = true,
      .what = "a fault per page (pod_block_populate = 0); the fault thread "
              "sleeps at once (fault_spin_us = 0)" },
    { .name = "pod-4k-per-cpu", .kind = CASE_FAULT, .block_populate = 0,
      .sleeping = true, .per_cpu = true,
      .what = "a fault per page (pod_block_populate = 0); one fault thread "
              "pinned to each CPU (fault_mode per-CPU), none spinning" },
    { .name = "pod-4k-vcpu", .kind = CASE_FAULT, .block_populate = 0,
      .sleeping = true, .per_cpu = true, .auto_path = true, .vcpu = true,
      .what = "4 KiB pages (pod_block_populate = 0), faults resolved in the "
              "touching thread, a registered vCPU (fault_path auto), with the "
              "default fault-around for a sequential toucher" },
    { .name = "pod-4k-vcpu-single", .kind = CASE_FAULT, .block_populate = 0,
      .sleeping = true, .per_cpu = true, .auto_path = true, .vcpu = true,
      .fault_around = 1,
      .what = "a fault per page (pod_block_populate = 0, pod_fault_around = 1), "
              "resolved in the touching thread, a registered vCPU (fault_path auto)" },
    { .name = "pod-4k-forward", .kind = CASE_FAULT, .block_populate = 0,
      .sleeping = true, .per_cpu = true, .auto_path = true,
      .what = "a fault per page (pod_block_populate = 0) of a thread that is "
              "not a vCPU (fault_path auto): handed from its SIGBUS handler "
              "to a fault thread pinned to each CPU" },
    { .name = "pod-2m-spin", .kind = CASE_FAULT, .block_populate = 1,
      .what = "the first touch of a 2 MiB block populates all 512 pages "
              "(pod_block_populate = 1); the fault thread spins --spin-us" },
    { .name = "pod-2m-sleep", .kind = CASE_FAULT, .block_populate = 1,
      .sleeping = true,
      .what = "the first touch of a 2 MiB block populates all 512 pages "
              "(pod_block_populate = 1); the fault thread sleeps at once" },
    { .name = "pod-2m-vcpu", .kind = CASE_FAULT, .block_populate = 1,
      .sleeping = true, .per_cpu = true, .auto_path = true, .vcpu = true,
      .what = "the first touch of a 2 MiB block populates all 512 pages "
              "(pod_block_populate = 1); the touching thread is a registered "
              "vCPU (fault_path auto), whose handler hands whole blocks to a "
              "fault thread" },
    { .name = "sweep-zero", .kind = CASE_SWEEP, .block_populate = 1,
      .what = "every page all zero: passes the cheap check of its first "
              "words, is zapped, passes the full check and is reclaimed" },
    { .name = "sweep-head", .kind = CASE_SWEEP, .block_populate = 1,
      .word = 0, .value = POD_PATTERN,
      .what = "every page has data in its first word: the cheap check "
              "rejects it after reading 64 bytes" },
    { .name = "sweep-tail", .kind = CASE_SWEEP, .block_populate = 1,
      .word = POD_PAGE_WORDS - 1, .value = POD_PATTERN,
      .what = "every page has data only in its last word: passes the cheap "
              "check, is zapped, fails the full check and is mapped back" },
};
#define POD_CASES (sizeof(pod_cases) / sizeof(pod_cases[0]))

static const char kernel_peer_what[] =
    "first write to each page of a MAP_SHARED memfd mapping without "
    "userfaultfd; then one core summing every 64-bit word of it";

struct pod_run {
    struct pod_options opt;
    struct mv_bench_machine machine;
    uint64_t bytes;
    size_t pages;
    uint64_t timer_overhead_ns;
    uint64_t *latency;        /* one per page, for the timed passes */
    uint64_t *block_latency;  /* one per 2 MiB block */
    struct pod_record kernel;
    struct pod_record cases[POD_CASES];
};

/* ------------------------------------------------------------------------ */
/* Touching memory from a vCPU thread                                        */

struct touch_pass {
    uint8_t *mem;
    mv_host *host;          /* with vcpu: the thread enters domid as a vCPU */
    uint32_t domid;
    bool vcpu;
    int in_thread;          /* what mv_vcpu_enter answered */
    size_t pages;
    unsigned word;
    uint64_t value;
    uint64_t *latency_ns;   /* one per page, or NULL: untimed */
    uint64_t wall_ns;
    uint64_t vcpu_cpu_ns;
    /* The whole process (the vCPU and the library's fault threads) while
     * the pass ran. */
    uint64_t cpu_ns;
    uint64_t voluntary_switches;
    uint64_t involuntary_switches;
};

static void *touch_thread(void *arg)
{
    struct touch_pass *p = arg;
    uint64_t cpu0, t0;

    if (p->vcpu)
        p->in_thread = mv_vcpu_enter(p->host, p->domid);
    cpu0 = mv_bench_thread_cpu_ns();
    t0 = mv_bench_now_ns();

    if (p->latency_ns) {
        for (size_t i = 0; i < p->pages; i++) {
            volatile uint64_t *w = (uint64_t *)(p->mem + i * MV_PAGE_SIZE) + p->word;
            uint64_t start = mv_bench_now_ns();

            *w = p->value;
            p->latency_ns[i] = mv_bench_now_ns() - start;
        }
    } else {
        for (size_t i = 0; i < p->pages; i++)
            *((volatile uint64_t *)(p->mem + i * MV_PAGE_SIZE) + p->word) = p->value;
    }
    p->wall_ns = mv_bench_now_ns() - t0;
    p->vcpu_cpu_ns = mv_bench_thread_cpu_ns() - cpu0;
    if (p->vcpu)
        mv_vcpu_exit();
    return NULL;
}

static int run_touch(struct touch_pass *pass)
{
    struct rusage before, after;
    uint64_t cpu0;
    int rc;

    getrusage(RUSAGE_SELF, &before);
    cpu0 = mv_bench_process_cpu_ns();
    rc = mv_bench_run_thread(touch_thread, pass);
    pass->cpu_ns = mv_bench_process_cpu_ns() - cpu0;
    getrusage(RUSAGE_SELF, &after);
    pass->voluntary_switches = (uint64_t)(after.ru_nvcsw - before.ru_nvcsw);
    pass->involuntary_switches = (uint64_t)(after.ru_nivcsw - before.ru_nivcsw);
    return rc;
}

static volatile uint64_t read_sink;

/* Time one core summing every 64-bit word of `mem`. */
static uint64_t read_words(const uint8_t *mem, uint64_t bytes)
{
    const uint64_t *w = (const uint64_t *)mem;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, t0 = mv_bench_now_ns(), elapsed;

    for (size_t i = 0; i < bytes / sizeof(*w); i += 4) {
        s0 += w[i];
        s1 += w[i + 1];
        s2 += w[i + 2];
        s3 += w[i + 3];
    }
    elapsed = mv_bench_now_ns() - t0;
    read_sink = s0 + s1 + s2 + s3;
    return elapsed;
}

/* ------------------------------------------------------------------------ */
/* Recording                                                                 */

static void record(struct pod_record *r, enum pod_figure f, unsigned round,
                   uint64_t value)
{
    r->has[f] = true;
    r->round[f][round] = value;
}

static uint64_t median_of(const struct pod_run *run, const struct pod_record *r,
                          enum pod_figure f)
{
    return mv_bench_median(r->round[f], run->opt.rounds);
}

/* Median and p99 of the timed pass, of every page and (when blocks are
 * populated whole) of the first page of each block, which took the fault. */
static void record_latencies(struct pod_run *run, struct pod_record *r,
                             unsigned round, bool blocks)
{
    size_t nblocks = run->pages / MV_BLOCK_PAGES;

    if (blocks) {
        for (size_t b = 0; b < nblocks; b++)
            run->block_latency[b] = run->latency[b * MV_BLOCK_PAGES];
        mv_bench_sort(run->block_latency, nblocks);
        record(r, FIG_BLOCK_MEDIAN, round,
               mv_bench_percentile(run->block_latency, nblocks, 50));
        record(r, FIG_BLOCK_P99, round,
               mv_bench_percentile(run->block_latency, nblocks, 99));
    }
    mv_bench_sort(run->latency, run->pages);
    record(r, FIG_TOUCH_MEDIAN, round, mv_bench_percentile(run->latency, run->pages, 50));
    record(r, FIG_TOUCH_P99, round, mv_bench_percentile(run->latency, run->pages, 99));
}

static void record_untimed(struct pod_record *r, unsigned round,
                           const struct touch_pass *pass)
{
    record(r, FIG_TOTAL, round, pass->wall_ns);
    record(r, FIG_CPU, round, pass->cpu_ns);
    record(r, FIG_VCPU_CPU, round, pass->vcpu_cpu_ns);
    record(r, FIG_VOLUNTARY_SWITCHES, round, pass->voluntary_switches);
    record(r, FIG_INVOLUNTARY_SWITCHES, round, pass->involuntary_switches);
}

/* ------------------------------------------------------------------------ */
/* The kernel's own first touch                                              */

static uint8_t *kernel_map(uint64_t bytes)
{
    int fd = memfd_create("memvisor-bench-kernel", MFD_CLOEXEC);
    void *mem;

    if (fd < 0) {
        mv_bench_error("memfd_create: %s", strerror(errno));
        return NULL;
    }
    if (ftruncate(fd, (off_t)bytes) < 0) {
        mv_bench_error("ftruncate of the kernel's memfd: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        mv_bench_error("mmap of the kernel's memfd: %s", strerror(errno));
        mem = NULL;
    }
    close(fd);
    return mem;
}

static int kernel_pass(struct pod_run *run, unsigned round, bool timed)
{
    struct touch_pass pass = {
        .pages = run->pages, .value = 1, .latency_ns = timed ? run->latency : NULL,
    };
    int rc;

    pass.mem = kernel_map(run->bytes);
    if (!pass.mem)
        return MV_BENCH_FAILED;
    rc = run_touch(&pass);
    if (rc == MV_BENCH_OK && timed)
        record_latencies(run, &run->kernel, round, false);
    if (rc == MV_BENCH_OK && !timed) {
        record_untimed(&run->kernel, round, &pass);
        record(&run->kernel, FIG_READ, round, read_words(pass.mem, run->bytes));
    }
    munmap(pass.mem, run->bytes);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* memvisor's populate-on-demand                                             */

struct pod_domain {
    mv_host *host;
    uint32_t domid;
    uint8_t *ram;
};

/* A new host with one domain of `bytes`, all of it PoD entries. */
static int domain_open(struct pod_domain *pd, uint64_t bytes, unsigned spin_us,
                       bool per_cpu, bool auto_path, int block_populate,
                       unsigned fault_around)
{
    struct mv_host_config hc;
    struct mv_domain_config dc;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.budget_bytes = bytes;
    hc.fault_spin_us = spin_us;
    hc.fault_mode = per_cpu ? MV_FAULT_PER_CPU : MV_FAULT_SHARED;
    hc.fault_path = auto_path ? MV_FAULT_PATH_AUTO : MV_FAULT_PATH_THREAD;
    rc = mv_bench_host_create(&hc, &pd->host);
    if (rc != MV_BENCH_OK)
        return rc;
    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "bench-pod");
    dc.maxmem_bytes = dc.target_bytes = bytes;
    dc.pod_block_populate = block_populate;
    dc.pod_fault_around = fault_around;
    rc = mv_domain_create(pd->host, &dc, &pd->domid);
    if (rc < 0) {
        rc = mv_bench_lib_error("mv_domain_create", rc);
        mv_host_destroy(pd->host);
        return rc;
    }
    rc = mv_bench_domain_ram(pd->host, pd->domid, &pd->ram, NULL);
    if (rc != MV_BENCH_OK)
        mv_host_destroy(pd->host);
    return rc;
}

/* The library's counters after a pass, checked against what the case
 * means to measure: a figure labelled "2 MiB blocks" must not come from
 * single-page faults. */
static int domain_check(const struct pod_run *run, const struct pod_case *c,
                        const struct pod_domain *pd, struct mv_host_stats *stats,
                        struct mv_domain_info *info)
{
    uint64_t want_2m = c->block_populate ? run->pages / MV_BLOCK_PAGES : 0;
    uint64_t want_4k = c->block_populate ? 0 : run->pages;
    int rc;

    rc = mv_host_stats(pd->host, stats);
    if (rc < 0)
        return mv_bench_lib_error("mv_host_stats", rc);
    rc = mv_domain_info(pd->host, pd->domid, info);
    if (rc < 0)
        return mv_bench_lib_error("mv_domain_info", rc);
    if (c->auto_path && !info->fault_in_thread) {
        mv_bench_error("%s: the domain does not resolve faults in the faulting "
                       "thread (no UFFD_FEATURE_SIGBUS?)", c->name);
        return MV_BENCH_FAILED;
    }
    /* A vCPU resolves its single pages itself and hands whole blocks to
     * a fault thread. */
    if (c->vcpu && info->faults_in_thread != (c->block_populate ? 0 : info->faults)) {
        mv_bench_error("%s: %" PRIu64 " of %" PRIu64 " faults were resolved in the "
                       "vCPU's thread; %s should be", c->name, info->faults_in_thread,
                       info->faults, c->block_populate ? "none" : "all");
        return MV_BENCH_FAILED;
    }
    if (info->populated_pages == run->pages && info->populated_2m == want_2m &&
        info->populated_4k == want_4k)
        return MV_BENCH_OK;
    mv_bench_error("%s: touching %zu pages should populate %" PRIu64 " whole "
                   "blocks and %" PRIu64 " single pages; the library populated "
                   "%" PRIu64 " blocks and %" PRIu64 " single pages (%" PRIu64
                   " pages populated%s%s)", c->name, run->pages, want_2m, want_4k,
                   info->populated_2m, info->populated_4k, info->populated_pages,
                   info->state == MV_DOMAIN_CRASHED ? "; the domain crashed: " : "",
                   info->state == MV_DOMAIN_CRASHED ? info->crash_reason : "");
    return MV_BENCH_FAILED;
}

/* A new domain for case `c` (domain_open), every page touched by `pass`,
 * the library's counters checked (domain_check).  On failure the host is
 * destroyed already. */
static int touch_domain(const struct pod_run *run, const struct pod_case *c,
                        struct pod_domain *pd, struct touch_pass *pass,
                        struct mv_host_stats *stats, struct mv_domain_info *info)
{
    unsigned around = c->vcpu && !c->fault_around ? (unsigned)run->opt.fault_around
                                                  : c->fault_around;
    int rc = domain_open(pd, run->bytes, c->sleeping ? 0 : (unsigned)run->opt.spin_us,
                         c->per_cpu, c->auto_path, c->block_populate, around);

    if (rc != MV_BENCH_OK)
        return rc;
    pass->mem = pd->ram;
    pass->host = pd->host;
    pass->domid = pd->domid;
    pass->vcpu = c->vcpu;
    rc = run_touch(pass);
    if (rc == MV_BENCH_OK)
        rc = domain_check(run, c, pd, stats, info);
    if (rc != MV_BENCH_OK)
        mv_host_destroy(pd->host);
    return rc;
}

static int fault_pass(struct pod_run *run, size_t ci, unsigned round, bool timed)
{
    const struct pod_case *c = &pod_cases[ci];
    struct pod_record *r = &run->cases[ci];
    struct touch_pass pass = {
        .pages = run->pages, .value = 1, .latency_ns = timed ? run->latency : NULL,
    };
    struct mv_host_stats stats;
    struct mv_domain_info info;
    struct pod_domain pd;
    int rc;

    rc = touch_domain(run, c, &pd, &pass, &stats, &info);
    if (rc != MV_BENCH_OK)
        return rc;
    mv_host_destroy(pd.host);
    if (timed) {
        record_latencies(run, r, round, c->block_populate);
        return MV_BENCH_OK;
    }
    record_untimed(r, round, &pass);
    record(r, FIG_FAULTS, round, info.faults);
    record(r, FIG_WAKEUPS, round, stats.fault_wakeups);
    record(r, FIG_BLOCKS_2M, round, info.populated_2m);
    record(r, FIG_PAGES_4K, round, info.populated_4k);
    record(r, FIG_FAULTS_IN_THREAD, round, info.faults_in_thread);
    return MV_BENCH_OK;
}

/* Sweep the whole domain once, timed, and check the verdicts: every page
 * scanned, every page reclaimed when they are zero, none otherwise. */
static int timed_sweep(const struct pod_run *run, const struct pod_case *c,
                       const struct pod_domain *pd, uint64_t *elapsed,
                       struct mv_sweep_result *res)
{
    uint64_t want_reclaimed = c->value ? 0 : run->pages;
    uint64_t t0 = mv_bench_now_ns();
    int rc = mv_domain_reclaim_zero(pd->host, pd->domid, 0, res);

    *elapsed = mv_bench_now_ns() - t0;
    if (rc < 0)
        return mv_bench_lib_error("mv_domain_reclaim_zero", rc);
    if (res->scanned == run->pages && res->reclaimed == want_reclaimed)
        return MV_BENCH_OK;
    mv_bench_error("%s: a sweep of %zu populated pages should scan all of them "
                   "and reclaim %" PRIu64 "; it scanned %" PRIu64 " and "
                   "reclaimed %" PRIu64, c->name, run->pages, want_reclaimed,
                   res->scanned, res->reclaimed);
    return MV_BENCH_FAILED;
}

static int sweep_pass(struct pod_run *run, size_t ci, unsigned round)
{
    const struct pod_case *c = &pod_cases[ci];
    struct pod_record *r = &run->cases[ci];
    struct touch_pass pass = { .pages = run->pages, .word = c->word, .value = c->value };
    struct mv_sweep_result res;
    struct mv_host_stats stats;
    struct mv_domain_info info;
    struct pod_domain pd;
    uint64_t elapsed, again = 0;
    int rc;

    /* Sweep cases do not sleep: their fault thread spins --spin-us. */
    rc = touch_domain(run, c, &pd, &pass, &stats, &info);
    if (rc != MV_BENCH_OK)
        return rc;
    rc = timed_sweep(run, c, &pd, &elapsed, &res);
    if (rc == MV_BENCH_OK && c->value)
        rc = timed_sweep(run, c, &pd, &again, &res);
    mv_host_destroy(pd.host);
    if (rc != MV_BENCH_OK)
        return rc;
    record(r, FIG_SWEEP, round, elapsed);
    if (c->value)
        record(r, FIG_SWEEP_AGAIN, round, again);
    record(r, FIG_SCANNED, round, res.scanned);
    record(r, FIG_RECLAIMED, round, res.reclaimed);
    return MV_BENCH_OK;
}

static int measure_round(struct pod_run *run, unsigned round)
{
    int rc = kernel_pass(run, round, true);

    if (rc == MV_BENCH_OK)
        rc = kernel_pass(run, round, false);
    for (size_t ci = 0; ci < POD_CASES && rc == MV_BENCH_OK; ci++) {
        if (pod_cases[ci].kind == CASE_SWEEP) {
            rc = sweep_pass(run, ci, round);
            continue;
        }
        rc = fault_pass(run, ci, round, true);
        if (rc == MV_BENCH_OK)
            rc = fault_pass(run, ci, round, false);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Comparisons and reports                                                   */

#define POD_MAX_COMPARISONS 4

static double gib_per_s(uint64_t bytes, uint64_t ns)
{
    return ns ? (double)bytes / (double)ns * 1e9 / (double)MV_BENCH_GIB : 0;
}

/* The case's figures against the peer's; returns how many. */
static size_t case_comparisons(const struct pod_run *run, size_t ci,
                               struct mv_bench_comparison *out)
{
    const struct pod_case *c = &pod_cases[ci];
    const struct pod_record *r = &run->cases[ci], *k = &run->kernel;
    double pages = (double)run->pages, goal = c->block_populate ? 1.0 : 2.0;
    size_t n = 0;

    if (c->kind == CASE_SWEEP) {
        double read = gib_per_s(run->bytes, median_of(run, k, FIG_READ));

        out[n++] = (struct mv_bench_comparison){
            .figure = "RAM checked per second", .unit = "GiB/s",
            .value = gib_per_s(run->bytes, median_of(run, r, FIG_SWEEP)),
            .peer = "one core reading every word", .peer_value = read,
        };
        if (r->has[FIG_SWEEP_AGAIN])
            out[n++] = (struct mv_bench_comparison){
                .figure = "the same, second sweep", .unit = "GiB/s",
                .value = gib_per_s(run->bytes, median_of(run, r, FIG_SWEEP_AGAIN)),
                .peer = "one core reading every word", .peer_value = read,
            };
        return n;
    }
    if (c->block_populate) {
        out[n++] = (struct mv_bench_comparison){
            .figure = "block fault median / 512", .unit = "ns",
            .value = (double)median_of(run, r, FIG_BLOCK_MEDIAN) / MV_BLOCK_PAGES,
            .peer = "kernel first-touch median",
            .peer_value = (double)median_of(run, k, FIG_TOUCH_MEDIAN),
            .goal_max_ratio = goal,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "block fault p99 / 512", .unit = "ns",
            .value = (double)median_of(run, r, FIG_BLOCK_P99) / MV_BLOCK_PAGES,
            .peer = "kernel first-touch p99",
            .peer_value = (double)median_of(run, k, FIG_TOUCH_P99),
            .goal_max_ratio = goal,
        };
    } else {
        out[n++] = (struct mv_bench_comparison){
            .figure = "first-touch median", .unit = "ns",
            .value = (double)median_of(run, r, FIG_TOUCH_MEDIAN),
            .peer = "kernel first-touch median",
            .peer_value = (double)median_of(run, k, FIG_TOUCH_MEDIAN),
            .goal_max_ratio = goal,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "first-touch p99", .unit = "ns",
            .value = (double)median_of(run, r, FIG_TOUCH_P99),
            .peer = "kernel first-touch p99",
            .peer_value = (double)median_of(run, k, FIG_TOUCH_P99),
            .goal_max_ratio = goal,
        };
    }
    out[n++] = (struct mv_bench_comparison){
        .figure = "touch every page, total", .unit = "ns",
        .value = (double)median_of(run, r, FIG_TOTAL),
        .peer = "kernel touching as many pages",
        .peer_value = (double)median_of(run, k, FIG_TOTAL),
        .goal_max_ratio = goal,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CPU per page, all threads", .unit = "ns",
        .value = (double)median_of(run, r, FIG_CPU) / pages,
        .peer = "kernel CPU per page",
        .peer_value = (double)median_of(run, k, FIG_CPU) / pages,
    };
    return n;
}

static struct json_object *record_json(const struct pod_run *run,
                                       const struct pod_record *r)
{
    struct json_object *o = json_object_new_object();

    for (int f = 0; f < FIG_COUNT; f++) {
        struct json_object *fig, *rounds;

        if (!r->has[f])
            continue;
        fig = json_object_new_object();
        rounds = json_object_new_array();
        for (unsigned i = 0; i < run->opt.rounds; i++)
            json_object_array_add(rounds, json_object_new_int64((int64_t)r->round[f][i]));
        json_object_object_add(fig, "median",
                               json_object_new_int64((int64_t)median_of(run, r, f)));
        json_object_object_add(fig, "rounds", rounds);
        json_object_object_add(o, figure_names[f], fig);
    }
    return o;
}

static int report_json(const struct pod_run *run)
{
    struct json_object *root = mv_bench_json_root("pod", &run->machine);
    struct json_object *params = json_object_new_object();
    struct json_object *peer = json_object_new_object();
    struct json_object *cases = json_object_new_array();
    bool all_met = true;

    json_object_object_add(params, "size_mib", json_object_new_int64((int64_t)run->opt.size_mib));
    json_object_object_add(params, "pages", json_object_new_int64((int64_t)run->pages));
    json_object_object_add(params, "rounds", json_object_new_int64((int64_t)run->opt.rounds));
    json_object_object_add(params, "fault_spin_us",
                           json_object_new_int64((int64_t)run->opt.spin_us));
    json_object_object_add(params, "timer_overhead_ns",
                           json_object_new_int64((int64_t)run->timer_overhead_ns));
    json_object_object_add(params, "statistic", json_object_new_string(
        "every figure is the median of its rounds; a ratio is the case's "
        "median over the peer's; timed stores include timer_overhead_ns"));
    json_object_object_add(root, "parameters", params);

    json_object_object_add(peer, "name", json_object_new_string("kernel"));
    json_object_object_add(peer, "what", json_object_new_string(kernel_peer_what));
    json_object_object_add(peer, "raw", record_json(run, &run->kernel));
    json_object_object_add(root, "peer", peer);

    for (size_t ci = 0; ci < POD_CASES; ci++) {
        const struct pod_case *c = &pod_cases[ci];
        struct mv_bench_comparison cmp[POD_MAX_COMPARISONS];
        struct json_object *o = json_object_new_object();
        size_t n = case_comparisons(run, ci, cmp);

        json_object_object_add(o, "name", json_object_new_string(c->name));
        json_object_object_add(o, "what", json_object_new_string(c->what));
        json_object_object_add(o, "fault_spin_us", json_object_new_int64(
            c->kind == CASE_FAULT && c->sleeping ? 0 : (int64_t)run->opt.spin_us));
        json_object_object_add(o, "fault_mode", json_object_new_string(
            mv_fault_mode_name(c->per_cpu ? MV_FAULT_PER_CPU : MV_FAULT_SHARED)));
        json_object_object_add(o, "pod_block_populate",
                               json_object_new_int(c->block_populate));
        if (c->kind == CASE_FAULT) {
            json_object_object_add(o, "fault_path", json_object_new_string(
                mv_fault_path_name(c->auto_path ? MV_FAULT_PATH_AUTO : MV_FAULT_PATH_THREAD)));
            json_object_object_add(o, "vcpu", json_object_new_boolean(c->vcpu));
            json_object_object_add(o, "pod_fault_around", json_object_new_int64(
                c->fault_around ? c->fault_around
                : run->opt.fault_around ? (int64_t)run->opt.fault_around
                : MV_POD_FAULT_AROUND_DEFAULT));
        }
        json_object_object_add(o, "raw", record_json(run, &run->cases[ci]));
        all_met = mv_bench_comparisons_json(o, cmp, n, NULL) && all_met;
        json_object_array_add(cases, o);
    }
    json_object_object_add(root, "cases", cases);
    json_object_object_add(root, "goals_met", json_object_new_boolean(all_met));
    return mv_bench_json_emit(root);
}

static void print_raw(const struct pod_run *run, const struct pod_record *r)
{
    for (int f = 0; f < FIG_COUNT; f++)
        if (r->has[f])
            printf("    %-30s %14" PRIu64 "\n", figure_names[f], median_of(run, r, f));
}

static int report_text(const struct pod_run *run)
{
    printf("memvisor bench pod: %" PRIu64 " MiB per case, %" PRIu64 " round%s "
           "(medians shown), fault spin %" PRIu64 " us or 0, timer overhead %"
           PRIu64 " ns per timed store\n", run->opt.size_mib, run->opt.rounds,
           run->opt.rounds == 1 ? "" : "s", run->opt.spin_us, run->timer_overhead_ns);
    mv_bench_machine_print(stdout, &run->machine);
    printf("\nkernel: %s\n", kernel_peer_what);
    print_raw(run, &run->kernel);
    for (size_t ci = 0; ci < POD_CASES; ci++) {
        struct mv_bench_comparison cmp[POD_MAX_COMPARISONS];
        size_t n = case_comparisons(run, ci, cmp);

        printf("\n%s: %s\n", pod_cases[ci].name, pod_cases[ci].what);
        mv_bench_comparisons_print(stdout, cmp, n);
        printf("  raw figures (medians):\n");
        print_raw(run, &run->cases[ci]);
    }
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                               */

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor bench pod [--json] [--size MIB] [--rounds N] [--spin-us US]\n"
        "                          [--fault-around PAGES]\n"
        "\n"
        "Populate-on-demand fault latency and zero-sweep throughput, measured\n"
        "against the kernel's own first-touch fault on a memfd mapping and one\n"
        "core's memory read bandwidth in the same run, reported as ratios.\n"
        "\n"
        "  --json         print one JSON object instead of a table\n"
        "  --size MIB     memory each case touches, a multiple of 2 (default %u)\n"
        "  --rounds N     times every case is measured; medians are reported\n"
        "                 (1..%u, default %u)\n"
        "  --fault-around PAGES  pod_fault_around of the vCPU cases that use the\n"
        "                 default (1..%u; default: the library's, %u)\n"
        "  --spin-us US   fault_spin_us of the spinning cases (default: the\n"
        "                 library's, %u); the sleeping cases use 0\n"
        "  --help         this text\n",
        POD_DEFAULT_SIZE_MIB, MV_BENCH_MAX_ROUNDS, POD_DEFAULT_ROUNDS,
        MV_POD_FAULT_AROUND_MAX, MV_POD_FAULT_AROUND_DEFAULT, MV_FAULT_SPIN_DEFAULT);
}

/* One option other than --json and --help. */
static int parse_option(int opt, const char *arg, void *ctx)
{
    struct pod_options *o = ctx;

    switch (opt) {
    case 's':
        return mv_bench_parse_mib("pod: --size", arg, POD_MAX_SIZE_MIB, &o->size_mib);
    case 'r':
        return mv_bench_parse_u64("pod: --rounds", arg, 1, MV_BENCH_MAX_ROUNDS, &o->rounds);
    case 'p':
        return mv_bench_parse_u64("pod: --spin-us", arg, 0, 1000000, &o->spin_us);
    case 'a':
        return mv_bench_parse_u64("pod: --fault-around", arg, 1, MV_POD_FAULT_AROUND_MAX,
                                  &o->fault_around);
    }
    return MV_BENCH_OK;
}

/* Returns MV_BENCH_OK, or MV_BENCH_USAGE after saying why; `help` is set
 * when --help was given. */
static int parse_options(int argc, char **argv, void *arg, bool *help)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "size", required_argument, NULL, 's' },
        { "rounds", required_argument, NULL, 'r' },
        { "spin-us", required_argument, NULL, 'p' },
        { "fault-around", required_argument, NULL, 'a' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct pod_options *o = &((struct pod_run *)arg)->opt;
    struct mv_host_config defaults;
    int rc;

    mv_host_config_init(&defaults);
    *o = (struct pod_options){
        .size_mib = POD_DEFAULT_SIZE_MIB, .rounds = POD_DEFAULT_ROUNDS,
        .spin_us = defaults.fault_spin_us,
    };
    rc = mv_bench_parse_options("pod", argc, argv, options, parse_option, o, &o->json, help);
    return mv_bench_options_done("pod", rc, argc, argv);
}

static int run_suite(void *arg)
{
    struct pod_run *run = arg;
    struct mv_kernel_features features;
    int rc = mv_bench_probe(&features, &run->machine);

    if (rc != MV_BENCH_OK)
        return rc;
    run->bytes = run->opt.size_mib * MV_BENCH_MIB;
    run->pages = (size_t)(run->bytes / MV_PAGE_SIZE);
    /* One buffer of --size is live at a time; leave the host as much again. */
    if (features.mem_available / 2 < run->bytes) {
        mv_bench_error("pod: --size %" PRIu64 " MiB needs twice that available; "
                       "MemAvailable is %" PRIu64 " MiB", run->opt.size_mib,
                       features.mem_available / MV_BENCH_MIB);
        return MV_BENCH_FAILED;
    }
    run->latency = malloc(run->pages * sizeof(*run->latency));
    run->block_latency = malloc(run->pages / MV_BLOCK_PAGES * sizeof(*run->block_latency));
    if (!run->latency || !run->block_latency) {
        mv_bench_error("pod: no memory for %zu latency samples", run->pages);
        return MV_BENCH_FAILED;
    }
    /* Populate them now, so that the vCPU takes no fault of ours between
     * timed stores. */
    memset(run->latency, 0xff, run->pages * sizeof(*run->latency));
    memset(run->block_latency, 0xff, run->pages / MV_BLOCK_PAGES * sizeof(*run->block_latency));
    run->timer_overhead_ns = mv_bench_timer_overhead_ns();
    for (unsigned round = 0; round < run->opt.rounds && rc == MV_BENCH_OK; round++)
        rc = measure_round(run, round);
    if (rc != MV_BENCH_OK)
        return rc;
    return run->opt.json ? report_json(run) : report_text(run);
}

static void release(void *arg)
{
    struct pod_run *run = arg;

    free(run->latency);
    free(run->block_latency);
}

int mv_bench_pod(int argc, char **argv)
{
    static const struct mv_bench_suite suite = {
        .name = "pod", .run_size = sizeof(struct pod_run), .parse = parse_options,
        .usage = print_usage, .run = run_suite, .release = release,
    };

    return mv_bench_suite_main(&suite, argc, argv);
}
