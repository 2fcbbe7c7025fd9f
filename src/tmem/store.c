/*
 * store.c - how tmem keeps a page: zero- and same-filled pages as a marker
 * only, others compressed (lz4, or zstd when the pool asks) or raw when
 * compression does not pay, packed into machine frames by a size-class
 * allocator in the manner of zsmalloc; compaction; deduplication of
 * identical pages within a pool.
 *
 * Size classes are 16 bytes apart, as zsmalloc's.  A zspage of a class is a
 * run of 1 to TM_ZSPAGE_MAX_FRAMES frames of one chunk (contiguous in the
 * chunk's mapping, so a slot may straddle two frames), the run length
 * chosen to waste the least (the shortest such length in the MAPPED
 * store, the longest in the COPIED one; a page stored raw has one frame in
 * either).  Classes whose zspages come out the same (frames and slots) are
 * one, as in zsmalloc: the largest of them, their class_home, takes their
 * pages, as densely, with one part-filled zspage where each would have
 * one.  A frame is charged to the host budget from the moment a zspage
 * takes it (or it was kept SPARE) until it is scrubbed (a hole) and
 * uncharged; but in the COPIED store, frames held: the zspage a class is
 * filling is charged only for the frames its slots reach, its other frames
 * HELD for it (holes, uncharged: its bytes are in the stage until it is
 * full) and charged, evicting if need be, when a put's slot first reaches
 * them.  A part-filled zspage then costs what its bytes need, so zspages
 * can be long (a class's loads in order read more of it at once, a stage
 * written out carries more pages) at no cost in density.
 *
 * Populating frames is a fifth of a put's time (a write fault on a hole of
 * the memfd allocates, clears and maps one page; see docs/performance.md),
 * so a new zspage's holes are filled with one write of zeros to the memfd
 * and mapped by one read fault, which maps every cached page around it
 * (run_populate).  A zspage of one frame that is a hole (a page stored raw,
 * mostly) gets its first bytes by one write to the memfd instead of a write
 * fault: the page is allocated without being cleared, and mapped only when
 * first read (with the cached pages around it).  A raw put and its get
 * took 4.1 + 0.2 us, now 3.3 + 0.7 (docs/performance.md).
 *
 * That is the MAPPED store.  Where mapping a page costs far more than a
 * system call (shadow page tables: mapping and first touching a frame took
 * 12-14 us on a paravirtualised guest, a 2 KiB pread 1.7 us), the COPIED
 * store never maps its frames: the zspage being filled in each class is
 * gathered in the class's stage buffer and written to the memfd by one
 * write when the class needs a new zspage (it is full by then), and a slot
 * of any other zspage is read and written with one pread or pwrite.  Which
 * one a host uses is mv_host_config.tmem_store; AUTO measures both costs
 * once per process, at the first host that asks (store_measure).  Every
 * read and write of a slot goes through slot_bytes and slot_write.
 *
 * A COPIED store reads ahead for loads (gets and page-ins): pages put in
 * order sit in order in their class's zspages, and come back in order when
 * a file is read again or a swapped range faults back.  When two loads in
 * a row of a class come from one zspage, the zspage is read whole by one
 * pread into the class's read-ahead buffer, and the loads after it that
 * fall in it need no system call; once loads in order (two or more in a
 * row from one zspage) have reached a zspage's last page through the
 * read-ahead, the class's next load reads its own zspage at once (the
 * stream goes on into the class's next zspage).  A zspage of one slot (a
 * page stored raw) would gain nothing read alone, so the frames after it
 * in its chunk come with it (zspages made one after another take frames
 * one after another), and two loads in a row from such zspages a few
 * frames apart count as in order.  The buffer is a copy of a range of the
 * memfd, and every write this store makes to the memfd writes the bytes of
 * it that it overlaps (memfd_transfer), so what it holds for a used slot
 * is what the frame holds.  Loads that jump from zspage to zspage do not
 * read ahead, so they pay one slot's read each, as without it.  The buffer
 * is allocated with the class's stage, by a put: a load may run in a
 * signal handler (a page-in in the vCPU's thread).
 *
 * Dedup compares bytes, never only hashes: a blob is reused only when its
 * stored bytes equal the new page's compressed bytes under the same codec
 * (the codecs are deterministic, so equal stored bytes decode to equal
 * pages); the xxh3 hash of the page only finds candidates.  The index is per
 * pool, so a page is never matched against another domain's data (no covert
 * channel between domains through dedup timing).
 *
 * Invariants (tm_store_audit): frames charged == USED + SPARE frames; a
 * chunk is kept only while one of its frames is USED or SPARE; a zspage's
 * frames are USED, but those no used slot reaches of a class's staged
 * zspage, which may be HELD; every used slot's owner is a blob that names
 * that slot and whose length's class has this class as its home; a
 * class's zspages with a free slot come before its full ones; no zspage is
 * empty; a class's staged zspage (COPIED) is one of its own; a class with
 * zspages has its stage and read-ahead buffers (COPIED), freed only once
 * it has none; a class's read-ahead (COPIED) holds what the memfd holds in
 * every used slot of the class it covers.
 *
 * Locking: every function here runs with tmem->lock held, but
 * tm_prepare_page, which a put calls before it takes the lock.
 */
#include "tmem.h"

#include <errno.h>
#include <lz4.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zstd.h>

#define TM_ZSTD_LEVEL 1

static unsigned class_size(unsigned cls) { return (cls + 1) << TM_CLASS_SHIFT; }

unsigned tm_blob_bytes(const struct mv__tmem *t, const struct tm_blob *b)
{
    (void)t;
    return class_size(b->zs->cls);
}

/* ---- choosing the store ---- */

#define TM_MEASURE_PAGES 16u
#define TM_MEASURE_TRIALS 3u

/* What a frame costs each store, measured on a throw-away memfd (not the
 * machine's: nothing is charged, and no failure injected for the machine
 * is taken here), per frame holding two 2 KiB slots, each put and got
 * once, as the stores do it: MAPPED writes a hole of zeros, touches it
 * (a fault maps it and the pages around it), copies two slots in and two
 * out; COPIED writes the frame whole (its stage) and reads two slots.
 * The cheapest of a few trials.  false when measuring fails. */
static bool store_measure(uint64_t *mapped_ns, uint64_t *copied_ns)
{
    const size_t bytes = (size_t)2 * TM_MEASURE_PAGES * TM_MEASURE_TRIALS * MV_PAGE_SIZE;
    static const uint8_t zeros[MV_PAGE_SIZE];
    uint8_t page[MV_PAGE_SIZE], out[MV_PAGE_SIZE / 2];
    const size_t half = MV_PAGE_SIZE / 2;
    bool ok = false;
    uint8_t *map;
    int fd;

    memset(page, 0x5a, sizeof(page));
    *mapped_ns = *copied_ns = UINT64_MAX;
    fd = memfd_create("memvisor-tmem-measure", MFD_CLOEXEC);
    if (fd < 0)
        return false;
    if (ftruncate(fd, (off_t)bytes) < 0)
        goto out;
    map = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        goto out;
    for (unsigned trial = 0; trial < TM_MEASURE_TRIALS; trial++) {
        size_t base = (size_t)2 * TM_MEASURE_PAGES * trial;
        uint64_t t0 = mv__now_ns(), t1, t2;

        for (size_t i = base; i < base + TM_MEASURE_PAGES; i++) {
            uint8_t *frame = map + i * MV_PAGE_SIZE;

            if (pwrite(fd, zeros, MV_PAGE_SIZE, (off_t)(i * MV_PAGE_SIZE)) != MV_PAGE_SIZE)
                goto unmap;
            (void)*(volatile const uint8_t *)frame;
            memcpy(frame, page, half);
            memcpy(frame + half, page + half, half);
            memcpy(out, frame, half);
            memcpy(out, frame + half, half);
            __asm__ volatile("" : : "r"(out) : "memory");
        }
        t1 = mv__now_ns();
        for (size_t i = base + TM_MEASURE_PAGES; i < base + 2 * TM_MEASURE_PAGES; i++) {
            off_t at = (off_t)(i * MV_PAGE_SIZE);

            if (pwrite(fd, page, MV_PAGE_SIZE, at) != MV_PAGE_SIZE ||
                pread(fd, out, half, at) != (ssize_t)half ||
                pread(fd, out, half, at + (off_t)half) != (ssize_t)half)
                goto unmap;
        }
        t2 = mv__now_ns();
        *mapped_ns = MV_MIN(*mapped_ns, (t1 - t0) / TM_MEASURE_PAGES);
        *copied_ns = MV_MIN(*copied_ns, (t2 - t1) / TM_MEASURE_PAGES);
    }
    ok = true;
unmap:
    munmap(map, bytes);
out:
    close(fd);
    return ok;
}

/* Measured once per process, by the first AUTO host: every host of the
 * process runs on the same machine, and so gets the same choice. */
static struct {
    pthread_once_t once;
    bool ok;
    int err;                           /* errno when not ok */
    uint64_t mapped_ns, copied_ns;
} measured = { .once = PTHREAD_ONCE_INIT };

static void measure_once(void)
{
    measured.ok = store_measure(&measured.mapped_ns, &measured.copied_ns);
    measured.err = measured.ok ? 0 : errno;
}

static void store_choose(struct mv__tmem *t)
{
    t->store = t->host->config.tmem_store;
    if (t->store != MV_TMEM_STORE_AUTO)
        return;
    pthread_once(&measured.once, measure_once);
    if (!measured.ok) {
        mv__log(t->host, MV_LOG_WARN, "tmem: cannot measure what the two stores "
                "cost (%s); frames are mapped", strerror(measured.err));
        t->store = MV_TMEM_STORE_MAPPED;
        return;
    }
    t->store_mapped_ns = measured.mapped_ns;
    t->store_copied_ns = measured.copied_ns;
    t->store = measured.mapped_ns * 100 > measured.copied_ns * MV_TMEM_STORE_COPY_PCT
             ? MV_TMEM_STORE_COPIED : MV_TMEM_STORE_MAPPED;
}

int tm_store_init(struct mv__tmem *t)
{
    store_choose(t);
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        unsigned size = class_size(c), best = 1;
        uint64_t best_waste = UINT64_MAX;
        bool longest = t->store == MV_TMEM_STORE_COPIED && size < MV_PAGE_SIZE;

        /* The run length wasting the smallest share of its bytes: the
         * shortest of those (zsmalloc's rule) where a zspage's frames are
         * charged whole, the longest where they are charged as its slots
         * reach them (COPIED: a part-filled zspage costs no more, and its
         * class's loads in order read more of it at once).  But a page
         * stored raw has a frame of its own, as in zsmalloc, whichever
         * store: evicting it empties a frame. */
        for (unsigned k = 1; k <= TM_ZSPAGE_MAX_FRAMES; k++) {
            uint64_t bytes = (uint64_t)k * MV_PAGE_SIZE;
            uint64_t waste = (bytes % size) * 1000 / bytes;

            if (waste < best_waste || (longest && waste == best_waste)) {
                best_waste = waste;
                best = k;
            }
        }
        tm_list_init(&t->cls[c].zspages);
        t->cls[c].last_load_at = UINT64_MAX;
        t->cls[c].frames = best;
        t->cls[c].slots = best * MV_PAGE_SIZE / size;
    }
    for (unsigned c = TM_CLASS_COUNT; c-- > 0;) {
        const struct tm_class *cl = &t->cls[c], *up = cl + 1;

        t->class_home[c] = c + 1 < TM_CLASS_COUNT && cl->frames == up->frames &&
                                   cl->slots == up->slots
                               ? t->class_home[c + 1]
                               : (uint16_t)c;
    }
    t->scratch = mv__malloc(2 * MV_PAGE_SIZE);
    t->readbuf = mv__malloc(MV_PAGE_SIZE);
    t->zstd_cctx = mv__alloc_fails() ? NULL : ZSTD_createCCtx();
    t->zstd_dctx = mv__alloc_fails() ? NULL : ZSTD_createDCtx();
    t->dedup_buckets = 1024;
    t->dedup = mv__calloc(t->dedup_buckets, sizeof(*t->dedup));
    if (!t->scratch || !t->readbuf || !t->zstd_cctx || !t->zstd_dctx || !t->dedup)
        return mv__fail(-ENOMEM, "tmem: out of memory for the page store");
    return 0;
}

/* COPIED: class cl gives up its stage and read-ahead buffers (and the
 * zspage it stages, if any: the caller knows it needs it no more). */
static void class_buffers_free(struct tm_class *cl)
{
    free(cl->stage);
    free(cl->ahead);
    cl->stage = cl->ahead = NULL;
    cl->staged = NULL;
    cl->ahead_len = 0;
    cl->last_load_at = UINT64_MAX;
    cl->run = 0;
    cl->streaming = false;
}

void tm_store_fini(struct mv__tmem *t)
{
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++)
        class_buffers_free(&t->cls[c]);
    free(t->readbuf);
    t->readbuf = NULL;
    free(t->scratch);
    ZSTD_freeCCtx(t->zstd_cctx);
    ZSTD_freeDCtx(t->zstd_dctx);
    free(t->dedup);
    t->scratch = NULL;
    t->zstd_cctx = t->zstd_dctx = NULL;
    t->dedup = NULL;
}

/* ---- frames and chunks ---- */

static void chunk_note(struct mv__tmem *t, struct tm_chunk *c)
{
    /* Chunks with a frame to give are kept before the full ones. */
    tm_list_del(&c->link);
    if (c->used + c->held < TM_CHUNK_FRAMES)
        tm_list_add(&t->chunks, &c->link);
    else
        tm_list_add(t->chunks.prev, &c->link);
}

static void chunk_free(struct mv__tmem *t, struct tm_chunk *c)
{
    tm_list_del(&c->link);
    if (c->map)
        mv__os_unmap(c->map, (size_t)TM_CHUNK_FRAMES << MV_PAGE_SHIFT);
    mv__machine_free(&t->host->machine, c->first_mfn, TM_CHUNK_FRAMES);
    t->chunk_count--;
    free(c);
}

void tm_release_chunks(struct mv__tmem *t)
{
    struct tm_list *e = t->chunks.next, *next;

    for (; e != &t->chunks; e = next) {
        struct tm_chunk *c = tm_container(e, struct tm_chunk, link);

        next = e->next;
        if (c->used == 0 && c->spare == 0 && c->held == 0)
            chunk_free(t, c);
    }
}

/* Give n charged frames back to the host budget. */
static void frames_uncharge(struct mv__tmem *t, uint64_t n)
{
    if (!n)
        return;
    mv__machine_uncharge(&t->host->machine, n);
    atomic_fetch_sub(&t->charged, n);
}

/* Scrub the run [i, i + k) of c's frames and give its memory back: one
 * hole punch for the run. */
static void run_scrub(struct mv__tmem *t, struct tm_chunk *c, unsigned i, unsigned k)
{
    int rc = mv__machine_scrub(&t->host->machine, c->first_mfn + i, k);

    if (rc < 0)
        mv__log(t->host, MV_LOG_ERROR, "tmem: scrubbing frames %#llx+%u: %s",
                (unsigned long long)(c->first_mfn + i), k, mv_strerror(rc));
    for (unsigned j = 0; j < k; j++)
        c->state[i + j] = TM_FRAME_FREE;
    frames_uncharge(t, k);
}

/* Scrub up to n spare frames, in runs (one hole punch each), and give
 * their memory back; chunks left with no frame holding memory go back to
 * the allocator.  Returns the frames scrubbed. */
static uint64_t spare_scrub(struct mv__tmem *t, uint64_t n)
{
    uint64_t done = 0;

    for (struct tm_list *e = t->chunks.next; e != &t->chunks && done < n; e = e->next) {
        struct tm_chunk *c = tm_container(e, struct tm_chunk, link);

        for (unsigned i = 0; i < TM_CHUNK_FRAMES && c->spare && done < n;) {
            unsigned k = 0;

            while (i + k < TM_CHUNK_FRAMES && c->state[i + k] == TM_FRAME_SPARE &&
                   done + k < n)
                k++;
            if (k == 0) {
                i++;
                continue;
            }
            run_scrub(t, c, i, k);
            c->spare -= k;
            t->spare_frames -= k;
            done += k;
            i += k;
        }
    }
    tm_release_chunks(t);
    return done;
}

uint64_t tm_release_spare(struct mv__tmem *t, uint64_t n)
{
    uint64_t done = spare_scrub(t, n);

    t->relinquished += done;
    return done;
}

#define TM_POPULATE_MIN_FRAMES 2u

/* Read by run_populate's writes, never written: the zero page backs it. */
static uint8_t tm_zeros[TM_ZSPAGE_MAX_FRAMES << MV_PAGE_SHIFT];

/* Frames [first, first + k) of c are about to hold a zspage; those that
 * are holes get memory now, in one write and one read fault rather than a
 * write fault each: a page of the memfd written whole is allocated
 * without being cleared, and a read fault maps the cached pages around
 * it.  Best effort: when the write fails, the first store into each frame
 * populates it, as it would have anyway. */
static void run_populate(struct mv__tmem *t, struct tm_chunk *c, unsigned first, unsigned k)
{
    unsigned from = k, to = 0;

    for (unsigned j = 0; j < k; j++) {
        if (c->state[first + j] == TM_FRAME_FREE) {
            from = MV_MIN(from, j);
            to = j + 1;
        }
    }
    if (from >= to || to - from < TM_POPULATE_MIN_FRAMES)
        return;
    /* SPARE frames between two holes are rewritten too: their bytes are
     * stale, and one write is cheaper than two. */
    if (mv__os_write(t->host->machine.memfd, tm_zeros,
                     (c->first_mfn + first + from) << MV_PAGE_SHIFT,
                     (uint64_t)(to - from) << MV_PAGE_SHIFT) < 0)
        return;
    for (unsigned j = from; j < to; j++)
        (void)*(volatile const uint8_t *)(c->map + ((size_t)(first + j) << MV_PAGE_SHIFT));
}

/* A run of `k` frames neither USED nor HELD in a chunk, preferring SPARE
 * ones; a new chunk when none has room.  The first `charge` of them are
 * charged already, and become USED (SPARE ones among them refund that
 * charge); of the rest (COPIED only) SPARE ones become USED, keeping their
 * own charge, and holes become HELD.  *charged: how many became USED. */
static int frames_take(struct mv__tmem *t, unsigned k, unsigned charge, struct tm_chunk **out,
                       unsigned *first, unsigned *charged, bool *hole)
{
    struct tm_chunk *best = NULL, *c;
    unsigned best_at = 0, best_spare = 0;
    uint64_t mfn;
    int rc;

    for (struct tm_list *e = t->chunks.next; e != &t->chunks; e = e->next) {
        c = tm_container(e, struct tm_chunk, link);
        if (c->used + c->held == TM_CHUNK_FRAMES)
            break; /* the full ones come last */
        for (unsigned i = 0; i + k <= TM_CHUNK_FRAMES; i++) {
            unsigned spare = 0, j;

            for (j = 0; j < k && c->state[i + j] != TM_FRAME_USED &&
                        c->state[i + j] != TM_FRAME_HELD;
                 j++)
                spare += c->state[i + j] == TM_FRAME_SPARE;
            if (j < k) {
                i += j;
                continue;
            }
            if (!best || spare > best_spare) {
                best = c;
                best_at = i;
                best_spare = spare;
            }
            if (spare == k || !c->spare)
                goto found;
        }
    }
    if (best)
        goto found;
    c = mv__calloc(1, sizeof(*c));
    if (!c)
        return mv__fail(-ENOMEM, "tmem: out of memory for a chunk record");
    rc = mv__machine_alloc(&t->host->machine, TM_CHUNK_FRAMES, &mfn);
    if (rc < 0) {
        free(c);
        return rc;
    }
    c->first_mfn = mfn;
    /* The COPIED store never maps its frames. */
    if (t->store == MV_TMEM_STORE_MAPPED)
        c->map = mv__os_map_shared(NULL, (size_t)TM_CHUNK_FRAMES << MV_PAGE_SHIFT,
                                   t->host->machine.memfd, mfn << MV_PAGE_SHIFT,
                                   PROT_READ | PROT_WRITE);
    if (t->store == MV_TMEM_STORE_MAPPED && !c->map) {
        rc = mv__fail(-errno, "tmem: cannot map frames %#llx+%u",
                      (unsigned long long)mfn, TM_CHUNK_FRAMES);
        mv__machine_free(&t->host->machine, mfn, TM_CHUNK_FRAMES);
        free(c);
        return rc;
    }
    tm_list_add(&t->chunks, &c->link);
    t->chunk_count++;
    best = c;
    best_at = 0;
found:
    *hole = k == 1 && best->state[best_at] == TM_FRAME_FREE;
    if (t->store == MV_TMEM_STORE_MAPPED)
        run_populate(t, best, best_at, k);
    *charged = 0;
    for (unsigned j = 0; j < k; j++) {
        uint8_t *state = &best->state[best_at + j];

        if (*state == TM_FRAME_SPARE) {
            best->spare--;
            t->spare_frames--;
            if (j < charge)
                frames_uncharge(t, 1);
        }
        if (j >= charge && *state == TM_FRAME_FREE) {
            *state = TM_FRAME_HELD;
            best->held++;
            continue;
        }
        *state = TM_FRAME_USED;
        best->used++;
        t->used_frames++;
        (*charged)++;
    }
    chunk_note(t, best);
    *out = best;
    *first = best_at;
    return 0;
}

void tm_release_class_buffers(struct mv__tmem *t)
{
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++)
        if (!t->cls[c].zspage_count) /* and so nothing staged */
            class_buffers_free(&t->cls[c]);
}

/* A zspage's frames are empty: its USED ones become SPARE, its HELD ones
 * holes again.  Above spare_max by
 * TM_SPARE_SLACK, the spare frames are scrubbed back down to spare_max in
 * one batch: a frame scrubbed alone costs a hole punch and a TLB shootdown
 * of its own, which a page-in freeing one frame in two would pay. */
static void frames_put(struct mv__tmem *t, struct tm_chunk *c, unsigned first, unsigned k)
{
    for (unsigned j = 0; j < k; j++) {
        if (c->state[first + j] == TM_FRAME_HELD) { /* a hole, never charged */
            c->state[first + j] = TM_FRAME_FREE;
            c->held--;
            continue;
        }
        c->used--;
        t->used_frames--;
        c->state[first + j] = TM_FRAME_SPARE;
        c->spare++;
        t->spare_frames++;
    }
    chunk_note(t, c);
    if (t->spare_frames >= t->spare_max + TM_SPARE_SLACK)
        spare_scrub(t, t->spare_frames - t->spare_max);
}

static void zspage_free(struct mv__tmem *t, struct tm_zspage *zs)
{
    struct tm_class *cl = &t->cls[zs->cls];

    t->unpinned_frames -= zs->charged; /* empty, so pinned by nothing */
    if (cl->staged == zs)
        cl->staged = NULL; /* its bytes need never be written now */
    if (cl->last_load_at == (zs->chunk->first_mfn + zs->frame) << MV_PAGE_SHIFT)
        cl->last_load_at = UINT64_MAX; /* a zspage made there later is another */
    tm_list_del(&zs->link);
    cl->zspage_count--;
    t->zspage_count--;
    frames_put(t, zs->chunk, zs->frame, zs->frames);
    free(zs);
}

static uint8_t *slot_addr(const struct tm_zspage *zs, unsigned slot)
{
    return zs->chunk->map + ((size_t)zs->frame << MV_PAGE_SHIFT) +
           (size_t)slot * class_size(zs->cls);
}

static uint64_t slot_offset(const struct tm_zspage *zs, unsigned slot)
{
    return ((zs->chunk->first_mfn + zs->frame) << MV_PAGE_SHIFT) +
           (uint64_t)slot * class_size(zs->cls);
}

/* ---- reading and writing slots (the two stores) ---- */

/* COPIED: slot `slot` of zs in its class's stage, or NULL when zs is not
 * the staged zspage. */
static uint8_t *staged_slot(struct mv__tmem *t, const struct tm_zspage *zs, unsigned slot)
{
    struct tm_class *cl = &t->cls[zs->cls];

    return cl->staged == zs ? cl->stage + (size_t)slot * class_size(zs->cls) : NULL;
}

/* COPIED: the read-aheads that hold bytes of [at, at + len) of the memfd
 * take those bytes from `from`, just written there. */
static void aheads_write(struct mv__tmem *t, uint64_t at, size_t len, const uint8_t *from)
{
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        struct tm_class *cl = &t->cls[c];
        uint64_t lo = MV_MAX(at, cl->ahead_at);
        uint64_t hi = MV_MIN(at + len, cl->ahead_at + cl->ahead_len);

        if (lo < hi) /* an empty read-ahead (ahead_len 0) never overlaps */
            memcpy(cl->ahead + (lo - cl->ahead_at), from + (lo - at), hi - lo);
    }
}

/* COPIED: `len` bytes at byte `at` of the machine memfd written from
 * `from`, or else read into `into`: one system call. */
static int memfd_transfer(struct mv__tmem *t, uint64_t at, size_t len, const uint8_t *from,
                          uint8_t *into)
{
    int memfd = t->host->machine.memfd;
    int rc = from ? mv__os_write(memfd, from, at, len) : mv__os_read(memfd, into, at, len);

    if (rc < 0)
        return mv__fail(rc, "tmem: cannot %s %zu stored bytes at %#llx of the machine "
                        "memfd: %s", from ? "write" : "read", len,
                        (unsigned long long)at, strerror(-rc));
    if (from)
        aheads_write(t, at, len, from);
    return 0;
}

/* The `len` bytes of slot `slot` of zs: where they are mapped or staged,
 * or else read into `buf`. */
static int slot_bytes(struct mv__tmem *t, const struct tm_zspage *zs, unsigned slot,
                      unsigned len, uint8_t *buf, const uint8_t **out)
{
    if (t->store == MV_TMEM_STORE_MAPPED)
        *out = slot_addr(zs, slot);
    else if (!(*out = staged_slot(t, zs, slot)))
        *out = buf;
    return *out == buf ? memfd_transfer(t, slot_offset(zs, slot), len, NULL, buf) : 0;
}

/* COPIED: read zs whole into its class's read-ahead (its buffer was
 * allocated with the class's stage), and for a zspage of one slot the
 * frames after it in its chunk too, up to TM_AHEAD_FRAMES in all. */
static int read_ahead(struct mv__tmem *t, struct tm_class *cl, const struct tm_zspage *zs)
{
    unsigned frames = zs->slots > 1 ? zs->frames
                                    : MV_MIN(TM_AHEAD_FRAMES, TM_CHUNK_FRAMES - zs->frame);
    int rc;

    if (!cl->ahead)
        return 0; /* never: a class has zspages only once it has both */
    cl->ahead_len = 0;
    rc = memfd_transfer(t, slot_offset(zs, 0), (size_t)frames << MV_PAGE_SHIFT, NULL,
                        cl->ahead);
    if (rc < 0)
        return rc;
    cl->ahead_at = slot_offset(zs, 0);
    cl->ahead_len = (size_t)frames << MV_PAGE_SHIFT;
    t->read_aheads++;
    return 0;
}

/* COPIED: where slot `slot` of zs is in its class's read-ahead, or NULL. */
static const uint8_t *ahead_slot(const struct tm_class *cl, const struct tm_zspage *zs,
                                 unsigned slot, unsigned len)
{
    uint64_t at = slot_offset(zs, slot);

    if (!cl->ahead_len || at < cl->ahead_at || at + len > cl->ahead_at + cl->ahead_len)
        return NULL;
    return cl->ahead + (at - cl->ahead_at);
}

/* slot_bytes for a load (a get or a page-in): from the class's read-ahead
 * when it holds the slot, which is read first when the class's loads come
 * in order: the last one came from zs too, or the class is streaming, or
 * zs has one slot and the last one came from a zspage at most
 * TM_AHEAD_FRAMES frames before it. */
static int slot_bytes_to_load(struct mv__tmem *t, const struct tm_zspage *zs, unsigned slot,
                              unsigned len, uint8_t *buf, const uint8_t **out)
{
    struct tm_class *cl = &t->cls[zs->cls];
    uint64_t first = slot_offset(zs, 0);
    bool next = first == cl->last_load_at ||
                (zs->slots == 1 && first > cl->last_load_at &&
                 first - cl->last_load_at <= (uint64_t)TM_AHEAD_FRAMES << MV_PAGE_SHIFT);
    bool in_order = next || cl->streaming;
    int rc;

    if (t->store != MV_TMEM_STORE_COPIED || cl->staged == zs)
        return slot_bytes(t, zs, slot, len, buf, out);
    cl->last_load_at = first;
    cl->streaming = false;
    cl->run = next ? cl->run + 1 : 1; /* a stream goes on only when seen again */
    if (!(*out = ahead_slot(cl, zs, slot, len)) && in_order) {
        rc = read_ahead(t, cl, zs);
        if (rc < 0)
            return rc;
        *out = ahead_slot(cl, zs, slot, len);
    }
    if (!*out)
        return slot_bytes(t, zs, slot, len, buf, out);
    t->read_ahead_hits++;
    cl->streaming = cl->run >= 2;
    for (unsigned s = slot + 1; s < zs->slots && cl->streaming; s++)
        cl->streaming = !zs->owner[s];
    return 0;
}

/* Write `len` bytes to slot `slot` of zs.  MAPPED: a copy through the
 * mapping, but for a one-frame zspage that is a hole (`hole`), whose
 * first bytes one write to the memfd stores without a write fault; it
 * cannot fail (when that write fails, the copy populates).  COPIED: into
 * the stage, or one write to the memfd, which can fail. */
static int slot_write(struct mv__tmem *t, struct tm_zspage *zs, unsigned slot,
                      const uint8_t *src, unsigned len, bool hole)
{
    uint8_t *staged;

    if (t->store == MV_TMEM_STORE_MAPPED) {
        if (!hole || mv__os_write(t->host->machine.memfd, src, slot_offset(zs, slot), len) < 0)
            memcpy(slot_addr(zs, slot), src, len);
        return 0;
    }
    staged = staged_slot(t, zs, slot);
    if (staged) {
        memcpy(staged, src, len);
        return 0;
    }
    return memfd_transfer(t, slot_offset(zs, slot), len, src, NULL);
}

/* COPIED: write class cl's staged zspage to its frames, whole frames in
 * one write (a page of the memfd written whole is allocated without being
 * cleared).  It is full (a class asks for a new zspage only when every one
 * it has is), so only the tail no slot reaches is cleared first.  On
 * failure it stays staged, its bytes in the stage. */
static int stage_flush(struct mv__tmem *t, struct tm_class *cl)
{
    struct tm_zspage *zs = cl->staged;
    size_t bytes, used;
    int rc;

    if (!zs)
        return 0;
    bytes = (size_t)zs->frames << MV_PAGE_SHIFT;
    used = (size_t)zs->slots * class_size(zs->cls);
    memset(cl->stage + used, 0, bytes - used);
    rc = memfd_transfer(t, slot_offset(zs, 0), bytes, cl->stage, NULL);
    if (rc == 0)
        cl->staged = NULL;
    return rc;
}

static struct tm_zspage *zspage_with_room(struct mv__tmem *t, unsigned cls)
{
    struct tm_class *cl = &t->cls[cls];

    struct tm_zspage *zs;

    /* Zspages with a free slot are kept before the full ones (slot_alloc
     * moves one that filled to the back, slot_free one that freed a slot
     * to the front, compaction likewise): the first tells. */
    if (tm_list_empty(&cl->zspages))
        return NULL;
    zs = tm_container(cl->zspages.next, struct tm_zspage, link);
    return zs->used < zs->slots ? zs : NULL;
}

/* The first free slot of zs (which has one). */
static unsigned slot_first_free(const struct tm_zspage *zs)
{
    unsigned s = 0;

    while (zs->owner[s])
        s++;
    return s;
}

/* How many frames from a zspage's first the slots up to `slot` of class
 * cls reach. */
static unsigned slot_reach(unsigned cls, unsigned slot)
{
    return (unsigned)(((uint64_t)(slot + 1) * class_size(cls) + MV_PAGE_SIZE - 1) >>
                      MV_PAGE_SHIFT);
}

/* How many of zs's frames that slot `slot` reaches are HELD: what storing
 * into it must charge first. */
static unsigned slot_frames_to_charge(const struct tm_zspage *zs, unsigned slot)
{
    unsigned reach = slot_reach(zs->cls, slot), n = 0;

    for (unsigned f = 0; f < reach; f++)
        n += zs->chunk->state[zs->frame + f] == TM_FRAME_HELD;
    return n;
}

/* The HELD frames slot `slot` of zs reaches become USED: the caller has
 * charged them. */
static void slot_frames_charge(struct mv__tmem *t, struct tm_zspage *zs, unsigned slot)
{
    unsigned reach = slot_reach(zs->cls, slot);
    struct tm_chunk *c = zs->chunk;

    for (unsigned f = 0; f < reach; f++) {
        if (c->state[zs->frame + f] != TM_FRAME_HELD)
            continue;
        c->state[zs->frame + f] = TM_FRAME_USED;
        c->held--;
        c->used++;
        t->used_frames++;
        zs->charged++;
        if (!zs->pinned)
            t->unpinned_frames++;
    }
}

/* A free slot of class cls, in a new zspage when none has one, with the
 * frames it reaches charged: a new zspage's all at once (MAPPED), or in
 * the COPIED store only those its first slot reaches, the others HELD
 * until a slot reaches them.  May evict to make room in the budget. */
static int slot_alloc(struct mv__tmem *t, unsigned cls, bool may_evict,
                      struct tm_zspage **out, unsigned *slot, bool *hole)
{
    struct tm_class *cl = &t->cls[cls];
    unsigned need, charged = 0, got = 0;
    struct tm_zspage *zs;
    int rc;

    *hole = false;
    /* Evicting to make room may free a slot of this class, or the zspage
     * found before: look again after each charge that could evict. */
    for (;;) {
        zs = zspage_with_room(t, cls);
        if (zs)
            need = slot_frames_to_charge(zs, slot_first_free(zs));
        else
            need = t->store == MV_TMEM_STORE_COPIED ? 1 : cl->frames;
        if (need <= charged)
            break;
        if (!tm_charge(t, need - charged, may_evict)) {
            frames_uncharge(t, charged);
            return mv__fail(-ENOMEM, "tmem: the host budget has no room for "
                            "%u more frames", need - charged);
        }
        charged = need;
    }
    frames_uncharge(t, charged - need);
    if (!zs && t->store == MV_TMEM_STORE_COPIED) {
        /* The new zspage is staged: the one staged before goes to its
         * frames first. */
        rc = stage_flush(t, cl);
        if (rc < 0)
            goto uncharge;
        /* The read-ahead's buffer too: a load may run in a signal
         * handler (a page-in in the vCPU's thread), where nothing may be
         * allocated. */
        if (!cl->stage && !(cl->stage = mv__malloc((size_t)cl->frames << MV_PAGE_SHIFT))) {
            rc = mv__fail(-ENOMEM, "tmem: out of memory for a class's stage");
            goto uncharge;
        }
        if (!cl->ahead && !(cl->ahead = mv__malloc((size_t)TM_AHEAD_FRAMES << MV_PAGE_SHIFT))) {
            rc = mv__fail(-ENOMEM, "tmem: out of memory for a class's read-ahead");
            goto uncharge;
        }
    }
    if (!zs) {
        zs = mv__calloc(1, sizeof(*zs) + cl->slots * sizeof(zs->owner[0]));
        if (!zs) {
            rc = mv__fail(-ENOMEM, "tmem: out of memory for a zspage record");
            goto uncharge;
        }
        rc = frames_take(t, cl->frames, need, &zs->chunk, &zs->frame, &got, hole);
        if (rc < 0) {
            free(zs);
            goto uncharge;
        }
        zs->frames = cl->frames;
        zs->charged = got;
        zs->cls = cls;
        zs->slots = cl->slots;
        if (t->store == MV_TMEM_STORE_COPIED)
            cl->staged = zs;
        t->unpinned_frames += zs->charged;
        tm_list_add(&cl->zspages, &zs->link);
        cl->zspage_count++;
        t->zspage_count++;
        *slot = 0;
    } else {
        *slot = slot_first_free(zs);
        slot_frames_charge(t, zs, *slot);
    }
    zs->used++;
    cl->used_slots++;
    if (zs->used == zs->slots) {
        tm_list_del(&zs->link);
        tm_list_add(cl->zspages.prev, &zs->link);
    }
    *out = zs;
    return 0;
uncharge:
    frames_uncharge(t, need);
    return rc;
}

/* Slot `slot` of zs holds b's bytes now (written or moved there). */
static void slot_own(struct mv__tmem *t, struct tm_zspage *zs, unsigned slot, struct tm_blob *b)
{
    zs->owner[slot] = b;
    b->zs = zs;
    b->slot = slot;
    if (b->persistent && zs->pinned++ == 0)
        t->unpinned_frames -= zs->charged;
}

static void slot_free(struct mv__tmem *t, struct tm_zspage *zs, unsigned slot)
{
    struct tm_class *cl = &t->cls[zs->cls];

    if (zs->owner[slot]->persistent && --zs->pinned == 0)
        t->unpinned_frames += zs->charged;
    zs->owner[slot] = NULL;
    zs->used--;
    cl->used_slots--;
    if (zs->used == 0) {
        zspage_free(t, zs);
        return;
    }
    tm_list_del(&zs->link);
    tm_list_add(&cl->zspages, &zs->link);
}

/* ---- dedup index ---- */

static size_t dedup_bucket(const struct mv__tmem *t, uint64_t hash, uint32_t pool)
{
    return (size_t)((hash ^ ((uint64_t)pool * 0x9e3779b97f4a7c15ull)) & (t->dedup_buckets - 1));
}

static void dedup_grow(struct mv__tmem *t)
{
    size_t n = t->dedup_buckets * 2;
    struct tm_blob **b = mv__calloc(n, sizeof(*b));

    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < t->dedup_buckets; i++) {
        struct tm_blob *x = t->dedup[i], *next;

        for (; x; x = next) {
            size_t k = (size_t)((x->hash ^ ((uint64_t)x->dedup_pool * 0x9e3779b97f4a7c15ull)) &
                                (n - 1));

            next = x->hnext;
            x->hnext = b[k];
            b[k] = x;
        }
    }
    free(t->dedup);
    t->dedup = b;
    t->dedup_buckets = n;
}

static void dedup_remove(struct mv__tmem *t, struct tm_blob *b)
{
    struct tm_blob **p = &t->dedup[dedup_bucket(t, b->hash, b->dedup_pool)];

    for (; *p; p = &(*p)->hnext) {
        if (*p == b) {
            *p = b->hnext;
            t->dedup_count--;
            break;
        }
    }
    b->indexed = false;
}

/* ---- pages ---- */

static bool same_filled(const uint8_t *page, uint64_t *fill)
{
    if (!mv__page_repeats_word(page))
        return false;
    memcpy(fill, page, sizeof(*fill));
    return true;
}

void tm_prepare_page(const uint8_t *page, struct tm_prepared *out)
{
    int n;

    out->same = same_filled(page, &out->fill);
    if (out->same)
        return;
    n = LZ4_compress_default((const char *)page, (char *)out->buf, MV_PAGE_SIZE,
                             TM_RAW_THRESHOLD);
    out->len = n > 0 ? (unsigned)n : 0;
}

int tm_store_page(struct mv__tmem *t, struct tm_pool *pool, struct tm_page *pg,
                  const uint8_t *page, const struct tm_prepared *prep, bool dedup)
{
    bool zstd = pool->flags & MV_TMEM_ZSTD;
    struct tm_prepared here;
    const uint8_t *src;
    unsigned codec, len;
    uint64_t hash = 0;
    struct tm_blob *b;
    bool hole;
    int rc;

    if (!prep && !zstd) {
        tm_prepare_page(page, &here);
        prep = &here;
    }
    if (prep ? prep->same : same_filled(page, &pg->fill)) {
        if (prep)
            pg->fill = prep->fill;
        pg->kind = TM_PAGE_SAME;
        pg->blob = NULL;
        pool->c.same_filled++;
        return 0;
    }
    if (zstd) {
        size_t n = ZSTD_compressCCtx(t->zstd_cctx, t->scratch, 2 * MV_PAGE_SIZE, page,
                                     MV_PAGE_SIZE, TM_ZSTD_LEVEL);

        codec = TM_CODEC_ZSTD;
        src = t->scratch;
        len = ZSTD_isError(n) || n > TM_RAW_THRESHOLD ? 0 : (unsigned)n;
    } else {
        codec = TM_CODEC_LZ4;
        src = prep->buf;
        len = prep->len;
    }
    if (len == 0) {
        codec = TM_CODEC_RAW;
        len = MV_PAGE_SIZE;
        src = page;
        pool->c.poor_compressions++;
    }
    if (dedup) {
        hash = mv__page_hash(page);
        for (b = t->dedup[dedup_bucket(t, hash, pool->id)]; b; b = b->hnext) {
            const uint8_t *have;

            if (b->hash != hash || b->dedup_pool != pool->id ||
                b->dedup_client != pg->client || b->codec != codec || b->len != len)
                continue;
            rc = slot_bytes(t, b->zs, b->slot, len, t->readbuf, &have);
            if (rc < 0)
                return rc;
            if (memcmp(have, src, len) == 0) {
                b->refs++;
                pg->kind = TM_PAGE_BLOB;
                pg->blob = b;
                pool->c.dedup_hits++;
                return 0;
            }
        }
    }
    b = mv__calloc(1, sizeof(*b));
    if (!b)
        return mv__fail(-ENOMEM, "tmem: out of memory for a page record");
    /* Persistent puts may evict ephemeral pages; ephemeral ones only their
     * own kind too: the same rule (never a persistent page). */
    rc = slot_alloc(t, t->class_home[(len - 1) >> TM_CLASS_SHIFT], true, &b->zs, &b->slot,
                    &hole);
    if (rc < 0) {
        free(b);
        return rc;
    }
    /* The bytes (prepared, or zstd's in the scratch buffer) are still
     * this page's: making room only frees pages, it never compresses one. */
    b->persistent = pool->flags & MV_TMEM_PERSISTENT;
    slot_own(t, b->zs, b->slot, b);
    rc = slot_write(t, b->zs, b->slot, src, len, hole);
    if (rc < 0) {
        slot_free(t, b->zs, b->slot);
        free(b);
        return rc;
    }
    b->len = len;
    b->codec = codec;
    b->refs = 1;
    t->blob_count++;
    if (dedup) {
        size_t k;

        if (t->dedup_count >= t->dedup_buckets)
            dedup_grow(t);
        k = dedup_bucket(t, hash, pool->id);
        b->hash = hash;
        b->dedup_pool = pool->id;
        b->dedup_client = pg->client;
        b->indexed = true;
        b->hnext = t->dedup[k];
        t->dedup[k] = b;
        t->dedup_count++;
    }
    pool->c.stored_bytes += class_size(b->zs->cls);
    pg->kind = TM_PAGE_BLOB;
    pg->blob = b;
    return 0;
}

uint64_t tm_freeable_frames(const struct mv__tmem *t)
{
    return t->spare_frames + t->unpinned_frames;
}

int tm_load_page(struct mv__tmem *t, const struct tm_page *pg, uint8_t *page)
{
    const struct tm_blob *b = pg->blob;
    const uint8_t *src;
    int rc;

    if (pg->kind == TM_PAGE_SAME) {
        uint64_t *w = (uint64_t *)page;

        for (unsigned i = 0; i < MV_PAGE_SIZE / 8; i++)
            w[i] = pg->fill;
        return 0;
    }
    /* A page kept raw is read straight into `page` when it is not mapped. */
    rc = slot_bytes_to_load(t, b->zs, b->slot, b->len,
                            b->codec == TM_CODEC_RAW ? page : t->readbuf, &src);
    if (rc < 0)
        return rc;
    switch (b->codec) {
    case TM_CODEC_RAW:
        if (src != page)
            memcpy(page, src, MV_PAGE_SIZE);
        return 0;
    case TM_CODEC_LZ4:
        if (LZ4_decompress_safe((const char *)src, (char *)page, (int)b->len,
                                MV_PAGE_SIZE) == (int)MV_PAGE_SIZE)
            return 0;
        break;
    default: {
        size_t n = ZSTD_decompressDCtx(t->zstd_dctx, page, MV_PAGE_SIZE, src, b->len);

        if (!ZSTD_isError(n) && n == MV_PAGE_SIZE)
            return 0;
        break;
    }
    }
    return mv__fail(-EIO, "tmem: a stored page of %u bytes does not decompress",
                    b->len);
}

void tm_release_page(struct mv__tmem *t, struct tm_pool *pool, struct tm_page *pg)
{
    struct tm_blob *b = pg->blob;

    if (pg->kind == TM_PAGE_SAME || !b)
        return;
    pg->blob = NULL;
    if (--b->refs)
        return;
    if (b->indexed)
        dedup_remove(t, b);
    pool->c.stored_bytes -= class_size(b->zs->cls);
    slot_free(t, b->zs, b->slot);
    t->blob_count--;
    free(b);
}

/* ---- compaction ---- */

static int by_used_desc(const void *a, const void *b)
{
    const struct tm_zspage *x = *(struct tm_zspage *const *)a;
    const struct tm_zspage *y = *(struct tm_zspage *const *)b;

    return (x->used < y->used) - (x->used > y->used);
}

uint64_t tm_compact(struct mv__tmem *t)
{
    uint64_t freed = 0;
    bool failed = false;

    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        struct tm_class *cl = &t->cls[c];
        uint64_t need = (cl->used_slots + cl->slots - 1) / cl->slots;
        struct tm_zspage **v;
        size_t n = 0, i, j;

        if (cl->zspage_count <= need)
            continue;
        v = mv__malloc(cl->zspage_count * sizeof(*v));
        if (!v)
            break;
        for (struct tm_list *e = cl->zspages.next; e != &cl->zspages; e = e->next)
            v[n++] = tm_container(e, struct tm_zspage, link);
        qsort(v, n, sizeof(*v), by_used_desc);
        /* Fill the fullest from the emptiest. */
        for (i = 0, j = n - 1; i < j;) {
            struct tm_zspage *dst = v[i], *src = v[j];
            const uint8_t *bytes;
            unsigned s, d;

            /* Nor into a slot reaching a HELD frame: compaction charges
             * nothing. */
            if (dst->used == dst->slots ||
                slot_frames_to_charge(dst, d = slot_first_free(dst)) > 0) {
                i++;
                continue;
            }
            for (s = 0; !src->owner[s]; s++)
                ;
            /* A slot that cannot be read or written (COPIED) stays where
             * it is, and so does the rest: mv_last_error says why. */
            if (slot_bytes(t, src, s, src->owner[s]->len, t->readbuf, &bytes) < 0 ||
                slot_write(t, dst, d, bytes, src->owner[s]->len, false) < 0) {
                failed = true;
                break;
            }
            slot_own(t, dst, d, src->owner[s]);
            dst->used++;
            cl->used_slots++;
            t->compact_moves++;
            if (dst->used == dst->slots) {
                tm_list_del(&dst->link);
                tm_list_add(cl->zspages.prev, &dst->link);
            }
            if (src->used == 1) {
                freed += src->charged;
                j--;
            }
            slot_free(t, src, s); /* frees src when it empties */
        }
        free(v);
        if (failed)
            break;
    }
    t->compactions++;
    return freed;
}

/* ---- audit ---- */

/* zs's class's read-ahead holds what the memfd holds in every used slot
 * of zs it holds.  Read with pread itself: an audit takes no injected
 * failure. */
static int ahead_audit(struct mv__tmem *t, const struct tm_zspage *zs)
{
    const struct tm_class *cl = &t->cls[zs->cls];

    for (unsigned s = 0; s < zs->slots; s++) {
        unsigned len = zs->owner[s] ? zs->owner[s]->len : 0;
        const uint8_t *held = len ? ahead_slot(cl, zs, s, len) : NULL;
        ssize_t got;

        if (!held)
            continue;
        got = pread(t->host->machine.memfd, t->readbuf, len, (off_t)slot_offset(zs, s));
        if (got != (ssize_t)len)
            return mv__fail(got < 0 ? -errno : -EIO, "tmem: cannot read slot %u of a "
                            "class-%u zspage to audit its read-ahead", s, zs->cls);
        if (memcmp(t->readbuf, held, len))
            return mv__fail(-EUCLEAN, "tmem: slot %u of a class-%u zspage differs from "
                            "the class's read-ahead of it", s, zs->cls);
    }
    return 0;
}

int tm_store_audit(struct mv__tmem *t)
{
    uint64_t used = 0, spare = 0, held = 0, zs_frames = 0, zs_held = 0, chunks = 0,
             unpinned = 0;

    for (struct tm_list *e = t->chunks.next; e != &t->chunks; e = e->next) {
        struct tm_chunk *c = tm_container(e, struct tm_chunk, link);
        unsigned u = 0, s = 0, h = 0;

        for (unsigned i = 0; i < TM_CHUNK_FRAMES; i++) {
            u += c->state[i] == TM_FRAME_USED;
            s += c->state[i] == TM_FRAME_SPARE;
            h += c->state[i] == TM_FRAME_HELD;
        }
        if (u != c->used || s != c->spare || h != c->held)
            return mv__fail(-EUCLEAN, "tmem: chunk %#llx counts %u used, %u spare and "
                            "%u held frames, its states say %u, %u and %u",
                            (unsigned long long)c->first_mfn, c->used, c->spare, c->held,
                            u, s, h);
        if (u == 0 && s == 0)
            return mv__fail(-EUCLEAN, "tmem: chunk %#llx is kept but holds no memory",
                            (unsigned long long)c->first_mfn);
        used += u;
        spare += s;
        held += h;
        chunks++;
    }
    if (chunks != t->chunk_count || used != t->used_frames || spare != t->spare_frames)
        return mv__fail(-EUCLEAN, "tmem: %llu chunks, %llu used and %llu spare frames "
                        "found, the counters say %llu, %llu and %llu",
                        (unsigned long long)chunks, (unsigned long long)used,
                        (unsigned long long)spare, (unsigned long long)t->chunk_count,
                        (unsigned long long)t->used_frames,
                        (unsigned long long)t->spare_frames);
    if (used + spare != atomic_load(&t->charged))
        return mv__fail(-EUCLEAN, "tmem: %llu frames hold memory, %llu are charged",
                        (unsigned long long)(used + spare),
                        (unsigned long long)atomic_load(&t->charged));
    for (unsigned c = 0; c < TM_CLASS_COUNT; c++) {
        struct tm_class *cl = &t->cls[c];
        uint64_t n = 0, slots = 0;

        bool seen_full = false, staged_seen = false;

        for (struct tm_list *e = cl->zspages.next; e != &cl->zspages; e = e->next) {
            struct tm_zspage *zs = tm_container(e, struct tm_zspage, link);
            unsigned u = 0, pinned = 0;

            if (zs->used < zs->slots && seen_full)
                return mv__fail(-EUCLEAN, "tmem: a class-%u zspage with room follows a "
                                "full one", c);
            seen_full |= zs->used == zs->slots;
            staged_seen |= zs == cl->staged;

            for (unsigned s = 0; s < zs->slots; s++) {
                if (!zs->owner[s])
                    continue;
                u++;
                pinned += zs->owner[s]->persistent;
                if (zs->owner[s]->zs != zs || zs->owner[s]->slot != s ||
                    zs->owner[s]->refs == 0)
                    return mv__fail(-EUCLEAN, "tmem: slot %u of a class-%u zspage "
                                    "names a blob that is elsewhere", s, c);
                if (t->class_home[(zs->owner[s]->len - 1) >> TM_CLASS_SHIFT] != c)
                    return mv__fail(-EUCLEAN, "tmem: a class-%u zspage holds %u stored "
                                    "bytes, which class %u takes", c, zs->owner[s]->len,
                                    t->class_home[(zs->owner[s]->len - 1) >> TM_CLASS_SHIFT]);
            }
            /* Frames a used slot reaches are USED; the others of the
             * staged zspage may be HELD (COPIED). */
            unsigned reach = 0, charged = 0;

            for (unsigned s = 0; s < zs->slots; s++)
                if (zs->owner[s])
                    reach = slot_reach(c, s);
            for (unsigned f = 0; f < zs->frames; f++) {
                uint8_t state = zs->chunk->state[zs->frame + f];

                charged += state == TM_FRAME_USED;
                if (state != TM_FRAME_USED &&
                    (state != TM_FRAME_HELD || f < reach || zs != cl->staged))
                    return mv__fail(-EUCLEAN, "tmem: frame %u of a class-%u zspage is %s",
                                    f, c, state == TM_FRAME_HELD
                                              ? "held, not charged, but holds a slot or "
                                                "is not staged"
                                              : "neither used nor held");
            }
            if (charged != zs->charged)
                return mv__fail(-EUCLEAN, "tmem: a class-%u zspage counts %u charged "
                                "frames, has %u", c, zs->charged, charged);
            if (u != zs->used || u == 0)
                return mv__fail(-EUCLEAN, "tmem: a class-%u zspage counts %u used "
                                "slots, has %u", c, zs->used, u);
            if (cl->ahead_len && zs != cl->staged) {
                int rc = ahead_audit(t, zs);

                if (rc < 0)
                    return rc;
            }
            if (pinned != zs->pinned)
                return mv__fail(-EUCLEAN, "tmem: a class-%u zspage counts %u slots of "
                                "persistent pages, has %u", c, zs->pinned, pinned);
            unpinned += pinned ? 0 : zs->charged;
            n++;
            slots += u;
            zs_frames += zs->charged;
            zs_held += zs->frames - zs->charged;
        }
        if (cl->staged && (!staged_seen || t->store != MV_TMEM_STORE_COPIED))
            return mv__fail(-EUCLEAN, "tmem: class %u stages a zspage that is not "
                            "one of its own", c);
        if (cl->ahead_len && t->store != MV_TMEM_STORE_COPIED)
            return mv__fail(-EUCLEAN, "tmem: class %u reads ahead in the mapped store", c);
        /* A load may not allocate them (it may run in a signal handler). */
        if (n && t->store == MV_TMEM_STORE_COPIED && (!cl->stage || !cl->ahead))
            return mv__fail(-EUCLEAN, "tmem: class %u holds zspages without its stage "
                            "and read-ahead buffers", c);
        if (n && t->class_home[c] != c)
            return mv__fail(-EUCLEAN, "tmem: class %u holds zspages, but its pages go to "
                            "class %u", c, t->class_home[c]);
        if (n != cl->zspage_count || slots != cl->used_slots)
            return mv__fail(-EUCLEAN, "tmem: class %u counts %llu zspages and %llu "
                            "slots, has %llu and %llu", c,
                            (unsigned long long)cl->zspage_count,
                            (unsigned long long)cl->used_slots,
                            (unsigned long long)n, (unsigned long long)slots);
    }
    if (unpinned != t->unpinned_frames)
        return mv__fail(-EUCLEAN, "tmem: %llu frames hold no persistent page, the "
                        "counter says %llu", (unsigned long long)unpinned,
                        (unsigned long long)t->unpinned_frames);
    if (zs_frames != used || zs_held != held)
        return mv__fail(-EUCLEAN, "tmem: zspages hold %llu charged and %llu held frames, "
                        "the chunks %llu used and %llu held",
                        (unsigned long long)zs_frames, (unsigned long long)zs_held,
                        (unsigned long long)used, (unsigned long long)held);
    return 0;
}
