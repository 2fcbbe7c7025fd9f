/*
 * frames.c - shared frames and the regions of the machine memfd that hold
 * them: pool regions handed out frame by frame (a free list below a bump
 * pointer), adopted regions (a clone's whole former frame block), each
 * frame's record and handle, pending frames (a clone's frames without a
 * record until first looked at), and scrubbing freed frames (one punch per
 * run of consecutive frames while a domain is destroyed).
 *
 * Invariants:
 *   region.live == |{live frames of region}| + region.pending_frames;
 *   share.frames == sum over regions of region.live;
 *   a frame is pending  =>  it has no record (FRAME_LIVE clear);
 *   a region whose live count drops to 0 is removed and its block given back;
 *   a free frame below a pool region's bump holds no memory once flushed.
 *
 * Locking: share->lock held throughout; pending_let_go also the domain's lock.
 */
#include "share.h"

static struct mv__share_region *region_of(struct mv__share *s, uint64_t mfn)
{
    size_t lo = 0, hi = s->region_count;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        struct mv__share_region *r = s->regions[mid];

        if (mfn < r->first)
            hi = mid;
        else if (mfn >= r->first + r->pages)
            lo = mid + 1;
        else
            return r;
    }
    return NULL;
}

/* A frame's record as stored: pending frames have none yet (the audit). */
struct mv__sframe *share_frame_raw(struct mv__share *s, uint64_t mfn)
{
    struct mv__share_region *r = region_of(s, mfn);

    return r ? &r->frames[mfn - r->first] : NULL;
}

/* A frame's record, written first if the frame is pending. */
struct mv__sframe *share_frame_of(struct mv__share *s, uint64_t mfn)
{
    struct mv__share_region *r = region_of(s, mfn);
    uint64_t i;

    if (!r)
        return NULL;
    i = mfn - r->first;
    if (r->pending_frames && r->pending[i / 64])
        share_materialize_word(s, r, i / 64);
    return &r->frames[i];
}

/* The records come from the kernel, not the heap: an adopted region's are
 * written only as its frames are first looked at, and a calloc served from
 * a heap that once held a larger table clears all of it, a page fault per
 * page, inside the clone (glibc moves its mmap threshold up to the largest
 * block freed). */
static struct mv__sframe *records_alloc(uint64_t pages)
{
    return mv__os_table_alloc(pages * sizeof(struct mv__sframe));
}

static void records_free(struct mv__sframe *records, uint64_t pages)
{
    if (records)
        mv__os_unmap(records, pages * sizeof(*records));
}

int share_region_add(struct mv_host *h, uint64_t first, uint64_t pages, bool adopted,
                     struct mv__share_region **out)
{
    struct mv__share *s = h->share;
    struct mv__share_region *r = mv__calloc(1, sizeof(*r));
    size_t at = 0;

    if (!r || !(r->frames = records_alloc(pages)) ||
        (adopted && !(r->pending = mv__calloc((pages + 63) / 64, sizeof(*r->pending))))) {
        if (r)
            records_free(r->frames, pages);
        free(r);
        return mv__fail(-ENOMEM, "no memory for %llu shared frames",
                        (unsigned long long)pages);
    }
    if (s->region_count == s->region_capacity) {
        size_t cap = s->region_capacity ? s->region_capacity * 2 : 8;
        struct mv__share_region **n = mv__realloc(s->regions, cap * sizeof(*n));

        if (!n) {
            free(r->pending);
            records_free(r->frames, pages);
            free(r);
            return mv__fail(-ENOMEM, "no memory for shared frames");
        }
        s->regions = n;
        s->region_capacity = cap;
    }
    r->first = first;
    r->pages = pages;
    r->adopted = adopted;
    r->bump = adopted ? pages : 0;
    while (at < s->region_count && s->regions[at]->first < first)
        at++;
    memmove(&s->regions[at + 1], &s->regions[at],
            (s->region_count - at) * sizeof(s->regions[0]));
    s->regions[at] = r;
    s->region_count++;
    *out = r;
    return 0;
}
static void scrub_frame(struct mv_host *h, uint64_t mfn, bool uncharge);

void share_region_unlink(struct mv__share *s, struct mv__share_region *r)
{
    for (size_t i = 0; i < s->region_count; i++) {
        if (s->regions[i] == r) {
            memmove(&s->regions[i], &s->regions[i + 1],
                    (s->region_count - i - 1) * sizeof(s->regions[0]));
            s->region_count--;
            break;
        }
    }
    free(r->free_frames);
    free(r->pending);
    records_free(r->frames, r->pages);
    free(r);
}

void share_region_remove(struct mv_host *h, struct mv__share_region *r)
{
    struct mv__share *s = h->share;
    uint64_t first = r->first, pages = r->pages;

    share_scrub_flush(h);     /* the block must hold no memory when it goes back */
    share_region_unlink(s, r);
    /* Every frame of it is a hole already, or queued to be punched ahead
     * of this give-back (mv__machine_release keeps the order). */
    (void)mv__machine_release(&h->machine, first, pages, 0, MV__RELEASE_GIVE_BACK);
}

/* Frames [first, first + n) become live, with fresh handles. */
void share_frames_init(struct mv__share *s, struct mv__share_region *r,
                       uint64_t first, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        struct mv__sframe *f = &r->frames[first + i - r->first];

        memset(f, 0, sizeof(*f));
        f->flags = FRAME_LIVE;
        f->handle = ++s->next_handle;
        f->index_next = MV_NO_MFN;
    }
    r->live += n;
    s->frames += n;
}

/* Hand out n consecutive unused frames.  They hold no memory yet. */
int share_frames_alloc(struct mv_host *h, uint64_t n, uint64_t *first)
{
    struct mv__share *s = h->share;
    struct mv__share_region *r;
    uint64_t start;
    int rc;

    for (size_t i = 0; i < s->region_count; i++) {
        r = s->regions[i];
        if (r->adopted)
            continue;
        if (n == 1 && r->free_count) {
            *first = r->free_frames[--r->free_count];
            share_frames_init(s, r, *first, 1);
            return 0;
        }
        if (r->bump + n <= r->pages) {
            *first = r->first + r->bump;
            r->bump += n;
            share_frames_init(s, r, *first, n);
            return 0;
        }
    }
    rc = mv__machine_alloc(&h->machine, MV_MAX(n, MV_POOL_REGION_PAGES), &start);
    if (rc < 0)
        return rc;
    rc = share_region_add(h, start, MV_MAX(n, MV_POOL_REGION_PAGES), false, &r);
    if (rc < 0) {
        mv__machine_free(&h->machine, start, MV_MAX(n, MV_POOL_REGION_PAGES));
        return rc;
    }
    *first = r->first;
    r->bump = n;
    share_frames_init(s, r, *first, n);
    return 0;
}

/*
 * Pending frames.  A clone leaves every frame it adopts mapped by exactly two
 * gfns, the source's and the clone's, both at the frame's index in the
 * region.  Writing a record and two entries per frame was most of a clone's
 * own work, so the clone only sets the frame's bit in the region's pending
 * bitmap (the region remembers the two domains, each domain the region), and
 * the records and entries of 64 frames are written when one of them or of
 * their gfns is first looked at: share_frame_of and share_dom_block, through which every
 * other path goes.  Looking a frame's number up (share_shared_mfn), the audit and
 * a destroy read the pending form as it is.  A domain destroyed lets go of
 * its pending frames without records (share_pending_let_go: the other domain then
 * maps them alone), and when neither does they are freed by the run
 * (share_pending_free).  A domain maps the pending frames of at most one region: a
 * clone first writes out those of its source.
 */
void share_materialize_word(struct mv__share *s, struct mv__share_region *r, uint64_t word)
{
    struct mv__share_dom *doms[2];
    uint64_t bits = r->pending[word];
    uint32_t holders = 0;

    for (int i = 0; i < 2; i++)
        if (r->pending_doms[i])
            doms[holders++] = r->pending_doms[i];
    if (holders == 0)
        return;   /* both let go during their destroy: share_pending_free frees */
    r->pending[word] = 0;
    r->pending_frames -= (uint64_t)__builtin_popcountll(bits);
    for (; bits; bits &= bits - 1) {
        uint64_t gfn = word * 64 + (uint64_t)__builtin_ctzll(bits), mfn = r->first + gfn;
        struct mv__sframe *f = &r->frames[gfn];

        memset(f, 0, sizeof(*f));
        f->flags = FRAME_LIVE;
        f->handle = ++s->next_handle;
        f->index_next = MV_NO_MFN;
        f->refs = holders;
        for (uint32_t i = 0; i < holders; i++) {
            struct mv__share_block *b = block_raw(doms[i], gfn, true);

            f->rmap.inline_entries[i] = rmap_encode(doms[i], gfn);
            entry_set(b, gfn, mfn);
            b->pos[gfn % MV_BLOCK_PAGES] = i;
        }
    }
    if (r->pending_frames == 0) {
        for (uint32_t i = 0; i < holders; i++)
            doms[i]->pending_region = NULL;
        r->pending_doms[0] = r->pending_doms[1] = NULL;
    }
}

/* Write out every pending frame of r. */
void share_materialize_region(struct mv__share *s, struct mv__share_region *r)
{
    for (uint64_t w = 0; r->pending_frames && w < (r->pages + 63) / 64; w++)
        if (r->pending[w])
            share_materialize_word(s, r, w);
}

/* A domain going away stops mapping its pending frames (its lock and the
 * share lock held): those gfns are PoD from now on, and the other domain
 * keeps the frames, at rmap position 0 once written out. */
void share_pending_let_go(struct mv__share *s, struct mv_domain *d)
{
    struct mv__share_dom *sd = d->share;
    struct mv__share_region *r = sd->pending_region;

    for (uint64_t w = 0; w < (r->pages + 63) / 64; w++)
        for (uint64_t bits = r->pending[w]; bits; bits &= bits - 1)
            mv__p2m_set(d, w * 64 + (uint64_t)__builtin_ctzll(bits), MV_P2M_POD);
    r->pending_doms[r->pending_doms[0] == sd ? 0 : 1] = NULL;
    sd->pending_region = NULL;
    s->refs -= r->pending_frames;
}

static void pending_release(struct mv_host *h, uint64_t first, uint64_t n)
{
    if (mv__machine_release(&h->machine, first, n, n, MV__RELEASE_SCRUB) < 0)
        mv__log(h, MV_LOG_ERROR, "shared frames freed: %s", mv_last_error());
}

/* No domain maps r's pending frames any more: free them. */
void share_pending_free(struct mv_host *h, struct mv__share_region *r)
{
    struct mv__share *s = h->share;
    uint64_t freed = r->pending_frames, run = 0, run_first = 0;

    /* When the region goes with them, runs of pending frames are released
     * with one call each: under MV_SCRUB_BACKGROUND they wait for the
     * scrubber, and the region's block (given back below) goes after them.
     * A region that stays (a third domain shares some of its frames) has
     * them scrubbed at once: its audit finds no memory in a frame that is
     * neither live nor pending. */
    bool region_goes = r->live == freed;

    for (uint64_t w = 0; r->pending_frames && w < (r->pages + 63) / 64; w++) {
        for (uint64_t bits = r->pending[w]; bits; bits &= bits - 1) {
            uint64_t mfn = r->first + w * 64 + (uint64_t)__builtin_ctzll(bits);

            if (!region_goes) {
                scrub_frame(h, mfn, true);
                continue;
            }
            if (run && mfn != run_first + run) {
                pending_release(h, run_first, run);
                run = 0;
            }
            if (!run)
                run_first = mfn;
            run++;
        }
        r->pending_frames -= (uint64_t)__builtin_popcountll(r->pending[w]);
        r->pending[w] = 0;
    }
    if (run)
        pending_release(h, run_first, run);
    s->frames -= freed;
    r->live -= freed;
    if (r->live == 0)
        share_region_remove(h, r);
}

/* Frames [r->first + gfn, + n) are now mapped by gfn in both the source and
 * the clone and are live: count them, pending (share lock held). */
void share_pending_add(struct mv__share *s, struct mv__share_region *r,
                       struct mv_domain *src, struct mv_domain *clone,
                       uint64_t gfn, uint64_t n)
{
    for (uint64_t g = gfn; g < gfn + n;) {
        uint64_t k = MV_MIN(64 - g % 64, gfn + n - g);

        r->pending[g / 64] |= (k == 64 ? ~0ull : ((1ull << k) - 1)) << (g % 64);
        g += k;
    }
    r->pending_frames += n;
    r->pending_doms[0] = src->share;
    r->pending_doms[1] = clone->share;
    src->share->pending_region = clone->share->pending_region = r;
    r->live += n;
    s->frames += n;
    s->refs += 2 * n;
}

/* Punch out the frames scrub_frame has gathered and give their charge back
 * (share lock held).  A no-op when there are none. */
void share_scrub_flush(struct mv_host *h)
{
    struct mv__share *s = h->share;
    int rc;

    if (!s->scrub_count)
        return;
    rc = mv__machine_scrub(&h->machine, s->scrub_first, s->scrub_count);
    if (rc < 0)
        mv__log(h, MV_LOG_ERROR, "shared frames freed: %s", mv_last_error());
    mv__machine_uncharge(&h->machine, s->scrub_uncharge);
    s->scrub_count = s->scrub_uncharge = 0;
}

/* Scrub a freed frame: at once, or while a domain is destroyed, as part of
 * a run of consecutive frames punched with one call.  A gathered frame is
 * not handed out again before the run is punched: that needs the share
 * lock, which the destroy holds until it flushes. */
static void scrub_frame(struct mv_host *h, uint64_t mfn, bool uncharge)
{
    struct mv__share *s = h->share;

    if (s->scrub_count && mfn != s->scrub_first + s->scrub_count)
        share_scrub_flush(h);
    if (!s->scrub_count)
        s->scrub_first = mfn;
    s->scrub_count++;
    s->scrub_uncharge += uncharge;
    if (!s->scrub_batching)
        share_scrub_flush(h);
}

/* Free a frame no one maps: scrub it, and give its charge back unless it
 * moves to a domain (a takeover). */
void share_frame_free(struct mv_host *h, uint64_t mfn, bool uncharge)
{
    struct mv__share *s = h->share;
    struct mv__share_region *r = region_of(s, mfn);
    struct mv__sframe *f = &r->frames[mfn - r->first];

    if (f->flags & FRAME_INDEXED)
        share_index_remove(s, mfn);
    if (f->rmap_cap)
        free(f->rmap.heap);
    memset(f, 0, sizeof(*f));
    scrub_frame(h, mfn, uncharge);
    s->frames--;
    r->live--;
    if (!r->adopted && r->free_count < r->free_capacity)
        r->free_frames[r->free_count++] = mfn;
    else if (!r->adopted) {
        size_t cap = r->free_capacity ? r->free_capacity * 2 : 64;
        uint64_t *n = mv__realloc(r->free_frames, cap * sizeof(*n));

        if (n) {
            r->free_frames = n;
            r->free_capacity = cap;
            r->free_frames[r->free_count++] = mfn;
        }
    }
    if (r->live == 0)
        share_region_remove(h, r);
}
