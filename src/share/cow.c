/*
 * cow.c - copy-on-write breaks.  A write to a shared gfn gives it its own
 * frame again: a copy of the shared frame, a fresh zero page when it was
 * alone on a frame known to be zero, or the frame's charge itself when it
 * held the frame's last mapping (a takeover).  A break inside a run splits
 * its mapping in three; near vm.max_map_count it unshares the rest of its
 * run on one side as well, so that the mappings do not grow (break_extent).
 * Also share_give_own_frames (shared by breaks and settling) and
 * mv__share_release.
 *
 * Invariants:
 *   each gfn a break unshares claims a page of the domain's target, and of
 *   the host budget unless it is a takeover, so that
 *   host populated == sum of domains' populated + shared frames holds;
 *   a break splits its run while vma_count + 2 < break_map_limit
 *   (break_limit, or vm.max_map_count - MV_MAP_SLACK); past it, it unshares
 *   the rest of the run on one side instead, unless that is longer than
 *   MV_BREAK_RUN_MAX on both sides or too big for the domain's memory
 *   (break_extent).
 *
 * Locking: the domain lock held, the share lock not (a claim may sweep);
 * the share lock is taken inside for the frames' counts.
 */
#include "share.h"

/* How far from gfn its run (consecutive gfns on consecutive frames: one
 * mapping) goes towards `step` (+1 or -1), at most `max` gfns: sets *len to
 * the gfns beyond gfn in the run, and returns whether the run ends there. */
bool share_run_side(struct mv_domain *d, uint64_t gfn, int step, uint64_t max,
                    uint64_t *len)
{
    uint64_t mfn = share_shared_mfn(d, gfn);

    for (*len = 0; *len < max; (*len)++) {
        uint64_t k = *len + 1, next, want;

        if (step < 0 ? gfn < k : gfn + k >= d->maxmem_pages)
            return true;
        next = share_shared_mfn(d, step < 0 ? gfn - k : gfn + k);
        want = step < 0 ? mfn - k : mfn + k;
        if (next == MV_NO_MFN || next != want)
            return true;
    }
    return false;
}

/* Whether the neighbour of a run at `gfn` maps its own frame, so that own
 * frames mapped next to it merge with its mapping. */
static bool maps_own(struct mv_domain *d, uint64_t gfn, int step)
{
    if (step < 0 ? gfn == 0 : gfn + 1 >= d->maxmem_pages)
        return false;
    return share_shared_mfn(d, step < 0 ? gfn - 1 : gfn + 1) == MV_NO_MFN;
}

/* Whether a break may still split a run: the kernel's own limit is not
 * near (share lock held); takes the two mappings. */
static bool may_split(struct mv_host *h)
{
    struct mv__share *s = h->share;

    if (share_vma_count(h, MV_MAP_RECHECK_FAULT_NS) + 2 + MV_MAP_HARD_MARGIN >= s->max_map_count)
        return false;
    s->vma_count += 2;
    return true;
}

/* The mappings CoW breaks may use (share lock held). */
static uint64_t break_map_limit(struct mv__share *s)
{
    return s->break_limit ? s->break_limit :
           (s->max_map_count > MV_MAP_SLACK ? s->max_map_count - MV_MAP_SLACK : 0);
}

/* Whether a break may split a mapping in three, far from the limit breaks
 * keep to (share lock held); takes the two mappings.  The count as last
 * known, plus what was added since, first: counting again reads all of
 * /proc/self/maps, too slow for every fault. */
bool share_may_split_for_break(struct mv_host *h)
{
    struct mv__share *s = h->share;
    uint64_t limit = break_map_limit(s);

    if (s->vma_count + 2 < limit || share_vma_count(h, MV_MAP_RECHECK_FAULT_NS) + 2 < limit) {
        s->vma_count += 2;
        return true;
    }
    return false;
}

/*
 * The gfns a write to shared gfn unshares, [*first, *first + return) (domain
 * and share locks held).  While mappings are plentiful, gfn alone: it splits
 * its run's mapping in three.  Near vm.max_map_count a break must not split:
 * it takes the rest of its run on one side with it (the side whose own
 * neighbour its own frames merge with, else the shorter), so the mappings do
 * not grow.  It still splits, while the kernel's own limit is not near, a
 * run longer than MV_BREAK_RUN_MAX on both sides or one that would take
 * more than half of what the domain may still populate.
 */
static uint64_t break_extent(struct mv_domain *d, uint64_t gfn, uint64_t *first)
{
    struct mv__share *s = d->host->share;
    uint64_t limit = break_map_limit(s);
    uint64_t left, right, cost_left, cost_right, n;
    bool left_ends, right_ends;

    *first = gfn;
    if (share_may_split_for_break(d->host))
        return 1;
    left_ends = share_run_side(d, gfn, -1, MV_BREAK_RUN_MAX, &left);
    right_ends = share_run_side(d, gfn, +1, MV_BREAK_RUN_MAX, &right);
    if (!s->breaks_unsharing_runs)
        mv__log(d->host, MV_LOG_WARN, "%llu mappings, limit %llu: copy-on-write "
                "breaks now unshare the rest of their run so as not to split it",
                (unsigned long long)s->vma_count, (unsigned long long)limit);
    s->breaks_unsharing_runs = true;
    if (!left_ends && !right_ends) {
        s->vma_count += 2;
        return 1;
    }
    /* A side's cost: its pages, plus a mapping when its own frames would
     * not merge with the neighbour's. */
    cost_left = left_ends ? left + (maps_own(d, gfn - left, -1) ? 0 : MV_BREAK_RUN_MAX)
                          : UINT64_MAX;
    cost_right = right_ends ? right + (maps_own(d, gfn + right, +1) ? 0 : MV_BREAK_RUN_MAX)
                            : UINT64_MAX;
    n = cost_left <= cost_right ? left + 1 : right + 1;
    /* Memory the run takes is gone for writes to come: past half of what
     * the domain may still populate, split while the kernel allows. */
    if (n > (d->target_pages - MV_MIN(d->populated, d->target_pages)) / 2 &&
        may_split(d->host))
        return 1;
    *first = cost_left <= cost_right ? gfn - left : gfn;
    return n;
}

/* Gfns of [gfn, gfn + n) that hold the last mapping of their frame (share
 * lock held). */
static uint64_t count_takeovers(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    struct mv__share *s = d->host->share;
    uint64_t takeovers = 0;

    for (uint64_t i = 0; i < n; i++)
        takeovers += share_frame_of(s, share_shared_mfn(d, gfn + i))->refs == 1;
    return takeovers;
}

/*
 * Give shared gfns [first, first + n) their own frames (domain lock held,
 * share lock not; the domain's page claim made): charge the host for those
 * that do not hold their frame's last mapping (the others take it over),
 * fill the own frames -- with the kernel's copy where copies[i] (all of them
 * when copies is NULL), else the frame's bytes, nothing for a lone zero
 * frame --, map them, wake the writers and drop the gfns from the reverse
 * maps, counting `breaks` breaks.  0, -ENOMEM (nothing changed) or -EFAULT
 * (the domain crashed).
 */
int share_give_own_frames(struct mv_domain *d, uint64_t first, uint64_t n,
                          const uint8_t *copies, uint64_t breaks)
{
    struct mv_host *h = d->host;
    struct mv__share *s = h->share;
    struct mv__share_dom *sd = d->share;
    uint8_t *at = mv__gfn_addr(d, first);
    size_t len = n << MV_PAGE_SHIFT;
    uint64_t charged, copied = copies ? 0 : n;
    bool zero, remapped = false;
    int rc;

    for (uint64_t i = 0; copies && i < n; i++)
        copied += copies[i] != 0;
    mv__mutex_lock(&s->lock);
    charged = n - count_takeovers(d, first, n);
    if (charged && !mv__host_charge(h, d, charged)) {
        mv__mutex_unlock(&s->lock);
        return -ENOMEM;
    }
    zero = n == 1 && !copied && (share_frame_of(s, share_shared_mfn(d, first))->flags & FRAME_ZERO);
    if (!copies)
        rc = mv__ram_save_mapped(d, first, n, own_offset(d, first));
    else
        rc = zero ? 0 : mv__os_copy(h->machine.memfd, share_shared_mfn(d, first) << MV_PAGE_SHIFT,
                                    own_offset(d, first), len);
    /* A copy is stable: write-protected, its writers trap. */
    for (uint64_t i = 0; rc == 0 && copies && copied && i < n; i++)
        if (copies[i])
            rc = mv__ram_save_mapped(d, first + i, 1, own_offset(d, first + i));
    if (rc == 0) {
        remapped = true;
        rc = mv__domain_map_own(d, first, n);
    }
    if (rc == 0)
        rc = zero ? mv__os_uffd_zeropage(d->uffd, at, MV_PAGE_SIZE)
                  : mv__os_uffd_continue(d->uffd, at, len);
    if (rc == -EEXIST)
        rc = 0;
    if (rc < 0) {
        /* Without a copy in the run, the gfns can map their shared frames
         * again as if nothing happened; a copy holds guest writes that only
         * its own frame has now. */
        int undo = !remapped ? 0 : copied ? rc
                   : share_map_frames(d, first, share_shared_mfn(d, first), n);

        /* ... and their own frames hold nothing again. */
        if (undo == 0)
            undo = mv__os_punch(h->machine.memfd, own_offset(d, first), len);

        mv__mutex_unlock(&s->lock);
        if (charged)
            mv__machine_uncharge(&h->machine, charged);
        if (undo == 0)
            return mv__fail(rc, "domain %u: cannot give shared gfn %#llx+%llu its own "
                            "frames: %s; it stays shared", d->domid,
                            (unsigned long long)first, (unsigned long long)n,
                            mv_strerror(rc));
        mv__domain_crash(d, "cannot give shared gfn %#llx+%llu its own frames: %s",
                         (unsigned long long)first, (unsigned long long)n,
                         mv_strerror(rc));
        return -EFAULT;
    }
    mv__fault_wake(d, true, first, n);
    for (uint64_t i = 0; i < n; i++) {
        /* A takeover moves the frame's charge to the domain. */
        bool takeover = share_frame_of(s, share_shared_mfn(d, first + i))->refs == 1;

        mv__p2m_set(d, first + i, MV_P2M_RAM);
        share_rmap_del(h, d, first + i, !takeover);
        sd->cow_takeovers += takeover;
        s->cow_takeovers += takeover;
    }
    sd->cow_breaks += breaks;
    s->cow_breaks += breaks;
    s->cow_run_unshares += n - breaks;
    sd->kernel_copies += copied;
    s->kernel_copies += copied;
    if (zero) {
        sd->cow_nocopy++;
        s->cow_nocopy++;
    }
    mv__mutex_unlock(&s->lock);
    mv__domain_pages_changed(d, first, n);
    return 0;
}

/*
 * Give shared gfn its own page again, with the rest of its run when
 * break_extent says so (domain lock held, share lock not).  Each gfn gets a
 * copy of its frame in its own slot, except that one alone on a frame known
 * to be zero gets a fresh zero page; each needs a page of the domain's
 * target, and a page of the host budget unless it held the frame's last
 * mapping (the frame's charge then moves to the domain: a takeover).
 */
int share_break_share_trapped(struct mv_domain *d, uint64_t gfn)
{
    struct mv__share *s = d->host->share;
    uint8_t found[MV_BREAK_RUN_MAX + 1];
    uint64_t first, n;
    long copies;

    mv__mutex_lock(&s->lock);
    n = break_extent(d, gfn, &first);
    mv__mutex_unlock(&s->lock);
    /* The sweep this may run needs the share lock not held.  The extent
     * cannot change meanwhile: changing a gfn to or from SHARED takes the
     * domain lock, which is held; only the frames' counts can. */
    if (!mv__domain_claim(d, n, false)) {
        /* No memory for the run: split it after all while the kernel's
         * limit still allows. */
        bool split;

        if (n == 1)
            return -ENOMEM;
        mv__mutex_lock(&s->lock);
        split = may_split(d->host);
        mv__mutex_unlock(&s->lock);
        first = gfn;
        n = 1;
        if (!split || !mv__domain_claim(d, 1, false))
            return -ENOMEM;
    }
    /* Where the kernel copies on write, gfns of the extent may hold copies:
     * protected, they stay as they are while their bytes are taken. */
    memset(found, 0, n);
    if (kernel_copies(d) && (copies = share_hold_copies(d, first, n, found)) < 0)
        return (int)copies;
    return share_give_own_frames(d, first, n, found, 1);
}

/*
 * Break shared gfn (domain lock held, share lock not).  When memory is short
 * an MV_COW_KERNEL domain traps from then on, so that the PoD policy decides
 * for every write, not only this one.
 */
int share_break_share(struct mv_domain *d, uint64_t gfn)
{
    int rc = share_break_share_trapped(d, gfn);

    if (rc == -ENOMEM && kernel_copies(d) && share_cow_trap(d, MV__COW_TRAP_MEMORY, true) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s", d->domid, mv_last_error());
    return rc;
}

int mv__share_cow_fault(struct mv_domain *d, uint64_t gfn)
{
    return share_break_share(d, gfn);
}

int mv__share_release(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type)
{
    struct mv__share *s = d->host->share;
    int rc = mv__domain_map_own(d, gfn, 1);

    if (rc < 0)
        return rc;
    mv__fault_wake(d, true, gfn, 1);
    mv__mutex_lock(&s->lock);
    mv__p2m_set(d, gfn, type);
    share_rmap_del(d->host, d, gfn, true);
    mv__mutex_unlock(&s->lock);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}
