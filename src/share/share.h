/*
 * share.h - the sharing code's own header: its structures, constants and the
 * functions its files call in one another.  Nothing outside src/share/
 * includes it; the rest of the library's code and its tests see the
 * sharing code through sharing.h, and the core through its mechanism.
 *
 * Copy-on-write page sharing, one idea per file:
 *   frames.c  shared frames, their regions (pool and adopted), pending
 *             frames, scrubbing freed frames
 *   index.c   the content index (hash -> frames with those bytes)
 *   rmap.c    reverse maps and each domain's table of shared entries;
 *             a domain's sharing state from creation to destruction
 *   map.c     mapping frames into a domain, the mapping limit, finding
 *             private copies that raced a remap
 *   cow.c     CoW breaks, giving gfns their own frames, release
 *   settle.c  kernel copies (MV_COW_KERNEL): trap reasons, settling,
 *             the settler thread
 *   apply.c   one-call sharing of a block (mv__share_apply)
 *   clone.c   clones and their rollback
 *   api.c     the public mv_share_* calls, stats, the state's life cycle
 *   audit.c   mv_share_audit
 *   scan.c    the sharing scanner (hints, candidates, budget)
 *
 * Shared frames.  Pages with equal bytes are kept once, in a frame owned by
 * the host (Xen's dom_cow) rather than by any domain, taken from regions of
 * the machine memfd that the sharing code holds: pool regions handed out
 * frame by frame, and adopted regions (a cloned domain's whole former frame
 * block, whose populated frames become shared where they are, without a
 * copy).
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
 * consecutive gfns mapping consecutive frames are one mapping.  A clone's
 * source is the exception: its populated pages are shared in place, still
 * mapped MAP_SHARED, registered with cow_uffd and write-protected there
 * (clone.c); nothing is remapped, so no write can race a remap.  A break maps
 * the gfn's own frame again (MAP_SHARED), registers it with the domain's own
 * userfaultfd, and the mappings merge back; a break inside a run splits it
 * in three, so near vm.max_map_count a break unshares the rest of its run
 * on one side as well and the mappings do not grow (break_extent, cow.c).
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
 * at (frames.c, "Pending frames").
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
 * Invariants (checked by mv_share_audit, audit.c):
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
 * under the share lock alone the p2m's SHARED entries are stable.  Each
 * file's head says which locks its functions expect.
 *
 * The functions one file calls in another are named share_* and declared
 * at the end of this header, grouped by the file that defines them; small
 * accessors are static inline here.
 */
#ifndef MV_SHARE_H
#define MV_SHARE_H

#include "sharing.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

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
#define MV_MAP_RECHECK_FAR_NS 1000000000ull    /* ... below half the limit */
/* A CoW break counts at most this often: counting reads all of
 * /proc/self/maps, inside the fault (docs/performance.md, "Limit: mappings"). */
#define MV_MAP_RECHECK_FAULT_NS 1000000000ull

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
    /* The scanner's (domain lock): each gfn's hash when last read (0:
     * none), and which of those still hold: read after the protecting
     * scan of its block (apply.c, mv__share_protect) and not changed by the
     * hypervisor since (the pages_changed event clears them). */
    uint64_t *hashes;
    uint64_t *known;
    uint64_t cow_breaks, cow_takeovers, cow_nocopy; /* domain lock */
    /* MV_COW_KERNEL (domain lock): why its shared gfns trap now (enum
     * mv__cow_trap bits; none: the kernel copies on write), copies settled,
     * and copies the last whole settle found no memory for. */
    unsigned trap_reasons;
    uint64_t kernel_copies, settle_waiting;
    /* The scanner neither protects its blocks nor reads its pages through
     * its own mapping: registering it for write protection, or a protecting
     * scan, failed (apply.c, protects and mv__share_protect; domain lock). */
    bool protect_off;
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
    uint64_t read_fallbacks;     /* atomic: reads in place, a copy having failed */
    uint64_t zero_in_guest;      /* zero pages freed read in the guest's mapping */
    uint64_t guest_read_fallbacks; /* atomic: reads there that failed */
    /* How pages are read (COPY or IN_PLACE; set at init, then constant),
     * and what AUTO measured to choose it (0 when it did not). */
    enum mv_share_read read_mode;
    uint64_t read_in_place_ns, read_copy_ns;
    bool guest_reads;            /* AUTO: chunks protected, pages read
                                    where the guest maps them first
                                    (apply.c, protects, reads_guest) */
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
    bool count_failing;          /* the last count failed, and said so */
    uint64_t max_vmas;           /* 0: vm.max_map_count - MV_MAP_RESERVE */
    uint64_t break_limit;        /* 0: vm.max_map_count - MV_MAP_SLACK */
    bool stopped, breaks_unsharing_runs;
    char stop_reason[160];
    /* While a domain is destroyed: freed frames not yet punched, one run of
     * consecutive frames, and how many of them give their charge back
     * (scrub_frame, share_scrub_flush). */
    bool scrub_batching;
    uint64_t scrub_first, scrub_count, scrub_uncharge;
};

static inline uint64_t own_offset(struct mv_domain *d, uint64_t gfn)
{
    return (d->base_mfn + gfn) << MV_PAGE_SHIFT;
}

/* Whether the kernel copies d's shared pages on write (MV_COW_KERNEL). */
static inline bool kernel_copies(struct mv_domain *d)
{
    return d->config.cow_mode == MV_COW_KERNEL;
}

/* ... and does now, without a trap: no reason to trap holds (domain lock
 * held). */
static inline bool kernel_copies_on(struct mv_domain *d)
{
    return kernel_copies(d) && d->share->trap_reasons == 0;
}

/* The entries of gfn's block as stored (NULL when it never had one); with
 * `create`, the block counts as used from now on. */
static inline struct mv__share_block *block_raw(struct mv__share_dom *sd, uint64_t gfn, bool create)
{
    uint64_t b = gfn / MV_BLOCK_PAGES, bit = 1ull << (b % 64);

    if (create)
        sd->table_used[b / 64] |= bit;
    return sd->table_used[b / 64] & bit ? &sd->table[b] : NULL;
}

/* gfn's frame while it is pending, else MV_NO_MFN. */
static inline uint64_t pending_mfn(const struct mv__share_dom *sd, uint64_t gfn)
{
    const struct mv__share_region *r = sd->pending_region;

    return r && (r->pending[gfn / 64] >> (gfn % 64) & 1) ? r->first + gfn : MV_NO_MFN;
}

_Static_assert(MV_NO_MFN + 1 == 0, "an empty entry is MV_NO_MFN plus one");

/* The frame of gfn's entry in its block (b may be NULL), or MV_NO_MFN. */
static inline uint64_t entry_mfn(const struct mv__share_block *b, uint64_t gfn)
{
    return b ? b->frame_plus_one[gfn % MV_BLOCK_PAGES] - 1 : MV_NO_MFN;
}

static inline void entry_set(struct mv__share_block *b, uint64_t gfn, uint64_t mfn)
{
    b->frame_plus_one[gfn % MV_BLOCK_PAGES] = mfn + 1;
}

static inline uint64_t *rmap_entries(struct mv__sframe *f)
{
    return f->rmap_cap ? f->rmap.heap : f->rmap.inline_entries;
}

static inline uint64_t rmap_encode(struct mv__share_dom *sd, uint64_t gfn)
{
    return ((uint64_t)sd->slot << MV_RMAP_GFN_BITS) | gfn;
}

enum origin {
    FROM_RAM,       /* populated, unmapped, bytes equal to the frames */
    FROM_POD,       /* nothing there */
    FROM_SHARED,    /* another frame with equal bytes */
    FROM_CLONE,     /* a clone source's own frames, now the shared ones */
};

/* ---- functions shared between the files of src/share/ ---- */

/* frames.c */
struct mv__sframe *share_frame_raw(struct mv__share *s, uint64_t mfn);
struct mv__sframe *share_frame_of(struct mv__share *s, uint64_t mfn);
int share_region_add(struct mv_host *h, uint64_t first, uint64_t pages, bool adopted,
                     struct mv__share_region **out);
/* Take r out of the list of regions and free it, without giving its block
 * back. */
void share_region_unlink(struct mv__share *s, struct mv__share_region *r);
void share_region_remove(struct mv_host *h, struct mv__share_region *r);
void share_frames_init(struct mv__share *s, struct mv__share_region *r,
                       uint64_t first, uint64_t n);
int share_frames_alloc(struct mv_host *h, uint64_t n, uint64_t *first);
void share_materialize_word(struct mv__share *s, struct mv__share_region *r, uint64_t word);
void share_materialize_region(struct mv__share *s, struct mv__share_region *r);
void share_pending_let_go(struct mv__share *s, struct mv_domain *d);
void share_pending_free(struct mv_host *h, struct mv__share_region *r);
void share_pending_add(struct mv__share *s, struct mv__share_region *r,
                       struct mv_domain *src, struct mv_domain *clone,
                       uint64_t gfn, uint64_t n);
void share_scrub_flush(struct mv_host *h);
void share_frame_free(struct mv_host *h, uint64_t mfn, bool uncharge);

/* index.c */
void share_index_insert(struct mv__share *s, uint64_t mfn, uint64_t hash);
void share_index_remove(struct mv__share *s, uint64_t mfn);
uint64_t share_index_lookup(struct mv__share *s, uint64_t hash);
uint64_t share_index_find(struct mv_host *h, uint64_t hash, const uint8_t *page);

/* rmap.c */
struct mv__share_block *share_dom_block(struct mv__share_dom *sd, uint64_t gfn, bool create);
uint64_t share_shared_mfn(struct mv_domain *d, uint64_t gfn);
int share_rmap_add(struct mv__share *s, uint64_t mfn, struct mv_domain *d, uint64_t gfn);
void share_rmap_del(struct mv_host *h, struct mv_domain *d, uint64_t gfn, bool uncharge);

/* map.c */
uint64_t share_read_sysctl_u64(const char *path, uint64_t fallback);
/* Take the result of counting this process's mappings (mv__os_count_mappings
 * returned rc; share lock held).  A failed count leaves the last one, which
 * never undercounts sharing's own mappings, and is said once until a count
 * succeeds. */
void share_take_count(struct mv_host *h, int rc, uint64_t counted);
uint64_t share_vma_count(struct mv_host *h, uint64_t interval);
void share_recheck_stopped(struct mv_host *h, uint64_t more);
bool share_may_map(struct mv_host *h, uint64_t more);
int share_map_frames(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n);
long share_scan_private_copies(struct mv_domain *d, uintptr_t *start, uintptr_t end,
                               struct page_region *regions, size_t cap);
long share_find_private_copies(struct mv_domain *d, uint64_t gfn, uint64_t n,
                               uint8_t *found);
void share_restore_ram(struct mv_domain *d, uint64_t gfn, uint64_t n);
int64_t share_settle_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                         enum origin from, const uint8_t *written, int *error);
/* The end of the run of consecutive frames that starts at mfn[i], i < n. */
uint64_t share_frame_run_end(const uint64_t *mfn, uint64_t i, uint64_t n);
int64_t share_convert_stretch(struct mv_domain *d, uint64_t gfn, const uint64_t *mfn,
                              uint64_t n, int *error);
int64_t share_convert_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                          enum origin from, int *error);

/* settle.c */
int share_cow_trap(struct mv_domain *d, unsigned reason, bool on);
void share_check_room(struct mv_domain *d, uint64_t more);
int64_t share_settle_range(struct mv_domain *d, uint64_t gfn, uint64_t n, bool hold);
long share_hold_copies(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *found);
void share_rearm_range(struct mv_domain *d, uint64_t gfn, uint64_t n);
/* The settler thread's name (at most 15 characters); `memvisor bench cow`
 * looks it up in /proc/self/task to read its CPU time. */
#define MV__SETTLER_NAME "memvisor-settle"
int share_settler_start(struct mv_host *h);

/* cow.c */
int share_give_own_frames(struct mv_domain *d, uint64_t first, uint64_t n,
                          const uint8_t *copies, uint64_t breaks);
bool share_run_side(struct mv_domain *d, uint64_t gfn, int step, uint64_t max,
                    uint64_t *len);
bool share_may_split_for_break(struct mv_host *h);
int share_break_share_trapped(struct mv_domain *d, uint64_t gfn);
int share_break_share(struct mv_domain *d, uint64_t gfn);

/* apply.c */
uint8_t *share_thread_buffer(void);

#endif
