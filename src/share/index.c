/*
 * index.c - the content index: a chained hash table from a page's XXH3-64
 * hash to the shared frames indexed with it (share->buckets, chained through
 * each frame's index_next).  A hash is only a hint: bytes are always compared
 * before two pages are taken as equal.
 *
 * Invariants:
 *   frame indexed (FRAME_INDEXED)  <=>  frame is on chain hash & bucket_mask;
 *   share.indexed == |{indexed frames}| <= bucket_mask + 1 (the table doubles
 *   before an insert would pass it);
 *   an indexed frame's bytes hash to frame.hash (mv_share_audit).
 *
 * Locking: share->lock held, except mv__share_index_probe_many (takes it).
 */
#include "share.h"

static int index_grow(struct mv__share *s)
{
    uint64_t count = s->buckets ? (s->bucket_mask + 1) * 2 : 4096;
    uint64_t *buckets = mv__malloc(count * sizeof(*buckets));

    if (!buckets)
        return -ENOMEM;
    for (uint64_t i = 0; i < count; i++)
        buckets[i] = MV_NO_MFN;
    for (uint64_t b = 0; s->buckets && b <= s->bucket_mask; b++) {
        uint64_t mfn = s->buckets[b];

        while (mfn != MV_NO_MFN) {
            struct mv__sframe *f = share_frame_of(s, mfn);
            uint64_t next = f->index_next;

            f->index_next = buckets[f->hash & (count - 1)];
            buckets[f->hash & (count - 1)] = mfn;
            mfn = next;
        }
    }
    free(s->buckets);
    s->buckets = buckets;
    s->bucket_mask = count - 1;
    return 0;
}

void share_index_insert(struct mv__share *s, uint64_t mfn, uint64_t hash)
{
    struct mv__sframe *f = share_frame_of(s, mfn);

    if ((!s->buckets || s->indexed >= s->bucket_mask) && index_grow(s) < 0 && !s->buckets)
        return; /* no memory: the frame stays out of the index */
    f->hash = hash;
    f->flags |= FRAME_INDEXED;
    f->index_next = s->buckets[hash & s->bucket_mask];
    s->buckets[hash & s->bucket_mask] = mfn;
    s->indexed++;
}

void share_index_remove(struct mv__share *s, uint64_t mfn)
{
    struct mv__sframe *f = share_frame_of(s, mfn);
    uint64_t *link = &s->buckets[f->hash & s->bucket_mask];

    while (*link != MV_NO_MFN && *link != mfn)
        link = &share_frame_of(s, *link)->index_next;
    if (*link == mfn) {
        *link = f->index_next;
        s->indexed--;
    }
    f->flags &= (uint8_t)~FRAME_INDEXED;
    f->index_next = MV_NO_MFN;
}

/*
 * Probe for n hashes at once, under one lock: found[i] says whether an
 * indexed frame has hashes[i], for each i that want[i] marks.  A probe is
 * two dependent cache misses (the bucket, then its first frame's record),
 * and with nested paging each may be a two-dimensional page walk besides:
 * every bucket is fetched, then every first record, before any chain is
 * walked, so that the misses of the n probes overlap.
 */
void mv__share_index_probe_many(struct mv_host *h, const uint64_t *hashes, const bool *want,
                                size_t n, bool *found)
{
    struct mv__share *s = h->share;

    memset(found, 0, n * sizeof(*found));
    mv__mutex_lock(&s->lock);
    if (!s->buckets) {
        mv__mutex_unlock(&s->lock);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (want[i])
            __builtin_prefetch(&s->buckets[hashes[i] & s->bucket_mask]);
    for (size_t i = 0; i < n; i++) {
        uint64_t mfn = want[i] ? s->buckets[hashes[i] & s->bucket_mask] : MV_NO_MFN;
        struct mv__sframe *f = mfn != MV_NO_MFN ? share_frame_raw(s, mfn) : NULL;

        if (f)
            __builtin_prefetch(&f->hash);
    }
    for (size_t i = 0; i < n; i++) {
        if (!want[i])
            continue;
        for (uint64_t mfn = s->buckets[hashes[i] & s->bucket_mask];
             mfn != MV_NO_MFN && !found[i];) {
            struct mv__sframe *f = share_frame_of(s, mfn);

            found[i] = f->hash == hashes[i];
            mfn = f->index_next;
        }
    }
    mv__mutex_unlock(&s->lock);
}

/* The first indexed frame whose hash is `hash`, or MV_NO_MFN: a candidate
 * only, its bytes still to be compared (share lock held). */
uint64_t share_index_lookup(struct mv__share *s, uint64_t hash)
{
    if (!s->buckets)
        return MV_NO_MFN;
    for (uint64_t mfn = s->buckets[hash & s->bucket_mask]; mfn != MV_NO_MFN;) {
        struct mv__sframe *f = share_frame_of(s, mfn);

        if (f->hash == hash)
            return mfn;
        mfn = f->index_next;
    }
    return MV_NO_MFN;
}

/* An indexed frame holding exactly `page`, or MV_NO_MFN.  Bytes are always
 * compared: a hash is only a hint. */
uint64_t share_index_find(struct mv_host *h, uint64_t hash, const uint8_t *page)
{
    struct mv__share *s = h->share;

    if (!s->buckets)
        return MV_NO_MFN;
    for (uint64_t mfn = s->buckets[hash & s->bucket_mask]; mfn != MV_NO_MFN;) {
        struct mv__sframe *f = share_frame_of(s, mfn);

        /* An indexed frame is live: it holds memory, read it in place. */
        if (f->hash == hash) {
            if (memcmp(mv__machine_frame(&h->machine, mfn), page, MV_PAGE_SIZE) == 0)
                return mfn;
            s->hash_collisions++;
        }
        mfn = f->index_next;
    }
    return MV_NO_MFN;
}
