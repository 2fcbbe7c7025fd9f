/*
 * mechanism.c - tmem as a mechanism of the core: its host state (made at
 * host_init, freed at host_fini), the domain life cycle (a destroyed
 * domain's pools and pages go with it), the frames it holds for the host
 * audit and the budget-short hook; statistics (like Xen's `xl tmem-list`)
 * and mv_tmem_audit.
 *
 * Invariants: the host exists => its tmem state exists (host_init made it,
 * host_fini frees it after every domain is gone); a domain's tmem state
 * (client, private pools, pages in shared pools, paged pages) is gone once
 * its domain_destroy hook has run.
 *
 * Locking: everything here takes tmem->lock, host_frames too (the host
 * audit calls it with no lock held); the audit takes each domain's lock,
 * then tmem's.
 */
#include "tmem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int tmem_host_init(struct mv_host *h)
{
    struct mv__tmem *t = mv__calloc(1, sizeof(*t));
    int rc;

    if (!t)
        return mv__fail(-ENOMEM, "tmem: out of memory");
    t->host = h;
    /* Puts and gets from many vCPUs hold it for the index and the
     * allocator only (compression is done before). */
    mv__mutex_init_spinning(&t->lock, MV_LOCK_TMEM);
    tm_list_init(&t->chunks);
    t->spare_max = TM_SPARE_MAX;
    t->obj_buckets = 1024;
    t->objects = mv__calloc(t->obj_buckets, sizeof(*t->objects));
    rc = t->objects ? tm_store_init(t) : mv__fail(-ENOMEM, "tmem: out of memory");
    h->tmem = t;
    if (rc == 0)
        rc = tm_paging_init(t);
    return rc;
}

static void tmem_host_fini(struct mv_host *h)
{
    struct mv__tmem *t = h->tmem;

    if (!t)
        return;
    tm_paging_fini(t);
    tm_lock(t);
    t->paging_pool = NULL;
    t->paging_client = NULL;
    for (uint32_t i = 0; i < TM_MAX_POOLS; i++)
        if (t->pools[i])
            tm_pool_free(t, t->pools[i]);
    while (t->clients)
        tm_client_drop(t, t->clients->domid);
    tm_release_spare(t, UINT64_MAX);
    mv__mutex_unlock(&t->lock);
    tm_store_fini(t);
    free(t->objects);
    free(t->victims);
    mv__mutex_destroy(&t->lock);
    free(t);
    h->tmem = NULL;
}

/* Under the lock: tmem charges the budget, then counts the frames, both
 * under it, so the host audit never sees one without the other. */
static uint64_t tmem_host_frames(struct mv_host *h)
{
    struct mv__tmem *t = h->tmem;
    uint64_t frames;

    if (!t)
        return 0;
    tm_lock(t);
    frames = atomic_load(&t->charged);
    mv__mutex_unlock(&t->lock);
    return frames;
}

static uint64_t metadata(const struct mv__tmem *t)
{
    uint64_t bytes = sizeof(*t) + t->obj_buckets * sizeof(void *) +
                     t->dedup_buckets * sizeof(void *);

    bytes += t->chunk_count * sizeof(struct tm_chunk);
    bytes += t->zspage_count * (sizeof(struct tm_zspage) + 32 * sizeof(void *));
    bytes += t->blob_count * sizeof(struct tm_blob);
    bytes += t->page_count * sizeof(struct tm_page);
    bytes += t->obj_count * (sizeof(struct tm_object) + 8 * sizeof(void *));
    bytes += t->pool_count * sizeof(struct tm_pool);
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        bytes += t->cls[c].stage ? (uint64_t)t->cls[c].frames << MV_PAGE_SHIFT : 0;
        bytes += t->cls[c].ahead ? (uint64_t)TM_AHEAD_FRAMES << MV_PAGE_SHIFT : 0;
    }
    return bytes;
}

static uint64_t tmem_host_metadata(struct mv_host *h)
{
    struct mv__tmem *t = h->tmem;
    uint64_t bytes;

    if (!t)
        return 0;
    tm_lock(t);
    bytes = metadata(t);
    mv__mutex_unlock(&t->lock);
    return bytes;
}

static void tmem_host_stop(struct mv_host *h)
{
    if (h->tmem)
        tm_paging_stop(h->tmem);
}

static void tmem_domain_destroy(struct mv_domain *d)
{
    struct mv__tmem *t = d->host->tmem;

    if (!t)
        return;
    tm_lock(t);
    tm_paging_domain_gone(t, d->domid);
    tm_client_drop(t, d->domid);
    mv__mutex_unlock(&t->lock);
}

static int tmem_host_audit(struct mv_host *h)
{
    return mv_tmem_audit(h);
}

const struct mv__mechanism mv__tmem_mechanism = {
    .name = "tmem",
    .p2m_ops = { [MV_P2M_PAGED] = &mv__tmem_paged_ops },
    .host_init = tmem_host_init,
    .host_stop = tmem_host_stop,
    .host_fini = tmem_host_fini,
    .host_frames = tmem_host_frames,
    .host_metadata = tmem_host_metadata,
    .host_audit = tmem_host_audit,
    .domain_destroy = tmem_domain_destroy,
    .budget_short = tm_budget_short,
};

/* ---- statistics ---- */

static void counts_out(const struct tm_pool_counts *c, struct mv_tmem_counts *o)
{
    memset(o, 0, sizeof(*o));
    o->puts = c->puts;
    o->puts_stored = c->puts_stored;
    o->gets = c->gets;
    o->found_gets = c->found_gets;
    o->flushes = c->flushes;
    o->flush_objects = c->flush_objects;
    o->evictions = c->evictions;
    o->poor_compressions = c->poor_compressions;
    o->dedup_hits = c->dedup_hits;
    o->same_filled = c->same_filled;
    o->pages = c->pages;
    o->marker_pages = c->marker_pages;
    o->stored_bytes = c->stored_bytes;
    o->lz4_pages = c->lz4_pages;
    o->zstd_pages = c->zstd_pages;
}

static void counts_add(struct mv_tmem_counts *sum, const struct mv_tmem_counts *c)
{
    sum->puts += c->puts;
    sum->puts_stored += c->puts_stored;
    sum->gets += c->gets;
    sum->found_gets += c->found_gets;
    sum->flushes += c->flushes;
    sum->flush_objects += c->flush_objects;
    sum->evictions += c->evictions;
    sum->poor_compressions += c->poor_compressions;
    sum->dedup_hits += c->dedup_hits;
    sum->same_filled += c->same_filled;
    sum->pages += c->pages;
    sum->marker_pages += c->marker_pages;
    sum->stored_bytes += c->stored_bytes;
    sum->lz4_pages += c->lz4_pages;
    sum->zstd_pages += c->zstd_pages;
}

double mv_tmem_ratio(const struct mv_tmem_counts *c)
{
    if (!c || c->pages == 0)
        return 0;
    /* A page kept as a marker takes its one word. */
    return (double)c->pages * MV_PAGE_SIZE /
           (double)(c->stored_bytes + 8 * c->marker_pages + 1);
}

int mv_tmem_stats(mv_host *h, struct mv_tmem_stats *out)
{
    struct mv__tmem *t = tm_of(h);

    mv__clear_error();
    if (!out)
        return mv__fail(-EINVAL, "tmem: no stats buffer");
    memset(out, 0, sizeof(*out));
    tm_lock(t);
    out->frames = atomic_load(&t->charged);
    out->used_frames = t->used_frames;
    out->spare_frames = t->spare_frames;
    out->chunks = t->chunk_count;
    out->pools = t->pool_count;
    out->evictions = t->evictions;
    out->relinquished = t->relinquished;
    out->compactions = t->compactions;
    out->compact_moves = t->compact_moves;
    out->budget_short_calls = t->short_calls;
    out->budget_short_freed = t->short_freed;
    out->repaid = t->repaid;
    out->paged_out = t->paged_now;
    out->page_outs = t->page_outs;
    out->page_ins = t->page_ins;
    out->page_in_ns = t->page_in_ns;
    out->auto_paged = t->auto_paged;
    out->metadata_bytes = metadata(t);
    out->freeable_frames = tm_freeable_frames(t);
    out->store = t->store;
    out->store_mapped_ns = t->store_mapped_ns;
    out->store_copied_ns = t->store_copied_ns;
    out->store_read_aheads = t->read_aheads;
    out->store_read_ahead_hits = t->read_ahead_hits;
    for (uint32_t i = 0; i < TM_MAX_POOLS; i++) {
        struct mv_tmem_counts c;

        if (!t->pools[i])
            continue;
        counts_out(&t->pools[i]->c, &c);
        counts_add(&out->counts, &c);
    }
    mv__mutex_unlock(&t->lock);
    return 0;
}

int mv_tmem_pool_list(mv_host *h, struct mv_tmem_pool_info *out, size_t capacity)
{
    struct mv__tmem *t = tm_of(h);
    size_t n = 0;

    mv__clear_error();
    if (!out && capacity)
        return mv__fail(-EINVAL, "tmem: no pool buffer");
    tm_lock(t);
    for (uint32_t i = 0; i < TM_MAX_POOLS; i++) {
        struct tm_pool *p = t->pools[i];

        if (!p)
            continue;
        if (n < capacity) {
            struct mv_tmem_pool_info *o = &out[n];

            memset(o, 0, sizeof(*o));
            o->pool = p->id;
            o->owner = p->owner;
            o->flags = p->flags;
            o->members = (p->flags & MV_TMEM_SHARED) ? (uint32_t)p->member_count : 1;
            memcpy(o->uuid, p->uuid, sizeof(o->uuid));
            counts_out(&p->c, &o->counts);
        }
        n++;
    }
    mv__mutex_unlock(&t->lock);
    return (int)n;
}

int mv_tmem_client_list(mv_host *h, struct mv_tmem_client_info *out, size_t capacity)
{
    struct mv__tmem *t = tm_of(h);
    size_t n = 0;

    mv__clear_error();
    if (!out && capacity)
        return mv__fail(-EINVAL, "tmem: no client buffer");
    tm_lock(t);
    for (struct tm_client *c = t->clients; c; c = c->next) {
        if (n < capacity) {
            struct mv_tmem_client_info *o = &out[n];

            memset(o, 0, sizeof(*o));
            o->domid = c->domid;
            o->weight = c->weight;
            o->quota_pages = c->quota;
            o->persistent_pages = c->persistent;
            o->ephemeral_pages = c->ephemeral;
            o->collateral_pages = MV_MIN(c->collateral, c->ephemeral);
            o->repaid_pages = c->repaid;
            counts_out(&c->c, &o->counts);
        }
        n++;
    }
    mv__mutex_unlock(&t->lock);
    return (int)n;
}

/* ---- audit ---- */

/* Each domain's paged gfns against the host pool's pages of it (domain
 * lock, then tmem lock: exact while the domain faults). */
static int audit_paged(struct mv_host *h)
{
    struct mv__tmem *t = tm_of(h);
    struct mv_domain **all;
    size_t n;
    int rc = mv__domain_get_all(h, &all, &n);

    for (size_t i = 0; i < n; i++) {
        struct mv_domain *d = all[i];
        uint64_t held = 0;

        mv__mutex_lock(&d->lock);
        tm_lock(t);
        if (t->paging_pool) {
            struct tm_pool *pool = t->paging_pool;

            for (struct tm_list *e = pool->objects.next; e != &pool->objects; e = e->next) {
                struct tm_object *o = tm_container(e, struct tm_object, link);

                if (o->oid[0] == d->domid)
                    held += o->npages;
            }
        }
        if (rc == 0 && d->state != MV_DOMAIN_CRASHED && held != d->paged)
            rc = mv__fail(-EUCLEAN, "tmem: domain %u has %llu paged gfns, the host "
                          "pool holds %llu of its pages", d->domid,
                          (unsigned long long)d->paged, (unsigned long long)held);
        for (uint64_t g = 0; rc == 0 && d->paged && g < d->maxmem_pages; g++) {
            if (d->p2m[g] == MV_P2M_PAGED) {
                struct tm_object *o = NULL;
                uint64_t oid[3] = { d->domid, g >> 32, 0 };
                bool found = false;

                for (struct tm_list *e = t->paging_pool->objects.next;
                     !o && e != &t->paging_pool->objects; e = e->next) {
                    struct tm_object *x = tm_container(e, struct tm_object, link);

                    if (!memcmp(x->oid, oid, sizeof(oid)))
                        o = x;
                }
                for (size_t b = 0; o && !found && b < o->nbuckets; b++)
                    for (struct tm_page *pg = o->pages[b]; pg && !found; pg = pg->hnext)
                        found = pg->index == (uint32_t)g;
                if (!found)
                    rc = mv__fail(-EUCLEAN, "tmem: domain %u gfn %#llx is paged but "
                                  "the host pool has no copy", d->domid,
                                  (unsigned long long)g);
            }
        }
        mv__mutex_unlock(&t->lock);
        mv__mutex_unlock(&d->lock);
        mv__domain_put(d);
    }
    free(all);
    return rc;
}

int mv_tmem_audit(mv_host *h)
{
    struct mv__tmem *t = tm_of(h);
    uint64_t pages = 0, persistent = 0, ephemeral = 0;
    int rc;

    mv__clear_error();
    rc = audit_paged(h);
    if (rc < 0)
        return rc;
    tm_lock(t);
    rc = tm_paging_audit(t);
    if (rc == 0)
        rc = tm_store_audit(t);
    if (rc == 0)
        rc = tm_pool_audit(t);
    for (uint32_t i = 0; rc == 0 && i < TM_MAX_POOLS; i++)
        if (t->pools[i])
            pages += t->pools[i]->c.pages;
    for (struct tm_client *c = t->clients; rc == 0 && c; c = c->next) {
        persistent += c->persistent;
        ephemeral += c->ephemeral;
        if (c->c.pages != c->persistent + c->ephemeral)
            rc = mv__fail(-EUCLEAN, "tmem: domain %u counts %llu pages, %llu "
                          "persistent and %llu ephemeral", c->domid,
                          (unsigned long long)c->c.pages,
                          (unsigned long long)c->persistent,
                          (unsigned long long)c->ephemeral);
    }
    if (rc == 0 && persistent + ephemeral != pages)
        rc = mv__fail(-EUCLEAN, "tmem: the domains count %llu pages, the pools %llu",
                      (unsigned long long)(persistent + ephemeral),
                      (unsigned long long)pages);
    mv__mutex_unlock(&t->lock);
    return rc;
}
