/*
 * audit.c - mv_share_audit: checks the invariants of share.h against the
 * frames, the reverse maps, the domains' entries and the guests' mappings,
 * and reports the first one broken (-EUCLEAN, with a message).
 *
 * Invariants checked:
 *   frame.refs == |frame.rmap| > 0, and every live or pending frame holds
 *   memory; a free frame below its region's bump holds none;
 *   every rmap entry (dom, gfn) has dom.frame[gfn] == frame at that position;
 *   a pending frame has no record, and its gfn is SHARED with no entry in
 *   each domain that its region names and that names the region;
 *   sum over domains of shared gfns == share.refs (saved + frames);
 *   an indexed frame's bytes hash to its index entry;
 *   no guest write lives outside machine frames (audit_private_copies);
 *   where stores to shared pages trap, no shared gfn is mapped writable
 *   (audit_shared_protected).
 *
 * Locking: settles kernel copies first (no lock held), then the share lock
 * for the frames, then each domain's lock and the share lock for its side.
 */
#include "share.h"

/* Audit one frame (share lock held). */
static int audit_frame(struct mv_host *h, uint64_t mfn, struct mv__sframe *f,
                       uint8_t *page, const uint8_t *resident)
{
    struct mv__share *s = h->share;
    uint64_t *e = rmap_entries(f);

    if (f->refs == 0)
        return mv__fail(-EUCLEAN, "shared frame %#llx is live with no mapping",
                        (unsigned long long)mfn);
    if (!*resident)
        return mv__fail(-EUCLEAN, "shared frame %#llx holds no memory",
                        (unsigned long long)mfn);
    for (uint32_t i = 0; i < f->refs; i++) {
        uint64_t slot = e[i] >> MV_RMAP_GFN_BITS, gfn = e[i] & ((1ull << MV_RMAP_GFN_BITS) - 1);
        struct mv__share_dom *sd = slot < s->registry_capacity ? s->registry[slot] : NULL;
        struct mv__share_block *b = sd && gfn < sd->domain->maxmem_pages
                                    ? block_raw(sd, gfn, false) : NULL;

        if (!b || entry_mfn(b, gfn) != mfn || b->pos[gfn % MV_BLOCK_PAGES] != i)
            return mv__fail(-EUCLEAN, "shared frame %#llx: reverse-map entry %u "
                            "(slot %llu, gfn %#llx) does not match the domain",
                            (unsigned long long)mfn, i, (unsigned long long)slot,
                            (unsigned long long)gfn);
    }
    if (f->flags & FRAME_INDEXED) {
        int rc = mv__machine_read(&h->machine, mfn, 1, page);

        if (rc < 0)
            return rc;
        if (mv__page_hash(page) != f->hash)
            return mv__fail(-EUCLEAN, "shared frame %#llx no longer holds the bytes "
                            "its index entry was made from", (unsigned long long)mfn);
    }
    return 0;
}

/* A pending frame (share lock held): mapped by its gfn in the domains the
 * region names (one or both), which name the region back and hold no entry
 * for the gfn. */
static int audit_pending_frame(struct mv__share_region *r, uint64_t gfn,
                               const uint8_t *resident)
{
    if (r->frames[gfn].flags & FRAME_LIVE)
        return mv__fail(-EUCLEAN, "shared frame %#llx is pending and has a record",
                        (unsigned long long)(r->first + gfn));
    if (!*resident)
        return mv__fail(-EUCLEAN, "shared frame %#llx holds no memory",
                        (unsigned long long)(r->first + gfn));
    if (!r->pending_doms[0] && !r->pending_doms[1])
        return mv__fail(-EUCLEAN, "pending shared frame %#llx has no domain",
                        (unsigned long long)(r->first + gfn));
    for (int i = 0; i < 2; i++) {
        struct mv__share_dom *sd = r->pending_doms[i];

        if (!sd)
            continue;
        if (sd->pending_region != r || gfn >= sd->domain->maxmem_pages ||
            sd->domain->p2m[gfn] != MV_P2M_SHARED ||
            entry_mfn(block_raw(sd, gfn, false), gfn) != MV_NO_MFN)
            return mv__fail(-EUCLEAN, "pending shared frame %#llx is not mapped by gfn "
                            "%#llx of its %s alone", (unsigned long long)(r->first + gfn),
                            (unsigned long long)gfn, i == 0 ? "source" : "clone");
    }
    return 0;
}

/* One domain's side (its lock and the share lock held): a gfn is SHARED
 * exactly when its entry names a live frame whose reverse map holds it, or
 * it maps a pending frame (checked from the frame's side). */
static int audit_domain_entries(struct mv_host *h, struct mv_domain *d)
{
    struct mv__share *s = h->share;
    struct mv__share_dom *sd = d->share;

    for (uint64_t g = 0; g < d->maxmem_pages; g++) {
        struct mv__share_block *b = block_raw(sd, g, false);
        uint64_t mfn = entry_mfn(b, g), pending = pending_mfn(sd, g);
        struct mv__sframe *f = mfn != MV_NO_MFN ? share_frame_raw(s, mfn) : NULL;

        if (d->p2m[g] != MV_P2M_SHARED || pending != MV_NO_MFN) {
            if (mfn != MV_NO_MFN || (pending != MV_NO_MFN && d->p2m[g] != MV_P2M_SHARED))
                return mv__fail(-EUCLEAN, "domain %u: gfn %#llx is %s but names frame "
                                "%#llx", d->domid, (unsigned long long)g,
                                d->p2m[g] != MV_P2M_SHARED ? "not shared" : "pending",
                                (unsigned long long)(mfn != MV_NO_MFN ? mfn : pending));
            continue;
        }
        if (!f || !(f->flags & FRAME_LIVE) || b->pos[g % MV_BLOCK_PAGES] >= f->refs ||
            rmap_entries(f)[b->pos[g % MV_BLOCK_PAGES]] != rmap_encode(sd, g))
            return mv__fail(-EUCLEAN, "domain %u: shared gfn %#llx is not in its "
                            "frame's reverse map", d->domid, (unsigned long long)g);
    }
    return 0;
}

/*
 * No guest write lives outside machine frames (domain lock held).  An
 * anonymous copy at a shared gfn may exist for a moment: a write to a page
 * the kernel had unmapped keeps its write protection through a copy of the
 * frame, then traps and is broken as usual.  Such a copy must still be
 * write-protected and equal its frame; any other is a write that escaped.
 * Where the kernel copies on write (MV_COW_KERNEL), a copy is a write not
 * settled yet, and must be of a shared gfn.
 */
static int audit_private_copies(struct mv_domain *d)
{
    uint8_t found[MV_BLOCK_PAGES], frame[MV_PAGE_SIZE], copy[MV_PAGE_SIZE];
    struct mv__share *s = d->host->share;

    if (d->state == MV_DOMAIN_CRASHED || atomic_load(&d->dying))
        return 0;
    for (uint64_t g = 0; g < d->maxmem_pages; g += MV_BLOCK_PAGES) {
        uint64_t n = MV_MIN(MV_BLOCK_PAGES, d->maxmem_pages - g);
        long copies = share_find_private_copies(d, g, n, found);

        if (copies < 0)
            return mv__fail((int)copies, "domain %u: cannot look for private copies "
                            "near gfn %#llx: %s", d->domid, (unsigned long long)g,
                            mv_strerror((int)copies));
        for (uint64_t i = 0; copies > 0 && i < n; i++) {
            uint64_t mfn;

            if (!found[i])
                continue;
            if (kernel_copies(d)) {
                /* A copy made since the settle, or one waiting for memory:
                 * it must be of a shared gfn. */
                if (d->p2m[g + i] != MV_P2M_SHARED)
                    return mv__fail(-EUCLEAN, "domain %u: gfn %#llx, not shared, lives "
                                    "in a private anonymous copy", d->domid,
                                    (unsigned long long)(g + i));
                continue;
            }
            if (found[i] & PAGE_IS_WRITTEN)
                return mv__fail(-EUCLEAN, "domain %u: gfn %#llx was written to a private "
                                "anonymous copy, not to a machine frame", d->domid,
                                (unsigned long long)(g + i));
            mv__mutex_lock(&s->lock);
            mfn = share_shared_mfn(d, g + i);
            mv__mutex_unlock(&s->lock);
            if (mfn == MV_NO_MFN ||
                mv__machine_read(&d->host->machine, mfn, 1, frame) < 0 ||
                mv__ram_read_mapped(d, g + i, 1, copy) < 0 ||
                memcmp(frame, copy, MV_PAGE_SIZE) != 0)
                return mv__fail(-EUCLEAN, "domain %u: gfn %#llx lives in a private "
                                "anonymous copy that is not its shared frame's",
                                d->domid, (unsigned long long)(g + i));
        }
    }
    return 0;
}

/*
 * Where a store to a shared page must trap (MV_COW_TRAP), no shared gfn is
 * mapped writable: a page of it in the page tables is write-protected
 * (domain lock held).  A clone's source maps its former frames MAP_SHARED
 * (clone.c), where a missed protection would let a store reach a frame the
 * clone maps.
 */
static int audit_shared_protected(struct mv_domain *d)
{
    struct page_region regions[64];
    uintptr_t base = (uintptr_t)mv__gfn_addr(d, 0);
    uintptr_t start = base, end = base + (d->maxmem_pages << MV_PAGE_SHIFT);

    if (kernel_copies(d) || d->shared == 0 || d->state == MV_DOMAIN_CRASHED ||
        atomic_load(&d->dying))
        return 0;
    while (start < end) {
        struct pm_scan_arg arg = {
            .size = sizeof(arg), .start = start, .end = end,
            .vec = (uintptr_t)regions, .vec_len = MV_ARRAY_SIZE(regions),
            .category_mask = PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_WRITTEN,
            .return_mask = PAGE_IS_WRITTEN,
        };
        long r = mv__os_pagemap_scan(mv__ram_pagemap_fd(d), &arg);

        if (r < 0)
            return mv__fail((int)r, "domain %u: cannot read its page tables: %s",
                            d->domid, mv_strerror((int)r));
        for (long i = 0; i < r; i++) {
            for (uintptr_t p = regions[i].start; p < regions[i].end; p += MV_PAGE_SIZE) {
                uint64_t gfn = (p - base) >> MV_PAGE_SHIFT;

                if (d->p2m[gfn] == MV_P2M_SHARED)
                    return mv__fail(-EUCLEAN, "domain %u: shared gfn %#llx is mapped "
                                    "writable", d->domid, (unsigned long long)gfn);
            }
        }
        start = arg.walk_end <= start || r < (long)MV_ARRAY_SIZE(regions) ? end
                                                                          : arg.walk_end;
    }
    return 0;
}

/* The frames (share lock held): residency, reverse maps, index bytes. */
static int audit_frames(struct mv_host *host, uint64_t *frames)
{
    struct mv__share *s = host->share;
    uint8_t *page = mv__malloc(MV_PAGE_SIZE), *resident = NULL;
    int rc = page ? 0 : mv__fail(-ENOMEM, "audit: no memory");

    for (size_t i = 0; i < s->region_count && rc == 0; i++) {
        struct mv__share_region *r = s->regions[i];
        uint64_t live = 0, pending = 0;

        free(resident);
        resident = mv__malloc(r->pages);
        if (!resident) {
            rc = mv__fail(-ENOMEM, "audit: no memory");
            break;
        }
        rc = mv__machine_resident(&host->machine, r->first, r->pages, resident);
        for (uint64_t j = 0; rc == 0 && j < r->pages; j++) {
            if (r->pending && (r->pending[j / 64] >> (j % 64) & 1)) {
                live++;
                pending++;
                rc = audit_pending_frame(r, j, &resident[j]);
            } else if (r->frames[j].flags & FRAME_LIVE) {
                live++;
                rc = audit_frame(host, r->first + j, &r->frames[j], page, &resident[j]);
            } else if (resident[j] && j < r->bump) {
                rc = mv__fail(-EUCLEAN, "free shared frame %#llx holds memory",
                              (unsigned long long)(r->first + j));
            }
        }
        if (rc == 0 && live != r->live)
            rc = mv__fail(-EUCLEAN, "shared region at %#llx counts %llu live frames, "
                          "holds %llu", (unsigned long long)r->first,
                          (unsigned long long)r->live, (unsigned long long)live);
        if (rc == 0 && pending != r->pending_frames)
            rc = mv__fail(-EUCLEAN, "shared region at %#llx counts %llu pending frames, "
                          "holds %llu", (unsigned long long)r->first,
                          (unsigned long long)r->pending_frames, (unsigned long long)pending);
        *frames += live;
    }
    free(resident);
    free(page);
    return rc;
}

/* Shared entries of every registered domain (share lock held: they only
 * change under it, so the sum is exact even while guests run). */
static uint64_t count_shared_entries(struct mv__share *s)
{
    uint64_t entries = 0;

    for (size_t i = 0; i < s->registry_capacity; i++) {
        struct mv__share_dom *sd = s->registry[i];
        uint64_t pages = sd ? sd->domain->maxmem_pages : 0;

        for (uint64_t g = 0; g < pages; g += MV_BLOCK_PAGES) {
            struct mv__share_block *b = block_raw(sd, g, false);

            for (uint64_t k = 0; b && k < MV_BLOCK_PAGES; k++)
                entries += b->frame_plus_one[k] != 0;
        }
        /* Pending frames are mapped by both of their domains. */
        if (sd && sd->pending_region)
            entries += sd->pending_region->pending_frames;
    }
    return entries;
}

int mv_share_audit(mv_host *host)
{
    struct mv__share *s;
    struct mv_domain **all = NULL;
    uint64_t frames = 0, entries;
    size_t n = 0;
    int rc;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    s = host->share;
    /* Kernel copies made so far become what trapped breaks would have. */
    rc = mv__share_settle_all(host);
    if (rc < 0)
        return rc;
    mv__mutex_lock(&s->lock);
    rc = audit_frames(host, &frames);
    if (rc == 0 && frames != s->frames)
        rc = mv__fail(-EUCLEAN, "%llu live shared frames, counted %llu",
                      (unsigned long long)frames, (unsigned long long)s->frames);
    entries = count_shared_entries(s);
    if (rc == 0 && entries != s->refs)
        rc = mv__fail(-EUCLEAN, "domains map %llu shared gfns; saved %llu + frames "
                      "%llu = %llu", (unsigned long long)entries,
                      (unsigned long long)(s->refs - s->frames),
                      (unsigned long long)s->frames, (unsigned long long)s->refs);
    mv__mutex_unlock(&s->lock);
    if (rc == 0)
        rc = mv__domain_get_all(host, &all, &n);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            mv__mutex_lock(&all[i]->lock);
            mv__mutex_lock(&s->lock);
            rc = audit_domain_entries(host, all[i]);
            mv__mutex_unlock(&s->lock);
            if (rc == 0)
                rc = audit_private_copies(all[i]);
            if (rc == 0)
                rc = audit_shared_protected(all[i]);
            mv__mutex_unlock(&all[i]->lock);
        }
        mv__domain_put(all[i]);
    }
    free(all);
    return rc;
}
