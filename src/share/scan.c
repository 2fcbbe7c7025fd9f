/*
 * scan.c - the sharing scanner: finds duplicate pages from hints first and
 * by hashing second, within a budget, and hands them to apply.c
 * (mv__share_apply).
 *
 * Hints.  mv_share_hint records that a range holds content other ranges with
 * the same key hold (a block of a shared base image, a file loaded by several
 * guests).  A key is acted on once two ranges carry it: the first range is
 * inserted into the content index, the others are matched against it, so
 * hinted duplicates are shared without anyone scanning for them, and in runs
 * (the first range's pages land in consecutive frames, which the other
 * ranges then map with one remap per run).
 *
 * Scanning.  The scanner walks every running domain's populated pages, one
 * 2 MiB block at a time, 64 pages at a time, reading them where the guest
 * maps them when the domain allows it (apply.c, reads_guest: nothing to
 * map; the block is write-protected first by the page-table scan that says
 * which of its pages are mapped there and which were written since the
 * last such scan: a page not written since the scanner read it keeps that
 * read's hash and is not read again; a page that leaves the mapping under
 * the read fails it under its guard, and the chunk is read again through
 * the machine's view), else
 * as the host's share_read says: in place through the machine's view, or
 * copied out of the machine memfd (a system call per run; nothing is
 * mapped; should the copy fail, the block is read in place).  Nothing is
 * unmapped from the guest unless it is to be shared or freed.  Per page:
 *   - all zero: back to PoD (no frame, no memory, no copy on the next
 *     write), from the guest's mapping when it was read there
 *     (mv__share_reclaim_zero_in_guest), else by apply;
 *   - hash changed since the last pass: volatile, skipped (it would be
 *     broken again soon);
 *   - an indexed frame has the same hash: share (bytes compared first);
 *   - the candidate table (an 8-way set-associative cache of hash -> last
 *     place seen, like KSM's unstable tree) has the same hash elsewhere:
 *     insert this page and queue the other place for matching right after
 *     the block;
 *   - otherwise: remember it as a candidate.
 * Unique pages therefore never become shared frames (no mapping, no copy).
 *
 * Budget: pages per second and a share of one CPU (thread CPU time against
 * wall time), enforced between blocks.  Between passes that found nothing to
 * share the thread rests.  Near vm.max_map_count sharing stops (map.c) and
 * says why in the stats.
 *
 * Locking: scan_lock (MV_LOCK_SCAN) makes one scan step at a time (the
 * thread or mv_share_scan) and guards the candidates, revisits and cursor;
 * lock (MV_LOCK_HINTS) guards hints, config, stats and the thread state.
 * Domain locks are taken under scan_lock, one at a time.
 */
#include "sharing.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The candidate table: 2^12 entries (64 KiB) at least, 2^21 (32 MiB) at
 * most, and in between eight slots per live candidate: it doubles during a
 * pass when an insert leaves fewer, or finds its set full.  A candidate is a
 * non-zero page not shared yet, and a set that overflows once the table is
 * at its largest forgets one, found again only by a later pass: at eight
 * slots a candidate a set holds one on average at most, and a pass over two
 * equal domains shares every page (at four it missed a few in 16,384; at
 * eight, without the doubling on a full set, one).  Sized by candidates
 * rather than populated pages, it takes no memory for zero pages (three in
 * four of a real guest's) nor for shared ones. */
#define MV_CANDIDATE_MIN_BITS 12
#define MV_CANDIDATE_MAX_BITS 21
#define MV_CANDIDATE_SLOTS_PER_CANDIDATE 8
#define MV_CANDIDATE_WAYS 8u
#define MV_REST_NS 50000000ull     /* between passes that shared nothing */
#define MV_PACE_SLICE_NS 20000000ull

struct hint {
    uint64_t key;
    uint32_t domid;
    uint64_t gfn, count;
};

/* 16 bytes: a set of MV_CANDIDATE_WAYS is two cache lines. */
struct candidate {
    uint64_t hash;
    uint64_t place;              /* 0: free; else PLACE_USED | domid << 31 | gfn */
};

/* A whole 32-bit domid and a gfn fit beside the used bit: no frame space
 * (so no domain) has more than 2^MV_BUDDY_MAX_ORDER pages. */
#define PLACE_USED (1ull << 63)
#define PLACE_GFN_BITS 31
_Static_assert(MV_BUDDY_MAX_ORDER <= PLACE_GFN_BITS, "a gfn must fit in a place");
_Static_assert(PLACE_GFN_BITS + 32 < 64, "a domid must fit in a place");

struct revisit {
    uint32_t domid;
    uint64_t gfn;
};

struct mv__scanner {
    struct mv__mutex scan_lock;
    struct candidate *candidates;
    uint64_t candidate_mask;
    uint64_t candidate_slots;    /* atomic: candidate_mask + 1, for stats */
    uint64_t candidate_live;     /* slots in use */
    bool candidate_grow_failed;  /* this pass: not tried again before the next */
    struct revisit *revisits;
    size_t revisit_count, revisit_capacity;
    uint32_t cursor_domid;
    uint64_t cursor_gfn;
    uint64_t pass_pages, pass_start_ns, pass_shared;

    struct mv__mutex lock;
    pthread_cond_t cond;
    struct hint *hints;
    size_t hint_count, hint_capacity;
    uint64_t *based_keys;
    size_t based_count, based_capacity;
    pthread_t thread;
    bool running, stop;
    struct mv_scanner_config config;
    uint64_t passes, pages, volatile_skips, unchanged, cpu_ns, hinted, last_pass_pages;
    uint64_t last_pass_ns;
};

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* hints                                                                    */

static bool key_based(struct mv__scanner *sc, uint64_t key)
{
    for (size_t i = 0; i < sc->based_count; i++)
        if (sc->based_keys[i] == key)
            return true;
    return false;
}

int mv_share_hint(mv_host *host, uint32_t domid, uint64_t gfn, uint64_t count,
                  uint64_t key)
{
    struct mv__scanner *sc;
    struct mv_domain *d;
    int rc = 0;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    if (key == 0)
        return mv__fail(-EINVAL, "hint key 0 is reserved");
    d = mv__domain_get(host, domid);
    if (!d)
        return -ESRCH;
    if (count == 0)
        rc = mv__fail(-EINVAL, "an empty range of gfns");
    else if (gfn >= d->maxmem_pages || count > d->maxmem_pages - gfn)
        rc = mv__fail(-EINVAL, "gfns %#llx+%llu are not inside domain %u's %llu pages",
                      (unsigned long long)gfn, (unsigned long long)count, domid,
                      (unsigned long long)d->maxmem_pages);
    mv__domain_put(d);
    if (rc < 0)
        return rc;
    sc = host->scanner;
    mv__mutex_lock(&sc->lock);
    if (sc->hint_count == sc->hint_capacity) {
        size_t cap = sc->hint_capacity ? sc->hint_capacity * 2 : 64;
        struct hint *n = mv__realloc(sc->hints, cap * sizeof(*n));

        if (!n)
            rc = mv__fail(-ENOMEM, "no memory for a hint");
        else {
            sc->hints = n;
            sc->hint_capacity = cap;
        }
    }
    if (rc == 0)
        sc->hints[sc->hint_count++] = (struct hint){ key, domid, gfn, count };
    mv__mutex_unlock(&sc->lock);
    return rc;
}

/* Share one hinted range, a block at a time (scan_lock held). */
static void apply_hint(mv_host *host, const struct hint *hint, bool insert,
                       struct mv_scan_result *result)
{
    uint8_t actions[MV_BLOCK_PAGES];
    struct mv_domain *d = mv__domain_get(host, hint->domid);

    if (!d)
        return;
    memset(actions, insert ? MV_ACT_MATCH_INSERT : MV_ACT_MATCH, sizeof(actions));
    mv__mutex_lock(&d->lock);
    for (uint64_t done = 0; done < hint->count && d->state == MV_DOMAIN_RUNNING;) {
        uint64_t g = hint->gfn + done;
        uint64_t n = MV_MIN(hint->count - done, MV_BLOCK_PAGES - g % MV_BLOCK_PAGES);
        struct mv__apply_result res;

        int rc = mv__share_apply(d, g, n, actions, NULL, &res);

        result->pages_shared += res.shared + res.inserted;
        result->pages_zero += res.zero;
        if (rc < 0)
            break;
        done += n;
    }
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    result->hinted_pages += hint->count;
}

/* Act on the keys two ranges carry (scan_lock held). */
static void process_hints(mv_host *host, struct mv_scan_result *result)
{
    struct mv__scanner *sc = host->scanner;
    struct hint *ready = NULL;
    bool *insert = NULL;
    size_t count = 0;

    mv__mutex_lock(&sc->lock);
    if (sc->hint_count) {
        ready = mv__malloc(sc->hint_count * sizeof(*ready));
        insert = mv__calloc(sc->hint_count, sizeof(*insert));
    }
    for (size_t i = 0; ready && insert && i < sc->hint_count;) {
        struct hint *h = &sc->hints[i];
        size_t same = 0;

        for (size_t j = 0; j < sc->hint_count; j++)
            same += sc->hints[j].key == h->key;
        if (same < 2 && !key_based(sc, h->key)) {
            i++;
            continue;
        }
        if (!key_based(sc, h->key)) {
            if (sc->based_count == sc->based_capacity) {
                size_t cap = sc->based_capacity ? sc->based_capacity * 2 : 64;
                uint64_t *n = mv__realloc(sc->based_keys, cap * sizeof(*n));

                if (!n)
                    break;
                sc->based_keys = n;
                sc->based_capacity = cap;
            }
            sc->based_keys[sc->based_count++] = h->key;
            insert[count] = true;
        }
        ready[count++] = *h;
        sc->hints[i] = sc->hints[--sc->hint_count];
    }
    mv__mutex_unlock(&sc->lock);
    /* Inserting ranges first, so the others find their frames. */
    for (size_t i = 0; i < count; i++)
        if (insert[i])
            apply_hint(host, &ready[i], true, result);
    for (size_t i = 0; i < count; i++)
        if (!insert[i])
            apply_hint(host, &ready[i], false, result);
    free(ready);
    free(insert);
}

/* ------------------------------------------------------------------------ */
/* scanning (scan_lock held)                                                */

static void queue_revisit(struct mv__scanner *sc, uint32_t domid, uint64_t gfn)
{
    if (sc->revisit_count == sc->revisit_capacity) {
        size_t cap = sc->revisit_capacity ? sc->revisit_capacity * 2 : 256;
        struct revisit *n = mv__realloc(sc->revisits, cap * sizeof(*n));

        if (!n)
            return; /* the next pass finds it */
        sc->revisits = n;
        sc->revisit_capacity = cap;
    }
    sc->revisits[sc->revisit_count++] = (struct revisit){ domid, gfn };
}

static int compare_revisit(const void *a, const void *b)
{
    const struct revisit *x = a, *y = b;

    if (x->domid != y->domid)
        return x->domid < y->domid ? -1 : 1;
    return x->gfn < y->gfn ? -1 : x->gfn > y->gfn;
}

/* Match the queued places against the frames just inserted, a 2 MiB block of
 * one domain per call. */
static void process_revisits(mv_host *host, struct mv_scan_result *result)
{
    struct mv__scanner *sc = host->scanner;
    uint8_t actions[MV_BLOCK_PAGES];

    qsort(sc->revisits, sc->revisit_count, sizeof(sc->revisits[0]), compare_revisit);
    for (size_t i = 0; i < sc->revisit_count;) {
        uint32_t domid = sc->revisits[i].domid;
        uint64_t block = sc->revisits[i].gfn / MV_BLOCK_PAGES, first = block * MV_BLOCK_PAGES;
        struct mv_domain *d = mv__domain_get(host, domid);
        uint64_t last = first;
        struct mv__apply_result res;

        memset(actions, MV_ACT_SKIP, sizeof(actions));
        while (i < sc->revisit_count && sc->revisits[i].domid == domid &&
               sc->revisits[i].gfn / MV_BLOCK_PAGES == block) {
            actions[sc->revisits[i].gfn - first] = MV_ACT_MATCH;
            last = sc->revisits[i].gfn;
            i++;
        }
        if (!d)
            continue;
        mv__mutex_lock(&d->lock);
        /* A failed apply put back what it could not do; count what it did. */
        if (d->state == MV_DOMAIN_RUNNING && last < d->maxmem_pages) {
            mv__share_apply(d, first, last - first + 1, actions, NULL, &res);
            result->pages_shared += res.shared;
            result->pages_zero += res.zero;
        }
        mv__mutex_unlock(&d->lock);
        mv__domain_put(d);
    }
    sc->revisit_count = 0;
}

/* A candidate's place: domain and gfn in one word, never 0. */
static uint64_t candidate_place(uint32_t domid, uint64_t gfn)
{
    return PLACE_USED | (uint64_t)domid << PLACE_GFN_BITS | gfn;
}

/*
 * The candidate for `hash`: a set of MV_CANDIDATE_WAYS slots chosen by the
 * hash's low bits.  The entry with this hash if there is one, else a free
 * slot, else the slot the hash's high bits pick (so two contents that share
 * the low bits do not evict each other pass after pass).
 */
static struct candidate *find_candidate(struct mv__scanner *sc, uint64_t hash)
{
    struct candidate *set = &sc->candidates[hash & sc->candidate_mask & ~(uint64_t)(MV_CANDIDATE_WAYS - 1)];

    for (unsigned i = 0; i < MV_CANDIDATE_WAYS; i++)
        if (set[i].place && set[i].hash == hash)
            return &set[i];
    for (unsigned i = 0; i < MV_CANDIDATE_WAYS; i++)
        if (!set[i].place)
            return &set[i];
    return &set[(hash >> 60) % MV_CANDIDATE_WAYS];
}

static size_t candidates_bytes(const struct mv__scanner *sc)
{
    return (sc->candidate_mask + 1) * sizeof(struct candidate);
}

/*
 * Double the candidate table (scan_lock held), keeping its candidates: a set
 * of the old table splits into two of the new one (the hash's next bit), so
 * none is lost.  The new table takes its memory at once: candidates land all
 * over it, and faulting its pages in one by one cost two faults each (a read
 * maps the zero page, the write copies it).  Where there is no memory the
 * table stays as it is until the next pass, and fewer duplicates are found
 * a pass; said once a pass.
 */
static void candidates_grow(mv_host *host)
{
    struct mv__scanner *sc = host->scanner;
    uint64_t old_mask = sc->candidate_mask, slots = (old_mask + 1) * 2;
    struct candidate *old = sc->candidates, *grown;

    grown = mv__os_table_alloc((size_t)slots * sizeof(*grown));
    if (!grown) {
        sc->candidate_grow_failed = true;
        mv__log(host, MV_LOG_WARN, "sharing: no memory to grow the scanner's candidate "
                "table to %llu entries (%s); it stays at %llu until the next pass, "
                "and finds fewer duplicates", (unsigned long long)slots, strerror(errno),
                (unsigned long long)(old_mask + 1));
        return;
    }
    mv__os_prefault_write(grown, (size_t)slots * sizeof(*grown));
    sc->candidates = grown;
    sc->candidate_mask = slots - 1;
    sc->candidate_live = 0;
    __atomic_store_n(&sc->candidate_slots, slots, __ATOMIC_RELAXED);
    for (uint64_t i = 0; i <= old_mask; i++) {
        struct candidate *c;

        if (!old[i].place)
            continue;
        c = find_candidate(sc, old[i].hash);
        if (!c->place) {
            *c = old[i];
            sc->candidate_live++;
        }
    }
    mv__os_unmap(old, (old_mask + 1) * sizeof(*old));
}

static bool candidates_may_grow(const struct mv__scanner *sc)
{
    return sc->candidate_mask + 1 < 1ull << MV_CANDIDATE_MAX_BITS && !sc->candidate_grow_failed;
}

/* Remember the page at `place` as the candidate for `hash` in slot c (from
 * find_candidate; scan_lock held).  Where c's set is full, the table doubles
 * first if it may, rather than forget a candidate (at eight slots a
 * candidate that is rare, but the same contents always fill the same set);
 * it doubles after when the insert leaves fewer than
 * MV_CANDIDATE_SLOTS_PER_CANDIDATE slots a candidate.  c is stale after. */
static void candidate_remember(mv_host *host, struct candidate *c, uint64_t hash,
                               uint64_t place)
{
    struct mv__scanner *sc = host->scanner;

    if (c->place && c->hash != hash && candidates_may_grow(sc)) {
        candidates_grow(host);
        c = find_candidate(sc, hash);
    }
    if (!c->place)
        sc->candidate_live++;
    *c = (struct candidate){ .hash = hash, .place = place };
    if (sc->candidate_live * MV_CANDIDATE_SLOTS_PER_CANDIDATE > sc->candidate_mask + 1 &&
        candidates_may_grow(sc))
        candidates_grow(host);
}

/* A candidate just matched leaves the table (scan_lock held). */
static void candidate_forget(struct mv__scanner *sc, struct candidate *c)
{
    c->place = 0;
    sc->candidate_live--;
}

/*
 * Pages scanned and then handed to apply at a time: apply reads them again
 * once unmapped, and 256 KiB read a moment before are still in the CPU's
 * cache where a whole 2 MiB block is not (on the KVM guest measured, a zero
 * page's second read cost 0.3 us after a block, 0.1 us after 64 pages).
 */
#define SCAN_CHUNK_PAGES 64

static bool hash_in(const uint64_t *hashes, unsigned n, uint64_t hash)
{
    for (unsigned i = 0; i < n; i++)
        if (hashes[i] == hash)
            return true;
    return false;
}

/*
 * Check the pages `take` marks, page i at at[i]: zero[i] when it is all
 * zero, else its hash in hashes[i] (hashed[i]).  With `guarded` the range
 * is read under a guard (pages read through the guest's mapping): false
 * when a page left the page table under the read, and nothing is set.
 */
static bool check_pages(struct mv_domain *d, uint64_t lo, uint64_t n, const uint8_t *take,
                        const uint8_t *const *at, bool guarded, uint8_t *zero,
                        bool *hashed, uint64_t *hashes)
{
    struct mv__ram_guard guard;

    if (guarded) {
        if (mv__ram_guard_faulted(&guard))
            return false;
        mv__ram_guard_arm(&guard, mv__gfn_addr(d, lo), n << MV_PAGE_SHIFT);
    }
    for (uint64_t i = 0; i < n; i++) {
        zero[i] = 0;
        hashed[i] = false;
        if (!take[i])
            continue;
        if (mv__page_is_zero(at[i])) {
            zero[i] = 1;
            continue;
        }
        hashes[i] = mv__page_hash(at[i]);
        hashed[i] = true;
    }
    if (guarded)
        mv__ram_guard_disarm();
    return true;
}

/* The time since *since, which becomes now: a pass's parts are timed one
 * after the other (mv_scan_result's read_ns, zero_ns, index_ns, share_ns). */
static uint64_t lap_ns(uint64_t *since)
{
    uint64_t now = mv__now_ns(), lap = now - *since;

    *since = now;
    return lap;
}

/* Scan [lo, hi) of d, at most SCAN_CHUNK_PAGES populated or not (its lock
 * held), and share what it found. */
static void scan_chunk(mv_host *host, struct mv_domain *d, uint64_t lo, uint64_t hi,
                       uint64_t *seen, const uint8_t *state, struct mv_scan_result *result)
{
    struct mv__scanner *sc = host->scanner;
    const uint64_t n = hi - lo;
    uint8_t actions[SCAN_CHUNK_PAGES], take[SCAN_CHUNK_PAGES], zero[SCAN_CHUNK_PAGES];
    uint8_t in_guest[SCAN_CHUNK_PAGES], zero_in_guest[SCAN_CHUNK_PAGES];
    uint8_t unchanged[SCAN_CHUNK_PAGES], read[SCAN_CHUNK_PAGES];
    const uint8_t *at[SCAN_CHUNK_PAGES];
    uint64_t hashes[SCAN_CHUNK_PAGES];
    bool hashed[SCAN_CHUNK_PAGES], indexed[SCAN_CHUNK_PAGES];
    /* Hashes of pages this chunk inserts: a later copy in the chunk is
     * inserted too, and apply matches it to the first one's frame. */
    uint64_t inserting[SCAN_CHUNK_PAGES];
    unsigned inserts = 0;
    struct mv__apply_result res;
    bool any = false, guest, guest_zeros = false;

    memset(actions, MV_ACT_SKIP, sizeof(actions));
    /* Populated (RAM, the domain lock held): the pages may change under the
     * read (the guest writes), which only makes a candidate that apply,
     * reading again once the page is unmapped, turns down. */
    for (uint64_t g = lo; g < hi; g++)
        take[g - lo] = d->p2m[g] == MV_P2M_RAM && !mv__share_excluded(d, g);
    /* Zero pages and the hashes of the others: a page the guest has not
     * written since its last read keeps the hash read then; the others are
     * read where the guest has them mapped, or else through the machine's
     * view (a page that leaves the guest's mapping under the read fails it
     * there: once more, through the machine's view).  Then every hash is
     * looked up in the index at once (mv__share_index_probe_many), so that
     * the index's cache misses overlap. */
    uint64_t t = mv__now_ns();

    for (unsigned attempt = 0;; attempt++) {
        mv__share_locate(d, lo, n, take, attempt == 0 ? state : NULL, at, in_guest,
                         unchanged);
        guest = memchr(in_guest, 1, n) != NULL;
        for (uint64_t i = 0; i < n; i++)
            read[i] = take[i] && !unchanged[i];
        if (check_pages(d, lo, n, read, at, guest, zero, hashed, hashes))
            break;
        mv__share_guest_read_failed(d);
    }
    for (uint64_t i = 0; i < n; i++) {
        result->pages_scanned += take[i];
        zero_in_guest[i] = zero[i] && in_guest[i];
        guest_zeros |= zero_in_guest[i];
        if (unchanged[i]) {
            hashes[i] = seen[lo + i];
            hashed[i] = true;
            result->pages_unchanged++;
        } else if (seen && read[i]) {
            /* Its hash holds until the guest writes it (a protecting scan
             * says so: a page never protected since counts as written) or
             * the hypervisor changes it (mv__share_forget). */
            mv__share_set_known(d, lo + i, hashed[i]);
        }
    }
    result->read_ns += lap_ns(&t);
    /* Zero pages read through the guest's mapping are freed from there;
     * what that leaves goes to apply with the rest. */
    if (guest_zeros) {
        result->pages_zero += mv__share_reclaim_zero_in_guest(d, lo, n, zero_in_guest);
        result->zero_ns += lap_ns(&t);
    }
    for (uint64_t i = 0; i < n; i++) {
        /* Left to apply: zero pages read elsewhere, and those the reclaim
         * kept marked (it unmarks what it freed). */
        if (in_guest[i] ? zero_in_guest[i] : zero[i]) {
            actions[i] = MV_ACT_MATCH;
            any = true;
        }
    }
    mv__share_index_probe_many(host, hashes, hashed, hi - lo, indexed);
    for (uint64_t g = lo; g < hi; g++) {
        uint64_t hash = hashes[g - lo];
        struct candidate *c;

        if (!hashed[g - lo])
            continue;
        if (seen) {
            uint64_t previous = seen[g];

            seen[g] = hash;
            if (previous && previous != hash) {
                result->volatile_skips++;
                continue;
            }
        }
        if (indexed[g - lo]) {
            actions[g - lo] = MV_ACT_MATCH;
            any = true;
            continue;
        }
        c = find_candidate(sc, hash);
        if (c->place && c->hash == hash && c->place != candidate_place(d->domid, g)) {
            actions[g - lo] = MV_ACT_MATCH_INSERT;
            any = true;
            queue_revisit(sc, (uint32_t)((c->place & ~PLACE_USED) >> PLACE_GFN_BITS),
                          c->place & ((1ull << PLACE_GFN_BITS) - 1));
            candidate_forget(sc, c);
            inserting[inserts++] = hash;
        } else if (hash_in(inserting, inserts, hash)) {
            actions[g - lo] = MV_ACT_MATCH_INSERT;
        } else {
            candidate_remember(host, c, hash, candidate_place(d->domid, g));
        }
    }
    result->index_ns += lap_ns(&t);
    if (!any)
        return;
    mv__share_apply(d, lo, hi - lo, actions, NULL, &res);
    result->share_ns += lap_ns(&t);
    result->pages_shared += res.shared + res.inserted;
    result->pages_zero += res.zero;
}

/* Scan one 2 MiB block of d (its lock held), a chunk at a time. */
static void scan_block(mv_host *host, struct mv_domain *d, uint64_t first,
                       struct mv_scan_result *result)
{
    uint64_t end = MV_MIN(first + MV_BLOCK_PAGES, d->maxmem_pages), lo = first, hi = end;
    uint8_t state[MV_BLOCK_PAGES];
    uint64_t *seen, t;
    bool protected;

    while (lo < hi && d->p2m[lo] != MV_P2M_RAM)
        lo++;
    while (hi > lo && d->p2m[hi - 1] != MV_P2M_RAM)
        hi--;
    if (lo == hi)
        return;
    seen = mv__share_hashes(d);
    /* The whole block protected at once, before its chunks are read: a
     * write after the protection is seen as such, whenever its chunk is
     * read. */
    t = mv__now_ns();
    protected = mv__share_protect(d, lo, hi - lo, state);
    result->read_ns += lap_ns(&t);
    for (uint64_t at = lo; at < hi; at += SCAN_CHUNK_PAGES)
        scan_chunk(host, d, at, MV_MIN(at + SCAN_CHUNK_PAGES, hi), seen,
                   protected ? state + (at - lo) : NULL, result);
}

/*
 * Scan from the cursor until `max_pages` populated pages were hashed or the
 * pass ends (then *pass_done).  Returns 0 or a negative errno.
 */
static int scan_step(mv_host *host, uint64_t max_pages, struct mv_scan_result *result,
                     bool *pass_done)
{
    struct mv__scanner *sc = host->scanner;
    uint64_t t, hinted;

    *pass_done = false;
    if (sc->pass_start_ns == 0) {
        sc->pass_start_ns = mv__now_ns();
        sc->candidate_grow_failed = false;
    }
    t = mv__now_ns();
    hinted = result->hinted_pages;
    process_hints(host, result);
    if (result->hinted_pages != hinted)
        result->share_ns += lap_ns(&t);
    while (result->pages_scanned < max_pages) {
        struct mv_domain *d = mv__domain_get_from(host, sc->cursor_domid);
        uint64_t before = result->pages_scanned;

        if (!d) {
            *pass_done = true;
            break;
        }
        if (d->domid != sc->cursor_domid) {
            sc->cursor_domid = d->domid;
            sc->cursor_gfn = 0;
        }
        mv__mutex_lock(&d->lock);
        if (d->state == MV_DOMAIN_RUNNING && sc->cursor_gfn < d->maxmem_pages)
            scan_block(host, d, sc->cursor_gfn, result);
        sc->cursor_gfn += MV_BLOCK_PAGES;
        if (sc->cursor_gfn >= d->maxmem_pages || d->state != MV_DOMAIN_RUNNING) {
            sc->cursor_domid = d->domid + 1;
            sc->cursor_gfn = 0;
        }
        mv__mutex_unlock(&d->lock);
        mv__domain_put(d);
        if (sc->revisit_count) {
            t = mv__now_ns();
            process_revisits(host, result);
            result->share_ns += lap_ns(&t);
        }
        sc->pass_pages += result->pages_scanned - before;
    }
    if (*pass_done) {
        uint64_t now = mv__now_ns();

        mv__mutex_lock(&sc->lock);
        sc->passes++;
        sc->last_pass_pages = sc->pass_pages;
        sc->last_pass_ns = now - sc->pass_start_ns;
        mv__mutex_unlock(&sc->lock);
        sc->cursor_domid = 0;
        sc->cursor_gfn = 0;
        sc->pass_pages = 0;
        sc->pass_start_ns = 0;
    }
    return 0;
}

static void account(struct mv__scanner *sc, const struct mv_scan_result *r, uint64_t cpu)
{
    mv__mutex_lock(&sc->lock);
    sc->pages += r->pages_scanned;
    sc->volatile_skips += r->volatile_skips;
    sc->unchanged += r->pages_unchanged;
    sc->hinted += r->hinted_pages;
    sc->cpu_ns += cpu;
    mv__mutex_unlock(&sc->lock);
}

int mv_share_scan(mv_host *host, uint64_t max_pages, struct mv_scan_result *result)
{
    struct mv__scanner *sc;
    struct mv_scan_result local;
    uint64_t start, cpu;
    bool pass_done = false;
    int rc = 0;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    sc = host->scanner;
    if (!result)
        result = &local;
    memset(result, 0, sizeof(*result));
    start = mv__now_ns();
    cpu = thread_cpu_ns();
    mv__mutex_lock(&sc->scan_lock);
    if (max_pages == 0) {
        /* One whole pass from the start. */
        sc->cursor_domid = 0;
        sc->cursor_gfn = 0;
        sc->pass_pages = 0;
        sc->pass_start_ns = 0;
        while (rc == 0 && !pass_done)
            rc = scan_step(host, UINT64_MAX, result, &pass_done);
    } else {
        rc = scan_step(host, max_pages, result, &pass_done);
    }
    mv__mutex_unlock(&sc->scan_lock);
    result->elapsed_ns = mv__now_ns() - start;
    account(sc, result, thread_cpu_ns() - cpu);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* the thread                                                               */

/* Sleep until `deadline` or until asked to stop (lock held). */
static void rest_until(struct mv__scanner *sc, uint64_t deadline)
{
    while (!sc->stop && mv__now_ns() < deadline)
        mv__cond_wait(&sc->cond, &sc->lock, MV_MIN(deadline, mv__now_ns() + MV_PACE_SLICE_NS));
}

static void *scanner_main(void *arg)
{
    mv_host *host = arg;
    struct mv__scanner *sc = host->scanner;
    uint64_t start = mv__now_ns(), cpu_start = thread_cpu_ns(), pages = 0;

    mv__mutex_lock(&sc->lock);
    while (!sc->stop) {
        struct mv_scanner_config cfg = sc->config;
        struct mv_scan_result r;
        uint64_t cpu0 = thread_cpu_ns(), cpu_used, wall, want;
        bool pass_done;

        mv__mutex_unlock(&sc->lock);
        memset(&r, 0, sizeof(r));
        mv__mutex_lock(&sc->scan_lock);
        scan_step(host, MV_BLOCK_PAGES, &r, &pass_done);
        mv__mutex_unlock(&sc->scan_lock);
        account(sc, &r, thread_cpu_ns() - cpu0);
        pages += r.pages_scanned;
        mv__mutex_lock(&sc->lock);
        /* Budget: CPU share and pages per second, over the thread's life. */
        cpu_used = thread_cpu_ns() - cpu_start;
        wall = mv__now_ns() - start;
        want = wall;
        if (cfg.cpu_percent && cfg.cpu_percent < 100)
            want = MV_MAX(want, cpu_used * 100 / cfg.cpu_percent);
        if (cfg.pages_per_second)
            want = MV_MAX(want, pages * 1000000000ull / cfg.pages_per_second);
        if (want > wall)
            rest_until(sc, start + want);
        if (pass_done && r.pages_shared == 0 && r.pages_zero == 0)
            rest_until(sc, mv__now_ns() + MV_REST_NS);
    }
    mv__mutex_unlock(&sc->lock);
    return NULL;
}

void mv_scanner_config_init(struct mv_scanner_config *config)
{
    memset(config, 0, sizeof(*config));
}

int mv_scanner_start(mv_host *host, const struct mv_scanner_config *config)
{
    struct mv__scanner *sc;
    int rc = 0;

    mv__clear_error();
    if (!host || !config)
        return mv__fail(-EINVAL, "host and config must not be NULL");
    if (config->cpu_percent > 100)
        return mv__fail(-EINVAL, "cpu_percent %u is above 100", config->cpu_percent);
    sc = host->scanner;
    mv__mutex_lock(&sc->lock);
    if (sc->running) {
        rc = mv__fail(-EALREADY, "the scanner is running");
    } else {
        sc->config = *config;
        sc->stop = false;
        mv__share_set_max_vmas(host, config->max_vmas);
        rc = mv__os_thread_start(&sc->thread, NULL, scanner_main, host);
        if (rc < 0)
            rc = mv__fail(rc, "cannot start the scanner thread");
        else
            sc->running = true;
    }
    mv__mutex_unlock(&sc->lock);
    return rc;
}

int mv_scanner_stop(mv_host *host)
{
    struct mv__scanner *sc;
    bool running;

    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    sc = host->scanner;
    mv__mutex_lock(&sc->lock);
    running = sc->running;
    sc->stop = true;
    pthread_cond_broadcast(&sc->cond);
    mv__mutex_unlock(&sc->lock);
    if (!running)
        return mv__fail(-EINVAL, "the scanner is not running");
    pthread_join(sc->thread, NULL);
    mv__mutex_lock(&sc->lock);
    sc->running = false;
    mv__mutex_unlock(&sc->lock);
    return 0;
}

void mv__scanner_stats(mv_host *host, struct mv_share_stats *out)
{
    struct mv__scanner *sc = host->scanner;

    mv__mutex_lock(&sc->lock);
    out->scanner_running = sc->running;
    out->scan_passes = sc->passes;
    out->scan_pages = sc->pages;
    out->scan_volatile = sc->volatile_skips;
    out->scan_unchanged = sc->unchanged;
    out->scan_cpu_ns = sc->cpu_ns;
    out->scan_rate = sc->last_pass_ns ? (double)sc->last_pass_pages * 1e9 /
                                        (double)sc->last_pass_ns : 0.0;
    out->hints_pending = sc->hint_count;
    out->hinted_pages = sc->hinted;
    mv__mutex_unlock(&sc->lock);
    out->scan_candidate_slots = __atomic_load_n(&sc->candidate_slots, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------ */
/* life cycle                                                               */

int mv__scanner_init(mv_host *host)
{
    struct mv__scanner *sc = mv__calloc(1, sizeof(*sc));

    if (!sc)
        return mv__fail(-ENOMEM, "no memory for the scanner");
    /* Zero, taking memory as the scans fill it; grown by candidates_grow.
     * Not on huge pages: where the host backs a VM's memory lazily, the
     * first touch of 32 MiB of fresh huge pages took 86 ms (measured on a
     * KVM guest), more than the page walks they save in a first pass. */
    sc->candidate_mask = (1ull << MV_CANDIDATE_MIN_BITS) - 1;
    sc->candidate_slots = 1ull << MV_CANDIDATE_MIN_BITS;
    sc->candidates = mv__os_table_alloc(candidates_bytes(sc));
    if (!sc->candidates) {
        free(sc);
        return mv__fail(-ENOMEM, "no memory for the scanner's tables");
    }
    mv__mutex_init(&sc->scan_lock, MV_LOCK_SCAN);
    mv__mutex_init(&sc->lock, MV_LOCK_HINTS);
    mv__cond_init(&sc->cond);
    host->scanner = sc;
    return 0;
}

void mv__scanner_fini(mv_host *host)
{
    struct mv__scanner *sc = host->scanner;

    if (!sc)
        return;
    mv__mutex_lock(&sc->lock);
    if (sc->running) {
        mv__mutex_unlock(&sc->lock);
        mv_scanner_stop(host);
    } else {
        mv__mutex_unlock(&sc->lock);
    }
    mv__os_unmap(sc->candidates, candidates_bytes(sc));
    free(sc->revisits);
    free(sc->hints);
    free(sc->based_keys);
    pthread_cond_destroy(&sc->cond);
    mv__mutex_destroy(&sc->scan_lock);
    mv__mutex_destroy(&sc->lock);
    free(sc);
    host->scanner = NULL;
}
