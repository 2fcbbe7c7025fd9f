/*
 * rmap.c - reverse maps and per-domain shared-entry tables.  Each frame
 * keeps the (domain slot, gfn) pairs that map it (inline for up to
 * MV_RMAP_INLINE, then on the heap); each domain keeps, per shared gfn, the
 * frame and the gfn's position in that frame's reverse map, in one
 * zero-filled table of 2 MiB blocks, so dropping one of thousands of
 * mappings of a frame costs O(1).  Also a domain's sharing state (struct
 * mv__share_dom) from mv__share_domain_init to mv__share_domain_destroy.
 *
 * Invariants:
 *   frame.refs == |frame.rmap|;
 *   rmap entry i of frame f is (slot, gfn)  =>  registry[slot].frame[gfn] == f
 *   and registry[slot].pos[gfn] == i;
 *   p2m[gfn] == SHARED  <=>  the domain's entry names a live frame, or gfn is
 *   pending (frames.c);
 *   share.refs == sum over frames of frame.refs, a pending frame counting
 *   once per domain its region names.
 *
 * Locking: tables, reverse maps and the registry under share->lock; a gfn
 * changes to or from SHARED under its domain's lock as well.  excluded,
 * hashes and known: domain lock.
 */
#include "share.h"

/* The entries of gfn's block, pending ones near gfn written first. */
struct mv__share_block *share_dom_block(struct mv__share_dom *sd, uint64_t gfn, bool create)
{
    struct mv__share_region *r = sd->pending_region;

    if (r && r->pending[gfn / 64])
        share_materialize_word(sd->domain->host->share, r, gfn / 64);
    return block_raw(sd, gfn, create);
}

/* The frame shared gfn maps, or MV_NO_MFN when gfn is not shared (domain
 * and share locks held). */
uint64_t share_shared_mfn(struct mv_domain *d, uint64_t gfn)
{
    uint64_t mfn;

    if (gfn >= d->maxmem_pages || d->p2m[gfn] != MV_P2M_SHARED)
        return MV_NO_MFN;
    /* Looking a frame up does not write out pending ones: reads stay cheap. */
    mfn = entry_mfn(block_raw(d->share, gfn, false), gfn);
    return mfn != MV_NO_MFN ? mfn : pending_mfn(d->share, gfn);
}

uint64_t mv__share_mfn(struct mv_domain *d, uint64_t gfn)
{
    struct mv__share *s = d->host->share;
    uint64_t mfn;

    mv__mutex_lock(&s->lock);
    mfn = share_shared_mfn(d, gfn);
    mv__mutex_unlock(&s->lock);
    return mfn;
}

/* (d, gfn) now maps mfn.  Only fails for lack of memory, changing nothing. */
int share_rmap_add(struct mv__share *s, uint64_t mfn, struct mv_domain *d, uint64_t gfn)
{
    struct mv__sframe *f = share_frame_of(s, mfn);
    struct mv__share_block *b = share_dom_block(d->share, gfn, true);
    uint32_t cap = f->rmap_cap ? f->rmap_cap : MV_RMAP_INLINE;

    if (f->refs == cap) {
        uint64_t *n = mv__malloc((size_t)cap * 2 * sizeof(*n));

        if (!n)
            return -ENOMEM;
        memcpy(n, rmap_entries(f), cap * sizeof(*n));
        if (f->rmap_cap)
            free(f->rmap.heap);
        f->rmap.heap = n;
        f->rmap_cap = cap * 2;
    }
    rmap_entries(f)[f->refs] = rmap_encode(d->share, gfn);
    entry_set(b, gfn, mfn);
    b->pos[gfn % MV_BLOCK_PAGES] = f->refs;
    f->refs++;
    s->refs++;
    return 0;
}

/* (d, gfn) no longer maps its frame; free the frame when it was the last. */
void share_rmap_del(struct mv_host *h, struct mv_domain *d, uint64_t gfn, bool uncharge)
{
    struct mv__share *s = h->share;
    struct mv__share_block *b = share_dom_block(d->share, gfn, false);
    uint64_t mfn = entry_mfn(b, gfn);
    uint32_t pos = b->pos[gfn % MV_BLOCK_PAGES];
    struct mv__sframe *f = share_frame_of(s, mfn);
    uint64_t *e = rmap_entries(f);
    uint64_t last = e[f->refs - 1];

    e[pos] = last;
    if (pos != f->refs - 1) {
        struct mv__share_dom *other = s->registry[last >> MV_RMAP_GFN_BITS];
        uint64_t ogfn = last & ((1ull << MV_RMAP_GFN_BITS) - 1);

        share_dom_block(other, ogfn, false)->pos[ogfn % MV_BLOCK_PAGES] = pos;
    }
    entry_set(b, gfn, MV_NO_MFN);
    f->refs--;
    s->refs--;
    if (f->refs == 0)
        share_frame_free(h, mfn, uncharge);
}

static int registry_add(struct mv__share *s, struct mv__share_dom *sd)
{
    size_t slot = 0;

    while (slot < s->registry_capacity && s->registry[slot])
        slot++;
    if (slot == s->registry_capacity) {
        size_t cap = s->registry_capacity ? s->registry_capacity * 2 : 16;
        struct mv__share_dom **n = mv__realloc(s->registry, cap * sizeof(*n));

        if (!n)
            return -ENOMEM;
        memset(n + s->registry_capacity, 0, (cap - s->registry_capacity) * sizeof(*n));
        s->registry = n;
        s->registry_capacity = cap;
    }
    s->registry[slot] = sd;
    sd->slot = (uint32_t)slot;
    return 0;
}

int mv__share_domain_init(struct mv_domain *d)
{
    struct mv__share *s = d->host->share;
    struct mv__share_dom *sd = mv__calloc(1, sizeof(*sd));
    uint64_t blocks = (d->maxmem_pages + MV_BLOCK_PAGES - 1) / MV_BLOCK_PAGES;
    int rc;

    if (sd) {
        sd->table_bytes = blocks * sizeof(*sd->table);
        sd->table = mv__os_table_alloc(sd->table_bytes);
    }
    if (!sd || !sd->table ||
        !(sd->table_used = mv__calloc((blocks + 63) / 64, sizeof(*sd->table_used)))) {
        if (sd && sd->table)
            mv__os_unmap(sd->table, sd->table_bytes);
        free(sd);
        return mv__fail(-ENOMEM, "no memory for the sharing table");
    }
    sd->domain = d;
    mv__mutex_lock(&s->lock);
    rc = registry_add(s, sd);
    mv__mutex_unlock(&s->lock);
    if (rc < 0) {
        mv__os_unmap(sd->table, sd->table_bytes);
        free(sd->table_used);
        free(sd);
        return mv__fail(rc, "no memory to register a domain for sharing");
    }
    d->share = sd;
    d->cow_uffd = mv__ram_uffd(d, 0);
    if (d->cow_uffd < 0)
        return mv__fail(d->cow_uffd, "cannot open the copy-on-write userfaultfd: %s",
                        mv_strerror(d->cow_uffd));
    return kernel_copies(d) ? share_settler_start(d->host) : 0;
}

void mv__share_domain_destroy(struct mv_domain *d)
{
    struct mv__share *s = d->host->share;
    struct mv__share_dom *sd = d->share;
    struct mv__share_region *r;

    if (!sd)
        return;
    mv__mutex_lock(&s->lock);
    r = sd->pending_region;
    if (r)
        share_pending_let_go(s, d);
    s->scrub_batching = true;
    for (uint64_t g = 0; d->shared && g < d->maxmem_pages; g++) {
        if (d->p2m[g] == MV_P2M_SHARED) {
            share_rmap_del(d->host, d, g, true);
            mv__p2m_set(d, g, MV_P2M_POD);
        }
    }
    if (r && !r->pending_doms[0] && !r->pending_doms[1])
        share_pending_free(d->host, r);
    share_scrub_flush(d->host);
    s->scrub_batching = false;
    s->registry[sd->slot] = NULL;
    mv__mutex_unlock(&s->lock);
    mv__os_unmap(sd->table, sd->table_bytes);
    free(sd->table_used);
    free(sd->excluded);
    free(sd->hashes);
    free(sd->known);
    free(sd);
    d->share = NULL;
}

bool mv__share_excluded(struct mv_domain *d, uint64_t gfn)
{
    const uint64_t *x = d->share->excluded;

    return x && (x[gfn / 64] >> (gfn % 64) & 1);
}

uint64_t *mv__share_hashes(struct mv_domain *d)
{
    struct mv__share_dom *sd = d->share;

    if (!sd->hashes) {
        sd->hashes = mv__calloc(d->maxmem_pages, sizeof(*sd->hashes));
        sd->known = sd->hashes ? mv__calloc((d->maxmem_pages + 63) / 64, sizeof(uint64_t))
                               : NULL;
        if (!sd->known) {
            free(sd->hashes);
            sd->hashes = NULL;
        }
    }
    return sd->hashes;
}

bool mv__share_known(struct mv_domain *d, uint64_t gfn)
{
    const uint64_t *k = d->share->known;

    return k && (k[gfn / 64] >> (gfn % 64) & 1);
}

void mv__share_set_known(struct mv_domain *d, uint64_t gfn, bool known)
{
    uint64_t *k = d->share->known;

    if (!k)
        return;
    if (known)
        k[gfn / 64] |= 1ull << (gfn % 64);
    else
        k[gfn / 64] &= ~(1ull << (gfn % 64));
}

void mv__share_forget(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    uint64_t *k = d->share ? d->share->known : NULL;

    for (uint64_t g = gfn; k && g < gfn + n;) {
        if (g % 64 == 0 && gfn + n - g >= 64) {
            k[g / 64] = 0;
            g += 64;
        } else {
            k[g / 64] &= ~(1ull << (g % 64));
            g++;
        }
    }
}
