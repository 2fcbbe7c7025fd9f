/*
 * pod.c - populate-on-demand (after Xen's p2m-pod.c).
 *
 * A domain boots "ballooned": maxmem pages of address space, every gfn a PoD
 * entry, nothing populated, and a target of pages it may have populated at
 * once.  A first touch of a PoD entry traps (MISSING fault) and is served
 * here by populating a zeroed page, or the whole 2 MiB block around it when
 * the block is all PoD and the budgets allow (one UFFDIO_ZEROPAGE maps 512
 * pages, so the guest takes one trap instead of 512).
 *
 * When the target (or the host budget) is exhausted, an emergency sweep
 * looks for populated pages that are all zero - a guest that scrubs its
 * memory at boot leaves plenty - and turns them back into PoD entries.  The
 * sweep is bounded (MV_SWEEP_SCAN_LIMIT pages per call, continuing from a
 * cursor), so a fault never costs O(maxmem).
 *
 * Reclaiming a page a vCPU may be writing at that instant is the delicate
 * part.  The sweep reads a 2 MiB block's populated frames with one pread
 * and checks each page, first words first (cheap, no side effects); only
 * pages that read as zero are zapped from the guest's page table, after
 * which any guest access traps (MINOR fault) and waits for the domain lock
 * the sweep holds.
 * Every store that completed before the zap is in the frame, so the full
 * check of a second read after the zap sees it: a zero page is punched out
 * (its memory goes back to the host, zeroed), a page with data is mapped
 * back at once (UFFDIO_CONTINUE).  Reading with pread rather than through
 * a mapping creates no page-table entries, which on a paravirtualized
 * machine cost a trap each to build and a TLB shootdown to tear down.
 *
 * In the faulting thread: a domain whose vCPUs resolve their own faults
 * (vcpu.c) calls the fast forms (pod_fault_fast, map_present_fast) from the
 * vCPU's SIGBUS handler.  They do only what a free page within the target
 * and the budget needs -- one ioctl, the p2m, the counters -- and answer
 * -EAGAIN for everything else, the faulting page left as it was (pages an
 * ioctl populated before it failed are kept, as pod_fault keeps them): a
 * sweep, the budget hooks, a failed ioctl's crash are the fault threads'
 * (the fault is handed to them and served by pod_fault as any other).
 * In the handler, a vCPU that faults on the page right after the last run it
 * populated is a sequential toucher, and its fault populates up to
 * pod_fault_around PoD pages from there (one ioctl for them all): on a
 * virtual machine the signal costs about as much as the page itself, so a
 * guest writing memory in order pays it once for several pages; a random
 * toucher gets only the page it touched.
 *
 * Invariants (checked by mv_domain_audit):
 *   0 <= populated <= target <= maxmem
 *   populated + pod + ballooned == maxmem
 *   a gfn is RAM  <=>  its frame holds memory in the machine memfd
 *
 * Locking: every function here runs with the domain lock held.
 */
#include "pod.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t frame_offset(struct mv_domain *d, uint64_t gfn)
{
    return (d->base_mfn + gfn) << MV_PAGE_SHIFT;
}

/* Charge `pages` to the domain's target and to the host budget; `fast`:
 * only if the budget has room now (no mechanism is asked for memory). */
static bool charge(struct mv_domain *d, uint64_t pages, bool fast)
{
    if (d->populated + pages > d->target_pages)
        return false;
    if (fast)
        return mv__machine_charge(&d->host->machine, pages);
    return mv__host_charge(d->host, d, pages);
}

/* First words only: rejects almost every page with data after one line. */
static bool cheap_zero(const uint8_t *page)
{
    const uint64_t *w = (const uint64_t *)page;

    return (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) == 0;
}

/* Give back memory the p2m does not account for (all PoD, content zero by
 * definition), so that a failed populate leaves no stray frame behind. */
static void discard_frames(struct mv_domain *d, uint64_t gfn, uint64_t pages)
{
    if (mv__machine_scrub(&d->host->machine, d->base_mfn + gfn, pages) < 0)
        mv__log(d->host, MV_LOG_ERROR, "domain %u: discarding gfn %#llx+%llu: %s",
                d->domid, (unsigned long long)gfn, (unsigned long long)pages,
                mv_last_error());
}

/*
 * Make room for `pages` more populated pages by sweeping for zero pages.
 * Sweeping only to keep a block whole is optional work: after a sweep that
 * found too little, skip such sweeps for the next MV_SWEEP_BACKOFF faults
 * rather than rescan memory full of data on every fault.
 */
static bool sweep_for(struct mv_domain *d, uint64_t pages, bool optional)
{
    struct mv_sweep_result res;

    if (optional && d->sweep_backoff) {
        d->sweep_backoff--;
        return false;
    }
    mv__pod_sweep(d, MV_SWEEP_SCAN_LIMIT, MV_MAX(pages, MV_SWEEP_RECLAIM_GOAL), &res);
    if (res.reclaimed < pages) {
        d->sweep_backoff = MV_SWEEP_BACKOFF;
        return false;
    }
    return charge(d, pages, false);
}

/* Whether a fault at gfn may populate its whole 2 MiB block. */
static bool block_applies(struct mv_domain *d, uint64_t gfn)
{
    uint64_t first = gfn & ~(uint64_t)(MV_BLOCK_PAGES - 1);

    return d->config.pod_block_populate && first + MV_BLOCK_PAGES <= d->maxmem_pages &&
           d->block_pod[first / MV_BLOCK_PAGES] == MV_BLOCK_PAGES &&
           !mv__domain_needs_small_pages(d);
}

/* Populate the whole 2 MiB block around gfn.  -EAGAIN: not possible now,
 * populate a single page instead. */
static int populate_block(struct mv_domain *d, uint64_t gfn)
{
    uint64_t first = gfn & ~(uint64_t)(MV_BLOCK_PAGES - 1), kept;
    size_t done;
    int rc;

    if (!block_applies(d, gfn))
        return -EAGAIN;
    if (!charge(d, MV_BLOCK_PAGES, false) && !sweep_for(d, MV_BLOCK_PAGES, true))
        return -EAGAIN;
    rc = mv__os_uffd_zeropage_some(d->uffd, mv__gfn_addr(d, first),
                                   (size_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT, &done);
    if (rc < 0) {
        /* Pages populated before the failure are mapped and their vCPUs
         * woken: they may hold guest writes, so they are the domain's now.
         * Only the rest goes back. */
        kept = done >> MV_PAGE_SHIFT;
        discard_frames(d, first + kept, MV_BLOCK_PAGES - kept);
        mv__machine_uncharge(&d->host->machine, MV_BLOCK_PAGES - kept);
        for (uint64_t i = 0; i < kept; i++)
            mv__p2m_set(d, first + i, MV_P2M_RAM);
        mv__domain_pages_changed(d, first, kept);
        d->populated_4k += kept;
        mv__log(d->host, MV_LOG_WARN, "domain %u: 2 MiB populate at gfn %#llx "
                "failed after %llu pages (%s); falling back to 4 KiB", d->domid,
                (unsigned long long)first, (unsigned long long)kept, mv_strerror(rc));
        return -EAGAIN;
    }
    for (uint64_t i = 0; i < MV_BLOCK_PAGES; i++)
        mv__p2m_set(d, first + i, MV_P2M_RAM);
    mv__domain_pages_changed(d, first, MV_BLOCK_PAGES);
    d->populated_2m++;
    return 0;
}

static int populate_page(struct mv_domain *d, uint64_t gfn)
{
    int rc;

    if (!charge(d, 1, false) && !sweep_for(d, 1, false))
        return -ENOMEM;
    rc = mv__os_uffd_zeropage(d->uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE);
    if (rc == -EEXIST) {
        /* A page is mapped under a PoD entry: the guest may have written
         * it, so it is never dropped.  It is the domain's page now, charged
         * as the populate it stands for; the p2m was what was wrong. */
        mv__log(d->host, MV_LOG_ERROR, "domain %u: PoD gfn %#llx already had a "
                "page; keeping it", d->domid, (unsigned long long)gfn);
        mv__p2m_set(d, gfn, MV_P2M_RAM);
        mv__domain_pages_changed(d, gfn, 1);
        return mv__fault_wake(d, false, gfn, 1);
    }
    if (rc < 0) {
        discard_frames(d, gfn, 1);
        mv__machine_uncharge(&d->host->machine, 1);
        if (rc == -ENOMEM)
            return rc;
        mv__domain_crash(d, "cannot populate gfn %#llx: %s",
                         (unsigned long long)gfn, mv_strerror(rc));
        return -EFAULT;
    }
    mv__p2m_set(d, gfn, MV_P2M_RAM);
    mv__domain_pages_changed(d, gfn, 1);
    d->populated_4k++;
    return 0;
}

/* A populated page trapped: the sweep zapped it, or another vCPU's fault on
 * the same page was served first.  Map it (or just wake). */
static int map_present(struct mv_domain *d, uint64_t gfn)
{
    int rc = mv__os_uffd_continue(d->uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE);

    if (rc == -EEXIST)
        return mv__fault_wake(d, false, gfn, 1);
    if (rc < 0) {
        mv__domain_crash(d, "cannot map populated gfn %#llx: %s",
                         (unsigned long long)gfn, mv_strerror(rc));
        return -EFAULT;
    }
    return 0;
}

/* map_present in the faulting thread: the page mapped, or there already. */
static int map_present_fast(struct mv_domain *d, uint64_t gfn)
{
    int rc = mv__os_uffd_continue(d->uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE);

    return rc == 0 || rc == -EEXIST ? 0 : -EAGAIN;
}

/*
 * Fault-around: where the calling vCPU's last populate in the faulting
 * thread ended.  A fault there is a sequential toucher's next page.  Only
 * the faulting thread's own faults use it (pod_fault_fast runs in it).
 */
static _Thread_local const struct mv_domain *stream_domain;
static _Thread_local uint64_t stream_next;

/* How many pages from gfn a fault populates: the run of PoD entries from
 * gfn, up to pod_fault_around pages for a sequential toucher, else 1. */
static uint64_t fault_around_pages(struct mv_domain *d, uint64_t gfn)
{
    uint64_t want = 1, n = 1;

    if (stream_domain == d && stream_next == gfn)
        want = MV_MIN(d->config.pod_fault_around, d->maxmem_pages - gfn);
    while (n < want && d->p2m[gfn + n] == MV_P2M_POD)
        n++;
    return n;
}

/* Populate [gfn, gfn + n) in the faulting thread, or as much of it from
 * gfn as the ioctl managed: 0, or -EAGAIN with nothing changed. */
static int populate_run_fast(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    size_t done;
    uint64_t kept;
    int rc;

    if (!charge(d, n, true) && (n == 1 || !charge(d, n = 1, true)))
        return -EAGAIN;
    rc = mv__os_uffd_zeropage_some(d->uffd, mv__gfn_addr(d, gfn),
                                   (size_t)n << MV_PAGE_SHIFT, &done);
    kept = rc < 0 ? done >> MV_PAGE_SHIFT : n;
    if (kept < n) {
        /* -EEXIST at gfn: a page is mapped there, which pod_fault keeps
         * and reports.  Past what was populated no stray frame may stay
         * behind. */
        if (!(rc == -EEXIST && kept == 0))
            discard_frames(d, gfn + kept, n - kept);
        mv__machine_uncharge(&d->host->machine, n - kept);
        if (kept == 0)
            return -EAGAIN;
    }
    for (uint64_t i = 0; i < kept; i++)
        mv__p2m_set(d, gfn + i, MV_P2M_RAM);
    mv__domain_pages_changed(d, gfn, kept);
    d->populated_4k += kept;
    stream_domain = d;
    stream_next = gfn + kept;
    return 0;
}

/*
 * pod_fault in the faulting thread: the page and, for a sequential toucher,
 * the pages after it (fault-around), only when they fit the target and the
 * budget as they are.  A run keeps what the ioctl populated; when the page
 * itself could not be, nothing changed, and pod_fault tries it again in a
 * fault thread.  A whole 2 MiB block is left to a fault thread too: its
 * ~0.6 ms of zeroing is the fault and the trap a rounding error, so the
 * vCPU's thread saves nothing, and populating blocks there measured a
 * worse p99 on a loaded machine (bench pod, pod-2m-vcpu against
 * pod-2m-sleep).
 */
static int pod_fault_fast(struct mv_domain *d, uint64_t gfn)
{
    int rc;

    if (block_applies(d, gfn))
        return -EAGAIN;
    rc = populate_run_fast(d, gfn, fault_around_pages(d, gfn));
    if (rc < 0)
        return rc;
    mv__domain_room_changed(d);
    return 0;
}

/* A PoD entry's first touch: populate its block, or the page. */
static int pod_fault(struct mv_domain *d, uint64_t gfn)
{
    int rc = populate_block(d, gfn);

    /* A block that failed half-way may have populated gfn already. */
    if (rc < 0)
        rc = d->p2m[gfn] == MV_P2M_RAM ? map_present(d, gfn) : populate_page(d, gfn);
    if (rc == 0)
        mv__domain_room_changed(d);
    return rc;
}

static int ballooned_fault(struct mv_domain *d, uint64_t gfn)
{
    mv__domain_crash(d, "guest touched gfn %#llx, which it had ballooned out",
                     (unsigned long long)gfn);
    return -EFAULT;
}

/* The domain is short of pages within its target: sweep for zero pages. */
static void pod_reclaim(struct mv_domain *d, uint64_t pages)
{
    struct mv_sweep_result res;

    mv__pod_sweep(d, MV_SWEEP_SCAN_LIMIT, MV_MAX(pages, MV_SWEEP_RECLAIM_GOAL), &res);
}

/* A RAM gfn's memory goes back; the gfn becomes `type`. */
static int ram_release(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type)
{
    int rc = mv__os_punch(d->host->machine.memfd, frame_offset(d, gfn),
                          MV_PAGE_SIZE);

    if (rc < 0)
        return rc;
    mv__p2m_set(d, gfn, type);
    mv__machine_uncharge(&d->host->machine, 1);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}

/* A gfn with no memory just changes type. */
static int empty_release(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type)
{
    mv__p2m_set(d, gfn, type);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}

static int ram_frame(struct mv_domain *d, uint64_t gfn, uint64_t *mfn)
{
    *mfn = d->base_mfn + gfn;
    return 0;
}

static int pod_frame(struct mv_domain *d, uint64_t gfn, uint64_t *mfn)
{
    (void)d;
    (void)gfn;
    *mfn = MV_NO_FRAME;
    return 0;
}

static int ballooned_frame(struct mv_domain *d, uint64_t gfn, uint64_t *mfn)
{
    (void)d;
    (void)gfn;
    (void)mfn;
    return -ENODATA;
}

#define MV_BLOCK_BYTES ((size_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT)

/*
 * Map zapped pages with data back now rather than let the guest take a trap
 * for each.  The mapping comes back writable, so report the pages to the
 * dirty log: over-reporting, never a lost write.
 */
static void remap_zapped(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    int rc;

    mv__domain_pages_changed(d, gfn, n);
    rc = mv__os_uffd_continue(d->uffd, mv__gfn_addr(d, gfn), n << MV_PAGE_SHIFT);
    if (rc < 0 && rc != -EEXIST)
        mv__log(d->host, MV_LOG_WARN, "domain %u: cannot remap gfn %#llx after "
                "the sweep (%s); it will trap once", d->domid,
                (unsigned long long)gfn, mv_strerror(rc));
}

/* One 2 MiB buffer per thread that sweeps, freed when the thread exits. */
static pthread_key_t sweep_buffer_key;
static pthread_once_t sweep_buffer_once = PTHREAD_ONCE_INIT;

static void make_sweep_buffer_key(void)
{
    pthread_key_create(&sweep_buffer_key, free);
}

static uint8_t *sweep_buffer(void)
{
    uint8_t *buf;

    pthread_once(&sweep_buffer_once, make_sweep_buffer_key);
    buf = pthread_getspecific(sweep_buffer_key);
    if (!buf) {
        buf = mv__aligned_alloc(MV_PAGE_SIZE, MV_BLOCK_BYTES);
        if (buf && pthread_setspecific(sweep_buffer_key, buf) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    return buf;
}

/*
 * [gfn, gfn + n) are RAM, passed the cheap check and are zapped from the
 * guest's page table; `pages` holds their bytes as read after the zap.
 * Punch out runs of zero pages, map the others back.  Returns pages
 * reclaimed.
 */
static uint64_t reclaim_zapped_run(struct mv_domain *d, uint64_t gfn, uint64_t n,
                                   const uint8_t *pages)
{
    uint64_t reclaimed = 0, i = 0;

    while (i < n) {
        uint64_t start = i;
        bool zero = mv__page_is_zero(pages + (i << MV_PAGE_SHIFT));
        int rc = 0;

        while (++i < n && mv__page_is_zero(pages + (i << MV_PAGE_SHIFT)) == zero)
            ;
        if (zero) {
            rc = mv__os_punch(d->host->machine.memfd, frame_offset(d, gfn + start),
                              (i - start) << MV_PAGE_SHIFT);
            if (rc == 0) {
                for (uint64_t j = start; j < i; j++)
                    mv__p2m_set(d, gfn + j, MV_P2M_POD);
                mv__machine_uncharge(&d->host->machine, i - start);
                mv__domain_pages_changed(d, gfn + start, i - start);
                reclaimed += i - start;
                continue;
            }
        }
        remap_zapped(d, gfn + start, i - start);
    }
    return reclaimed;
}

/* Sweep the RAM pages of one 2 MiB block [first, end).  Returns pages
 * reclaimed; adds the populated pages examined to *scanned. */
static uint64_t sweep_block(struct mv_domain *d, uint64_t first, uint64_t end,
                            uint8_t *buf, uint64_t *scanned)
{
    uint64_t lo = first, hi = end, reclaimed = 0, gfn;

    while (lo < hi && d->p2m[lo] != MV_P2M_RAM)
        lo++;
    while (hi > lo && d->p2m[hi - 1] != MV_P2M_RAM)
        hi--;
    if (lo == hi || mv__machine_read(&d->host->machine, d->base_mfn + lo, hi - lo, buf) < 0)
        return 0;
    for (gfn = lo; gfn < hi;) {
        uint64_t run = gfn;
        uint8_t *at = buf + ((gfn - lo) << MV_PAGE_SHIFT);

        /* A maximal run of populated pages that read as zero, first words
         * first: only these are worth unmapping for the check that counts. */
        while (run < hi && d->p2m[run] == MV_P2M_RAM &&
               cheap_zero(buf + ((run - lo) << MV_PAGE_SHIFT)) &&
               mv__page_is_zero(buf + ((run - lo) << MV_PAGE_SHIFT)) &&
               !mv__fault_just_woken(d, run))
            run++;
        if (run == gfn) {
            *scanned += d->p2m[gfn] == MV_P2M_RAM;
            gfn++;
            continue;
        }
        *scanned += run - gfn;
        if (mv__ram_zap(d, gfn, run - gfn) == 0) {
            if (mv__machine_read(&d->host->machine, d->base_mfn + gfn, run - gfn, at) == 0)
                reclaimed += reclaim_zapped_run(d, gfn, run - gfn, at);
            else
                remap_zapped(d, gfn, run - gfn);
        }
        gfn = run;
    }
    return reclaimed;
}

void mv__pod_sweep(struct mv_domain *d, uint64_t max_scan, uint64_t want,
                   struct mv_sweep_result *result)
{
    uint64_t start_ns = mv__now_ns(), visited = 0, scanned = 0, reclaimed = 0;
    uint64_t gfn = d->sweep_cursor;
    uint8_t *buf = sweep_buffer();

    mv__assert_held(&d->lock);
    memset(result, 0, sizeof(*result));
    if (!buf)
        mv__log(d->host, MV_LOG_ERROR, "domain %u: no memory for the sweep buffer",
                d->domid);
    while (buf && visited < d->maxmem_pages && scanned < max_scan &&
           reclaimed < want && d->populated > 0) {
        uint64_t end = MV_MIN((gfn | (MV_BLOCK_PAGES - 1)) + 1, d->maxmem_pages);

        visited += end - gfn;
        if (d->block_pod[gfn / MV_BLOCK_PAGES] < end - (gfn & ~(uint64_t)(MV_BLOCK_PAGES - 1)))
            reclaimed += sweep_block(d, gfn, end, buf, &scanned);
        gfn = end >= d->maxmem_pages ? 0 : end;
    }
    d->sweep_cursor = gfn;
    d->sweeps++;
    d->sweep_scanned += scanned;
    d->reclaimed_zero += reclaimed;
    result->scanned = scanned;
    result->reclaimed = reclaimed;
    result->elapsed_ns = mv__now_ns() - start_ns;
    if (reclaimed)
        mv__fault_kick(d->host);
}

int mv_domain_reclaim_zero(mv_host *host, uint32_t domid, uint64_t max_pages,
                           struct mv_sweep_result *result)
{
    struct mv_sweep_result local;
    struct mv_domain *d = mv__domain_get(host, domid);
    int rc = 0;

    if (!d)
        return -ESRCH;
    mv__mutex_lock(&d->lock);
    if (d->state == MV_DOMAIN_CRASHED)
        rc = mv__fail(-EPERM, "domain %u has crashed", domid);
    else
        mv__pod_sweep(d, max_pages ? max_pages : d->maxmem_pages, UINT64_MAX,
                      result ? result : &local);
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return rc;
}

int mv_domain_set_target(mv_host *host, uint32_t domid, uint64_t target_bytes)
{
    struct mv_sweep_result res;
    struct mv_domain *d;
    uint64_t target = target_bytes >> MV_PAGE_SHIFT;
    int rc = 0;

    mv__clear_error();
    if (target_bytes % MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "target %llu is not a multiple of the page size",
                        (unsigned long long)target_bytes);
    d = mv__domain_get(host, domid);
    if (!d)
        return -ESRCH;
    mv__mutex_lock(&d->lock);
    if (target > d->maxmem_pages) {
        rc = mv__fail(-EINVAL, "target %llu MiB exceeds maxmem %llu MiB",
                      (unsigned long long)(target_bytes / MV_MIB),
                      (unsigned long long)(d->maxmem_pages >> (20 - MV_PAGE_SHIFT)));
    } else if (d->state == MV_DOMAIN_CRASHED) {
        rc = mv__fail(-EPERM, "domain %u has crashed", domid);
    } else {
        if (target < d->populated)
            mv__pod_sweep(d, d->maxmem_pages, d->populated - target, &res);
        if (target < d->populated)
            rc = mv__fail(-EBUSY, "%llu pages hold data, more than the new target "
                          "of %llu; balloon the guest down first",
                          (unsigned long long)d->populated,
                          (unsigned long long)target);
        else
            d->target_pages = target;
        mv__domain_room_changed(d);
    }
    mv__mutex_unlock(&d->lock);
    if (rc == 0)
        mv__fault_kick(host);
    mv__domain_put(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* balloon: reservations                                                    */

/*
 * Check a gfn list before anything changes: every gfn inside maxmem, of the
 * type the operation needs (ballooned or not), and no gfn twice.
 */
static int validate_gfns(struct mv_domain *d, const uint64_t *gfns, size_t count,
                         bool want_ballooned)
{
    uint8_t *seen = mv__calloc((d->maxmem_pages + 7) / 8, 1);
    int rc = 0;

    if (!seen)
        return mv__fail(-ENOMEM, "no memory to check %zu gfns", count);
    for (size_t i = 0; i < count && rc == 0; i++) {
        uint64_t g = gfns[i];

        rc = mv__domain_check_gfn(d, g);
        if (rc < 0)
            break;
        if ((d->p2m[g] == MV_P2M_BALLOONED) != want_ballooned)
            rc = mv__fail(-EINVAL, "gfn %#llx is %s ballooned", (unsigned long long)g,
                          want_ballooned ? "not" : "already");
        else if (seen[g / 8] & (1u << (g % 8)))
            rc = mv__fail(-EINVAL, "gfn %#llx is listed twice", (unsigned long long)g);
        seen[g / 8] |= (uint8_t)(1u << (g % 8));
    }
    free(seen);
    return rc;
}

static int reservation_begin(mv_host *host, uint32_t domid, const uint64_t *gfns,
                             size_t count, struct mv_domain **out)
{
    mv__clear_error();
    if (count && !gfns)
        return mv__fail(-EINVAL, "gfn list is NULL");
    if (count > INT32_MAX)
        return mv__fail(-E2BIG, "%zu gfns in one call; at most %d", count, INT32_MAX);
    return mv__domain_lock_live(host, domid, out);
}

static void reservation_end(struct mv_domain *d)
{
    struct mv_host *h = d->host;

    mv__domain_unlock_put(d);
    mv__fault_kick(h);
}

int mv_domain_decrease_reservation(mv_host *host, uint32_t domid,
                                   const uint64_t *gfns, size_t count)
{
    struct mv_domain *d = NULL; /* set whenever reservation_begin succeeds */
    size_t done = 0;
    int rc = reservation_begin(host, domid, gfns, count, &d);

    if (rc < 0)
        return rc;
    rc = validate_gfns(d, gfns, count, false);
    for (; rc == 0 && done < count; done++) {
        /* The owner of the gfn's type gives its memory back. */
        rc = mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfns[done]])
                 ->release(d, gfns[done], MV_P2M_BALLOONED);
    }
    /* As Xen's hypercall: the gfns before the one that failed stay
     * released, and their number is the answer. */
    if (rc < 0 && done)
        rc = mv__fail(rc, "releasing gfn %#llx failed after %zu gfns: %s",
                      (unsigned long long)gfns[done - 1], done - 1, mv_strerror(rc));
    reservation_end(d);
    if (rc < 0)
        return done > 1 ? (int)(done - 1) : rc;
    return (int)count;
}

int mv_domain_increase_reservation(mv_host *host, uint32_t domid,
                                   const uint64_t *gfns, size_t count)
{
    struct mv_domain *d = NULL; /* set whenever reservation_begin succeeds */
    int rc = reservation_begin(host, domid, gfns, count, &d);

    if (rc < 0)
        return rc;
    rc = validate_gfns(d, gfns, count, true);
    for (size_t i = 0; rc == 0 && i < count; i++) {
        mv__p2m_set(d, gfns[i], MV_P2M_POD);
        mv__domain_pages_changed(d, gfns[i], 1);
    }
    reservation_end(d);
    return rc < 0 ? rc : (int)count;
}

int64_t mv_domain_discard(mv_host *host, uint32_t domid, uint64_t gfn, uint64_t count)
{
    struct mv_domain *d = NULL; /* set whenever reservation_begin succeeds */
    int64_t released = 0;
    int rc = reservation_begin(host, domid, NULL, 0, &d);

    if (rc < 0)
        return rc;
    if (gfn >= d->maxmem_pages || count > d->maxmem_pages - gfn)
        rc = mv__fail(-EINVAL, "gfn %#llx+%llu is outside the domain's %llu pages",
                      (unsigned long long)gfn, (unsigned long long)count,
                      (unsigned long long)d->maxmem_pages);
    for (uint64_t g = gfn; rc == 0 && g < gfn + count; g++) {
        enum mv__p2m_type type = (enum mv__p2m_type)d->p2m[g];

        if (type == MV_P2M_POD || type == MV_P2M_BALLOONED)
            continue;
        /* The owner of the gfn's type gives its memory back. */
        rc = mv__p2m_ops_of(type)->release(d, g, MV_P2M_POD);
        if (rc < 0)
            rc = mv__fail(rc, "discarding gfn %#llx failed after %lld pages: %s",
                          (unsigned long long)g, (long long)released, mv_strerror(rc));
        else
            released++;
    }
    if (released)
        mv__domain_room_changed(d);
    reservation_end(d);
    return rc < 0 ? rc : released;
}

/* ------------------------------------------------------------------------ */
/* what populate-on-demand plugs into the core                              */

static const struct mv__p2m_ops ram_ops = {
    .present = true, .fault = map_present, .fault_fast = map_present_fast,
    .release = ram_release, .frame = ram_frame,
};
static const struct mv__p2m_ops pod_ops = {
    .fault = pod_fault, .fault_fast = pod_fault_fast, .release = empty_release,
    .frame = pod_frame,
};
static const struct mv__p2m_ops ballooned_ops = {
    .fault = ballooned_fault, .release = empty_release, .frame = ballooned_frame,
};

const struct mv__mechanism mv__pod_mechanism = {
    .name = "populate-on-demand",
    .p2m_ops = {
        [MV_P2M_RAM] = &ram_ops,
        [MV_P2M_POD] = &pod_ops,
        [MV_P2M_BALLOONED] = &ballooned_ops,
    },
    .reclaim = pod_reclaim,
};
