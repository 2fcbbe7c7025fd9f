/*
 * relinquish.c - tmem giving memory back to the host, after Xen's design:
 *   evict        drop an ephemeral page: the least recently used one of the
 *                domain furthest over its weighted share of ephemeral pages
 *   evict_npages evict until n frames are empty (kept SPARE by tmem, dirty,
 *                for its own next use: Xen's tmem_page_list)
 *   relinquish_pages  scrub spare frames and give them back to the budget
 *   relinquish_page   one frame back, evicting as needed
 *   relinquish_pageblock  a run of 2^order frames free in the machine
 *                allocator: whole chunks returned, evicting and compacting
 *   budget short the core's hook when a charge fails (a populate, a CoW
 *                break): spare frames first, then the needy domain's own
 *                collateral (the repayment reserve), then every domain's
 *                ephemeral pages by weight, then compaction.
 * Persistent pages are never evicted.  Every frame leaving tmem is
 * scrubbed first (store.c run_scrub).
 *
 * Locking: the mv_tmem_* calls and the hook take tmem->lock; the hook is
 * called from charge paths holding a domain lock or the share lock, both
 * below it, and takes no domain lock.
 */
#include "tmem.h"

#include <errno.h>
#include <stdlib.h>

/* Whether a is further over its share than b: a.eph / a.weight > b.eph / b.weight. */
static bool more_over(const struct tm_client *a, const struct tm_client *b)
{
    return (unsigned __int128)a->ephemeral * b->weight >
           (unsigned __int128)b->ephemeral * a->weight;
}

static void evict_page(struct mv__tmem *t, struct tm_client *c)
{
    struct tm_page *pg = tm_container(c->lru.prev, struct tm_page, lru);
    struct tm_pool *pool = pg->obj->pool;

    pool->c.evictions++;
    c->c.evictions++;
    t->evictions++;
    tm_page_free(t, pg);
}

bool tm_evict_one(struct mv__tmem *t, struct tm_client *prefer)
{
    struct tm_client *victim = NULL;

    if (prefer && prefer->ephemeral) {
        victim = prefer;
    } else {
        for (struct tm_client *c = t->clients; c; c = c->next)
            if (c->ephemeral && (!victim || more_over(c, victim)))
                victim = c;
    }
    if (!victim)
        return false;
    evict_page(t, victim);
    return true;
}

bool tm_charge(struct mv__tmem *t, uint64_t frames, bool may_evict)
{
    struct mv__machine *m = &t->host->machine;

    for (;;) {
        if (mv__machine_charge(m, frames)) {
            atomic_fetch_add(&t->charged, frames);
            return true;
        }
        /* Spare frames are charged already, but not where the caller
         * needs them: give them back and charge again. */
        if (t->spare_frames) {
            tm_release_spare(t, t->spare_frames);
            continue;
        }
        /* Memory a destroyed domain gave back, once scrubbed, before any
         * page is evicted. */
        if (mv__scrub_wait(m, MV__RELEASE_SCRUB))
            continue;
        if (!may_evict || !tm_evict_one(t, NULL))
            return false;
    }
}

/* Evict until `frames` more frames are empty (spare or given back). */
static uint64_t evict_frames(struct mv__tmem *t, struct tm_client *only, uint64_t frames,
                             uint64_t max_pages, uint64_t *pages)
{
    uint64_t start = t->used_frames, evicted = 0;

    while (start - MV_MIN(start, t->used_frames) < frames && evicted < max_pages) {
        if (only ? !only->ephemeral : false)
            break;
        if (!tm_evict_one(t, only))
            break;
        evicted++;
    }
    if (pages)
        *pages = evicted;
    return start - MV_MIN(start, t->used_frames);
}

uint64_t tm_budget_short(struct mv_host *h, struct mv_domain *d, uint64_t pages)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t freed = 0, before;
    struct tm_client *c;

    if (!t || pages == 0)
        return 0;
    tm_lock(t);
    t->short_calls++;
    before = t->relinquished;
    tm_release_spare(t, pages);
    /* The repayment reserve: the needy domain's own pledged pages first. */
    c = d ? tm_client_find(t, d->domid) : NULL;
    if (c && c->collateral && t->relinquished - before < pages) {
        uint64_t r0 = t->relinquished, evicted;

        evict_frames(t, c, pages - (t->relinquished - before), c->collateral, &evicted);
        tm_release_spare(t, t->spare_frames);
        c->repaid += t->relinquished - r0;
        t->repaid += t->relinquished - r0;
    }
    while (t->relinquished - before < pages) {
        uint64_t r0 = t->relinquished;

        evict_frames(t, NULL, pages - (t->relinquished - before), UINT64_MAX, NULL);
        tm_release_spare(t, t->spare_frames);
        if (t->relinquished - before < pages && tm_compact(t))
            tm_release_spare(t, t->spare_frames);
        if (t->relinquished == r0)
            break;
    }
    freed = t->relinquished - before;
    t->short_freed += freed;
    mv__mutex_unlock(&t->lock);
    /* Host paging frees more, from another thread (it takes domain locks). */
    if (freed < pages)
        tm_paging_wake(t);
    return freed;
}

int64_t mv_tmem_evict_npages(mv_host *h, uint64_t n)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t r0, s0, got;

    mv__clear_error();
    tm_lock(t);
    /* The frames emptied stay with tmem as spare: let it keep them all. */
    r0 = t->relinquished;
    s0 = t->spare_frames;
    t->spare_max = t->spare_frames + n;
    evict_frames(t, NULL, n, UINT64_MAX, NULL);
    t->spare_max = TM_SPARE_MAX > t->spare_frames ? TM_SPARE_MAX : t->spare_frames;
    got = t->spare_frames - s0 + (t->relinquished - r0);
    mv__mutex_unlock(&t->lock);
    return (int64_t)got;
}

int64_t mv_tmem_relinquish_pages(mv_host *h, uint64_t n)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t got;

    mv__clear_error();
    tm_lock(t);
    got = tm_release_spare(t, n);
    t->spare_max = TM_SPARE_MAX;
    mv__mutex_unlock(&t->lock);
    if (got)
        mv__fault_kick(h);
    return (int64_t)got;
}

int mv_tmem_relinquish_page(mv_host *h)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t got;

    mv__clear_error();
    tm_lock(t);
    while (!t->spare_frames && tm_evict_one(t, NULL))
        ;
    got = tm_release_spare(t, 1);
    if (!got) {
        /* Only persistent pages are left: pack them tighter. */
        tm_compact(t);
        got = tm_release_spare(t, 1);
    }
    mv__mutex_unlock(&t->lock);
    if (got)
        mv__fault_kick(h);
    return (int)got;
}

/* Whether the machine allocator has a free run of 2^order frames. */
static bool machine_has_block(struct mv_host *h, unsigned order)
{
    uint64_t first;

    if (mv__machine_alloc(&h->machine, 1ull << order, &first) < 0)
        return false;
    mv__machine_free(&h->machine, first, 1ull << order);
    return true;
}

int mv_tmem_relinquish_pageblock(mv_host *h, unsigned order)
{
    struct mv__tmem *t = tm_of(h);
    bool ok;

    mv__clear_error();
    if (order > MV_BUDDY_MAX_ORDER)
        return mv__fail(-EINVAL, "tmem: order %u is above the allocator's %u", order,
                        MV_BUDDY_MAX_ORDER);
    tm_lock(t);
    ok = machine_has_block(h, order);
    /* Tmem keeps no buddy allocator: only whole chunks can go back, and
     * which one empties first cannot be chosen.  Evict in LRU order until a
     * chunk is free and the run exists, as Xen's design says: possibly all
     * ephemeral data. */
    while (!ok) {
        uint64_t chunks = t->chunk_count;
        bool evicted = false;

        while (t->chunk_count == chunks && (evicted = tm_evict_one(t, NULL)))
            if (t->spare_frames)
                tm_release_spare(t, t->spare_frames);
        if (t->chunk_count == chunks) {
            tm_compact(t);
            tm_release_spare(t, t->spare_frames);
        }
        ok = machine_has_block(h, order);
        if (!evicted && t->chunk_count == chunks)
            break;
    }
    mv__mutex_unlock(&t->lock);
    if (!ok)
        return mv__fail(-ENOMEM, "tmem: no run of 2^%u frames could be freed "
                        "(persistent pages or other users hold the frames)", order);
    mv__fault_kick(h);
    return 0;
}

int64_t mv_tmem_compact(mv_host *h)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t freed;

    mv__clear_error();
    tm_lock(t);
    freed = tm_compact(t);
    mv__mutex_unlock(&t->lock);
    return (int64_t)freed;
}
