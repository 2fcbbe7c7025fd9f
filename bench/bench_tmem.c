/*
 * bench_tmem.c - `memvisor bench tmem`: transcendent memory against the
 * kernel's compressed memory, in the same run, on the same pages.
 *
 * Pages: one synthetic guest of --size MiB from guest_image.c with
 * compressible contents (machine code, page-cache text, heap words and
 * zero pages in realistic proportions), or with --image the RAM of a real
 * guest (a raw dump, as bench share takes; its first --size MiB when
 * --size is given, else all of it up to TMEM_MAX_MIB), read into memory
 * before anything is timed; the same bytes for every peer.
 *
 * Figures and their peers:
 *   put / get        mv_tmem_put_page and mv_tmem_get_page of every page
 *                    into / from a persistent lz4 pool, one thread;
 *   zram write/read  the same pages written to / read from /dev/zram0
 *                    (lz4) with O_DIRECT, one 4 KiB request per page, one
 *                    thread: what swapping through zram costs per page;
 *   scattered order  the gets and the zram reads again, page (i * stride)
 *                    mod pages (stride coprime to pages, about 0.62 of
 *                    them): no two in a row near, so no read-ahead pays
 *                    (no goal: what access in no order costs);
 *   two writers      the puts again from two threads at once, each putting
 *                    half of the pages into a pool of its own domain, and
 *                    the zram writes from two threads on a fresh device:
 *                    how each scales past one writer (no goals);
 *   zswap store/load the same pages in a child process's anonymous memory
 *                    pushed out with MADV_PAGEOUT into zswap (lz4 when the
 *                    kernel's crypto API has it, else its configured
 *                    compressor, named in the report) over a swap file made
 *                    for the run, then touched back, one word a page;
 *   lz4 loop         LZ4_compress_default / LZ4_decompress_safe of every
 *                    page on one core, nothing else: the compressor's floor;
 *   ratio            pages stored / memory used: tmem's frames charged to
 *                    the host budget, zram's mem_used_total, zswap's
 *                    pool_total_size from debugfs (all three include their
 *                    allocators' waste; zero-filled pages count as stored),
 *                    the lz4 loop's compressed bytes (no allocator at all);
 *   relinquish       mv_tmem_evict_npages(n) and mv_tmem_relinquish_pages(n)
 *                    over a full ephemeral pool, per frame;
 *   paged fault      the first touch of a page that host paging compressed
 *                    away (fault, decompress, map), twice: by a vCPU of the
 *                    domain, resolved in its own thread (the default for
 *                    the library's vCPUs), and with every fault served by a
 *                    fault thread (MV_FAULT_PATH_THREAD, a VMM's guest's
 *                    way); against the kernel's first touch of a memfd page
 *                    and a swap-in from zram (the page pushed out with
 *                    MADV_PAGEOUT while zram is the only swap; swap is
 *                    turned off again at once), all from the same thread.
 * Rounds: put/get, the zram write/read and the lz4 loop are measured
 * --rounds times, alternating which of tmem and zram goes first (the one
 * going second may find the memory the first just freed still warm, and a
 * neighbour's load on a shared machine hits whichever runs at that moment);
 * each figure is the median of its rounds, and the report keeps every
 * round.  Stored sizes are the same in every round (the pages and codecs
 * are deterministic); the first round's are reported.  Each of those is
 * timed twice: wall time (the figures the goals are on) and the process's
 * CPU time, which leaves out the time a neighbour's load keeps the run off
 * the CPU.  Every peer here works in the calling thread (zram compresses
 * in the writer's bio submission, synchronously), so CPU time counts all
 * of each one's work; the CPU-time rows carry no goals.  zswap, relinquish
 * and the fault latencies are measured once.
 * zram is used only when it is unused (disksize 0) and reset afterwards.
 * zswap is used only when it is off: it is turned on for its measurement
 * alone (which changes swapping for every process of the machine while it
 * lasts), debugfs is mounted if it was not, the swap file is made and
 * swapped on; every setting is put back afterwards, on errors and on
 * SIGINT, SIGTERM and SIGHUP too.
 * Without either, its peers are reported as not measured, with the reason.
 * The zswap rows have no goals: the goals are against zram and the loop.
 */
#include "bench.h"
#include "bench_util.h"
#include "guest_image.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <lz4.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/magic.h>

#define TMEM_DEFAULT_MIB 128u
#define TMEM_DEFAULT_ROUNDS 5u
#define TMEM_MAX_MIB 4096u
#define TMEM_FAULT_PAGES 4096u      /* pages of the fault-latency cases */
#define TMEM_RELINQUISH_FRAMES 1024u
#define ZRAM "/sys/block/zram0/"
#define TM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TM_MAX(a, b) ((a) > (b) ? (a) : (b))

struct tmem_options {
    uint64_t size_mib;
    bool size_given;
    uint64_t rounds;
    const char *image;          /* a raw RAM dump; NULL: the synthetic guest */
    enum mv_tmem_store store;   /* --store: how tmem keeps its frames */
    bool json;
};

struct tmem_run {
    struct tmem_options opt;
    struct mv_bench_machine machine;
    struct guest_image_set set;
    const struct guest_image *image;
    uint64_t pages;
    /* tmem */
    uint64_t put_ns, get_ns, frames, stored_bytes, poor, same, bad_pages;
    enum mv_tmem_store store;   /* what the host used */
    uint64_t store_mapped_ns, store_copied_ns;
    uint64_t read_aheads, read_ahead_hits; /* the first round's gets */
    uint64_t scattered_read_aheads;        /* ... and its gets in scattered order */
    /* Gets and zram reads again in scattered order: page (i * stride) mod
     * pages, stride coprime to pages, so no two in a row are near. */
    uint64_t stride;
    uint64_t round_get_scattered[MV_BENCH_MAX_ROUNDS];
    uint64_t round_zram_read_scattered[MV_BENCH_MAX_ROUNDS];
    uint64_t get_scattered_ns, zram_read_scattered_ns;
    /* the lz4 loop */
    uint64_t lz4_comp_ns, lz4_decomp_ns, lz4_bytes;
    /* each round's timings (the figures above are their medians) */
    uint64_t round_put[MV_BENCH_MAX_ROUNDS], round_get[MV_BENCH_MAX_ROUNDS];
    uint64_t round_lz4_comp[MV_BENCH_MAX_ROUNDS], round_lz4_decomp[MV_BENCH_MAX_ROUNDS];
    uint64_t round_zram_write[MV_BENCH_MAX_ROUNDS], round_zram_read[MV_BENCH_MAX_ROUNDS];
    /* the same in CPU time, and their medians */
    uint64_t cpu_put[MV_BENCH_MAX_ROUNDS], cpu_get[MV_BENCH_MAX_ROUNDS];
    uint64_t cpu_lz4_comp[MV_BENCH_MAX_ROUNDS], cpu_lz4_decomp[MV_BENCH_MAX_ROUNDS];
    uint64_t cpu_zram_write[MV_BENCH_MAX_ROUNDS], cpu_zram_read[MV_BENCH_MAX_ROUNDS];
    uint64_t put_cpu_ns, get_cpu_ns, lz4_comp_cpu_ns, lz4_decomp_cpu_ns, zram_write_cpu_ns,
             zram_read_cpu_ns;
    /* two writers at once, each half of the pages: tmem puts (two domains,
     * a pool each) and zram writes; 0 when not measured */
    uint64_t round_put2[MV_BENCH_MAX_ROUNDS], round_zram_write2[MV_BENCH_MAX_ROUNDS];
    uint64_t put2_ns, zram_write2_ns;
    /* zram */
    bool zram;
    char zram_why[160];
    uint64_t zram_write_ns, zram_read_ns, zram_orig, zram_compr, zram_used, zram_bad;
    /* zswap */
    bool zswap;
    char zswap_why[200];
    char zswap_compressor[32];
    char zswap_compressor_note[128];
    uint64_t zswap_store_ns, zswap_load_ns, zswap_swapped, zswap_stored, zswap_zero,
             zswap_pool_bytes, zswap_written_back, zswap_to_file, zswap_rejected,
             zswap_left_swapped, zswap_bad, zswap_incompressible, zswap_decompress_fail;
    char zswap_peer[3][48];     /* the comparisons' peer names */
    /* relinquish */
    uint64_t evicted_frames, evict_ns, relinquished_frames, relinquish_ns;
    /* fault latency (medians and 99th percentiles) */
    uint64_t paged_median, paged_p99, kernel_median, kernel_p99;
    uint64_t paged_thread_median, paged_thread_p99;
    bool zram_swap;
    char zram_swap_why[160];
    uint64_t swapin_median, swapin_p99, swapped_pages;
};

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;

        a = b;
        b = t;
    }
    return a;
}

/* A stride that visits every page once, about 0.618 of the pages apart. */
static uint64_t scattered_stride(uint64_t pages)
{
    uint64_t stride = pages * 618 / 1000 + 1;

    while (gcd(stride, pages) != 1)
        stride++;
    return stride;
}

static uint64_t scattered(const struct tmem_run *run, uint64_t i)
{
    return (uint64_t)((unsigned __int128)i * run->stride % run->pages);
}

static double gib_per_s(uint64_t pages, uint64_t ns)
{
    return ns ? (double)pages * MV_PAGE_SIZE / (double)ns * 1e9 / (double)(1ull << 30) : 0;
}

/* ---- tmem clients ---- */

/* A host with room for every page twice over. */
static int tmem_host(const struct tmem_run *run, mv_host **out)
{
    struct mv_host_config hc;

    mv_bench_host_config_init(&hc);
    hc.budget_bytes = run->pages * MV_PAGE_SIZE * 2 + 256 * MV_BENCH_MIB;
    hc.tmem_store = run->opt.store;
    return mv_bench_host_create(&hc, out);
}

/* A domain `name` on h with a tmem client and a persistent pool: 0 or a
 * negative errno. */
static int tmem_client(mv_host *h, const char *name, uint32_t *dom, int *pool)
{
    struct mv_domain_config dc;
    int rc;

    *pool = -1;
    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "%s", name);
    dc.maxmem_bytes = dc.target_bytes = 16 * MV_BENCH_MIB;
    rc = mv_domain_create(h, &dc, dom);
    if (rc == 0)
        rc = mv_tmem_set_client(h, *dom, 100, UINT64_MAX);
    if (rc == 0)
        rc = *pool = mv_tmem_new_pool(h, *dom, MV_TMEM_PERSISTENT, NULL);
    return rc < 0 ? rc : 0;
}

/* Pages [first, first + count) that do not come back from the pool as
 * they were put (untimed). */
static uint64_t tmem_bad_pages(const struct tmem_run *run, mv_host *h, uint32_t dom, int pool,
                               uint64_t first, uint64_t count)
{
    uint8_t page[MV_PAGE_SIZE];
    uint64_t oid[3] = { 1, 0, 0 }, bad = 0;

    for (uint64_t i = first; i < first + count; i++) {
        oid[1] = i >> 32;
        if (mv_tmem_get_page(h, dom, (uint32_t)pool, oid, (uint32_t)i, page, MV_PAGE_SIZE) != 1 ||
            memcmp(page, guest_image_page(run->image, i), MV_PAGE_SIZE))
            bad++;
    }
    return bad;
}

/* ---- two writers at once ---- */

struct half_writer {
    struct tmem_run *run;
    uint64_t first, count;
    mv_host *host;              /* tmem: its domain and pool */
    uint32_t dom;
    int pool;
    int fd;                     /* zram */
    uint64_t bad;
};

static void *put_half(void *arg)
{
    struct half_writer *w = arg;
    uint64_t oid[3] = { 1, 0, 0 };

    for (uint64_t i = w->first; i < w->first + w->count; i++) {
        oid[1] = i >> 32;
        if (mv_tmem_put_page(w->host, w->dom, (uint32_t)w->pool, oid, (uint32_t)i,
                             guest_image_page(w->run->image, i), MV_PAGE_SIZE) != 1)
            w->bad++;
    }
    return NULL;
}

static void *zram_write_half(void *arg)
{
    struct half_writer *w = arg;

    for (uint64_t i = w->first; i < w->first + w->count; i++)
        if (pwrite(w->fd, guest_image_page(w->run->image, i), MV_PAGE_SIZE,
                   (off_t)(i * MV_PAGE_SIZE)) != MV_PAGE_SIZE)
            w->bad++;
    return NULL;
}

/* Run fn on both halves of the pages at once; the wall time, or 0 when a
 * thread could not start or a write failed. */
static uint64_t two_writers(struct half_writer w[2], void *(*fn)(void *))
{
    pthread_t other;
    uint64_t t0 = mv_bench_now_ns(), took;

    w[0].count = w[0].run->pages / 2;
    w[1].first = w[0].count;
    w[1].count = w[0].run->pages - w[0].count;
    if (pthread_create(&other, NULL, fn, &w[1]) != 0)
        return 0;
    fn(&w[0]);
    pthread_join(other, NULL);
    took = mv_bench_now_ns() - t0;
    return w[0].bad || w[1].bad ? 0 : took;
}

/* ---- tmem ---- */

/* One round of put and get; the first also measures relinquish. */
static int measure_tmem(struct tmem_run *run, unsigned round)
{
    struct mv_tmem_stats s;
    uint8_t page[MV_PAGE_SIZE];
    mv_host *h = NULL;
    uint32_t dom;
    uint64_t t0, c0, oid[3] = { 1, 0, 0 };
    int pool, rc;

    if (tmem_host(run, &h) != MV_BENCH_OK)
        return MV_BENCH_FAILED;
    rc = tmem_client(h, "tmem-client", &dom, &pool);
    if (rc < 0) {
        mv_host_destroy(h);
        return mv_bench_lib_error("tmem pool", rc);
    }
    c0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++) {
        oid[1] = i >> 32;
        rc = mv_tmem_put_page(h, dom, (uint32_t)pool, oid, (uint32_t)i,
                              guest_image_page(run->image, i), MV_PAGE_SIZE);
        if (rc != 1) {
            mv_host_destroy(h);
            return mv_bench_lib_error("mv_tmem_put_page", rc < 0 ? rc : -ENOMEM);
        }
    }
    run->round_put[round] = mv_bench_now_ns() - t0;
    run->cpu_put[round] = mv_bench_process_cpu_ns() - c0;
    mv_tmem_stats(h, &s);
    if (round == 0) {
        run->store = s.store;
        run->store_mapped_ns = s.store_mapped_ns;
        run->store_copied_ns = s.store_copied_ns;
        run->frames = s.frames;
        run->stored_bytes = s.counts.stored_bytes;
        run->poor = s.counts.poor_compressions;
        run->same = s.counts.same_filled;
    }
    c0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++) {
        oid[1] = i >> 32;
        if (mv_tmem_get_page(h, dom, (uint32_t)pool, oid, (uint32_t)i, page, MV_PAGE_SIZE) != 1)
            run->bad_pages++;
    }
    run->round_get[round] = mv_bench_now_ns() - t0;
    run->cpu_get[round] = mv_bench_process_cpu_ns() - c0;
    mv_tmem_stats(h, &s);
    if (round == 0) {
        run->read_aheads = s.store_read_aheads;
        run->read_ahead_hits = s.store_read_ahead_hits;
    }
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++) {
        uint64_t k = scattered(run, i);

        oid[1] = k >> 32;
        if (mv_tmem_get_page(h, dom, (uint32_t)pool, oid, (uint32_t)k, page, MV_PAGE_SIZE) != 1)
            run->bad_pages++;
    }
    run->round_get_scattered[round] = mv_bench_now_ns() - t0;
    if (round == 0) {
        uint64_t before = s.store_read_aheads;

        mv_tmem_stats(h, &s);
        run->scattered_read_aheads = s.store_read_aheads - before;
    }
    run->bad_pages += tmem_bad_pages(run, h, dom, pool, 0, run->pages);
    if (round > 0)
        goto out;
    /* Relinquish: the pages again, in an ephemeral pool, then frames back. */
    mv_tmem_destroy_pool(h, dom, (uint32_t)pool);
    mv_tmem_relinquish_pages(h, UINT64_MAX);
    pool = mv_tmem_new_pool(h, dom, 0, NULL);
    for (uint64_t i = 0; pool >= 0 && i < run->pages; i++) {
        oid[1] = i >> 32;
        mv_tmem_put_page(h, dom, (uint32_t)pool, oid, (uint32_t)i,
                         guest_image_page(run->image, i), MV_PAGE_SIZE);
    }
    t0 = mv_bench_now_ns();
    run->evicted_frames = (uint64_t)TM_MAX(mv_tmem_evict_npages(h, TMEM_RELINQUISH_FRAMES), 0);
    run->evict_ns = mv_bench_now_ns() - t0;
    t0 = mv_bench_now_ns();
    run->relinquished_frames = (uint64_t)TM_MAX(mv_tmem_relinquish_pages(h, TMEM_RELINQUISH_FRAMES), 0);
    run->relinquish_ns = mv_bench_now_ns() - t0;
out:
    rc = mv_tmem_audit(h);
    mv_host_destroy(h);
    if (rc < 0)
        return mv_bench_lib_error("mv_tmem_audit", rc);
    return MV_BENCH_OK;
}

/* The puts again from two threads at once, each into a pool of its own
 * domain on one host; then every page is checked. */
static int measure_put_two(struct tmem_run *run, unsigned round)
{
    struct half_writer w[2] = { { .run = run }, { .run = run } };
    mv_host *h = NULL;
    int rc = 0;

    if (tmem_host(run, &h) != MV_BENCH_OK)
        return MV_BENCH_FAILED;
    for (int k = 0; k < 2 && rc == 0; k++) {
        w[k].host = h;
        rc = tmem_client(h, k ? "tmem-client-1" : "tmem-client-0", &w[k].dom, &w[k].pool);
    }
    if (rc < 0) {
        mv_host_destroy(h);
        return mv_bench_lib_error("tmem pools for two writers", rc);
    }
    run->round_put2[round] = two_writers(w, put_half);
    for (int k = 0; k < 2; k++)
        run->bad_pages += tmem_bad_pages(run, h, w[k].dom, w[k].pool, w[k].first, w[k].count);
    rc = mv_tmem_audit(h);
    mv_host_destroy(h);
    if (rc < 0)
        return mv_bench_lib_error("mv_tmem_audit", rc);
    if (!run->round_put2[round]) {
        mv_bench_error("tmem: puts from two threads failed");
        return MV_BENCH_FAILED;
    }
    return MV_BENCH_OK;
}

/* ---- the lz4 loop ---- */

static void measure_lz4(struct tmem_run *run, unsigned round)
{
    int bound = LZ4_compressBound(MV_PAGE_SIZE);
    char *dst = malloc((size_t)bound), page[MV_PAGE_SIZE];
    uint32_t *len = malloc(run->pages * sizeof(*len));
    char *all = malloc(run->pages * (size_t)bound);
    uint64_t t0, c0;

    if (!dst || !len || !all) {
        free(dst);
        free(len);
        free(all);
        return;
    }
    /* The timing is of the compressor alone, every page into one buffer
     * that stays in cache; the compressed copies the decompress loop reads
     * are made again untimed (lz4 is deterministic: the same bytes). */
    c0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++)
        len[i] = (uint32_t)LZ4_compress_default((const char *)guest_image_page(run->image, i),
                                                dst, MV_PAGE_SIZE, bound);
    run->round_lz4_comp[round] = mv_bench_now_ns() - t0;
    run->cpu_lz4_comp[round] = mv_bench_process_cpu_ns() - c0;
    run->lz4_bytes = 0;
    for (uint64_t i = 0; i < run->pages; i++) {
        run->lz4_bytes += len[i];
        LZ4_compress_default((const char *)guest_image_page(run->image, i),
                             all + i * (uint64_t)bound, MV_PAGE_SIZE, bound);
    }
    c0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++)
        LZ4_decompress_safe(all + i * (uint64_t)bound, page, (int)len[i], MV_PAGE_SIZE);
    run->round_lz4_decomp[round] = mv_bench_now_ns() - t0;
    run->cpu_lz4_decomp[round] = mv_bench_process_cpu_ns() - c0;
    free(dst);
    free(len);
    free(all);
}

/* ---- zram ---- */

static int sys_write(const char *file, const char *text)
{
    int fd = open(file, O_WRONLY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return -errno;
    if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        rc = -errno;
    close(fd);
    return rc;
}

static int sys_read_u64s(const char *file, uint64_t *v, int n)
{
    char buf[256];
    FILE *f = fopen(file, "re");
    int got = 0;

    if (!f)
        return -errno;
    if (fgets(buf, sizeof(buf), f)) {
        char *p = buf;

        for (; got < n; got++) {
            char *end;

            v[got] = strtoull(p, &end, 10);
            if (end == p)
                break;
            p = end;
        }
    }
    fclose(f);
    return got;
}

/* Make zram0 an lz4 device of `bytes`, if nobody uses it.  0 or why not. */
static int zram_setup(uint64_t bytes, char *why, size_t size)
{
    uint64_t disksize = 1;
    char text[32];

    if (sys_read_u64s(ZRAM "disksize", &disksize, 1) != 1) {
        snprintf(why, size, "no /dev/zram0 (modprobe zram)");
        return -ENODEV;
    }
    if (disksize != 0) {
        snprintf(why, size, "/dev/zram0 is in use (disksize %" PRIu64 ")", disksize);
        return -EBUSY;
    }
    snprintf(text, sizeof(text), "%" PRIu64, bytes);
    if (sys_write(ZRAM "comp_algorithm", "lz4") < 0 || sys_write(ZRAM "disksize", text) < 0) {
        snprintf(why, size, "cannot configure /dev/zram0: %s (root needed)", strerror(errno));
        sys_write(ZRAM "reset", "1");
        return -EPERM;
    }
    return 0;
}

static void zram_reset(void)
{
    sys_write(ZRAM "reset", "1");
}

/* Pages of the device that do not read back as written (untimed). */
static uint64_t zram_bad_pages(const struct tmem_run *run, int fd, uint8_t *buf)
{
    uint64_t bad = 0;

    for (uint64_t i = 0; i < run->pages; i++)
        if (pread(fd, buf, MV_PAGE_SIZE, (off_t)(i * MV_PAGE_SIZE)) != MV_PAGE_SIZE ||
            memcmp(buf, guest_image_page(run->image, i), MV_PAGE_SIZE))
            bad++;
    return bad;
}

/* One round of zram writes and reads; a round after a failed one is not
 * run (run->zram stays false). */
static void measure_zram(struct tmem_run *run, unsigned round)
{
    uint64_t mm[3], t0, c0;
    uint8_t *buf = NULL;
    int fd;

    if (round > 0 && !run->zram)
        return;
    run->zram = false;
    if (zram_setup(run->pages * MV_PAGE_SIZE + 64 * MV_BENCH_MIB, run->zram_why,
                   sizeof(run->zram_why)) < 0)
        return;
    fd = open("/dev/zram0", O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd < 0 || posix_memalign((void **)&buf, MV_PAGE_SIZE, MV_PAGE_SIZE)) {
        snprintf(run->zram_why, sizeof(run->zram_why), "cannot open /dev/zram0: %s",
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        zram_reset();
        return;
    }
    c0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++)
        if (pwrite(fd, guest_image_page(run->image, i), MV_PAGE_SIZE,
                   (off_t)(i * MV_PAGE_SIZE)) != MV_PAGE_SIZE)
            run->zram_bad++;
    run->round_zram_write[round] = mv_bench_now_ns() - t0;
    run->cpu_zram_write[round] = mv_bench_process_cpu_ns() - c0;
    if (round == 0 && sys_read_u64s(ZRAM "mm_stat", mm, 3) == 3) {
        run->zram_orig = mm[0];
        run->zram_compr = mm[1];
        run->zram_used = mm[2];
    }
    c0 = mv_bench_process_cpu_ns();
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++)
        if (pread(fd, buf, MV_PAGE_SIZE, (off_t)(i * MV_PAGE_SIZE)) != MV_PAGE_SIZE)
            run->zram_bad++;
    run->round_zram_read[round] = mv_bench_now_ns() - t0;
    run->cpu_zram_read[round] = mv_bench_process_cpu_ns() - c0;
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++)
        if (pread(fd, buf, MV_PAGE_SIZE, (off_t)(scattered(run, i) * MV_PAGE_SIZE)) !=
            MV_PAGE_SIZE)
            run->zram_bad++;
    run->round_zram_read_scattered[round] = mv_bench_now_ns() - t0;
    run->zram_bad += zram_bad_pages(run, fd, buf);
    close(fd);
    /* Two writers at once, on a fresh device (each half written once). */
    run->round_zram_write2[round] = 0;
    zram_reset();
    if (zram_setup(run->pages * MV_PAGE_SIZE + 64 * MV_BENCH_MIB, run->zram_why,
                   sizeof(run->zram_why)) == 0 &&
        (fd = open("/dev/zram0", O_RDWR | O_DIRECT | O_CLOEXEC)) >= 0) {
        struct half_writer w[2] = { { .run = run, .fd = fd }, { .run = run, .fd = fd } };

        run->round_zram_write2[round] = two_writers(w, zram_write_half);
        run->zram_bad += zram_bad_pages(run, fd, buf);
        close(fd);
    }
    free(buf);
    zram_reset();
    run->zram = run->zram_used > 0 && run->zram_bad == 0;
    if (!run->zram)
        snprintf(run->zram_why, sizeof(run->zram_why), "zram lost %" PRIu64 " pages or "
                 "reported no memory used", run->zram_bad);
}

/* ---- zswap ----
 *
 * zswap is turned on (lz4 when the kernel's crypto API has it, else the
 * compressor it is configured with) over a swap file made for the run in
 * a temporary directory.  A child process copies the pages into anonymous
 * memory and pushes them out with MADV_PAGEOUT (timed: the store), the
 * parent reads zswap's debugfs counters (the ratio, and that nothing
 * reached the file), then the child touches every page back (timed: the
 * load) and compares every byte.  The pages are reclaimed by MADV_PAGEOUT
 * rather than a cgroup's memory.reclaim because memory.reclaim needs the
 * cgroup v2 memory controller, which a host with the controller on its v1
 * hierarchy does not offer; both run the same reclaim (shrink_folio_list,
 * swap_writeout, zswap_store), MADV_PAGEOUT on exactly the child's pages.
 * Every setting changed (zswap's enabled and compressor, debugfs mounted,
 * the swap file on) is put back on every exit path, a signal's included.
 */

#define ZSWAP_PARAM "/sys/module/zswap/parameters/"
#define ZSWAP_DEBUG "/sys/kernel/debug/zswap/"
#define DEBUGFS_DIR "/sys/kernel/debug"
#define ZSWAP_PAGEOUT_PASSES 4

/* Read by the signal handler: plain static storage, set before it is
 * armed. */
static struct {
    pid_t owner;            /* the process that changed things */
    char enabled[16];       /* saved values, "" when not saved */
    char compressor[64];
    bool compressor_changed;
    bool debugfs_mounted;   /* by us */
    char dir[128];          /* temporary directory, "" when none */
    char file[160];         /* swap file, "" when none */
    bool swap_on;
    pid_t child;
} zs;
static volatile sig_atomic_t zs_dirty;
static struct sigaction zs_old_action[3];
static const int zs_signals[3] = { SIGINT, SIGTERM, SIGHUP };

/* Put everything back, in the reverse order of its making.  Async-signal-
 * safe (kill, waitpid, swapoff, unlink, rmdir, open, write, close,
 * umount2).  Returns 0 or the first error. */
static int zswap_put_back(void)
{
    int rc = 0;

    if (zs.child > 0) {
        kill(zs.child, SIGKILL);
        waitpid(zs.child, NULL, 0);
        zs.child = 0;
    }
    if (zs.swap_on) {
        if (swapoff(zs.file) != 0 && !rc)
            rc = -errno;
        zs.swap_on = false;
    }
    if (zs.file[0]) {
        if (unlink(zs.file) != 0 && !rc)
            rc = -errno;
        zs.file[0] = '\0';
    }
    if (zs.dir[0]) {
        if (rmdir(zs.dir) != 0 && !rc)
            rc = -errno;
        zs.dir[0] = '\0';
    }
    if (zs.enabled[0]) {
        int r = sys_write(ZSWAP_PARAM "enabled", zs.enabled);

        if (r < 0 && !rc)
            rc = r;
        zs.enabled[0] = '\0';
    }
    if (zs.compressor_changed) {
        int r = sys_write(ZSWAP_PARAM "compressor", zs.compressor);

        if (r < 0 && !rc)
            rc = r;
        zs.compressor_changed = false;
    }
    if (zs.debugfs_mounted) {
        if (umount2(DEBUGFS_DIR, 0) != 0 && !rc)
            rc = -errno;
        zs.debugfs_mounted = false;
    }
    return rc;
}

static void zswap_signal_handler(int sig)
{
    if (zs_dirty && getpid() == zs.owner)
        (void)zswap_put_back();
    zs_dirty = 0;
    signal(sig, SIG_DFL);
    raise(sig);
}

static void zswap_arm(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = zswap_signal_handler;
    sigemptyset(&sa.sa_mask);
    zs.owner = getpid();
    zs_dirty = 1;
    for (int i = 0; i < 3; i++)
        sigaction(zs_signals[i], &sa, &zs_old_action[i]);
}

/* Put back and disarm; a failure to put back is reported. */
static void zswap_disarm(void)
{
    sigset_t block, old;
    int rc;

    if (!zs_dirty)
        return;

    sigemptyset(&block);
    for (int i = 0; i < 3; i++)
        sigaddset(&block, zs_signals[i]);
    sigprocmask(SIG_BLOCK, &block, &old);
    rc = zswap_put_back();
    zs_dirty = 0;
    for (int i = 0; i < 3; i++)
        sigaction(zs_signals[i], &zs_old_action[i], NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (rc < 0)
        mv_bench_error("tmem: cannot put zswap's settings back: %s", strerror(-rc));
}

/* The first line of `file` without its newline; 0 or -errno. */
static int sys_read_line(const char *file, char *buf, size_t size)
{
    FILE *f = fopen(file, "re");
    int rc = 0;

    if (!f)
        return -errno;
    if (!fgets(buf, (int)size, f))
        rc = -EIO;
    else
        buf[strcspn(buf, "\n")] = '\0';
    fclose(f);
    return rc;
}

static uint64_t zswap_counter(const char *name)
{
    char path[128];
    uint64_t v = 0;

    snprintf(path, sizeof(path), ZSWAP_DEBUG "%s", name);
    return sys_read_u64s(path, &v, 1) == 1 ? v : 0;
}

/* Does /proc/crypto list an algorithm called `name`? */
static bool crypto_has(const char *name)
{
    char line[256], want[96];
    FILE *f = fopen("/proc/crypto", "re");
    bool found = false;

    if (!f)
        return false;
    snprintf(want, sizeof(want), "%s\n", name);
    while (!found && fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');

        found = strncmp(line, "name", 4) == 0 && colon &&
                strcmp(colon + 1 + strspn(colon + 1, " \t"), want) == 0;
    }
    fclose(f);
    return found;
}

struct vm_swap_counts {
    uint64_t pswpout, swpout_zero, zswpout, zswpwb;
};

static void vm_swap_counts(struct vm_swap_counts *c)
{
    char line[128];
    FILE *f = fopen("/proc/vmstat", "re");

    memset(c, 0, sizeof(*c));
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v;
        char key[64];

        if (sscanf(line, "%63s %llu", key, &v) != 2)
            continue;
        if (strcmp(key, "pswpout") == 0)
            c->pswpout = v;
        else if (strcmp(key, "swpout_zero") == 0)
            c->swpout_zero = v;
        else if (strcmp(key, "zswpout") == 0)
            c->zswpout = v;
        else if (strcmp(key, "zswpwb") == 0)
            c->zswpwb = v;
    }
    fclose(f);
}

/* A swap file of `pages` pages (the header's included) at zs.file, zeros
 * behind a version-1 swap header, as mkswap writes it.  0 or -errno. */
static int make_swap_file(uint64_t pages)
{
    static const uint8_t zero[1 << 16];
    uint8_t header[MV_PAGE_SIZE];
    uint32_t version = 1, last_page = (uint32_t)(pages - 1);
    int fd = open(zs.file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600), rc = 0;

    if (fd < 0) {
        rc = -errno;
        zs.file[0] = '\0';
        return rc;
    }
    for (uint64_t off = 0; rc == 0 && off < pages * MV_PAGE_SIZE; off += sizeof(zero))
        if (pwrite(fd, zero, sizeof(zero), (off_t)off) != (ssize_t)sizeof(zero))
            rc = errno ? -errno : -ENOSPC;
    memset(header, 0, sizeof(header));
    memcpy(header + 1024, &version, 4);
    memcpy(header + 1028, &last_page, 4);
    /* nr_badpages 0, then the uuid and the label */
    memcpy(header + 1024 + 12 + 16, "memvisor-zswap", 14);
    memcpy(header + MV_PAGE_SIZE - 10, "SWAPSPACE2", 10);
    if (rc == 0 && pwrite(fd, header, sizeof(header), 0) != (ssize_t)sizeof(header))
        rc = -errno;
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* What the child tells the parent, after the store and after the load. */
struct zswap_report {
    int err;                /* errno of a failed step, 0 */
    char step[32];          /* that step */
    uint64_t store_ns, swapped, load_ns, left_swapped, bad;
};

/* Pages of `mem` (n pages) whose pagemap entry says swapped. */
static uint64_t count_swapped(const uint8_t *mem, uint64_t n, uint64_t *entries)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t swapped = 0;
    ssize_t got;

    if (fd < 0)
        return 0;
    got = pread(fd, entries, n * 8, (off_t)((uintptr_t)mem / MV_PAGE_SIZE * 8));
    close(fd);
    for (uint64_t i = 0; got == (ssize_t)(n * 8) && i < n; i++)
        swapped += entries[i] >> 62 & 1;
    return swapped;
}

static bool pipe_io(int fd, void *buf, size_t size, bool out)
{
    for (size_t done = 0; done < size;) {
        ssize_t n = out ? write(fd, (char *)buf + done, size - done)
                        : read(fd, (char *)buf + done, size - done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        done += (size_t)n;
    }
    return true;
}

static void zswap_child(const struct tmem_run *run, int cmd, int out)
{
    size_t bytes = run->pages * MV_PAGE_SIZE;
    struct zswap_report rep;
    uint64_t *entries = malloc(run->pages * 8), t0, sum = 0;
    uint8_t *mem;
    char go;

    for (int i = 0; i < 3; i++)
        signal(zs_signals[i], SIG_DFL);
    memset(&rep, 0, sizeof(rep));
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || !entries) {
        rep.err = mem == MAP_FAILED ? errno : ENOMEM;
        snprintf(rep.step, sizeof(rep.step), "mmap");
        pipe_io(out, &rep, sizeof(rep), true);
        _exit(1);
    }
    /* 4 KiB pages, as the other peers store them. */
    madvise(mem, bytes, MADV_NOHUGEPAGE);
    for (uint64_t i = 0; i < run->pages; i++)
        memcpy(mem + i * MV_PAGE_SIZE, guest_image_page(run->image, i), MV_PAGE_SIZE);
    /* The store: reclaim of every page, again for those a pass skipped
     * (folios still in a per-CPU LRU batch). */
    for (int pass = 0; pass < ZSWAP_PAGEOUT_PASSES && rep.swapped < run->pages; pass++) {
        t0 = mv_bench_now_ns();
        if (madvise(mem, bytes, MADV_PAGEOUT) != 0) {
            rep.err = errno;
            snprintf(rep.step, sizeof(rep.step), "MADV_PAGEOUT");
            break;
        }
        rep.store_ns += mv_bench_now_ns() - t0;
        rep.swapped = count_swapped(mem, run->pages, entries);
    }
    if (!pipe_io(out, &rep, sizeof(rep), true) || rep.err || !pipe_io(cmd, &go, 1, false))
        _exit(1);
    /* The load: the first touch of every page. */
    t0 = mv_bench_now_ns();
    for (uint64_t i = 0; i < run->pages; i++)
        sum += *(volatile uint64_t *)(mem + i * MV_PAGE_SIZE);
    rep.load_ns = mv_bench_now_ns() - t0;
    (void)sum;
    rep.left_swapped = count_swapped(mem, run->pages, entries);
    for (uint64_t i = 0; i < run->pages; i++)
        if (memcmp(mem + i * MV_PAGE_SIZE, guest_image_page(run->image, i), MV_PAGE_SIZE))
            rep.bad++;
    pipe_io(out, &rep, sizeof(rep), true);
    _exit(0);
}

#define ZSWAP_WHY(...) snprintf(run->zswap_why, sizeof(run->zswap_why), __VA_ARGS__)

/* Turn zswap on over a fresh swap file.  0, or why not in run->zswap_why. */
static int zswap_setup(struct tmem_run *run)
{
    const char *tmp = getenv("TMPDIR");
    char buf[64];
    struct statfs sfs;
    int rc;

    if (sys_read_line(ZSWAP_PARAM "enabled", zs.enabled, sizeof(zs.enabled)) < 0 ||
        sys_read_line(ZSWAP_PARAM "compressor", zs.compressor, sizeof(zs.compressor)) < 0) {
        zs.enabled[0] = '\0';
        ZSWAP_WHY("no %senabled: the kernel was built without CONFIG_ZSWAP", ZSWAP_PARAM);
        return -ENODEV;
    }
    if (access(ZSWAP_PARAM "enabled", W_OK) != 0) {
        ZSWAP_WHY("%senabled is not writable (%s): root needed", ZSWAP_PARAM, strerror(errno));
        zs.enabled[0] = '\0';
        return -EPERM;
    }
    if (zs.enabled[0] == 'Y') {
        ZSWAP_WHY("zswap is already on: its pool would hold other processes' pages too");
        zs.enabled[0] = '\0';
        return -EBUSY;
    }
    zswap_arm();
    /* debugfs, for zswap's counters. */
    if (statfs(DEBUGFS_DIR, &sfs) != 0 || sfs.f_type != DEBUGFS_MAGIC) {
        if (mount("debugfs", DEBUGFS_DIR, "debugfs", 0, NULL) != 0) {
            ZSWAP_WHY("cannot mount debugfs on %s: %s", DEBUGFS_DIR, strerror(errno));
            return -errno;
        }
        zs.debugfs_mounted = true;
    }
    /* The compressor: lz4 as the other peers, when the kernel has it. */
    if (crypto_has("lz4")) {
        if (strcmp(zs.compressor, "lz4") != 0) {
            zs.compressor_changed = true;
            if ((rc = sys_write(ZSWAP_PARAM "compressor", "lz4")) < 0) {
                ZSWAP_WHY("cannot set zswap's compressor to lz4: %s", strerror(-rc));
                return rc;
            }
        }
    } else {
        snprintf(run->zswap_compressor_note, sizeof(run->zswap_compressor_note),
                 "no lz4 in the kernel's crypto API (CONFIG_CRYPTO_LZ4): %s used",
                 zs.compressor);
    }
    if ((rc = sys_write(ZSWAP_PARAM "enabled", "Y")) < 0) {
        ZSWAP_WHY("cannot turn zswap on: %s", strerror(-rc));
        return rc;
    }
    if (sys_read_line(ZSWAP_PARAM "compressor", run->zswap_compressor,
                      sizeof(run->zswap_compressor)) < 0 ||
        sys_read_line(ZSWAP_PARAM "enabled", buf, sizeof(buf)) < 0 || buf[0] != 'Y') {
        ZSWAP_WHY("zswap did not turn on (see dmesg)");
        return -EIO;
    }
    if (access(ZSWAP_DEBUG "stored_pages", R_OK) != 0) {
        ZSWAP_WHY("no %sstored_pages: %s", ZSWAP_DEBUG, strerror(errno));
        return -ENOENT;
    }
    /* The swap file behind it: a slot for every page, and some. */
    snprintf(zs.dir, sizeof(zs.dir), "%s/memvisor-zswap-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(zs.dir)) {
        ZSWAP_WHY("cannot make a temporary directory like %s: %s", zs.dir, strerror(errno));
        zs.dir[0] = '\0';
        return -errno;
    }
    snprintf(zs.file, sizeof(zs.file), "%s/swap", zs.dir);
    if ((rc = make_swap_file(run->pages + 1 + 16 * MV_BENCH_MIB / MV_PAGE_SIZE)) < 0) {
        ZSWAP_WHY("cannot write a swap file in %s: %s", zs.dir, strerror(-rc));
        return rc;
    }
    if (swapon(zs.file, SWAP_FLAG_PREFER | (32767 << SWAP_FLAG_PRIO_SHIFT)) != 0) {
        ZSWAP_WHY("swapon %s refused: %s", zs.file, strerror(errno));
        return -errno;
    }
    zs.swap_on = true;
    return 0;
}

static void measure_zswap(struct tmem_run *run)
{
    struct vm_swap_counts before, after;
    struct zswap_report rep;
    uint64_t wb0, rej0, rej1, df0;
    int cmd[2] = { -1, -1 }, out[2] = { -1, -1 };
    static const char *const rejects[] = {
        "reject_compress_poor", "reject_compress_fail", "reject_alloc_fail",
        "reject_kmemcache_fail", "reject_reclaim_fail",
    };

    memset(&zs, 0, sizeof(zs));
    if (zswap_setup(run) < 0)
        goto out;
    wb0 = zswap_counter("written_back_pages");
    rej0 = 0;
    for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++)
        rej0 += zswap_counter(rejects[i]);
    df0 = zswap_counter("decompress_fail");
    vm_swap_counts(&before);
    if (zswap_counter("stored_pages") != 0) {
        ZSWAP_WHY("zswap already holds %" PRIu64 " pages", zswap_counter("stored_pages"));
        goto out;
    }
    if (pipe2(cmd, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
        ZSWAP_WHY("pipe: %s", strerror(errno));
        goto out;
    }
    fflush(NULL);
    zs.child = fork();
    if (zs.child < 0) {
        zs.child = 0;
        ZSWAP_WHY("fork: %s", strerror(errno));
        goto out;
    }
    if (zs.child == 0) {
        close(cmd[1]);
        close(out[0]);
        zswap_child(run, cmd[0], out[1]);
    }
    close(cmd[0]);
    close(out[1]);
    cmd[0] = out[1] = -1;
    if (!pipe_io(out[0], &rep, sizeof(rep), false)) {
        ZSWAP_WHY("the child died before its pages were out");
        goto out;
    }
    if (rep.err) {
        ZSWAP_WHY("child: %s: %s", rep.step, strerror(rep.err));
        goto out;
    }
    /* The pages are out: what zswap holds for them. */
    vm_swap_counts(&after);
    run->zswap_store_ns = rep.store_ns;
    run->zswap_swapped = rep.swapped;
    run->zswap_stored = zswap_counter("stored_pages");
    run->zswap_pool_bytes = zswap_counter("pool_total_size");
    run->zswap_written_back = zswap_counter("written_back_pages") - wb0;
    rej1 = 0;
    for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++)
        rej1 += zswap_counter(rejects[i]);
    run->zswap_rejected = rej1 - rej0;
    run->zswap_incompressible = zswap_counter("stored_incompressible_pages");
    run->zswap_to_file = after.pswpout - before.pswpout;
    run->zswap_zero = after.swpout_zero - before.swpout_zero;
    if (!pipe_io(cmd[1], "g", 1, true) || !pipe_io(out[0], &rep, sizeof(rep), false)) {
        ZSWAP_WHY("the child died while touching its pages back");
        goto out;
    }
    waitpid(zs.child, NULL, 0);
    zs.child = 0;
    run->zswap_load_ns = rep.load_ns;
    run->zswap_left_swapped = rep.left_swapped;
    run->zswap_bad = rep.bad;
    run->zswap_decompress_fail = zswap_counter("decompress_fail") - df0;
    if (rep.bad)
        ZSWAP_WHY("%" PRIu64 " pages came back from zswap different", rep.bad);
    else if (run->zswap_swapped < run->pages * 99 / 100)
        ZSWAP_WHY("MADV_PAGEOUT swapped only %" PRIu64 " of %" PRIu64 " pages",
                  run->zswap_swapped, run->pages);
    else if (run->zswap_written_back || run->zswap_to_file > run->pages / 100)
        ZSWAP_WHY("%" PRIu64 " pages reached the swap file (%" PRIu64 " written back)",
                  run->zswap_to_file, run->zswap_written_back);
    else if (!run->zswap_stored || !run->zswap_pool_bytes)
        ZSWAP_WHY("zswap reported %" PRIu64 " pages in %" PRIu64 " bytes",
                  run->zswap_stored, run->zswap_pool_bytes);
    else
        run->zswap = true;
    snprintf(run->zswap_peer[0], sizeof(run->zswap_peer[0]), "zswap store (%s)",
             run->zswap_compressor);
    snprintf(run->zswap_peer[1], sizeof(run->zswap_peer[1]), "zswap load (%s)",
             run->zswap_compressor);
    snprintf(run->zswap_peer[2], sizeof(run->zswap_peer[2]), "zswap (pool_total_size)");
out:
    for (int i = 0; i < 2; i++) {
        if (cmd[i] >= 0)
            close(cmd[i]);
        if (out[i] >= 0)
            close(out[i]);
    }
    zswap_disarm();
}

/* ---- fault latency ---- */

static int by_value(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

static void median_p99(uint64_t *v, size_t n, uint64_t *median, uint64_t *p99)
{
    qsort(v, n, sizeof(*v), by_value);
    *median = n ? v[n / 2] : 0;
    *p99 = n ? v[n * 99 / 100] : 0;
}

/* Time a read of the first word of each of `n` pages at `mem`. */
static void touch_pages(volatile uint8_t *mem, size_t n, const uint64_t *want, uint64_t *lat,
                        uint64_t *bad)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = mv_bench_now_ns(), w = *(volatile uint64_t *)(mem + i * MV_PAGE_SIZE);

        lat[i] = mv_bench_now_ns() - t0;
        if (want && w != want[i])
            (*bad)++;
    }
}

/* The first touch of n paged-out pages of a host with `path`, from a
 * thread that is a vCPU of the domain when `vcpu` (lat: each touch). */
static int measure_paged(struct tmem_run *run, size_t n, enum mv_fault_path path, bool vcpu,
                         const uint64_t *want, uint64_t *lat, uint64_t *median, uint64_t *p99)
{
    struct mv_host_config hc;
    struct mv_domain_config dc;
    mv_host *h = NULL;
    uint64_t bad = 0;
    uint8_t *ram;
    uint32_t dom;
    int64_t paged;
    int rc;

    mv_bench_host_config_init(&hc);
    hc.fault_path = path;
    hc.tmem_store = run->opt.store;
    if (mv_bench_host_create(&hc, &h) != MV_BENCH_OK)
        return MV_BENCH_FAILED;
    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "paged");
    dc.maxmem_bytes = dc.target_bytes = ((n * MV_PAGE_SIZE + 2 * MV_BENCH_MIB - 1) /
                                         (2 * MV_BENCH_MIB)) * 2 * MV_BENCH_MIB;
    rc = mv_domain_create(h, &dc, &dom);
    if (rc < 0 || mv_bench_domain_ram(h, dom, &ram, NULL) != MV_BENCH_OK) {
        mv_host_destroy(h);
        return rc < 0 ? mv_bench_lib_error("mv_domain_create", rc) : MV_BENCH_FAILED;
    }
    for (size_t i = 0; i < n; i++)
        memcpy(ram + i * MV_PAGE_SIZE, guest_image_page(run->image, i), MV_PAGE_SIZE);
    paged = mv_tmem_page_out(h, dom, n);
    if (paged < 0) {
        mv_host_destroy(h);
        return mv_bench_lib_error("mv_tmem_page_out", (int)paged);
    }
    if ((uint64_t)paged != n) {
        mv_host_destroy(h);
        mv_bench_error("tmem: %" PRId64 " of %zu pages paged out", paged, n);
        return MV_BENCH_FAILED;
    }
    if (vcpu && (rc = mv_vcpu_enter(h, dom)) != 1) {
        mv_host_destroy(h);
        if (rc < 0)
            return mv_bench_lib_error("mv_vcpu_enter", rc);
        mv_bench_error("tmem: the domain's faults cannot be resolved in its vCPUs' threads "
                       "on this kernel");
        return MV_BENCH_FAILED;
    }
    touch_pages(ram, n, want, lat, &bad);
    if (vcpu)
        mv_vcpu_exit();
    median_p99(lat, n, median, p99);
    run->bad_pages += bad;
    mv_host_destroy(h);
    return MV_BENCH_OK;
}

static int measure_faults(struct tmem_run *run)
{
    size_t n = TM_MIN(TMEM_FAULT_PAGES, run->pages);
    uint64_t *lat = malloc(n * sizeof(*lat)), *want = malloc(n * sizeof(*want)), bad = 0;
    uint8_t *mem;
    int fd;

    if (!lat || !want) {
        free(lat);
        free(want);
        mv_bench_error("tmem: no memory for latency samples");
        return MV_BENCH_FAILED;
    }
    for (size_t i = 0; i < n; i++)
        memcpy(&want[i], guest_image_page(run->image, i), sizeof(want[i]));
    /* Host paging: a vCPU's own fault, then every fault in a fault thread. */
    if (measure_paged(run, n, MV_FAULT_PATH_AUTO, true, want, lat, &run->paged_median,
                      &run->paged_p99) != MV_BENCH_OK ||
        measure_paged(run, n, MV_FAULT_PATH_THREAD, false, want, lat,
                      &run->paged_thread_median, &run->paged_thread_p99) != MV_BENCH_OK)
        goto fail;
    /* The kernel's first touch of a memfd page. */
    fd = memfd_create("tmem-bench", MFD_CLOEXEC);
    if (fd >= 0 && ftruncate(fd, (off_t)(n * MV_PAGE_SIZE)) == 0) {
        mem = mmap(NULL, n * MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (mem != MAP_FAILED) {
            for (size_t i = 0; i < n; i++) {
                uint64_t t0 = mv_bench_now_ns();

                ((volatile uint8_t *)mem)[i * MV_PAGE_SIZE] = 1;
                lat[i] = mv_bench_now_ns() - t0;
            }
            median_p99(lat, n, &run->kernel_median, &run->kernel_p99);
            munmap(mem, n * MV_PAGE_SIZE);
        }
    }
    if (fd >= 0)
        close(fd);
    /* A swap-in from zram: zram the only swap, the pages pushed out. */
    if (zram_setup(n * MV_PAGE_SIZE * 2 + 16 * MV_BENCH_MIB, run->zram_swap_why,
                   sizeof(run->zram_swap_why)) == 0) {
        if (system("mkswap /dev/zram0 >/dev/null 2>&1") != 0 ||
            swapon("/dev/zram0", SWAP_FLAG_PREFER | (32767 << SWAP_FLAG_PRIO_SHIFT)) != 0) {
            snprintf(run->zram_swap_why, sizeof(run->zram_swap_why),
                     "cannot swap on /dev/zram0: %s", strerror(errno));
        } else {
            mem = mmap(NULL, n * MV_PAGE_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (mem != MAP_FAILED) {
                int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

                for (size_t i = 0; i < n; i++)
                    memcpy(mem + i * MV_PAGE_SIZE, guest_image_page(run->image, i),
                           MV_PAGE_SIZE);
                madvise(mem, n * MV_PAGE_SIZE, MADV_PAGEOUT);
                for (size_t i = 0; pm >= 0 && i < n; i++) {
                    uint64_t e = 0;

                    if (pread(pm, &e, 8, (off_t)(((uintptr_t)mem >> 12) + i) * 8) == 8 &&
                        (e >> 62 & 1))
                        run->swapped_pages++;
                }
                if (pm >= 0)
                    close(pm);
                bad = 0;
                touch_pages(mem, n, want, lat, &bad);
                run->bad_pages += bad;
                median_p99(lat, n, &run->swapin_median, &run->swapin_p99);
                run->zram_swap = run->swapped_pages > n / 2;
                if (!run->zram_swap)
                    snprintf(run->zram_swap_why, sizeof(run->zram_swap_why),
                             "MADV_PAGEOUT swapped only %" PRIu64 " of %zu pages",
                             run->swapped_pages, n);
                munmap(mem, n * MV_PAGE_SIZE);
            }
            swapoff("/dev/zram0");
        }
        zram_reset();
    }
    free(lat);
    free(want);
    return MV_BENCH_OK;
fail:
    free(lat);
    free(want);
    return MV_BENCH_FAILED;
}

/* ---- rounds ---- */

/* tmem, the lz4 loop and zram, --rounds times, tmem first in even rounds
 * and zram first in odd ones; the figures are the medians. */
static int measure_rounds(struct tmem_run *run)
{
    unsigned n = (unsigned)run->opt.rounds;

    for (unsigned r = 0; r < n; r++) {
        int rc;

        if (r % 2)
            measure_zram(run, r);
        rc = measure_tmem(run, r);
        if (rc == MV_BENCH_OK)
            rc = measure_put_two(run, r);
        if (rc != MV_BENCH_OK)
            return rc;
        measure_lz4(run, r);
        if (r % 2 == 0)
            measure_zram(run, r);
    }
    run->put_ns = mv_bench_median(run->round_put, n);
    run->get_ns = mv_bench_median(run->round_get, n);
    run->lz4_comp_ns = mv_bench_median(run->round_lz4_comp, n);
    run->lz4_decomp_ns = mv_bench_median(run->round_lz4_decomp, n);
    run->zram_write_ns = mv_bench_median(run->round_zram_write, n);
    run->put2_ns = mv_bench_median(run->round_put2, n);
    run->zram_write2_ns = mv_bench_median(run->round_zram_write2, n);
    run->zram_read_ns = mv_bench_median(run->round_zram_read, n);
    run->get_scattered_ns = mv_bench_median(run->round_get_scattered, n);
    run->zram_read_scattered_ns = mv_bench_median(run->round_zram_read_scattered, n);
    run->put_cpu_ns = mv_bench_median(run->cpu_put, n);
    run->get_cpu_ns = mv_bench_median(run->cpu_get, n);
    run->lz4_comp_cpu_ns = mv_bench_median(run->cpu_lz4_comp, n);
    run->lz4_decomp_cpu_ns = mv_bench_median(run->cpu_lz4_decomp, n);
    run->zram_write_cpu_ns = mv_bench_median(run->cpu_zram_write, n);
    run->zram_read_cpu_ns = mv_bench_median(run->cpu_zram_read, n);
    return MV_BENCH_OK;
}

static struct json_object *rounds_json(const uint64_t *v, uint64_t n)
{
    struct json_object *a = json_object_new_array();

    for (uint64_t i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_uint64(v[i]));
    return a;
}

/* ---- reports ---- */

static double tmem_ratio(const struct tmem_run *r)
{
    return r->frames ? (double)r->pages / (double)r->frames : 0;
}

/* Pages zswap took (compressed, or zero-filled and kept as a bit by the
 * swap layer) per page of its pool. */
static double zswap_ratio(const struct tmem_run *r)
{
    return r->zswap_pool_bytes ? (double)(r->zswap_stored + r->zswap_zero) * MV_PAGE_SIZE /
                                 (double)r->zswap_pool_bytes : 0;
}

static size_t comparisons(const struct tmem_run *r, struct mv_bench_comparison *c)
{
    double put = gib_per_s(r->pages, r->put_ns), get = gib_per_s(r->pages, r->get_ns);
    double put_cpu = gib_per_s(r->pages, r->put_cpu_ns), get_cpu = gib_per_s(r->pages, r->get_cpu_ns);
    size_t n = 0;

    if (r->zram) {
        c[n++] = (struct mv_bench_comparison){ "put throughput", "GiB/s", put, "zram write",
                                               gib_per_s(r->pages, r->zram_write_ns), 0, 1.0 };
        if (r->zram_write2_ns)
            c[n++] = (struct mv_bench_comparison){
                "put throughput, two threads at once", "GiB/s",
                gib_per_s(r->pages, r->put2_ns), "zram write, two writers at once",
                gib_per_s(r->pages, r->zram_write2_ns), 0, 0 };
        c[n++] = (struct mv_bench_comparison){ "get throughput", "GiB/s", get, "zram read",
                                               gib_per_s(r->pages, r->zram_read_ns), 0, 1.0 };
        c[n++] = (struct mv_bench_comparison){
            "get throughput, scattered order", "GiB/s", gib_per_s(r->pages, r->get_scattered_ns),
            "zram read, scattered order", gib_per_s(r->pages, r->zram_read_scattered_ns), 0, 0 };
        c[n++] = (struct mv_bench_comparison){
            "compression ratio", "x", tmem_ratio(r), "zram (mem_used_total)",
            (double)r->zram_orig / (double)r->zram_used, 0, 1.0 };
    }
    if (r->zswap) {
        c[n++] = (struct mv_bench_comparison){ "put throughput", "GiB/s", put, r->zswap_peer[0],
                                               gib_per_s(r->zswap_swapped, r->zswap_store_ns),
                                               0, 0 };
        c[n++] = (struct mv_bench_comparison){ "get throughput", "GiB/s", get, r->zswap_peer[1],
                                               gib_per_s(r->zswap_swapped, r->zswap_load_ns),
                                               0, 0 };
        c[n++] = (struct mv_bench_comparison){ "compression ratio", "x", tmem_ratio(r),
                                               r->zswap_peer[2], zswap_ratio(r), 0, 0 };
    }
    c[n++] = (struct mv_bench_comparison){ "put throughput, two threads at once", "GiB/s",
                                           gib_per_s(r->pages, r->put2_ns),
                                           "put throughput, one thread", put, 0, 0 };
    c[n++] = (struct mv_bench_comparison){ "put throughput", "GiB/s", put,
                                           "lz4 compress loop, one core",
                                           gib_per_s(r->pages, r->lz4_comp_ns), 0, 0.7 };
    c[n++] = (struct mv_bench_comparison){ "get throughput", "GiB/s", get,
                                           "lz4 decompress loop, one core",
                                           gib_per_s(r->pages, r->lz4_decomp_ns), 0, 0.7 };
    c[n++] = (struct mv_bench_comparison){
        "compression ratio", "x", tmem_ratio(r), "lz4 loop (bytes only)",
        (double)r->pages * MV_PAGE_SIZE / (double)TM_MAX(r->lz4_bytes, 1), 0, 0 };
    if (r->zram) {
        c[n++] = (struct mv_bench_comparison){ "put throughput, CPU time", "GiB/s", put_cpu,
                                               "zram write, CPU time",
                                               gib_per_s(r->pages, r->zram_write_cpu_ns), 0, 0 };
        c[n++] = (struct mv_bench_comparison){ "get throughput, CPU time", "GiB/s", get_cpu,
                                               "zram read, CPU time",
                                               gib_per_s(r->pages, r->zram_read_cpu_ns), 0, 0 };
    }
    c[n++] = (struct mv_bench_comparison){ "put throughput, CPU time", "GiB/s", put_cpu,
                                           "lz4 compress loop, CPU time",
                                           gib_per_s(r->pages, r->lz4_comp_cpu_ns), 0, 0 };
    c[n++] = (struct mv_bench_comparison){ "get throughput, CPU time", "GiB/s", get_cpu,
                                           "lz4 decompress loop, CPU time",
                                           gib_per_s(r->pages, r->lz4_decomp_cpu_ns), 0, 0 };
    c[n++] = (struct mv_bench_comparison){ "paged fault, in the vCPU (median)", "ns",
                                           (double)r->paged_median, "kernel first touch",
                                           (double)r->kernel_median, 0, 0 };
    if (r->zram_swap)
        c[n++] = (struct mv_bench_comparison){ "paged fault, in the vCPU (median)", "ns",
                                               (double)r->paged_median, "zram swap-in",
                                               (double)r->swapin_median, 0, 0 };
    c[n++] = (struct mv_bench_comparison){ "paged fault, fault thread (median)", "ns",
                                           (double)r->paged_thread_median, "kernel first touch",
                                           (double)r->kernel_median, 0, 0 };
    if (r->zram_swap)
        c[n++] = (struct mv_bench_comparison){ "paged fault, fault thread (median)", "ns",
                                               (double)r->paged_thread_median, "zram swap-in",
                                               (double)r->swapin_median, 0, 0 };
    return n;
}

/* What the pages are, for both reports. */
static const char *pages_what(const struct tmem_run *r, char *buf, size_t size)
{
    if (!r->opt.image)
        return "one synthetic guest (guest_image.c, compressible contents: code, text, "
               "heap, zero)";
    snprintf(buf, size, "the RAM of a real guest: the first %" PRIu64
             " pages of the raw dump %s", r->pages, r->image->name);
    return buf;
}

static int report_json(struct tmem_run *r)
{
    struct json_object *root = mv_bench_json_root("tmem", &r->machine);
    struct json_object *p = json_object_new_object(), *raw = json_object_new_object();
    struct mv_bench_comparison c[24];
    size_t n = comparisons(r, c);
    char what[160];
    bool met;

    json_object_object_add(p, "size_mib", json_object_new_uint64(r->opt.size_mib));
    json_object_object_add(p, "rounds", json_object_new_uint64(r->opt.rounds));
    json_object_object_add(p, "rounds_what", json_object_new_string(
        "put/get, zram write/read and the lz4 loop, tmem first in even rounds and zram "
        "first in odd ones; each *_ns figure is the median of its rounds; *_cpu_ns is the "
        "process's CPU time over the same stretch (no goals)"));
    json_object_object_add(p, "pages", json_object_new_uint64(r->pages));
    json_object_object_add(p, "pages_what", json_object_new_string(pages_what(r, what,
                                                                                  sizeof(what))));
    json_object_object_add(p, "tmem_store", json_object_new_string(
        mv_tmem_store_name(r->opt.store)));
    json_object_object_add(p, "fault_pages",
                           json_object_new_uint64(TM_MIN(TMEM_FAULT_PAGES, r->pages)));
    json_object_object_add(root, "parameters", p);
    json_object_object_add(raw, "put_ns", json_object_new_uint64(r->put_ns));
    json_object_object_add(raw, "get_ns", json_object_new_uint64(r->get_ns));
    json_object_object_add(raw, "put_ns_rounds", rounds_json(r->round_put, r->opt.rounds));
    json_object_object_add(raw, "get_ns_rounds", rounds_json(r->round_get, r->opt.rounds));
    json_object_object_add(raw, "put_cpu_ns", json_object_new_uint64(r->put_cpu_ns));
    json_object_object_add(raw, "put_two_writers_ns", json_object_new_uint64(r->put2_ns));
    json_object_object_add(raw, "put_two_writers_ns_rounds",
                           rounds_json(r->round_put2, r->opt.rounds));
    json_object_object_add(raw, "get_cpu_ns", json_object_new_uint64(r->get_cpu_ns));
    json_object_object_add(raw, "put_cpu_ns_rounds", rounds_json(r->cpu_put, r->opt.rounds));
    json_object_object_add(raw, "get_cpu_ns_rounds", rounds_json(r->cpu_get, r->opt.rounds));
    json_object_object_add(raw, "tmem_store", json_object_new_string(mv_tmem_store_name(r->store)));
    json_object_object_add(raw, "tmem_store_mapped_ns", json_object_new_uint64(r->store_mapped_ns));
    json_object_object_add(raw, "tmem_store_copied_ns", json_object_new_uint64(r->store_copied_ns));
    json_object_object_add(raw, "tmem_read_aheads", json_object_new_uint64(r->read_aheads));
    json_object_object_add(raw, "tmem_read_ahead_hits", json_object_new_uint64(r->read_ahead_hits));
    json_object_object_add(raw, "tmem_read_aheads_scattered",
                           json_object_new_uint64(r->scattered_read_aheads));
    json_object_object_add(raw, "scattered_stride", json_object_new_uint64(r->stride));
    json_object_object_add(raw, "get_scattered_ns_rounds",
                           rounds_json(r->round_get_scattered, r->opt.rounds));
    json_object_object_add(raw, "zram_read_scattered_ns_rounds",
                           rounds_json(r->round_zram_read_scattered, r->opt.rounds));
    json_object_object_add(raw, "tmem_frames", json_object_new_uint64(r->frames));
    json_object_object_add(raw, "tmem_stored_bytes", json_object_new_uint64(r->stored_bytes));
    json_object_object_add(raw, "tmem_poor_compressions", json_object_new_uint64(r->poor));
    json_object_object_add(raw, "tmem_same_filled", json_object_new_uint64(r->same));
    json_object_object_add(raw, "lz4_compress_ns", json_object_new_uint64(r->lz4_comp_ns));
    json_object_object_add(raw, "lz4_decompress_ns", json_object_new_uint64(r->lz4_decomp_ns));
    json_object_object_add(raw, "lz4_compress_ns_rounds",
                           rounds_json(r->round_lz4_comp, r->opt.rounds));
    json_object_object_add(raw, "lz4_decompress_ns_rounds",
                           rounds_json(r->round_lz4_decomp, r->opt.rounds));
    json_object_object_add(raw, "lz4_compress_cpu_ns", json_object_new_uint64(r->lz4_comp_cpu_ns));
    json_object_object_add(raw, "lz4_decompress_cpu_ns",
                           json_object_new_uint64(r->lz4_decomp_cpu_ns));
    json_object_object_add(raw, "lz4_bytes", json_object_new_uint64(r->lz4_bytes));
    json_object_object_add(raw, "zram", json_object_new_boolean(r->zram));
    if (r->zram) {
        json_object_object_add(raw, "zram_write_ns", json_object_new_uint64(r->zram_write_ns));
        json_object_object_add(raw, "zram_write_two_writers_ns",
                               json_object_new_uint64(r->zram_write2_ns));
        json_object_object_add(raw, "zram_write_two_writers_ns_rounds",
                               rounds_json(r->round_zram_write2, r->opt.rounds));
        json_object_object_add(raw, "zram_read_ns", json_object_new_uint64(r->zram_read_ns));
        json_object_object_add(raw, "zram_write_ns_rounds",
                               rounds_json(r->round_zram_write, r->opt.rounds));
        json_object_object_add(raw, "zram_read_ns_rounds",
                               rounds_json(r->round_zram_read, r->opt.rounds));
        json_object_object_add(raw, "zram_write_cpu_ns",
                               json_object_new_uint64(r->zram_write_cpu_ns));
        json_object_object_add(raw, "zram_read_cpu_ns",
                               json_object_new_uint64(r->zram_read_cpu_ns));
        json_object_object_add(raw, "zram_write_cpu_ns_rounds",
                               rounds_json(r->cpu_zram_write, r->opt.rounds));
        json_object_object_add(raw, "zram_read_cpu_ns_rounds",
                               rounds_json(r->cpu_zram_read, r->opt.rounds));
        json_object_object_add(raw, "zram_orig_bytes", json_object_new_uint64(r->zram_orig));
        json_object_object_add(raw, "zram_compr_bytes", json_object_new_uint64(r->zram_compr));
        json_object_object_add(raw, "zram_mem_used", json_object_new_uint64(r->zram_used));
    } else {
        json_object_object_add(raw, "zram_not_measured", json_object_new_string(r->zram_why));
    }
    json_object_object_add(raw, "zswap", json_object_new_boolean(r->zswap));
    if (r->zswap) {
        json_object_object_add(raw, "zswap_compressor",
                               json_object_new_string(r->zswap_compressor));
        if (r->zswap_compressor_note[0])
            json_object_object_add(raw, "zswap_compressor_note",
                                   json_object_new_string(r->zswap_compressor_note));
        json_object_object_add(raw, "zswap_reclaim", json_object_new_string(
            "MADV_PAGEOUT by a child process over a swap file made for the run"));
        json_object_object_add(raw, "zswap_store_ns", json_object_new_uint64(r->zswap_store_ns));
        json_object_object_add(raw, "zswap_load_ns", json_object_new_uint64(r->zswap_load_ns));
        json_object_object_add(raw, "zswap_swapped_pages",
                               json_object_new_uint64(r->zswap_swapped));
        json_object_object_add(raw, "zswap_stored_pages", json_object_new_uint64(r->zswap_stored));
        json_object_object_add(raw, "zswap_stored_incompressible_pages",
                               json_object_new_uint64(r->zswap_incompressible));
        json_object_object_add(raw, "zswap_decompress_fail",
                               json_object_new_uint64(r->zswap_decompress_fail));
        json_object_object_add(raw, "zswap_zero_pages", json_object_new_uint64(r->zswap_zero));
        json_object_object_add(raw, "zswap_pool_total_size",
                               json_object_new_uint64(r->zswap_pool_bytes));
        json_object_object_add(raw, "zswap_written_back_pages",
                               json_object_new_uint64(r->zswap_written_back));
        json_object_object_add(raw, "zswap_rejected_pages",
                               json_object_new_uint64(r->zswap_rejected));
        json_object_object_add(raw, "zswap_pages_to_swap_file",
                               json_object_new_uint64(r->zswap_to_file));
        json_object_object_add(raw, "zswap_pages_left_swapped",
                               json_object_new_uint64(r->zswap_left_swapped));
    } else {
        json_object_object_add(raw, "zswap_not_measured", json_object_new_string(r->zswap_why));
    }
    json_object_object_add(raw, "evicted_frames", json_object_new_uint64(r->evicted_frames));
    json_object_object_add(raw, "evict_ns", json_object_new_uint64(r->evict_ns));
    json_object_object_add(raw, "relinquished_frames",
                           json_object_new_uint64(r->relinquished_frames));
    json_object_object_add(raw, "relinquish_ns", json_object_new_uint64(r->relinquish_ns));
    json_object_object_add(raw, "paged_fault_median_ns", json_object_new_uint64(r->paged_median));
    json_object_object_add(raw, "paged_fault_p99_ns", json_object_new_uint64(r->paged_p99));
    json_object_object_add(raw, "paged_fault_thread_median_ns",
                           json_object_new_uint64(r->paged_thread_median));
    json_object_object_add(raw, "paged_fault_thread_p99_ns",
                           json_object_new_uint64(r->paged_thread_p99));
    json_object_object_add(raw, "kernel_touch_median_ns", json_object_new_uint64(r->kernel_median));
    json_object_object_add(raw, "kernel_touch_p99_ns", json_object_new_uint64(r->kernel_p99));
    if (r->zram_swap) {
        json_object_object_add(raw, "zram_swapin_median_ns",
                               json_object_new_uint64(r->swapin_median));
        json_object_object_add(raw, "zram_swapin_p99_ns", json_object_new_uint64(r->swapin_p99));
        json_object_object_add(raw, "zram_swapped_pages", json_object_new_uint64(r->swapped_pages));
    } else {
        json_object_object_add(raw, "zram_swapin_not_measured",
                               json_object_new_string(r->zram_swap_why));
    }
    json_object_object_add(raw, "mismatched_pages", json_object_new_uint64(r->bad_pages));
    json_object_object_add(root, "raw", raw);
    met = mv_bench_comparisons_json(root, c, n, NULL);
    json_object_object_add(root, "goals_met", json_object_new_boolean(met));
    return mv_bench_json_emit(root);
}

static int report_text(struct tmem_run *r)
{
    struct mv_bench_comparison c[24];
    size_t n = comparisons(r, c);
    char what[160];

    printf("memvisor bench tmem: %" PRIu64 " pages (%" PRIu64 " MiB): %s; put/get, zram and "
           "the lz4 loop: median of %" PRIu64 " round%s\n", r->pages, r->opt.size_mib,
           pages_what(r, what, sizeof(what)), r->opt.rounds, r->opt.rounds == 1 ? "" : "s");
    mv_bench_machine_print(stdout, &r->machine);
    printf("\ntmem store: %s (asked: %s; a frame mapped %" PRIu64 " ns, copied "
           "%" PRIu64 " ns)", mv_tmem_store_name(r->store), mv_tmem_store_name(r->opt.store),
           r->store_mapped_ns, r->store_copied_ns);
    if (r->read_aheads)
        printf("; gets of the first round: %" PRIu64 " read-aheads, %" PRIu64
               " gets served from them; %" PRIu64 " read-aheads in scattered order",
               r->read_aheads, r->read_ahead_hits, r->scattered_read_aheads);
    printf("\ntmem: %" PRIu64 " frames for %" PRIu64 " pages (%" PRIu64 " same-filled, %"
           PRIu64 " stored raw); relinquish: evict_npages %" PRIu64 " frames in %.1f us, "
           "relinquish_pages %" PRIu64 " frames in %.1f us; mismatched pages %" PRIu64 "\n",
           r->frames, r->pages, r->same, r->poor, r->evicted_frames, r->evict_ns / 1e3,
           r->relinquished_frames, r->relinquish_ns / 1e3, r->bad_pages);
    if (!r->zram)
        printf("zram: not measured: %s\n", r->zram_why);
    if (!r->zram_swap)
        printf("zram swap-in: not measured: %s\n", r->zram_swap_why);
    if (r->zswap)
        printf("zswap: %s%s%s; %" PRIu64 " pages out by MADV_PAGEOUT: %" PRIu64 " stored (%" PRIu64
               " of them raw), %" PRIu64 " zero-filled, in %" PRIu64 " pool bytes; %" PRIu64 " rejected, %"
               PRIu64 " to the swap file, %" PRIu64 " written back\n\n", r->zswap_compressor,
               r->zswap_compressor_note[0] ? ": " : "", r->zswap_compressor_note,
               r->zswap_swapped, r->zswap_stored, r->zswap_incompressible, r->zswap_zero, r->zswap_pool_bytes,
               r->zswap_rejected, r->zswap_to_file, r->zswap_written_back);
    else
        printf("zswap: not measured: %s\n\n", r->zswap_why);
    mv_bench_comparisons_print(stdout, c, n);
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* ---- entry point ---- */

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor bench tmem [--json] [--size MIB] [--rounds N] [--image FILE]\n"
        "                           [--store auto|mapped|copied]\n"
        "\n"
        "Transcendent memory against zram, zswap and a plain lz4 loop on the same\n"
        "realistic guest pages: put/get throughput (puts and zram writes also from\n"
        "two writers at once), compression ratio, relinquish time, and the fault\n"
        "latency of a paged-out page against the kernel's first touch and a zram\n"
        "swap-in.  Uses /dev/zram0 when it is unused (root), resets it after; turns\n"
        "zswap on over a swap file in $TMPDIR (or /tmp) when it is off (root), and\n"
        "puts back every setting after.\n"
        "\n"
        "  --size MIB   guest pages to store (default %u, at most %u)\n"
        "  --image FILE the pages of a real guest instead of the synthetic one: a\n"
        "               raw RAM dump (byte i = guest-physical byte i), such as\n"
        "               scripts/guest-ram.sh leaves in build/vm/ram; all of it,\n"
        "               or its first --size MiB\n"
        "  --rounds N   times put/get, zram and the lz4 loop are measured, tmem\n"
        "               and zram taking turns to go first; medians are reported\n"
        "               (default %u, at most %u)\n"
        "  --store S    how tmem keeps its frames (mv_host_config.tmem_store):\n"
        "               auto (default: the library measures and chooses), mapped\n"
        "               or copied\n"
        "  --json       one JSON object on stdout\n"
        "  --help       this text\n", TMEM_DEFAULT_MIB, TMEM_MAX_MIB, TMEM_DEFAULT_ROUNDS,
        MV_BENCH_MAX_ROUNDS);
}

static int parse_option(int opt, const char *arg, void *ctx)
{
    struct tmem_options *o = ctx;

    if (opt == 's') {
        o->size_given = true;
        return mv_bench_parse_mib("tmem: --size", arg, TMEM_MAX_MIB, &o->size_mib);
    }
    if (opt == 'i')
        o->image = arg;
    if (opt == 'r')
        return mv_bench_parse_u64("tmem: --rounds", arg, 1, MV_BENCH_MAX_ROUNDS, &o->rounds);
    if (opt == 'S') {
        for (enum mv_tmem_store m = MV_TMEM_STORE_AUTO; m <= MV_TMEM_STORE_COPIED; m++) {
            if (strcmp(arg, mv_tmem_store_name(m)) == 0) {
                o->store = m;
                return MV_BENCH_OK;
            }
        }
        mv_bench_error("tmem: --store takes auto, mapped or copied, not '%s'", arg);
        return MV_BENCH_USAGE;
    }
    return MV_BENCH_OK;
}

static int parse_options(int argc, char **argv, void *arg, bool *help)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "size", required_argument, NULL, 's' },
        { "rounds", required_argument, NULL, 'r' },
        { "image", required_argument, NULL, 'i' },
        { "store", required_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct tmem_options *o = &((struct tmem_run *)arg)->opt;
    int rc;

    *o = (struct tmem_options){ .size_mib = TMEM_DEFAULT_MIB, .rounds = TMEM_DEFAULT_ROUNDS };
    rc = mv_bench_parse_options("tmem", argc, argv, options, parse_option, o, &o->json, help);
    return mv_bench_options_done("tmem", rc, argc, argv);
}

/* The pages of a real guest's RAM dump, all in memory before any timing:
 * a page read from the file for the first time would charge its page-cache
 * fault to whichever peer reads it first. */
static int load_image(struct tmem_run *run)
{
    uint64_t limit = (run->opt.size_given ? run->opt.size_mib : TMEM_MAX_MIB) *
                     (MV_BENCH_MIB / MV_PAGE_SIZE);
    volatile uint8_t sink = 0;
    int rc = guest_image_add_file(&run->set, run->opt.image);

    if (rc != MV_BENCH_OK)
        return rc;
    run->image = &run->set.images[0];
    run->pages = TM_MIN(run->image->pages, limit);
    if (run->opt.size_given && run->pages < limit) {
        mv_bench_error("tmem: %s holds %" PRIu64 " MiB, less than --size %" PRIu64,
                       run->opt.image, run->image->pages * MV_PAGE_SIZE / MV_BENCH_MIB,
                       run->opt.size_mib);
        return MV_BENCH_USAGE;
    }
    for (uint64_t i = 0; i < run->pages; i++)
        sink ^= guest_image_page(run->image, i)[0];
    (void)sink;
    run->opt.size_mib = (run->pages * MV_PAGE_SIZE + MV_BENCH_MIB - 1) / MV_BENCH_MIB;
    return MV_BENCH_OK;
}

static int run_suite(void *arg)
{
    struct tmem_run *run = arg;
    struct mv_kernel_features features;
    struct guest_image_params p;
    int rc = mv_bench_probe(&features, &run->machine);

    if (rc != MV_BENCH_OK)
        return rc;
    if (run->opt.image) {
        rc = load_image(run);
    } else {
        guest_image_params_init(&p);
        p.guests = 1;
        p.guest_mib = run->opt.size_mib;
        p.kernel_mib = TM_MIN(p.kernel_mib, run->opt.size_mib / 8);
        p.kernel_offset_mib = TM_MIN(p.kernel_offset_mib, run->opt.size_mib - p.kernel_mib);
        p.compressible = true;
        rc = guest_image_generate(&p, &run->set);
        run->image = &run->set.images[0];
        run->pages = run->image->pages;
    }
    if (rc != MV_BENCH_OK)
        return rc;
    run->stride = scattered_stride(run->pages);
    rc = measure_rounds(run);
    if (rc == MV_BENCH_OK) {
        measure_zswap(run);
        rc = measure_faults(run);
    }
    if (rc != MV_BENCH_OK)
        return rc;
    if (run->bad_pages) {
        mv_bench_error("tmem: %" PRIu64 " pages came back different", run->bad_pages);
        return MV_BENCH_FAILED;
    }
    return run->opt.json ? report_json(run) : report_text(run);
}

static void release(void *arg)
{
    struct tmem_run *run = arg;

    guest_image_set_free(&run->set);
}

int mv_bench_tmem(int argc, char **argv)
{
    static const struct mv_bench_suite suite = {
        .name = "tmem", .run_size = sizeof(struct tmem_run), .parse = parse_options,
        .usage = print_usage, .run = run_suite, .release = release,
    };

    return mv_bench_suite_main(&suite, argc, argv);
}
