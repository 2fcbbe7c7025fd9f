/*
 * bench_share.c - `memvisor bench share` and `memvisor bench cow`: how much
 * memory copy-on-write page sharing saves on guests that look like real
 * ones, how fast and at what CPU cost, memvisor against the kernel's KSM in
 * the same run; and what cloning a domain and breaking a shared page cost,
 * against fork() and the kernel's own faults.
 *
 * The guests (guest_image.h): --guests synthetic guests of --guest-mib MiB,
 * or the raw RAM dumps given with --image.  Their ideal savings (every
 * non-zero page whose exact bytes appear elsewhere, less one copy of each
 * content) are computed first, with zero pages counted apart.
 *
 * Cases, one after the other:
 *   memvisor-scan    a new host, one domain per image (maxmem = target = the
 *                    image's size), the image written into
 *                    mv_domain_ram() with ordinary stores (populate on
 *                    demand), then mv_share_scan() passes over every domain
 *                    until a pass saves nothing more (at most 16 passes, and
 *                    none started after the time KSM is given, below).
 *   ksm-aggressive   the same images copied into MADV_MERGEABLE anonymous
 *                    memory, KSM at pages_to_scan = 20000, sleep_millisecs =
 *                    0, until pages_sharing and ksm_zero_pages have not moved
 *                    for two full scans.
 *   memvisor-hinted  memvisor-scan with every synthetic guest's kernel image
 *                    hinted (mv_share_hint, one key) before the first pass.
 *   ksm-defaults     (--ksm-defaults) KSM at the kernel's defaults, 100 pages
 *                    every 20 ms.
 * KSM is given 120 s flat out (900 s at its defaults), or 1 s per 10,000
 * pages (per 500 pages) of guests when that is longer.
 *
 * Zero pages: memvisor returns them to populate-on-demand (no frame at all);
 * KSM maps them to the kernel's zero page only with use_zero_pages = 1, which
 * this suite sets for its runs (and restores) so that KSM counts them apart
 * in ksm_zero_pages as memvisor does in zero_reclaimed.  Non-zero savings are
 * compared with non-zero savings: memvisor's saved_pages against KSM's
 * pages_sharing.
 *
 * Every KSM setting the suite changes (run, pages_to_scan, sleep_millisecs,
 * use_zero_pages) is written back when it ends, on error paths and on
 * SIGINT/SIGTERM/SIGHUP too, after run = 2 has unmerged what was merged.
 *
 * Every memvisor case ends with the checks: each domain's RAM read back with
 * mv_domain_read_page() must equal its image byte for byte, and through the
 * guest's mapping too; mv_share_audit() and mv_host_audit() must return 0.
 *
 * `memvisor bench cow` (second half of this file): what a clone and a
 * copy-on-write break cost, against the kernel's own mechanisms.
 *   clone            a --guest-mib domain (1 GiB) filled with non-zero data
 *                    (every page different), paused, mv_domain_clone() timed;
 *                    every populated page must be shared at once.  Peer:
 *                    fork() of this process holding as much populated private
 *                    memory (the kernel copying the page tables).
 *   clone writes     a vCPU thread stores one byte to each of --pages pages of
 *                    the clone, evenly spread, timing each store: the CoW
 *                    break.  Then the source stores to the same pages, each
 *                    now the last mapping of its frame.
 *   make_ro_and_share  two domains with the same bytes (at most 256 MiB)
 *                    shared by mv_share_make_ro_and_share(), then writes to
 *                    the second.
 *   clone lives      --rounds times, each on a host of its own: a source
 *                    like the first, cloned, the clone destroyed with
 *                    nothing written (a sandbox's life), then the source, by
 *                    then alone on every frame; each step timed.  In the
 *                    same round, no domain alive, the peer: fork() of this
 *                    process holding as much populated private anonymous
 *                    memory, the child (which touches nothing) told to exit
 *                    and waited for, then the parent's munmap() of the
 *                    memory; and the floor of freeing memfd memory as the
 *                    source's destroy does: munmap() of a populated 1 GiB
 *                    MAP_SHARED memfd mapping, then the hole punch of its
 *                    pages.  Between clone and destroys the source, resumed,
 *                    reads every page once, as the parent does after fork().
 *                    The goals (clone, destroy of the clone, destroy
 *                    of the source, each <= 1x its peer) compare medians
 *                    over the rounds.  The clone's figure counts what
 *                    fork()'s does up front: fork() copies page-table
 *                    entries, a clone leaves the kernel's write-protect
 *                    markers, and its first read of a page is a minor
 *                    fault instead.
 *   per-CPU clone    the clone writes again on a host with one fault thread
 *                    pinned to each CPU (MV_FAULT_PER_CPU); every other case
 *                    runs with one fault thread for all (MV_FAULT_SHARED).
 *   kernel copies    the clone and then the source write again, on domains
 *                    with cow_mode MV_COW_KERNEL: the kernel copies at the
 *                    write; each side is then settled once (mv_share_settle,
 *                    timed), the background settler held off.  Every 64
 *                    stores alternate with 64 first touches of fresh
 *                    anonymous memory, the peer, so that both see the machine
 *                    in the same state (on this shared VM a first touch costs
 *                    2 us or 13 us depending on the second it runs in).  The
 *                    break goal (<= 3x a first touch) is this case's.
 *   kernel settler   the background settler's cost on an MV_COW_KERNEL
 *                    clone at the default cow_settle_ms: the clone's RAM is
 *                    read once (mapped, as a running guest's is), then a
 *                    vCPU thread stores to the --pages pages at an even pace
 *                    over COW_SETTLER_MS, each store a kernel copy the
 *                    settler moves into the clone's own frames.  The
 *                    settler thread's CPU time (its thread CPU clock, found
 *                    by its name in /proc/self/task) over that window, per
 *                    GiB of shared memory per second.
 *   kernel peers     the same timed stores to fresh private anonymous pages
 *                    and fresh pages of a shared memfd mapping (first-touch
 *                    faults), to a private file mapping whose pages were read
 *                    (CoW of a page-cache page), and by a fork()ed child to
 *                    its parent's populated memory (CoW after fork).
 *   break floor      the system calls a break into the writer's own slot
 *                    cannot do without, with no bookkeeping (cow_floor.c).
 * Every page of every domain is read back with mv_domain_read_page() and
 * compared with what was written, and the audits must return 0.
 */
#include "bench.h"
#include "protocol.h"
#include "bench_util.h"
#include "guest_image.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SH_MAX_PASSES 16u
#define SH_HINT_KEY 1u
#define SH_MAX_GUEST_MIB (64u * 1024u)
#define SH_KSM_DIR "/sys/kernel/mm/ksm/"
#define SH_KSM_STABLE_SCANS 2u
#define SH_KSM_MAX_POINTS 64u
#define SH_MAX_ROUNDS 9u

struct share_options {
    bool json;
    bool ksm_defaults;
    bool no_ksm;
    bool no_hint;
    bool sized;             /* --guests or --guest-mib given */
    uint64_t guests;
    uint64_t guest_mib;
    uint64_t seed;
    const char *images[GUEST_IMAGE_MAX];
    size_t nimages;
    bool no_real;
    char real_dir[PATH_MAX];    /* captured real guests (scripts/guest-ram.sh) */
    uint64_t rounds;            /* memvisor and KSM alternated this many times */
};

/* ------------------------------------------------------------------------ */
/* Results                                                                   */

struct mv_pass {
    struct mv_scan_result res;
    uint64_t wall_ns;           /* since the first pass started */
    uint64_t process_cpu_ns;    /* since the first pass started */
    uint64_t own_cpu_ns;        /* process CPU of this pass alone (not the
                                   mv_share_stats between passes) */
    uint64_t saved_pages;       /* mv_share_stats after the pass */
    uint64_t zero_pages;
};

struct mv_case {
    const char *name;
    const char *what;
    bool hinted;
    bool ran;
    uint64_t load_ns;
    uint64_t populated_before;  /* pages, every domain, after loading */
    uint64_t populated_after;
    uint64_t hinted_ranges;
    struct mv_pass pass[SH_MAX_PASSES];
    unsigned passes;
    unsigned productive_passes; /* passes up to the last that saved */
    bool converged;
    bool timed_out;             /* no new pass after the time budget */
    uint64_t converge_ns;
    uint64_t converge_process_cpu_ns;
    uint64_t converge_thread_cpu_ns;
    uint64_t converge_scan_cpu_ns;  /* mv_share_stats().scan_cpu_ns */
    uint64_t total_ns;
    struct mv_share_stats stats;
    uint64_t saved_pages;
    uint64_t zero_pages;
    /* Pages whose bytes appear elsewhere (guest_image_ideal) that are not
     * shared after the last pass, and the first of them. */
    uint64_t missed_duplicates;
    int64_t first_missed_image;
    uint64_t first_missed_gfn;
    /* checks */
    uint64_t pages_checked;
    uint64_t read_mismatches;
    uint64_t guest_view_mismatches;
    int64_t first_bad_image;
    uint64_t first_bad_gfn;
    int share_audit;
    int host_audit;
    char audit_error[256];
    bool ok;
};

struct ksm_point {
    uint64_t t_ns;
    uint64_t full_scans;
    uint64_t pages_sharing;
    uint64_t zero_pages;
    uint64_t ksmd_cpu_ns;
};

struct ksm_case {
    const char *name;
    const char *what;
    uint64_t pages_to_scan;
    uint64_t sleep_ms;
    uint64_t timeout_s;
    uint64_t sample_ms;
    bool ran;
    bool converged;
    uint64_t load_ns;
    uint64_t converge_ns;        /* the last change of the counters */
    uint64_t converge_cpu_ns;    /* ksmd's CPU by then */
    uint64_t converge_full_scans;
    uint64_t detect_ns;          /* two full scans more: the run ends */
    uint64_t detect_cpu_ns;
    uint64_t full_scans;
    uint64_t pages_sharing;      /* deltas from the start of the case */
    uint64_t pages_shared;
    uint64_t zero_pages;
    int64_t pages_unshared;
    uint64_t pages_volatile;     /* at the end */
    struct ksm_point point[SH_KSM_MAX_POINTS];
    unsigned points;
    bool content_ok;
};

/* What the suite found in /sys/kernel/mm/ksm and changed there. */
struct ksm_state {
    bool available;
    char reason[192];
    int ksmd_pid;
    bool have_zero;             /* use_zero_pages and ksm_zero_pages exist */
    bool was_running;           /* run was 1 before the suite */
    uint64_t pages_sharing_before;
    char merge_across_nodes[16];
    char smart_scan[16];
    char max_page_sharing[16];
    char advisor_mode[32];
    bool restored;
    char restore_error[192];
};

/* What one page costs the scanner by kind, each kind alone on a host of its
 * own (SH_COST_PAGES pages of it), and the kernel's cost of freeing a page
 * of the machine memfd, the floor of returning a zero page; and what the
 * scanner's write protection costs the guest's first write after a pass. */
#define SH_COST_PAGES 16384u

struct page_costs {
    bool ran;
    uint64_t pages;
    double zero_ns;             /* first pass: zero check, zap, punch */
    double unique_first_ns;     /* first pass over unique pages */
    double unique_steady_ns;    /* a later pass over the same, unchanged */
    double duplicate_ns;        /* first pass over two equal domains, per page */
    double punch_floor_ns;      /* fallocate(PUNCH_HOLE) of populated memfd
                                   pages, 512 a call, nothing else */
    /* The guest's price of the scanner's protection: the first write to
     * each unique page after a pass, the default share_read (AUTO: pages
     * write-protected by the pass) against share_read COPY (nothing
     * protected), median of SH_WRITE_ROUNDS. */
    double write_protected_ns;
    double write_unprotected_ns;
    bool ok;
    char error[160];
};

struct share_run {
    struct share_options opt;
    uint64_t timeout_s;         /* memvisor: no new pass after; KSM aggressive */
    struct mv_bench_machine machine;
    struct guest_image_set images;
    struct guest_image_ideal ideal;
    uint64_t image_bytes;       /* all images */
    struct mv_case mv_scan;
    struct mv_case mv_hinted;
    struct ksm_state ksm;
    struct ksm_case ksm_aggressive;
    struct ksm_case ksm_default;
    /* --rounds: each round's figures; mv_scan and ksm_aggressive above are
     * the round whose time ratio is the median (median_round). */
    struct share_round {
        uint64_t mv_ns, mv_cpu_ns, ksm_ns, ksm_cpu_ns;
    } round[SH_MAX_ROUNDS];
    unsigned rounds, median_round;
    bool ok;
    /* The captured real guests, measured after the synthetic ones (NULL:
     * not measured, real_reason says why); real: this run is that set. */
    struct share_run *real_run;
    bool real;
    char real_reason[PATH_MAX + 128];
    struct page_costs costs;
};

/* ------------------------------------------------------------------------ */
/* KSM settings: read, write, and put back whatever happens                  */

/* The settings the suite may change, with their values before it did. */
enum { KSM_RUN, KSM_PAGES_TO_SCAN, KSM_SLEEP, KSM_USE_ZERO, KSM_SAVED };

static const char *const ksm_saved_names[KSM_SAVED] = {
    [KSM_RUN] = SH_KSM_DIR "run",
    [KSM_PAGES_TO_SCAN] = SH_KSM_DIR "pages_to_scan",
    [KSM_SLEEP] = SH_KSM_DIR "sleep_millisecs",
    [KSM_USE_ZERO] = SH_KSM_DIR "use_zero_pages",
};

/* Read by the signal handler: plain static storage, set before it is
 * installed. */
static char ksm_saved_value[KSM_SAVED][32];
static volatile sig_atomic_t ksm_dirty;
static struct sigaction ksm_old_action[3];
static const int ksm_signals[3] = { SIGINT, SIGTERM, SIGHUP };

static int ksm_read(const char *name, char *buf, size_t size)
{
    char path[128];
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "%s%s", name[0] == '/' ? "" : SH_KSM_DIR, name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static uint64_t ksm_u64(const char *name)
{
    char buf[32];

    return ksm_read(name, buf, sizeof(buf)) == 0 ? strtoull(buf, NULL, 10) : 0;
}

/* Async-signal-safe: open, write, close. */
static int ksm_write_path(const char *path, const char *value)
{
    size_t len = strlen(value);
    int fd = open(path, O_WRONLY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return -errno;
    if (write(fd, value, len) != (ssize_t)len)
        rc = -errno;
    close(fd);
    return rc;
}

static int ksm_write(const char *name, const char *value)
{
    char path[128];

    snprintf(path, sizeof(path), "%s%s", SH_KSM_DIR, name);
    return ksm_write_path(path, value);
}

static int ksm_write_u64(const char *name, uint64_t value)
{
    char buf[32];

    snprintf(buf, sizeof(buf), "%" PRIu64, value);
    return ksm_write(name, buf);
}

/* Put every saved setting back; run = 2 first unmerges what was merged.
 * Async-signal-safe.  Returns 0 or the first error. */
static int ksm_put_back(void)
{
    int rc = 0, r;

    for (int i = KSM_PAGES_TO_SCAN; i < KSM_SAVED; i++)
        if (ksm_saved_value[i][0] && (r = ksm_write_path(ksm_saved_names[i],
                                                         ksm_saved_value[i])) < 0 && !rc)
            rc = r;
    if ((r = ksm_write_path(ksm_saved_names[KSM_RUN], "2")) < 0 && !rc)
        rc = r;
    if ((r = ksm_write_path(ksm_saved_names[KSM_RUN], ksm_saved_value[KSM_RUN])) < 0 && !rc)
        rc = r;
    return rc;
}

static void ksm_signal_handler(int sig)
{
    if (ksm_dirty)
        (void)ksm_put_back();
    ksm_dirty = 0;
    signal(sig, SIG_DFL);
    raise(sig);
}

static int find_ksmd(void)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int pid = -1;

    if (!d)
        return -1;
    while (pid < 0 && (de = readdir(d))) {
        char path[288], comm[32];
        int fd;
        ssize_t n;

        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        n = read(fd, comm, sizeof(comm) - 1);
        close(fd);
        if (n > 0) {
            comm[n] = '\0';
            if (strcmp(comm, "ksmd\n") == 0)
                pid = atoi(de->d_name);
        }
    }
    closedir(d);
    return pid;
}

/* ksmd's user + system time, from /proc/<pid>/stat, in nanoseconds. */
static uint64_t ksmd_cpu_ns(int pid)
{
    char path[64], buf[1024], *p;
    unsigned long long utime, stime;
    long tick = sysconf(_SC_CLK_TCK);
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    p = strrchr(buf, ')');
    /* After "(comm)": state, ppid, pgrp, session, tty_nr, tpgid, flags,
     * minflt, cminflt, majflt, cmajflt, utime, stime. */
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                     &utime, &stime) != 2 || tick <= 0)
        return 0;
    return (utime + stime) * (1000000000ull / (uint64_t)tick);
}

/* A KSM setting shown in the report, "-" where this kernel lacks it. */
static void ksm_read_shown(const char *name, char *buf, size_t size)
{
    if (ksm_read(name, buf, size) < 0)
        snprintf(buf, size, "-");
}

/* Can the suite use KSM?  Fills the state; saves nothing yet. */
static void ksm_probe(struct ksm_state *k)
{
    char buf[32];

    memset(k, 0, sizeof(*k));
    k->ksmd_pid = -1;
    if (ksm_read("run", buf, sizeof(buf)) < 0) {
        snprintf(k->reason, sizeof(k->reason), "%srun is missing: the kernel "
                 "was built without CONFIG_KSM", SH_KSM_DIR);
        return;
    }
    if (access(SH_KSM_DIR "run", W_OK) < 0) {
        snprintf(k->reason, sizeof(k->reason), "%srun is not writable (%s): "
                 "KSM needs root", SH_KSM_DIR, strerror(errno));
        return;
    }
    k->ksmd_pid = find_ksmd();
    if (k->ksmd_pid < 0) {
        snprintf(k->reason, sizeof(k->reason), "no ksmd thread in /proc");
        return;
    }
    k->was_running = strcmp(buf, "1") == 0;
    k->pages_sharing_before = ksm_u64("pages_sharing");
    k->have_zero = access(SH_KSM_DIR "use_zero_pages", W_OK) == 0 &&
                   access(SH_KSM_DIR "ksm_zero_pages", R_OK) == 0;
    ksm_read_shown("merge_across_nodes", k->merge_across_nodes, sizeof(k->merge_across_nodes));
    ksm_read_shown("smart_scan", k->smart_scan, sizeof(k->smart_scan));
    ksm_read_shown("max_page_sharing", k->max_page_sharing, sizeof(k->max_page_sharing));
    ksm_read_shown("advisor_mode", k->advisor_mode, sizeof(k->advisor_mode));
    k->available = true;
}

/* Save the settings the suite changes and arm the signal handlers. */
static int ksm_save(struct ksm_state *k)
{
    struct sigaction sa;

    for (int i = 0; i < KSM_SAVED; i++) {
        int rc;

        ksm_saved_value[i][0] = '\0';
        if (i == KSM_USE_ZERO && !k->have_zero)
            continue;
        rc = ksm_read(ksm_saved_names[i], ksm_saved_value[i], sizeof(ksm_saved_value[i]));
        if (rc < 0) {
            mv_bench_error("share: cannot read %s: %s", ksm_saved_names[i], strerror(-rc));
            return MV_BENCH_FAILED;
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = ksm_signal_handler;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(ksm_signals[i], &sa, &ksm_old_action[i]);
    ksm_dirty = 1;
    return MV_BENCH_OK;
}

/* Unmerge and put every setting back; disarm the handlers. */
static void ksm_restore(struct ksm_state *k)
{
    int rc;

    if (!ksm_dirty)
        return;
    rc = ksm_put_back();
    ksm_dirty = 0;
    for (int i = 0; i < 3; i++)
        sigaction(ksm_signals[i], &ksm_old_action[i], NULL);
    k->restored = rc == 0;
    if (rc < 0) {
        snprintf(k->restore_error, sizeof(k->restore_error),
                 "cannot put the KSM settings back: %s", strerror(-rc));
        mv_bench_error("share: %s", k->restore_error);
    }
}

/* ------------------------------------------------------------------------ */
/* KSM cases                                                                 */

struct ksm_counters {
    uint64_t full_scans, pages_sharing, pages_shared, zero_pages, unshared, volatile_pages;
};

static void ksm_counters_read(const struct ksm_state *k, struct ksm_counters *c)
{
    c->full_scans = ksm_u64("full_scans");
    c->pages_sharing = ksm_u64("pages_sharing");
    c->pages_shared = ksm_u64("pages_shared");
    c->zero_pages = k->have_zero ? ksm_u64("ksm_zero_pages") : 0;
    c->unshared = ksm_u64("pages_unshared");
    c->volatile_pages = ksm_u64("pages_volatile");
}

static void unmap_regions(uint8_t **regions, const struct guest_image_set *set)
{
    for (size_t i = 0; i < set->count; i++)
        if (regions[i])
            munmap(regions[i], set->images[i].bytes);
}

/* Copy every image into MADV_MERGEABLE memory, let ksmd merge it until the
 * counters settle, then unmerge (run = 2). */
static int ksm_case_run(struct share_run *run, struct ksm_case *c)
{
    struct ksm_state *k = &run->ksm;
    const struct guest_image_set *set = &run->images;
    uint8_t *regions[GUEST_IMAGE_MAX] = { NULL };
    struct ksm_counters base, now, last;
    uint64_t t0, cpu0, last_change_ns = 0, last_change_cpu = 0, last_change_scans;
    uint64_t last_point_scans;
    int rc = MV_BENCH_OK, r;

    t0 = mv_bench_now_ns();
    for (size_t i = 0; i < set->count && rc == MV_BENCH_OK; i++) {
        const struct guest_image *image = &set->images[i];
        void *m = mmap(NULL, image->bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

        if (m == MAP_FAILED) {
            mv_bench_error("share: %s: cannot map %" PRIu64 " MiB: %s", c->name,
                           image->bytes / MV_BENCH_MIB, strerror(errno));
            rc = MV_BENCH_FAILED;
            break;
        }
        regions[i] = m;
        /* 4 KiB pages, as KSM merges them (THP would only be split). */
        (void)madvise(m, image->bytes, MADV_NOHUGEPAGE);
        if (madvise(m, image->bytes, MADV_MERGEABLE) < 0) {
            mv_bench_error("share: %s: madvise(MADV_MERGEABLE): %s", c->name,
                           strerror(errno));
            rc = MV_BENCH_FAILED;
            break;
        }
        memcpy(m, image->data, image->bytes);
    }
    c->load_ns = mv_bench_now_ns() - t0;
    if (rc == MV_BENCH_OK &&
        ((r = ksm_write_u64("pages_to_scan", c->pages_to_scan)) < 0 ||
         (r = ksm_write_u64("sleep_millisecs", c->sleep_ms)) < 0 ||
         (k->have_zero && (r = ksm_write("use_zero_pages", "1")) < 0))) {
        mv_bench_error("share: %s: cannot configure KSM: %s", c->name, strerror(-r));
        rc = MV_BENCH_FAILED;
    }
    if (rc != MV_BENCH_OK) {
        unmap_regions(regions, set);
        return rc;
    }
    ksm_counters_read(k, &base);
    last = base;
    last_change_scans = last_point_scans = base.full_scans;
    cpu0 = ksmd_cpu_ns(k->ksmd_pid);
    t0 = mv_bench_now_ns();
    if ((r = ksm_write("run", "1")) < 0) {
        mv_bench_error("share: %s: cannot start KSM: %s", c->name, strerror(-r));
        unmap_regions(regions, set);
        return MV_BENCH_FAILED;
    }
    c->ran = true;
    for (;;) {
        uint64_t t, cpu;

        mv_bench_sleep_ms(c->sample_ms);
        ksm_counters_read(k, &now);
        t = mv_bench_now_ns() - t0;
        cpu = ksmd_cpu_ns(k->ksmd_pid) - cpu0;
        if (now.pages_sharing != last.pages_sharing || now.zero_pages != last.zero_pages) {
            last_change_ns = t;
            last_change_cpu = cpu;
            last_change_scans = now.full_scans;
        }
        if (now.full_scans != last_point_scans && c->points < SH_KSM_MAX_POINTS) {
            c->point[c->points++] = (struct ksm_point){
                .t_ns = t, .full_scans = now.full_scans - base.full_scans,
                .pages_sharing = now.pages_sharing - base.pages_sharing,
                .zero_pages = now.zero_pages - base.zero_pages, .ksmd_cpu_ns = cpu,
            };
            last_point_scans = now.full_scans;
        }
        last = now;
        c->detect_ns = t;
        c->detect_cpu_ns = cpu;
        if (now.full_scans >= last_change_scans + SH_KSM_STABLE_SCANS &&
            now.full_scans >= base.full_scans + SH_KSM_STABLE_SCANS) {
            c->converged = true;
            break;
        }
        if (t >= c->timeout_s * 1000000000ull)
            break;
    }
    c->converge_ns = last_change_ns;
    c->converge_cpu_ns = last_change_cpu;
    c->converge_full_scans = last_change_scans - base.full_scans;
    c->full_scans = now.full_scans - base.full_scans;
    c->pages_sharing = now.pages_sharing - base.pages_sharing;
    c->pages_shared = now.pages_shared - base.pages_shared;
    c->zero_pages = now.zero_pages - base.zero_pages;
    c->pages_unshared = (int64_t)(now.unshared - base.unshared);
    c->pages_volatile = now.volatile_pages;
    /* Merged memory must still read as the images. */
    c->content_ok = true;
    for (size_t i = 0; i < set->count; i++)
        if (memcmp(regions[i], set->images[i].data, set->images[i].bytes) != 0)
            c->content_ok = false;
    unmap_regions(regions, set);
    /* Unmerge everything and stop, so that the next case starts afresh. */
    if ((r = ksm_write("run", "2")) < 0) {
        mv_bench_error("share: %s: cannot unmerge (run = 2): %s", c->name, strerror(-r));
        return MV_BENCH_FAILED;
    }
    return MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* memvisor cases                                                            */

/* Sum of every domain's populated pages. */
static int populated_pages(mv_host *host, const uint32_t *doms, size_t n, uint64_t *out)
{
    *out = 0;
    for (size_t i = 0; i < n; i++) {
        struct mv_domain_info info;
        int rc = mv_domain_info(host, doms[i], &info);

        if (rc < 0)
            return mv_bench_lib_error("mv_domain_info", rc);
        *out += info.populated_pages;
    }
    return MV_BENCH_OK;
}

static int load_domains(struct share_run *run, struct mv_case *c, mv_host *host,
                        uint32_t *doms)
{
    const struct guest_image_set *set = &run->images;
    uint64_t t0 = mv_bench_now_ns();

    for (size_t i = 0; i < set->count; i++) {
        const struct guest_image *image = &set->images[i];
        struct mv_domain_config dc;
        uint8_t *ram;
        int rc;

        mv_domain_config_init(&dc);
        snprintf(dc.name, sizeof(dc.name), "share-%zu", i);
        dc.maxmem_bytes = dc.target_bytes = image->bytes;
        rc = mv_domain_create(host, &dc, &doms[i]);
        if (rc < 0)
            return mv_bench_lib_error("mv_domain_create", rc);
        rc = mv_bench_domain_ram(host, doms[i], &ram, NULL);
        if (rc != MV_BENCH_OK)
            return rc;
        memcpy(ram, image->data, image->bytes);
    }
    c->load_ns = mv_bench_now_ns() - t0;
    return populated_pages(host, doms, set->count, &c->populated_before);
}

static int hint_kernels(struct share_run *run, struct mv_case *c, mv_host *host,
                        const uint32_t *doms)
{
    for (size_t i = 0; i < run->images.count; i++) {
        const struct guest_image *image = &run->images.images[i];
        int rc;

        if (!image->kernel_pages)
            continue;
        rc = mv_share_hint(host, doms[i], image->kernel_gfn, image->kernel_pages,
                           SH_HINT_KEY);
        if (rc < 0)
            return mv_bench_lib_error("mv_share_hint", rc);
        c->hinted_ranges++;
    }
    return MV_BENCH_OK;
}

/* Passes of mv_share_scan() until one saves nothing more, SH_MAX_PASSES, or
 * no new pass once `timeout_s` have gone by. */
static int scan_until_converged(struct mv_case *c, mv_host *host, uint64_t timeout_s)
{
    struct mv_share_stats s0, s;
    uint64_t t0, cpu0, thread0, prev_saved, prev_zero;
    int rc = mv_share_stats(host, &s0);

    if (rc < 0)
        return mv_bench_lib_error("mv_share_stats", rc);
    prev_saved = s0.saved_pages;
    prev_zero = s0.zero_reclaimed;
    cpu0 = mv_bench_process_cpu_ns();
    thread0 = mv_bench_thread_cpu_ns();
    t0 = mv_bench_now_ns();
    for (unsigned p = 0; p < SH_MAX_PASSES; p++) {
        struct mv_pass *pass = &c->pass[p];
        uint64_t pass_cpu0 = mv_bench_process_cpu_ns();
        bool gained;

        rc = mv_share_scan(host, 0, &pass->res);
        pass->wall_ns = mv_bench_now_ns() - t0;
        pass->process_cpu_ns = mv_bench_process_cpu_ns() - cpu0;
        pass->own_cpu_ns = pass->process_cpu_ns - (pass_cpu0 - cpu0);
        if (rc < 0)
            return mv_bench_lib_error("mv_share_scan", rc);
        rc = mv_share_stats(host, &s);
        if (rc < 0)
            return mv_bench_lib_error("mv_share_stats", rc);
        c->passes = p + 1;
        pass->saved_pages = s.saved_pages - s0.saved_pages;
        pass->zero_pages = s.zero_reclaimed - s0.zero_reclaimed;
        gained = s.saved_pages != prev_saved || s.zero_reclaimed != prev_zero;
        prev_saved = s.saved_pages;
        prev_zero = s.zero_reclaimed;
        if (gained || p == 0) {
            c->productive_passes = p + 1;
            c->converge_ns = pass->wall_ns;
            c->converge_process_cpu_ns = pass->process_cpu_ns;
            c->converge_thread_cpu_ns = mv_bench_thread_cpu_ns() - thread0;
            c->converge_scan_cpu_ns = s.scan_cpu_ns - s0.scan_cpu_ns;
        }
        if (!gained && p > 0) {
            c->converged = true;
            break;
        }
        if (pass->wall_ns >= timeout_s * 1000000000ull) {
            c->timed_out = true;
            break;
        }
    }
    c->total_ns = mv_bench_now_ns() - t0;
    c->stats = s;
    c->saved_pages = s.saved_pages - s0.saved_pages;
    c->zero_pages = s.zero_reclaimed - s0.zero_reclaimed;
    return MV_BENCH_OK;
}

/* Duplicated pages the scan left unshared: what keeps it from the ideal. */
static int count_missed(struct share_run *run, struct mv_case *c, mv_host *host,
                        const uint32_t *doms)
{
    c->first_missed_image = -1;
    for (size_t i = 0; i < run->images.count; i++) {
        const struct guest_image *image = &run->images.images[i];

        for (uint64_t gfn = 0; gfn < image->pages; gfn++) {
            enum mv_page_type type;
            int rc;

            if (!image->duplicated[gfn])
                continue;
            rc = mv_domain_page_type(host, doms[i], gfn, &type);
            if (rc < 0)
                return mv_bench_lib_error("mv_domain_page_type", rc);
            if (type == MV_PAGE_SHARED)
                continue;
            if (c->first_missed_image < 0) {
                c->first_missed_image = (int64_t)i;
                c->first_missed_gfn = gfn;
            }
            c->missed_duplicates++;
        }
    }
    return MV_BENCH_OK;
}

static void note_mismatch(struct mv_case *c, size_t image, uint64_t gfn)
{
    if (c->first_bad_image < 0) {
        c->first_bad_image = (int64_t)image;
        c->first_bad_gfn = gfn;
    }
}

/* mv_share_audit and mv_host_audit; what the first that fails says goes
 * into `error`, which is left as it is when both pass. */
static void audit_host(mv_host *host, int *share_audit, int *host_audit, char *error,
                       size_t size)
{
    *share_audit = mv_share_audit(host);
    if (*share_audit < 0)
        snprintf(error, size, "mv_share_audit: %s: %s", mv_strerror(*share_audit),
                 mv_last_error());
    *host_audit = mv_host_audit(host);
    if (*host_audit < 0 && !error[0])
        snprintf(error, size, "mv_host_audit: %s: %s", mv_strerror(*host_audit),
                 mv_last_error());
}

/* Every page of every domain against its image: from the host side with
 * mv_domain_read_page, then as the guest sees it; then the audits. */
static int check_domains(struct share_run *run, struct mv_case *c, mv_host *host,
                         const uint32_t *doms)
{
    uint8_t *buf = aligned_alloc(MV_PAGE_SIZE, MV_PAGE_SIZE);

    if (!buf) {
        mv_bench_error("share: out of memory");
        return MV_BENCH_FAILED;
    }
    c->first_bad_image = -1;
    for (size_t i = 0; i < run->images.count; i++) {
        const struct guest_image *image = &run->images.images[i];
        for (uint64_t gfn = 0; gfn < image->pages; gfn++) {
            const uint8_t *want = guest_image_page(image, gfn);
            int rc = mv_domain_read_page(host, doms[i], gfn, buf);

            if (rc < 0) {
                free(buf);
                return mv_bench_lib_error("mv_domain_read_page", rc);
            }
            c->pages_checked++;
            if (memcmp(buf, want, MV_PAGE_SIZE) != 0) {
                c->read_mismatches++;
                note_mismatch(c, i, gfn);
            }
        }
    }
    free(buf);
    audit_host(host, &c->share_audit, &c->host_audit, c->audit_error, sizeof(c->audit_error));
    /* The guest's view, last: reading a page that went back to PoD
     * populates it again. */
    for (size_t i = 0; i < run->images.count; i++) {
        const struct guest_image *image = &run->images.images[i];
        uint8_t *ram;
        int rc = mv_bench_domain_ram(host, doms[i], &ram, NULL);

        if (rc != MV_BENCH_OK)
            return rc;
        for (uint64_t gfn = 0; gfn < image->pages; gfn++)
            if (memcmp(ram + gfn * MV_PAGE_SIZE, guest_image_page(image, gfn),
                       MV_PAGE_SIZE) != 0) {
                c->guest_view_mismatches++;
                note_mismatch(c, i, gfn);
            }
    }
    c->ok = c->read_mismatches == 0 && c->guest_view_mismatches == 0 &&
            c->share_audit == 0 && c->host_audit == 0;
    if (!c->ok)
        mv_bench_error("share: %s: %" PRIu64 " pages read back wrong, %" PRIu64
                       " wrong in the guest's view (first: image %" PRId64 " gfn %"
                       PRIu64 ")%s%s", c->name, c->read_mismatches,
                       c->guest_view_mismatches, c->first_bad_image, c->first_bad_gfn,
                       c->audit_error[0] ? "; " : "", c->audit_error);
    return MV_BENCH_OK;
}

static int mv_case_run(struct share_run *run, struct mv_case *c)
{
    uint32_t doms[GUEST_IMAGE_MAX];
    mv_host *host;
    int rc = mv_bench_host_create(NULL, &host);

    if (rc != MV_BENCH_OK)
        return rc;
    rc = load_domains(run, c, host, doms);
    if (rc == MV_BENCH_OK && c->hinted)
        rc = hint_kernels(run, c, host, doms);
    if (rc == MV_BENCH_OK) {
        c->ran = true;
        rc = scan_until_converged(c, host, run->timeout_s);
    }
    if (rc == MV_BENCH_OK)
        rc = populated_pages(host, doms, run->images.count, &c->populated_after);
    if (rc == MV_BENCH_OK)
        rc = count_missed(run, c, host, doms);
    if (rc == MV_BENCH_OK)
        rc = check_domains(run, c, host, doms);
    mv_host_destroy(host);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Page costs by kind                                                        */

enum cost_kind { COST_ZERO, COST_UNIQUE, COST_DUPLICATE };

/* Word i of page g of a kind: 0 for zero pages, else a word no other page
 * has at that place (pages of one domain all differ). */
static uint64_t cost_word(enum cost_kind kind, uint64_t g, size_t i)
{
    return kind == COST_ZERO ? 0 : ((g * 0x9e3779b97f4a7c15ull) ^ i) | 1;
}

static void cost_fill(uint8_t *ram, uint64_t pages, enum cost_kind kind)
{
    for (uint64_t g = 0; g < pages; g++) {
        uint64_t *w = (uint64_t *)(ram + g * MV_PAGE_SIZE);

        for (size_t i = 0; i < MV_PAGE_SIZE / 8; i++)
            w[i] = cost_word(kind, g, i);
    }
}

static int cost_fail(struct page_costs *pc, const char *what)
{
    snprintf(pc->error, sizeof(pc->error), "%s", what);
    pc->ok = false;
    return MV_BENCH_FAILED;
}

/* One kind on a host of its own: the first pass's process CPU per page
 * scanned (and, for unique pages, a second pass's), then the checks. */
static int cost_kind_run(struct page_costs *pc, enum cost_kind kind, double *first,
                         double *steady)
{
    unsigned domains = kind == COST_DUPLICATE ? 2 : 1;
    uint8_t *ram[2], page[MV_PAGE_SIZE];
    uint32_t doms[2];
    struct mv_scan_result r;
    struct mv_share_stats st;
    mv_host *host;
    uint64_t cpu;
    int rc = mv_bench_host_create(NULL, &host);

    if (rc != MV_BENCH_OK)
        return rc;
    for (unsigned i = 0; i < domains && rc == MV_BENCH_OK; i++) {
        struct mv_domain_config dc;

        mv_domain_config_init(&dc);
        snprintf(dc.name, sizeof(dc.name), "cost-%u", i);
        dc.maxmem_bytes = dc.target_bytes = pc->pages * MV_PAGE_SIZE;
        rc = mv_domain_create(host, &dc, &doms[i]);
        if (rc < 0) {
            rc = mv_bench_lib_error("mv_domain_create", rc);
            break;
        }
        rc = mv_bench_domain_ram(host, doms[i], &ram[i], NULL);
        if (rc == MV_BENCH_OK)
            cost_fill(ram[i], pc->pages, kind);
    }
    cpu = mv_bench_process_cpu_ns();
    if (rc == MV_BENCH_OK && (rc = mv_share_scan(host, 0, &r)) < 0)
        rc = mv_bench_lib_error("mv_share_scan", rc);
    if (rc == MV_BENCH_OK)
        *first = (double)(mv_bench_process_cpu_ns() - cpu) / (double)MV_BENCH_MAX(r.pages_scanned, 1);
    if (rc == MV_BENCH_OK && steady) {
        cpu = mv_bench_process_cpu_ns();
        if ((rc = mv_share_scan(host, 0, &r)) < 0)
            rc = mv_bench_lib_error("mv_share_scan", rc);
        else
            *steady = (double)(mv_bench_process_cpu_ns() - cpu) /
                      (double)MV_BENCH_MAX(r.pages_scanned, 1);
    }
    /* What each kind must have become, and every byte where it was. */
    if (rc == MV_BENCH_OK && (rc = mv_share_stats(host, &st)) < 0)
        rc = mv_bench_lib_error("mv_share_stats", rc);
    if (rc == MV_BENCH_OK) {
        uint64_t want_saved = kind == COST_DUPLICATE ? pc->pages : 0;
        uint64_t want_zero = kind == COST_ZERO ? pc->pages : 0;

        if (st.saved_pages != want_saved || st.zero_reclaimed != want_zero) {
            snprintf(pc->error, sizeof(pc->error), "%s pages: %" PRIu64 " saved and %"
                     PRIu64 " zero pages freed, where %" PRIu64 " and %" PRIu64
                     " should have been", kind == COST_ZERO ? "zero" :
                     kind == COST_UNIQUE ? "unique" : "duplicate", st.saved_pages,
                     st.zero_reclaimed, want_saved, want_zero);
            pc->ok = false;
            rc = MV_BENCH_FAILED;
        }
    }
    for (unsigned i = 0; i < domains && rc == MV_BENCH_OK; i++) {
        for (uint64_t g = 0; g < pc->pages && rc == MV_BENCH_OK; g += 97) {
            if (mv_domain_read_page(host, doms[i], g, page) < 0)
                rc = cost_fail(pc, "mv_domain_read_page failed");
            for (size_t k = 0; k < MV_PAGE_SIZE / 8 && rc == MV_BENCH_OK; k++) {
                uint64_t w = cost_word(kind, g, k);

                if (((uint64_t *)page)[k] != w || ((uint64_t *)(ram[i] + g * MV_PAGE_SIZE))[k] != w)
                    rc = cost_fail(pc, "a page read back wrong");
            }
        }
    }
    if (rc == MV_BENCH_OK && (mv_share_audit(host) != 0 || mv_host_audit(host) != 0))
        rc = cost_fail(pc, "an audit failed");
    mv_host_destroy(host);
    return rc;
}

/* fallocate(PUNCH_HOLE) of pc->pages populated pages of a memfd, 512 a
 * call: what returning a zero page's memory costs with no memvisor code. */
static int cost_punch_floor(struct page_costs *pc)
{
    size_t bytes = pc->pages * MV_PAGE_SIZE;
    int fd = memfd_create("memvisor-bench-punch", MFD_CLOEXEC);
    uint8_t *mem;
    uint64_t cpu;

    if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0) {
        if (fd >= 0)
            close(fd);
        return cost_fail(pc, "memfd_create/ftruncate failed");
    }
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        close(fd);
        return cost_fail(pc, "mmap of the memfd failed");
    }
    memset(mem, 0, bytes);
    munmap(mem, bytes);     /* frames held by the file only, as memvisor's */
    cpu = mv_bench_process_cpu_ns();
    for (size_t off = 0; off < bytes; off += (size_t)MV_BLOCK_PAGES * MV_PAGE_SIZE)
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                      (off_t)MV_BLOCK_PAGES * MV_PAGE_SIZE) < 0) {
            close(fd);
            return cost_fail(pc, "fallocate(PUNCH_HOLE) failed");
        }
    pc->punch_floor_ns = (double)(mv_bench_process_cpu_ns() - cpu) / (double)pc->pages;
    close(fd);
    return MV_BENCH_OK;
}

#define SH_WRITE_ROUNDS 5

/*
 * The guest's first write to a page after a pass, on a host whose share_read
 * is `mode`: a domain of unique pages, then SH_WRITE_ROUNDS times a pass and
 * a byte written into every page through the guest's mapping, timed (wall
 * clock per page; the median round in *ns).  Every byte is checked after.
 */
static int cost_guest_write(struct page_costs *pc, enum mv_share_read mode, double *ns)
{
    struct mv_host_config hc;
    struct mv_domain_config dc;
    struct mv_scan_result r;
    uint64_t round_ns[SH_WRITE_ROUNDS];
    uint8_t *ram, page[MV_PAGE_SIZE];
    uint32_t dom;
    mv_host *host;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.share_read = mode;
    if ((rc = mv_bench_host_create(&hc, &host)) != MV_BENCH_OK)
        return rc;
    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "cost-write");
    dc.maxmem_bytes = dc.target_bytes = pc->pages * MV_PAGE_SIZE;
    if ((rc = mv_domain_create(host, &dc, &dom)) < 0)
        rc = mv_bench_lib_error("mv_domain_create", rc);
    else
        rc = mv_bench_domain_ram(host, dom, &ram, NULL);
    if (rc == MV_BENCH_OK)
        cost_fill(ram, pc->pages, COST_UNIQUE);
    for (unsigned k = 0; k < SH_WRITE_ROUNDS && rc == MV_BENCH_OK; k++) {
        uint64_t t0;

        if ((rc = mv_share_scan(host, 0, &r)) < 0) {
            rc = mv_bench_lib_error("mv_share_scan", rc);
            break;
        }
        t0 = mv_bench_now_ns();
        for (uint64_t g = 0; g < pc->pages; g++)
            ((volatile uint8_t *)ram)[g * MV_PAGE_SIZE + 8 + k] ^= 0xff;
        round_ns[k] = mv_bench_now_ns() - t0;
    }
    if (rc == MV_BENCH_OK)
        *ns = (double)mv_bench_median(round_ns, SH_WRITE_ROUNDS) / (double)pc->pages;
    /* Byte 8 + k of every page flipped once: what the guest and the
     * library read must say so. */
    for (uint64_t g = 0; g < pc->pages && rc == MV_BENCH_OK; g += 97) {
        if (mv_domain_read_page(host, dom, g, page) < 0)
            rc = cost_fail(pc, "mv_domain_read_page failed");
        for (size_t k = 0; k < MV_PAGE_SIZE / 8 && rc == MV_BENCH_OK; k++) {
            uint64_t w = cost_word(COST_UNIQUE, g, k);

            if (k == 1)
                w ^= ((1ull << (8 * SH_WRITE_ROUNDS)) - 1);
            if (((uint64_t *)page)[k] != w || ((uint64_t *)(ram + g * MV_PAGE_SIZE))[k] != w)
                rc = cost_fail(pc, "a page written after a pass read back wrong");
        }
    }
    if (rc == MV_BENCH_OK && (mv_share_audit(host) != 0 || mv_host_audit(host) != 0))
        rc = cost_fail(pc, "an audit failed");
    mv_host_destroy(host);
    return rc;
}

static int page_costs_run(struct page_costs *pc)
{
    int rc;

    *pc = (struct page_costs){ .pages = SH_COST_PAGES, .ok = true };
    rc = cost_kind_run(pc, COST_ZERO, &pc->zero_ns, NULL);
    if (rc == MV_BENCH_OK)
        rc = cost_kind_run(pc, COST_UNIQUE, &pc->unique_first_ns, &pc->unique_steady_ns);
    if (rc == MV_BENCH_OK)
        rc = cost_kind_run(pc, COST_DUPLICATE, &pc->duplicate_ns, NULL);
    if (rc == MV_BENCH_OK)
        rc = cost_punch_floor(pc);
    if (rc == MV_BENCH_OK)
        rc = cost_guest_write(pc, MV_SHARE_READ_AUTO, &pc->write_protected_ns);
    if (rc == MV_BENCH_OK)
        rc = cost_guest_write(pc, MV_SHARE_READ_COPY, &pc->write_unprotected_ns);
    pc->ran = true;
    /* A failed check is reported in the JSON and fails the run; a failed
     * call fails it at once. */
    return pc->ok ? rc : MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* Comparisons                                                               */

#define SH_MAX_COMPARISONS 14

static bool ksm_usable(const struct ksm_case *k)
{
    return k->ran;
}

/* The CPU of memvisor's last pass, the one that found nothing more: what a
 * pass costs once converged.  0 when the scan did not converge. */
static uint64_t mv_steady_pass_cpu_ns(const struct mv_case *c)
{
    if (!c->converged || c->passes < 2)
        return 0;
    return c->pass[c->passes - 1].own_cpu_ns;
}

/* ksmd's CPU for one full scan once converged: between the last two full
 * scans recorded, which changed nothing (the run ends two such scans after
 * the last change).  0 when not known. */
static uint64_t ksm_steady_scan_cpu_ns(const struct ksm_case *k)
{
    const struct ksm_point *a, *b;

    if (!k->converged || k->points < 2)
        return 0;
    a = &k->point[k->points - 2];
    b = &k->point[k->points - 1];
    if (b->full_scans != k->full_scans || b->full_scans <= a->full_scans)
        return 0;
    return (b->ksmd_cpu_ns - a->ksmd_cpu_ns) / (b->full_scans - a->full_scans);
}

static size_t comparisons(const struct share_run *run, struct mv_bench_comparison *out)
{
    const struct mv_case *m = &run->mv_scan, *h = &run->mv_hinted;
    const struct ksm_case *ka = &run->ksm_aggressive, *kd = &run->ksm_default;
    /* Guests' own RAM (the captured real guests, or dumps given with
     * --image): the goals of sharing on real memory (1/3 of KSM's time and
     * CPU, 99.9% of the ideal); synthetic guests keep the first goals. */
    bool real_memory = !run->images.synthetic;
    double time_goal = real_memory ? 0.3 : 0.5;
    size_t n = 0;

    if (ksm_usable(ka)) {
        out[n++] = (struct mv_bench_comparison){
            .figure = "non-zero pages saved", .unit = "pages",
            .value = (double)m->saved_pages,
            .peer = "KSM pages_sharing (aggressive)", .peer_value = (double)ka->pages_sharing,
            .goal_min_ratio = 1.0,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "time to converge", .unit = "ns",
            .value = (double)m->converge_ns,
            .peer = "KSM aggressive", .peer_value = (double)ka->converge_ns,
            .goal_max_ratio = time_goal,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "CPU to converge", .unit = "ns",
            .value = (double)m->converge_process_cpu_ns,
            .peer = "ksmd CPU (aggressive)", .peer_value = (double)ka->converge_cpu_ns,
            .goal_max_ratio = time_goal,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "zero pages freed", .unit = "pages",
            .value = (double)m->zero_pages,
            .peer = "KSM ksm_zero_pages (aggressive)", .peer_value = (double)ka->zero_pages,
        };
        if (mv_steady_pass_cpu_ns(m) && ksm_steady_scan_cpu_ns(ka))
            out[n++] = (struct mv_bench_comparison){
                .figure = "CPU of a pass, converged", .unit = "ns",
                .value = (double)mv_steady_pass_cpu_ns(m),
                .peer = "ksmd CPU of a full scan, converged",
                .peer_value = (double)ksm_steady_scan_cpu_ns(ka),
            };
    }
    out[n++] = (struct mv_bench_comparison){
        .figure = "non-zero pages saved", .unit = "pages",
        .value = (double)m->saved_pages,
        .peer = "ideal", .peer_value = (double)run->ideal.saved_pages,
        .goal_min_ratio = real_memory ? 0.999 : 0.0,
    };
    if (ksm_usable(ka))
        out[n++] = (struct mv_bench_comparison){
            .figure = "KSM pages_sharing (aggressive)", .unit = "pages",
            .value = (double)ka->pages_sharing,
            .peer = "ideal", .peer_value = (double)run->ideal.saved_pages,
        };
    if (h->ran) {
        out[n++] = (struct mv_bench_comparison){
            .figure = "hinted: non-zero pages saved", .unit = "pages",
            .value = (double)h->saved_pages,
            .peer = "ideal", .peer_value = (double)run->ideal.saved_pages,
        };
        if (ksm_usable(ka)) {
            out[n++] = (struct mv_bench_comparison){
                .figure = "hinted: time to converge", .unit = "ns",
                .value = (double)h->converge_ns,
                .peer = "KSM aggressive", .peer_value = (double)ka->converge_ns,
            };
            out[n++] = (struct mv_bench_comparison){
                .figure = "hinted: CPU to converge", .unit = "ns",
                .value = (double)h->converge_process_cpu_ns,
                .peer = "ksmd CPU (aggressive)", .peer_value = (double)ka->converge_cpu_ns,
            };
        }
    }
    if (ksm_usable(kd)) {
        out[n++] = (struct mv_bench_comparison){
            .figure = "time to converge", .unit = "ns",
            .value = (double)m->converge_ns,
            .peer = "KSM defaults", .peer_value = (double)kd->converge_ns,
        };
        out[n++] = (struct mv_bench_comparison){
            .figure = "non-zero pages saved", .unit = "pages",
            .value = (double)m->saved_pages,
            .peer = "KSM pages_sharing (defaults)", .peer_value = (double)kd->pages_sharing,
        };
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Reports                                                                   */

static struct json_object *u64_json(uint64_t v)
{
    return json_object_new_int64((int64_t)v);
}

static struct json_object *images_json(const struct share_run *run)
{
    struct json_object *a = json_object_new_array();

    for (size_t i = 0; i < run->images.count; i++) {
        const struct guest_image *image = &run->images.images[i];
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "name", json_object_new_string(image->name));
        json_object_object_add(o, "pages", u64_json(image->pages));
        if (run->images.synthetic) {
            struct json_object *kinds = json_object_new_object();

            for (int k = 0; k < GUEST_PAGE_KINDS; k++)
                json_object_object_add(kinds, guest_page_kind_name(k),
                                       u64_json(image->kind_pages[k]));
            json_object_object_add(o, "pages_by_kind", kinds);
            json_object_object_add(o, "kernel_gfn", u64_json(image->kernel_gfn));
        }
        json_object_array_add(a, o);
    }
    return a;
}

static struct json_object *ideal_json(const struct guest_image_ideal *d)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "total_pages", u64_json(d->total_pages));
    json_object_object_add(o, "zero_pages", u64_json(d->zero_pages));
    json_object_object_add(o, "nonzero_pages", u64_json(d->nonzero_pages));
    json_object_object_add(o, "distinct_nonzero_contents", u64_json(d->distinct_nonzero));
    json_object_object_add(o, "duplicated_nonzero_pages", u64_json(d->duplicated_pages));
    json_object_object_add(o, "duplicated_fraction", mv_bench_json_real(
        d->nonzero_pages ? (double)d->duplicated_pages / (double)d->nonzero_pages : 0, 3));
    json_object_object_add(o, "in_another_image_pages", u64_json(d->cross_image_pages));
    json_object_object_add(o, "saved_pages", u64_json(d->saved_pages));
    json_object_object_add(o, "hash_collisions", u64_json(d->hash_collisions));
    json_object_object_add(o, "elapsed_ns", u64_json(d->elapsed_ns));
    json_object_object_add(o, "what", json_object_new_string(
        "saved_pages = nonzero_pages - distinct_nonzero_contents (one copy of each "
        "content kept); zero pages need no frame and are counted apart; contents "
        "grouped by XXH3_64bits and confirmed byte for byte"));
    return o;
}

static struct json_object *mv_case_json(const struct mv_case *c)
{
    struct json_object *o = json_object_new_object(), *passes = json_object_new_array();
    const struct mv_share_stats *s = &c->stats;

    json_object_object_add(o, "name", json_object_new_string(c->name));
    json_object_object_add(o, "what", json_object_new_string(c->what));
    json_object_object_add(o, "load_ns", u64_json(c->load_ns));
    json_object_object_add(o, "populated_pages_before", u64_json(c->populated_before));
    json_object_object_add(o, "populated_pages_after", u64_json(c->populated_after));
    if (c->hinted)
        json_object_object_add(o, "hinted_ranges", u64_json(c->hinted_ranges));
    json_object_object_add(o, "saved_pages", u64_json(c->saved_pages));
    json_object_object_add(o, "zero_pages_to_pod", u64_json(c->zero_pages));
    json_object_object_add(o, "duplicated_pages_left_unshared", u64_json(c->missed_duplicates));
    if (c->first_missed_image >= 0) {
        char where[96];

        snprintf(where, sizeof(where), "image %" PRId64 " gfn %" PRIu64,
                 c->first_missed_image, c->first_missed_gfn);
        json_object_object_add(o, "first_left_unshared", json_object_new_string(where));
    }
    json_object_object_add(o, "converged", json_object_new_boolean(c->converged));
    if (c->timed_out)
        json_object_object_add(o, "stopped", json_object_new_string(
            "no new pass after the time budget (parameters.timeout_s)"));
    json_object_object_add(o, "passes", u64_json(c->passes));
    json_object_object_add(o, "productive_passes", u64_json(c->productive_passes));
    json_object_object_add(o, "converge_ns", u64_json(c->converge_ns));
    json_object_object_add(o, "converge_process_cpu_ns", u64_json(c->converge_process_cpu_ns));
    json_object_object_add(o, "converge_thread_cpu_ns", u64_json(c->converge_thread_cpu_ns));
    json_object_object_add(o, "converge_scan_cpu_ns", u64_json(c->converge_scan_cpu_ns));
    json_object_object_add(o, "steady_pass_cpu_ns", u64_json(mv_steady_pass_cpu_ns(c)));
    json_object_object_add(o, "total_ns", u64_json(c->total_ns));
    json_object_object_add(o, "zero_pages_read_in_guest", u64_json(c->stats.zero_in_guest));
    json_object_object_add(o, "guest_read_fallbacks", u64_json(c->stats.guest_read_fallbacks));
    for (unsigned p = 0; p < c->passes; p++) {
        const struct mv_pass *ps = &c->pass[p];
        struct json_object *po = json_object_new_object();

        json_object_object_add(po, "pages_scanned", u64_json(ps->res.pages_scanned));
        json_object_object_add(po, "pages_shared", u64_json(ps->res.pages_shared));
        json_object_object_add(po, "pages_zero", u64_json(ps->res.pages_zero));
        json_object_object_add(po, "volatile_skips", u64_json(ps->res.volatile_skips));
        json_object_object_add(po, "pages_unchanged", u64_json(ps->res.pages_unchanged));
        json_object_object_add(po, "hinted_pages", u64_json(ps->res.hinted_pages));
        json_object_object_add(po, "elapsed_ns", u64_json(ps->res.elapsed_ns));
        json_object_object_add(po, "read_ns", u64_json(ps->res.read_ns));
        json_object_object_add(po, "zero_ns", u64_json(ps->res.zero_ns));
        json_object_object_add(po, "index_ns", u64_json(ps->res.index_ns));
        json_object_object_add(po, "share_ns", u64_json(ps->res.share_ns));
        json_object_object_add(po, "end_ns", u64_json(ps->wall_ns));
        json_object_object_add(po, "process_cpu_ns", u64_json(ps->process_cpu_ns));
        json_object_object_add(po, "pass_cpu_ns", u64_json(ps->own_cpu_ns));
        json_object_object_add(po, "saved_pages", u64_json(ps->saved_pages));
        json_object_object_add(po, "zero_pages_to_pod", u64_json(ps->zero_pages));
        json_object_array_add(passes, po);
    }
    json_object_object_add(o, "scan_passes", passes);
    /* Every counter, as the daemon reports them (how pages were read,
     * the candidate table's size among them). */
    json_object_object_add(o, "share_stats", mv_proto_share_stats_json(s));
    json_object_object_add(o, "pages_checked", u64_json(c->pages_checked));
    json_object_object_add(o, "read_page_mismatches", u64_json(c->read_mismatches));
    json_object_object_add(o, "guest_view_mismatches", u64_json(c->guest_view_mismatches));
    json_object_object_add(o, "share_audit", json_object_new_int(c->share_audit));
    json_object_object_add(o, "host_audit", json_object_new_int(c->host_audit));
    if (c->audit_error[0])
        json_object_object_add(o, "audit_error", json_object_new_string(c->audit_error));
    json_object_object_add(o, "ok", json_object_new_boolean(c->ok));
    return o;
}

static struct json_object *ksm_case_json(const struct ksm_case *c)
{
    struct json_object *o = json_object_new_object(), *pts = json_object_new_array();

    json_object_object_add(o, "name", json_object_new_string(c->name));
    json_object_object_add(o, "what", json_object_new_string(c->what));
    json_object_object_add(o, "pages_to_scan", u64_json(c->pages_to_scan));
    json_object_object_add(o, "sleep_millisecs", u64_json(c->sleep_ms));
    json_object_object_add(o, "timeout_s", u64_json(c->timeout_s));
    json_object_object_add(o, "sample_ms", u64_json(c->sample_ms));
    json_object_object_add(o, "load_ns", u64_json(c->load_ns));
    json_object_object_add(o, "converged", json_object_new_boolean(c->converged));
    json_object_object_add(o, "pages_sharing", u64_json(c->pages_sharing));
    json_object_object_add(o, "pages_shared", u64_json(c->pages_shared));
    json_object_object_add(o, "ksm_zero_pages", u64_json(c->zero_pages));
    json_object_object_add(o, "pages_unshared_delta", json_object_new_int64(c->pages_unshared));
    json_object_object_add(o, "pages_volatile", u64_json(c->pages_volatile));
    json_object_object_add(o, "converge_ns", u64_json(c->converge_ns));
    json_object_object_add(o, "converge_ksmd_cpu_ns", u64_json(c->converge_cpu_ns));
    json_object_object_add(o, "converge_full_scans", u64_json(c->converge_full_scans));
    json_object_object_add(o, "detect_ns", u64_json(c->detect_ns));
    json_object_object_add(o, "detect_ksmd_cpu_ns", u64_json(c->detect_cpu_ns));
    json_object_object_add(o, "full_scans", u64_json(c->full_scans));
    json_object_object_add(o, "steady_full_scan_ksmd_cpu_ns", u64_json(ksm_steady_scan_cpu_ns(c)));
    for (unsigned i = 0; i < c->points; i++) {
        struct json_object *p = json_object_new_object();

        json_object_object_add(p, "full_scans", u64_json(c->point[i].full_scans));
        json_object_object_add(p, "t_ns", u64_json(c->point[i].t_ns));
        json_object_object_add(p, "pages_sharing", u64_json(c->point[i].pages_sharing));
        json_object_object_add(p, "ksm_zero_pages", u64_json(c->point[i].zero_pages));
        json_object_object_add(p, "ksmd_cpu_ns", u64_json(c->point[i].ksmd_cpu_ns));
        json_object_array_add(pts, p);
    }
    json_object_object_add(o, "after_each_full_scan", pts);
    json_object_object_add(o, "content_ok", json_object_new_boolean(c->content_ok));
    return o;
}

static struct json_object *ksm_json(const struct share_run *run)
{
    const struct ksm_state *k = &run->ksm;
    struct json_object *o = json_object_new_object(), *before;

    json_object_object_add(o, "available", json_object_new_boolean(k->available));
    if (!k->available || run->opt.no_ksm) {
        json_object_object_add(o, "reason", json_object_new_string(
            run->opt.no_ksm ? "--no-ksm" : k->reason));
        return o;
    }
    before = json_object_new_object();
    json_object_object_add(o, "ksmd_pid", json_object_new_int(k->ksmd_pid));
    json_object_object_add(before, "run", json_object_new_string(ksm_saved_value[KSM_RUN]));
    json_object_object_add(before, "pages_to_scan",
                           json_object_new_string(ksm_saved_value[KSM_PAGES_TO_SCAN]));
    json_object_object_add(before, "sleep_millisecs",
                           json_object_new_string(ksm_saved_value[KSM_SLEEP]));
    json_object_object_add(before, "use_zero_pages",
                           json_object_new_string(ksm_saved_value[KSM_USE_ZERO]));
    json_object_object_add(before, "pages_sharing", u64_json(k->pages_sharing_before));
    json_object_object_add(o, "settings_before", before);
    json_object_object_add(o, "merge_across_nodes",
                           json_object_new_string(k->merge_across_nodes));
    json_object_object_add(o, "smart_scan", json_object_new_string(k->smart_scan));
    json_object_object_add(o, "max_page_sharing", json_object_new_string(k->max_page_sharing));
    json_object_object_add(o, "advisor_mode", json_object_new_string(k->advisor_mode));
    json_object_object_add(o, "use_zero_pages_during_runs",
                           json_object_new_string(k->have_zero ? "1" : "unavailable"));
    if (k->was_running)
        json_object_object_add(o, "note", json_object_new_string(
            "KSM was running before the suite: its counters include other processes"));
    json_object_object_add(o, "aggressive", run->ksm_aggressive.ran ?
                           ksm_case_json(&run->ksm_aggressive) : NULL);
    json_object_object_add(o, "defaults", run->ksm_default.ran ?
                           ksm_case_json(&run->ksm_default) : NULL);
    json_object_object_add(o, "settings_restored", json_object_new_boolean(k->restored));
    if (k->restore_error[0])
        json_object_object_add(o, "restore_error", json_object_new_string(k->restore_error));
    return o;
}

static struct json_object *page_costs_json(const struct page_costs *pc)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "pages", u64_json(pc->pages));
    json_object_object_add(o, "what", json_object_new_string(
        "process CPU per page scanned by the first mv_share_scan() pass over a host "
        "holding only that kind (unique: also a second pass over the same pages, "
        "unchanged); duplicate: two domains with the same bytes, per page of both; "
        "punch_floor: fallocate(PUNCH_HOLE) of populated memfd pages, 512 a call"));
    json_object_object_add(o, "zero_ns", json_object_new_double(pc->zero_ns));
    json_object_object_add(o, "unique_first_ns", json_object_new_double(pc->unique_first_ns));
    json_object_object_add(o, "unique_steady_ns", json_object_new_double(pc->unique_steady_ns));
    json_object_object_add(o, "duplicate_ns", json_object_new_double(pc->duplicate_ns));
    json_object_object_add(o, "punch_floor_ns", json_object_new_double(pc->punch_floor_ns));
    json_object_object_add(o, "guest_write", json_object_new_string(
        "wall time per page of the guest's first write to each unique page after a "
        "pass, median of 5 passes: protected (share_read auto, the pass write-protects "
        "what it read) against unprotected (share_read copy)"));
    json_object_object_add(o, "guest_write_protected_ns",
                           json_object_new_double(pc->write_protected_ns));
    json_object_object_add(o, "guest_write_unprotected_ns",
                           json_object_new_double(pc->write_unprotected_ns));
    json_object_object_add(o, "ok", json_object_new_boolean(pc->ok));
    if (!pc->ok)
        json_object_object_add(o, "error", json_object_new_string(pc->error));
    return o;
}

static struct json_object *set_json(const struct share_run *run, bool *all_met)
{
    struct json_object *root = mv_bench_json_root("share", &run->machine);
    struct json_object *params = json_object_new_object();
    struct json_object *mv = json_object_new_object();
    struct mv_bench_comparison cmp[SH_MAX_COMPARISONS];
    size_t n = comparisons(run, cmp);

    json_object_object_add(params, "source", json_object_new_string(
        run->images.synthetic ? "synthetic" :
        run->real ? "real guests' RAM captured by scripts/guest-ram.sh" :
                    "raw RAM dumps (--image)"));
    if (run->images.synthetic) {
        const struct guest_image_params *p = &run->images.params;

        json_object_object_add(params, "guests", u64_json(p->guests));
        json_object_object_add(params, "guest_mib", u64_json(p->guest_mib));
        json_object_object_add(params, "seed", u64_json(p->seed));
        json_object_object_add(params, "kernel_mib", u64_json(p->kernel_mib));
        json_object_object_add(params, "kernel_offset_mib", u64_json(p->kernel_offset_mib));
        json_object_object_add(params, "shared_cache_pct", u64_json(p->shared_cache_pct));
        json_object_object_add(params, "unique_cache_pct", u64_json(p->unique_cache_pct));
        json_object_object_add(params, "anon_pct", u64_json(p->anon_pct));
        json_object_object_add(params, "run_min_pages", u64_json(p->run_min_pages));
        json_object_object_add(params, "run_max_pages", u64_json(p->run_max_pages));
        json_object_object_add(params, "files_shared", u64_json(run->images.files_shared));
        json_object_object_add(params, "files_unique", u64_json(run->images.files_unique));
        json_object_object_add(params, "generate_ns", u64_json(run->images.generate_ns));
    }
    json_object_object_add(params, "timeout_s", u64_json(run->timeout_s));
    json_object_object_add(params, "images", images_json(run));
    json_object_object_add(params, "statistic", json_object_new_string(
        "one run of each case; converge_ns: memvisor, from the first scan pass to the "
        "end of the last pass that saved pages or freed zero pages (one more pass shows "
        "that nothing is left); KSM, from run = 1 to the last sample (every sample_ms) "
        "at which pages_sharing or ksm_zero_pages moved; CPU to converge: memvisor, "
        "the process's CPU time (CLOCK_PROCESS_CPUTIME_ID) over the same span; KSM, "
        "ksmd's utime + stime (/proc/<pid>/stat, 10 ms ticks) at that sample; with "
        "--rounds N, memvisor and KSM alternate N times and the figures are those of "
        "the round whose time ratio is the median (rounds lists them all)"));
    json_object_object_add(root, "parameters", params);
    json_object_object_add(root, "ideal", ideal_json(&run->ideal));
    json_object_object_add(root, "zero_pages", json_object_new_string(
        "counted apart from saved pages on both sides: memvisor's zero_pages_to_pod "
        "are zero pages returned to populate-on-demand (mv_share_stats zero_reclaimed); "
        "KSM's ksm_zero_pages are zero pages mapped to the kernel's zero page, which KSM "
        "does only with use_zero_pages = 1, set for these runs (without it KSM merges "
        "zero pages like any other equal pages and counts them in pages_sharing)"));
    if (run->rounds > 1) {
        struct json_object *rounds = json_object_new_array();

        for (unsigned r = 0; r < run->rounds; r++) {
            const struct share_round *sr = &run->round[r];
            struct json_object *o = json_object_new_object();

            json_object_object_add(o, "memvisor_converge_ns", u64_json(sr->mv_ns));
            json_object_object_add(o, "memvisor_cpu_ns", u64_json(sr->mv_cpu_ns));
            json_object_object_add(o, "ksm_converge_ns", u64_json(sr->ksm_ns));
            json_object_object_add(o, "ksmd_cpu_ns", u64_json(sr->ksm_cpu_ns));
            if (sr->ksm_ns && sr->ksm_cpu_ns) {
                json_object_object_add(o, "time_ratio", json_object_new_double(
                    (double)sr->mv_ns / (double)sr->ksm_ns));
                json_object_object_add(o, "cpu_ratio", json_object_new_double(
                    (double)sr->mv_cpu_ns / (double)sr->ksm_cpu_ns));
            }
            json_object_array_add(rounds, o);
        }
        json_object_object_add(root, "rounds", rounds);
        json_object_object_add(root, "median_round", u64_json(run->median_round));
    }
    json_object_object_add(mv, "scan", mv_case_json(&run->mv_scan));
    json_object_object_add(mv, "hinted", run->mv_hinted.ran ?
                           mv_case_json(&run->mv_hinted) : NULL);
    json_object_object_add(root, "memvisor", mv);
    json_object_object_add(root, "ksm", ksm_json(run));
    *all_met = mv_bench_comparisons_json(root, cmp, n, NULL);
    json_object_object_add(root, "goals_met", json_object_new_boolean(*all_met));
    json_object_object_add(root, "ok", json_object_new_boolean(run->ok));
    return root;
}

/* The set measured (the synthetic guests, or --image), with the captured
 * real guests under "real" and the page costs beside them. */
static int report_json(const struct share_run *run)
{
    bool met, real_met = true;
    struct json_object *root = set_json(run, &met);

    if (run->real_run) {
        struct json_object *real = set_json(run->real_run, &real_met);

        json_object_object_add(real, "dumps_dir", json_object_new_string(run->opt.real_dir));
        json_object_object_add(root, "real", real);
    } else if (!run->opt.nimages) {
        struct json_object *real = json_object_new_object();

        json_object_object_add(real, "measured", json_object_new_boolean(false));
        json_object_object_add(real, "reason", json_object_new_string(run->real_reason));
        json_object_object_add(root, "real", real);
    }
    if (run->costs.ran)
        json_object_object_add(root, "page_costs", page_costs_json(&run->costs));
    json_object_object_add(root, "all_goals_met", json_object_new_boolean(met && real_met));
    return mv_bench_json_emit(root);
}

static void print_mv_case(const struct mv_case *c)
{
    printf("\n%s: %s\n", c->name, c->what);
    printf("    saved %" PRIu64 " non-zero pages, %" PRIu64 " zero pages to PoD (%" PRIu64
           " read where the guest maps them); %u passes (%u productive), %s in %.1f ms, "
           "%.1f ms CPU (scan_cpu_ns %.1f ms)\n", c->saved_pages, c->zero_pages,
           c->stats.zero_in_guest, c->passes,
           c->productive_passes, c->converged ? "converged" : "NOT converged",
           (double)c->converge_ns / 1e6,
           (double)c->converge_process_cpu_ns / 1e6, (double)c->converge_scan_cpu_ns / 1e6);
    if (c->passes && c->pass[0].res.elapsed_ns) {
        const struct mv_scan_result *r = &c->pass[0].res;
        uint64_t parts = r->read_ns + r->zero_ns + r->index_ns + r->share_ns;

        printf("    first pass %.1f ms: reading pages %.1f, freeing zero pages %.1f, index "
               "lookups %.1f, sharing %.1f, the rest %.1f\n", (double)r->elapsed_ns / 1e6,
               (double)r->read_ns / 1e6, (double)r->zero_ns / 1e6, (double)r->index_ns / 1e6,
               (double)r->share_ns / 1e6,
               (double)(r->elapsed_ns - MV_BENCH_MIN(parts, r->elapsed_ns)) / 1e6);
    }
    printf("    %" PRIu64 " duplicated pages left unshared\n", c->missed_duplicates);
    printf("    populated %" PRIu64 " -> %" PRIu64 " pages; %" PRIu64 " shared frames, "
           "%" PRIu64 " mappings in the process%s%s\n", c->populated_before,
           c->populated_after, c->stats.shared_frames, c->stats.vma_count,
           c->stats.sharing_stopped ? "; sharing stopped: " : "",
           c->stats.sharing_stopped ? c->stats.stop_reason : "");
    printf("    checks: %" PRIu64 " pages read back, %" PRIu64 " wrong, %" PRIu64
           " wrong in the guest's view, share audit %d, host audit %d: %s\n",
           c->pages_checked, c->read_mismatches, c->guest_view_mismatches,
           c->share_audit, c->host_audit, c->ok ? "ok" : "FAILED");
}

static void print_ksm_case(const struct ksm_case *c)
{
    printf("\n%s: %s\n", c->name, c->what);
    printf("    pages_sharing %" PRIu64 ", pages_shared %" PRIu64 ", ksm_zero_pages %"
           PRIu64 "; %s after %.1f ms and %" PRIu64 " full scans, ksmd CPU %.1f ms; "
           "content %s\n", c->pages_sharing, c->pages_shared, c->zero_pages,
           c->converged ? "settled" : "NOT settled (timeout)",
           (double)c->converge_ns / 1e6, c->converge_full_scans,
           (double)c->converge_cpu_ns / 1e6, c->content_ok ? "ok" : "WRONG");
}

static void print_page_costs(const struct page_costs *pc)
{
    printf("\npage costs: process CPU per page scanned, each kind alone (%" PRIu64 " pages)\n",
           pc->pages);
    if (!pc->ok) {
        printf("    FAILED: %s\n", pc->error);
        return;
    }
    printf("    zero %.0f ns (the kernel's punch alone: %.0f ns), unique %.0f ns first pass "
           "and %.0f ns a pass after, duplicate %.0f ns\n", pc->zero_ns, pc->punch_floor_ns,
           pc->unique_first_ns, pc->unique_steady_ns, pc->duplicate_ns);
    printf("    the guest's first write to a page after a pass: %.0f ns, against %.0f ns "
           "where the scanner protects nothing (share_read copy): %.2fx\n",
           pc->write_protected_ns, pc->write_unprotected_ns,
           pc->write_protected_ns / (pc->write_unprotected_ns > 0 ? pc->write_unprotected_ns : 1));
}

static int report_set_text(const struct share_run *run);

static int report_text(const struct share_run *run)
{
    int rc = report_set_text(run);

    if (run->costs.ran)
        print_page_costs(&run->costs);
    if (rc == MV_BENCH_OK && run->real_run) {
        printf("\n\nReal guests (captured RAM in %s)\n\n", run->opt.real_dir);
        rc = report_set_text(run->real_run);
    } else if (rc == MV_BENCH_OK && !run->opt.nimages) {
        printf("\nreal guests: not measured: %s\n", run->real_reason);
    }
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : rc;
}

static int report_set_text(const struct share_run *run)
{
    const struct guest_image_ideal *d = &run->ideal;
    struct mv_bench_comparison cmp[SH_MAX_COMPARISONS];
    size_t n = comparisons(run, cmp);

    printf("memvisor bench share: %zu %s guests, %" PRIu64 " MiB in all\n",
           run->images.count, run->images.synthetic ? "synthetic" : run->real ? "real" : "dumped",
           run->image_bytes / MV_BENCH_MIB);
    mv_bench_machine_print(stdout, &run->machine);
    printf("\nideal: %" PRIu64 " pages, %" PRIu64 " zero, %" PRIu64 " non-zero of which %"
           PRIu64 " (%.1f%%) duplicated; one copy each saves %" PRIu64 " pages\n",
           d->total_pages, d->zero_pages, d->nonzero_pages, d->duplicated_pages,
           d->nonzero_pages ? 100.0 * (double)d->duplicated_pages / (double)d->nonzero_pages : 0,
           d->saved_pages);
    print_mv_case(&run->mv_scan);
    if (run->mv_hinted.ran)
        print_mv_case(&run->mv_hinted);
    if (run->opt.no_ksm || !run->ksm.available)
        printf("\nKSM: not measured: %s\n", run->opt.no_ksm ? "--no-ksm" : run->ksm.reason);
    if (run->ksm_aggressive.ran)
        print_ksm_case(&run->ksm_aggressive);
    if (run->ksm_default.ran)
        print_ksm_case(&run->ksm_default);
    if (run->rounds > 1) {
        printf("\nrounds (memvisor / KSM, time; CPU), the median round's shown above:\n");
        for (unsigned r = 0; r < run->rounds; r++) {
            const struct share_round *sr = &run->round[r];

            printf("    %u%s %.1f / %.1f ms = %.3f; %.1f / %.1f ms = %.3f\n", r + 1,
                   r == run->median_round ? "*" : " ", (double)sr->mv_ns / 1e6,
                   (double)sr->ksm_ns / 1e6,
                   sr->ksm_ns ? (double)sr->mv_ns / (double)sr->ksm_ns : 0,
                   (double)sr->mv_cpu_ns / 1e6, (double)sr->ksm_cpu_ns / 1e6,
                   sr->ksm_cpu_ns ? (double)sr->mv_cpu_ns / (double)sr->ksm_cpu_ns : 0);
        }
    }
    printf("\n");
    mv_bench_comparisons_print(stdout, cmp, n);
    printf("\n%s\n", run->ok ? "ok" : "FAILED: see the checks above");
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                               */

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor bench share [--json] [--guests N] [--guest-mib MIB] [--seed S]\n"
        "                            [--image FILE]... [--no-hint] [--no-ksm]\n"
        "                            [--ksm-defaults] [--real DIR] [--no-real]\n"
        "                            [--rounds N]\n"
        "\n"
        "Copy-on-write page sharing of guests that look like real ones: what\n"
        "memvisor's scanner saves, how fast and at what CPU cost, against KSM on\n"
        "the same memory in the same run and against the ideal.  KSM needs root;\n"
        "every KSM setting changed is put back at the end.\n"
        "\n"
        "  --json            print one JSON object instead of a table\n"
        "  --guests N        synthetic guests (1..%u, default %u)\n"
        "  --guest-mib MIB   size of each, a multiple of 2 (default %u)\n"
        "  --seed S          seed of the synthetic guests (default %u)\n"
        "  --image FILE      a raw RAM dump (byte i = guest-physical byte i);\n"
        "                    repeatable; replaces the synthetic guests, and is\n"
        "                    held to the goals of real guests' memory\n"
        "  --no-hint         skip the hinted memvisor case\n"
        "  --no-ksm          do not measure KSM\n"
        "  --ksm-defaults    also measure KSM at its defaults (100 pages every\n"
        "                    20 ms; takes minutes; gives up after %u s, longer\n"
        "                    for more than 1.7 GiB of guests)\n"
        "  --real DIR        the real guests' RAM dumps (*.raw), measured as a\n"
        "                    second set after the synthetic one (default\n"
        "                    $MV_GUEST_RAM, else build/vm/ram); captured first\n"
        "                    with scripts/guest-ram.sh when there are none\n"
        "  --no-real         measure the synthetic guests only\n"
        "  --rounds N        memvisor and KSM alternated N times (1..%u, default\n"
        "                    1); the round reported is the one whose time\n"
        "                    ratio is the median, and every round is listed\n"
        "  --help            this text\n"
        "\n"
        "The synthetic set also measures what one page costs by kind (zero,\n"
        "unique, duplicate) against the kernel's cost of freeing a page, and\n"
        "the guest's first write to a page after a pass (the scanner leaves\n"
        "what it read write-protected) against a host that protects nothing.\n",
        GUEST_IMAGE_MAX, GUEST_IMAGE_DEFAULT_GUESTS, GUEST_IMAGE_DEFAULT_MIB,
        GUEST_IMAGE_DEFAULT_SEED, 900u, SH_MAX_ROUNDS);
}

/* One option other than --json and --help. */
static int parse_option(int opt, const char *arg, void *ctx)
{
    struct share_options *o = ctx;

    switch (opt) {
    case 'g':
        o->sized = true;
        return mv_bench_parse_u64("share: --guests", arg, 1, GUEST_IMAGE_MAX, &o->guests);
    case 'm':
        o->sized = true;
        return mv_bench_parse_mib("share: --guest-mib", arg, SH_MAX_GUEST_MIB, &o->guest_mib);
    case 's':
        return mv_bench_parse_u64("share: --seed", arg, 0, UINT64_MAX, &o->seed);
    case 'i':
        if (o->nimages == GUEST_IMAGE_MAX) {
            mv_bench_error("share: --image: at most %u images", GUEST_IMAGE_MAX);
            return MV_BENCH_USAGE;
        }
        o->images[o->nimages++] = arg;
        break;
    case 'H':
        o->no_hint = true;
        break;
    case 'K':
        o->no_ksm = true;
        break;
    case 'D':
        o->ksm_defaults = true;
        break;
    case 'r':
        snprintf(o->real_dir, sizeof(o->real_dir), "%s", arg);
        break;
    case 'R':
        o->no_real = true;
        break;
    case 'n':
        return mv_bench_parse_u64("share: --rounds", arg, 1, SH_MAX_ROUNDS, &o->rounds);
    }
    return MV_BENCH_OK;
}

static int parse_options(int argc, char **argv, void *arg, bool *help)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "guests", required_argument, NULL, 'g' },
        { "guest-mib", required_argument, NULL, 'm' },
        { "seed", required_argument, NULL, 's' },
        { "image", required_argument, NULL, 'i' },
        { "no-hint", no_argument, NULL, 'H' },
        { "no-ksm", no_argument, NULL, 'K' },
        { "ksm-defaults", no_argument, NULL, 'D' },
        { "real", required_argument, NULL, 'r' },
        { "no-real", no_argument, NULL, 'R' },
        { "rounds", required_argument, NULL, 'n' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct share_options *o = &((struct share_run *)arg)->opt;
    int rc;

    *o = (struct share_options){
        .guests = GUEST_IMAGE_DEFAULT_GUESTS, .guest_mib = GUEST_IMAGE_DEFAULT_MIB,
        .seed = GUEST_IMAGE_DEFAULT_SEED, .rounds = 1,
    };
    if (getenv("MV_GUEST_RAM")) {
        snprintf(o->real_dir, sizeof(o->real_dir), "%s", getenv("MV_GUEST_RAM"));
    } else {
        char image[PATH_MAX - 8];

        mv_bench_guest_image_dir(image, sizeof(image));
        snprintf(o->real_dir, sizeof(o->real_dir), "%s/ram", image);
    }
    rc = mv_bench_parse_options("share", argc, argv, options, parse_option, o, &o->json, help);
    if (rc == MV_BENCH_OK && o->nimages && o->sized) {
        mv_bench_error("share: --image replaces the synthetic guests; --guests and "
                       "--guest-mib do not apply to it");
        rc = MV_BENCH_USAGE;
    }
    if (rc == MV_BENCH_OK && o->no_ksm && o->ksm_defaults) {
        mv_bench_error("share: --ksm-defaults and --no-ksm contradict each other");
        rc = MV_BENCH_USAGE;
    }
    return mv_bench_options_done("share", rc, argc, argv);
}

static int prepare_images(struct share_run *run, const struct mv_kernel_features *features)
{
    int rc = MV_BENCH_OK;

    if (run->opt.nimages) {
        for (size_t i = 0; i < run->opt.nimages && rc == MV_BENCH_OK; i++)
            rc = guest_image_add_file(&run->images, run->opt.images[i]);
    } else {
        struct guest_image_params p;

        guest_image_params_init(&p);
        p.guests = (unsigned)run->opt.guests;
        p.guest_mib = run->opt.guest_mib;
        p.seed = run->opt.seed;
        /* Small guests: the default kernel image would not fit. */
        if (p.kernel_offset_mib + p.kernel_mib > p.guest_mib / 4) {
            p.kernel_offset_mib = p.guest_mib / 16;
            p.kernel_mib = p.guest_mib / 8;
        }
        rc = guest_image_generate(&p, &run->images);
    }
    if (rc != MV_BENCH_OK)
        return rc;
    for (size_t i = 0; i < run->images.count; i++)
        run->image_bytes += run->images.images[i].bytes;
    /* The images stay resident while one copy of them is loaded at a time. */
    if (features->mem_available / 2 < run->image_bytes) {
        mv_bench_error("share: %" PRIu64 " MiB of guests need twice that available; "
                       "MemAvailable is %" PRIu64 " MiB", run->image_bytes / MV_BENCH_MIB,
                       features->mem_available / MV_BENCH_MIB);
        return MV_BENCH_FAILED;
    }
    return guest_image_ideal(&run->images, &run->ideal);
}

static int run_ksm(struct share_run *run, struct ksm_case *c)
{
    int rc;

    if (run->opt.no_ksm || !run->ksm.available)
        return MV_BENCH_OK;
    if (!ksm_dirty && (rc = ksm_save(&run->ksm)) != MV_BENCH_OK)
        return rc;
    return ksm_case_run(run, c);
}

static double round_ratio(const struct share_round *r)
{
    return r->ksm_ns ? (double)r->mv_ns / (double)r->ksm_ns : (double)r->mv_ns;
}

/*
 * memvisor's scan and aggressive KSM, alternated --rounds times: on a
 * shared machine one pair can land in a busy second.  The round kept for
 * the report is the one whose time ratio is the median (with KSM not
 * measured, memvisor's median time); every round must pass its checks.
 */
static int run_rounds(struct share_run *run)
{
    const struct mv_case mv_template = run->mv_scan;
    const struct ksm_case ksm_template = run->ksm_aggressive;
    struct mv_case *mv = calloc(run->opt.rounds, sizeof(*mv));
    struct ksm_case *ksm = calloc(run->opt.rounds, sizeof(*ksm));
    bool ok = true;
    int rc = MV_BENCH_OK;

    if (!mv || !ksm) {
        free(mv);
        free(ksm);
        mv_bench_error("share: out of memory");
        return MV_BENCH_FAILED;
    }
    run->rounds = 0;
    for (unsigned r = 0; rc == MV_BENCH_OK && r < run->opt.rounds; r++) {
        mv[r] = mv_template;
        ksm[r] = ksm_template;
        rc = mv_case_run(run, &mv[r]);
        if (rc == MV_BENCH_OK)
            rc = run_ksm(run, &ksm[r]);
        if (rc != MV_BENCH_OK)
            break;
        run->round[r] = (struct share_round){
            .mv_ns = mv[r].converge_ns, .mv_cpu_ns = mv[r].converge_process_cpu_ns,
            .ksm_ns = ksm_usable(&ksm[r]) ? ksm[r].converge_ns : 0,
            .ksm_cpu_ns = ksm_usable(&ksm[r]) ? ksm[r].converge_cpu_ns : 0,
        };
        ok = ok && mv[r].ok && (!ksm[r].ran || ksm[r].content_ok);
        run->rounds = r + 1;
    }
    if (run->rounds) {
        unsigned order[SH_MAX_ROUNDS];

        for (unsigned i = 0; i < run->rounds; i++)
            order[i] = i;
        for (unsigned i = 1; i < run->rounds; i++)
            for (unsigned j = i; j > 0 &&
                 round_ratio(&run->round[order[j]]) < round_ratio(&run->round[order[j - 1]]); j--) {
                unsigned t = order[j];

                order[j] = order[j - 1];
                order[j - 1] = t;
            }
        run->median_round = order[(run->rounds - 1) / 2];
        run->mv_scan = mv[run->median_round];
        run->ksm_aggressive = ksm[run->median_round];
        /* A failed check in any round fails the run. */
        run->mv_scan.ok = run->mv_scan.ok && ok;
        run->ksm_aggressive.content_ok = run->ksm_aggressive.content_ok && ok;
    }
    free(mv);
    free(ksm);
    return rc;
}

/* Every case of one set of guests, KSM put back after; run->ok says
 * whether the checks passed. */
static int run_cases(struct share_run *run)
{
    struct mv_kernel_features features;
    uint64_t pages, aggressive_timeout_s, default_timeout_s;
    int rc = mv_bench_probe(&features, &run->machine);

    if (rc != MV_BENCH_OK)
        return rc;
    rc = prepare_images(run, &features);
    if (rc != MV_BENCH_OK)
        return rc;
    ksm_probe(&run->ksm);
    /* KSM scans about 250 k pages/s flat out here and 5 k pages/s at its
     * defaults; it needs three to five full scans and two more to show that
     * it settled. */
    pages = run->image_bytes / MV_PAGE_SIZE;
    aggressive_timeout_s = MV_BENCH_MAX(120, pages / 10000);
    run->timeout_s = aggressive_timeout_s;
    default_timeout_s = MV_BENCH_MAX(900, pages / 500);
    run->mv_scan = (struct mv_case){
        .name = "memvisor-scan",
        .what = "mv_share_scan() passes over every domain until one saves nothing more",
    };
    run->mv_hinted = (struct mv_case){
        .name = "memvisor-hinted", .hinted = true,
        .what = "the same, each synthetic guest's kernel image hinted first "
                "(mv_share_hint, one key)",
    };
    run->ksm_aggressive = (struct ksm_case){
        .name = "ksm-aggressive", .pages_to_scan = 20000, .sleep_ms = 0,
        .timeout_s = aggressive_timeout_s, .sample_ms = 10,
        .what = "KSM on MADV_MERGEABLE copies of the images, pages_to_scan = 20000, "
                "sleep_millisecs = 0, use_zero_pages = 1, until pages_sharing and "
                "ksm_zero_pages have not moved for two full scans",
    };
    run->ksm_default = (struct ksm_case){
        .name = "ksm-defaults", .pages_to_scan = 100, .sleep_ms = 20,
        .timeout_s = default_timeout_s, .sample_ms = 100,
        .what = "the same at the kernel's defaults, pages_to_scan = 100, "
                "sleep_millisecs = 20 (use_zero_pages = 1)",
    };
    /* memvisor and KSM alternate, so that drift hits both. */
    rc = run_rounds(run);
    if (rc == MV_BENCH_OK && run->images.synthetic && !run->opt.no_hint)
        rc = mv_case_run(run, &run->mv_hinted);
    if (rc == MV_BENCH_OK && run->opt.ksm_defaults)
        rc = run_ksm(run, &run->ksm_default);
    ksm_restore(&run->ksm);
    run->ok = run->mv_scan.ok && (!run->mv_hinted.ran || run->mv_hinted.ok) &&
              (!run->ksm_aggressive.ran || run->ksm_aggressive.content_ok) &&
              (!run->ksm_default.ran || run->ksm_default.content_ok) &&
              (!run->ksm_aggressive.ran || run->ksm.restored);
    return rc;
}

static int compare_paths(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.raw dumps in dir, sorted; their count (0: none). */
static size_t find_dumps(const char *dir, char *paths[GUEST_IMAGE_MAX])
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0;

    while (d && (e = readdir(d)) && n < GUEST_IMAGE_MAX) {
        size_t len = strlen(e->d_name);

        if (len > 4 && strcmp(e->d_name + len - 4, ".raw") == 0 &&
            asprintf(&paths[n], "%s/%s", dir, e->d_name) > 0)
            n++;
    }
    if (d)
        closedir(d);
    qsort(paths, n, sizeof(paths[0]), compare_paths);
    return n;
}

/* Capture the real guests with the tree's script (QEMU boots them, about a
 * minute and a half under TCG).  MV_BENCH_OK or a reason in run. */
static int capture_dumps(struct share_run *run)
{
    const char *script = MV_SOURCE_DIR "/scripts/guest-ram.sh";
    int status;
    pid_t pid;

    if (access(script, X_OK) != 0) {
        snprintf(run->real_reason, sizeof(run->real_reason), "no dumps in %s and no %s to "
                 "capture them", run->opt.real_dir, script);
        return MV_BENCH_FAILED;
    }
    fprintf(stderr, "share: capturing real guests' RAM into %s (%s)\n", run->opt.real_dir,
            script);
    pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);

        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO);   /* the dumps' paths; stderr stays */
        execl(script, script, "--out", run->opt.real_dir, (char *)NULL);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        snprintf(run->real_reason, sizeof(run->real_reason), "%s did not capture the "
                 "guests (it needs QEMU and the guest image; see its messages)", script);
        return MV_BENCH_FAILED;
    }
    return MV_BENCH_OK;
}

/* The real guests as a second set, measured like the first. */
static int run_real(struct share_run *run)
{
    char *paths[GUEST_IMAGE_MAX];
    struct share_run *real;
    size_t n = find_dumps(run->opt.real_dir, paths);
    int rc;

    if (n == 0 && capture_dumps(run) != MV_BENCH_OK)
        return MV_BENCH_OK;     /* reported as not measured, with the reason */
    if (n == 0)
        n = find_dumps(run->opt.real_dir, paths);
    if (n == 0) {
        snprintf(run->real_reason, sizeof(run->real_reason), "no *.raw dumps in %s",
                 run->opt.real_dir);
        return MV_BENCH_OK;
    }
    real = calloc(1, sizeof(*real));
    if (!real) {
        for (size_t i = 0; i < n; i++)
            free(paths[i]);
        mv_bench_error("share: out of memory");
        return MV_BENCH_FAILED;
    }
    real->opt = run->opt;
    real->opt.nimages = n;
    for (size_t i = 0; i < n; i++)
        real->opt.images[i] = paths[i];
    real->real = true;
    run->real_run = real;
    rc = run_cases(real);
    if (rc == MV_BENCH_OK && !real->ok)
        run->ok = false;
    return rc;
}

static int run_suite(void *arg)
{
    struct share_run *run = arg;
    int rc = run_cases(run);

    if (rc == MV_BENCH_OK && !run->opt.nimages)
        rc = page_costs_run(&run->costs);
    if (rc == MV_BENCH_OK && !run->opt.nimages && !run->opt.no_real)
        rc = run_real(run);
    else if (run->opt.no_real)
        snprintf(run->real_reason, sizeof(run->real_reason), "--no-real");
    if (rc != MV_BENCH_OK)
        return rc;
    if (run->costs.ran && !run->costs.ok)
        run->ok = false;
    rc = run->opt.json ? report_json(run) : report_text(run);
    if (rc == MV_BENCH_OK && !run->ok)
        rc = MV_BENCH_FAILED;
    return rc;
}

static void release(void *arg)
{
    struct share_run *run = arg;

    if (run->real_run) {
        guest_image_set_free(&run->real_run->images);
        for (size_t i = 0; i < run->real_run->opt.nimages; i++)
            free((char *)run->real_run->opt.images[i]);
        free(run->real_run);
    }
    guest_image_set_free(&run->images);
}

int mv_bench_share(int argc, char **argv)
{
    static const struct mv_bench_suite suite = {
        .name = "share", .run_size = sizeof(struct share_run), .parse = parse_options,
        .usage = print_usage, .run = run_suite, .release = release,
    };

    return mv_bench_suite_main(&suite, argc, argv);
}

/* ======================================================================== */
/* memvisor bench cow: cloning a domain and breaking shared pages            */

#define COW_DEFAULT_MIB 1024u
#define COW_MAX_MIB (64u * 1024u)
#define COW_DEFAULT_PAGES 8192u
/* The make_ro_and_share case uses two domains of at most this size. */
#define COW_SHARE_MAX_MIB 256u
/* The byte each writer stores to (the clone, the source). */
#define COW_CLONE_BYTE 0u
#define COW_SOURCE_BYTE 8u

struct cow_options {
    bool json;
    uint64_t mib;
    uint64_t pages;
    uint64_t rounds;
};

#define COW_DEFAULT_ROUNDS 3u

/* One round of the clone lives (cow_life_round): memvisor's figures and
 * the kernel's, in the same round. */
enum cow_life_figure {
    LIFE_CLONE,             /* mv_domain_clone of the paused source */
    LIFE_DESTROY_CLONE,     /* the clone, nothing written */
    LIFE_DESTROY_SOURCE,    /* the source, then alone on every frame */
    LIFE_FORK,              /* fork() holding as much memory */
    LIFE_CHILD_EXIT,        /* the child told to exit, until waitpid() */
    LIFE_PARENT_FREE,       /* the parent's munmap() after it */
    LIFE_MEMFD_UNMAP,       /* munmap() of a populated memfd mapping */
    LIFE_MEMFD_PUNCH,       /* the hole punch of its pages after it */
    LIFE_CLONE_CPU,         /* CPU time of the process during the clone */
    LIFE_FORK_CPU,          /* ... during fork() (the parent's side) */
    LIFE_SOURCE_READ,       /* the source, resumed, reads each of its pages */
    LIFE_PARENT_READ,       /* the parent reads each of its pages after fork() */
    LIFE_BG_DESTROY_CLONE,  /* the same life on a MV_SCRUB_BACKGROUND host: */
    LIFE_BG_DESTROY_SOURCE, /*   the source's destroy, */
    LIFE_BG_SOURCE_FREED,   /*   until mv_host_wait_freed says its memory is back */
    LIFE_FIGURES,
};

static const char *const cow_life_names[LIFE_FIGURES] = {
    "clone_ns", "destroy_clone_ns", "destroy_source_ns", "fork_ns", "child_exit_wait_ns",
    "parent_munmap_ns", "memfd_munmap_ns", "memfd_punch_ns", "clone_cpu_ns", "fork_cpu_ns",
    "source_read_ns", "parent_read_ns", "background_scrub_destroy_clone_ns",
    "background_scrub_destroy_source_ns", "background_scrub_source_freed_ns",
};

struct cow_latency {
    uint64_t count;
    uint64_t median_ns;
    uint64_t p99_ns;
    uint64_t max_ns;
    uint64_t total_ns;      /* the whole loop */
};

struct cow_run {
    struct cow_options opt;
    struct mv_bench_machine machine;
    uint64_t timer_overhead_ns;
    uint64_t bytes;
    uint64_t pages;             /* of the source domain */
    uint64_t stride;            /* pages between two written pages */
    uint64_t *latency;          /* opt.pages entries */
    /* the kernel */
    struct cow_latency anon_touch;
    struct cow_latency shmem_touch;
    struct cow_latency file_cow;
    struct cow_latency fork_cow;
    uint64_t fork_populate_ns;
    uint64_t fork_ns;
    uint64_t fork_exit_ns;      /* fork() + the child's _exit() + waitpid() */
    /* clones that nothing writes, destroyed (a sandbox's life), beside
     * fork(), round by round; medians */
    uint64_t life[LIFE_FIGURES][MV_BENCH_MAX_ROUNDS];
    uint64_t life_median[LIFE_FIGURES];
    /* the clone */
    uint64_t populate_ns;
    uint64_t populated_pages;
    uint64_t clone_ns;
    uint64_t saved_after_clone;
    uint64_t shared_frames_after_clone;
    uint64_t clone_shared_pages;
    uint64_t vmas_after_clone;
    struct cow_latency clone_break;
    struct cow_latency per_cpu_break;   /* the same, MV_FAULT_PER_CPU */
    struct cow_latency floor_break;     /* mv_bench_cow_floor */
    /* MV_COW_KERNEL: the kernel copies at the write; settled after */
    struct cow_latency kernel_break;        /* the clone's writes */
    uint64_t kernel_settle_ns;              /* mv_share_settle of the clone */
    uint64_t kernel_settled;
    struct mv_domain_info kernel_clone_info;
    struct cow_latency kernel_source_break; /* the source's: last mappings */
    uint64_t kernel_source_settle_ns;
    uint64_t kernel_source_settled;
    struct mv_domain_info kernel_source_info;
    uint64_t kernel_saved_after;            /* both written and settled */
    /* MV_COW_KERNEL with the background settler at work */
    uint64_t settler_shared_pages;          /* the clone's, at the start */
    uint64_t settler_window_ns;             /* the paced writes */
    uint64_t settler_cpu_ns;                /* the settler thread's CPU */
    uint64_t settler_process_cpu_ns;        /* every thread's, meanwhile */
    uint64_t settler_copies;                /* settled by the end */
    struct cow_latency kernel_peer;         /* first touches paired with the
                                               clone's writes */
    struct cow_latency kernel_source_peer;  /* ... with the source's */
    uint64_t saved_after_breaks;
    /* both destroyed after the writes: the clone, then the source, by then
     * the last mapping of every frame, of which frames_written_out have
     * their sharing records written (the others are still pending) */
    uint64_t frames_written_out;
    uint64_t written_destroy_clone_ns;
    uint64_t written_destroy_source_ns;
    struct mv_domain_info clone_info;
    struct cow_latency source_break;
    uint64_t saved_after_source;
    struct mv_domain_info source_info;
    uint64_t vmas_after_breaks;
    uint64_t run_unshares;      /* pages unshared with breaks near the limit */
    /* make_ro_and_share */
    uint64_t mras_pages;        /* of each of the two domains */
    uint64_t mras_first_ns;     /* the first domain: every page inserted */
    uint64_t mras_second_ns;    /* the second: every page matched */
    uint64_t mras_matched;
    uint64_t mras_saved;
    uint64_t mras_writes;
    struct cow_latency mras_break;
    uint64_t mras_saved_after;
    /* checks */
    uint64_t pages_checked;
    uint64_t mismatches;
    char first_bad[96];
    int share_audit;
    int host_audit;
    char audit_error[256];
    bool ok;
};

/* Word i of gfn's page in a domain of the set `salt`: never zero and
 * different in every page and set, so nothing is shared but what a case
 * shares on purpose. */
static uint64_t cow_word(uint64_t salt, uint64_t gfn, size_t i)
{
    uint64_t z = (salt << 52 ^ gfn << 9 ^ i) + UINT64_C(0x9e3779b97f4a7c15);

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return (z ^ (z >> 31)) | 1;
}

static void cow_fill_page(uint64_t *page, uint64_t salt, uint64_t gfn)
{
    for (size_t i = 0; i < MV_PAGE_SIZE / sizeof(uint64_t); i++)
        page[i] = cow_word(salt, gfn, i);
}

static uint8_t cow_byte(uint64_t salt, uint64_t gfn, unsigned offset)
{
    return (uint8_t)(cow_word(salt, gfn, offset / 8) >> (offset % 8 * 8));
}

/* Salts of the domains' contents. */
enum { COW_SALT_SOURCE = 1, COW_SALT_SHARED = 2 };

/* ------------------------------------------------------------------------ */
/* Timed writes                                                              */

/* One byte stored to each of `count` pages, `stride` pages apart, each store
 * timed with CLOCK_MONOTONIC. */
struct cow_writes {
    uint8_t *mem;
    uint64_t count;
    uint64_t stride;
    unsigned offset;        /* the byte within the page */
    uint64_t salt;          /* nonzero: store the content's byte ^ 0xff */
    uint64_t *latency;      /* count entries */
    uint64_t total_ns;
    /* Paired: after every COW_PAIR_BLOCK stores to mem, as many to the same
     * pages of fresh private anonymous memory (the first-touch peer), so
     * that both see the machine in the same state. */
    uint8_t *peer_mem;
    uint64_t *peer_latency;
    uint64_t peer_total_ns;
};

#define COW_PAIR_BLOCK 64u

/* Stores [first, first + n) of the writes to `mem`; returns their time. */
static uint64_t cow_store_block(const struct cow_writes *w, uint8_t *mem, uint64_t salt,
                                uint64_t *latency, uint64_t first, uint64_t n)
{
    uint64_t t0 = mv_bench_now_ns();

    for (uint64_t i = first; i < first + n; i++) {
        uint64_t gfn = i * w->stride;
        volatile uint8_t *p = mem + gfn * MV_PAGE_SIZE + w->offset;
        uint8_t v = salt ? (uint8_t)(cow_byte(salt, gfn, w->offset) ^ 0xff) : 0x5a;
        uint64_t start = mv_bench_now_ns();

        *p = v;
        latency[i] = mv_bench_now_ns() - start;
    }
    return mv_bench_now_ns() - t0;
}

static void *cow_write_thread(void *arg)
{
    struct cow_writes *w = arg;
    uint64_t block = w->peer_mem ? COW_PAIR_BLOCK : w->count;

    w->total_ns = w->peer_total_ns = 0;
    for (uint64_t i = 0; i < w->count; i += block) {
        uint64_t n = MV_BENCH_MIN(block, w->count - i);

        w->total_ns += cow_store_block(w, w->mem, w->salt, w->latency, i, n);
        if (w->peer_mem)
            w->peer_total_ns += cow_store_block(w, w->peer_mem, 0, w->peer_latency, i, n);
    }
    return NULL;
}

static void cow_summarize(uint64_t *latency, uint64_t count, uint64_t total_ns,
                          struct cow_latency *out)
{
    mv_bench_sort(latency, count);
    *out = (struct cow_latency){
        .count = count, .total_ns = total_ns,
        .median_ns = mv_bench_percentile(latency, count, 50),
        .p99_ns = mv_bench_percentile(latency, count, 99),
        .max_ns = count ? latency[count - 1] : 0,
    };
}

/* Run the timed writes on a vCPU thread and summarize them. */
static uint8_t *cow_map_anon(uint64_t bytes, int flags);

/*
 * The writes to `mem` interleaved with the same writes to fresh private
 * anonymous memory, COW_PAIR_BLOCK at a time: on a shared virtual machine
 * the cost of a first touch drifts by a factor of several from one second
 * to the next, and pairing keeps the ratio honest.
 */
static int cow_paired_writes(struct cow_run *run, uint8_t *mem, unsigned offset,
                             uint64_t salt, struct cow_latency *out,
                             struct cow_latency *peer_out)
{
    uint64_t count = run->opt.pages;
    uint64_t *peer_latency = calloc(count, sizeof(uint64_t));
    uint8_t *peer = cow_map_anon(run->bytes, MAP_PRIVATE);
    struct cow_writes w = {
        .mem = mem, .count = count, .stride = run->stride, .offset = offset,
        .salt = salt, .latency = run->latency, .peer_mem = peer,
        .peer_latency = peer_latency,
    };
    int rc = !peer || !peer_latency ? MV_BENCH_FAILED : MV_BENCH_OK;

    if (!peer_latency)
        mv_bench_error("cow: out of memory");
    if (rc == MV_BENCH_OK)
        rc = mv_bench_run_thread(cow_write_thread, &w);
    if (rc == MV_BENCH_OK) {
        cow_summarize(run->latency, count, w.total_ns, out);
        cow_summarize(peer_latency, count, w.peer_total_ns, peer_out);
    }
    if (peer)
        munmap(peer, run->bytes);
    free(peer_latency);
    return rc;
}

static int cow_timed_writes(struct cow_run *run, uint8_t *mem, uint64_t count,
                            uint64_t stride, unsigned offset, uint64_t salt,
                            struct cow_latency *out)
{
    struct cow_writes w = {
        .mem = mem, .count = count, .stride = stride, .offset = offset, .salt = salt,
        .latency = run->latency,
    };
    int rc = mv_bench_run_thread(cow_write_thread, &w);

    if (rc == MV_BENCH_OK)
        cow_summarize(run->latency, count, w.total_ns, out);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The kernel's own faults                                                   */

static uint8_t *cow_map_anon(uint64_t bytes, int flags)
{
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);

    if (m == MAP_FAILED) {
        mv_bench_error("cow: cannot map %" PRIu64 " MiB: %s", bytes / MV_BENCH_MIB,
                       strerror(errno));
        return NULL;
    }
    /* 4 KiB pages, as guest RAM has (shmem THP off). */
    if (!(flags & MAP_SHARED))
        (void)madvise(m, bytes, MADV_NOHUGEPAGE);
    return m;
}

static int cow_memfd(uint64_t bytes)
{
    int fd = memfd_create("memvisor-bench-cow", MFD_CLOEXEC);

    if (fd < 0) {
        mv_bench_error("cow: memfd_create: %s", strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)bytes) < 0) {
        mv_bench_error("cow: ftruncate of a memfd: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Map all `bytes` of memfd `fd` with `flags` and close it; NULL after
 * saying why not. */
static uint8_t *cow_map_memfd(int fd, uint64_t bytes, int flags)
{
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, flags, fd, 0);

    close(fd);
    if (mem == MAP_FAILED) {
        mv_bench_error("cow: %smmap of a memfd: %s", flags & MAP_PRIVATE ? "private " : "",
                       strerror(errno));
        return NULL;
    }
    return mem;
}

/* First write to fresh pages: private anonymous, or a shared memfd mapping. */
static int cow_kernel_touch(struct cow_run *run, bool shmem, struct cow_latency *out)
{
    uint8_t *mem;
    int rc;

    if (shmem) {
        int fd = cow_memfd(run->bytes);

        mem = fd < 0 ? NULL : cow_map_memfd(fd, run->bytes, MAP_SHARED);
    } else {
        mem = cow_map_anon(run->bytes, MAP_PRIVATE);
    }
    if (!mem)
        return MV_BENCH_FAILED;
    rc = cow_timed_writes(run, mem, run->opt.pages, run->stride, 0, 0, out);
    munmap(mem, run->bytes);
    return rc;
}

/* Writes to pages of a MAP_PRIVATE file mapping that were read first: the
 * kernel copies each page-cache page. */
static int cow_kernel_file(struct cow_run *run)
{
    uint8_t page[MV_PAGE_SIZE];
    volatile uint8_t sink;
    uint8_t *mem;
    int rc, fd = cow_memfd(run->bytes);

    if (fd < 0)
        return MV_BENCH_FAILED;
    memset(page, 0x11, sizeof(page));
    for (uint64_t i = 0; i < run->opt.pages; i++)
        if (pwrite(fd, page, sizeof(page), (off_t)(i * run->stride * MV_PAGE_SIZE)) !=
            (ssize_t)sizeof(page)) {
            mv_bench_error("cow: pwrite to a memfd: %s", strerror(errno));
            close(fd);
            return MV_BENCH_FAILED;
        }
    mem = cow_map_memfd(fd, run->bytes, MAP_PRIVATE);
    if (!mem)
        return MV_BENCH_FAILED;
    for (uint64_t i = 0; i < run->opt.pages; i++)
        sink = mem[i * run->stride * MV_PAGE_SIZE];
    (void)sink;
    rc = cow_timed_writes(run, mem, run->opt.pages, run->stride, 0, 0, &run->file_cow);
    munmap(mem, run->bytes);
    return rc;
}

/* fork() of a process holding the source's size of populated private
 * memory (the kernel's clone: it copies the page tables), then the child's
 * writes to it (the kernel's CoW fault). */
static int cow_kernel_fork(struct cow_run *run)
{
    uint64_t count = run->opt.pages, t0;
    uint8_t *mem = cow_map_anon(run->bytes, MAP_PRIVATE);
    uint64_t *shared;
    int status, rc = MV_BENCH_OK;
    pid_t pid;

    if (!mem)
        return MV_BENCH_FAILED;
    /* The child's latencies and total come back through shared memory. */
    shared = (uint64_t *)cow_map_anon((count + 1) * sizeof(uint64_t), MAP_SHARED);
    if (!shared) {
        munmap(mem, run->bytes);
        return MV_BENCH_FAILED;
    }
    memset(shared, 0, (count + 1) * sizeof(uint64_t));
    t0 = mv_bench_now_ns();
    for (uint64_t p = 0; p < run->pages; p++)
        mem[p * MV_PAGE_SIZE] = 1;
    run->fork_populate_ns = mv_bench_now_ns() - t0;
    t0 = mv_bench_now_ns();
    pid = fork();
    if (pid == 0) {
        struct cow_writes w = {
            .mem = mem, .count = count, .stride = run->stride, .latency = shared,
        };

        cow_write_thread(&w);
        shared[count] = w.total_ns;
        _exit(0);
    }
    run->fork_ns = mv_bench_now_ns() - t0;
    if (pid < 0) {
        mv_bench_error("cow: fork: %s", strerror(errno));
        rc = MV_BENCH_FAILED;
    } else if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
               WEXITSTATUS(status) != 0) {
        mv_bench_error("cow: the forked writer failed (status %d)", status);
        rc = MV_BENCH_FAILED;
    } else {
        memcpy(run->latency, shared, count * sizeof(uint64_t));
        cow_summarize(run->latency, count, shared[count], &run->fork_cow);
        /* A child that writes nothing: its whole life, as a clone's. */
        t0 = mv_bench_now_ns();
        pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status)) {
            mv_bench_error("cow: fork() and exit: %s", strerror(errno));
            rc = MV_BENCH_FAILED;
        }
        run->fork_exit_ns = mv_bench_now_ns() - t0;
    }
    munmap(shared, (count + 1) * sizeof(uint64_t));
    munmap(mem, run->bytes);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* memvisor: clone, breaks, make_ro_and_share                                */

/* The break's floor (cow_floor.c), as many writes as the clone's. */
static int cow_floor(struct cow_run *run)
{
    uint64_t total_ns = 0;
    int rc = mv_bench_cow_floor(run->opt.pages, run->latency, &total_ns);

    if (rc == MV_BENCH_OK)
        cow_summarize(run->latency, run->opt.pages, total_ns, &run->floor_break);
    return rc;
}

static int cow_fill_domain(mv_host *host, uint32_t dom, uint64_t salt, uint64_t *ns)
{
    uint64_t size, t0 = mv_bench_now_ns();
    uint8_t *ram;
    int rc = mv_bench_domain_ram(host, dom, &ram, &size);

    if (rc != MV_BENCH_OK)
        return rc;
    for (uint64_t gfn = 0; gfn < size / MV_PAGE_SIZE; gfn++)
        cow_fill_page((uint64_t *)(ram + gfn * MV_PAGE_SIZE), salt, gfn);
    if (ns)
        *ns = mv_bench_now_ns() - t0;
    return MV_BENCH_OK;
}

static int cow_create_mode(mv_host *host, const char *name, uint64_t bytes,
                           enum mv_cow_mode mode, uint32_t *dom)
{
    struct mv_domain_config dc;
    int rc;

    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "%s", name);
    dc.maxmem_bytes = dc.target_bytes = bytes;
    dc.cow_mode = mode;
    rc = mv_domain_create(host, &dc, dom);
    return rc < 0 ? mv_bench_lib_error("mv_domain_create", rc) : MV_BENCH_OK;
}

static int cow_create(mv_host *host, const char *name, uint64_t bytes, uint32_t *dom)
{
    return cow_create_mode(host, name, bytes, MV_COW_TRAP, dom);
}

static int cow_saved(mv_host *host, uint64_t *saved, uint64_t *frames, uint64_t *vmas,
                     uint64_t *run_unshares)
{
    struct mv_share_stats s;
    int rc = mv_share_stats(host, &s);

    if (rc < 0)
        return mv_bench_lib_error("mv_share_stats", rc);
    *saved = s.saved_pages;
    if (frames)
        *frames = s.shared_frames;
    if (vmas)
        *vmas = s.vma_count;
    if (run_unshares)
        *run_unshares = s.cow_run_unshares;
    return MV_BENCH_OK;
}

/*
 * Read every page of `dom` with mv_domain_read_page and compare it with its
 * content (salt), where the `count` pages `stride` apart carry the byte at
 * `offset` ^ 0xff.
 */
static int cow_check_domain(struct cow_run *run, mv_host *host, uint32_t dom,
                            const char *name, uint64_t pages, uint64_t salt,
                            uint64_t count, uint64_t stride, unsigned offset)
{
    uint64_t *want = aligned_alloc(MV_PAGE_SIZE, MV_PAGE_SIZE);
    uint64_t *got = aligned_alloc(MV_PAGE_SIZE, MV_PAGE_SIZE);
    int rc = MV_BENCH_OK;

    if (!want || !got) {
        free(want);
        free(got);
        mv_bench_error("cow: out of memory");
        return MV_BENCH_FAILED;
    }
    for (uint64_t gfn = 0; gfn < pages; gfn++) {
        int r = mv_domain_read_page(host, dom, gfn, got);

        if (r < 0) {
            rc = mv_bench_lib_error("mv_domain_read_page", r);
            break;
        }
        cow_fill_page(want, salt, gfn);
        if (gfn % stride == 0 && gfn / stride < count)
            ((uint8_t *)want)[offset] ^= 0xff;
        run->pages_checked++;
        if (memcmp(want, got, MV_PAGE_SIZE) != 0) {
            if (!run->mismatches)
                snprintf(run->first_bad, sizeof(run->first_bad), "%s gfn %" PRIu64,
                         name, gfn);
            run->mismatches++;
        }
    }
    free(want);
    free(got);
    return rc;
}

/* A source of --guest-mib, every page written, paused for a clone. */
static int cow_paused_source_mode(mv_host *host, const char *name, uint64_t bytes,
                                  enum mv_cow_mode mode, uint32_t *src, uint64_t *populate_ns)
{
    int rc = cow_create_mode(host, name, bytes, mode, src);

    if (rc == MV_BENCH_OK)
        rc = cow_fill_domain(host, *src, COW_SALT_SOURCE, populate_ns);
    if (rc == MV_BENCH_OK && (rc = mv_domain_pause(host, *src)) < 0)
        return mv_bench_lib_error("mv_domain_pause", rc);
    return rc;
}

static int cow_paused_source(mv_host *host, const char *name, uint64_t bytes, uint32_t *src,
                             uint64_t *populate_ns)
{
    return cow_paused_source_mode(host, name, bytes, MV_COW_TRAP, src, populate_ns);
}

/* Destroy the clone, then its source, timed; the source is by then the last
 * mapping of every frame the two still shared. */
static int cow_destroy_pair(struct cow_run *run, mv_host *host, uint32_t clone, uint32_t src)
{
    struct mv_share_stats s;
    uint64_t t0;
    int rc = mv_share_stats(host, &s);

    if (rc < 0)
        return mv_bench_lib_error("mv_share_stats", rc);
    run->frames_written_out = s.shared_frames - s.clone_pending_frames;
    t0 = mv_bench_now_ns();
    rc = mv_domain_destroy(host, clone);
    run->written_destroy_clone_ns = mv_bench_now_ns() - t0;
    if (rc < 0)
        return mv_bench_lib_error("mv_domain_destroy", rc);
    t0 = mv_bench_now_ns();
    rc = mv_domain_destroy(host, src);
    run->written_destroy_source_ns = mv_bench_now_ns() - t0;
    return rc < 0 ? mv_bench_lib_error("mv_domain_destroy", rc) : MV_BENCH_OK;
}

static int cow_clone_case(struct cow_run *run, mv_host *host)
{
    struct mv_domain_info info;
    uint32_t src, clone;
    uint64_t saved0 = 0, t0;
    uint8_t *ram = NULL;
    int rc = cow_paused_source(host, "cow-source", run->bytes, &src, &run->populate_ns);

    if (rc != MV_BENCH_OK)
        return rc;
    if ((rc = mv_domain_info(host, src, &info)) < 0)
        return mv_bench_lib_error("mv_domain_info", rc);
    run->populated_pages = info.populated_pages;
    if ((rc = cow_saved(host, &saved0, NULL, NULL, NULL)) != MV_BENCH_OK)
        return rc;
    t0 = mv_bench_now_ns();
    rc = mv_domain_clone(host, src, "cow-clone", &clone);
    run->clone_ns = mv_bench_now_ns() - t0;
    if (rc < 0)
        return mv_bench_lib_error("mv_domain_clone", rc);
    if ((rc = cow_saved(host, &run->saved_after_clone, &run->shared_frames_after_clone,
                        &run->vmas_after_clone, NULL)) != MV_BENCH_OK)
        return rc;
    run->saved_after_clone -= saved0;
    if ((rc = mv_domain_info(host, clone, &info)) < 0)
        return mv_bench_lib_error("mv_domain_info", rc);
    run->clone_shared_pages = info.shared_pages;

    /* The clone writes: each store breaks a page the source still maps. */
    if ((rc = mv_bench_domain_ram(host, clone, &ram, NULL)) != MV_BENCH_OK ||
        (rc = cow_timed_writes(run, ram, run->opt.pages, run->stride, COW_CLONE_BYTE,
                               COW_SALT_SOURCE, &run->clone_break)) != MV_BENCH_OK ||
        (rc = cow_saved(host, &run->saved_after_breaks, NULL, NULL, NULL)) != MV_BENCH_OK)
        return rc;
    run->saved_after_breaks -= saved0;
    if ((rc = mv_domain_info(host, clone, &run->clone_info)) < 0)
        return mv_bench_lib_error("mv_domain_info", rc);

    /* The source writes the same pages: now the last mapping of each frame. */
    if ((rc = mv_domain_unpause(host, src)) < 0)
        return mv_bench_lib_error("mv_domain_unpause", rc);
    if ((rc = mv_bench_domain_ram(host, src, &ram, NULL)) != MV_BENCH_OK ||
        (rc = cow_timed_writes(run, ram, run->opt.pages, run->stride, COW_SOURCE_BYTE,
                               COW_SALT_SOURCE, &run->source_break)) != MV_BENCH_OK ||
        (rc = cow_saved(host, &run->saved_after_source, NULL,
                        &run->vmas_after_breaks, &run->run_unshares)) != MV_BENCH_OK)
        return rc;
    run->saved_after_source -= saved0;
    if ((rc = mv_domain_info(host, src, &run->source_info)) < 0)
        return mv_bench_lib_error("mv_domain_info", rc);

    rc = cow_check_domain(run, host, src, "cow-source", run->pages, COW_SALT_SOURCE,
                          run->opt.pages, run->stride, COW_SOURCE_BYTE);
    if (rc == MV_BENCH_OK)
        rc = cow_check_domain(run, host, clone, "cow-clone", run->pages, COW_SALT_SOURCE,
                              run->opt.pages, run->stride, COW_CLONE_BYTE);
    if (rc != MV_BENCH_OK)
        return rc;
    return cow_destroy_pair(run, host, clone, src);
}

/* mv_share_make_ro_and_share of the first `pages` of `dom`, timed into *ns;
 * the pages it matched into *matched (may be NULL). */
static int cow_share_domain(mv_host *host, uint32_t dom, uint64_t pages, uint64_t *ns,
                            uint64_t *matched)
{
    uint64_t t0 = mv_bench_now_ns();
    int64_t n = mv_share_make_ro_and_share(host, dom, 0, pages, NULL);

    *ns = mv_bench_now_ns() - t0;
    if (n < 0)
        return mv_bench_lib_error("mv_share_make_ro_and_share", (int)n);
    if (matched)
        *matched = (uint64_t)n;
    return MV_BENCH_OK;
}

/* Two domains with the same bytes shared by mv_share_make_ro_and_share, then
 * writes to the second. */
static int cow_mras_case(struct cow_run *run, mv_host *host)
{
    uint64_t bytes = MV_BENCH_MIN(run->bytes, (uint64_t)COW_SHARE_MAX_MIB * MV_BENCH_MIB);
    uint64_t pages = bytes / MV_PAGE_SIZE, count = MV_BENCH_MIN(run->opt.pages, pages);
    uint64_t stride = pages / count, saved0 = 0;
    uint32_t a, b;
    uint8_t *ram = NULL;
    int rc;

    run->mras_pages = pages;
    run->mras_writes = count;
    if ((rc = cow_create(host, "cow-share-a", bytes, &a)) != MV_BENCH_OK ||
        (rc = cow_create(host, "cow-share-b", bytes, &b)) != MV_BENCH_OK ||
        (rc = cow_fill_domain(host, a, COW_SALT_SHARED, NULL)) != MV_BENCH_OK ||
        (rc = cow_fill_domain(host, b, COW_SALT_SHARED, NULL)) != MV_BENCH_OK ||
        (rc = cow_saved(host, &saved0, NULL, NULL, NULL)) != MV_BENCH_OK ||
        (rc = cow_share_domain(host, a, pages, &run->mras_first_ns, NULL)) != MV_BENCH_OK ||
        (rc = cow_share_domain(host, b, pages, &run->mras_second_ns,
                               &run->mras_matched)) != MV_BENCH_OK ||
        (rc = cow_saved(host, &run->mras_saved, NULL, NULL, NULL)) != MV_BENCH_OK)
        return rc;
    run->mras_saved -= saved0;
    if ((rc = mv_bench_domain_ram(host, b, &ram, NULL)) != MV_BENCH_OK ||
        (rc = cow_timed_writes(run, ram, count, stride, COW_CLONE_BYTE, COW_SALT_SHARED,
                               &run->mras_break)) != MV_BENCH_OK ||
        (rc = cow_saved(host, &run->mras_saved_after, NULL, NULL, NULL)) != MV_BENCH_OK)
        return rc;
    run->mras_saved_after -= saved0;
    rc = cow_check_domain(run, host, a, "cow-share-a", pages, COW_SALT_SHARED, 0, 1, 0);
    if (rc == MV_BENCH_OK)
        rc = cow_check_domain(run, host, b, "cow-share-b", pages, COW_SALT_SHARED, count,
                              stride, COW_CLONE_BYTE);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Clone lives against fork(), round by round                                */

/* The first failure of any audit is the one kept. */
static void cow_audit(struct cow_run *run, mv_host *host)
{
    int share_audit = 0, host_audit = 0;
    char error[sizeof(run->audit_error)] = "";

    audit_host(host, &share_audit, &host_audit, error, sizeof(error));
    if ((share_audit || host_audit) && !run->share_audit && !run->host_audit) {
        run->share_audit = share_audit;
        run->host_audit = host_audit;
        snprintf(run->audit_error, sizeof(run->audit_error), "%s", error);
    }
}

/* fork() of this process holding the source's size of populated private
 * anonymous memory; the child touches nothing and waits to be told to
 * exit; the parent then frees the memory, alone on it. */
static int cow_fork_life(struct cow_run *run, uint64_t *figures)
{
    uint8_t *mem = cow_map_anon(run->bytes, MAP_PRIVATE);
    int go[2] = { -1, -1 }, status = 0, rc = MV_BENCH_OK;
    uint64_t t0, cpu0;
    pid_t pid;
    char c = 0;

    if (!mem)
        return MV_BENCH_FAILED;
    for (uint64_t p = 0; p < run->pages; p++)
        mem[p * MV_PAGE_SIZE] = 1;
    if (pipe2(go, O_CLOEXEC) < 0) {
        mv_bench_error("cow: pipe: %s", strerror(errno));
        munmap(mem, run->bytes);
        return MV_BENCH_FAILED;
    }
    cpu0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    pid = fork();
    if (pid == 0) {
        (void)!read(go[0], &c, 1);
        _exit(0);
    }
    figures[LIFE_FORK] = mv_bench_now_ns() - t0;
    figures[LIFE_FORK_CPU] = mv_bench_process_cpu_ns() - cpu0;
    if (pid < 0) {
        mv_bench_error("cow: fork: %s", strerror(errno));
        rc = MV_BENCH_FAILED;
    } else {
        t0 = mv_bench_now_ns();
        for (uint64_t p = 0; p < run->pages; p++)
            (void)*(volatile uint8_t *)(mem + p * MV_PAGE_SIZE);
        figures[LIFE_PARENT_READ] = mv_bench_now_ns() - t0;
        t0 = mv_bench_now_ns();
        (void)!write(go[1], &c, 1);
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status)) {
            mv_bench_error("cow: the forked child did not exit (status %d)", status);
            rc = MV_BENCH_FAILED;
        }
        figures[LIFE_CHILD_EXIT] = mv_bench_now_ns() - t0;
    }
    close(go[0]);
    close(go[1]);
    t0 = mv_bench_now_ns();
    munmap(mem, run->bytes);
    figures[LIFE_PARENT_FREE] = mv_bench_now_ns() - t0;
    return rc;
}

/* The kernel's floor for what a source's destroy frees: a populated memfd
 * mapping of its size unmapped, then its pages punched out. */
static int cow_memfd_free(struct cow_run *run, uint64_t *figures)
{
    int fd = cow_memfd(run->bytes);
    uint8_t *mem = fd < 0 ? MAP_FAILED : mmap(NULL, run->bytes, PROT_READ | PROT_WRITE,
                                              MAP_SHARED, fd, 0);
    uint64_t t0;
    int rc;

    if (mem == MAP_FAILED) {
        if (fd >= 0) {
            mv_bench_error("cow: mmap of a memfd: %s", strerror(errno));
            close(fd);
        }
        return MV_BENCH_FAILED;
    }
    for (uint64_t p = 0; p < run->pages; p++)
        mem[p * MV_PAGE_SIZE] = 1;
    t0 = mv_bench_now_ns();
    munmap(mem, run->bytes);
    figures[LIFE_MEMFD_UNMAP] = mv_bench_now_ns() - t0;
    t0 = mv_bench_now_ns();
    rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)run->bytes);
    figures[LIFE_MEMFD_PUNCH] = mv_bench_now_ns() - t0;
    if (rc < 0)
        mv_bench_error("cow: punching a memfd: %s", strerror(errno));
    close(fd);
    return rc < 0 ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* A clone nothing writes, destroyed, then its source (by then the only
 * mapping of every frame): a sandbox's life, and the memory given back, on
 * a host of its own.  The clone's and the source's bytes are read back,
 * and the audits run, between the timed steps. */
static int cow_memvisor_life(struct cow_run *run, uint64_t *figures, enum mv_scrub_mode scrub)
{
    struct mv_host_config hc;
    mv_host *host;
    uint32_t src, clone;
    uint64_t t0, cpu0;
    uint8_t *ram;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.fault_mode = MV_FAULT_SHARED;
    hc.scrub_mode = scrub;
    if ((rc = mv_bench_host_create(&hc, &host)) != MV_BENCH_OK)
        return rc;
    rc = cow_paused_source(host, "cow-life", run->bytes, &src, NULL);
    if (rc == MV_BENCH_OK) {
        cpu0 = mv_bench_process_cpu_ns();
        t0 = mv_bench_now_ns();
        rc = mv_domain_clone(host, src, "cow-life-clone", &clone);
        figures[LIFE_CLONE] = mv_bench_now_ns() - t0;
        figures[LIFE_CLONE_CPU] = mv_bench_process_cpu_ns() - cpu0;
        rc = rc < 0 ? mv_bench_lib_error("mv_domain_clone", rc) : MV_BENCH_OK;
    }
    if (rc == MV_BENCH_OK && (rc = mv_domain_unpause(host, src)) < 0)
        rc = mv_bench_lib_error("mv_domain_unpause", rc);
    if (rc == MV_BENCH_OK && (rc = mv_bench_domain_ram(host, src, &ram, NULL)) == MV_BENCH_OK) {
        /* The source runs on: its first pass over its RAM. */
        t0 = mv_bench_now_ns();
        for (uint64_t p = 0; p < run->pages; p++)
            (void)*(volatile uint8_t *)(ram + p * MV_PAGE_SIZE);
        figures[LIFE_SOURCE_READ] = mv_bench_now_ns() - t0;
    }
    if (rc == MV_BENCH_OK)
        rc = cow_check_domain(run, host, clone, "cow-life-clone", run->pages,
                              COW_SALT_SOURCE, 0, 1, 0);
    if (rc == MV_BENCH_OK) {
        cow_audit(run, host);
        t0 = mv_bench_now_ns();
        rc = mv_domain_destroy(host, clone);
        figures[LIFE_DESTROY_CLONE] = mv_bench_now_ns() - t0;
        rc = rc < 0 ? mv_bench_lib_error("mv_domain_destroy", rc) : MV_BENCH_OK;
    }
    if (rc == MV_BENCH_OK)
        rc = cow_check_domain(run, host, src, "cow-life", run->pages, COW_SALT_SOURCE,
                              0, 1, 0);
    if (rc == MV_BENCH_OK) {
        cow_audit(run, host);
        t0 = mv_bench_now_ns();
        rc = mv_domain_destroy(host, src);
        figures[LIFE_DESTROY_SOURCE] = mv_bench_now_ns() - t0;
        rc = rc < 0 ? mv_bench_lib_error("mv_domain_destroy", rc) : MV_BENCH_OK;
        /* Under MV_SCRUB_BACKGROUND its memory comes back later: when. */
        if (rc == MV_BENCH_OK && (rc = mv_host_wait_freed(host)) < 0)
            rc = mv_bench_lib_error("mv_host_wait_freed", rc);
        figures[LIFE_BG_SOURCE_FREED] = mv_bench_now_ns() - t0;
    }
    if (rc == MV_BENCH_OK)
        cow_audit(run, host);
    mv_host_destroy(host);
    return rc;
}

/* --rounds rounds, each the kernel's life beside memvisor's, the kernel's
 * first (fork() in a process where no domain's RAM is mapped), alternating
 * so that both see the machine in the same state; then the medians. */
static int cow_lives(struct cow_run *run)
{
    int rc = MV_BENCH_OK;

    for (uint64_t i = 0; rc == MV_BENCH_OK && i < run->opt.rounds; i++) {
        uint64_t figures[LIFE_FIGURES] = { 0 };

        rc = cow_fork_life(run, figures);
        if (rc == MV_BENCH_OK)
            rc = cow_memfd_free(run, figures);
        if (rc == MV_BENCH_OK)
            rc = cow_memvisor_life(run, figures, MV_SCRUB_SYNC);
        /* The same life with the frames scrubbed in the background: only
         * its destroys are kept. */
        if (rc == MV_BENCH_OK) {
            uint64_t bg[LIFE_FIGURES] = { 0 };

            rc = cow_memvisor_life(run, bg, MV_SCRUB_BACKGROUND);
            figures[LIFE_BG_DESTROY_CLONE] = bg[LIFE_DESTROY_CLONE];
            figures[LIFE_BG_DESTROY_SOURCE] = bg[LIFE_DESTROY_SOURCE];
            figures[LIFE_BG_SOURCE_FREED] = bg[LIFE_BG_SOURCE_FREED];
        }
        for (int f = 0; f < LIFE_FIGURES; f++)
            run->life[f][i] = figures[f];
    }
    for (int f = 0; rc == MV_BENCH_OK && f < LIFE_FIGURES; f++)
        run->life_median[f] = mv_bench_median(run->life[f], run->opt.rounds);
    return rc;
}

/*
 * A host of its own made from `hc` (*host, NULL when it could not be made),
 * a paused source `name` of cow_mode `mode` on it, the source's clone
 * "<name>-clone", and the clone's RAM.
 */
static int cow_cloned_host(struct cow_run *run, struct mv_host_config *hc, const char *name,
                           enum mv_cow_mode mode, mv_host **host, uint32_t *src,
                           uint32_t *clone, uint8_t **clone_ram)
{
    char clone_name[MV_NAME_MAX];
    int rc;

    *host = NULL;
    if ((rc = mv_bench_host_create(hc, host)) != MV_BENCH_OK)
        return rc;
    snprintf(clone_name, sizeof(clone_name), "%s-clone", name);
    rc = cow_paused_source_mode(*host, name, run->bytes, mode, src, NULL);
    if (rc == MV_BENCH_OK && (rc = mv_domain_clone(*host, *src, clone_name, clone)) < 0)
        rc = mv_bench_lib_error("mv_domain_clone", rc);
    if (rc == MV_BENCH_OK)
        rc = mv_bench_domain_ram(*host, *clone, clone_ram, NULL);
    return rc;
}

/*
 * The end of a case on a host of its own, when `rc` says it went well so
 * far: every page of the source (`source_writes` of them written at
 * COW_SOURCE_BYTE) and of the clone (every write at COW_CLONE_BYTE) read
 * back, and the audits.  The host is destroyed in any case.
 */
static int cow_check_and_destroy(struct cow_run *run, mv_host *host, const char *name,
                                 uint32_t src, uint64_t source_writes, uint32_t clone,
                                 int rc)
{
    char clone_name[MV_NAME_MAX];

    snprintf(clone_name, sizeof(clone_name), "%s-clone", name);
    if (rc == MV_BENCH_OK)
        rc = cow_check_domain(run, host, src, name, run->pages, COW_SALT_SOURCE,
                              source_writes, run->stride, COW_SOURCE_BYTE);
    if (rc == MV_BENCH_OK)
        rc = cow_check_domain(run, host, clone, clone_name, run->pages, COW_SALT_SOURCE,
                              run->opt.pages, run->stride, COW_CLONE_BYTE);
    if (rc == MV_BENCH_OK)
        cow_audit(run, host);
    if (host)
        mv_host_destroy(host);
    return rc;
}

/* The clone's writes again, on a host with one fault thread per CPU. */
static int cow_per_cpu_case(struct cow_run *run)
{
    struct mv_host_config hc;
    mv_host *host;
    uint32_t src = 0, clone = 0;
    uint8_t *ram = NULL;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.fault_mode = MV_FAULT_PER_CPU;
    rc = cow_cloned_host(run, &hc, "cow-per-cpu", MV_COW_TRAP, &host, &src, &clone, &ram);
    if (rc == MV_BENCH_OK)
        rc = cow_timed_writes(run, ram, run->opt.pages, run->stride, COW_CLONE_BYTE,
                              COW_SALT_SOURCE, &run->per_cpu_break);
    return cow_check_and_destroy(run, host, "cow-per-cpu", src, 0, clone, rc);
}

/* mv_share_settle of `dom`, timed; its domain info after. */
static int cow_settle(mv_host *host, uint32_t dom, uint64_t *ns, uint64_t *settled,
                      struct mv_domain_info *info)
{
    uint64_t t0 = mv_bench_now_ns();
    int64_t n = mv_share_settle(host, dom);
    int rc;

    *ns = mv_bench_now_ns() - t0;
    if (n < 0)
        return mv_bench_lib_error("mv_share_settle", (int)n);
    *settled = (uint64_t)n;
    rc = mv_domain_info(host, dom, info);
    return rc < 0 ? mv_bench_lib_error("mv_domain_info", rc) : MV_BENCH_OK;
}

/*
 * The clone's writes with the kernel copying (MV_COW_KERNEL), then the settle
 * that turns the copies into breaks, timed; then the source's writes to the
 * same pages (each the last mapping of its frame: takeovers when settled).
 * The background settler is held off (a minute), so that the timed settles do
 * all the work.
 */
static int cow_kernel_case(struct cow_run *run)
{
    struct mv_host_config hc;
    mv_host *host;
    uint32_t src = 0, clone = 0;
    uint8_t *ram = NULL;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.cow_settle_ms = 60000;
    rc = cow_cloned_host(run, &hc, "cow-kernel", MV_COW_KERNEL, &host, &src, &clone, &ram);
    if (rc == MV_BENCH_OK)
        rc = cow_paired_writes(run, ram, COW_CLONE_BYTE, COW_SALT_SOURCE,
                               &run->kernel_break, &run->kernel_peer);
    if (rc == MV_BENCH_OK)
        rc = cow_settle(host, clone, &run->kernel_settle_ns, &run->kernel_settled,
                        &run->kernel_clone_info);
    if (rc == MV_BENCH_OK && (rc = mv_domain_unpause(host, src)) < 0)
        rc = mv_bench_lib_error("mv_domain_unpause", rc);
    if (rc == MV_BENCH_OK)
        rc = mv_bench_domain_ram(host, src, &ram, NULL);
    if (rc == MV_BENCH_OK)
        rc = cow_paired_writes(run, ram, COW_SOURCE_BYTE, COW_SALT_SOURCE,
                               &run->kernel_source_break, &run->kernel_source_peer);
    if (rc == MV_BENCH_OK)
        rc = cow_settle(host, src, &run->kernel_source_settle_ns,
                        &run->kernel_source_settled, &run->kernel_source_info);
    if (rc == MV_BENCH_OK)
        rc = cow_saved(host, &run->kernel_saved_after, NULL, NULL, NULL);
    if (rc == MV_BENCH_OK && (run->kernel_settled != run->opt.pages ||
                              run->kernel_source_settled != run->opt.pages)) {
        mv_bench_error("cow: kernel copies: %" PRIu64 " and %" PRIu64 " settled, %"
                       PRIu64 " written each", run->kernel_settled,
                       run->kernel_source_settled, run->opt.pages);
        run->mismatches++;
    }
    return cow_check_and_destroy(run, host, "cow-kernel", src, run->opt.pages, clone, rc);
}

/* How long the settler case's vCPU writes, at an even pace. */
#define COW_SETTLER_MS 3000u
/* What settle.c names the settler thread (MV__SETTLER_NAME). */
#define COW_SETTLER_NAME "memvisor-settle"

/* The CPU clock of this process's thread `tid`: the kernel's encoding of a
 * per-thread CPU-time clock (CPUCLOCK_SCHED, per thread), which
 * pthread_getcpuclockid gives for threads the caller has a handle on. */
static clockid_t cow_thread_clock(pid_t tid)
{
    return (clockid_t)((~(unsigned)tid << 3) | 6u);
}

/* The settler's thread id, found by name; 0 when there is none. */
static pid_t cow_settler_tid(void)
{
    DIR *dir = opendir("/proc/self/task");
    struct dirent *e;
    pid_t found = 0;

    while (dir && !found && (e = readdir(dir))) {
        char path[300], comm[32] = "";
        FILE *f;

        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        if (fgets(comm, sizeof(comm), f) && strcmp(comm, COW_SETTLER_NAME "\n") == 0)
            found = (pid_t)atoi(e->d_name);
        fclose(f);
    }
    if (dir)
        closedir(dir);
    return found;
}

static uint64_t cow_clock_ns(clockid_t clock)
{
    struct timespec ts;

    if (clock_gettime(clock, &ts) < 0)
        return UINT64_MAX;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The vCPU of the settler case: one store every window / count. */
struct cow_paced {
    struct cow_writes w;
    uint64_t window_ns;
};

static void *cow_paced_thread(void *arg)
{
    struct cow_paced *p = arg;
    uint64_t t0 = mv_bench_now_ns();

    for (uint64_t i = 0; i <= p->w.count; i++) {
        uint64_t at = t0 + p->window_ns * i / p->w.count;
        struct timespec ts = { (time_t)(at / 1000000000ull), (long)(at % 1000000000ull) };

        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        if (i < p->w.count)
            p->w.total_ns += cow_store_block(&p->w, p->w.mem, p->w.salt, p->w.latency, i, 1);
    }
    return NULL;
}

/*
 * The background settler at work (default cow_settle_ms) on an
 * MV_COW_KERNEL clone whose RAM is all mapped while a vCPU makes kernel
 * copies at an even pace: the settler thread's CPU time over the window.
 */
static int cow_settler_case(struct cow_run *run)
{
    struct mv_host_config hc;
    struct mv_share_stats stats;
    struct mv_domain_info info;
    struct cow_paced p;
    mv_host *host;
    uint32_t src = 0, clone = 0;
    uint8_t *ram = NULL;
    uint64_t cpu0, process0, t0;
    clockid_t clock = 0;
    pid_t tid = 0;
    int rc;

    mv_bench_host_config_init(&hc);
    rc = cow_cloned_host(run, &hc, "cow-settler", MV_COW_KERNEL, &host, &src, &clone, &ram);
    if (rc == MV_BENCH_OK && (rc = mv_domain_info(host, clone, &info)) < 0)
        rc = mv_bench_lib_error("mv_domain_info", rc);
    if (rc == MV_BENCH_OK) {
        run->settler_shared_pages = info.shared_pages;
        if (!(tid = cow_settler_tid())) {
            mv_bench_error("cow: no thread named " COW_SETTLER_NAME " in /proc/self/task");
            rc = MV_BENCH_FAILED;
        }
        clock = cow_thread_clock(tid);
        if (rc == MV_BENCH_OK && cow_clock_ns(clock) == UINT64_MAX) {
            mv_bench_error("cow: cannot read the settler's CPU clock: %s", strerror(errno));
            rc = MV_BENCH_FAILED;
        }
    }
    if (rc == MV_BENCH_OK) {
        /* Mapped, as a running guest's RAM is: a settler pass walks it all. */
        for (uint64_t g = 0; g < run->pages; g++)
            (void)*(volatile uint8_t *)(ram + g * MV_PAGE_SIZE);
        p = (struct cow_paced){
            .w = { .mem = ram, .count = run->opt.pages, .stride = run->stride,
                   .offset = COW_CLONE_BYTE, .salt = COW_SALT_SOURCE,
                   .latency = run->latency },
            .window_ns = (uint64_t)COW_SETTLER_MS * 1000000ull,
        };
        /* A pass may still run from the reads: start on a quiet settler. */
        mv_bench_sleep_ms(2 * MV_COW_SETTLE_DEFAULT_MS);
        cpu0 = cow_clock_ns(clock);
        process0 = mv_bench_process_cpu_ns();
        t0 = mv_bench_now_ns();
        rc = mv_bench_run_thread(cow_paced_thread, &p);
        run->settler_window_ns = mv_bench_now_ns() - t0;
        run->settler_cpu_ns = cow_clock_ns(clock) - cpu0;
        run->settler_process_cpu_ns = mv_bench_process_cpu_ns() - process0;
    }
    if (rc == MV_BENCH_OK && (rc = mv_share_stats(host, &stats)) < 0)
        rc = mv_bench_lib_error("mv_share_stats", rc);
    if (rc == MV_BENCH_OK)
        run->settler_copies = stats.cow_kernel_copies;
    return cow_check_and_destroy(run, host, "cow-settler", src, 0, clone, rc);
}

/* Settler CPU per GiB of shared memory per second of the window, in ns. */
static double cow_settler_cost(const struct cow_run *run)
{
    double gib = (double)run->settler_shared_pages * MV_PAGE_SIZE / (double)(1ull << 30);
    double seconds = (double)run->settler_window_ns / 1e9;

    return gib > 0 && seconds > 0 ? (double)run->settler_cpu_ns / gib / seconds : 0;
}

static int cow_memvisor(struct cow_run *run)
{
    struct mv_host_config hc;
    mv_host *host;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.fault_mode = MV_FAULT_SHARED;
    if ((rc = mv_bench_host_create(&hc, &host)) != MV_BENCH_OK)
        return rc;
    rc = cow_clone_case(run, host);
    if (rc == MV_BENCH_OK)
        rc = cow_mras_case(run, host);
    if (rc == MV_BENCH_OK)
        cow_audit(run, host);
    mv_host_destroy(host);
    if (rc == MV_BENCH_OK && run->share_audit == 0 && run->host_audit == 0)
        rc = cow_per_cpu_case(run);
    if (rc == MV_BENCH_OK && run->share_audit == 0 && run->host_audit == 0)
        rc = cow_kernel_case(run);
    if (rc == MV_BENCH_OK && run->share_audit == 0 && run->host_audit == 0)
        rc = cow_settler_case(run);
    if (rc == MV_BENCH_OK) {
        run->ok = run->mismatches == 0 && run->share_audit == 0 && run->host_audit == 0;
        if (!run->ok)
            mv_bench_error("cow: %" PRIu64 " pages read back wrong (first: %s)%s%s",
                           run->mismatches, run->mismatches ? run->first_bad : "none",
                           run->audit_error[0] ? "; " : "", run->audit_error);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Comparisons and reports                                                   */

#define COW_MAX_COMPARISONS 25

static size_t cow_comparisons(const struct cow_run *run, struct mv_bench_comparison *out)
{
    size_t n = 0;

    out[n++] = (struct mv_bench_comparison){
        .figure = "pages shared by the clone", .unit = "pages",
        .value = (double)run->saved_after_clone,
        .peer = "source's populated pages", .peer_value = (double)run->populated_pages,
        .goal_min_ratio = 1.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "clone, median of rounds", .unit = "ns",
        .value = (double)run->life_median[LIFE_CLONE],
        .peer = "fork() holding as much memory", .peer_value = (double)run->life_median[LIFE_FORK],
        .goal_max_ratio = 1.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CPU during the clone", .unit = "ns",
        .value = (double)run->life_median[LIFE_CLONE_CPU],
        .peer = "CPU during fork()", .peer_value = (double)run->life_median[LIFE_FORK_CPU],
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "source reads its RAM after", .unit = "ns",
        .value = (double)run->life_median[LIFE_SOURCE_READ],
        .peer = "parent reads its memory after",
        .peer_value = (double)run->life_median[LIFE_PARENT_READ],
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "destroy of the clone", .unit = "ns",
        .value = (double)run->life_median[LIFE_DESTROY_CLONE],
        .peer = "the forked child's exit + wait",
        .peer_value = (double)run->life_median[LIFE_CHILD_EXIT], .goal_max_ratio = 1.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "destroy of the source after", .unit = "ns",
        .value = (double)run->life_median[LIFE_DESTROY_SOURCE],
        .peer = "the parent's munmap() after", .peer_value = (double)run->life_median[LIFE_PARENT_FREE],
        /* Scrubbing at once costs the kernel's floor (the row below): the
         * goal is on the background scrub's destroy. */
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "destroy of the source after", .unit = "ns",
        .value = (double)run->life_median[LIFE_DESTROY_SOURCE],
        .peer = "floor: memfd munmap + punch",
        .peer_value = (double)(run->life_median[LIFE_MEMFD_UNMAP] +
                               run->life_median[LIFE_MEMFD_PUNCH]),
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "destroy of the clone, bg scrub", .unit = "ns",
        .value = (double)run->life_median[LIFE_BG_DESTROY_CLONE],
        .peer = "the forked child's exit + wait",
        .peer_value = (double)run->life_median[LIFE_CHILD_EXIT], .goal_max_ratio = 1.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "destroy of the source, bg scrub", .unit = "ns",
        .value = (double)run->life_median[LIFE_BG_DESTROY_SOURCE],
        .peer = "the parent's munmap() after", .peer_value = (double)run->life_median[LIFE_PARENT_FREE],
        .goal_max_ratio = 1.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "source's memory back, bg scrub", .unit = "ns",
        .value = (double)run->life_median[LIFE_BG_SOURCE_FREED],
        .peer = "floor: memfd munmap + punch",
        .peer_value = (double)(run->life_median[LIFE_MEMFD_UNMAP] +
                               run->life_median[LIFE_MEMFD_PUNCH]),
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break median, kernel copy", .unit = "ns",
        .value = (double)run->kernel_break.median_ns,
        .peer = "first touch (anon), paired",
        .peer_value = (double)run->kernel_peer.median_ns, .goal_max_ratio = 3.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break p99, kernel copy", .unit = "ns",
        .value = (double)run->kernel_break.p99_ns,
        .peer = "first touch p99 (anon), paired",
        .peer_value = (double)run->kernel_peer.p99_ns, .goal_max_ratio = 3.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "last-mapping break, kernel copy", .unit = "ns",
        .value = (double)run->kernel_source_break.median_ns,
        .peer = "first touch (anon), paired",
        .peer_value = (double)run->kernel_source_peer.median_ns, .goal_max_ratio = 3.0,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "settle, per kernel copy", .unit = "ns",
        .value = run->kernel_settled ? (double)run->kernel_settle_ns /
                                       (double)run->kernel_settled : 0,
        .peer = "CoW break median, trapped",
        .peer_value = (double)run->clone_break.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break median, trapped", .unit = "ns",
        .value = (double)run->clone_break.median_ns,
        .peer = "kernel first touch (anonymous)",
        .peer_value = (double)run->anon_touch.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break median", .unit = "ns",
        .value = (double)run->clone_break.median_ns,
        .peer = "floor: the break's system calls",
        .peer_value = (double)run->floor_break.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "floor: break system calls", .unit = "ns",
        .value = (double)run->floor_break.median_ns,
        .peer = "kernel first touch (anonymous)",
        .peer_value = (double)run->anon_touch.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break med., thread per CPU", .unit = "ns",
        .value = (double)run->per_cpu_break.median_ns,
        .peer = "kernel first touch (anonymous)",
        .peer_value = (double)run->anon_touch.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break p99", .unit = "ns", .value = (double)run->clone_break.p99_ns,
        .peer = "kernel first touch p99 (anon)", .peer_value = (double)run->anon_touch.p99_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break median", .unit = "ns",
        .value = (double)run->clone_break.median_ns,
        .peer = "kernel first touch (memfd)", .peer_value = (double)run->shmem_touch.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break median", .unit = "ns",
        .value = (double)run->clone_break.median_ns,
        .peer = "kernel CoW after fork()", .peer_value = (double)run->fork_cow.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "CoW break median", .unit = "ns",
        .value = (double)run->clone_break.median_ns,
        .peer = "kernel CoW, private file map", .peer_value = (double)run->file_cow.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "last-mapping break median", .unit = "ns",
        .value = (double)run->source_break.median_ns,
        .peer = "kernel first touch (anonymous)",
        .peer_value = (double)run->anon_touch.median_ns,
    };
    out[n++] = (struct mv_bench_comparison){
        .figure = "make_ro_and_share break med.", .unit = "ns",
        .value = (double)run->mras_break.median_ns,
        .peer = "kernel first touch (anonymous)",
        .peer_value = (double)run->anon_touch.median_ns,
    };
    return n;
}

static struct json_object *cow_latency_json(const struct cow_latency *l)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "writes", u64_json(l->count));
    json_object_object_add(o, "median_ns", u64_json(l->median_ns));
    json_object_object_add(o, "p99_ns", u64_json(l->p99_ns));
    json_object_object_add(o, "max_ns", u64_json(l->max_ns));
    json_object_object_add(o, "total_ns", u64_json(l->total_ns));
    return o;
}

static struct json_object *cow_info_json(const struct mv_domain_info *i)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "populated_pages", u64_json(i->populated_pages));
    json_object_object_add(o, "shared_pages", u64_json(i->shared_pages));
    json_object_object_add(o, "cow_breaks", u64_json(i->cow_breaks));
    json_object_object_add(o, "cow_takeovers", u64_json(i->cow_takeovers));
    json_object_object_add(o, "cow_nocopy", u64_json(i->cow_nocopy));
    json_object_object_add(o, "cow_claimable", u64_json(i->cow_claimable));
    json_object_object_add(o, "cow_shortfall", u64_json(i->cow_shortfall));
    json_object_object_add(o, "cow_mode", json_object_new_string(mv_cow_mode_name(i->cow_mode)));
    json_object_object_add(o, "cow_kernel_copies", u64_json(i->cow_kernel_copies));
    return o;
}

static int cow_report_json(const struct cow_run *run)
{
    struct json_object *root = mv_bench_json_root("cow", &run->machine);
    struct json_object *params = json_object_new_object(), *kernel = json_object_new_object();
    struct json_object *clone = json_object_new_object(), *breaks = json_object_new_object();
    struct json_object *o, *mras = json_object_new_object(), *checks = json_object_new_object();
    struct mv_bench_comparison cmp[COW_MAX_COMPARISONS];
    size_t n = cow_comparisons(run, cmp);
    bool all_met;

    json_object_object_add(params, "guest_mib", u64_json(run->opt.mib));
    json_object_object_add(params, "source_pages", u64_json(run->pages));
    json_object_object_add(params, "writes", u64_json(run->opt.pages));
    json_object_object_add(params, "stride_pages", u64_json(run->stride));
    json_object_object_add(params, "timer_overhead_ns", u64_json(run->timer_overhead_ns));
    json_object_object_add(params, "statistic", json_object_new_string(
        "one byte stored to each of `writes` pages `stride_pages` apart, each store "
        "timed with CLOCK_MONOTONIC (includes timer_overhead_ns); median and p99 "
        "over the stores; every peer stores to the same page offsets"));
    json_object_object_add(root, "parameters", params);

    json_object_object_add(kernel, "first_touch_anonymous", cow_latency_json(&run->anon_touch));
    json_object_object_add(kernel, "first_touch_memfd_shared", cow_latency_json(&run->shmem_touch));
    json_object_object_add(kernel, "cow_private_file_read_first", cow_latency_json(&run->file_cow));
    json_object_object_add(kernel, "cow_after_fork_child", cow_latency_json(&run->fork_cow));
    json_object_object_add(kernel, "fork_populate_ns", u64_json(run->fork_populate_ns));
    json_object_object_add(kernel, "fork_ns", u64_json(run->fork_ns));
    json_object_object_add(kernel, "what", json_object_new_string(
        "first writes to fresh private anonymous pages (MADV_NOHUGEPAGE) and to a fresh "
        "MAP_SHARED memfd mapping; writes to a MAP_PRIVATE memfd mapping whose pages "
        "were read first; fork() of the process holding guest_mib of populated private "
        "anonymous memory (4 KiB pages), then the child's writes to it"));
    json_object_object_add(root, "kernel", kernel);

    json_object_object_add(clone, "populate_ns", u64_json(run->populate_ns));
    json_object_object_add(clone, "source_populated_pages", u64_json(run->populated_pages));
    json_object_object_add(clone, "clone_ns", u64_json(run->clone_ns));
    json_object_object_add(clone, "clone_ns_per_page", mv_bench_json_real(
        run->populated_pages ? (double)run->clone_ns / (double)run->populated_pages : 0, 2));
    json_object_object_add(clone, "saved_pages_after_clone", u64_json(run->saved_after_clone));
    json_object_object_add(clone, "saved_fraction", mv_bench_json_real(
        run->populated_pages ? (double)run->saved_after_clone / (double)run->populated_pages
                             : 0, 4));
    json_object_object_add(clone, "shared_frames", u64_json(run->shared_frames_after_clone));
    json_object_object_add(clone, "clone_shared_pages", u64_json(run->clone_shared_pages));
    json_object_object_add(clone, "vma_count", u64_json(run->vmas_after_clone));
    json_object_object_add(clone, "frames_written_out_at_destroy",
                           u64_json(run->frames_written_out));
    json_object_object_add(clone, "destroy_clone_ns", u64_json(run->written_destroy_clone_ns));
    json_object_object_add(clone, "destroy_source_ns", u64_json(run->written_destroy_source_ns));
    json_object_object_add(root, "clone", clone);
    o = json_object_new_object();
    json_object_object_add(o, "rounds", u64_json(run->opt.rounds));
    for (int f = 0; f < LIFE_FIGURES; f++) {
        struct json_object *a = json_object_new_array();

        for (uint64_t i = 0; i < run->opt.rounds; i++)
            json_object_array_add(a, u64_json(run->life[f][i]));
        json_object_object_add(o, cow_life_names[f], a);
    }
    json_object_object_add(o, "what", json_object_new_string(
        "per round, on a host of its own: a source of guest_mib filled and paused, "
        "cloned, the clone destroyed with nothing written, then the source (by then "
        "the only mapping of every frame); beside it, with no domain alive: fork() of "
        "the process holding guest_mib of populated private anonymous memory, the "
        "child (touching nothing) told to exit and waited for, the parent's munmap() "
        "of the memory; and munmap() of a populated MAP_SHARED memfd mapping of "
        "guest_mib, then the hole punch of its pages; the process's CPU time (all "
        "threads) during the clone and during fork(); one read of every page by the "
        "source, unpaused, after the clone (before the clone is destroyed) and by the "
        "parent after fork(). The clone leaves its page tables to be filled by minor "
        "faults on first access; fork() copies them. The background_scrub_* figures "
        "are the same life on a host with scrub_mode MV_SCRUB_BACKGROUND: the two "
        "destroys, and the source's destroy until mv_host_wait_freed returned (its "
        "memory scrubbed, uncharged and back in the allocator)"));
    json_object_object_add(root, "clone_lives", o);

    o = cow_latency_json(&run->clone_break);
    json_object_object_add(o, "saved_pages_after", u64_json(run->saved_after_breaks));
    json_object_object_add(o, "clone_domain", cow_info_json(&run->clone_info));
    json_object_object_add(breaks, "clone_writes", o);
    o = cow_latency_json(&run->source_break);
    json_object_object_add(o, "saved_pages_after", u64_json(run->saved_after_source));
    json_object_object_add(o, "source_domain", cow_info_json(&run->source_info));
    json_object_object_add(o, "vma_count_after", u64_json(run->vmas_after_breaks));
    json_object_object_add(o, "cow_run_unshares", u64_json(run->run_unshares));
    json_object_object_add(breaks, "source_writes_last_mapping", o);
    json_object_object_add(breaks, "clone_writes_fault_mode_per_cpu",
                           cow_latency_json(&run->per_cpu_break));
    o = cow_latency_json(&run->floor_break);
    json_object_object_add(o, "what", json_object_new_string(
        "the system calls of a break into the writer's own slot with no bookkeeping: "
        "a poll()ing server reads the write fault, copy_file_range, mmap MAP_FIXED, "
        "UFFDIO_REGISTER, UFFDIO_CONTINUE, UFFDIO_WAKE; every other page written"));
    json_object_object_add(breaks, "floor", o);
    o = cow_latency_json(&run->kernel_break);
    json_object_object_add(o, "settle_ns", u64_json(run->kernel_settle_ns));
    json_object_object_add(o, "settled", u64_json(run->kernel_settled));
    json_object_object_add(o, "clone_domain", cow_info_json(&run->kernel_clone_info));
    json_object_object_add(o, "first_touch_anonymous_paired",
                           cow_latency_json(&run->kernel_peer));
    json_object_object_add(o, "what", json_object_new_string(
        "the clone's writes again, on domains with cow_mode MV_COW_KERNEL: the kernel "
        "copies each page at the write (no trap); every 64 stores, as many first touches "
        "of fresh private anonymous memory (the paired peer); then one timed "
        "mv_share_settle moves every copy into the clone's own frames and updates the "
        "records (the background settler held off)"));
    json_object_object_add(breaks, "clone_writes_kernel_copy", o);
    o = cow_latency_json(&run->kernel_source_break);
    json_object_object_add(o, "settle_ns", u64_json(run->kernel_source_settle_ns));
    json_object_object_add(o, "settled", u64_json(run->kernel_source_settled));
    json_object_object_add(o, "source_domain", cow_info_json(&run->kernel_source_info));
    json_object_object_add(o, "saved_pages_after", u64_json(run->kernel_saved_after));
    json_object_object_add(o, "first_touch_anonymous_paired",
                           cow_latency_json(&run->kernel_source_peer));
    json_object_object_add(breaks, "source_writes_last_mapping_kernel_copy", o);
    o = json_object_new_object();
    json_object_object_add(o, "what", json_object_new_string(
        "the background settler (default cow_settle_ms) of an MV_COW_KERNEL clone whose "
        "RAM was read once (all mapped) while a vCPU stores to the written pages at an "
        "even pace, each store a kernel copy: the settler thread's CPU time"));
    json_object_object_add(o, "shared_pages", u64_json(run->settler_shared_pages));
    json_object_object_add(o, "writes", u64_json(run->opt.pages));
    json_object_object_add(o, "window_ns", u64_json(run->settler_window_ns));
    json_object_object_add(o, "settler_cpu_ns", u64_json(run->settler_cpu_ns));
    json_object_object_add(o, "process_cpu_ns", u64_json(run->settler_process_cpu_ns));
    json_object_object_add(o, "kernel_copies_settled", u64_json(run->settler_copies));
    json_object_object_add(o, "settler_cpu_ns_per_gib_per_s",
                           mv_bench_json_real(cow_settler_cost(run), 0));
    json_object_object_add(breaks, "kernel_copy_settler", o);
    json_object_object_add(root, "breaks", breaks);

    json_object_object_add(mras, "pages_per_domain", u64_json(run->mras_pages));
    json_object_object_add(mras, "first_domain_ns", u64_json(run->mras_first_ns));
    json_object_object_add(mras, "second_domain_ns", u64_json(run->mras_second_ns));
    json_object_object_add(mras, "second_domain_ns_per_page", mv_bench_json_real(
        run->mras_pages ? (double)run->mras_second_ns / (double)run->mras_pages : 0, 2));
    json_object_object_add(mras, "matched", u64_json(run->mras_matched));
    json_object_object_add(mras, "saved_pages", u64_json(run->mras_saved));
    o = cow_latency_json(&run->mras_break);
    json_object_object_add(o, "saved_pages_after", u64_json(run->mras_saved_after));
    json_object_object_add(mras, "second_domain_writes", o);
    json_object_object_add(root, "make_ro_and_share", mras);

    json_object_object_add(checks, "pages_checked", u64_json(run->pages_checked));
    json_object_object_add(checks, "read_page_mismatches", u64_json(run->mismatches));
    if (run->mismatches)
        json_object_object_add(checks, "first_mismatch", json_object_new_string(run->first_bad));
    json_object_object_add(checks, "share_audit", json_object_new_int(run->share_audit));
    json_object_object_add(checks, "host_audit", json_object_new_int(run->host_audit));
    if (run->audit_error[0])
        json_object_object_add(checks, "audit_error", json_object_new_string(run->audit_error));
    json_object_object_add(root, "checks", checks);

    all_met = mv_bench_comparisons_json(root, cmp, n, NULL);
    json_object_object_add(root, "goals_met", json_object_new_boolean(all_met));
    json_object_object_add(root, "ok", json_object_new_boolean(run->ok));
    return mv_bench_json_emit(root);
}

static void cow_print_latency(const char *name, const struct cow_latency *l)
{
    char med[32], p99[32], max[32];

    printf("    %-44s median %10s  p99 %10s  max %10s\n", name,
           mv_bench_format(med, sizeof(med), (double)l->median_ns, "ns"),
           mv_bench_format(p99, sizeof(p99), (double)l->p99_ns, "ns"),
           mv_bench_format(max, sizeof(max), (double)l->max_ns, "ns"));
}

static int cow_report_text(const struct cow_run *run)
{
    struct mv_bench_comparison cmp[COW_MAX_COMPARISONS];
    size_t n = cow_comparisons(run, cmp);
    char a[32], b[32], c[32];

    printf("memvisor bench cow: a %" PRIu64 " MiB domain, %" PRIu64 " writes %" PRIu64
           " pages apart, timer overhead %" PRIu64 " ns per timed store\n", run->opt.mib,
           run->opt.pages, run->stride, run->timer_overhead_ns);
    mv_bench_machine_print(stdout, &run->machine);
    printf("\nclone: %" PRIu64 " populated pages cloned in %s (%.1f ns a page), %" PRIu64
           " saved; fork() holding as much: %s\n", run->populated_pages,
           mv_bench_format(a, sizeof(a), (double)run->clone_ns, "ns"),
           run->populated_pages ? (double)run->clone_ns / (double)run->populated_pages : 0,
           run->saved_after_clone,
           mv_bench_format(b, sizeof(b), (double)run->fork_ns, "ns"));
    printf("after the writes below, with %" PRIu64 " of the frames they still shared "
           "written out: clone destroyed in %s, then its source, by then alone on them, "
           "in %s\n", run->frames_written_out,
           mv_bench_format(a, sizeof(a), (double)run->written_destroy_clone_ns, "ns"),
           mv_bench_format(b, sizeof(b), (double)run->written_destroy_source_ns, "ns"));
    printf("clone lives, %" PRIu64 " rounds (clone / destroy clone / destroy source; "
           "fork / child exit + wait / parent munmap; memfd munmap / punch; CPU during "
           "the clone / the fork; first read of every page after: source / parent; "
           "background scrub: destroy clone / destroy source / its memory back):\n",
           run->opt.rounds);
    for (uint64_t i = 0; i < run->opt.rounds; i++) {
        printf("   ");
        for (int f = 0; f < LIFE_FIGURES; f++)
            printf(" %s%s", mv_bench_format(a, sizeof(a), (double)run->life[f][i], "ns"),
                   f == LIFE_DESTROY_SOURCE || f == LIFE_PARENT_FREE ||
                   f == LIFE_MEMFD_PUNCH || f == LIFE_FORK_CPU ||
                   f == LIFE_PARENT_READ ? "  |" : "");
        printf("\n");
    }
    printf("\nwrites:\n");
    cow_print_latency("memvisor: clone breaks a shared page", &run->clone_break);
    cow_print_latency("memvisor: source, last mapping of the frame", &run->source_break);
    cow_print_latency("memvisor: make_ro_and_share page", &run->mras_break);
    cow_print_latency("memvisor: clone, a fault thread per CPU", &run->per_cpu_break);
    cow_print_latency("memvisor: clone, the kernel copies", &run->kernel_break);
    cow_print_latency("memvisor: source, last mapping, kernel copies",
                      &run->kernel_source_break);
    cow_print_latency("kernel: first touch, paired with the clone's", &run->kernel_peer);
    cow_print_latency("kernel: first touch, paired with the source's",
                      &run->kernel_source_peer);
    cow_print_latency("floor: the break's system calls alone", &run->floor_break);
    cow_print_latency("kernel: first touch, private anonymous", &run->anon_touch);
    cow_print_latency("kernel: first touch, shared memfd", &run->shmem_touch);
    cow_print_latency("kernel: CoW after fork()", &run->fork_cow);
    cow_print_latency("kernel: CoW of a read private file mapping", &run->file_cow);
    printf("    settler: %" PRIu64 " kernel copies over %s in a %" PRIu64 " MiB clone: "
           "its thread %s of CPU (all threads %s), %.2f%% of a CPU per GiB shared\n",
           run->opt.pages, mv_bench_format(a, sizeof(a), (double)run->settler_window_ns, "ns"),
           run->settler_shared_pages * MV_PAGE_SIZE / MV_BENCH_MIB,
           mv_bench_format(b, sizeof(b), (double)run->settler_cpu_ns, "ns"),
           mv_bench_format(c, sizeof(c), (double)run->settler_process_cpu_ns, "ns"),
           cow_settler_cost(run) / 1e7);
    printf("    saved pages: %" PRIu64 " after the clone, %" PRIu64 " after its writes, %"
           PRIu64 " after the source's\n", run->saved_after_clone, run->saved_after_breaks,
           run->saved_after_source);
    if (run->run_unshares)
        printf("    near vm.max_map_count: %" PRIu64 " pages unshared along with their "
               "neighbours' breaks (%" PRIu64 " mappings)\n", run->run_unshares,
               run->vmas_after_breaks);
    printf("\nmake_ro_and_share: 2 x %" PRIu64 " pages, first domain %s, second %s, "
           "%" PRIu64 " matched, %" PRIu64 " saved, %" PRIu64 " after %" PRIu64 " writes\n",
           run->mras_pages, mv_bench_format(a, sizeof(a), (double)run->mras_first_ns, "ns"),
           mv_bench_format(b, sizeof(b), (double)run->mras_second_ns, "ns"),
           run->mras_matched, run->mras_saved, run->mras_saved_after, run->mras_writes);
    printf("\n");
    mv_bench_comparisons_print(stdout, cmp, n);
    printf("\nchecks: %" PRIu64 " pages read back, %" PRIu64 " wrong, share audit %d, "
           "host audit %d: %s\n", run->pages_checked, run->mismatches, run->share_audit,
           run->host_audit, run->ok ? "ok" : "FAILED");
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                               */

static void cow_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor bench cow [--json] [--guest-mib MIB] [--pages N] [--rounds N]\n"
        "\n"
        "Cloning a paused domain (mv_domain_clone) and the copy-on-write break of\n"
        "a shared page, measured against fork() and the kernel's own first-touch\n"
        "and copy-on-write faults in the same run, reported as ratios.\n"
        "\n"
        "  --json            print one JSON object instead of a table\n"
        "  --guest-mib MIB   the cloned domain, a multiple of 2 (default %u)\n"
        "  --pages N         pages written, evenly spread (default %u)\n"
        "  --rounds N        clone lives beside fork(), 1 to %u (default %u)\n"
        "  --help            this text\n",
        COW_DEFAULT_MIB, COW_DEFAULT_PAGES, MV_BENCH_MAX_ROUNDS, COW_DEFAULT_ROUNDS);
}

/* One option other than --json and --help. */
static int cow_parse_option(int opt, const char *arg, void *ctx)
{
    struct cow_options *o = ctx;

    switch (opt) {
    case 'm':
        return mv_bench_parse_mib("cow: --guest-mib", arg, COW_MAX_MIB, &o->mib);
    case 'p':
        return mv_bench_parse_u64("cow: --pages", arg, 1, UINT32_MAX, &o->pages);
    case 'r':
        return mv_bench_parse_u64("cow: --rounds", arg, 1, MV_BENCH_MAX_ROUNDS, &o->rounds);
    }
    return MV_BENCH_OK;
}

static int cow_parse_options(int argc, char **argv, void *arg, bool *help)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "guest-mib", required_argument, NULL, 'm' },
        { "pages", required_argument, NULL, 'p' },
        { "rounds", required_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct cow_options *o = &((struct cow_run *)arg)->opt;
    int rc;

    *o = (struct cow_options){ .mib = COW_DEFAULT_MIB, .pages = COW_DEFAULT_PAGES,
                               .rounds = COW_DEFAULT_ROUNDS };
    rc = mv_bench_parse_options("cow", argc, argv, options, cow_parse_option, o, &o->json, help);
    if (rc == MV_BENCH_OK && o->pages > o->mib * (MV_BENCH_MIB / MV_PAGE_SIZE)) {
        mv_bench_error("cow: --pages %" PRIu64 " is more than the %" PRIu64 " pages of "
                       "a %" PRIu64 " MiB domain", o->pages,
                       o->mib * (MV_BENCH_MIB / MV_PAGE_SIZE), o->mib);
        rc = MV_BENCH_USAGE;
    }
    return mv_bench_options_done("cow", rc, argc, argv);
}

static int cow_run_suite(void *arg)
{
    struct cow_run *run = arg;
    struct mv_kernel_features features;
    int rc = mv_bench_probe(&features, &run->machine);

    if (rc != MV_BENCH_OK)
        return rc;
    run->bytes = run->opt.mib * MV_BENCH_MIB;
    run->pages = run->bytes / MV_PAGE_SIZE;
    run->stride = run->pages / run->opt.pages;
    /* The source and the fork peer are live one at a time; the make_ro_and_share
     * domains and the clone's copies add at most as much again. */
    if (features.mem_available / 3 < run->bytes) {
        mv_bench_error("cow: --guest-mib %" PRIu64 " needs three times that available; "
                       "MemAvailable is %" PRIu64 " MiB", run->opt.mib,
                       features.mem_available / MV_BENCH_MIB);
        return MV_BENCH_FAILED;
    }
    run->latency = malloc(run->opt.pages * sizeof(*run->latency));
    if (!run->latency) {
        mv_bench_error("cow: no memory for %" PRIu64 " latency samples", run->opt.pages);
        return MV_BENCH_FAILED;
    }
    /* Populated now, so that a writer takes no fault of ours between stores. */
    memset(run->latency, 0xff, run->opt.pages * sizeof(*run->latency));
    run->timer_overhead_ns = mv_bench_timer_overhead_ns();
    /* The kernel first: fork() wants a process without the library's threads. */
    rc = cow_kernel_touch(run, false, &run->anon_touch);
    if (rc == MV_BENCH_OK)
        rc = cow_kernel_touch(run, true, &run->shmem_touch);
    if (rc == MV_BENCH_OK)
        rc = cow_kernel_file(run);
    if (rc == MV_BENCH_OK)
        rc = cow_kernel_fork(run);
    if (rc == MV_BENCH_OK)
        rc = cow_floor(run);
    if (rc == MV_BENCH_OK)
        rc = cow_lives(run);
    if (rc == MV_BENCH_OK)
        rc = cow_memvisor(run);
    if (rc != MV_BENCH_OK)
        return rc;
    rc = run->opt.json ? cow_report_json(run) : cow_report_text(run);
    if (rc == MV_BENCH_OK && !run->ok)
        rc = MV_BENCH_FAILED;
    return rc;
}

static void cow_release(void *arg)
{
    struct cow_run *run = arg;

    free(run->latency);
}

int mv_bench_cow(int argc, char **argv)
{
    static const struct mv_bench_suite suite = {
        .name = "cow", .run_size = sizeof(struct cow_run), .parse = cow_parse_options,
        .usage = cow_usage, .run = cow_run_suite, .release = cow_release,
    };

    return mv_bench_suite_main(&suite, argc, argv);
}
