/*
 * paging.c - host paging: overcommit with no guest cooperation.  Cold pages
 * of a domain are compressed into a persistent pool the host owns (client
 * TM_HOST_CLIENT, key: object {domid, gfn >> 32, 0}, index gfn), their
 * frames punched (their charge handed to tmem for the compressed copies,
 * what those do not need given back to the budget), and their p2m entries
 * typed MV_P2M_PAGED, a type tmem owns: a touch faults (the frame is a
 * hole), and the fault decompresses the page into its own frame and maps
 * it, transparently: in the faulting vCPU's own thread when it can (one
 * UFFDIO_COPY), else in a fault thread.
 *
 * Cold is judged from the page tables: a RAM page whose translation is not
 * present (PAGEMAP_SCAN, PAGE_IS_PRESENT, on the RAM's pagemap (ram.c); reading it on kernels
 * without it) was not touched since its translation was last zapped.  A
 * paging pass pages out such pages, then zaps the translations of the
 * other RAM pages ("ages" them) so that the next pass sees which of them
 * were touched meanwhile; a touched page only takes a minor fault that
 * maps it again.  An explicit page-out of N pages takes cold pages first,
 * then the aged ones in p2m order.
 *
 * The automatic mode (mv_tmem_auto_paging) runs a thread that pages out
 * cold pages of every domain, in proportion to their populated pages,
 * whenever the host's populated pages are above a high watermark of the
 * budget, down to a low one; a failing charge (the budget-short hook)
 * wakes it at once.
 *
 * A page-in in a vCPU's signal handler frees nothing: it leaves the
 * pool's copy of the page, and its key in tmem->flush_later, for tm_lock
 * to drop before anyone else works on tmem's state.
 *
 * Invariants: a PAGED gfn's frame holds no memory and the host pool holds
 * exactly one page under its key; once tm_lock has drained flush_later, a
 * RAM gfn has none (mv_tmem_audit counts them against every domain's
 * paged counter).
 *
 * Locking: page-out and page-in run with the domain lock held and take the
 * tmem lock inside it (domain < tmem); the thread takes one domain lock at
 * a time, and its own sleep mutex (not level-checked) only while holding
 * nothing else.
 */
#include "tmem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void key_from(uint32_t domid, uint64_t gfn, uint64_t oid[3], uint32_t *index)
{
    oid[0] = domid;
    oid[1] = gfn >> 32;
    oid[2] = 0;
    *index = (uint32_t)gfn;
}

static void key_of(const struct mv_domain *d, uint64_t gfn, uint64_t oid[3], uint32_t *index)
{
    key_from(d->domid, gfn, oid, index);
}

void tm_lock(struct mv__tmem *t)
{
    uint64_t oid[3];
    uint32_t index;

    mv__mutex_lock(&t->lock);
    for (unsigned i = 0; i < t->flush_later_count; i++) {
        key_from(t->flush_later[i].domid, t->flush_later[i].gfn, oid, &index);
        if (t->paging_pool)
            tm_flush(t, t->paging_pool, oid, index);
    }
    t->flush_later_count = 0;
}

/* The host's pool, made at the first page-out (tmem lock held). */
static int host_pool(struct mv__tmem *t, struct tm_pool **out)
{
    int rc;

    if (!t->paging_client) {
        t->paging_client = tm_client_get(t, TM_HOST_CLIENT, UINT64_MAX);
        if (!t->paging_client)
            return -ENOMEM;
    }
    if (!t->paging_pool) {
        rc = tm_pool_create(t, TM_HOST_CLIENT, MV_TMEM_PERSISTENT, NULL, &t->paging_pool);
        if (rc < 0)
            return rc;
    }
    *out = t->paging_pool;
    return 0;
}

/* ---- the p2m type ---- */

/* Take gfn's bytes out of the host pool into its frame, which is charged
 * already (domain lock held, tmem lock taken here), and count the page-in
 * (its time from `start`).
 * With `map`, one UFFDIO_COPY fills the frame, maps it and wakes the
 * faulting thread (*mapped); when it cannot (the mappings are changing), or
 * without `map`, the frame is written instead.  `in_handler`: a vCPU's own
 * fault from its signal handler, which frees nothing and waits for no
 * flush: the copy or nothing (-EAGAIN), and the pool's copy of the page is
 * dropped by the next tm_lock (-EAGAIN as well when too many wait).  The
 * pool's copy goes only once the page is in its frame: 0, or a negative
 * errno with the pool as it was (-ENODATA: no copy). */
static int page_restore(struct mv_domain *d, uint64_t gfn, bool map, bool in_handler,
                        uint64_t start, bool *mapped)
{
    struct mv__tmem *t = tm_of(d->host);
    uint8_t buf[MV_PAGE_SIZE];
    bool looked = false, found = false;
    uint64_t oid[3];
    uint32_t index;
    int rc;

    *mapped = false;
    key_of(d, gfn, oid, &index);
    if (in_handler)
        mv__mutex_lock(&t->lock);
    else
        tm_lock(t);
    if (in_handler && t->flush_later_count == TM_FLUSH_LATER_MAX) {
        rc = -EAGAIN;
    } else {
        /* The host pool is persistent: a get only counts, which is done
         * below, once it is known whether this one is handed on. */
        looked = t->paging_pool != NULL;
        rc = looked ? tm_peek(t, t->paging_pool, oid, index, buf, NULL) : 0;
        found = rc == 1;
    }
    if (rc == 0)
        rc = -ENODATA;
    if (rc == 1 && map && mv__os_uffd_copy(d->uffd, mv__gfn_addr(d, gfn), buf, false) == 0) {
        *mapped = true;
        rc = 0;
    }
    if (rc != 0 && in_handler)
        rc = -EAGAIN; /* handed on: the fault thread's get is the one that counts */
    else if (looked)
        tm_count_get(t->paging_client, t->paging_pool, found);
    if (rc == 1)
        rc = mv__os_write(d->host->machine.memfd, buf, (d->base_mfn + gfn) << MV_PAGE_SHIFT,
                          MV_PAGE_SIZE);
    if (rc == 0) {
        if (in_handler)
            t->flush_later[t->flush_later_count++] =
                (struct tm_flush_later){ .domid = d->domid, .gfn = gfn };
        else
            tm_flush(t, t->paging_pool, oid, index);
        t->page_ins++;
        t->paged_now--;
        t->page_in_ns += mv__now_ns() - start;
    }
    mv__mutex_unlock(&t->lock);
    return rc;
}

/* Bring gfn back into its own frame (domain lock held), mapped with `map`:
 * 0, -ENOMEM (no memory now: nothing changed) or -EFAULT (crashed). */
static int page_in(struct mv_domain *d, uint64_t gfn, bool map)
{
    uint64_t start = mv__now_ns();
    bool mapped;
    int rc;

    if (!mv__domain_claim(d, 1, true))
        return -ENOMEM;
    rc = page_restore(d, gfn, map, false, start, &mapped);
    if (rc < 0) {
        mv__machine_uncharge(&d->host->machine, 1);
        mv__domain_crash(d, "cannot page gfn %#llx back in: %s", (unsigned long long)gfn,
                         mv_strerror(rc));
        return -EFAULT;
    }
    mv__p2m_set(d, gfn, MV_P2M_RAM);
    if (map && !mapped) {
        rc = mv__os_uffd_continue(d->uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE);
        if (rc == -EEXIST)
            rc = mv__fault_wake(d, false, gfn, 1);
        else if (rc < 0)
            mv__log(d->host, MV_LOG_WARN, "domain %u: gfn %#llx paged in but not "
                    "mapped (%s): it traps once more", d->domid,
                    (unsigned long long)gfn, mv_strerror(rc));
    }
    mv__domain_pages_changed(d, gfn, 1);
    return rc == -EFAULT ? -EFAULT : 0;
}

static int paged_fault(struct mv_domain *d, uint64_t gfn)
{
    return page_in(d, gfn, true);
}

/* paged_fault in the faulting vCPU's own thread (vcpu.c): only when the
 * page fits the domain's target, the budget has room to spare (more than
 * 1/TM_FAST_HEADROOM of it), and one UFFDIO_COPY maps it.  Else -EAGAIN
 * with nothing changed, and paged_fault serves it in a fault thread
 * (reclaim, waits, a crash and its message).  Short of memory, page-ins
 * thus go at the fault threads' pace, with the faults waiting there: taken
 * in the vCPUs' threads, as fast as the vCPUs could touch pages, they
 * outran host paging under a budget far below demand, and a fault waiting
 * for memory timed out (test_tmem's pressure test, one run in 20).
 * Takes the tmem lock (above the domain lock; a vCPU in its handler holds
 * no library lock) and neither allocates nor frees. */
static int paged_fault_fast(struct mv_domain *d, uint64_t gfn)
{
    struct mv__machine *m = &d->host->machine;
    uint64_t start, budget = atomic_load(&m->budget_pages);
    bool mapped;

    if (d->populated + 1 > d->target_pages ||
        atomic_load(&m->populated_pages) + 1 + budget / TM_FAST_HEADROOM > budget ||
        !mv__machine_charge(m, 1))
        return -EAGAIN;
    start = mv__now_ns();
    if (page_restore(d, gfn, true, true, start, &mapped) < 0) {
        mv__machine_uncharge(m, 1);
        return -EAGAIN;
    }
    mv__p2m_set(d, gfn, MV_P2M_RAM);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}

static int paged_release(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type)
{
    struct mv__tmem *t = tm_of(d->host);
    uint64_t oid[3];
    uint32_t index;

    key_of(d, gfn, oid, &index);
    tm_lock(t);
    if (t->paging_pool && tm_flush(t, t->paging_pool, oid, index))
        t->paged_now--;
    mv__mutex_unlock(&t->lock);
    mv__p2m_set(d, gfn, type);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}

static int paged_frame(struct mv_domain *d, uint64_t gfn, uint64_t *mfn)
{
    (void)gfn;
    (void)mfn;
    return d->state == MV_DOMAIN_CRASHED ? -EFAULT : -ENODATA;
}

static int paged_read(struct mv_domain *d, uint64_t gfn, void *buf)
{
    struct mv__tmem *t = tm_of(d->host);
    uint64_t oid[3];
    uint32_t index;
    int rc;

    key_of(d, gfn, oid, &index);
    tm_lock(t);
    rc = t->paging_pool ? tm_get(t, t->paging_client, t->paging_pool, oid, index, buf, true)
                        : 0;
    mv__mutex_unlock(&t->lock);
    if (rc == 0)
        rc = mv__fail(-EUCLEAN, "domain %u gfn %#llx is paged but tmem has no copy",
                      d->domid, (unsigned long long)gfn);
    return rc < 0 ? rc : 0;
}

const struct mv__p2m_ops mv__tmem_paged_ops = {
    .fault = paged_fault,
    .fault_fast = paged_fault_fast,
    .release = paged_release,
    .frame = paged_frame,
    .read = paged_read,
};

/* ---- page-out ---- */

/* Up to this many pages are paged out together: their frames are released
 * first, so that a new zspage (at most TM_ZSPAGE_MAX_FRAMES frames) can be
 * had even when the budget is exhausted. */
#define TM_PAGE_OUT_BATCH TM_ZSPAGE_MAX_FRAMES

/* A batch's pages and their compressed copies (made before the tmem lock),
 * on the heap: 60 KiB is too much for a caller's stack. */
struct page_out_scratch {
    uint8_t page[TM_PAGE_OUT_BATCH][MV_PAGE_SIZE];
    struct tm_prepared prep[TM_PAGE_OUT_BATCH];
};

/* Page out the RAM gfns[0..n) (domain lock held): each is zapped, read and
 * its frame released, then stored in the host pool; a page tmem cannot take
 * goes back into its frame.  Returns how many were paged out, or a
 * negative errno when none was. */
static int page_out_batch(struct mv_domain *d, const uint64_t *gfns, unsigned n,
                          struct page_out_scratch *s)
{
    struct mv__tmem *t = tm_of(d->host);
    struct mv__machine *m = &d->host->machine;
    uint8_t (*buf)[MV_PAGE_SIZE] = s->page;
    bool stored[TM_PAGE_OUT_BATCH] = { false };
    struct tm_pool *pool = NULL; /* set by host_pool (gcc -Os cannot tell) */
    unsigned taken = 0, done = 0;
    uint64_t left;
    int rc = 0;

    for (; taken < n; taken++) {
        uint64_t gfn = gfns[taken];
        const char *step = "unmap";

        rc = mv__ram_zap(d, gfn, 1);
        if (rc == 0) {
            step = "read";
            rc = mv__machine_read(m, d->base_mfn + gfn, 1, buf[taken]);
        }
        /* The guest's frame goes first, so that tmem has its memory for the
         * compressed copy even when the budget is exhausted (its charge is
         * handed over below).  A page whose punch fails is still in the
         * page cache: its next touch maps it. */
        if (rc == 0) {
            step = "release the frame of";
            rc = mv__os_punch(m->memfd, (d->base_mfn + gfn) << MV_PAGE_SHIFT, MV_PAGE_SIZE);
        }
        if (rc < 0 && taken == 0)
            return mv__fail(rc, "tmem: cannot %s gfn %#llx of domain %u to page it out: %s",
                            step, (unsigned long long)gfn, d->domid, mv_strerror(rc));
        if (rc < 0)
            break;
    }
    for (unsigned i = 0; i < taken; i++)
        tm_prepare_page(buf[i], &s->prep[i]);
    /* The frames' charge passes to tmem for the compressed copies rather
     * than back to the budget, where a fault of another domain could take
     * it first: the store would then fail, and the pages go back over the
     * budget. */
    mv__machine_move_begin(m);
    tm_lock(t);
    t->handed_over = taken;
    rc = host_pool(t, &pool);
    for (unsigned i = 0; rc == 0 && i < taken; i++) {
        uint64_t oid[3];
        uint32_t index;
        int r;

        key_of(d, gfns[i], oid, &index);
        r = tm_put(t, t->paging_client, pool, oid, index, buf[i], &s->prep[i]);
        stored[i] = r == 1;
        if (r == 1) {
            t->paged_now++;
            t->page_outs++;
            done++;
        } else {
            rc = r < 0 ? r : -ENOMEM;
        }
    }
    left = t->handed_over;
    t->handed_over = 0;
    mv__mutex_unlock(&t->lock);
    /* What tmem did not use pays for the pages that go back; the rest goes
     * back to the budget. */
    if (left > taken - done)
        mv__machine_uncharge(m, left - (taken - done));
    else if (left < taken - done)
        mv__machine_charge_anyway(m, taken - done - left);
    for (unsigned i = 0; i < taken; i++) {
        uint64_t gfn = gfns[i];

        if (stored[i]) {
            mv__p2m_set(d, gfn, MV_P2M_PAGED);
            mv__domain_pages_changed(d, gfn, 1);
            continue;
        }
        /* No room in tmem: the page goes back where it was, at once (its
         * charge held, above).  A page that cannot crashes the domain, and
         * stays counted as RAM until the domain goes. */
        if (rc != -EFAULT &&
            mv__os_write(m->memfd, buf[i], (d->base_mfn + gfn) << MV_PAGE_SHIFT,
                         MV_PAGE_SIZE) < 0) {
            mv__domain_crash(d, "cannot put gfn %#llx back after a failed page-out",
                             (unsigned long long)gfn);
            rc = -EFAULT;
        }
    }
    mv__machine_move_end(m);
    if (rc == -EFAULT)
        return rc;
    return done ? (int)done : rc < 0 ? rc : -ENOMEM;
}

/* present[g] = 1 when gfn g's translation is present (domain lock held). */
static int scan_present(struct mv__tmem *t, struct mv_domain *d, uint8_t *present)
{
    uint64_t start = (uintptr_t)d->ram;

    if (t->pagemap_scan) {
        int rc = mv__ram_scan_pages(d, 0, d->maxmem_pages, PAGE_IS_PRESENT, present);

        return rc < 0 ? mv__fail(rc, "tmem: PAGEMAP_SCAN of domain %u failed", d->domid) : 0;
    }
    for (uint64_t g = 0; g < d->maxmem_pages; g += 512) {
        uint64_t e[512];
        uint64_t n = MV_MIN(512, d->maxmem_pages - g);
        ssize_t got = pread(mv__ram_pagemap_fd(d), e, n * 8, (off_t)((start >> MV_PAGE_SHIFT) + g) * 8);

        if (got != (ssize_t)(n * 8))
            return mv__fail(-EIO, "tmem: reading the pagemap failed");
        for (uint64_t i = 0; i < n; i++)
            present[g + i] = (uint8_t)(e[i] >> 63);
    }
    return 0;
}

/* Unmap the populated pages found present (touched since the last pass),
 * by runs: a page found absent next time was not touched in between. */
static void age_present(struct mv_domain *d, const uint8_t *present)
{
    for (uint64_t g = 0; g < d->maxmem_pages;) {
        uint64_t run = g;

        while (run < d->maxmem_pages && d->p2m[run] == MV_P2M_RAM && present[run])
            run++;
        if (run > g) {
            (void)mv__ram_zap(d, g, run - g);
            g = run;
        } else {
            g++;
        }
    }
}

/* Page out up to `want` pages of d, cold ones first; with `force`, aged
 * ones too (domain lock held, domain not crashed).  Returns pages paged
 * out or a negative errno. */
static int64_t page_out(struct mv_domain *d, uint64_t want, bool force)
{
    struct mv__tmem *t = tm_of(d->host);
    uint8_t *present = mv__malloc(d->maxmem_pages);
    struct page_out_scratch *scratch = mv__malloc(sizeof(*scratch));
    uint64_t done = 0, g, batch[TM_PAGE_OUT_BATCH];
    unsigned n = 0;
    int rc;

    if (!present || !scratch) {
        free(present);
        free(scratch);
        return mv__fail(-ENOMEM, "tmem: no memory to scan domain %u", d->domid);
    }
    rc = scan_present(t, d, present);
    /* Cold pages first; with `force`, then the others in p2m order (they
     * are aged below first, so all are unmapped by then). */
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        if (pass == 1) {
            if (!force)
                break;
            /* Age the pages left: the next pass knows which were touched. */
            age_present(d, present);
        }
        for (g = 0; rc == 0 && g <= d->maxmem_pages && done < want; g++) {
            bool last = g == d->maxmem_pages;

            if (!last && (d->p2m[g] != MV_P2M_RAM || (pass == 0 && present[g])))
                continue;
            if (!last)
                batch[n++] = g;
            if (n && (n == TM_PAGE_OUT_BATCH || last || done + n >= want)) {
                int r = page_out_batch(d, batch, n, scratch);

                if (r > 0)
                    done += (uint64_t)r;
                else
                    rc = r;
                n = 0;
            }
        }
    }
    /* Without `force`, age the pages left for the next pass. */
    if (!force)
        age_present(d, present);
    free(present);
    free(scratch);
    if (done)
        mv__fault_kick(d->host);
    if (rc < 0 && done == 0)
        return rc;
    return (int64_t)done;
}

int64_t mv_tmem_page_out(mv_host *h, uint32_t domid, uint64_t pages)
{
    struct mv_domain *d;
    int64_t rc;
    int r;

    mv__clear_error();
    r = mv__domain_lock_live(h, domid, &d);
    if (r < 0)
        return r;
    rc = page_out(d, pages, true);
    mv__domain_unlock_put(d);
    return rc;
}

/* ---- the automatic mode ---- */

static void auto_pass(struct mv__tmem *t)
{
    struct mv_host *h = t->host;
    uint64_t budget = atomic_load(&h->machine.budget_pages);
    uint64_t populated = atomic_load(&h->machine.populated_pages);
    uint64_t high = budget / 100 * t->auto_high, low = budget / 100 * t->auto_low;
    uint64_t total = 0, need;
    struct mv_domain **all;
    size_t n;

    if (populated <= high && !atomic_exchange(&t->auto_urgent, false))
        return;
    need = populated > low ? populated - low : 1;
    if (mv__domain_get_all(h, &all, &n) < 0) {
        /* The next period looks again, and a fault that waits wakes it. */
        mv__log(h, MV_LOG_WARN, "tmem paging: %s; nothing paged out this pass",
                mv_last_error());
        return;
    }
    for (size_t i = 0; i < n; i++) {
        mv__mutex_lock(&all[i]->lock);
        total += all[i]->populated;
        mv__mutex_unlock(&all[i]->lock);
    }
    for (size_t i = 0; i < n; i++) {
        struct mv_domain *d = all[i];
        uint64_t share;

        mv__mutex_lock(&d->lock);
        share = total ? need * d->populated / total + 1 : need;
        if (d->state != MV_DOMAIN_CRASHED && !atomic_load(&d->dying)) {
            int64_t done = page_out(d, share, false);

            if (done > 0) {
                tm_lock(t);
                t->auto_paged += (uint64_t)done;
                mv__mutex_unlock(&t->lock);
            }
        }
        mv__mutex_unlock(&d->lock);
        mv__domain_put(d);
    }
    free(all);
}

static void *auto_thread(void *arg)
{
    struct mv__tmem *t = arg;

    pthread_mutex_lock(&t->auto_lock);
    while (!t->auto_stop) {
        struct timespec ts;

        pthread_mutex_unlock(&t->auto_lock);
        auto_pass(t);
        pthread_mutex_lock(&t->auto_lock);
        if (t->auto_stop)
            break;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)t->auto_period_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        if (!atomic_load(&t->auto_urgent))
            pthread_cond_timedwait(&t->auto_cond, &t->auto_lock, &ts);
    }
    pthread_mutex_unlock(&t->auto_lock);
    return NULL;
}

void tm_paging_wake(struct mv__tmem *t)
{
    if (!atomic_load(&t->auto_running))
        return;
    atomic_store(&t->auto_urgent, true);
    pthread_mutex_lock(&t->auto_lock);
    pthread_cond_signal(&t->auto_cond);
    pthread_mutex_unlock(&t->auto_lock);
}

int mv_tmem_auto_paging(mv_host *h, unsigned high_pct, unsigned low_pct)
{
    struct mv__tmem *t = tm_of(h);
    pthread_condattr_t attr;
    int rc = 0;

    mv__clear_error();
    if (high_pct && (high_pct > 100 || low_pct >= high_pct))
        return mv__fail(-EINVAL, "tmem: watermarks must be 0 < low %u < high %u <= 100",
                        low_pct, high_pct);
    pthread_mutex_lock(&t->auto_ctl);
    if (t->auto_running) {
        pthread_mutex_lock(&t->auto_lock);
        t->auto_stop = true;
        pthread_cond_signal(&t->auto_cond);
        pthread_mutex_unlock(&t->auto_lock);
        pthread_join(t->auto_thread, NULL);
        t->auto_running = false;
        pthread_cond_destroy(&t->auto_cond);
    }
    t->auto_high = high_pct;
    t->auto_low = low_pct;
    if (high_pct) {
        t->auto_stop = false;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&t->auto_cond, &attr);
        pthread_condattr_destroy(&attr);
        if ((rc = mv__os_thread_start(&t->auto_thread, NULL, auto_thread, t)) < 0) {
            pthread_cond_destroy(&t->auto_cond);
            rc = mv__fail(rc, "tmem: cannot start the paging thread: %s", mv_strerror(rc));
        } else {
            t->auto_running = true;
        }
    }
    pthread_mutex_unlock(&t->auto_ctl);
    return rc;
}

/* ---- life cycle ---- */

int tm_paging_init(struct mv__tmem *t)
{
    t->pagemap_scan = t->host->features.pagemap_scan;
    t->auto_period_ms = 50;
    pthread_mutex_init(&t->auto_lock, NULL);
    pthread_mutex_init(&t->auto_ctl, NULL);
    return 0;
}

void tm_paging_stop(struct mv__tmem *t)
{
    if (t->auto_running)
        (void)mv_tmem_auto_paging(t->host, 0, 0);
}

void tm_paging_fini(struct mv__tmem *t)
{
    tm_paging_stop(t);
    pthread_mutex_destroy(&t->auto_lock);
    pthread_mutex_destroy(&t->auto_ctl);
}

/* The domain is gone: its paged pages with it (tmem lock held). */
void tm_paging_domain_gone(struct mv__tmem *t, uint32_t domid)
{
    struct tm_pool *pool = t->paging_pool;
    struct tm_list *e, *next;

    if (!pool)
        return;
    for (e = pool->objects.next; e != &pool->objects; e = next) {
        struct tm_object *o = tm_container(e, struct tm_object, link);

        next = e->next;
        if (o->oid[0] != domid)
            continue;
        /* Freeing the last page frees the object: step past it first. */
        while (o->npages) {
            struct tm_page *pg = NULL;

            for (size_t b = 0; !pg && b < o->nbuckets; b++)
                pg = o->pages[b];
            t->paged_now--;
            if (o->npages == 1) {
                tm_page_free(t, pg);
                break;
            }
            tm_page_free(t, pg);
        }
    }
}

/* Every domain's paged count against the host pool (tmem lock held; the
 * domain counters are read racily, so only a quiet host is checked). */
int tm_paging_audit(struct mv__tmem *t)
{
    uint64_t pages = t->paging_pool ? t->paging_pool->c.pages : 0;

    if (pages != t->paged_now)
        return mv__fail(-EUCLEAN, "tmem: the host pool holds %llu paged pages, %llu "
                        "are counted", (unsigned long long)pages,
                        (unsigned long long)t->paged_now);
    return 0;
}
