/*
 * settle.c - kernel copies (MV_COW_KERNEL domains): the reasons their
 * shared gfns trap (paused, dirty log on, memory short), settling the copies
 * the kernel made into own frames, and the settler thread that does so every
 * cow_settle_ms.  Settling also runs on every call that looks at such a gfn,
 * on pause, and before stats and audits.
 *
 * Invariants:
 *   trap_reasons == 0  <=>  the domain's shared gfns are not write-protected;
 *   the kernel copies only while d.shared <= target room (check_room): a
 *   domain never holds more memory than its target;
 *   a gfn whose copy is not settled is SHARED in the p2m, its bytes the
 *   copy's.
 *
 * Locking: a domain's lock for everything on it (the chunked settle takes it
 * a chunk at a time); the share lock inside, for counters; the settler holds
 * settler_lock only while it sleeps.  The settler thread is named
 * MV__SETTLER_NAME ("memvisor-settle").
 */
#include "share.h"

/*
 * An MV_COW_KERNEL domain's shared gfns are mapped without write protection
 * while no trap reason holds: a write makes the kernel copy the frame into
 * an anonymous page of the mapping (MAP_PRIVATE), and the writer goes on.
 * Settling turns such a copy into what a trapped break would have made: it
 * write-protects the copy (later writes trap and wait for the domain lock),
 * claims a page as a break does (a takeover when the gfn held the frame's
 * last mapping), writes the copy's bytes into the gfn's own frame, maps the
 * own frame and drops the gfn from its frame's reverse map.  A gfn whose
 * copy is not settled yet is SHARED in the p2m and its bytes are the copy's:
 * every path that reads or remaps a shared gfn settles it first.
 */

/* Write-protect, or not, the shared gfns of [gfn, gfn + n) through the CoW
 * userfaultfd (domain lock held). */
static int protect_shared(struct mv_domain *d, uint64_t gfn, uint64_t n, bool protect)
{
    uint64_t end = gfn + n;

    for (uint64_t g = gfn; g < end && d->shared;) {
        uint64_t k = 0;
        int rc;

        if (d->p2m[g] != MV_P2M_SHARED) {
            g++;
            continue;
        }
        while (g + k < end && d->p2m[g + k] == MV_P2M_SHARED)
            k++;
        rc = mv__os_uffd_writeprotect(d->cow_uffd, mv__gfn_addr(d, g),
                                      k << MV_PAGE_SHIFT, protect);
        if (rc < 0)
            return mv__fail(rc, "domain %u: cannot %s shared gfn %#llx+%llu: %s",
                            d->domid, protect ? "write-protect" : "unprotect",
                            (unsigned long long)g, (unsigned long long)k, mv_strerror(rc));
        g += k;
    }
    return 0;
}

/* Set or clear a reason for d's shared gfns to trap (domain lock held): they
 * are write-protected when the first reason comes and unprotected when the
 * last one goes. */
int share_cow_trap(struct mv_domain *d, unsigned reason, bool on)
{
    struct mv__share_dom *sd = d->share;
    bool was = kernel_copies_on(d);

    if (on)
        sd->trap_reasons |= reason;
    else
        sd->trap_reasons &= ~reason;
    if (was == kernel_copies_on(d))
        return 0;
    return protect_shared(d, 0, d->maxmem_pages, was);
}

/* Pages d's target still has room for (domain lock held). */
static uint64_t target_room(struct mv_domain *d)
{
    return d->target_pages - MV_MIN(d->populated, d->target_pages);
}

/* The kernel copies a domain's shared pages only while its target has room
 * for a copy of every one of them (and `more` to come): a domain never holds
 * more memory than its target, and when short, its writes trap and the PoD
 * policy decides (domain lock held). */
void share_check_room(struct mv_domain *d, uint64_t more)
{
    if (kernel_copies_on(d) && d->shared + more > target_room(d) &&
        share_cow_trap(d, MV__COW_TRAP_MEMORY, true) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s", d->domid, mv_last_error());
}

void mv__share_check_room(struct mv_domain *d)
{
    share_check_room(d, 0);
}

/* Settle [gfn, gfn + n), consecutive shared gfns that all hold a kernel copy
 * (domain lock held, share lock not).  0, -ENOMEM (no page: the copies stay,
 * write-protected) or -EFAULT (the domain crashed). */
static int settle_copies(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    struct mv__share *s = d->host->share;
    bool split;
    int rc;

    rc = mv__os_uffd_writeprotect(d->cow_uffd, mv__gfn_addr(d, gfn), n << MV_PAGE_SHIFT, true);
    if (rc < 0) {
        mv__domain_crash(d, "cannot write-protect the copies of gfn %#llx+%llu: %s",
                         (unsigned long long)gfn, (unsigned long long)n, mv_strerror(rc));
        return -EFAULT;
    }
    mv__mutex_lock(&s->lock);
    split = share_may_split_for_break(d->host);
    mv__mutex_unlock(&s->lock);
    if (!split) {
        /* Near the mapping limit: break them one by one as trapped writes,
         * which take their run along rather than split it. */
        for (uint64_t i = 0; i < n; i++)
            if (d->p2m[gfn + i] == MV_P2M_SHARED &&
                (rc = share_break_share_trapped(d, gfn + i)) < 0)
                return rc;
        return 0;
    }
    if (!mv__domain_claim(d, n, false))
        return -ENOMEM;
    return share_give_own_frames(d, gfn, n, NULL, n);
}

/*
 * Settle the kernel copies in [gfn, gfn + n) (domain lock held, share lock
 * not).  With `hold`, the range's shared gfns are write-protected first and
 * stay so: no copy can appear there until the caller, done remapping or
 * reading them, calls share_rearm_range.  Returns the copies settled, -ENOMEM when
 * some found no page (they stay, write-protected, and the domain traps until
 * memory is back), or -EFAULT when the domain crashed.
 */
int64_t share_settle_range(struct mv_domain *d, uint64_t gfn, uint64_t n, bool hold)
{
    struct page_region regions[32];
    uintptr_t base = (uintptr_t)mv__gfn_addr(d, gfn);
    uintptr_t start = base, end = base + (n << MV_PAGE_SHIFT);
    int64_t settled = 0;
    uint64_t waiting = 0;
    int rc;

    if (!kernel_copies(d) || d->shared == 0 || d->state == MV_DOMAIN_CRASHED ||
        atomic_load(&d->dying))
        return 0;
    if (hold && (rc = protect_shared(d, gfn, n, true)) < 0) {
        mv__domain_crash(d, "%s", mv_last_error());
        return -EFAULT;
    }
    while (start < end) {
        long r = share_scan_private_copies(d, &start, end, regions, MV_ARRAY_SIZE(regions));

        if (r < 0) {
            mv__domain_crash(d, "cannot look for copies of shared gfns: %s",
                             mv_strerror((int)r));
            return -EFAULT;
        }
        for (long i = 0; i < r; i++) {
            uint64_t g = (regions[i].start - base) >> MV_PAGE_SHIFT;
            uint64_t last = (regions[i].end - base) >> MV_PAGE_SHIFT;

            g += gfn;
            last += gfn;
            while (g < last) {
                uint64_t k = 0;

                if (d->p2m[g] != MV_P2M_SHARED) {
                    g++;        /* cannot happen: own mappings are shmem */
                    continue;
                }
                /* A run mapping one shmem mapping of the own frames at most
                 * 2 MiB at a time, so that a run merges as it settles. */
                while (g + k < last && d->p2m[g + k] == MV_P2M_SHARED &&
                       (k == 0 || (g + k) % MV_BLOCK_PAGES != 0))
                    k++;
                rc = settle_copies(d, g, k);
                if (rc == -EFAULT)
                    return rc;
                if (rc == -ENOMEM)
                    waiting += k;
                else
                    settled += (int64_t)k;
                g += k;
            }
        }
    }
    if (waiting) {
        d->share->settle_waiting = waiting;
        share_cow_trap(d, MV__COW_TRAP_MEMORY, true);
        return -ENOMEM;
    }
    return settled;
}

/* Write-protect the shared gfns [gfn, gfn + n) and find the copies the
 * kernel made of them (found[i] != 0), which can no longer change (domain
 * lock held).  Returns how many, or -EFAULT when the domain crashed. */
long share_hold_copies(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *found)
{
    long copies;

    if (protect_shared(d, gfn, n, true) < 0) {
        mv__domain_crash(d, "%s", mv_last_error());
        return -EFAULT;
    }
    copies = share_find_private_copies(d, gfn, n, found);
    if (copies < 0) {
        mv__domain_crash(d, "cannot look for copies of gfn %#llx+%llu: %s",
                         (unsigned long long)gfn, (unsigned long long)n,
                         mv_strerror((int)copies));
        return -EFAULT;
    }
    return copies;
}

/* Undo share_settle_range's hold on the shared gfns of [gfn, gfn + n) (domain lock
 * held). */
void share_rearm_range(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    if (kernel_copies_on(d) && protect_shared(d, gfn, n, false) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s; those pages trap on write",
                d->domid, mv_last_error());
}

/* Free pages the host budget needs before a domain that trapped for memory
 * lets the kernel copy its writes again (its target must have room for a
 * copy of every shared page, as ever). */
#define MV_COW_REARM_PAGES 256u

/* Settle all of d (domain lock held).  Copies settled, -ENOMEM or -EFAULT. */
/* The end of a settle of all of d that began at `start` and settled
 * `settled` (domain lock held): the waiting copies, the way back from
 * trapping for memory, the counters. */
static int64_t settle_finish(struct mv_domain *d, int64_t settled, uint64_t start)
{
    struct mv__share *s = d->host->share;
    struct mv__share_dom *sd = d->share;
    uint64_t budget, populated;

    if (settled >= 0)
        sd->settle_waiting = 0;
    budget = atomic_load(&d->host->machine.budget_pages);
    populated = atomic_load(&d->host->machine.populated_pages);
    /* Memory is back: the kernel may copy again. */
    if (settled >= 0 && (sd->trap_reasons & MV__COW_TRAP_MEMORY) &&
        d->shared <= target_room(d) &&
        budget >= populated + MV_COW_REARM_PAGES &&
        share_cow_trap(d, MV__COW_TRAP_MEMORY, false) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s", d->domid, mv_last_error());
    mv__mutex_lock(&s->lock);
    s->settles++;
    s->settle_ns += mv__now_ns() - start;
    mv__mutex_unlock(&s->lock);
    return settled;
}

static bool settle_live(struct mv_domain *d)
{
    return kernel_copies(d) && d->state != MV_DOMAIN_CRASHED && !atomic_load(&d->dying);
}

/* Settle all of d (domain lock held). */
static int64_t settle_domain(struct mv_domain *d)
{
    uint64_t start = mv__now_ns();

    if (!settle_live(d))
        return 0;
    return settle_finish(d, share_settle_range(d, 0, d->maxmem_pages, false), start);
}

/* The background settler holds a domain's lock for this many gfns at a
 * time: a pass over a domain whose shared pages are all mapped walks
 * every page-table entry (its cost: docs/performance.md, "What the
 * settler's passes cost"), and the domain's faults wait for the lock
 * meanwhile. */
#define MV_SETTLE_CHUNK_PAGES (32u * MV_BLOCK_PAGES)

/* Settle all of d taking its lock a chunk at a time (no lock held). */
static void settle_domain_chunked(struct mv_domain *d)
{
    uint64_t start = mv__now_ns();
    int64_t settled = 0;
    bool short_of_memory = false;

    for (uint64_t g = 0; g < d->maxmem_pages; g += MV_SETTLE_CHUNK_PAGES) {
        int64_t r = 0;

        mv__mutex_lock(&d->lock);
        if (d->state == MV_DOMAIN_RUNNING && d->shared && settle_live(d))
            r = share_settle_range(d, g, MV_MIN(MV_SETTLE_CHUNK_PAGES, d->maxmem_pages - g), false);
        else
            r = -ESRCH;
        mv__mutex_unlock(&d->lock);
        if (r == -ENOMEM)
            short_of_memory = true;
        else if (r < 0)
            return;     /* paused (settled then), crashed, dying or nothing shared */
        else
            settled += r;
    }
    mv__mutex_lock(&d->lock);
    if (d->state == MV_DOMAIN_RUNNING && settle_live(d))
        settle_finish(d, short_of_memory ? -ENOMEM : settled, start);
    mv__mutex_unlock(&d->lock);
}

int64_t mv__share_settle(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    return share_settle_range(d, gfn, n, false);
}

int mv__share_cow_trap(struct mv_domain *d, enum mv__cow_trap reason, bool on)
{
    int rc;

    if (!kernel_copies(d))
        return 0;
    rc = share_cow_trap(d, reason, on);
    if (rc == 0 && on && settle_domain(d) == -EFAULT)
        rc = -EFAULT;
    return rc;
}

/* Settle every running MV_COW_KERNEL domain that has shared gfns, each
 * under its lock, or a chunk at a time (no lock held).  Sets
 * *memory_trapped when one traps for want of memory (only a settle lets it
 * copy again).  0, or -ENOMEM when the domains could not be listed (none
 * was settled). */
static int settle_all(struct mv_host *h, bool chunked, bool *memory_trapped)
{
    struct mv_domain **all;
    size_t n;
    int rc = mv__domain_get_all(h, &all, &n);
    uint64_t waiting = 0;

    *memory_trapped = false;
    if (rc < 0)
        return rc;

    for (size_t i = 0; i < n; i++) {
        struct mv_domain *d = all[i];

        if (kernel_copies(d) && chunked) {
            settle_domain_chunked(d);
        } else if (kernel_copies(d)) {
            mv__mutex_lock(&d->lock);
            if (d->state == MV_DOMAIN_RUNNING && d->shared)
                settle_domain(d);
            mv__mutex_unlock(&d->lock);
        }
        if (kernel_copies(d)) {
            mv__mutex_lock(&d->lock);
            *memory_trapped |= (d->share->trap_reasons & MV__COW_TRAP_MEMORY) != 0;
            waiting += d->share->settle_waiting;
            mv__mutex_unlock(&d->lock);
        }
        mv__domain_put(d);
    }
    free(all);
    mv__mutex_lock(&h->share->lock);
    h->share->settle_waiting = waiting;
    mv__mutex_unlock(&h->share->lock);
    return 0;
}

int mv__share_settle_all(struct mv_host *h)
{
    bool memory_trapped;

    return settle_all(h, false, &memory_trapped);
}

/* Page faults this process has taken: a kernel copy is one, so while the
 * count stands still there is nothing to settle. */
static uint64_t process_faults(void)
{
    struct rusage ru;

    return getrusage(RUSAGE_SELF, &ru) == 0 ? (uint64_t)ru.ru_minflt : UINT64_MAX;
}

static void *settler_main(void *arg)
{
    struct mv_host *h = arg;
    struct mv__share *s = h->share;
    uint64_t interval = (uint64_t)h->config.cow_settle_ms * 1000000ull;
    uint64_t faults_seen = UINT64_MAX;
    bool memory_trapped = false;

    mv__mutex_lock(&s->settler_lock);
    while (!s->settler_stop) {
        uint64_t faults;

        if (mv__cond_wait(&s->settler_cond, &s->settler_lock, mv__now_ns() + interval) ||
            s->settler_stop)
            continue;
        /* No fault since the last pass: no copy was made.  A domain that
         * traps for memory is looked at all the same. */
        faults = process_faults();
        if (faults == faults_seen && faults != UINT64_MAX && !memory_trapped)
            continue;
        faults_seen = faults;
        mv__mutex_unlock(&s->settler_lock);
        /* Domains that could not be listed are settled at the next
         * interval: as if one trapped for memory, the look is not skipped. */
        if (settle_all(h, true, &memory_trapped) < 0) {
            mv__log(h, MV_LOG_WARN, "settler: %s; trying again in %llu ms",
                    mv_last_error(), (unsigned long long)(interval / 1000000));
            memory_trapped = true;
        }
        mv__mutex_lock(&s->settler_lock);
    }
    mv__mutex_unlock(&s->settler_lock);
    return NULL;
}

/* The first MV_COW_KERNEL domain starts the settler.  It is named
 * MV__SETTLER_NAME (what top -H shows, and how `memvisor bench cow` finds
 * its CPU time); a failure to name it changes nothing else. */
int share_settler_start(struct mv_host *h)
{
    struct mv__share *s = h->share;
    int rc = 0;

    mv__mutex_lock(&s->settler_lock);
    if (!s->settler_started) {
        rc = mv__os_thread_start(&s->settler, NULL, settler_main, h);
        s->settler_started = rc == 0;
        if (rc == 0)
            (void)pthread_setname_np(s->settler, MV__SETTLER_NAME);
    }
    mv__mutex_unlock(&s->settler_lock);
    return rc < 0 ? mv__fail(rc, "cannot start the copy settler: %s", mv_strerror(rc)) : 0;
}

const char *mv_cow_mode_name(enum mv_cow_mode mode)
{
    switch (mode) {
    case MV_COW_TRAP:
        return "trap";
    case MV_COW_KERNEL:
        return "kernel";
    }
    return "unknown";
}

int64_t mv_share_settle(mv_host *host, uint32_t domid)
{
    struct mv_domain *d;
    int64_t rc;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    rc = mv__domain_lock_live(host, domid, &d);
    if (rc < 0)
        return rc;
    rc = settle_domain(d);
    if (rc == -ENOMEM)
        rc = 0;
    else if (rc == -EFAULT)
        rc = mv__fail(-EFAULT, "domain %u crashed while settling: %s", domid,
                      d->crash_reason);
    mv__domain_unlock_put(d);
    return rc;
}
