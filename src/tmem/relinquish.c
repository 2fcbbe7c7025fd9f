/*
 * relinquish.c - tmem giving memory back to the host, after Xen's design:
 *   evict        drop an ephemeral page: the least recently used one of the
 *                domain furthest over its weighted share of ephemeral pages
 *                (the root of a heap of the domains holding any, kept as
 *                their counts change: no walk past every domain)
 *   evict_npages evict until n frames are empty (kept SPARE by tmem, dirty,
 *                for its own next use: Xen's tmem_page_list)
 *   relinquish_pages  scrub spare frames and give them back to the budget
 *   relinquish_page   one frame back, evicting as needed
 *   relinquish_pageblock  room for a block of 2^order frames: a free run
 *                in the machine allocator and as many frames of the
 *                budget, evicting and compacting
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

/* ---- the victims heap ---- */

static void victim_place(struct mv__tmem *t, size_t i, struct tm_client *c)
{
    t->victims[i] = c;
    c->victim_at = i + 1;
}

static void victim_sift_up(struct mv__tmem *t, size_t i)
{
    struct tm_client *c = t->victims[i];

    while (i > 0 && more_over(c, t->victims[(i - 1) / 2])) {
        victim_place(t, i, t->victims[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    victim_place(t, i, c);
}

static void victim_sift_down(struct mv__tmem *t, size_t i)
{
    struct tm_client *c = t->victims[i];

    for (;;) {
        size_t child = 2 * i + 1;

        if (child >= t->victim_count)
            break;
        if (child + 1 < t->victim_count && more_over(t->victims[child + 1], t->victims[child]))
            child++;
        if (!more_over(t->victims[child], c))
            break;
        victim_place(t, i, t->victims[child]);
        i = child;
    }
    victim_place(t, i, c);
}

int tm_victims_reserve(struct mv__tmem *t)
{
    struct tm_client **v;
    size_t cap;

    if (t->victim_cap > t->client_count)
        return 0;
    cap = MV_MAX(t->victim_cap * 2, (size_t)16);
    v = mv__realloc(t->victims, cap * sizeof(*v));
    if (!v)
        return mv__fail(-ENOMEM, "tmem: out of memory for the eviction order");
    t->victims = v;
    t->victim_cap = cap;
    return 0;
}

void tm_victims_remove(struct mv__tmem *t, struct tm_client *c)
{
    struct tm_client *moved;
    size_t i = c->victim_at - 1;

    if (!c->victim_at)
        return;
    c->victim_at = 0;
    if (i == --t->victim_count)
        return;
    moved = t->victims[t->victim_count];
    victim_place(t, i, moved);
    victim_sift_up(t, i);
    victim_sift_down(t, moved->victim_at - 1);
}

void tm_victims_update(struct mv__tmem *t, struct tm_client *c)
{
    if (!c->ephemeral) {
        tm_victims_remove(t, c);
        return;
    }
    if (!c->victim_at) {
        /* tm_victims_reserve made room when c was created. */
        victim_place(t, t->victim_count++, c);
        victim_sift_up(t, t->victim_count - 1);
        return;
    }
    victim_sift_up(t, c->victim_at - 1);
    victim_sift_down(t, c->victim_at - 1);
}

int tm_victims_audit(struct mv__tmem *t)
{
    size_t holders = 0;

    for (struct tm_client *c = t->clients; c; c = c->next) {
        holders += c->ephemeral > 0;
        if (!!c->victim_at != (c->ephemeral > 0) ||
            (c->victim_at && (c->victim_at > t->victim_count ||
                              t->victims[c->victim_at - 1] != c)))
            return mv__fail(-EUCLEAN, "tmem: domain %u with %llu ephemeral pages is %s "
                            "the eviction order", c->domid,
                            (unsigned long long)c->ephemeral,
                            c->victim_at ? "misplaced in" : "missing from");
    }
    if (holders != t->victim_count || t->victim_cap < t->client_count)
        return mv__fail(-EUCLEAN, "tmem: the eviction order holds %zu clients of %zu "
                        "(room for %zu of %zu)", t->victim_count, holders,
                        t->victim_cap, t->client_count);
    for (size_t i = 1; i < t->victim_count; i++)
        if (more_over(t->victims[i], t->victims[(i - 1) / 2]))
            return mv__fail(-EUCLEAN, "tmem: domain %u is further over its share than "
                            "domain %u above it in the eviction order",
                            t->victims[i]->domid, t->victims[(i - 1) / 2]->domid);
    return 0;
}

bool tm_evict_one(struct mv__tmem *t, struct tm_client *prefer)
{
    struct tm_client *victim;

    if (prefer && prefer->ephemeral)
        victim = prefer;
    else if (t->victim_count)
        victim = t->victims[0];
    else
        return false;
    evict_page(t, victim);
    return true;
}

bool tm_charge(struct mv__tmem *t, uint64_t frames, bool may_evict)
{
    struct mv__machine *m = &t->host->machine;
    /* Budget a page-out handed over for its pages' compressed copies
     * (paging.c) is charged already, and no one else's. */
    uint64_t own = MV_MIN(t->handed_over, frames);

    for (;;) {
        if (own == frames || mv__machine_charge(m, frames - own)) {
            t->handed_over -= own;
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
    /* The host memory of the classes left with nothing to stage or read. */
    tm_release_class_buffers(t);
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

/* The most frames of the budget that could be made free: what is free,
 * what a destroyed domain's scrub will give back, and every tmem frame but
 * the fewest the persistent pages' bytes could be compacted into. */
static uint64_t budget_room_possible(struct mv__tmem *t, uint64_t room)
{
    struct mv__scrub_counts scrub;
    uint64_t persistent = 0, frames = t->used_frames + t->spare_frames, keep;

    for (uint32_t i = 0; i < TM_MAX_POOLS; i++)
        if (t->pools[i] && (t->pools[i]->flags & MV_TMEM_PERSISTENT))
            persistent += t->pools[i]->c.stored_bytes;
    keep = (persistent + MV_PAGE_SIZE - 1) / MV_PAGE_SIZE;
    mv__scrub_counts(&t->host->machine, &scrub);
    return room + scrub.pending_charged + (frames > keep ? frames - keep : 0);
}

/*
 * Room for a naturally aligned block of 2^order frames: a free run in the
 * machine allocator, and as many frames of the budget free.  The frame
 * space is sparse, so the run is there unless it is fragmented; the budget
 * is what is short when memory is.  Tmem gives its spare frames back, then
 * (when a destroyed domain's memory being scrubbed does not make the room)
 * evicts ephemeral pages in the eviction order and compacts, releasing
 * frames as they empty: possibly all ephemeral data, as Xen's design says.
 * Tmem keeps no buddy allocator of its own, so only whole chunks can go
 * back to the machine's, and which one empties first cannot be chosen.
 */
int mv_tmem_relinquish_pageblock(mv_host *h, unsigned order)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t want, room, possible;
    bool run = false;

    mv__clear_error();
    if (order > MV_BUDDY_MAX_ORDER)
        return mv__fail(-EINVAL, "tmem: order %u is above the allocator's %u", order,
                        MV_BUDDY_MAX_ORDER);
    want = 1ull << order;
    tm_lock(t);
    /* Evicting every ephemeral page for a block that cannot be made
     * anyway would drop the guests' caches for nothing. */
    room = mv__machine_room(&h->machine);
    possible = room < want ? budget_room_possible(t, room) : want;
    if (possible < want) {
        mv__mutex_unlock(&t->lock);
        return mv__fail(-ENOMEM, "tmem: the budget has room for %llu frames and at most "
                        "%llu could be made, not the 2^%u asked for: the rest is "
                        "persistent tmem pages or others' memory; nothing was evicted",
                        (unsigned long long)room, (unsigned long long)possible, order);
    }
    for (;;) {
        room = mv__machine_room(&h->machine);
        run = machine_has_block(h, order);
        if (room >= want && run)
            break;
        if (room < want && mv__scrub_wait(&h->machine, MV__RELEASE_SCRUB))
            continue;
        /* Empty frames until the room and the spare frames make the block
         * (one spare at least when only the run is missing), then give
         * them back in one release.  Eviction may scrub spare frames
         * itself, which the room then counts. */
        while ((!t->spare_frames || mv__machine_room(&h->machine) + t->spare_frames < want) &&
               (tm_evict_one(t, NULL) || tm_compact(t) > 0))
            ;
        if (!t->spare_frames)
            break;
        tm_release_spare(t, t->spare_frames);
    }
    mv__mutex_unlock(&t->lock);
    if (room < want)
        return mv__fail(-ENOMEM, "tmem: the budget has room for %llu frames, not the "
                        "2^%u asked for: what is left is persistent tmem pages or "
                        "others' memory", (unsigned long long)room, order);
    if (!run)
        return mv__fail(-ENOMEM, "tmem: no run of 2^%u frames could be freed in the "
                        "machine's frame space (persistent pages or other users hold "
                        "the frames)", order);
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
