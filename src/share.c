/*
 * share.c - copy-on-write page sharing: shared frames and their owner, the
 * reverse maps, the content index, nominate/share/add_to_physmap/unshare,
 * one-call sharing, CoW breaks, clones, exclusion and the sharing audit.
 *
 * Shared frames.  Pages with equal bytes are kept once, in a frame owned by
 * the host (Xen's dom_cow) rather than by any domain, taken from regions of
 * the machine memfd that share.c holds: pool regions handed out frame by
 * frame, and adopted regions (a cloned domain's whole former frame block,
 * whose populated frames become shared where they are, without a copy).
 * Each frame has a reference count, a handle (a number never reused, so a
 * stale or forged handle is told apart) and a reverse map of every
 * (domain, gfn) mapping it; each domain keeps, per shared gfn, the frame and
 * the gfn's position in that reverse map, so dropping one of thousands of
 * mappings of a frame costs O(1).
 *
 * Mapping.  A shared gfn maps its frame with MAP_PRIVATE, registered with
 * the domain's second, synchronous write-protect userfaultfd (cow_uffd) and
 * write-protected: a write traps to the fault service, which breaks the
 * sharing.  MAP_PRIVATE is what makes the remap safe: between mmap and the
 * write protection a guest write can only make an anonymous private copy,
 * never reach the frame; such copies are found right after (PAGEMAP_SCAN:
 * present and not a file page) and become the gfn's private page.  Runs of
 * consecutive gfns mapping consecutive frames are one mapping.  A break maps
 * the gfn's own frame again (MAP_SHARED), registers it with the domain's own
 * userfaultfd, and the mappings merge back; a break inside a run splits it
 * in three, so near vm.max_map_count a break unshares the rest of its run
 * on one side as well and the mappings do not grow (break_extent).
 *
 * Turning a populated page into a shared one, the page is first unmapped
 * from the guest (its accesses then trap and wait for the domain lock), read,
 * compared byte for byte, and only then remapped: a write that completed
 * before the unmap is in the bytes compared, none can land after.
 *
 * Memory: a shared frame is charged to the host budget, not to any domain.
 * Sharing a populated page gives its own frame back; a CoW break claims a
 * page from the domain's target and the host budget (PoD policy when short),
 * except when the writer holds the last mapping: the frame's charge then
 * moves to the domain (a takeover).  A break of a frame known to be zero maps
 * a fresh zero page instead of copying.
 *
 * Clones adopt frames pending: no record and no entries until first looked
 * at (see "Pending frames" below).
 *
 * Kernel copies (MV_COW_KERNEL domains).  Their shared gfns are mapped
 * without write protection while their target has room for a copy of each
 * and no other reason to trap holds (paused, dirty log on): a write makes
 * the kernel copy the frame into an anonymous page of the MAP_PRIVATE
 * mapping, with no trap.  Settling (on every call that looks at such a gfn,
 * on pause, on stats and audits, and every cow_settle_ms on the settler
 * thread) protects each copy, writes its bytes into the gfn's own frame and
 * records it as a break.  Until then the gfn is SHARED in the p2m and its
 * bytes are the copy's.
 *
 * Invariants (mv_share_audit):
 *   frame.refs == |frame.rmap|; every rmap entry (dom, gfn) has
 *   p2m[gfn] == SHARED and dom.frame[gfn] == frame at that position;
 *   a pending frame has no record, and its gfn is SHARED with no entry in
 *   each domain that its region names and that names the region;
 *   sum over domains of shared gfns == saved + frames;
 *   an indexed frame's bytes hash to its index entry;
 *   host populated pages == sum of domains' populated + shared frames.
 *
 * Locking: share->lock (MV_LOCK_SHARE) guards frames, regions, the index,
 * the registry of domains and every domain's shared-entry table.  The
 * settler holds settler_lock (MV_LOCK_SETTLE) only while it sleeps, and
 * settles each domain under its domain lock, like any other caller.  Changing a
 * gfn to or from SHARED takes the domain lock and then the share lock, so
 * under the share lock alone the p2m's SHARED entries are stable.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <xxhash.h>

#define MV_NO_MFN UINT64_MAX
#define MV_SCAN_TRIES 3
#define MV_POOL_REGION_PAGES (1ull << 16)
#define MV_RMAP_INLINE 2
#define MV_RMAP_GFN_BITS 40
#define MV_MAP_RESERVE 2048u        /* mappings kept free for CoW breaks */
#define MV_MAP_SLACK 512u           /* ... of which breaks leave this many */
#define MV_MAP_HARD_MARGIN 64u      /* ... and take the last of them only
                                       when there is no memory otherwise */
#define MV_BREAK_RUN_MAX 4096u      /* gfns a break may unshare with it */
#define MV_MAP_RECHECK_NS 100000000ull        /* sharing: count at most this often */
#define MV_MAP_RECHECK_FAULT_NS 1000000000ull /* a CoW break: counting costs a
                                                 fault up to tens of ms */

enum frame_flags {
    FRAME_LIVE = 1,
    FRAME_INDEXED = 2,
    FRAME_ZERO = 4,
};

struct mv__sframe {
    uint64_t hash;
    uint64_t handle;
    uint64_t index_next;         /* next frame in the index bucket */
    uint32_t refs;
    uint32_t rmap_cap;           /* 0: the entries are inline */
    uint8_t flags;
    union {
        uint64_t inline_entries[MV_RMAP_INLINE];
        uint64_t *heap;
    } rmap;                      /* (registry slot << 40) | gfn */
};

struct mv__share_region {
    uint64_t first;
    uint64_t pages;
    uint64_t bump;               /* pool: frames handed out at least once */
    uint64_t live;
    bool adopted;
    uint64_t *free_frames;       /* pool: freed frames below bump */
    size_t free_count, free_capacity;
    struct mv__sframe *frames;
    /* Adopted: frames still as the clone left them (see "Pending frames"),
     * one bit per frame, and the two domains that map them. */
    uint64_t *pending;
    uint64_t pending_frames;
    struct mv__share_dom *pending_doms[2];  /* source (rmap position 0), clone */
};

/* Per 2 MiB block of a domain with shared gfns: their frames and positions
 * in the frames' reverse maps.  A frame is stored plus one, so that 0 means
 * none and a block of the zero-filled table needs no initialising
 * (entry_mfn, entry_set). */
struct mv__share_block {
    uint64_t frame_plus_one[MV_BLOCK_PAGES];
    uint32_t pos[MV_BLOCK_PAGES];
};

struct mv__share_dom {
    struct mv_domain *domain;
    uint32_t slot;               /* in the registry */
    struct mv__share_block *table;    /* share lock; one block per 2 MiB of
                                         maxmem, untouched until used */
    uint64_t *table_used;             /* bitmap: blocks that ever had an entry */
    size_t table_bytes;
    struct mv__share_region *pending_region;  /* whose pending frames it maps */
    uint64_t *excluded;          /* bitmap; domain lock */
    uint64_t excluded_count;
    uint32_t *checksums;         /* scanner; domain lock */
    uint64_t cow_breaks, cow_takeovers, cow_nocopy; /* domain lock */
    /* MV_COW_KERNEL (domain lock): why its shared gfns trap now (enum
     * mv__cow_trap bits; none: the kernel copies on write), copies settled,
     * and copies the last whole settle found no memory for. */
    unsigned trap_reasons;
    uint64_t kernel_copies, settle_waiting;
};

struct mv__share {
    struct mv__mutex lock;
    struct mv__share_region **regions;   /* sorted by first */
    size_t region_count, region_capacity;
    uint64_t *buckets;                   /* index: head frame per bucket */
    uint64_t bucket_mask;
    uint64_t indexed;
    uint64_t next_handle;
    uint64_t frames, refs;
    struct mv__share_dom **registry;
    size_t registry_capacity;
    /* counters */
    uint64_t cow_breaks, cow_takeovers, cow_nocopy, cow_run_unshares;
    uint64_t zero_reclaimed, hash_collisions;
    uint64_t kernel_copies, settles, settle_ns;
    uint64_t settle_waiting;     /* copies waiting for memory, last pass */
    /* The background settler of MV_COW_KERNEL domains (settler_main). */
    struct mv__mutex settler_lock;
    pthread_cond_t settler_cond;
    pthread_t settler;
    bool settler_started, settler_stop;
    /* the mapping limit */
    uint64_t max_map_count;
    uint64_t vma_count;
    uint64_t vma_checked_ns;
    uint64_t max_vmas;           /* 0: vm.max_map_count - MV_MAP_RESERVE */
    uint64_t break_limit;        /* 0: vm.max_map_count - MV_MAP_SLACK */
    bool stopped, breaks_unsharing_runs;
    char stop_reason[160];
    int pagemap_fd;              /* /proc/self/pagemap */
    /* While a domain is destroyed: freed frames not yet punched, one run of
     * consecutive frames, and how many of them give their charge back
     * (scrub_frame, scrub_flush). */
    bool scrub_batching;
    uint64_t scrub_first, scrub_count, scrub_uncharge;
};

static uint64_t own_offset(struct mv_domain *d, uint64_t gfn)
{
    return (d->base_mfn + gfn) << MV_PAGE_SHIFT;
}

/* Whether the kernel copies d's shared pages on write (MV_COW_KERNEL). */
static bool kernel_copies(struct mv_domain *d)
{
    return d->config.cow_mode == MV_COW_KERNEL;
}

/* ... and does now, without a trap: no reason to trap holds (domain lock
 * held). */
static bool kernel_copies_on(struct mv_domain *d)
{
    return kernel_copies(d) && d->share->trap_reasons == 0;
}

uint64_t mv__share_hash(const uint8_t *page)
{
    return XXH3_64bits(page, MV_PAGE_SIZE);
}

/* ------------------------------------------------------------------------ */
/* regions and frames (share lock held)                                     */

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

static void materialize_word(struct mv__share *s, struct mv__share_region *r,
                             uint64_t word);

/* A frame's record as stored: pending frames have none yet (the audit). */
static struct mv__sframe *frame_raw(struct mv__share *s, uint64_t mfn)
{
    struct mv__share_region *r = region_of(s, mfn);

    return r ? &r->frames[mfn - r->first] : NULL;
}

/* A frame's record, written first if the frame is pending. */
static struct mv__sframe *frame_of(struct mv__share *s, uint64_t mfn)
{
    struct mv__share_region *r = region_of(s, mfn);
    uint64_t i;

    if (!r)
        return NULL;
    i = mfn - r->first;
    if (r->pending_frames && r->pending[i / 64])
        materialize_word(s, r, i / 64);
    return &r->frames[i];
}

static int region_add(struct mv_host *h, uint64_t first, uint64_t pages, bool adopted,
                      struct mv__share_region **out)
{
    struct mv__share *s = h->share;
    struct mv__share_region *r = calloc(1, sizeof(*r));
    size_t at = 0;

    if (!r || !(r->frames = calloc(pages, sizeof(*r->frames))) ||
        (adopted && !(r->pending = calloc((pages + 63) / 64, sizeof(*r->pending))))) {
        if (r)
            free(r->frames);
        free(r);
        return mv__fail(-ENOMEM, "no memory for %llu shared frames",
                        (unsigned long long)pages);
    }
    if (s->region_count == s->region_capacity) {
        size_t cap = s->region_capacity ? s->region_capacity * 2 : 8;
        struct mv__share_region **n = realloc(s->regions, cap * sizeof(*n));

        if (!n) {
            free(r->pending);
            free(r->frames);
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

static void scrub_flush(struct mv_host *h);
static void scrub_frame(struct mv_host *h, uint64_t mfn, bool uncharge);

static void region_remove(struct mv_host *h, struct mv__share_region *r)
{
    struct mv__share *s = h->share;

    scrub_flush(h);     /* the block must hold no memory when it goes back */
    for (size_t i = 0; i < s->region_count; i++) {
        if (s->regions[i] == r) {
            memmove(&s->regions[i], &s->regions[i + 1],
                    (s->region_count - i - 1) * sizeof(s->regions[0]));
            s->region_count--;
            break;
        }
    }
    /* Every frame of it is a hole already: freed frames are punched. */
    mv__machine_free(&h->machine, r->first, r->pages);
    free(r->free_frames);
    free(r->pending);
    free(r->frames);
    free(r);
}

/* Frames [first, first + n) become live, with fresh handles. */
static void frames_init(struct mv__share *s, struct mv__share_region *r,
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
static int frames_alloc(struct mv_host *h, uint64_t n, uint64_t *first)
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
            frames_init(s, r, *first, 1);
            return 0;
        }
        if (r->bump + n <= r->pages) {
            *first = r->first + r->bump;
            r->bump += n;
            frames_init(s, r, *first, n);
            return 0;
        }
    }
    rc = mv__machine_alloc(&h->machine, MV_MAX(n, MV_POOL_REGION_PAGES), &start);
    if (rc < 0)
        return rc;
    rc = region_add(h, start, MV_MAX(n, MV_POOL_REGION_PAGES), false, &r);
    if (rc < 0) {
        mv__machine_free(&h->machine, start, MV_MAX(n, MV_POOL_REGION_PAGES));
        return rc;
    }
    *first = r->first;
    r->bump = n;
    frames_init(s, r, *first, n);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* the content index (share lock held)                                      */

static int index_grow(struct mv__share *s)
{
    uint64_t count = s->buckets ? (s->bucket_mask + 1) * 2 : 4096;
    uint64_t *buckets = malloc(count * sizeof(*buckets));

    if (!buckets)
        return -ENOMEM;
    for (uint64_t i = 0; i < count; i++)
        buckets[i] = MV_NO_MFN;
    for (uint64_t b = 0; s->buckets && b <= s->bucket_mask; b++) {
        uint64_t mfn = s->buckets[b];

        while (mfn != MV_NO_MFN) {
            struct mv__sframe *f = frame_of(s, mfn);
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

static void index_insert(struct mv__share *s, uint64_t mfn, uint64_t hash)
{
    struct mv__sframe *f = frame_of(s, mfn);

    if ((!s->buckets || s->indexed >= s->bucket_mask) && index_grow(s) < 0 && !s->buckets)
        return; /* no memory: the frame stays out of the index */
    f->hash = hash;
    f->flags |= FRAME_INDEXED;
    f->index_next = s->buckets[hash & s->bucket_mask];
    s->buckets[hash & s->bucket_mask] = mfn;
    s->indexed++;
}

static void index_remove(struct mv__share *s, uint64_t mfn)
{
    struct mv__sframe *f = frame_of(s, mfn);
    uint64_t *link = &s->buckets[f->hash & s->bucket_mask];

    while (*link != MV_NO_MFN && *link != mfn)
        link = &frame_of(s, *link)->index_next;
    if (*link == mfn) {
        *link = f->index_next;
        s->indexed--;
    }
    f->flags &= (uint8_t)~FRAME_INDEXED;
    f->index_next = MV_NO_MFN;
}

bool mv__share_index_probe(struct mv_host *h, uint64_t hash)
{
    struct mv__share *s = h->share;
    bool found = false;

    mv__mutex_lock(&s->lock);
    if (s->buckets) {
        for (uint64_t mfn = s->buckets[hash & s->bucket_mask]; mfn != MV_NO_MFN && !found;) {
            struct mv__sframe *f = frame_of(s, mfn);

            found = f->hash == hash;
            mfn = f->index_next;
        }
    }
    mv__mutex_unlock(&s->lock);
    return found;
}

/* The first indexed frame whose hash is `hash`, or MV_NO_MFN: a candidate
 * only, its bytes still to be compared (share lock held). */
static uint64_t index_lookup(struct mv__share *s, uint64_t hash)
{
    if (!s->buckets)
        return MV_NO_MFN;
    for (uint64_t mfn = s->buckets[hash & s->bucket_mask]; mfn != MV_NO_MFN;) {
        struct mv__sframe *f = frame_of(s, mfn);

        if (f->hash == hash)
            return mfn;
        mfn = f->index_next;
    }
    return MV_NO_MFN;
}

/* An indexed frame holding exactly `page`, or MV_NO_MFN.  Bytes are always
 * compared: a hash is only a hint. */
static uint64_t index_find(struct mv_host *h, uint64_t hash, const uint8_t *page,
                           uint8_t *scratch)
{
    struct mv__share *s = h->share;

    if (!s->buckets)
        return MV_NO_MFN;
    for (uint64_t mfn = s->buckets[hash & s->bucket_mask]; mfn != MV_NO_MFN;) {
        struct mv__sframe *f = frame_of(s, mfn);

        if (f->hash == hash && mv__machine_read(&h->machine, mfn, 1, scratch) == 0) {
            if (memcmp(scratch, page, MV_PAGE_SIZE) == 0)
                return mfn;
            s->hash_collisions++;
        }
        mfn = f->index_next;
    }
    return MV_NO_MFN;
}

/* ------------------------------------------------------------------------ */
/* per-domain entries and reverse maps (share lock held)                    */

/* The entries of gfn's block as stored (NULL when it never had one); with
 * `create`, the block counts as used from now on. */
static struct mv__share_block *block_raw(struct mv__share_dom *sd, uint64_t gfn, bool create)
{
    uint64_t b = gfn / MV_BLOCK_PAGES, bit = 1ull << (b % 64);

    if (create)
        sd->table_used[b / 64] |= bit;
    return sd->table_used[b / 64] & bit ? &sd->table[b] : NULL;
}

/* gfn's frame while it is pending, else MV_NO_MFN. */
static uint64_t pending_mfn(const struct mv__share_dom *sd, uint64_t gfn)
{
    const struct mv__share_region *r = sd->pending_region;

    return r && (r->pending[gfn / 64] >> (gfn % 64) & 1) ? r->first + gfn : MV_NO_MFN;
}

/* The entries of gfn's block, pending ones near gfn written first. */
static struct mv__share_block *dom_block(struct mv__share_dom *sd, uint64_t gfn, bool create)
{
    struct mv__share_region *r = sd->pending_region;

    if (r && r->pending[gfn / 64])
        materialize_word(sd->domain->host->share, r, gfn / 64);
    return block_raw(sd, gfn, create);
}

_Static_assert(MV_NO_MFN + 1 == 0, "an empty entry is MV_NO_MFN plus one");

/* The frame of gfn's entry in its block (b may be NULL), or MV_NO_MFN. */
static uint64_t entry_mfn(const struct mv__share_block *b, uint64_t gfn)
{
    return b ? b->frame_plus_one[gfn % MV_BLOCK_PAGES] - 1 : MV_NO_MFN;
}

static void entry_set(struct mv__share_block *b, uint64_t gfn, uint64_t mfn)
{
    b->frame_plus_one[gfn % MV_BLOCK_PAGES] = mfn + 1;
}

/* Make the entries of [gfn, gfn + n) ready to be filled: their blocks exist
 * and their memory is populated in one call rather than a page fault per
 * page (a clone fills hundreds of thousands). */
static void dom_blocks_prefault(struct mv__share_dom *sd, uint64_t gfn, uint64_t n)
{
    uint64_t first = gfn / MV_BLOCK_PAGES, last = (gfn + n - 1) / MV_BLOCK_PAGES;

    if (n == 0)
        return;
    for (uint64_t b = first; b <= last; b++)
        block_raw(sd, b * MV_BLOCK_PAGES, true);
    mv__os_table_prefault(&sd->table[first], (last - first + 1) * sizeof(sd->table[0]));
}

/* The frame shared gfn maps, or MV_NO_MFN when gfn is not shared (domain
 * and share locks held). */
static uint64_t shared_mfn(struct mv_domain *d, uint64_t gfn)
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
    mfn = shared_mfn(d, gfn);
    mv__mutex_unlock(&s->lock);
    return mfn;
}

static uint64_t *rmap_entries(struct mv__sframe *f)
{
    return f->rmap_cap ? f->rmap.heap : f->rmap.inline_entries;
}

static uint64_t rmap_encode(struct mv__share_dom *sd, uint64_t gfn)
{
    return ((uint64_t)sd->slot << MV_RMAP_GFN_BITS) | gfn;
}

/*
 * Pending frames.  A clone leaves every frame it adopts mapped by exactly two
 * gfns, the source's and the clone's, both at the frame's index in the
 * region.  Writing a record and two entries per frame was most of a clone's
 * own work, so the clone only sets the frame's bit in the region's pending
 * bitmap (the region remembers the two domains, each domain the region), and
 * the records and entries of 64 frames are written when one of them or of
 * their gfns is first looked at: frame_of and dom_block, through which every
 * other path goes.  Looking a frame's number up (shared_mfn), the audit and
 * a destroy read the pending form as it is.  A domain destroyed lets go of
 * its pending frames without records (pending_let_go: the other domain then
 * maps them alone), and when neither does they are freed by the run
 * (pending_free).  A domain maps the pending frames of at most one region: a
 * clone first writes out those of its source.
 */
static void materialize_word(struct mv__share *s, struct mv__share_region *r, uint64_t word)
{
    struct mv__share_dom *doms[2];
    uint64_t bits = r->pending[word];
    uint32_t holders = 0;

    for (int i = 0; i < 2; i++)
        if (r->pending_doms[i])
            doms[holders++] = r->pending_doms[i];
    if (holders == 0)
        return;   /* both let go during their destroy: pending_free frees */
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
static void materialize_region(struct mv__share *s, struct mv__share_region *r)
{
    for (uint64_t w = 0; r->pending_frames && w < (r->pages + 63) / 64; w++)
        if (r->pending[w])
            materialize_word(s, r, w);
}

/* A domain going away stops mapping its pending frames (its lock and the
 * share lock held): those gfns are PoD from now on, and the other domain
 * keeps the frames, at rmap position 0 once written out. */
static void pending_let_go(struct mv__share *s, struct mv_domain *d)
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

/* No domain maps r's pending frames any more: free them.  Called while a
 * destroy gathers freed frames, so consecutive ones are punched as a run. */
static void pending_free(struct mv_host *h, struct mv__share_region *r)
{
    struct mv__share *s = h->share;
    uint64_t freed = r->pending_frames;

    for (uint64_t w = 0; r->pending_frames && w < (r->pages + 63) / 64; w++) {
        for (uint64_t bits = r->pending[w]; bits; bits &= bits - 1)
            scrub_frame(h, r->first + w * 64 + (uint64_t)__builtin_ctzll(bits), true);
        r->pending_frames -= (uint64_t)__builtin_popcountll(r->pending[w]);
        r->pending[w] = 0;
    }
    s->frames -= freed;
    r->live -= freed;
    if (r->live == 0)
        region_remove(h, r);
}

/* Frames [r->first + gfn, + n) are now mapped by gfn in both the source and
 * the clone and are live: count them, pending (share lock held). */
static void pending_add(struct mv__share *s, struct mv__share_region *r,
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

/* (d, gfn) now maps mfn.  Only fails for lack of memory, changing nothing. */
static int rmap_add(struct mv__share *s, uint64_t mfn, struct mv_domain *d, uint64_t gfn)
{
    struct mv__sframe *f = frame_of(s, mfn);
    struct mv__share_block *b = dom_block(d->share, gfn, true);
    uint32_t cap = f->rmap_cap ? f->rmap_cap : MV_RMAP_INLINE;

    if (f->refs == cap) {
        uint64_t *n = malloc((size_t)cap * 2 * sizeof(*n));

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

/* Punch out the frames scrub_frame has gathered and give their charge back
 * (share lock held).  A no-op when there are none. */
static void scrub_flush(struct mv_host *h)
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
        scrub_flush(h);
    if (!s->scrub_count)
        s->scrub_first = mfn;
    s->scrub_count++;
    s->scrub_uncharge += uncharge;
    if (!s->scrub_batching)
        scrub_flush(h);
}

/* Free a frame no one maps: scrub it, and give its charge back unless it
 * moves to a domain (a takeover). */
static void frame_free(struct mv_host *h, uint64_t mfn, bool uncharge)
{
    struct mv__share *s = h->share;
    struct mv__share_region *r = region_of(s, mfn);
    struct mv__sframe *f = &r->frames[mfn - r->first];

    if (f->flags & FRAME_INDEXED)
        index_remove(s, mfn);
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
        uint64_t *n = realloc(r->free_frames, cap * sizeof(*n));

        if (n) {
            r->free_frames = n;
            r->free_capacity = cap;
            r->free_frames[r->free_count++] = mfn;
        }
    }
    if (r->live == 0)
        region_remove(h, r);
}

/* (d, gfn) no longer maps its frame; free the frame when it was the last. */
static void rmap_del(struct mv_host *h, struct mv_domain *d, uint64_t gfn, bool uncharge)
{
    struct mv__share *s = h->share;
    struct mv__share_block *b = dom_block(d->share, gfn, false);
    uint64_t mfn = entry_mfn(b, gfn);
    uint32_t pos = b->pos[gfn % MV_BLOCK_PAGES];
    struct mv__sframe *f = frame_of(s, mfn);
    uint64_t *e = rmap_entries(f);
    uint64_t last = e[f->refs - 1];

    e[pos] = last;
    if (pos != f->refs - 1) {
        struct mv__share_dom *other = s->registry[last >> MV_RMAP_GFN_BITS];
        uint64_t ogfn = last & ((1ull << MV_RMAP_GFN_BITS) - 1);

        dom_block(other, ogfn, false)->pos[ogfn % MV_BLOCK_PAGES] = pos;
    }
    entry_set(b, gfn, MV_NO_MFN);
    f->refs--;
    s->refs--;
    if (f->refs == 0)
        frame_free(h, mfn, uncharge);
}

/* ------------------------------------------------------------------------ */
/* the mapping limit                                                        */

static uint64_t read_sysctl_u64(const char *path, uint64_t fallback)
{
    FILE *f = fopen(path, "re");
    unsigned long long v;

    if (!f)
        return fallback;
    if (fscanf(f, "%llu", &v) != 1)
        v = fallback;
    fclose(f);
    return v;
}

static uint64_t count_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    uint64_t n = 0;
    int c;

    if (!f)
        return 0;
    while ((c = getc_unlocked(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* The mappings of this process (share lock held).  Counting reads all of
 * /proc/self/maps, so it is done at most every `interval` ns; in between the
 * count only grows by what sharing and breaks add (never an undercount from
 * our side: what merges back is found at the next count). */
static uint64_t vma_count(struct mv__share *s, uint64_t interval)
{
    uint64_t now = mv__now_ns();

    if (now - s->vma_checked_ns > interval) {
        s->vma_count = count_mappings();
        s->vma_checked_ns = now;
    }
    return s->vma_count;
}

/* Whether sharing may create `more` mappings (share lock held).  Near the
 * limit it stops and says why, once; the last MV_MAP_RESERVE mappings are
 * left to CoW breaks. */
static uint64_t map_limit(const struct mv__share *s)
{
    return s->max_vmas ? s->max_vmas :
           (s->max_map_count > MV_MAP_RESERVE ? s->max_map_count - MV_MAP_RESERVE : 0);
}

/* Sharing stopped at the mapping limit resumes, and says so, once the
 * mappings counted last leave room for `more` below it (share lock held). */
static void recheck_stopped(struct mv_host *h, uint64_t more)
{
    struct mv__share *s = h->share;

    if (s->stopped && s->vma_count + more < map_limit(s)) {
        s->stopped = false;
        s->stop_reason[0] = 0;
    }
}

static bool may_map(struct mv_host *h, uint64_t more)
{
    struct mv__share *s = h->share;
    uint64_t limit = map_limit(s);

    if (vma_count(s, MV_MAP_RECHECK_NS) + more >= limit) {
        if (!s->stopped)
            mv__log(h, MV_LOG_WARN, "sharing stopped: %llu mappings, limit %llu "
                    "(vm.max_map_count %llu)", (unsigned long long)s->vma_count,
                    (unsigned long long)limit, (unsigned long long)s->max_map_count);
        s->stopped = true;
        snprintf(s->stop_reason, sizeof(s->stop_reason),
                 "%llu mappings of a limit of %llu (vm.max_map_count %llu, %u kept "
                 "for copy-on-write breaks); raise vm.max_map_count",
                 (unsigned long long)s->vma_count, (unsigned long long)limit,
                 (unsigned long long)s->max_map_count, MV_MAP_RESERVE);
        return false;
    }
    recheck_stopped(h, more);
    s->vma_count += more;
    return true;
}

/* ------------------------------------------------------------------------ */
/* mappings (domain lock held, or the domain is not reachable yet)          */

static void check_room(struct mv_domain *d, uint64_t more);

/* Map [gfn, gfn + n) to frames [mfn, mfn + n), write-protected unless the
 * kernel copies this domain's shared pages now. */
static int map_frames(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n)
{
    uint8_t *at = mv__gfn_addr(d, gfn);
    size_t len = n << MV_PAGE_SHIFT;
    int rc;

    if (!mv__os_map_private(at, len, d->host->machine.memfd, mfn << MV_PAGE_SHIFT))
        return mv__fail(-errno, "domain %u: cannot map gfn %#llx+%llu to shared "
                        "frames: %s", d->domid, (unsigned long long)gfn,
                        (unsigned long long)n, mv_strerror(-errno));
    rc = mv__os_uffd_register(d->cow_uffd, at, len, UFFDIO_REGISTER_MODE_WP, NULL);
    if (rc == 0 && !kernel_copies_on(d))
        rc = mv__os_uffd_writeprotect(d->cow_uffd, at, len, true);
    if (rc < 0)
        return mv__fail(rc, "domain %u: cannot write-protect shared gfn %#llx+%llu: %s",
                        d->domid, (unsigned long long)gfn, (unsigned long long)n,
                        mv_strerror(rc));
    return 0;
}

/* Private anonymous copies in [gfn, gfn + n): guest writes that came between
 * a remap and its write protection.  Sets found[i] to the copy's PAGEMAP_SCAN
 * categories (PAGE_IS_PRESENT, and PAGE_IS_WRITTEN when the copy is not
 * write-protected), 0 where there is none; returns how many. */
/* One PAGEMAP_SCAN of [*start, end) for private anonymous copies (present,
 * not a file page): up to `cap` regions, with PAGE_IS_PRESENT and, when not
 * write-protected, PAGE_IS_WRITTEN.  Moves *start past what was walked (to
 * `end` when all was).  Returns the regions or a negative errno. */
static long scan_private_copies(struct mv_domain *d, uintptr_t *start, uintptr_t end,
                                struct page_region *regions, size_t cap)
{
    struct pm_scan_arg arg = {
        .size = sizeof(arg), .start = *start, .end = end,
        .vec = (uintptr_t)regions, .vec_len = cap,
        .category_inverted = PAGE_IS_FILE,
        .category_mask = PAGE_IS_FILE | PAGE_IS_PRESENT,
        .return_mask = PAGE_IS_PRESENT | PAGE_IS_WRITTEN,
    };
    long r = -EINVAL;

    /* The scan changes nothing: a failed one is tried again before the
     * caller must give up on what it cannot see. */
    for (unsigned i = 0; i < MV_SCAN_TRIES && r < 0; i++)
        r = mv__os_pagemap_scan(d->host->share->pagemap_fd, &arg);
    if (r >= 0)
        *start = arg.walk_end <= *start || r < (long)cap ? end : arg.walk_end;
    return r;
}

static long find_private_copies(struct mv_domain *d, uint64_t gfn, uint64_t n,
                                uint8_t *found)
{
    struct page_region regions[16];
    uintptr_t base = (uintptr_t)mv__gfn_addr(d, gfn);
    uintptr_t start = base, end = base + (n << MV_PAGE_SHIFT);
    long copies = 0;

    memset(found, 0, n);
    while (start < end) {
        long r = scan_private_copies(d, &start, end, regions, MV_ARRAY_SIZE(regions));

        if (r < 0)
            return r;
        for (long i = 0; i < r; i++) {
            for (uintptr_t p = regions[i].start; p < regions[i].end; p += MV_PAGE_SIZE) {
                found[(p - base) >> MV_PAGE_SHIFT] = (uint8_t)regions[i].categories;
                copies++;
            }
        }
    }
    return copies;
}

enum origin {
    FROM_RAM,       /* populated, unmapped, bytes equal to the frames */
    FROM_POD,       /* nothing there */
    FROM_SHARED,    /* another frame with equal bytes */
    FROM_CLONE,     /* a clone source's own frames, now the shared ones */
};

/*
 * A guest write raced a remap and sits in a private copy at gfn: make it the
 * gfn's own page.  For FROM_RAM the own frame is still charged; otherwise a
 * page is claimed, and when there is none the domain crashes (this needs a
 * guest store within microseconds of the remap and memory exhausted).
 * Returns 0 when the gfn was made private (RAM).
 */
MV_COLD static int adopt_private_copy(struct mv_domain *d, uint64_t gfn, enum origin from)
{
    uint8_t page[MV_PAGE_SIZE];
    int rc;

    /* Where the kernel copies on write, the copy is not protected yet: stop
     * further writes (they trap and wait for the domain lock) before
     * reading it. */
    if (kernel_copies_on(d) &&
        (rc = mv__os_uffd_writeprotect(d->cow_uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE,
                                       true)) < 0) {
        /* A write after the read below would be lost with the copy. */
        mv__domain_crash(d, "cannot stop writes to gfn %#llx to keep one that raced "
                         "its sharing: %s", (unsigned long long)gfn, mv_strerror(rc));
        return -EFAULT;
    }
    memcpy(page, mv__gfn_addr(d, gfn), MV_PAGE_SIZE);
    if (from != FROM_RAM && !mv__domain_claim(d, 1, true)) {
        mv__domain_crash(d, "no memory for a write to gfn %#llx that raced its "
                         "sharing", (unsigned long long)gfn);
        return -EFAULT;
    }
    rc = mv__os_write(d->host->machine.memfd, page, own_offset(d, gfn), MV_PAGE_SIZE);
    if (rc == 0)
        rc = mv__domain_map_own(d, gfn, 1);
    if (rc < 0) {
        mv__domain_crash(d, "cannot keep a write to gfn %#llx that raced its "
                         "sharing: %s", (unsigned long long)gfn, mv_strerror(rc));
        return -EFAULT;
    }
    /* Only spares the guest a trap: unmapped, the page is mapped at its
     * next fault. */
    (void)mv__os_uffd_continue(d->uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE);
    if (from != FROM_RAM)
        mv__p2m_set(d, gfn, MV_P2M_RAM);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}

/* Put unmapped populated gfns back as they were. */
static void restore_ram(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    int rc = mv__os_uffd_continue(d->uffd, mv__gfn_addr(d, gfn), n << MV_PAGE_SHIFT);

    mv__domain_pages_changed(d, gfn, n);
    if (rc < 0 && rc != -EEXIST)
        mv__log(d->host, MV_LOG_WARN, "domain %u: cannot map gfn %#llx+%llu back "
                "(%s); it will trap once", d->domid, (unsigned long long)gfn,
                (unsigned long long)n, mv_strerror(rc));
}

/*
 * Give back the own frames of gfns now shared (hole punched, uncharged).
 * When the punch fails the frames still hold memory, so the gfns cannot
 * stay shared: they become private again on their own frames (bytes taken
 * from the shared frame, in case part of the punch went through), keeping
 * their charge.  Both locks held.  0, the punch's error with the gfns
 * private again, or -EFAULT when even that failed and the domain crashed.
 */
static int free_own_frames(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    struct mv_host *h = d->host;
    int rc, undo = 0;

    if (n == 0)
        return 0;
    rc = mv__os_punch(h->machine.memfd, own_offset(d, gfn), n << MV_PAGE_SHIFT);
    if (rc == 0) {
        mv__machine_uncharge(&h->machine, n);
        return 0;
    }
    for (uint64_t i = 0; undo == 0 && i < n; i++)
        undo = mv__os_copy(h->machine.memfd, shared_mfn(d, gfn + i) << MV_PAGE_SHIFT,
                           own_offset(d, gfn + i), MV_PAGE_SIZE);
    if (undo == 0)
        undo = mv__domain_map_own(d, gfn, n);
    if (undo < 0) {
        mv__domain_crash(d, "cannot free the frames of shared gfn %#llx+%llu (%s) "
                         "nor make them private again (%s)", (unsigned long long)gfn,
                         (unsigned long long)n, mv_strerror(rc), mv_strerror(undo));
        mv__machine_uncharge(&h->machine, n);
        return -EFAULT;
    }
    for (uint64_t i = 0; i < n; i++) {
        rmap_del(h, d, gfn + i, true);
        mv__p2m_set(d, gfn + i, MV_P2M_RAM);
    }
    restore_ram(d, gfn, n);
    return mv__fail(rc, "domain %u: cannot free the frames of gfn %#llx+%llu to "
                    "share them: %s; they stay private", d->domid,
                    (unsigned long long)gfn, (unsigned long long)n, mv_strerror(rc));
}

/* After a FROM_RAM remap of [gfn, gfn + n): give back the own frames of its
 * gfns now shared, run by run.  Returns how many went back to private
 * because their frames could not be freed, with the first error in *error
 * (left alone when there was none). */
static uint64_t free_own_runs(struct mv_domain *d, uint64_t gfn, uint64_t n, int *error)
{
    uint64_t unshared = 0;

    for (uint64_t i = 0; i < n;) {
        uint64_t start = i;
        int rc;

        while (i < n && d->p2m[gfn + i] == MV_P2M_SHARED)
            i++;
        if (i == start) {
            i++;
            continue;
        }
        rc = free_own_frames(d, gfn + start, i - start);
        if (rc < 0) {
            unshared += i - start;
            if (*error == 0 || rc == -EFAULT)
                *error = rc;
        }
    }
    return unshared;
}

/* Map [gfn, gfn + n) of d to frames [mfn, mfn + n) and find the writes that
 * raced the remap (written, as find_private_copies).  On failure nothing has
 * changed but the mapping, put back where it was, or the domain crashed. */
static long map_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                    enum origin from, uint8_t *written)
{
    long copies;
    int rc;

    /* Gfns that held nothing add shared pages the target must have room to
     * copy; populated ones free as much room as they add. */
    check_room(d, from == FROM_POD ? n : 0);
    rc = map_frames(d, gfn, mfn, n);

    if (rc < 0) {
        /* Put the gfns back where they were: their old frame, or their own. */
        int undo = from == FROM_SHARED
            ? map_frames(d, gfn, shared_mfn(d, gfn), 1)
            : mv__domain_map_own(d, gfn, n);

        if (undo < 0)
            mv__domain_crash(d, "cannot restore gfn %#llx+%llu after a failed "
                             "remap", (unsigned long long)gfn, (unsigned long long)n);
        else if (from == FROM_RAM)
            restore_ram(d, gfn, n);
        return rc;
    }
    copies = find_private_copies(d, gfn, n, written);
    if (copies < 0) {
        mv__domain_crash(d, "cannot check gfn %#llx+%llu for writes during its "
                         "remap: %s", (unsigned long long)gfn, (unsigned long long)n,
                         mv_strerror((int)copies));
        return -EFAULT;
    }
    return copies;
}

/* The bookkeeping of a run map_run mapped: gfns written meanwhile become
 * private, the others shared.  Returns how many are shared now, or -EFAULT
 * when the domain crashed. */
static int64_t settle_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                          enum origin from, const uint8_t *written, int *error)
{
    struct mv__share *s = d->host->share;
    int64_t shared = 0;

    for (uint64_t i = 0; i < n; i++) {
        if (written[i]) {
            if (adopt_private_copy(d, gfn + i, from) < 0)
                goto crashed;
            if (from == FROM_SHARED)
                rmap_del(d->host, d, gfn + i, true);
            continue;
        }
        if (from == FROM_SHARED)
            rmap_del(d->host, d, gfn + i, true);
        if (rmap_add(s, mfn + i, d, gfn + i) < 0) {
            /* No memory for the reverse map: keep the page private. */
            if (from == FROM_RAM || from == FROM_CLONE) {
                mv__domain_map_own(d, gfn + i, 1);
                if (from == FROM_CLONE)
                    mv__os_copy(d->host->machine.memfd, (mfn + i) << MV_PAGE_SHIFT,
                                own_offset(d, gfn + i), MV_PAGE_SIZE);
                restore_ram(d, gfn + i, 1);
                continue;
            }
            mv__domain_crash(d, "no memory for the reverse map of gfn %#llx",
                             (unsigned long long)(gfn + i));
            goto crashed;
        }
        mv__p2m_set(d, gfn + i, MV_P2M_SHARED);
        shared++;
    }
    if (from == FROM_RAM)
        shared -= free_own_runs(d, gfn, n, error);
    mv__domain_pages_changed(d, gfn, n);
    mv__fault_wake(d, false, gfn, n);
    return shared;

crashed:
    if (from == FROM_RAM)
        free_own_runs(d, gfn, n, error);
    return -EFAULT;
}

/*
 * Make [gfn, gfn + n) of d map frames [mfn, mfn + n) (domain and share locks
 * held).  The frames are live and hold the bytes the gfns hold.  Returns the
 * number of gfns now shared (some may have been written during the remap and
 * stay private) or a negative errno with nothing changed but the mapping
 * restored.  FROM_RAM: gfns whose own frames could not be freed stay
 * private, with the error in *error (untouched when there was none).
 */
static int64_t convert_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                           enum origin from, int *error)
{
    uint8_t written[MV_BLOCK_PAGES];
    long copies = map_run(d, gfn, mfn, n, from, written);

    return copies < 0 ? copies : settle_run(d, gfn, mfn, n, from, written, error);
}

/* ------------------------------------------------------------------------ */
/* kernel copies (MV_COW_KERNEL)                                            */

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

static uint64_t count_takeovers(struct mv_domain *d, uint64_t gfn, uint64_t n);
static bool may_split_for_break(struct mv__share *s);
static int break_share_trapped(struct mv_domain *d, uint64_t gfn);

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
static int cow_trap(struct mv_domain *d, unsigned reason, bool on)
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
static void check_room(struct mv_domain *d, uint64_t more)
{
    if (kernel_copies_on(d) && d->shared + more > target_room(d) &&
        cow_trap(d, MV__COW_TRAP_MEMORY, true) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s", d->domid, mv_last_error());
}

void mv__share_check_room(struct mv_domain *d)
{
    check_room(d, 0);
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
static int give_own_frames(struct mv_domain *d, uint64_t first, uint64_t n,
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
    if (charged && !mv__machine_charge(&h->machine, charged)) {
        mv__mutex_unlock(&s->lock);
        return -ENOMEM;
    }
    zero = n == 1 && !copied && (frame_of(s, shared_mfn(d, first))->flags & FRAME_ZERO);
    if (!copies)
        rc = mv__os_write(h->machine.memfd, at, own_offset(d, first), len);
    else
        rc = zero ? 0 : mv__os_copy(h->machine.memfd, shared_mfn(d, first) << MV_PAGE_SHIFT,
                                    own_offset(d, first), len);
    /* A copy is stable: write-protected, its writers trap. */
    for (uint64_t i = 0; rc == 0 && copies && copied && i < n; i++)
        if (copies[i])
            rc = mv__os_write(h->machine.memfd, at + (i << MV_PAGE_SHIFT),
                              own_offset(d, first + i), MV_PAGE_SIZE);
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
                   : map_frames(d, first, shared_mfn(d, first), n);

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
        bool takeover = frame_of(s, shared_mfn(d, first + i))->refs == 1;

        mv__p2m_set(d, first + i, MV_P2M_RAM);
        rmap_del(h, d, first + i, !takeover);
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
    split = may_split_for_break(s);
    mv__mutex_unlock(&s->lock);
    if (!split) {
        /* Near the mapping limit: break them one by one as trapped writes,
         * which take their run along rather than split it. */
        for (uint64_t i = 0; i < n; i++)
            if (d->p2m[gfn + i] == MV_P2M_SHARED && (rc = break_share_trapped(d, gfn + i)) < 0)
                return rc;
        return 0;
    }
    if (!mv__domain_claim(d, n, false))
        return -ENOMEM;
    return give_own_frames(d, gfn, n, NULL, n);
}

/*
 * Settle the kernel copies in [gfn, gfn + n) (domain lock held, share lock
 * not).  With `hold`, the range's shared gfns are write-protected first and
 * stay so: no copy can appear there until the caller, done remapping or
 * reading them, calls rearm_range.  Returns the copies settled, -ENOMEM when
 * some found no page (they stay, write-protected, and the domain traps until
 * memory is back), or -EFAULT when the domain crashed.
 */
static int64_t settle_range(struct mv_domain *d, uint64_t gfn, uint64_t n, bool hold)
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
        long r = scan_private_copies(d, &start, end, regions, MV_ARRAY_SIZE(regions));

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
        cow_trap(d, MV__COW_TRAP_MEMORY, true);
        return -ENOMEM;
    }
    return settled;
}

/* Write-protect the shared gfns [gfn, gfn + n) and find the copies the
 * kernel made of them (found[i] != 0), which can no longer change (domain
 * lock held).  Returns how many, or -EFAULT when the domain crashed. */
static long hold_copies(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *found)
{
    long copies;

    if (protect_shared(d, gfn, n, true) < 0) {
        mv__domain_crash(d, "%s", mv_last_error());
        return -EFAULT;
    }
    copies = find_private_copies(d, gfn, n, found);
    if (copies < 0) {
        mv__domain_crash(d, "cannot look for copies of gfn %#llx+%llu: %s",
                         (unsigned long long)gfn, (unsigned long long)n,
                         mv_strerror((int)copies));
        return -EFAULT;
    }
    return copies;
}

/* Undo settle_range's hold on the shared gfns of [gfn, gfn + n) (domain lock
 * held). */
static void rearm_range(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    if (kernel_copies_on(d) && protect_shared(d, gfn, n, false) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s; those pages trap on write",
                d->domid, mv_last_error());
}

/* ------------------------------------------------------------------------ */
/* CoW breaks                                                               */

/* How far from gfn its run (consecutive gfns on consecutive frames: one
 * mapping) goes towards `step` (+1 or -1), at most `max` gfns: sets *len to
 * the gfns beyond gfn in the run, and returns whether the run ends there. */
static bool run_side(struct mv_domain *d, uint64_t gfn, int step, uint64_t max,
                     uint64_t *len)
{
    uint64_t mfn = shared_mfn(d, gfn);

    for (*len = 0; *len < max; (*len)++) {
        uint64_t k = *len + 1, next, want;

        if (step < 0 ? gfn < k : gfn + k >= d->maxmem_pages)
            return true;
        next = shared_mfn(d, step < 0 ? gfn - k : gfn + k);
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
    return shared_mfn(d, step < 0 ? gfn - 1 : gfn + 1) == MV_NO_MFN;
}

/* Whether a break may still split a run: the kernel's own limit is not
 * near (share lock held); takes the two mappings. */
static bool may_split(struct mv__share *s)
{
    if (vma_count(s, MV_MAP_RECHECK_FAULT_NS) + 2 + MV_MAP_HARD_MARGIN >= s->max_map_count)
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
static bool may_split_for_break(struct mv__share *s)
{
    uint64_t limit = break_map_limit(s);

    if (s->vma_count + 2 < limit || vma_count(s, MV_MAP_RECHECK_FAULT_NS) + 2 < limit) {
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
    if (may_split_for_break(s))
        return 1;
    left_ends = run_side(d, gfn, -1, MV_BREAK_RUN_MAX, &left);
    right_ends = run_side(d, gfn, +1, MV_BREAK_RUN_MAX, &right);
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
        may_split(s))
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
        takeovers += frame_of(s, shared_mfn(d, gfn + i))->refs == 1;
    return takeovers;
}

/*
 * Give shared gfn its own page again, with the rest of its run when
 * break_extent says so (domain lock held, share lock not).  Each gfn gets a
 * copy of its frame in its own slot, except that one alone on a frame known
 * to be zero gets a fresh zero page; each needs a page of the domain's
 * target, and a page of the host budget unless it held the frame's last
 * mapping (the frame's charge then moves to the domain: a takeover).
 */
static int break_share_trapped(struct mv_domain *d, uint64_t gfn)
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
        split = may_split(s);
        mv__mutex_unlock(&s->lock);
        first = gfn;
        n = 1;
        if (!split || !mv__domain_claim(d, 1, false))
            return -ENOMEM;
    }
    /* Where the kernel copies on write, gfns of the extent may hold copies:
     * protected, they stay as they are while their bytes are taken. */
    memset(found, 0, n);
    if (kernel_copies(d) && (copies = hold_copies(d, first, n, found)) < 0)
        return (int)copies;
    return give_own_frames(d, first, n, found, 1);
}

/*
 * Break shared gfn (domain lock held, share lock not).  When memory is short
 * an MV_COW_KERNEL domain traps from then on, so that the PoD policy decides
 * for every write, not only this one.
 */
static int break_share(struct mv_domain *d, uint64_t gfn)
{
    int rc = break_share_trapped(d, gfn);

    if (rc == -ENOMEM && kernel_copies(d) && cow_trap(d, MV__COW_TRAP_MEMORY, true) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s", d->domid, mv_last_error());
    return rc;
}

int mv__share_cow_fault(struct mv_domain *d, uint64_t gfn)
{
    return break_share(d, gfn);
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
    rmap_del(d->host, d, gfn, true);
    mv__mutex_unlock(&s->lock);
    mv__domain_pages_changed(d, gfn, 1);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* one-call sharing                                                         */

struct apply_plan {
    uint8_t kind[MV_BLOCK_PAGES];      /* what became of each gfn */
    uint64_t mfn[MV_BLOCK_PAGES];      /* matched frame */
    uint64_t hash[MV_BLOCK_PAGES];
};

enum { PLAN_NONE, PLAN_ZERO, PLAN_MATCH, PLAN_INSERT, PLAN_RESTORE };

/* One 2 MiB buffer (and a page of scratch) per thread that shares, freed
 * when the thread exits.  Not the PoD sweep's buffer: sharing may sweep
 * (claiming a page for a write that raced a remap) while its bytes are in
 * use. */
/* Per thread that shares: a block's pages as read, the frames they are
 * compared with, and a page of scratch. */
static pthread_key_t buffer_key;
static pthread_once_t buffer_once = PTHREAD_ONCE_INIT;

static void make_buffer_key(void)
{
    pthread_key_create(&buffer_key, free);
}

static uint8_t *thread_buffer(void)
{
    uint8_t *buf;

    pthread_once(&buffer_once, make_buffer_key);
    buf = pthread_getspecific(buffer_key);
    if (!buf) {
        buf = aligned_alloc(MV_PAGE_SIZE, ((size_t)MV_BLOCK_PAGES * 2 + 1) << MV_PAGE_SHIFT);
        if (buf && pthread_setspecific(buffer_key, buf) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    return buf;
}

/* Zero pages found by sharing go back to PoD (domain lock held).  When
 * their frames cannot be freed they stay populated, and *error says why. */
static uint64_t reclaim_zero_run(struct mv_domain *d, uint64_t gfn, uint64_t n, int *error)
{
    int rc = mv__os_punch(d->host->machine.memfd, own_offset(d, gfn), n << MV_PAGE_SHIFT);

    if (rc < 0) {
        restore_ram(d, gfn, n);
        *error = mv__fail(rc, "domain %u: cannot free the zero pages at gfn %#llx+%llu: "
                          "%s; they stay private", d->domid, (unsigned long long)gfn,
                          (unsigned long long)n, mv_strerror(rc));
        return 0;
    }
    for (uint64_t i = 0; i < n; i++)
        mv__p2m_set(d, gfn + i, MV_P2M_POD);
    mv__machine_uncharge(&d->host->machine, n);
    mv__domain_pages_changed(d, gfn, n);
    d->reclaimed_zero += n;
    return n;
}

/* Insert a run of pages (bytes in buf) into new consecutive frames and map
 * them (both locks held).  Returns gfns shared or a negative errno. */
static int64_t insert_run(struct mv_domain *d, uint64_t gfn, uint64_t n,
                          const uint8_t *buf, const uint64_t *hash, int *error)
{
    struct mv_host *h = d->host;
    struct mv__share *s = h->share;
    uint64_t first;
    int64_t done;
    int rc = frames_alloc(h, n, &first);

    if (rc < 0)
        return rc;
    rc = mv__os_write(h->machine.memfd, buf, first << MV_PAGE_SHIFT, n << MV_PAGE_SHIFT);
    if (rc == 0) /* given back at once: each page shared frees its own */
        mv__machine_charge_anyway(&h->machine, n);
    if (rc < 0) {
        for (uint64_t i = 0; i < n; i++)
            frame_free(h, first + i, false);
        return rc;
    }
    for (uint64_t i = 0; i < n; i++) {
        index_insert(s, first + i, hash[i]);
        if (mv__page_is_zero(buf + (i << MV_PAGE_SHIFT)))
            frame_of(s, first + i)->flags |= FRAME_ZERO;
    }
    done = convert_run(d, gfn, first, n, FROM_RAM, error);
    /* Frames of gfns that stayed private (or all, on failure).  Those that
     * were shared and taken back (free_own_frames) are gone already, and
     * with the last of them, maybe their region. */
    for (uint64_t i = 0; i < n; i++) {
        struct mv__sframe *f = frame_of(s, first + i);

        if (f && f->refs == 0 && (f->flags & FRAME_LIVE))
            frame_free(h, first + i, true);
    }
    return done;
}

/*
 * Turn the plan's candidate frames (found by hash) into matches, comparing
 * bytes (share lock held).  Candidates of consecutive pages that are
 * consecutive frames, as where a block matches an earlier copy of itself,
 * are read with one pread; a page whose first candidate differs (a hash
 * collision) is looked up again in the whole index chain.  Pages without a
 * match are inserted when the action says so, else left to restore.
 */
static void verify_matches(struct mv_host *h, struct apply_plan *plan, uint64_t n,
                           const uint8_t *actions, const uint8_t *buf, uint8_t *frames,
                           uint8_t *scratch)
{
    for (uint64_t i = 0; i < n;) {
        uint64_t start = i++;
        bool read;

        if (plan->kind[start] != PLAN_RESTORE)
            continue;
        if (plan->mfn[start] != MV_NO_MFN) {
            while (i < n && plan->kind[i] == PLAN_RESTORE &&
                   plan->mfn[i] == plan->mfn[i - 1] + 1)
                i++;
        }
        read = plan->mfn[start] != MV_NO_MFN &&
               mv__machine_read(&h->machine, plan->mfn[start], i - start, frames) == 0;
        for (uint64_t j = start; j < i; j++) {
            const uint8_t *page = buf + (j << MV_PAGE_SHIFT);

            if (plan->mfn[j] != MV_NO_MFN &&
                (!read || memcmp(frames + ((j - start) << MV_PAGE_SHIFT), page,
                                 MV_PAGE_SIZE) != 0))
                plan->mfn[j] = index_find(h, plan->hash[j], page, scratch);
            if (plan->mfn[j] != MV_NO_MFN)
                plan->kind[j] = PLAN_MATCH;
            else if (actions[j] == MV_ACT_MATCH_INSERT || actions[j] == MV_ACT_INSERT)
                plan->kind[j] = PLAN_INSERT;
        }
    }
}

int mv__share_apply(struct mv_domain *d, uint64_t gfn, uint64_t n,
                    const uint8_t *actions, enum mv_share_outcome *outcomes,
                    struct mv__apply_result *result)
{
    struct mv_host *h = d->host;
    struct mv__share *s = h->share;
    struct apply_plan plan_storage, *plan = &plan_storage;
    uint8_t *buf = thread_buffer(), *frames, *scratch;
    uint64_t i;
    int rc = 0;

    mv__assert_held(&d->lock);
    memset(result, 0, sizeof(*result));
    if (!buf)
        return mv__fail(-ENOMEM, "no memory to share pages");
    frames = buf + ((size_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT);
    scratch = frames + ((size_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT);
    memset(plan->kind, PLAN_NONE, n);
    for (i = 0; i < n; i++) {
        if (outcomes)
            outcomes[i] = d->p2m[gfn + i] == MV_P2M_SHARED ? MV_SHARE_ALREADY
                                                           : MV_SHARE_SKIPPED;
    }
    /* Unmap and read runs of the populated gfns to act on. */
    for (i = 0; i < n;) {
        uint64_t start = i;

        while (i < n && actions[i] != MV_ACT_SKIP && d->p2m[gfn + i] == MV_P2M_RAM &&
               !mv__share_excluded(d, gfn + i))
            i++;
        if (i == start) {
            i++;
            continue;
        }
        if (mv__os_zap(mv__gfn_addr(d, gfn + start), (i - start) << MV_PAGE_SHIFT) < 0)
            continue;
        if (mv__machine_read(&h->machine, d->base_mfn + gfn + start, i - start,
                             buf + (start << MV_PAGE_SHIFT)) < 0) {
            restore_ram(d, gfn + start, i - start);
            continue;
        }
        memset(plan->kind + start, PLAN_RESTORE, i - start);
    }
    /* Decide, then act on runs, under the share lock. */
    mv__mutex_lock(&s->lock);
    for (i = 0; i < n; i++) {
        const uint8_t *page = buf + (i << MV_PAGE_SHIFT);

        if (plan->kind[i] != PLAN_RESTORE)
            continue;
        /* A nominated zero page still gets its frame (its break copies
         * nothing); elsewhere zero pages go back to PoD. */
        if (actions[i] != MV_ACT_INSERT && mv__page_is_zero(page)) {
            plan->kind[i] = PLAN_ZERO;
            continue;
        }
        plan->hash[i] = mv__share_hash(page);
        plan->mfn[i] = actions[i] == MV_ACT_INSERT ? MV_NO_MFN
                       : index_lookup(s, plan->hash[i]);
    }
    verify_matches(h, plan, n, actions, buf, frames, scratch);
    for (i = 0; i < n;) {
        uint8_t kind = plan->kind[i];
        uint64_t start = i++;
        int64_t done = 0;

        while (i < n && plan->kind[i] == kind &&
               (kind != PLAN_MATCH || plan->mfn[i] == plan->mfn[i - 1] + 1))
            i++;
        if (kind == PLAN_NONE)
            continue;
        if (kind == PLAN_ZERO && rc == 0) {
            done = (int64_t)reclaim_zero_run(d, gfn + start, i - start, &rc);
            result->zero += (uint64_t)done;
            s->zero_reclaimed += (uint64_t)done;
            for (uint64_t j = start; outcomes && j < start + (uint64_t)done; j++)
                outcomes[j] = MV_SHARE_ZERO;
            continue;
        }
        /* After a failure the rest goes back as it was. */
        if (kind == PLAN_RESTORE || rc < 0 || !may_map(h, 2)) {
            restore_ram(d, gfn + start, i - start);
            result->skipped += i - start;
            continue;
        }
        if (kind == PLAN_MATCH)
            done = convert_run(d, gfn + start, plan->mfn[start], i - start, FROM_RAM, &rc);
        else
            done = insert_run(d, gfn + start, i - start, buf + (start << MV_PAGE_SHIFT),
                              plan->hash + start, &rc);
        if (done == -EFAULT) {
            rc = mv__fail(-EFAULT, "domain %u crashed while sharing", d->domid);
            break;
        }
        if (done < 0 && kind == PLAN_INSERT) {
            restore_ram(d, gfn + start, i - start);
            done = 0;
        }
        if (done < 0)
            done = 0;
        for (uint64_t j = start; j < i; j++) {
            if (d->p2m[gfn + j] != MV_P2M_SHARED)
                continue;
            if (outcomes)
                outcomes[j] = kind == PLAN_MATCH ? MV_SHARE_MATCHED : MV_SHARE_INSERTED;
        }
        if (kind == PLAN_MATCH)
            result->shared += (uint64_t)done;
        else
            result->inserted += (uint64_t)done;
        result->skipped += i - start - (uint64_t)done;
    }
    mv__mutex_unlock(&s->lock);
    if (result->zero)
        mv__fault_kick(h);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* settling whole domains, and the background settler                       */

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
        cow_trap(d, MV__COW_TRAP_MEMORY, false) < 0)
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
    return settle_finish(d, settle_range(d, 0, d->maxmem_pages, false), start);
}

/* The background settler holds a domain's lock for this many gfns at a
 * time: a pass over a domain whose shared pages are all mapped walks
 * every page-table entry (2.4-7.8 ms a GiB here), and the domain's faults
 * wait for the lock meanwhile. */
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
            r = settle_range(d, g, MV_MIN(MV_SETTLE_CHUNK_PAGES, d->maxmem_pages - g), false);
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
    return settle_range(d, gfn, n, false);
}

int mv__share_cow_trap(struct mv_domain *d, enum mv__cow_trap reason, bool on)
{
    int rc;

    if (!kernel_copies(d))
        return 0;
    rc = cow_trap(d, reason, on);
    if (rc == 0 && on && settle_domain(d) == -EFAULT)
        rc = -EFAULT;
    return rc;
}

/* Settle every running MV_COW_KERNEL domain that has shared gfns, each
 * under its lock, or a chunk at a time (no lock held).  Returns whether one
 * traps for want of memory (only a settle lets it copy again); adds the
 * copies left waiting for memory to *waiting when not NULL. */
static bool settle_all(struct mv_host *h, bool chunked)
{
    struct mv_domain **all;
    size_t n = mv__domain_get_all(h, &all);
    bool memory_trapped = false;
    uint64_t waiting = 0;

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
            memory_trapped |= (d->share->trap_reasons & MV__COW_TRAP_MEMORY) != 0;
            waiting += d->share->settle_waiting;
            mv__mutex_unlock(&d->lock);
        }
        mv__domain_put(d);
    }
    free(all);
    mv__mutex_lock(&h->share->lock);
    h->share->settle_waiting = waiting;
    mv__mutex_unlock(&h->share->lock);
    return memory_trapped;
}

void mv__share_settle_all(struct mv_host *h)
{
    settle_all(h, false);
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
        memory_trapped = settle_all(h, true);
        mv__mutex_lock(&s->settler_lock);
    }
    mv__mutex_unlock(&s->settler_lock);
    return NULL;
}

/* The first MV_COW_KERNEL domain starts the settler. */
static int settler_start(struct mv_host *h)
{
    struct mv__share *s = h->share;
    int rc = 0;

    mv__mutex_lock(&s->settler_lock);
    if (!s->settler_started) {
        rc = -pthread_create(&s->settler, NULL, settler_main, h);
        s->settler_started = rc == 0;
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

/* ------------------------------------------------------------------------ */
/* domains                                                                  */

static int registry_add(struct mv__share *s, struct mv__share_dom *sd)
{
    size_t slot = 0;

    while (slot < s->registry_capacity && s->registry[slot])
        slot++;
    if (slot == s->registry_capacity) {
        size_t cap = s->registry_capacity ? s->registry_capacity * 2 : 16;
        struct mv__share_dom **n = realloc(s->registry, cap * sizeof(*n));

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
    struct mv__share_dom *sd = calloc(1, sizeof(*sd));
    uint64_t blocks = (d->maxmem_pages + MV_BLOCK_PAGES - 1) / MV_BLOCK_PAGES;
    int rc;

    if (sd) {
        sd->table_bytes = blocks * sizeof(*sd->table);
        sd->table = mv__os_table_alloc(sd->table_bytes);
    }
    if (!sd || !sd->table ||
        !(sd->table_used = calloc((blocks + 63) / 64, sizeof(*sd->table_used)))) {
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
    d->cow_uffd = mv__uffd_create(0);
    if (d->cow_uffd < 0)
        return mv__fail(d->cow_uffd, "cannot open the copy-on-write userfaultfd: %s",
                        mv_strerror(d->cow_uffd));
    return kernel_copies(d) ? settler_start(d->host) : 0;
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
        pending_let_go(s, d);
    s->scrub_batching = true;
    for (uint64_t g = 0; d->shared && g < d->maxmem_pages; g++) {
        if (d->p2m[g] == MV_P2M_SHARED) {
            rmap_del(d->host, d, g, true);
            mv__p2m_set(d, g, MV_P2M_POD);
        }
    }
    if (r && !r->pending_doms[0] && !r->pending_doms[1])
        pending_free(d->host, r);
    scrub_flush(d->host);
    s->scrub_batching = false;
    s->registry[sd->slot] = NULL;
    mv__mutex_unlock(&s->lock);
    mv__os_unmap(sd->table, sd->table_bytes);
    free(sd->table_used);
    free(sd->excluded);
    free(sd->checksums);
    free(sd);
    d->share = NULL;
}

bool mv__share_excluded(struct mv_domain *d, uint64_t gfn)
{
    const uint64_t *x = d->share->excluded;

    return x && (x[gfn / 64] >> (gfn % 64) & 1);
}

uint32_t *mv__share_checksums(struct mv_domain *d)
{
    if (!d->share->checksums)
        d->share->checksums = calloc(d->maxmem_pages, sizeof(uint32_t));
    return d->share->checksums;
}

static uint64_t share_domain_metadata(struct mv_domain *d);

void mv__share_domain_info(struct mv_domain *d, struct mv_domain_info *out)
{
    struct mv__share_dom *sd = d->share;
    uint64_t room;

    room = d->target_pages - d->populated;
    out->cow_breaks = sd->cow_breaks;
    out->cow_takeovers = sd->cow_takeovers;
    out->cow_nocopy = sd->cow_nocopy;
    out->cow_mode = d->config.cow_mode;
    out->cow_kernel_copies = sd->kernel_copies;
    out->cow_trapping = kernel_copies(d) && sd->trap_reasons != 0;
    out->cow_claimable = MV_MIN(d->shared, room);
    out->cow_shortfall = d->shared - out->cow_claimable;
    out->excluded_pages = sd->excluded_count;
    out->metadata_bytes += share_domain_metadata(d);
}

/* The entries a domain's table has been given (whole 2 MiB blocks of it, as
 * they are first used) and its scanner and exclusion tables (domain lock
 * held). */
static uint64_t share_domain_metadata(struct mv_domain *d)
{
    const struct mv__share_dom *sd = d->share;
    uint64_t blocks = (d->maxmem_pages + MV_BLOCK_PAGES - 1) / MV_BLOCK_PAGES, used = 0;

    mv__mutex_lock(&d->host->share->lock);  /* guards table_used */
    for (uint64_t w = 0; w < (blocks + 63) / 64; w++)
        used += (uint64_t)__builtin_popcountll(sd->table_used[w]);
    mv__mutex_unlock(&d->host->share->lock);
    return sizeof(*sd) + used * sizeof(struct mv__share_block) +
           (blocks + 63) / 64 * sizeof(uint64_t) +
           (sd->excluded ? (d->maxmem_pages + 63) / 64 * sizeof(uint64_t) : 0) +
           (sd->checksums ? d->maxmem_pages * sizeof(*sd->checksums) : 0);
}

uint64_t mv__share_host_metadata(struct mv_host *h)
{
    struct mv__share *s = h->share;
    uint64_t bytes;

    mv__mutex_lock(&s->lock);
    bytes = (s->bucket_mask + 1) * sizeof(*s->buckets) +
            s->region_capacity * sizeof(*s->regions) +
            s->registry_capacity * sizeof(*s->registry);
    for (size_t i = 0; i < s->region_count; i++) {
        const struct mv__share_region *r = s->regions[i];

        bytes += sizeof(*r) + r->pages * sizeof(*r->frames) +
                 r->free_capacity * sizeof(*r->free_frames) +
                 (r->pending ? (r->pages + 63) / 64 * sizeof(*r->pending) : 0);
    }
    mv__mutex_unlock(&s->lock);
    return bytes;
}

/* ------------------------------------------------------------------------ */
/* the API                                                                  */

/* Look a domain up for sharing and lock it: it must run. */
static int begin(mv_host *host, uint32_t domid, struct mv_domain **out)
{
    int rc;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    rc = mv__domain_lock_live(host, domid, out);
    if (rc == 0 && (*out)->state == MV_DOMAIN_PAUSED) {
        mv__domain_unlock_put(*out);
        rc = mv__fail(-EBUSY, "domain %u is paused: its pages are not shared "
                      "while paused (unpause it, or clone it)", domid);
    }
    return rc;
}

static void end(struct mv_domain *d)
{
    mv__domain_unlock_put(d);
}

static int check_range(struct mv_domain *d, uint64_t gfn, uint64_t count)
{
    if (count == 0)
        return mv__fail(-EINVAL, "an empty range of gfns");
    if (gfn >= d->maxmem_pages || count > d->maxmem_pages - gfn)
        return mv__fail(-EINVAL, "gfns %#llx+%llu are not inside domain %u's "
                        "%llu pages", (unsigned long long)gfn, (unsigned long long)count,
                        d->domid, (unsigned long long)d->maxmem_pages);
    return 0;
}

static int check_shareable(struct mv_domain *d, uint64_t gfn)
{
    int rc = check_range(d, gfn, 1);

    if (rc == 0 && mv__share_excluded(d, gfn))
        rc = mv__fail(-EPERM, "domain %u gfn %#llx is excluded from sharing",
                      d->domid, (unsigned long long)gfn);
    return rc;
}

/* The frame a handle names at (domid, gfn) (share lock held): MV_NO_MFN with
 * an error when the gfn is not shared into a frame with that handle. */
static uint64_t handle_frame(struct mv_host *h, uint32_t domid, uint64_t gfn,
                             mv_share_handle handle, int *rc)
{
    struct mv__share *s = h->share;
    struct mv__share_dom *sd = NULL;
    struct mv__share_block *b;
    struct mv__sframe *f;
    uint64_t mfn;

    for (size_t i = 0; i < s->registry_capacity && !sd; i++)
        if (s->registry[i] && s->registry[i]->domain->domid == domid)
            sd = s->registry[i];
    if (handle == 0 || handle > s->next_handle) {
        *rc = mv__fail(-EINVAL, "handle %llu was never issued",
                       (unsigned long long)handle);
        return MV_NO_MFN;
    }
    if (!sd || gfn >= sd->domain->maxmem_pages) {
        *rc = mv__fail(!sd ? -ESRCH : -EINVAL, "no gfn %#llx in domain %u",
                       (unsigned long long)gfn, domid);
        return MV_NO_MFN;
    }
    b = sd->domain->p2m[gfn] == MV_P2M_SHARED ? dom_block(sd, gfn, false) : NULL;
    mfn = entry_mfn(b, gfn);
    f = mfn != MV_NO_MFN ? frame_of(s, mfn) : NULL;
    if (!f || f->handle != handle) {
        *rc = mv__fail(-ESTALE, "handle %llu is stale: domain %u gfn %#llx %s",
                       (unsigned long long)handle, domid, (unsigned long long)gfn,
                       f ? "is shared under another handle" : "is not shared (written "
                       "or unshared since it was nominated)");
        return MV_NO_MFN;
    }
    return mfn;
}

int mv_share_nominate(mv_host *host, uint32_t domid, uint64_t gfn,
                      mv_share_handle *handle)
{
    struct mv_domain *d;
    struct mv__apply_result res;
    enum mv_share_outcome outcome;
    uint8_t action = MV_ACT_INSERT;
    int rc;

    if (!handle)
        return mv__fail(-EINVAL, "handle must not be NULL");
    rc = begin(host, domid, &d);
    if (rc < 0)
        return rc;
    rc = check_shareable(d, gfn);
    if (rc == 0 && settle_range(d, gfn, 1, false) == -EFAULT)
        rc = mv__fail(-EFAULT, "domain %u crashed: %s", domid, d->crash_reason);
    if (rc == 0 && (d->p2m[gfn] == MV_P2M_POD || d->p2m[gfn] == MV_P2M_BALLOONED))
        rc = mv__fail(-EINVAL, "domain %u gfn %#llx is %s: nothing to nominate", domid,
                      (unsigned long long)gfn,
                      d->p2m[gfn] == MV_P2M_POD ? "not populated" : "ballooned");
    if (rc == 0 && d->p2m[gfn] == MV_P2M_RAM) {
        rc = mv__share_apply(d, gfn, 1, &action, &outcome, &res);
        if (rc == 0 && d->p2m[gfn] != MV_P2M_SHARED)
            rc = mv__fail(-EAGAIN, "domain %u gfn %#llx was written while nominated, "
                          "or sharing is stopped", domid, (unsigned long long)gfn);
    }
    if (rc == 0) {
        struct mv__share *s = host->share;

        mv__mutex_lock(&s->lock);
        *handle = frame_of(s, shared_mfn(d, gfn))->handle;
        mv__mutex_unlock(&s->lock);
    }
    end(d);
    return rc;
}

/* The source side of share/add_to_physmap must run too; a copy the kernel
 * made of its page is settled, so that its handle is stale if it was
 * written. */
static int check_source(mv_host *host, uint32_t domid, uint64_t gfn)
{
    struct mv_domain *src;
    int rc;

    if ((rc = begin(host, domid, &src)) < 0)
        return rc;
    if (gfn < src->maxmem_pages && settle_range(src, gfn, 1, false) == -EFAULT)
        rc = mv__fail(-EFAULT, "domain %u crashed: %s", domid, src->crash_reason);
    end(src);
    return rc;
}

int mv_share_pages(mv_host *host, uint32_t src_domid, uint64_t src_gfn,
                   mv_share_handle src_handle, uint32_t client_domid,
                   uint64_t client_gfn, mv_share_handle client_handle)
{
    struct mv_domain *d;
    struct mv__share *s;
    uint64_t src_mfn, client_mfn;
    uint8_t *a, *b;
    int rc;

    if (src_domid == client_domid && src_gfn == client_gfn)
        return mv__fail(-EINVAL, "cannot share domain %u gfn %#llx with itself",
                        src_domid, (unsigned long long)src_gfn);
    if ((rc = check_source(host, src_domid, src_gfn)) < 0)
        return rc;
    if ((rc = begin(host, client_domid, &d)) < 0)
        return rc;
    s = host->share;
    a = thread_buffer();
    if (!a) {
        end(d);
        return mv__fail(-ENOMEM, "no memory to compare pages");
    }
    b = a + MV_PAGE_SIZE;
    rc = check_shareable(d, client_gfn);
    /* Its copy, if the kernel made one, is settled, and no other can be made
     * until it is remapped: its handle and bytes cannot change meanwhile. */
    if (rc == 0 && settle_range(d, client_gfn, 1, true) == -EFAULT)
        rc = mv__fail(-EFAULT, "domain %u crashed: %s", client_domid, d->crash_reason);
    mv__mutex_lock(&s->lock);
    src_mfn = rc < 0 ? MV_NO_MFN : handle_frame(host, src_domid, src_gfn, src_handle, &rc);
    client_mfn = rc < 0 ? MV_NO_MFN :
                 handle_frame(host, client_domid, client_gfn, client_handle, &rc);
    if (rc == 0 && src_mfn != client_mfn) {
        rc = mv__machine_read(&host->machine, src_mfn, 1, a);
        if (rc == 0)
            rc = mv__machine_read(&host->machine, client_mfn, 1, b);
        if (rc == 0 && memcmp(a, b, MV_PAGE_SIZE) != 0)
            rc = mv__fail(-EINVAL, "domain %u gfn %#llx and domain %u gfn %#llx hold "
                          "different bytes", src_domid, (unsigned long long)src_gfn,
                          client_domid, (unsigned long long)client_gfn);
        if (rc == 0 && !may_map(host, 2))
            rc = mv__fail(-ENOSPC, "sharing is stopped: %s", s->stop_reason);
        if (rc == 0) {
            int64_t done = convert_run(d, client_gfn, src_mfn, 1, FROM_SHARED, NULL);

            if (done < 0)
                rc = (int)done;
            else if (done == 0)
                rc = mv__fail(-EAGAIN, "domain %u gfn %#llx was written while being "
                              "shared", client_domid, (unsigned long long)client_gfn);
        }
    }
    mv__mutex_unlock(&s->lock);
    if (client_gfn < d->maxmem_pages)
        rearm_range(d, client_gfn, 1);
    end(d);
    return rc;
}

int mv_share_add_to_physmap(mv_host *host, uint32_t src_domid, uint64_t src_gfn,
                            mv_share_handle src_handle, uint32_t client_domid,
                            uint64_t client_gfn)
{
    struct mv_domain *d;
    struct mv__share *s;
    uint64_t mfn;
    int rc;

    if ((rc = check_source(host, src_domid, src_gfn)) < 0)
        return rc;
    if ((rc = begin(host, client_domid, &d)) < 0)
        return rc;
    s = host->share;
    rc = check_shareable(d, client_gfn);
    if (rc == 0 && d->p2m[client_gfn] == MV_P2M_BALLOONED)
        rc = mv__fail(-EINVAL, "domain %u gfn %#llx is ballooned", client_domid,
                      (unsigned long long)client_gfn);
    else if (rc == 0 && d->p2m[client_gfn] != MV_P2M_POD)
        rc = mv__fail(-EEXIST, "domain %u gfn %#llx holds a page already", client_domid,
                      (unsigned long long)client_gfn);
    mv__mutex_lock(&s->lock);
    mfn = rc < 0 ? MV_NO_MFN : handle_frame(host, src_domid, src_gfn, src_handle, &rc);
    if (rc == 0 && !may_map(host, 2))
        rc = mv__fail(-ENOSPC, "sharing is stopped: %s", s->stop_reason);
    if (rc == 0) {
        int64_t done = convert_run(d, client_gfn, mfn, 1, FROM_POD, NULL);

        if (done < 0)
            rc = (int)done;
        else if (done == 0)
            rc = mv__fail(-EAGAIN, "domain %u gfn %#llx was written while being mapped",
                          client_domid, (unsigned long long)client_gfn);
    }
    mv__mutex_unlock(&s->lock);
    end(d);
    return rc;
}

int mv_share_unshare(mv_host *host, uint32_t domid, uint64_t gfn)
{
    struct mv_domain *d;
    int rc = begin(host, domid, &d);

    if (rc < 0)
        return rc;
    rc = check_range(d, gfn, 1);
    if (rc == 0 && d->p2m[gfn] != MV_P2M_SHARED)
        rc = mv__fail(-EINVAL, "domain %u gfn %#llx is not shared", domid,
                      (unsigned long long)gfn);
    if (rc == 0) {
        rc = break_share(d, gfn);
        if (rc == -ENOMEM)
            rc = mv__fail(-ENOMEM, "no page for domain %u gfn %#llx: %llu of %llu "
                          "target pages hold data, or the host budget is spent",
                          domid, (unsigned long long)gfn,
                          (unsigned long long)d->populated,
                          (unsigned long long)d->target_pages);
    }
    end(d);
    if (rc == 0)
        mv__fault_kick(host);
    return rc;
}

int64_t mv_share_make_ro_and_share(mv_host *host, uint32_t domid, uint64_t gfn,
                                   uint64_t count, enum mv_share_outcome *outcomes)
{
    uint8_t actions[MV_BLOCK_PAGES];
    struct mv_domain *d;
    int64_t shared = 0;
    int rc = begin(host, domid, &d);

    if (rc < 0)
        return rc;
    rc = check_range(d, gfn, count);
    /* A shared gfn the guest wrote is private now, and may be shared again. */
    if (rc == 0 && settle_range(d, gfn, count, false) == -EFAULT)
        rc = mv__fail(-EFAULT, "domain %u crashed: %s", domid, d->crash_reason);
    memset(actions, MV_ACT_MATCH_INSERT, sizeof(actions));
    for (uint64_t done = 0; rc == 0 && done < count;) {
        uint64_t n = MV_MIN(count - done, MV_BLOCK_PAGES - (gfn + done) % MV_BLOCK_PAGES);
        struct mv__apply_result res;

        rc = mv__share_apply(d, gfn + done, n, actions, outcomes ? outcomes + done : NULL,
                             &res);
        shared += (int64_t)res.shared;
        done += n;
    }
    end(d);
    return rc < 0 ? rc : shared;
}

int mv_share_exclude(mv_host *host, uint32_t domid, uint64_t gfn, uint64_t count)
{
    struct mv_domain *d;
    struct mv__share_dom *sd;
    int rc = begin(host, domid, &d);

    if (rc < 0)
        return rc;
    sd = d->share;
    rc = check_range(d, gfn, count);
    if (rc == 0 && !sd->excluded &&
        !(sd->excluded = calloc((d->maxmem_pages + 63) / 64, sizeof(uint64_t))))
        rc = mv__fail(-ENOMEM, "no memory for the exclusion map");
    for (uint64_t g = gfn; rc == 0 && g < gfn + count; g++) {
        if (d->p2m[g] != MV_P2M_SHARED)
            continue;
        rc = break_share(d, g);
        if (rc == -ENOMEM)
            rc = mv__fail(-ENOMEM, "no page to unshare domain %u gfn %#llx before "
                          "excluding it", domid, (unsigned long long)g);
    }
    for (uint64_t g = gfn; rc == 0 && g < gfn + count; g++) {
        if (!mv__share_excluded(d, g))
            sd->excluded_count++;
        sd->excluded[g / 64] |= 1ull << (g % 64);
    }
    end(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* clones                                                                   */

/*
 * A clone either completes or changes nothing.  Its steps report failures
 * instead of crashing either side: on a failure half-way mv_domain_clone
 * undoes what was done, in this order (source and share locks held
 * throughout, so no one sees the steps in between):
 *   1. the clone, never published, lets go of every frame it maps; the
 *      adopted region's frames are then mapped by the source alone, and
 *      frames only the clone mapped are freed;
 *   2. the gfns the clone made shared map their own former frames again:
 *      they go back to RAM, their records and pending bits dropped, with no
 *      scrub (the frames hold their bytes), and the adopted region leaves
 *      the list of regions without giving its block back: it is the
 *      source's own block again (base_mfn = old_base);
 *   3. pages a thread wrote into the new block during the remap (it ignored
 *      the pause) are copied home, the RAM is mapped whole onto the old block
 *      and registered again, and the gfns that were shared before map their
 *      frames again, write-protected;
 *   4. the new block is punched (when it holds anything) and given back.
 * Steps 1 and 2 make no system call and always complete; only a failed
 * call of step 3 crashes the source, saying so.  The region is held (one
 * extra count of live frames, under the share lock, so no one sees it)
 * while the clone works, so that it cannot be freed under it.
 */

/* Map the source's run [gfn, gfn + n) to its former frames [mfn, mfn + n)
 * and find the writes that raced the remap, as map_run does, but leaving
 * any failure to the clone's undo rather than crashing the source.  The
 * source is paused, so the kernel does not copy its shared pages and its
 * target is not looked at (check_room would do nothing). */
static long clone_remap_source(struct mv_domain *src, uint64_t gfn, uint64_t mfn,
                               uint64_t n, uint8_t *written)
{
    int rc = map_frames(src, gfn, mfn, n);
    long copies;

    if (rc < 0)
        return rc;
    copies = find_private_copies(src, gfn, n, written);
    if (copies < 0)
        return mv__fail((int)copies, "domain %u: cannot check gfn %#llx+%llu for "
                        "writes during the clone's remap: %s", src->domid,
                        (unsigned long long)gfn, (unsigned long long)n,
                        mv_strerror((int)copies));
    return copies;
}

/* The clone maps live frames [mfn, mfn + n) at [gfn, gfn + n), with a
 * record each.  It is not reachable yet: no write can race the remap.  On
 * failure the gfns done so far are shared and the rest not: the undo lets
 * go of both alike. */
static int clone_map_frames(struct mv_domain *c, uint64_t gfn, uint64_t mfn, uint64_t n)
{
    struct mv__share *s = c->host->share;
    int rc;

    check_room(c, n);
    rc = map_frames(c, gfn, mfn, n);
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        rc = rmap_add(s, mfn + i, c, gfn + i);
        if (rc < 0)
            return mv__fail(rc, "no memory for the reverse map of the clone's gfn %#llx",
                            (unsigned long long)(gfn + i));
        mv__p2m_set(c, gfn + i, MV_P2M_SHARED);
    }
    return rc;
}

/* A run of the source's p2m: map it in both domains (source locked, clone
 * unreachable; share lock held).  0, or a negative errno with a message:
 * the caller undoes the clone. */
static int clone_run(struct mv_domain *src, struct mv_domain *c, uint64_t old_base,
                     struct mv__share_region *r, uint64_t gfn, uint64_t n,
                     enum mv__p2m_type type)
{
    struct mv__share *s = src->host->share;
    int64_t done;
    int rc;

    switch (type) {
    case MV_P2M_POD:
        return 0;
    case MV_P2M_BALLOONED:
        for (uint64_t i = 0; i < n; i++)
            mv__p2m_set(c, gfn + i, MV_P2M_BALLOONED);
        return 0;
    case MV_P2M_RAM: {
        uint8_t written[MV_BLOCK_PAGES];
        long copies = clone_remap_source(src, gfn, old_base + gfn, n, written);

        if (copies < 0)
            return (int)copies;
        if (copies == 0) {
            /* The clone is not reachable yet: no write can race its remap. */
            rc = map_frames(c, gfn, old_base + gfn, n);
            if (rc < 0)
                return rc;
            pending_add(s, r, src, c, gfn, n);
            for (uint64_t i = 0; i < n; i++) {
                mv__p2m_set(src, gfn + i, MV_P2M_SHARED);
                mv__p2m_set(c, gfn + i, MV_P2M_SHARED);
            }
            return mv__fault_wake(src, false, gfn, n);
        }
        /* A thread ignored the pause: a record per frame, and the clone maps
         * what the source still shares. */
        frames_init(s, r, old_base + gfn, n);
        done = settle_run(src, gfn, old_base + gfn, n, FROM_CLONE, written, NULL);
        if (done < 0)
            return (int)done;
        break;
    }
    case MV_P2M_SHARED:
        /* Already shared: the clone maps the same frames, in runs of
         * consecutive ones. */
        for (uint64_t i = 0; i < n;) {
            uint64_t m = shared_mfn(src, gfn + i), k;

            run_side(src, gfn + i, +1, n - i - 1, &k);
            k++;
            /* The source was remapped whole: map its frames again. */
            rc = map_frames(src, gfn + i, m, k);
            if (rc == 0)
                rc = clone_map_frames(c, gfn + i, m, k);
            if (rc < 0)
                return rc;
            i += k;
        }
        return 0;
    }
    for (uint64_t i = 0; i < n;) {
        uint64_t k = 0;

        if (src->p2m[gfn + i] != MV_P2M_SHARED) {
            /* Written during the remap: the source keeps a private copy,
             * the clone the snapshot. */
            rc = clone_map_frames(c, gfn + i, old_base + gfn + i, 1);
            if (frame_of(s, old_base + gfn + i)->refs == 0)
                frame_free(src->host, old_base + gfn + i, true);
            if (rc < 0)
                return rc;
            i++;
            continue;
        }
        while (i + k < n && src->p2m[gfn + i + k] == MV_P2M_SHARED)
            k++;
        rc = clone_map_frames(c, gfn + i, old_base + gfn + i, k);
        if (rc < 0)
            return rc;
        i += k;
    }
    return 0;
}

/* Undo step 1: the unpublished clone maps nothing any more (share lock
 * held).  Frames it alone mapped are freed. */
static void clone_let_go(struct mv_domain *c)
{
    if (c->share->pending_region)
        pending_let_go(c->host->share, c);
    for (uint64_t g = 0; c->shared && g < c->maxmem_pages; g++) {
        if (c->p2m[g] == MV_P2M_SHARED) {
            rmap_del(c->host, c, g, true);
            mv__p2m_set(c, g, MV_P2M_POD);
        }
    }
}

/* Take r out of the list of regions without giving its block back. */
static void region_unlink(struct mv__share *s, struct mv__share_region *r)
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
    free(r->frames);
    free(r);
}

/* The frame of a gfn of src the clone made shared: in r at the gfn's index
 * (pending, or with a record), else MV_NO_MFN (share lock held). */
static uint64_t clone_adopted_mfn(struct mv_domain *src, struct mv__share_region *r,
                                  uint64_t gfn)
{
    uint64_t mfn = shared_mfn(src, gfn);

    return mfn >= r->first && mfn < r->first + r->pages ? mfn : MV_NO_MFN;
}

/*
 * Undo step 2 (clone_let_go done; r held once by the clone; share lock
 * held): the gfns shared in r become RAM on their former frames, r goes
 * and the source's base is old_base again.  No system call.  -EUCLEAN,
 * changing nothing, if r is not as the clone left it.
 */
static int clone_take_back(struct mv_domain *src, struct mv__share_region *r,
                           uint64_t old_base)
{
    struct mv__share *s = src->host->share;
    struct mv__share_dom *sd = src->share;
    uint64_t taken = 0, pending = 0;
    bool odd = false;

    for (uint64_t g = 0; r && g < src->maxmem_pages; g++) {
        uint64_t mfn = clone_adopted_mfn(src, r, g);

        if (mfn == MV_NO_MFN)
            continue;
        taken++;
        if (pending_mfn(sd, g) != MV_NO_MFN)
            pending++;
        else
            odd |= mfn - r->first != g || r->frames[g].refs != 1 ||
                   !(r->frames[g].flags & FRAME_LIVE);
    }
    if (r && (odd || taken + 1 != r->live || pending != r->pending_frames))
        return mv__fail(-EUCLEAN, "domain %u: the frames of a failed clone are not "
                        "as it left them (%llu of %llu live)", src->domid,
                        (unsigned long long)taken, (unsigned long long)r->live);
    if (r) {
        /* Pending ones first: then looking a frame up writes out none. */
        for (uint64_t w = 0; r->pending_frames && w < (r->pages + 63) / 64; w++) {
            for (uint64_t bits = r->pending[w]; bits; bits &= bits - 1)
                mv__p2m_set(src, w * 64 + (uint64_t)__builtin_ctzll(bits), MV_P2M_RAM);
            r->pending[w] = 0;
        }
        r->pending_frames = 0;
        for (uint64_t g = 0; g < src->maxmem_pages; g++) {
            uint64_t mfn = clone_adopted_mfn(src, r, g);
            struct mv__sframe *f;

            if (mfn == MV_NO_MFN)
                continue;
            f = &r->frames[g];
            if (f->flags & FRAME_INDEXED)
                index_remove(s, mfn);
            if (f->rmap_cap)
                free(f->rmap.heap);
            memset(f, 0, sizeof(*f));
            entry_set(block_raw(sd, g, false), g, MV_NO_MFN);
            mv__p2m_set(src, g, MV_P2M_RAM);
        }
        s->frames -= taken;
        s->refs -= taken;
        if (sd->pending_region == r)
            sd->pending_region = NULL;
        region_unlink(s, r);
    }
    src->base_mfn = old_base;
    return 0;
}

/*
 * Undo steps 3 and 4 (source back on old_base in its records; share lock
 * held): its mappings as they were, the new block given back.  0, or a
 * negative errno with a message when a system call failed (the caller
 * crashes the source; the new block is given back all the same).
 */
static int clone_remap_back(struct mv_domain *src, uint64_t old_base, uint64_t new_base)
{
    struct mv_host *h = src->host;
    uint64_t pages = src->frame_pages, copied = 0;
    uint8_t resident[MV_BLOCK_PAGES];
    int rc = 0, prc;

    /* A page a thread wrote during the remap is the only part of the new
     * block that holds anything. */
    for (uint64_t g = 0; rc == 0 && g < src->maxmem_pages; g += MV_BLOCK_PAGES) {
        uint64_t n = MV_MIN(MV_BLOCK_PAGES, src->maxmem_pages - g);

        if (!memchr(&src->p2m[g], MV_P2M_RAM, n))
            continue;
        rc = mv__machine_resident(&h->machine, new_base + g, n, resident);
        for (uint64_t i = 0; rc == 0 && i < n; i++) {
            if (!resident[i] || src->p2m[g + i] != MV_P2M_RAM)
                continue;
            rc = mv__os_copy(h->machine.memfd, (new_base + g + i) << MV_PAGE_SHIFT,
                             (old_base + g + i) << MV_PAGE_SHIFT, MV_PAGE_SIZE);
            if (rc < 0)
                rc = mv__fail(rc, "domain %u: cannot copy gfn %#llx, written during "
                              "the clone, back to its frame: %s", src->domid,
                              (unsigned long long)(g + i), mv_strerror(rc));
            copied++;
        }
    }
    if (rc == 0)
        rc = mv__domain_map_own(src, 0, src->maxmem_pages);
    for (uint64_t g = 0; rc == 0 && g < src->maxmem_pages;) {
        uint64_t k;

        if (src->p2m[g] != MV_P2M_SHARED) {
            g++;
            continue;
        }
        run_side(src, g, +1, src->maxmem_pages - g - 1, &k);
        rc = map_frames(src, g, shared_mfn(src, g), k + 1);
        g += k + 1;
    }
    mv__domain_pages_changed(src, 0, src->maxmem_pages);
    /* The block goes back to the allocator as holes, or not at all. */
    prc = copied || rc < 0
        ? mv__os_punch(h->machine.memfd, new_base << MV_PAGE_SHIFT, pages << MV_PAGE_SHIFT)
        : 0;
    if (prc < 0)
        mv__log(h, MV_LOG_ERROR, "domain %u: cannot empty frames %#llx+%llu after a "
                "failed clone (%s); they stay out of use", src->domid,
                (unsigned long long)new_base, (unsigned long long)pages, mv_strerror(prc));
    else
        mv__machine_free(&h->machine, new_base, pages);
    return rc;
}

/* A clone failed with `err` half-way (source and share locks held, r held
 * once): undo it, or crash the source when that is impossible.  Returns
 * `err` with a message saying which. */
static int clone_fail(struct mv_domain *src, struct mv_domain *c,
                      struct mv__share_region *r, uint64_t old_base,
                      uint64_t new_base, int err)
{
    struct mv_host *h = src->host;
    char why[256];
    int rc;

    snprintf(why, sizeof(why), "%s", mv_last_error());
    clone_let_go(c);
    rc = src->state == MV_DOMAIN_CRASHED ? -EFAULT : clone_take_back(src, r, old_base);
    if (rc == 0) {
        rc = clone_remap_back(src, old_base, new_base);
        if (rc < 0) {
            mv__domain_crash(src, "a clone failed (%s) and undoing it failed: %s",
                             why, mv_last_error());
            return mv__fail(err, "domain %u could not be cloned (%s), nor put back as "
                            "it was: it crashed", src->domid, why);
        }
        mv__log(h, MV_LOG_INFO, "domain %u: clone failed and was undone: %s",
                src->domid, why);
        return mv__fail(err, "domain %u could not be cloned, and is as it was: %s",
                        src->domid, why);
    }
    /* Crashed already, or its frames are not as the clone left them: the
     * source stays on the new block, sharing what it shares now. */
    if (src->state != MV_DOMAIN_CRASHED)
        mv__domain_crash(src, "a clone failed (%s) and cannot be undone: %s", why,
                         mv_last_error());
    if (r && --r->live == 0)
        region_remove(h, r);
    else if (!r)
        mv__machine_free(&h->machine, old_base, src->frame_pages);
    return mv__fail(err, "domain %u could not be cloned and crashed: %s", src->domid, why);
}

/*
 * Before a clone: the memory of the tables it and the first writes after it
 * will fill (both domains' entries of every gfn that will be shared, the
 * records of the frames adopted), populated in one call per extent.  A page
 * fault per page of them instead was a third of a clone's time, or, with the
 * records left pending, a few page faults in each of the first CoW breaks.
 * Only a speed-up: where the kernel cannot populate, they fault in as used.
 */
static void prepare_clone_tables(struct mv_domain *src, struct mv_domain *c,
                                struct mv__share_region *r, uint64_t old_base)
{
    for (uint64_t g = 0; g < src->maxmem_pages;) {
        uint64_t n = 0;
        bool populated = false;

        while (g + n < src->maxmem_pages && (src->p2m[g + n] == MV_P2M_RAM ||
                                             src->p2m[g + n] == MV_P2M_SHARED)) {
            populated |= src->p2m[g + n] == MV_P2M_RAM;
            n++;
        }
        if (n == 0) {
            g++;
            continue;
        }
        dom_blocks_prefault(src->share, g, n);
        dom_blocks_prefault(c->share, g, n);
        if (populated && r)
            mv__os_table_prefault(&r->frames[old_base + g - r->first],
                                  n * sizeof(r->frames[0]));
        g += n;
    }
}

int mv_domain_clone(mv_host *host, uint32_t src_domid, const char *name,
                    uint32_t *clone_domid)
{
    struct mv_domain_config config;
    struct mv_domain *src, *c = NULL;
    struct mv__share_region *r = NULL;
    struct mv__share *s;
    uint64_t old_base, new_base, populated_before, runs;
    int rc;

    mv__clear_error();
    if (!host || !name || !clone_domid)
        return mv__fail(-EINVAL, "host, name and clone_domid must not be NULL");
    src = mv__domain_get(host, src_domid);
    if (!src)
        return -ESRCH;
    s = host->share;
    mv__mutex_lock(&src->lock);
    config = src->config;
    rc = src->state == MV_DOMAIN_PAUSED ? 0 :
         src->state == MV_DOMAIN_CRASHED ? mv__fail(-EPERM, "domain %u has crashed", src_domid)
         : mv__fail(-EBUSY, "domain %u is running: pause it first (a clone is a "
                    "snapshot)", src_domid);
    mv__mutex_unlock(&src->lock);
    if (rc == 0) {
        uint32_t other;

        snprintf(config.name, sizeof(config.name), "%s", name);
        if (strlen(name) >= sizeof(config.name))
            rc = mv__fail(-EINVAL, "clone name is longer than %d bytes", MV_NAME_MAX - 1);
        /* Refused before any work, not when the clone is published after
         * the source was remapped. */
        else if (mv_domain_lookup(host, config.name, &other) == 0)
            rc = mv__fail(-EEXIST, "a domain named '%s' exists (id %u)", config.name, other);
        else
            mv__clear_error();
    }
    if (rc == 0)
        rc = mv__domain_new(host, &config, &c);
    if (rc < 0) {
        mv__domain_put(src);
        return rc;
    }
    mv__mutex_lock(&src->lock);
    if (src->state != MV_DOMAIN_PAUSED) {
        rc = mv__fail(-EBUSY, "domain %u was unpaused during the clone", src_domid);
        goto out;
    }
    c->target_pages = src->target_pages;
    rc = mv__machine_alloc(&host->machine, src->frame_pages, &new_base);
    if (rc < 0)
        goto out;
    mv__mutex_lock(&s->lock);
    /* The source is about to map pending frames of a new region. */
    if (src->share->pending_region)
        materialize_region(s, src->share->pending_region);
    old_base = src->base_mfn;
    populated_before = src->populated;
    runs = 0;
    for (uint64_t g = 0; g < src->maxmem_pages; g++)
        runs += (src->p2m[g] == MV_P2M_RAM || src->p2m[g] == MV_P2M_SHARED) &&
                (g == 0 || src->p2m[g - 1] != src->p2m[g]);
    /* Each run may split a mapping in two, in both domains. */
    if (!may_map(host, 4 * runs + 4) ||
        (populated_before && region_add(host, old_base, src->frame_pages, true, &r) < 0)) {
        mv__mutex_unlock(&s->lock);
        mv__machine_free(&host->machine, new_base, src->frame_pages);
        rc = s->stopped ? mv__fail(-ENOSPC, "sharing is stopped: %s", s->stop_reason)
                        : mv__fail(-ENOMEM, "no memory for the clone's frames");
        goto out;
    }
    if (r)
        r->live++; /* held while the clone works: see clone_fail */
    prepare_clone_tables(src, c, r, old_base);
    /*
     * The source's frames become the shared ones where they are; the source
     * moves to a fresh block, all holes, mapped whole, and maps its former
     * frames back run by run.  It is paused, so no vCPU sees the moment
     * between.
     */
    src->base_mfn = new_base;
    rc = mv__domain_map_own(src, 0, src->maxmem_pages);
    for (uint64_t g = 0; rc == 0 && g < src->maxmem_pages;) {
        enum mv__p2m_type t = (enum mv__p2m_type)src->p2m[g];
        uint64_t n = 1;

        while (g + n < src->maxmem_pages && src->p2m[g + n] == t &&
               ((g + n) % MV_BLOCK_PAGES) != 0)
            n++;
        rc = clone_run(src, c, old_base, r, g, n, t);
        g += n;
    }
    if (rc < 0) {
        rc = clone_fail(src, c, r, old_base, new_base, rc);
        mv__mutex_unlock(&s->lock);
        goto out;
    }
    if (r && --r->live == 0)
        region_remove(host, r);
    else if (!r)
        mv__machine_free(&host->machine, old_base, src->frame_pages);
    mv__mutex_unlock(&s->lock);
    mv__domain_pages_changed(src, 0, src->maxmem_pages);
    mv__domain_cloned(src, c);
    mv__mutex_unlock(&src->lock);
    rc = mv__domain_publish(host, c);
    mv__domain_put(src);
    if (rc < 0)
        return rc;
    *clone_domid = c->domid;
    mv__log(host, MV_LOG_INFO, "domain %u (%s) cloned from %u: %llu pages shared",
            c->domid, c->config.name, src_domid, (unsigned long long)c->shared);
    return 0;
out:
    mv__mutex_unlock(&src->lock);
    mv__domain_put(src);
    mv__domain_discard(c);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* stats and audit                                                          */

int mv_share_stats(mv_host *host, struct mv_share_stats *out)
{
    struct mv__share *s;
    uint64_t mappings;

    mv__clear_error();
    if (!host || !out)
        return mv__fail(-EINVAL, "host and out must not be NULL");
    s = host->share;
    memset(out, 0, sizeof(*out));
    /* Reading the counters changes nothing and holds no lock a fault needs
     * for long: kernel copies are counted once settled, and the mappings
     * are counted before the share lock is taken. */
    mappings = count_mappings();
    mv__mutex_lock(&s->lock);
    s->vma_count = mappings;
    s->vma_checked_ns = mv__now_ns();
    /* Stopped stays stopped until sharing would get somewhere again. */
    recheck_stopped(host, MV_MAP_HARD_MARGIN);
    out->cow_kernel_copies = s->kernel_copies;
    out->cow_settles = s->settles;
    out->cow_settle_ns = s->settle_ns;
    out->cow_settle_waiting = s->settle_waiting;
    out->shared_frames = s->frames;
    out->shared_refs = s->refs;
    out->saved_pages = s->refs - s->frames;
    out->indexed_frames = s->indexed;
    out->cow_breaks = s->cow_breaks;
    out->cow_takeovers = s->cow_takeovers;
    out->cow_nocopy = s->cow_nocopy;
    out->cow_run_unshares = s->cow_run_unshares;
    for (size_t i = 0; i < s->region_count; i++)
        out->clone_pending_frames += s->regions[i]->pending_frames;
    out->zero_reclaimed = s->zero_reclaimed;
    out->hash_collisions = s->hash_collisions;
    out->vma_count = s->vma_count;
    out->max_map_count = s->max_map_count;
    out->sharing_stopped = s->stopped;
    snprintf(out->stop_reason, sizeof(out->stop_reason), "%s", s->stop_reason);
    mv__mutex_unlock(&s->lock);
    mv__scanner_stats(host, out);
    return 0;
}

/* Set one of the mapping limits; the next check counts the mappings. */
static void set_map_limit(struct mv_host *host, uint64_t *limit, uint64_t mappings)
{
    struct mv__share *s = host->share;

    mv__mutex_lock(&s->lock);
    *limit = mappings;
    s->vma_checked_ns = 0;
    mv__mutex_unlock(&s->lock);
}

void mv__share_set_max_vmas(struct mv_host *host, unsigned max_vmas)
{
    set_map_limit(host, &host->share->max_vmas, max_vmas);
}

void mv__share_set_break_limit(struct mv_host *host, uint64_t mappings)
{
    set_map_limit(host, &host->share->break_limit, mappings);
}

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
        if (mv__share_hash(page) != f->hash)
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
        struct mv__sframe *f = mfn != MV_NO_MFN ? frame_raw(s, mfn) : NULL;

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
    uint8_t found[MV_BLOCK_PAGES], frame[MV_PAGE_SIZE];
    struct mv__share *s = d->host->share;

    if (d->state == MV_DOMAIN_CRASHED || atomic_load(&d->dying))
        return 0;
    for (uint64_t g = 0; g < d->maxmem_pages; g += MV_BLOCK_PAGES) {
        uint64_t n = MV_MIN(MV_BLOCK_PAGES, d->maxmem_pages - g);
        long copies = find_private_copies(d, g, n, found);

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
            mfn = shared_mfn(d, g + i);
            mv__mutex_unlock(&s->lock);
            if (mfn == MV_NO_MFN ||
                mv__machine_read(&d->host->machine, mfn, 1, frame) < 0 ||
                memcmp(frame, mv__gfn_addr(d, g + i), MV_PAGE_SIZE) != 0)
                return mv__fail(-EUCLEAN, "domain %u: gfn %#llx lives in a private "
                                "anonymous copy that is not its shared frame's",
                                d->domid, (unsigned long long)(g + i));
        }
    }
    return 0;
}

/* The frames (share lock held): residency, reverse maps, index bytes. */
static int audit_frames(struct mv_host *host, uint64_t *frames)
{
    struct mv__share *s = host->share;
    uint8_t *page = malloc(MV_PAGE_SIZE), *resident = NULL;
    int rc = page ? 0 : mv__fail(-ENOMEM, "audit: no memory");

    for (size_t i = 0; i < s->region_count && rc == 0; i++) {
        struct mv__share_region *r = s->regions[i];
        uint64_t live = 0, pending = 0;

        free(resident);
        resident = malloc(r->pages);
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
    struct mv_domain **all;
    uint64_t frames = 0, entries;
    size_t n;
    int rc;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    s = host->share;
    /* Kernel copies made so far become what trapped breaks would have. */
    mv__share_settle_all(host);
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
    n = mv__domain_get_all(host, &all);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            mv__mutex_lock(&all[i]->lock);
            mv__mutex_lock(&s->lock);
            rc = audit_domain_entries(host, all[i]);
            mv__mutex_unlock(&s->lock);
            if (rc == 0)
                rc = audit_private_copies(all[i]);
            mv__mutex_unlock(&all[i]->lock);
        }
        mv__domain_put(all[i]);
    }
    free(all);
    return rc;
}

uint64_t mv__share_frames(struct mv_host *host)
{
    struct mv__share *s = host->share;
    uint64_t n;

    mv__mutex_lock(&s->lock);
    n = s->frames;
    mv__mutex_unlock(&s->lock);
    return n;
}

/* ------------------------------------------------------------------------ */
/* life cycle                                                               */

int mv__share_init(struct mv_host *h)
{
    struct mv__share *s = calloc(1, sizeof(*s));

    if (!s)
        return mv__fail(-ENOMEM, "no memory for the sharing state");
    mv__mutex_init(&s->lock, MV_LOCK_SHARE);
    mv__mutex_init(&s->settler_lock, MV_LOCK_SETTLE);
    mv__cond_init(&s->settler_cond);
    s->max_map_count = read_sysctl_u64("/proc/sys/vm/max_map_count", 65530);
    s->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (s->pagemap_fd < 0) {
        int rc = -errno;

        mv__mutex_destroy(&s->lock);
        mv__mutex_destroy(&s->settler_lock);
        pthread_cond_destroy(&s->settler_cond);
        free(s);
        return mv__fail(rc, "cannot open /proc/self/pagemap: %s", mv_strerror(rc));
    }
    h->share = s;
    return 0;
}

void mv__share_fini(struct mv_host *h)
{
    struct mv__share *s = h->share;

    if (!s)
        return;
    mv__mutex_lock(&s->settler_lock);
    s->settler_stop = true;
    pthread_cond_signal(&s->settler_cond);
    mv__mutex_unlock(&s->settler_lock);
    if (s->settler_started)
        pthread_join(s->settler, NULL);
    mv__mutex_destroy(&s->settler_lock);
    pthread_cond_destroy(&s->settler_cond);
    while (s->region_count)
        region_remove(h, s->regions[s->region_count - 1]);
    free(s->regions);
    free(s->buckets);
    free(s->registry);
    close(s->pagemap_fd);
    mv__mutex_destroy(&s->lock);
    free(s);
    h->share = NULL;
}
