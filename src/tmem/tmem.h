/*
 * tmem.h - transcendent memory: the map of src/tmem/ and the types its files
 * share.  One idea per file:
 *   store.c      how a page is kept: compression (lz4, zstd), zero- and
 *                same-filled markers, the size-class allocator packing
 *                compressed pages into machine frames, compaction, dedup
 *   pool.c       clients (one per domain), pools, objects and pages: the
 *                guest interface (new/destroy pool, put, get, flush) with
 *                Xen's semantics, quotas, shared pools and authorisation
 *   relinquish.c giving memory back to the host: eviction of ephemeral
 *                pages by weighted LRU, relinquish_page/pageblock/pages,
 *                evict_npages, the host's "budget short" hook, collateral
 *                repayment
 *   paging.c     host paging: cold guest pages compressed into a
 *                host-owned persistent pool, p2m type `paged`
 *   mechanism.c  the mechanism table entry, host and domain life cycle,
 *                statistics, the audit
 *
 * Frames: tmem takes runs of TM_CHUNK_FRAMES frame numbers from the machine
 * allocator (a chunk), maps each chunk once, and charges the host budget
 * for a frame of a chunk only while it holds memory: USED (part of a
 * zspage) or SPARE (empty, kept dirty for tmem's own next use, at most
 * TM_SPARE_MAX of them, Xen's tmem_page_list, plus fewer than
 * TM_SPARE_SLACK waiting to be scrubbed back down to it in one batch).  A FREE frame is a hole
 * (scrubbed).  A chunk with every frame FREE goes back to the allocator.
 * Invariant (mv_tmem_audit): charged == used frames + spare frames, and
 * every stored page's blob sits in exactly one slot of a zspage whose slot
 * owner is that blob.
 *
 * Locking: all tmem state is guarded by one mutex, tmem->lock (taken with
 * tm_lock; a put compresses its page for an lz4 pool before it takes it,
 * so that the lock is held for the index and the allocator only), of
 * level MV_LOCK_TMEM: above the domain and share locks (the
 * host's budget-short hook runs from charge paths that hold them; host
 * paging takes a domain lock, then this one) and below the machine lock
 * (tmem allocates frames with it held).  tmem never takes a domain lock
 * while holding its own.  A fault on a paged page resolved in a vCPU's
 * own thread takes the mutex itself, from a signal handler: it frees
 * nothing, and leaves the host pool's copy of the page to the next
 * tm_lock (paging.c).
 */
#ifndef MV_TMEM_H
#define MV_TMEM_H

#include "internal.h"

#define TM_CHUNK_FRAMES 256u
#define TM_SPARE_MAX 32u
#define TM_SPARE_SLACK 64u                   /* spare frames scrubbed as a batch */
#define TM_FLUSH_LATER_MAX 512u              /* paging.c: flushes a vCPU defers */
#define TM_FAST_HEADROOM 8u                  /* paging.c: budget/8 free for a vCPU's page-in */
#define TM_CLIENT_BUCKETS 256u
#define TM_CLASS_SHIFT 4                      /* 16-byte size classes */
#define TM_CLASS_COUNT (MV_PAGE_SIZE >> TM_CLASS_SHIFT)
#define TM_ZSPAGE_MAX_FRAMES 8u
#define TM_AHEAD_FRAMES TM_ZSPAGE_MAX_FRAMES  /* a class's read-ahead buffer (COPIED) */
/* A compressed page longer than this is stored raw ("poor compression"). */
#define TM_RAW_THRESHOLD (MV_PAGE_SIZE - MV_PAGE_SIZE / 8)
#define TM_MAX_POOLS 1024u
#define TM_HOST_CLIENT UINT32_MAX             /* the host's own client */

/* FREE: a hole, not charged.  SPARE: empty, holding memory, charged.
 * USED: a zspage's, charged.  HELD (COPIED store): a frame of a class's
 * staged zspage that none of its slots reaches yet, so a hole, not charged
 * until one does (store.c, "frames held"). */
enum tm_frame_state {
    TM_FRAME_FREE = 0,
    TM_FRAME_SPARE = 1,
    TM_FRAME_USED = 2,
    TM_FRAME_HELD = 3,
};

struct tm_list {
    struct tm_list *prev, *next;
};

static inline void tm_list_init(struct tm_list *l) { l->prev = l->next = l; }
static inline bool tm_list_empty(const struct tm_list *l) { return l->next == l; }
static inline void tm_list_del(struct tm_list *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = e;
}
/* Insert e right after head (the most recent end). */
static inline void tm_list_add(struct tm_list *head, struct tm_list *e)
{
    e->next = head->next;
    e->prev = head;
    head->next->prev = e;
    head->next = e;
}
#define tm_container(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

struct tm_chunk {
    uint64_t first_mfn;
    uint8_t *map;                      /* the chunk's frames, mapped (MAPPED
                                          store; NULL for COPIED) */
    uint8_t state[TM_CHUNK_FRAMES];    /* enum tm_frame_state */
    unsigned used, spare, held;        /* frames USED, SPARE, HELD */
    struct tm_list link;               /* tmem->chunks: chunks with a frame
                                          neither USED nor HELD first, full
                                          ones last */
};

struct tm_blob;

/* A run of 1..TM_ZSPAGE_MAX_FRAMES frames of one chunk cut into equal slots. */
struct tm_zspage {
    struct tm_chunk *chunk;
    unsigned frame;                    /* first frame in the chunk */
    unsigned frames;
    unsigned charged;                  /* of them USED, the rest HELD */
    unsigned cls;                      /* size class index */
    unsigned slots, used;
    unsigned pinned;                   /* slots holding a persistent pool's bytes */
    struct tm_list link;               /* its class's zspages */
    struct tm_blob *owner[];           /* per slot, NULL when free */
};

enum tm_codec { TM_CODEC_RAW = 0, TM_CODEC_LZ4 = 1, TM_CODEC_ZSTD = 2 };

/* Stored bytes of one page (several pages when deduplicated). */
struct tm_blob {
    struct tm_zspage *zs;
    unsigned slot;
    unsigned len;                      /* bytes stored */
    unsigned codec;                    /* enum tm_codec */
    unsigned refs;                     /* pages pointing here */
    uint64_t hash;                     /* of the page, when dedup indexed */
    uint32_t dedup_pool;               /* the pool whose index holds it */
    struct tm_client *dedup_client;    /* ... for that client's pages only */
    bool indexed;
    bool persistent;                   /* of a persistent pool: never evicted */
    struct tm_blob *hnext;             /* dedup hash chain */
};

enum tm_kind { TM_PAGE_SAME = 0, TM_PAGE_BLOB = 1 };

struct tm_pool;
struct tm_object;

struct tm_page {
    struct tm_object *obj;
    uint32_t index;
    struct tm_client *client;          /* the client that put it */
    unsigned kind;                     /* enum tm_kind */
    uint64_t fill;                     /* TM_PAGE_SAME: the repeated word */
    struct tm_blob *blob;              /* TM_PAGE_BLOB */
    struct tm_page *hnext;             /* object's page hash chain */
    struct tm_list lru;                /* client's ephemeral LRU */
};

struct tm_object {
    struct tm_pool *pool;
    uint64_t oid[3];
    struct tm_object *hnext;           /* tmem->objects chain */
    struct tm_page **pages;            /* hash by index */
    size_t nbuckets, npages;
    struct tm_list link;               /* pool's objects */
    unsigned pins;                     /* a put in progress keeps it */
};

struct tm_pool_counts {
    uint64_t puts, puts_stored, gets, found_gets, flushes, flush_objects;
    uint64_t evictions, poor_compressions, dedup_hits, same_filled;
    uint64_t pages;                    /* stored now */
    uint64_t marker_pages;             /* ... of which kept as a marker */
    uint64_t lz4_pages, zstd_pages;    /* ... of which compressed, by codec */
    uint64_t stored_bytes;             /* bytes of slots its pages use */
};

struct tm_pool {
    uint32_t id;
    uint32_t owner;                    /* creating domain (TM_HOST_CLIENT) */
    unsigned flags;                    /* MV_TMEM_* */
    uint8_t uuid[16];
    uint32_t *members;                 /* shared: domains joined */
    size_t member_count;
    struct tm_list objects;
    struct tm_pool_counts c;
};

struct tm_client {
    uint32_t domid;
    unsigned weight;
    uint64_t quota;                    /* persistent pages allowed */
    uint64_t persistent, ephemeral;    /* pages stored now */
    uint64_t collateral;               /* ephemeral pages pledged for repayment */
    uint64_t repaid;                   /* frames repaid from its collateral */
    struct tm_list lru;                /* ephemeral pages, newest first */
    uint8_t (*auth)[16];               /* shared pool UUIDs it may join */
    size_t auth_count;
    struct tm_pool_counts c;           /* over its pools */
    struct tm_client *next;
    struct tm_client *hnext;           /* its bucket of client_hash */
    size_t victim_at;                  /* 1 + its place in t->victims; 0: not there */
};

struct tm_class {
    struct tm_list zspages;            /* those with a free slot first */
    unsigned frames;                   /* frames per zspage */
    unsigned slots;
    uint64_t zspage_count, used_slots;
    /* MV_TMEM_STORE_COPIED: the zspage being filled, whose bytes are in
     * `stage` (frames * 4 KiB) until the class needs a new zspage and
     * writes them to its frames (NULL: none). */
    struct tm_zspage *staged;
    uint8_t *stage;
    /* MV_TMEM_STORE_COPIED, for loads only: `ahead` holds the
     * `ahead_len` bytes of the machine memfd from byte `ahead_at` (0: it
     * holds nothing), read when the class's loads come in order, and every
     * write this store makes to the memfd writes the bytes of it that it
     * overlaps too.  `last_load_at`: the first byte of the zspage the
     * class's last load came from (UINT64_MAX: none); `run`: the class's
     * loads in a row each from the zspage of the one before (or, one-slot
     * zspages, a few frames after it); `streaming`: the last load was
     * of a run of two or more, served from the read-ahead, and of its
     * zspage's last page. */
    uint8_t *ahead;
    uint64_t ahead_at;
    size_t ahead_len;
    unsigned run;
    bool streaming;
    uint64_t last_load_at;
};

struct mv__tmem {
    struct mv_host *host;
    struct mv__mutex lock;
    struct tm_list chunks;
    uint64_t chunk_count;
    uint64_t used_frames, spare_frames;
    /* Frames of zspages with no slot pinned by a persistent page: what
     * evicting every ephemeral page would empty. */
    uint64_t unpinned_frames;          /* (their charged frames) */
    _Atomic uint64_t charged;          /* frames charged to the budget */
    /* Pages of the budget a page-out gave up for their compressed copies
     * (paging.c): charged, held by no domain, drawn on first by
     * tm_charge; never left over outside the lock. */
    uint64_t handed_over;
    struct tm_class cls[TM_CLASS_COUNT];
    /* The class a page of class c is stored in: the largest class from c
     * up whose zspages have c's length and slot count (as dense, fewer
     * part-filled zspages). */
    uint16_t class_home[TM_CLASS_COUNT];
    struct tm_pool *pools[TM_MAX_POOLS];
    /* Per pool id, whether it compresses with zstd: read without the lock
     * by a put deciding whether to compress with lz4 before taking it (a
     * hint; tm_store_page goes by the pool itself). */
    atomic_bool pool_zstd[TM_MAX_POOLS];
    struct tm_client *clients;
    /* The same clients by domid: every call of a domain finds its client
     * without a walk past every other domain's. */
    struct tm_client *client_hash[TM_CLIENT_BUCKETS];
    size_t client_count;
    /* The clients holding ephemeral pages, a max-heap by how far each is
     * over its weighted share: eviction's victim is the root, found
     * without a walk past every client (relinquish.c).  Room for every
     * client is made when it is created, so that keeping the heap never
     * allocates. */
    struct tm_client **victims;
    size_t victim_count, victim_cap;
    struct tm_object **objects;        /* hash of every pool's objects */
    size_t obj_buckets, obj_count;
    struct tm_blob **dedup;            /* hash of indexed blobs */
    size_t dedup_buckets, dedup_count;
    void *zstd_cctx, *zstd_dctx;
    uint8_t *scratch;                  /* compression output, 2 pages */
    /* How frames are written and read (enum mv_tmem_store, never AUTO),
     * and what the choice measured (ns; 0 when it was not AUTO). */
    enum mv_tmem_store store;
    uint64_t store_mapped_ns, store_copied_ns;
    uint8_t *readbuf;                  /* COPIED: a slot read for a get */
    uint64_t read_aheads, read_ahead_hits; /* COPIED: read-aheads made; loads they served */
    /* host-wide counters */
    uint64_t evictions, relinquished, compactions, compact_moves, repaid;
    uint64_t short_calls, short_freed;
    uint64_t spare_max;                /* spare frames kept (TM_SPARE_MAX) */
    uint64_t page_count, blob_count, zspage_count, pool_count;
    /* host paging (paging.c) */
    struct tm_client *paging_client;   /* TM_HOST_CLIENT */
    struct tm_pool *paging_pool;       /* made at the first page-out */
    uint64_t paged_now, page_outs, page_ins, page_in_ns, auto_paged;
    /* Pages brought back by faults resolved in a vCPU's thread, whose copy
     * in the host pool tm_lock drops (nothing is freed in a signal
     * handler). */
    struct tm_flush_later { uint32_t domid; uint64_t gfn; } flush_later[TM_FLUSH_LATER_MAX];
    unsigned flush_later_count;
    bool pagemap_scan;                 /* PAGEMAP_SCAN, else pagemap reads */
    pthread_mutex_t auto_ctl;          /* starting and stopping the thread */
    pthread_mutex_t auto_lock;         /* the thread's sleep */
    pthread_cond_t auto_cond;
    pthread_t auto_thread;
    atomic_bool auto_running;          /* read by the hook without auto_ctl */
    bool auto_stop;                    /* under auto_lock */
    atomic_bool auto_urgent;           /* a charge failed: run now */
    unsigned auto_high, auto_low, auto_period_ms;
};

static inline struct mv__tmem *tm_of(struct mv_host *h) { return h->tmem; }


/* A page readied for an lz4 pool before the tmem lock is taken: the
 * same-filled test and the compression, most of a put's time, need no
 * tmem state, while other puts, gets and vCPUs' page-ins (in their signal
 * handlers) wait for the lock. */
struct tm_prepared {
    bool same;                         /* same-filled with `fill` */
    uint64_t fill;
    unsigned len;                      /* lz4 bytes in buf; 0: stored raw */
    uint8_t buf[TM_RAW_THRESHOLD];
};

/* store.c (lock held, but tm_prepare_page) */
int tm_store_init(struct mv__tmem *t);
void tm_store_fini(struct mv__tmem *t);
/* Ready `page` for an lz4 pool (no lock needed). */
void tm_prepare_page(const uint8_t *page, struct tm_prepared *out);
/* Keep `page` for `pg` (kind, fill or blob set), readied in `prep` (NULL:
 * readied here; not used for a zstd pool); `dedup` looks for and indexes
 * identical pages of the same pool and client.  -ENOMEM when no frame can
 * be had (nothing changed). */
int tm_store_page(struct mv__tmem *t, struct tm_pool *pool, struct tm_page *pg,
                  const uint8_t *page, const struct tm_prepared *prep, bool dedup);
/* Copy pg's bytes out into `page`. */
int tm_load_page(struct mv__tmem *t, const struct tm_page *pg, uint8_t *page);
/* Drop pg's stored bytes (the blob when its last page goes). */
void tm_release_page(struct mv__tmem *t, struct tm_pool *pool, struct tm_page *pg);
/* Move blobs out of sparse zspages; returns frames emptied. */
uint64_t tm_compact(struct mv__tmem *t);
/* Scrub up to `n` spare frames and give them back; returns how many. */
uint64_t tm_release_spare(struct mv__tmem *t, uint64_t n);
/* The frames evicting every ephemeral page would give back, compaction
 * aside: the spare ones, and those of zspages holding no persistent page. */
uint64_t tm_freeable_frames(const struct mv__tmem *t);
/* Return chunks with no frame holding memory to the machine allocator. */
void tm_release_chunks(struct mv__tmem *t);
/* COPIED: free the stage and read-ahead buffers of the classes that hold
 * no zspage (a put allocates them again).  Never from a load: it may run
 * in a signal handler. */
void tm_release_class_buffers(struct mv__tmem *t);
/* Bytes of slot space a blob takes. */
unsigned tm_blob_bytes(const struct mv__tmem *t, const struct tm_blob *b);
int tm_store_audit(struct mv__tmem *t);

/* pool.c (lock held) */
struct tm_client *tm_client_find(struct mv__tmem *t, uint32_t domid);
/* The domain's client, made with `quota` when it has none (NULL: no memory). */
struct tm_client *tm_client_get(struct mv__tmem *t, uint32_t domid, uint64_t quota);
void tm_page_free(struct mv__tmem *t, struct tm_page *pg);
void tm_pool_free(struct mv__tmem *t, struct tm_pool *pool);
/* The domain is gone: its private pools, its pages in shared pools, its
 * memberships and its client record. */
void tm_client_drop(struct mv__tmem *t, uint32_t domid);
int tm_pool_create(struct mv__tmem *t, uint32_t owner, unsigned flags,
                   const uint8_t *uuid, struct tm_pool **out);
/* 1 stored, 0 dropped (ephemeral), or a negative errno; `prep` as for
 * tm_store_page. */
int tm_put(struct mv__tmem *t, struct tm_client *c, struct tm_pool *pool,
           const uint64_t oid[3], uint32_t index, const uint8_t *page,
           const struct tm_prepared *prep);
/* 1 found, 0 not; `keep` leaves an exclusive get's page in place. */
int tm_get(struct mv__tmem *t, struct tm_client *c, struct tm_pool *pool,
           const uint64_t oid[3], uint32_t index, uint8_t *page, bool keep);
/* The get's lookup alone: the page copied out (and its record in *found
 * when not NULL), nothing counted or moved; 1, 0 or a negative errno. */
int tm_peek(struct mv__tmem *t, struct tm_pool *pool, const uint64_t oid[3],
            uint32_t index, uint8_t *page, struct tm_page **found);
/* Count a get of client c from pool (found or not). */
void tm_count_get(struct tm_client *c, struct tm_pool *pool, bool found);
/* Remove the page under the key: 1 when it was there. */
int tm_flush(struct mv__tmem *t, struct tm_pool *pool, const uint64_t oid[3],
             uint32_t index);
int tm_pool_audit(struct mv__tmem *t);

/* relinquish.c (lock held unless said) */
/* Evict the least recently used ephemeral page of `prefer` when it has
 * one, else of the client most over its weighted share; false when there
 * is none. */
bool tm_evict_one(struct mv__tmem *t, struct tm_client *prefer);
/* Room in the victims heap for one more client: 0 or -ENOMEM.  Called
 * before a client is made. */
int tm_victims_reserve(struct mv__tmem *t);
/* c's place in the heap after its ephemeral count or weight changed (in,
 * moved, or out when it holds none). */
void tm_victims_update(struct mv__tmem *t, struct tm_client *c);
void tm_victims_remove(struct mv__tmem *t, struct tm_client *c);
/* The heap holds exactly the clients with ephemeral pages, in order. */
int tm_victims_audit(struct mv__tmem *t);
/* Charge `frames` to the budget for tmem, evicting ephemeral pages (never
 * persistent ones) when `may_evict` and the budget is short; false when it
 * stays short. */
bool tm_charge(struct mv__tmem *t, uint64_t frames, bool may_evict);
/* The core's budget-short hook (takes the lock). */
uint64_t tm_budget_short(struct mv_host *h, struct mv_domain *d, uint64_t pages);

/* paging.c */
extern const struct mv__p2m_ops mv__tmem_paged_ops;
/* Take tmem->lock: every tmem path takes it this way, but for a fault
 * resolved in a vCPU's thread; the host pool's copies of the pages such
 * faults brought back are dropped first. */
void tm_lock(struct mv__tmem *t);
int tm_paging_init(struct mv__tmem *t);
/* Stop the automatic mode's thread (no lock). */
void tm_paging_stop(struct mv__tmem *t);
void tm_paging_fini(struct mv__tmem *t);
/* A failing charge: let the automatic mode run now (no tmem lock). */
void tm_paging_wake(struct mv__tmem *t);
/* The domain is gone: drop its paged pages (tmem lock held). */
void tm_paging_domain_gone(struct mv__tmem *t, uint32_t domid);
int tm_paging_audit(struct mv__tmem *t);

#endif /* MV_TMEM_H */
