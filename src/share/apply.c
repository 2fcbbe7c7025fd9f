/*
 * apply.c - one-call sharing: mv__share_apply, the engine of
 * make_ro_and_share, nomination and the scanner.  For a block of gfns it
 * unmaps the populated ones, reads them (below), then under the share lock
 * sends zero pages back to PoD, matches the others against the content
 * index (bytes compared) or inserts them into new frames, and remaps them
 * by runs.
 *
 * Reading, as the host's share_read says (mv_share_read): in place through
 * the machine's view, or copied out of the machine memfd (and, should a copy
 * fail, in place after all).  Reading in place first maps each page into the
 * view: where the host's page tables are shadowed (a paravirtualised guest)
 * that costs about 2.5 us a page against 0.6 for a 4 KiB copy; with nested
 * paging about 0.5 us against 0.7-0.9, and a page mapped once is read again
 * for nothing.
 *
 * Where the domain allows it (protects), each block the scanner reads is
 * write-protected, asynchronously (a guest write goes through and leaves
 * its page marked written), by the PAGEMAP_SCAN that says which of its
 * pages were written since the last one (mv__share_protect); pages not
 * written since the scanner read them are not read again.  Where it also
 * can (reads_guest), the others are read where the guest maps them, and
 * the zero ones freed without the machine's view: unmap them, ask the page
 * tables which were written since the protection, free the others
 * (mv__share_reclaim_zero_in_guest).
 * That saves mapping each page into the machine's view and unmapping it
 * again: about 0.2 us of a zero page's 1.  What it leaves (a page written
 * meanwhile, a failure) comes here with the rest.
 *
 * Invariants: a page becomes shared only after it was unmapped, read and
 * compared byte for byte: a write that completed before the unmap is in the
 * bytes compared, none can land after (its access traps and waits for the
 * domain lock).  A zero page is freed only when it read zero after it was
 * unmapped, or when it read zero after it was write-protected and was not
 * written since (then its bytes at the unmap are the bytes read).
 *
 * Locking: the domain lock held; the share lock taken for the decision and
 * the remaps.
 */
#include "share.h"

struct apply_plan {
    uint8_t kind[MV_BLOCK_PAGES];      /* what became of each gfn */
    uint64_t mfn[MV_BLOCK_PAGES];      /* matched frame */
    uint64_t hash[MV_BLOCK_PAGES];
};

enum { PLAN_NONE = 0, PLAN_ZERO, PLAN_MATCH, PLAN_INSERT, PLAN_RESTORE, PLAN_AFTER };

/* Scratch per thread, freed when the thread exits: two pages for a thread
 * that compares pages outside a block (mv_share_pages), a block for one
 * that shares blocks (the scanner, apply). */
static pthread_key_t pair_key, block_key;
static pthread_once_t buffer_once = PTHREAD_ONCE_INIT;

static void make_buffer_keys(void)
{
    pthread_key_create(&pair_key, free);
    pthread_key_create(&block_key, free);
}

static uint8_t *thread_buffer(pthread_key_t *key, uint64_t pages)
{
    uint8_t *buf;

    pthread_once(&buffer_once, make_buffer_keys);
    buf = pthread_getspecific(*key);
    if (!buf) {
        buf = mv__aligned_alloc(MV_PAGE_SIZE, (size_t)pages << MV_PAGE_SHIFT);
        if (buf && pthread_setspecific(*key, buf) != 0) {
            free(buf);
            buf = NULL;
        }
    }
    return buf;
}

uint8_t *share_thread_buffer(void)
{
    return thread_buffer(&pair_key, 2);
}

static uint8_t *block_buffer(void)
{
    return thread_buffer(&block_key, MV_BLOCK_PAGES);
}

/* A gap of at most this many pages between two runs is copied through:
 * copying it costs less than the second read's system call. */
#define READ_GAP_PAGES 4

/*
 * Copy the pages of d at [gfn, gfn + n) that `want` marks (nonzero) out of
 * the machine memfd into buf (page i at buf + i pages), a system call per
 * run.  0, or a negative errno (buf then holds part of them).
 */
static int read_pages(struct mv_domain *d, uint64_t gfn, uint64_t n, const uint8_t *want,
                      uint8_t *buf)
{
    for (uint64_t i = 0; i < n;) {
        uint64_t start, end;
        int rc;

        while (i < n && !want[i])
            i++;
        if (i == n)
            break;
        start = end = i;
        /* Extend over wanted pages and short gaps between them. */
        while (i < n) {
            if (want[i]) {
                end = ++i;
                continue;
            }
            if (i - end >= READ_GAP_PAGES)
                break;
            i++;
        }
        i = end;
        rc = mv__machine_read(&d->host->machine, d->base_mfn + gfn + start, end - start,
                              buf + (start << MV_PAGE_SHIFT));
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The pages `want` marks: where they are in the machine's view when the
 * host reads in place, else copied into this thread's block buffer, or in
 * the view after all if that fails (which is counted and said). */
static const uint8_t *read_block(struct mv_domain *d, uint64_t gfn, uint64_t n,
                                 const uint8_t *want)
{
    uint8_t *copy;
    int rc;

    if (d->host->share->read_mode == MV_SHARE_READ_IN_PLACE)
        return mv__machine_frame(&d->host->machine, d->base_mfn + gfn);
    copy = block_buffer();
    rc = copy ? read_pages(d, gfn, n, want, copy) : -ENOMEM;

    if (rc == 0)
        return copy;
    __atomic_fetch_add(&d->host->share->read_fallbacks, 1, __ATOMIC_RELAXED);
    mv__fail(rc, "domain %u: cannot copy the pages at gfn %#llx+%llu out of the "
             "machine memory: %s; read in place", d->domid, (unsigned long long)gfn,
             (unsigned long long)n, mv_strerror(rc));
    return mv__machine_frame(&d->host->machine, d->base_mfn + gfn);
}

/* Zero pages found by sharing go back to PoD (domain lock held).  When
 * their frames cannot be freed they stay populated, and *error says why. */
static uint64_t reclaim_zero_run(struct mv_domain *d, uint64_t gfn, uint64_t n, int *error)
{
    int rc = mv__os_punch(d->host->machine.memfd, own_offset(d, gfn), n << MV_PAGE_SHIFT);

    if (rc < 0) {
        share_restore_ram(d, gfn, n);
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

/* ------------------------------------------------------------------------ */
/* reading through the guest's own mapping                                  */

/*
 * Whether the scanner write-protects d's blocks and asks which pages were
 * written since (each block's protecting scan, mv__share_protect), so that
 * it reads again only those.  It takes asynchronous write protection (the
 * guest's writes go through, the kernel marks them), no mechanism watching
 * d's writes (the dirty log owns the protection then), RAM in this process,
 * and a host that left the way of reading to the library
 * (MV_SHARE_READ_AUTO).  RAM is registered for write protection at the
 * first such scan, for good: the first clone of the domain then pays the
 * kernel's walk of its populated pages that leaving that registration makes
 * (8-16 ms a GiB measured).  Lock held.
 */
static bool protects(struct mv_domain *d)
{
    struct mv__share_dom *sd = d->share;
    int rc;

    if (!d->host->share->guest_reads || d->vmm || d->writes_watched || sd->protect_off ||
        !(d->uffd_features & UFFD_FEATURE_WP_ASYNC) || !d->host->features.pagemap_scan)
        return false;
    if (d->register_modes & UFFDIO_REGISTER_MODE_WP)
        return true;
    rc = mv__domain_register_modes(d, UFFDIO_REGISTER_MODE_WP);
    if (rc == 0)
        return true;
    sd->protect_off = true;
    mv__log(d->host, MV_LOG_WARN, "domain %u: %s; sharing reads all its pages through the "
            "machine's view", d->domid, mv_last_error());
    return false;
}

/*
 * Whether a domain the scanner protects (protects) also has its pages read
 * through its own mapping, where the guest has them mapped, instead of
 * through the machine's view, which must first map each page and unmap it
 * again when it is freed (about 0.2 us of a zero page's 1).  It takes a
 * domain whose faults raise SIGBUS (in_thread: a page the kernel unmaps
 * under the read makes the read fail instead of waiting for the lock the
 * reader holds); the protection also guards the free of a zero page read
 * there (mv__share_reclaim_zero_in_guest).
 */
static bool reads_guest(const struct mv_domain *d)
{
    return d->in_thread;
}

void mv__share_guest_read_failed(struct mv_domain *d)
{
    __atomic_fetch_add(&d->host->share->guest_read_fallbacks, 1, __ATOMIC_RELAXED);
}

bool mv__share_protect(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *state)
{
    int rc;

    mv__assert_held(&d->lock);
    if (!protects(d))
        return false;
    rc = mv__ram_protect_scan(d, gfn, n, state);
    if (rc == 0)
        return true;
    /* Not tried again: a page table that cannot be scanned here would fail
     * every block, each with its warning. */
    d->share->protect_off = true;
    mv__share_guest_read_failed(d);
    mv__log(d->host, MV_LOG_WARN, "domain %u: cannot write-protect gfn %#llx+%llu and ask "
            "which of its pages were written (%s); sharing reads all its pages through "
            "the machine's view from now on", d->domid, (unsigned long long)gfn,
            (unsigned long long)n, mv_strerror(rc));
    return false;
}

void mv__share_locate(struct mv_domain *d, uint64_t gfn, uint64_t n, const uint8_t *take,
                      const uint8_t *state, const uint8_t **at, uint8_t *in_guest,
                      uint8_t *unchanged)
{
    uint8_t rest[MV_BLOCK_PAGES];
    const uint8_t *block;
    bool any_rest = false;

    mv__assert_held(&d->lock);
    memset(in_guest, 0, n);
    memset(unchanged, 0, n);
    if (state) {
        bool in_place = reads_guest(d);

        for (uint64_t i = 0; i < n; i++) {
            unchanged[i] = take[i] && (state[i] & (MV_RAM_MAPPED | MV_RAM_MARKED)) &&
                           !(state[i] & MV_RAM_WRITTEN) && mv__share_known(d, gfn + i);
            in_guest[i] = in_place && take[i] && !unchanged[i] && (state[i] & MV_RAM_MAPPED);
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        rest[i] = take[i] && !in_guest[i] && !unchanged[i];
        any_rest |= rest[i];
    }
    block = any_rest ? read_block(d, gfn, n, rest) : NULL;
    for (uint64_t i = 0; i < n; i++)
        at[i] = in_guest[i] ? mv__gfn_addr(d, gfn + i)
              : rest[i] && block ? block + (i << MV_PAGE_SHIFT) : NULL;
}

/* The next run of marked entries at or after *i in [0, n): [*start, *i). */
static bool next_marked_run(const uint8_t *marks, uint64_t n, uint64_t *i, uint64_t *start)
{
    while (*i < n && !marks[*i])
        (*i)++;
    if (*i == n)
        return false;
    *start = *i;
    while (*i < n && marks[*i])
        (*i)++;
    return true;
}

/* Drop the page-table entries of the gfns `which` marks in [gfn, gfn + n),
 * a run at a time; those that could not be dropped are unmarked. */
static void zap_marked(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *which)
{
    for (uint64_t i = 0, start; next_marked_run(which, n, &i, &start);)
        if (mv__ram_zap(d, gfn + start, i - start) < 0)
            memset(which + start, 0, i - start);
}

/* Unmark the gfns of [gfn, gfn + n) written since the run was
 * write-protected (all of them when the page tables cannot be read). */
static void unmark_written(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *which)
{
    uint8_t written[MV_BLOCK_PAGES];
    int rc = mv__ram_scan_pages(d, gfn, n, PAGE_IS_WRITTEN, written);

    if (rc < 0) {
        mv__log(d->host, MV_LOG_WARN, "domain %u: cannot tell which pages of gfn %#llx+%llu "
                "were written (%s); they are read again through the machine's view",
                d->domid, (unsigned long long)gfn, (unsigned long long)n, mv_strerror(rc));
        memset(which, 0, n);
        return;
    }
    for (uint64_t i = 0; i < n; i++)
        which[i] &= (uint8_t)!written[i];
}

uint64_t mv__share_reclaim_zero_in_guest(struct mv_domain *d, uint64_t gfn, uint64_t n,
                                         uint8_t *zero)
{
    struct mv__share *s = d->host->share;
    uint8_t still[MV_BLOCK_PAGES];
    uint64_t freed = 0;

    mv__assert_held(&d->lock);
    memcpy(still, zero, n);
    zap_marked(d, gfn, n, still);
    unmark_written(d, gfn, n, still);
    for (uint64_t i = 0, start; next_marked_run(still, n, &i, &start);) {
        int error = 0;
        uint64_t done = reclaim_zero_run(d, gfn + start, i - start, &error);

        memset(zero + start, 0, done);
        freed += done;
    }
    if (freed) {
        mv__mutex_lock(&s->lock);
        s->zero_reclaimed += freed;
        s->zero_in_guest += freed;
        mv__mutex_unlock(&s->lock);
    }
    return freed;
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
    int rc = share_frames_alloc(h, n, &first);

    if (rc < 0)
        return rc;
    rc = mv__os_write(h->machine.memfd, buf, first << MV_PAGE_SHIFT, n << MV_PAGE_SHIFT);
    if (rc == 0) /* given back at once: each page shared frees its own */
        mv__machine_charge_anyway(&h->machine, n);
    if (rc < 0) {
        for (uint64_t i = 0; i < n; i++)
            share_frame_free(h, first + i, false);
        return rc;
    }
    for (uint64_t i = 0; i < n; i++) {
        share_index_insert(s, first + i, hash[i]);
        if (mv__page_is_zero(buf + (i << MV_PAGE_SHIFT)))
            share_frame_of(s, first + i)->flags |= FRAME_ZERO;
    }
    done = share_convert_run(d, gfn, first, n, FROM_RAM, error);
    /* Frames of gfns that stayed private (or all, on failure).  Those that
     * were shared and taken back (free_own_frames) are gone already, and
     * with the last of them, maybe their region. */
    for (uint64_t i = 0; i < n; i++) {
        struct mv__sframe *f = share_frame_of(s, first + i);

        if (f && f->refs == 0 && (f->flags & FRAME_LIVE))
            share_frame_free(h, first + i, true);
    }
    return done;
}

/*
 * Turn the plan's candidate frames (found by hash) into matches, comparing
 * bytes in place (share lock held: indexed frames are live).  A page whose
 * first candidate differs (a hash collision) is looked up again in the whole
 * index chain.  Pages without a match are inserted when the action says so,
 * else left to restore.
 */
static void verify_matches(struct mv_host *h, struct apply_plan *plan, uint64_t n,
                           const uint8_t *actions, const uint8_t *pages)
{
    for (uint64_t j = 0; j < n; j++) {
        const uint8_t *page = pages + (j << MV_PAGE_SHIFT);

        if (plan->kind[j] != PLAN_RESTORE)
            continue;
        if (plan->mfn[j] != MV_NO_MFN &&
            memcmp(mv__machine_frame(&h->machine, plan->mfn[j]), page, MV_PAGE_SIZE) != 0)
            plan->mfn[j] = share_index_find(h, plan->hash[j], page);
        if (plan->mfn[j] != MV_NO_MFN)
            plan->kind[j] = PLAN_MATCH;
        else if (actions[j] == MV_ACT_MATCH_INSERT || actions[j] == MV_ACT_INSERT)
            plan->kind[j] = PLAN_INSERT;
    }
}

/*
 * A page to insert whose bytes equal an earlier page of the block that is
 * inserted too: it is matched to that page's frame once the frame is in
 * (PLAN_AFTER), instead of getting a frame of its own that would hold the
 * same content twice.  An open-addressed table of the block's inserts by
 * hash; bytes compared.
 */
static void plan_equal_inserts(struct apply_plan *plan, uint64_t n, const uint8_t *pages)
{
    uint16_t slot[2 * MV_BLOCK_PAGES];  /* page + 1, 0: empty */
    const uint64_t mask = 2 * MV_BLOCK_PAGES - 1;

    memset(slot, 0, sizeof(slot));
    for (uint64_t i = 0; i < n; i++) {
        uint64_t at = plan->hash[i] & mask;

        if (plan->kind[i] != PLAN_INSERT)
            continue;
        for (; slot[at]; at = (at + 1) & mask) {
            uint64_t j = slot[at] - 1u;

            if (plan->hash[j] == plan->hash[i] &&
                memcmp(pages + (j << MV_PAGE_SHIFT), pages + (i << MV_PAGE_SHIFT),
                       MV_PAGE_SIZE) == 0) {
                plan->kind[i] = PLAN_AFTER;
                break;
            }
        }
        if (plan->kind[i] == PLAN_INSERT)
            slot[at] = (uint16_t)(i + 1);
    }
}

/* Match the PLAN_AFTER pages to the frames just inserted (share lock held);
 * those whose frame did not go in stay private.  Returns pages shared. */
static uint64_t match_after_inserts(struct mv_domain *d, uint64_t gfn, struct apply_plan *plan,
                                    uint64_t n, const uint8_t *pages,
                                    enum mv_share_outcome *outcomes, int *rc)
{
    uint64_t shared = 0;

    for (uint64_t i = 0; i < n; i++) {
        uint64_t mfn;
        int64_t done = 0;

        if (plan->kind[i] != PLAN_AFTER)
            continue;
        mfn = *rc < 0 ? MV_NO_MFN
                      : share_index_find(d->host, plan->hash[i], pages + (i << MV_PAGE_SHIFT));
        if (mfn == MV_NO_MFN || !share_may_map(d->host, 2)) {
            share_restore_ram(d, gfn + i, 1);
            continue;
        }
        /* Short of sharing it, the conversion leaves the page as it was. */
        done = share_convert_run(d, gfn + i, mfn, 1, FROM_RAM, rc);
        if (done == -EFAULT) {
            *rc = mv__fail(-EFAULT, "domain %u crashed while sharing", d->domid);
            break;
        }
        if (done <= 0)
            continue;
        shared++;
        if (outcomes)
            outcomes[i] = MV_SHARE_MATCHED;
    }
    return shared;
}

int mv__share_apply(struct mv_domain *d, uint64_t gfn, uint64_t n,
                    const uint8_t *actions, enum mv_share_outcome *outcomes,
                    struct mv__apply_result *result)
{
    struct mv_host *h = d->host;
    struct mv__share *s = h->share;
    struct apply_plan plan_storage, *plan = &plan_storage;
    /* The block's own frames: those acted on are populated (RAM) and
     * unmapped from the guest, so they hold still.  Read once unmapped. */
    const uint8_t *buf;
    /* Runs alternate with gfns left alone: at most one a gfn pair. */
    struct mv__ram_run zaps[MV_BLOCK_PAGES / 2 + 1];
    int zapped[MV_BLOCK_PAGES / 2 + 1];
    size_t zap_count = 0;
    uint64_t i;
    int rc = 0;

    mv__assert_held(&d->lock);
    memset(result, 0, sizeof(*result));
    memset(plan->kind, PLAN_NONE, n);
    for (i = 0; i < n; i++) {
        if (outcomes)
            outcomes[i] = d->p2m[gfn + i] == MV_P2M_SHARED ? MV_SHARE_ALREADY
                                                           : MV_SHARE_SKIPPED;
    }
    /* Unmap runs of the populated gfns to act on, all asked at once. */
    for (i = 0; i < n;) {
        uint64_t start = i;

        while (i < n && actions[i] != MV_ACT_SKIP && d->p2m[gfn + i] == MV_P2M_RAM &&
               !mv__share_excluded(d, gfn + i))
            i++;
        if (i == start) {
            i++;
            continue;
        }
        zaps[zap_count++] = (struct mv__ram_run){ .gfn = gfn + start, .n = i - start };
    }
    mv__ram_zap_runs(d, zaps, zap_count, zapped);
    for (size_t r = 0; r < zap_count; r++)
        if (zapped[r] == 0)
            memset(plan->kind + (zaps[r].gfn - gfn), PLAN_RESTORE, zaps[r].n);
    /* plan->kind is PLAN_RESTORE (nonzero) exactly where a page was
     * unmapped: the pages to read. */
    buf = read_block(d, gfn, n, plan->kind);
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
        plan->hash[i] = mv__page_hash(page);
        plan->mfn[i] = actions[i] == MV_ACT_INSERT ? MV_NO_MFN
                       : share_index_lookup(s, plan->hash[i]);
    }
    verify_matches(h, plan, n, actions, buf);
    plan_equal_inserts(plan, n, buf);
    for (i = 0; i < n;) {
        uint8_t kind = plan->kind[i];
        uint64_t start = i++, maps = 1;
        int64_t done = 0;

        while (i < n && plan->kind[i] == kind)
            i++;
        /* A stretch of matches side by side, their frames consecutive or
         * not: one mapping per run of consecutive frames, the rest once for
         * the stretch (share_convert_stretch). */
        if (kind == PLAN_MATCH)
            for (uint64_t j = share_frame_run_end(plan->mfn, start, i); j < i;
                 j = share_frame_run_end(plan->mfn, j, i))
                maps++;
        if (kind == PLAN_NONE || kind == PLAN_AFTER)
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
        if (kind == PLAN_RESTORE || rc < 0 || !share_may_map(h, maps + 1)) {
            share_restore_ram(d, gfn + start, i - start);
            result->skipped += i - start;
            continue;
        }
        if (kind == PLAN_MATCH)
            done = share_convert_stretch(d, gfn + start, plan->mfn + start, i - start, &rc);
        else
            done = insert_run(d, gfn + start, i - start, buf + (start << MV_PAGE_SHIFT),
                              plan->hash + start, &rc);
        if (done == -EFAULT) {
            rc = mv__fail(-EFAULT, "domain %u crashed while sharing", d->domid);
            break;
        }
        if (done < 0 && kind == PLAN_INSERT) {
            share_restore_ram(d, gfn + start, i - start);
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
    result->shared += match_after_inserts(d, gfn, plan, n, buf, outcomes, &rc);
    mv__mutex_unlock(&s->lock);
    /* Zero pages and matches gave memory back. */
    if (result->zero || result->shared)
        mv__fault_kick_waiters(h);
    return rc;
}
