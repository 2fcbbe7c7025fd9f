/*
 * pool.c - the guest interface of tmem: clients (one per domain that used
 * tmem), pools, objects and pages, with Xen's semantics:
 *   - keys are (pool, 192-bit object id, 32-bit index);
 *   - an ephemeral put may be dropped (returns 0) and its page evicted at
 *     any time; a get from a private ephemeral pool is exclusive (removes
 *     the page);
 *   - a persistent put succeeds or fails at once, within the domain's
 *     quota, and its page is never evicted;
 *   - a put to a key that holds a page replaces it; a failed one leaves
 *     the key empty (the old page is flushed first).
 * A domain reaches its private pools and the shared pools it joined; a
 * shared pool is joined by UUID only by a domain the host authorised.
 *
 * Invariants (mv_tmem_audit): every page is in exactly one object of its
 * pool and, when ephemeral, in its client's LRU; pool, client and host
 * counts equal what the records hold; an object with no page exists only
 * while a put pins it; every client is listed once and found by its domid
 * (a hash, so a call costs the same with one domain or hundreds).
 *
 * Locking: the mv_tmem_* calls look the domain up first (no tmem lock),
 * then do all their work under tmem->lock; the tm_* helpers run with it
 * held.
 */
#include "tmem.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- clients ---- */

static struct tm_client **client_bucket(struct mv__tmem *t, uint32_t domid)
{
    return &t->client_hash[(domid * 2654435761u) >> 24 & (TM_CLIENT_BUCKETS - 1)];
}

struct tm_client *tm_client_find(struct mv__tmem *t, uint32_t domid)
{
    for (struct tm_client *c = *client_bucket(t, domid); c; c = c->hnext)
        if (c->domid == domid)
            return c;
    return NULL;
}

struct tm_client *tm_client_get(struct mv__tmem *t, uint32_t domid, uint64_t quota)
{
    struct tm_client *c = tm_client_find(t, domid);

    if (c)
        return c;
    if (tm_victims_reserve(t) < 0)
        return NULL;
    c = mv__calloc(1, sizeof(*c));
    if (!c) {
        mv__fail(-ENOMEM, "tmem: out of memory for a client record");
        return NULL;
    }
    c->domid = domid;
    c->weight = 100;
    c->quota = quota;
    tm_list_init(&c->lru);
    c->next = t->clients;
    t->clients = c;
    c->hnext = *client_bucket(t, domid);
    *client_bucket(t, domid) = c;
    t->client_count++;
    return c;
}

/* A live domain, referenced, and its maxmem in pages (its default quota):
 * 0 or -ESRCH.  The reference is held across the call's tmem work, so that
 * a destroy of the domain runs tmem's domain_destroy hook (which drops
 * what the domain has in tmem) only after that work: a client or pool made
 * for a domain being destroyed is never left behind.  Undone by
 * mv__domain_put. */
static int domain_hold(struct mv_host *h, uint32_t domid, struct mv_domain **d,
                       uint64_t *quota)
{
    *d = mv__domain_get(h, domid);
    if (!*d)
        return mv__fail(-ESRCH, "domain %u does not exist", domid);
    *quota = (*d)->maxmem_pages;
    return 0;
}

/* ---- objects ---- */

static size_t oid_hash(uint32_t pool, const uint64_t oid[3])
{
    uint64_t x = pool * 0x9e3779b97f4a7c15ull;

    for (int i = 0; i < 3; i++) {
        x ^= oid[i] + 0x9e3779b97f4a7c15ull + (x << 6) + (x >> 2);
        x *= 0xbf58476d1ce4e5b9ull;
    }
    return (size_t)(x ^ (x >> 31));
}

static struct tm_object **object_slot(struct mv__tmem *t, const struct tm_pool *pool,
                                      const uint64_t oid[3])
{
    struct tm_object **p = &t->objects[oid_hash(pool->id, oid) & (t->obj_buckets - 1)];

    for (; *p; p = &(*p)->hnext)
        if ((*p)->pool == pool && !memcmp((*p)->oid, oid, sizeof((*p)->oid)))
            break;
    return p;
}

static void objects_grow(struct mv__tmem *t)
{
    size_t n = t->obj_buckets * 2;
    struct tm_object **b = mv__calloc(n, sizeof(*b));

    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < t->obj_buckets; i++) {
        struct tm_object *o = t->objects[i], *next;

        for (; o; o = next) {
            size_t k = oid_hash(o->pool->id, o->oid) & (n - 1);

            next = o->hnext;
            o->hnext = b[k];
            b[k] = o;
        }
    }
    free(t->objects);
    t->objects = b;
    t->obj_buckets = n;
}

static struct tm_object *object_find(struct mv__tmem *t, struct tm_pool *pool,
                                     const uint64_t oid[3], bool create)
{
    struct tm_object **p = object_slot(t, pool, oid), *o = *p;

    if (o || !create)
        return o;
    o = mv__calloc(1, sizeof(*o));
    if (o)
        o->pages = mv__calloc(8, sizeof(*o->pages));
    if (!o || !o->pages) {
        free(o);
        mv__fail(-ENOMEM, "tmem: out of memory for an object record");
        return NULL;
    }
    o->nbuckets = 8;
    o->pool = pool;
    memcpy(o->oid, oid, sizeof(o->oid));
    *p = o;
    tm_list_add(&pool->objects, &o->link);
    if (++t->obj_count > t->obj_buckets)
        objects_grow(t);
    return o;
}

static void object_free(struct mv__tmem *t, struct tm_object *o)
{
    struct tm_object **p = object_slot(t, o->pool, o->oid);

    *p = o->hnext;
    tm_list_del(&o->link);
    t->obj_count--;
    free(o->pages);
    free(o);
}

static size_t index_bucket(const struct tm_object *o, uint32_t index)
{
    return (size_t)((index * 0x9e3779b1u) >> 7) & (o->nbuckets - 1);
}

static struct tm_page *page_find(struct tm_object *o, uint32_t index)
{
    struct tm_page *pg = o->pages[index_bucket(o, index)];

    while (pg && pg->index != index)
        pg = pg->hnext;
    return pg;
}

static void page_link(struct tm_object *o, struct tm_page *pg)
{
    size_t k;

    if (o->npages >= 2 * o->nbuckets) {
        size_t n = o->nbuckets * 2;
        struct tm_page **b = mv__calloc(n, sizeof(*b));

        if (b) {
            struct tm_page **old = o->pages;
            size_t oldn = o->nbuckets;

            o->pages = b;
            o->nbuckets = n;
            for (size_t i = 0; i < oldn; i++) {
                for (struct tm_page *x = old[i], *next; x; x = next) {
                    next = x->hnext;
                    k = index_bucket(o, x->index);
                    x->hnext = b[k];
                    b[k] = x;
                }
            }
            free(old);
        }
    }
    k = index_bucket(o, pg->index);
    pg->hnext = o->pages[k];
    o->pages[k] = pg;
    o->npages++;
}

static void page_unlink(struct tm_object *o, struct tm_page *pg)
{
    struct tm_page **p = &o->pages[index_bucket(o, pg->index)];

    while (*p != pg)
        p = &(*p)->hnext;
    *p = pg->hnext;
    o->npages--;
}

/* ---- pages ---- */

static void counts_pages(struct mv__tmem *t, struct tm_pool *pool, struct tm_client *c,
                         const struct tm_page *pg, int delta)
{
    pool->c.pages += (uint64_t)(int64_t)delta;
    c->c.pages += (uint64_t)(int64_t)delta;
    if (pg->kind == TM_PAGE_SAME) {
        pool->c.marker_pages += (uint64_t)(int64_t)delta;
        c->c.marker_pages += (uint64_t)(int64_t)delta;
    } else if (pg->blob->codec == TM_CODEC_LZ4) {
        pool->c.lz4_pages += (uint64_t)(int64_t)delta;
        c->c.lz4_pages += (uint64_t)(int64_t)delta;
    } else if (pg->blob->codec == TM_CODEC_ZSTD) {
        pool->c.zstd_pages += (uint64_t)(int64_t)delta;
        c->c.zstd_pages += (uint64_t)(int64_t)delta;
    }
    if (pool->flags & MV_TMEM_PERSISTENT) {
        c->persistent += (uint64_t)(int64_t)delta;
    } else {
        c->ephemeral += (uint64_t)(int64_t)delta;
        tm_victims_update(t, c);
    }
}

void tm_page_free(struct mv__tmem *t, struct tm_page *pg)
{
    struct tm_object *o = pg->obj;
    struct tm_pool *pool = o->pool;
    uint64_t before = pool->c.stored_bytes;

    page_unlink(o, pg);
    counts_pages(t, pool, pg->client, pg, -1);
    tm_release_page(t, pool, pg);
    pg->client->c.stored_bytes -= before - pool->c.stored_bytes;
    if (!(pool->flags & MV_TMEM_PERSISTENT))
        tm_list_del(&pg->lru);
    t->page_count--;
    free(pg);
    if (o->npages == 0 && o->pins == 0)
        object_free(t, o);
}

/* The pool `domid` may use, or -ENOENT / -EPERM with a message. */
static int pool_access(struct mv__tmem *t, uint32_t domid, uint32_t id,
                       struct tm_pool **out)
{
    struct tm_pool *pool = id < TM_MAX_POOLS ? t->pools[id] : NULL;

    if (!pool)
        return mv__fail(-ENOENT, "tmem pool %u does not exist", id);
    /* The host's own pools (host paging) are no guest's, whatever id a
     * caller claims to be. */
    if (pool->owner == TM_HOST_CLIENT)
        return mv__fail(-EPERM, "tmem pool %u belongs to the host", id);
    if (pool->flags & MV_TMEM_SHARED) {
        for (size_t i = 0; i < pool->member_count; i++)
            if (pool->members[i] == domid) {
                *out = pool;
                return 0;
            }
        return mv__fail(-EPERM, "domain %u has not joined shared tmem pool %u",
                        domid, id);
    }
    if (pool->owner != domid)
        return mv__fail(-EPERM, "tmem pool %u belongs to another domain", id);
    *out = pool;
    return 0;
}

void tm_pool_free(struct mv__tmem *t, struct tm_pool *pool)
{
    while (!tm_list_empty(&pool->objects)) {
        struct tm_object *o = tm_container(pool->objects.next, struct tm_object, link);

        o->pins++;
        for (size_t i = 0; i < o->nbuckets; i++)
            while (o->pages[i])
                tm_page_free(t, o->pages[i]);
        o->pins--;
        object_free(t, o);
    }
    t->pools[pool->id] = NULL;
    t->pool_count--;
    free(pool->members);
    free(pool);
}

/* Remove the pages `c` put in `pool` (a shared pool it leaves). */
static void pool_flush_client(struct mv__tmem *t, struct tm_pool *pool, struct tm_client *c)
{
    struct tm_list *e = pool->objects.next, *next;

    for (; e != &pool->objects; e = next) {
        struct tm_object *o = tm_container(e, struct tm_object, link);

        o->pins++;
        for (size_t i = 0; i < o->nbuckets; i++) {
            struct tm_page **p = &o->pages[i];

            while (*p) {
                if ((*p)->client == c)
                    tm_page_free(t, *p);
                else
                    p = &(*p)->hnext;
            }
        }
        o->pins--;
        next = e->next;
        if (o->npages == 0)
            object_free(t, o);
    }
}

/* `domid` leaves `pool`; the pool goes with its last member.  */
static void pool_leave(struct mv__tmem *t, struct tm_pool *pool, struct tm_client *c)
{
    if (!(pool->flags & MV_TMEM_SHARED)) {
        tm_pool_free(t, pool);
        return;
    }
    if (c)
        pool_flush_client(t, pool, c);
    for (size_t i = 0; i < pool->member_count; i++) {
        if (pool->members[i] == (c ? c->domid : pool->owner)) {
            pool->members[i] = pool->members[--pool->member_count];
            break;
        }
    }
    if (pool->member_count == 0)
        tm_pool_free(t, pool);
}

void tm_client_drop(struct mv__tmem *t, uint32_t domid)
{
    struct tm_client *c = tm_client_find(t, domid), **p;

    for (uint32_t i = 0; i < TM_MAX_POOLS; i++) {
        struct tm_pool *pool = t->pools[i];
        bool member = false;

        if (!pool)
            continue;
        if (pool->flags & MV_TMEM_SHARED) {
            for (size_t k = 0; k < pool->member_count; k++)
                member |= pool->members[k] == domid;
        } else {
            member = pool->owner == domid;
        }
        if (member && c)
            pool_leave(t, pool, c);
        else if (member)
            tm_pool_free(t, pool); /* a host pool, or one with no client */
        else if (c && (pool->flags & MV_TMEM_SHARED)) {
            pool_flush_client(t, pool, c);
        }
    }
    if (!c)
        return;
    for (p = &t->clients; *p != c; p = &(*p)->next)
        ;
    *p = c->next;
    for (p = client_bucket(t, domid); *p != c; p = &(*p)->hnext)
        ;
    *p = c->hnext;
    tm_victims_remove(t, c);
    t->client_count--;
    free(c->auth);
    free(c);
}

/* ---- the guest interface ---- */

static int check_key(const uint64_t *oid)
{
    if (!oid)
        return mv__fail(-EINVAL, "tmem: no object id given");
    return 0;
}

int mv_tmem_authorize(mv_host *h, uint32_t domid, const uint8_t uuid[MV_TMEM_UUID_SIZE])
{
    struct mv__tmem *t = tm_of(h);
    struct mv_domain *d;
    struct tm_client *c;
    uint64_t quota = 0;
    int rc;

    mv__clear_error();
    if (!uuid)
        return mv__fail(-EINVAL, "tmem: no UUID given");
    if ((rc = domain_hold(h, domid, &d, &quota)) < 0)
        return rc;
    tm_lock(t);
    c = tm_client_get(t, domid, quota);
    rc = c ? 0 : -ENOMEM;
    for (size_t i = 0; c && i < c->auth_count; i++)
        if (!memcmp(c->auth[i], uuid, MV_TMEM_UUID_SIZE))
            goto out;
    if (c) {
        uint8_t (*a)[16] = mv__realloc(c->auth, (c->auth_count + 1) * sizeof(*a));

        if (!a) {
            rc = mv__fail(-ENOMEM, "tmem: out of memory for an authorisation");
            goto out;
        }
        memcpy(a[c->auth_count++], uuid, MV_TMEM_UUID_SIZE);
        c->auth = a;
    }
out:
    mv__mutex_unlock(&t->lock);
    mv__domain_put(d);
    return rc;
}

static bool authorised(const struct tm_client *c, const uint8_t *uuid)
{
    for (size_t i = 0; i < c->auth_count; i++)
        if (!memcmp(c->auth[i], uuid, MV_TMEM_UUID_SIZE))
            return true;
    return false;
}

/* A new pool record in the first free id (lock held). */
int tm_pool_create(struct mv__tmem *t, uint32_t owner, unsigned flags,
                   const uint8_t *uuid, struct tm_pool **out)
{
    struct tm_pool *pool;
    uint32_t id;

    for (id = 0; id < TM_MAX_POOLS && t->pools[id]; id++)
        ;
    if (id == TM_MAX_POOLS)
        return mv__fail(-ENOSPC, "tmem: all %u pool ids are in use", TM_MAX_POOLS);
    pool = mv__calloc(1, sizeof(*pool));
    if (pool && (flags & MV_TMEM_SHARED))
        pool->members = mv__malloc(sizeof(*pool->members));
    if (!pool || ((flags & MV_TMEM_SHARED) && !pool->members)) {
        free(pool);
        return mv__fail(-ENOMEM, "tmem: out of memory for a pool");
    }
    pool->id = id;
    pool->owner = owner;
    pool->flags = flags;
    if (uuid)
        memcpy(pool->uuid, uuid, MV_TMEM_UUID_SIZE);
    if (flags & MV_TMEM_SHARED)
        pool->members[pool->member_count++] = owner;
    tm_list_init(&pool->objects);
    t->pools[id] = pool;
    atomic_store_explicit(&t->pool_zstd[id], (flags & MV_TMEM_ZSTD) != 0,
                          memory_order_relaxed);
    t->pool_count++;
    *out = pool;
    return 0;
}

int mv_tmem_new_pool(mv_host *h, uint32_t domid, unsigned flags, const uint8_t *uuid)
{
    struct mv__tmem *t = tm_of(h);
    struct tm_pool *pool = NULL;
    struct mv_domain *d;
    struct tm_client *c;
    uint64_t quota = 0;
    int rc;

    mv__clear_error();
    if (flags & ~MV_TMEM_FLAGS_ALL)
        return mv__fail(-EINVAL, "tmem: unknown pool flags %#x", flags & ~MV_TMEM_FLAGS_ALL);
    if ((flags & MV_TMEM_SHARED) && !uuid)
        return mv__fail(-EINVAL, "tmem: a shared pool needs a UUID");
    if ((rc = domain_hold(h, domid, &d, &quota)) < 0)
        return rc;
    tm_lock(t);
    c = tm_client_get(t, domid, quota);
    if (!c) {
        rc = -ENOMEM;
        goto out;
    }
    if (flags & MV_TMEM_SHARED) {
        if (!authorised(c, uuid)) {
            rc = mv__fail(-EPERM, "domain %u is not authorised for this shared "
                          "tmem pool UUID", domid);
            goto out;
        }
        for (uint32_t i = 0; i < TM_MAX_POOLS; i++) {
            struct tm_pool *p = t->pools[i];
            uint32_t *m;

            if (!p || !(p->flags & MV_TMEM_SHARED) ||
                memcmp(p->uuid, uuid, MV_TMEM_UUID_SIZE))
                continue;
            if (p->flags != flags) {
                rc = mv__fail(-EINVAL, "tmem: shared pool %u of this UUID has flags "
                              "%#x, not %#x", i, p->flags, flags);
                goto out;
            }
            for (size_t k = 0; k < p->member_count; k++)
                if (p->members[k] == domid) {
                    rc = (int)i;
                    goto out;
                }
            m = mv__realloc(p->members, (p->member_count + 1) * sizeof(*m));
            if (!m) {
                rc = mv__fail(-ENOMEM, "tmem: out of memory joining a pool");
                goto out;
            }
            m[p->member_count++] = domid;
            p->members = m;
            rc = (int)i;
            goto out;
        }
    }
    rc = tm_pool_create(t, domid, flags, (flags & MV_TMEM_SHARED) ? uuid : NULL, &pool);
    if (rc == 0)
        rc = (int)pool->id;
out:
    mv__mutex_unlock(&t->lock);
    mv__domain_put(d);
    return rc;
}

int mv_tmem_destroy_pool(mv_host *h, uint32_t domid, uint32_t id)
{
    struct mv__tmem *t = tm_of(h);
    struct tm_pool *pool;
    int rc;

    mv__clear_error();
    tm_lock(t);
    rc = pool_access(t, domid, id, &pool);
    if (rc == 0)
        pool_leave(t, pool, tm_client_find(t, domid));
    mv__mutex_unlock(&t->lock);
    return rc;
}

/* The put, lock held: 1 stored, 0 dropped, or a negative errno. */
int tm_put(struct mv__tmem *t, struct tm_client *c, struct tm_pool *pool,
           const uint64_t oid[3], uint32_t index, const uint8_t *page,
           const struct tm_prepared *prep)
{
    bool persistent = pool->flags & MV_TMEM_PERSISTENT;
    struct tm_object *o;
    struct tm_page *pg;
    uint64_t before;
    int rc;

    pool->c.puts++;
    c->c.puts++;
    o = object_find(t, pool, oid, true);
    if (!o)
        return persistent ? -ENOMEM : 0;
    o->pins++;
    pg = page_find(o, index);
    if (pg)
        tm_page_free(t, pg); /* replaced: a failure below leaves no page */
    if (persistent && c->persistent >= c->quota) {
        rc = mv__fail(-EDQUOT, "domain %u is at its quota of %llu persistent "
                      "tmem pages", c->domid, (unsigned long long)c->quota);
        goto out;
    }
    pg = mv__calloc(1, sizeof(*pg));
    if (!pg) {
        rc = mv__fail(-ENOMEM, "tmem: out of memory for a page record");
        goto out;
    }
    pg->obj = o;
    pg->index = index;
    pg->client = c;
    tm_list_init(&pg->lru);
    before = pool->c.stored_bytes;
    rc = tm_store_page(t, pool, pg, page, prep, pool->flags & MV_TMEM_DEDUP);
    if (rc < 0) {
        free(pg);
        goto out;
    }
    c->c.stored_bytes += pool->c.stored_bytes - before;
    page_link(o, pg);
    counts_pages(t, pool, c, pg, 1);
    if (!persistent)
        tm_list_add(&c->lru, &pg->lru);
    t->page_count++;
    pool->c.puts_stored++;
    c->c.puts_stored++;
    rc = 1;
out:
    o->pins--;
    if (o->npages == 0)
        object_free(t, o);
    if (rc < 0 && !persistent) {
        mv__clear_error();
        rc = 0; /* an ephemeral put may be dropped */
    }
    return rc;
}

int mv_tmem_put_page(mv_host *h, uint32_t domid, uint32_t id, const uint64_t oid[3],
                     uint32_t index, const void *page, size_t size)
{
    struct mv__tmem *t = tm_of(h);
    struct tm_prepared prep;
    struct tm_pool *pool;
    struct tm_client *c;
    bool prepared;
    int rc;

    mv__clear_error();
    if (!page || size != MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "tmem: a put takes one page of %u bytes, not %zu%s",
                        MV_PAGE_SIZE, size, page ? "" : " at NULL");
    if ((rc = check_key(oid)) < 0)
        return rc;
    /* Compressed before the lock unless the pool (as it looks now) is a
     * zstd one: tm_store_page compresses under the lock what this did not
     * ready for it. */
    prepared = id >= TM_MAX_POOLS ||
               !atomic_load_explicit(&t->pool_zstd[id], memory_order_relaxed);
    if (prepared)
        tm_prepare_page(page, &prep);
    tm_lock(t);
    rc = pool_access(t, domid, id, &pool);
    c = rc == 0 ? tm_client_find(t, domid) : NULL;
    if (rc == 0)
        rc = tm_put(t, c, pool, oid, index, page, prepared ? &prep : NULL);
    mv__mutex_unlock(&t->lock);
    return rc;
}

/* The get, lock held: 1 found (copied to page), 0 not, or a negative errno. */
int tm_peek(struct mv__tmem *t, struct tm_pool *pool, const uint64_t oid[3],
            uint32_t index, uint8_t *page, struct tm_page **found)
{
    struct tm_object *o = object_find(t, pool, oid, false);
    struct tm_page *pg = o ? page_find(o, index) : NULL;
    int rc;

    if (!pg)
        return 0;
    rc = tm_load_page(t, pg, page);
    if (rc < 0)
        return rc;
    if (found)
        *found = pg;
    return 1;
}

void tm_count_get(struct tm_client *c, struct tm_pool *pool, bool found)
{
    pool->c.gets++;
    c->c.gets++;
    pool->c.found_gets += found;
    c->c.found_gets += found;
}

int tm_get(struct mv__tmem *t, struct tm_client *c, struct tm_pool *pool,
           const uint64_t oid[3], uint32_t index, uint8_t *page, bool keep)
{
    struct tm_page *pg;
    int rc = tm_peek(t, pool, oid, index, page, &pg);

    tm_count_get(c, pool, rc == 1);
    if (rc != 1)
        return rc;
    if (!(pool->flags & MV_TMEM_PERSISTENT)) {
        if (!(pool->flags & MV_TMEM_SHARED) && !keep) {
            tm_page_free(t, pg); /* exclusive get */
        } else {
            tm_list_del(&pg->lru);
            tm_list_add(&pg->client->lru, &pg->lru);
        }
    }
    return 1;
}

int mv_tmem_get_page(mv_host *h, uint32_t domid, uint32_t id, const uint64_t oid[3],
                     uint32_t index, void *page, size_t size)
{
    struct mv__tmem *t = tm_of(h);
    struct tm_pool *pool;
    int rc;

    mv__clear_error();
    if (!page || size != MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "tmem: a get takes a buffer of one page of %u "
                        "bytes, not %zu%s", MV_PAGE_SIZE, size, page ? "" : " at NULL");
    if ((rc = check_key(oid)) < 0)
        return rc;
    tm_lock(t);
    rc = pool_access(t, domid, id, &pool);
    if (rc == 0)
        rc = tm_get(t, tm_client_find(t, domid), pool, oid, index, page, false);
    mv__mutex_unlock(&t->lock);
    return rc;
}

int tm_flush(struct mv__tmem *t, struct tm_pool *pool, const uint64_t oid[3],
             uint32_t index)
{
    struct tm_object *o = object_find(t, pool, oid, false);
    struct tm_page *pg = o ? page_find(o, index) : NULL;

    if (pg)
        tm_page_free(t, pg);
    return pg != NULL;
}

int mv_tmem_flush_page(mv_host *h, uint32_t domid, uint32_t id, const uint64_t oid[3],
                       uint32_t index)
{
    struct mv__tmem *t = tm_of(h);
    struct tm_pool *pool;
    int rc;

    mv__clear_error();
    if ((rc = check_key(oid)) < 0)
        return rc;
    tm_lock(t);
    rc = pool_access(t, domid, id, &pool);
    if (rc == 0) {
        rc = tm_flush(t, pool, oid, index);
        if (rc) {
            struct tm_client *c = tm_client_find(t, domid);

            pool->c.flushes++;
            c->c.flushes++;
        }
    }
    mv__mutex_unlock(&t->lock);
    return rc;
}

int64_t mv_tmem_flush_object(mv_host *h, uint32_t domid, uint32_t id, const uint64_t oid[3])
{
    struct mv__tmem *t = tm_of(h);
    struct tm_pool *pool;
    struct tm_object *o;
    int64_t rc;
    int r;

    mv__clear_error();
    if ((r = check_key(oid)) < 0)
        return r;
    tm_lock(t);
    r = pool_access(t, domid, id, &pool);
    rc = r;
    if (r == 0) {
        struct tm_client *c = tm_client_find(t, domid);

        rc = 0;
        o = object_find(t, pool, oid, false);
        if (o) {
            o->pins++;
            for (size_t i = 0; i < o->nbuckets; i++) {
                while (o->pages[i]) {
                    tm_page_free(t, o->pages[i]);
                    rc++;
                }
            }
            o->pins--;
            object_free(t, o);
        }
        pool->c.flushes += (uint64_t)rc;
        pool->c.flush_objects++;
        c->c.flushes += (uint64_t)rc;
        c->c.flush_objects++;
    }
    mv__mutex_unlock(&t->lock);
    return rc;
}

int mv_tmem_set_client(mv_host *h, uint32_t domid, unsigned weight, uint64_t quota_pages)
{
    struct mv__tmem *t = tm_of(h);
    struct mv_domain *d;
    struct tm_client *c;
    uint64_t quota = 0;
    int rc;

    mv__clear_error();
    if (weight < 1 || weight > 10000)
        return mv__fail(-EINVAL, "tmem: weight %u is outside 1..10000", weight);
    if ((rc = domain_hold(h, domid, &d, &quota)) < 0)
        return rc;
    tm_lock(t);
    c = tm_client_get(t, domid, quota);
    if (c) {
        c->weight = weight;
        c->quota = quota_pages;
        tm_victims_update(t, c);
    }
    mv__mutex_unlock(&t->lock);
    mv__domain_put(d);
    return c ? 0 : -ENOMEM;
}

int mv_tmem_set_collateral(mv_host *h, uint32_t domid, uint64_t pages)
{
    struct mv__tmem *t = tm_of(h);
    struct mv_domain *d;
    struct tm_client *c;
    uint64_t quota = 0;
    int rc;

    mv__clear_error();
    if ((rc = domain_hold(h, domid, &d, &quota)) < 0)
        return rc;
    tm_lock(t);
    c = tm_client_get(t, domid, quota);
    if (c)
        c->collateral = pages;
    mv__mutex_unlock(&t->lock);
    mv__domain_put(d);
    return c ? 0 : -ENOMEM;
}

/* ---- audit of the records ---- */

int tm_pool_audit(struct mv__tmem *t)
{
    uint64_t pages = 0, objects = 0, pools = 0, clients = 0, hashed = 0;
    int rc;

    for (size_t b = 0; b < TM_CLIENT_BUCKETS; b++)
        for (struct tm_client *c = t->client_hash[b]; c; c = c->hnext)
            hashed++;
    for (struct tm_client *c = t->clients; c; c = c->next) {
        uint64_t n = 0;

        clients++;
        if (tm_client_find(t, c->domid) != c)
            return mv__fail(-EUCLEAN, "tmem: domain %u's client is not found by its id",
                            c->domid);

        for (struct tm_list *e = c->lru.next; e != &c->lru; e = e->next) {
            struct tm_page *pg = tm_container(e, struct tm_page, lru);

            if (pg->client != c || (pg->obj->pool->flags & MV_TMEM_PERSISTENT))
                return mv__fail(-EUCLEAN, "tmem: domain %u's LRU holds a page "
                                "not its own or persistent", c->domid);
            n++;
        }
        if (n != c->ephemeral)
            return mv__fail(-EUCLEAN, "tmem: domain %u counts %llu ephemeral pages, "
                            "its LRU holds %llu", c->domid,
                            (unsigned long long)c->ephemeral, (unsigned long long)n);
    }
    if (hashed != clients || clients != t->client_count)
        return mv__fail(-EUCLEAN, "tmem: %llu clients listed, %llu found by id, %zu counted",
                        (unsigned long long)clients, (unsigned long long)hashed,
                        t->client_count);
    if ((rc = tm_victims_audit(t)) < 0)
        return rc;
    for (uint32_t i = 0; i < TM_MAX_POOLS; i++) {
        struct tm_pool *pool = t->pools[i];
        uint64_t n = 0, markers = 0, lz4 = 0, zstd = 0, foreign;

        if (!pool)
            continue;
        pools++;
        if (pool->id != i)
            return mv__fail(-EUCLEAN, "tmem: pool %u is recorded as %u", i, pool->id);
        for (struct tm_list *e = pool->objects.next; e != &pool->objects; e = e->next) {
            struct tm_object *o = tm_container(e, struct tm_object, link);
            uint64_t k = 0;

            if (o->pool != pool || *object_slot(t, pool, o->oid) != o)
                return mv__fail(-EUCLEAN, "tmem: an object of pool %u is not "
                                "found by its key", i);
            for (size_t b = 0; b < o->nbuckets; b++) {
                for (struct tm_page *pg = o->pages[b]; pg; pg = pg->hnext) {
                    if (pg->obj != o || index_bucket(o, pg->index) != b)
                        return mv__fail(-EUCLEAN, "tmem: a page of pool %u is in "
                                        "the wrong object or bucket", i);
                    if (pg->kind == TM_PAGE_BLOB &&
                        (!pg->blob || pg->blob->zs->owner[pg->blob->slot] != pg->blob))
                        return mv__fail(-EUCLEAN, "tmem: a page of pool %u names "
                                        "a slot that does not hold its bytes", i);
                    if (pg->kind == TM_PAGE_BLOB &&
                        pg->blob->persistent != !!(pool->flags & MV_TMEM_PERSISTENT))
                        return mv__fail(-EUCLEAN, "tmem: a page of %s pool %u is stored "
                                        "as %s", pool->flags & MV_TMEM_PERSISTENT ?
                                        "persistent" : "ephemeral", i,
                                        pg->blob->persistent ? "persistent" : "ephemeral");
                    k++;
                    markers += pg->kind == TM_PAGE_SAME;
                    lz4 += pg->kind == TM_PAGE_BLOB && pg->blob->codec == TM_CODEC_LZ4;
                    zstd += pg->kind == TM_PAGE_BLOB && pg->blob->codec == TM_CODEC_ZSTD;
                }
            }
            if (k != o->npages || k == 0)
                return mv__fail(-EUCLEAN, "tmem: an object of pool %u counts %zu "
                                "pages, holds %llu", i, o->npages, (unsigned long long)k);
            n += k;
            objects++;
        }
        if (n != pool->c.pages || markers != pool->c.marker_pages)
            return mv__fail(-EUCLEAN, "tmem: pool %u counts %llu pages (%llu markers), "
                            "holds %llu (%llu)", i, (unsigned long long)pool->c.pages,
                            (unsigned long long)pool->c.marker_pages,
                            (unsigned long long)n, (unsigned long long)markers);
        if (lz4 != pool->c.lz4_pages || zstd != pool->c.zstd_pages)
            return mv__fail(-EUCLEAN, "tmem: pool %u counts %llu lz4 and %llu zstd pages, "
                            "holds %llu and %llu", i, (unsigned long long)pool->c.lz4_pages,
                            (unsigned long long)pool->c.zstd_pages,
                            (unsigned long long)lz4, (unsigned long long)zstd);
        /* A pool's pages are compressed by its own codec only. */
        foreign = (pool->flags & MV_TMEM_ZSTD) ? lz4 : zstd;
        if (foreign)
            return mv__fail(-EUCLEAN, "tmem: pool %u (%s) holds %llu pages compressed "
                            "by the other codec", i,
                            (pool->flags & MV_TMEM_ZSTD) ? "zstd" : "lz4",
                            (unsigned long long)foreign);
        pages += n;
    }
    if (pages != t->page_count || objects != t->obj_count || pools != t->pool_count)
        return mv__fail(-EUCLEAN, "tmem: %llu pages, %llu objects, %llu pools found; "
                        "counted %llu, %llu, %llu", (unsigned long long)pages,
                        (unsigned long long)objects, (unsigned long long)pools,
                        (unsigned long long)t->page_count,
                        (unsigned long long)t->obj_count,
                        (unsigned long long)t->pool_count);
    return 0;
}
