/*
 * map.c - mapping frames into a domain, the limit on mappings, and the
 * writes that race a remap.  A shared gfn maps its frame MAP_PRIVATE,
 * registered with the domain's cow_uffd and write-protected unless the
 * kernel copies (settle.c).  A guest write between the mmap and the
 * protection can only make an anonymous private copy, never reach the
 * frame; such copies are found right after with PAGEMAP_SCAN and become the
 * gfn's own page (adopt_private_copy).  share_convert_run is how a run of
 * gfns becomes shared; runs of consecutive gfns on consecutive frames are
 * one mapping.
 *
 * Invariants:
 *   sharing maps `more` only while vma_count + more < map_limit, where
 *   map_limit == max_vmas, or vm.max_map_count - MV_MAP_RESERVE: the last
 *   MV_MAP_RESERVE mappings are left to CoW breaks (cow.c);
 *   vma_count never undercounts our own mappings between two counts.
 *
 * Locking: mapping needs the domain lock (or the domain unreachable: a
 * clone); the bookkeeping (convert_run, settle_run, may_map, vma_count)
 * the share lock as well.
 */
#include "share.h"

uint64_t share_read_sysctl_u64(const char *path, uint64_t fallback)
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

void share_take_count(struct mv_host *h, int rc, uint64_t counted)
{
    struct mv__share *s = h->share;

    s->vma_checked_ns = mv__now_ns();
    if (rc == 0) {
        s->vma_count = counted;
        s->count_failing = false;
        return;
    }
    if (!s->count_failing)
        mv__log(h, MV_LOG_WARN, "cannot count this process's mappings (%s); the limit "
                "on mappings goes on from the last count, %llu, and those sharing made "
                "since", mv_strerror(rc), (unsigned long long)s->vma_count);
    s->count_failing = true;
}

/* The mappings of this process (share lock held).  Counting reads all of
 * /proc/self/maps, so it is done at most every `interval` ns; in between the
 * count only grows by what sharing and breaks add (never an undercount from
 * our side: what merges back is found at the next count). */
uint64_t share_vma_count(struct mv_host *h, uint64_t interval)
{
    struct mv__share *s = h->share;
    uint64_t counted = 0;
    int rc;

    if (mv__now_ns() - s->vma_checked_ns > interval) {
        rc = mv__os_count_mappings(&counted);
        share_take_count(h, rc, counted);
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
void share_recheck_stopped(struct mv_host *h, uint64_t more)
{
    struct mv__share *s = h->share;

    if (s->stopped && s->vma_count + more < map_limit(s)) {
        s->stopped = false;
        s->stop_reason[0] = 0;
    }
}

bool share_may_map(struct mv_host *h, uint64_t more)
{
    struct mv__share *s = h->share;
    uint64_t limit = map_limit(s);
    /* Below half the limit, a count a second does: counting reads all of
     * /proc/self/maps, about 9 ms for 13,000 mappings, and at every 100 ms
     * it was 7% of a scan's CPU on real guests. */
    uint64_t interval = s->vma_count + more < limit / 2 ? MV_MAP_RECHECK_FAR_NS
                                                        : MV_MAP_RECHECK_NS;

    if (share_vma_count(h, interval) + more >= limit) {
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
    share_recheck_stopped(h, more);
    s->vma_count += more;
    return true;
}

/* A map of [gfn, gfn + n) to shared frames failed with rc: said, returned. */
static int map_failed(struct mv_domain *d, uint64_t gfn, uint64_t n, int rc)
{
    return mv__fail(rc, "domain %u: cannot map gfn %#llx+%llu to shared frames: %s",
                    d->domid, (unsigned long long)gfn, (unsigned long long)n,
                    mv_strerror(rc));
}

/* Map [gfn, gfn + n) to frames [mfn, mfn + n), unprotected yet. */
static int map_frames(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n)
{
    int rc = mv__ram_map(d, gfn, n, mfn << MV_PAGE_SHIFT, true);

    return rc < 0 ? map_failed(d, gfn, n, rc) : 0;
}

/* Map gfn + i to frame mfn[i] for i in [0, n): one mapping per run of
 * consecutive frames, all asked at once (a VMM's agent is waited for once). */
static int map_frame_runs(struct mv_domain *d, uint64_t gfn, const uint64_t *mfn, uint64_t n)
{
    struct mv__ram_run runs[MV_BLOCK_PAGES];
    int results[MV_BLOCK_PAGES], rc;
    size_t count = 0;
    uint64_t i = 0, end;

    if (n == 0)
        return 0;
    do {
        end = share_frame_run_end(mfn, i, n);
        runs[count++] = (struct mv__ram_run){ .gfn = gfn + i, .n = end - i,
                                              .offset = mfn[i] << MV_PAGE_SHIFT };
        i = end;
    } while (i < n);
    rc = mv__ram_map_runs(d, runs, count, true, results);
    for (size_t r = 0; rc < 0 && r < count; r++)
        if (results[r] < 0)
            return map_failed(d, runs[r].gfn, runs[r].n, results[r]);
    return 0;
}

/* Register [gfn, gfn + n), just mapped to shared frames (one mapping or
 * several side by side), with the domain's cow_uffd, write-protected unless
 * the kernel copies this domain's shared pages now. */
static int protect_frames(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    uint8_t *at = mv__gfn_addr(d, gfn);
    size_t len = n << MV_PAGE_SHIFT;
    int rc = mv__os_uffd_register(d->cow_uffd, at, len, UFFDIO_REGISTER_MODE_WP, NULL);

    if (rc == 0 && !kernel_copies_on(d))
        rc = mv__os_uffd_writeprotect(d->cow_uffd, at, len, true);
    if (rc < 0)
        return mv__fail(rc, "domain %u: cannot write-protect shared gfn %#llx+%llu: %s",
                        d->domid, (unsigned long long)gfn, (unsigned long long)n,
                        mv_strerror(rc));
    return 0;
}

/* Map [gfn, gfn + n) to frames [mfn, mfn + n), write-protected unless the
 * kernel copies this domain's shared pages now. */
int share_map_frames(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n)
{
    int rc = map_frames(d, gfn, mfn, n);

    return rc < 0 ? rc : protect_frames(d, gfn, n);
}

/* Private anonymous copies in [gfn, gfn + n): guest writes that came between
 * a remap and its write protection.  Sets found[i] to the copy's PAGEMAP_SCAN
 * categories (PAGE_IS_PRESENT, and PAGE_IS_WRITTEN when the copy is not
 * write-protected), 0 where there is none; returns how many. */
/* One PAGEMAP_SCAN of [*start, end) for private anonymous copies (present,
 * not a file page): up to `cap` regions, with PAGE_IS_PRESENT and, when not
 * write-protected, PAGE_IS_WRITTEN.  Moves *start past what was walked (to
 * `end` when all was).  Returns the regions or a negative errno. */
long share_scan_private_copies(struct mv_domain *d, uintptr_t *start, uintptr_t end,
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
        r = mv__os_pagemap_scan(mv__ram_pagemap_fd(d), &arg);
    if (r >= 0)
        *start = arg.walk_end <= *start || r < (long)cap ? end : arg.walk_end;
    return r;
}

long share_find_private_copies(struct mv_domain *d, uint64_t gfn, uint64_t n,
                               uint8_t *found)
{
    struct page_region regions[16];
    uintptr_t base = (uintptr_t)mv__gfn_addr(d, gfn);
    uintptr_t start = base, end = base + (n << MV_PAGE_SHIFT);
    long copies = 0;

    memset(found, 0, n);
    while (start < end) {
        long r = share_scan_private_copies(d, &start, end, regions, MV_ARRAY_SIZE(regions));

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
    rc = mv__ram_read_mapped(d, gfn, 1, page);
    if (rc < 0) {
        mv__domain_crash(d, "cannot read a write to gfn %#llx that raced its "
                         "sharing: %s", (unsigned long long)gfn, mv_strerror(rc));
        return -EFAULT;
    }
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
void share_restore_ram(struct mv_domain *d, uint64_t gfn, uint64_t n)
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
        undo = mv__os_copy(h->machine.memfd, share_shared_mfn(d, gfn + i) << MV_PAGE_SHIFT,
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
        share_rmap_del(h, d, gfn + i, true);
        mv__p2m_set(d, gfn + i, MV_P2M_RAM);
    }
    share_restore_ram(d, gfn, n);
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

/* A remap of [gfn, gfn + n) failed: put the gfns back where they were,
 * their old frame or their own, or crash the domain when that fails too. */
static void undo_remap(struct mv_domain *d, uint64_t gfn, uint64_t n, enum origin from)
{
    int undo = from == FROM_SHARED
        ? share_map_frames(d, gfn, share_shared_mfn(d, gfn), 1)
        : mv__domain_map_own(d, gfn, n);

    if (undo < 0)
        mv__domain_crash(d, "cannot restore gfn %#llx+%llu after a failed "
                         "remap", (unsigned long long)gfn, (unsigned long long)n);
    else if (from == FROM_RAM)
        share_restore_ram(d, gfn, n);
}

/* The writes that raced the remap of [gfn, gfn + n) (written, as
 * share_find_private_copies); when they cannot be looked for, the domain
 * crashes and this returns -EFAULT. */
static long find_racing_writes(struct mv_domain *d, uint64_t gfn, uint64_t n,
                               uint8_t *written)
{
    long copies = share_find_private_copies(d, gfn, n, written);

    if (copies < 0) {
        mv__domain_crash(d, "cannot check gfn %#llx+%llu for writes during its "
                         "remap: %s", (unsigned long long)gfn, (unsigned long long)n,
                         mv_strerror((int)copies));
        return -EFAULT;
    }
    return copies;
}

/* Map [gfn, gfn + n) of d to frames [mfn, mfn + n) and find the writes that
 * raced the remap (written, as share_find_private_copies).  On failure nothing has
 * changed but the mapping, put back where it was, or the domain crashed. */
static long map_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                    enum origin from, uint8_t *written)
{
    int rc;

    /* Gfns that held nothing add shared pages the target must have room to
     * copy; populated ones free as much room as they add. */
    share_check_room(d, from == FROM_POD ? n : 0);
    rc = share_map_frames(d, gfn, mfn, n);
    if (rc < 0) {
        undo_remap(d, gfn, n, from);
        return rc;
    }
    return find_racing_writes(d, gfn, n, written);
}

/* The p2m and reverse map of a run just mapped: gfns written meanwhile
 * become private, the others shared.  Returns how many are shared now, or
 * -EFAULT when the domain crashed. */
static int64_t settle_pages(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                            enum origin from, const uint8_t *written)
{
    struct mv__share *s = d->host->share;
    int64_t shared = 0;

    for (uint64_t i = 0; i < n; i++) {
        if (written[i]) {
            if (adopt_private_copy(d, gfn + i, from) < 0)
                return -EFAULT;
            if (from == FROM_SHARED)
                share_rmap_del(d->host, d, gfn + i, true);
            continue;
        }
        if (from == FROM_SHARED)
            share_rmap_del(d->host, d, gfn + i, true);
        if (share_rmap_add(s, mfn + i, d, gfn + i) < 0) {
            /* No memory for the reverse map: keep the page private. */
            if (from == FROM_RAM || from == FROM_CLONE) {
                mv__domain_map_own(d, gfn + i, 1);
                if (from == FROM_CLONE)
                    mv__os_copy(d->host->machine.memfd, (mfn + i) << MV_PAGE_SHIFT,
                                own_offset(d, gfn + i), MV_PAGE_SIZE);
                share_restore_ram(d, gfn + i, 1);
                continue;
            }
            mv__domain_crash(d, "no memory for the reverse map of gfn %#llx",
                             (unsigned long long)(gfn + i));
            return -EFAULT;
        }
        mv__p2m_set(d, gfn + i, MV_P2M_SHARED);
        shared++;
    }
    return shared;
}

/* After settle_pages over [gfn, gfn + n): the own frames of the gfns now
 * shared go back (FROM_RAM), and the vCPUs waiting on any of the gfns are
 * woken.  `shared` is what settle_pages returned: how many are shared now,
 * or -EFAULT. */
static int64_t settle_finish(struct mv_domain *d, uint64_t gfn, uint64_t n,
                             enum origin from, int64_t shared, int *error)
{
    if (shared < 0) {
        if (from == FROM_RAM)
            free_own_runs(d, gfn, n, error);
        return -EFAULT;
    }
    if (from == FROM_RAM)
        shared -= free_own_runs(d, gfn, n, error);
    mv__domain_pages_changed(d, gfn, n);
    mv__fault_wake(d, false, gfn, n);
    return shared;
}

/* The bookkeeping of a run map_run mapped: gfns written meanwhile become
 * private, the others shared.  Returns how many are shared now, or -EFAULT
 * when the domain crashed. */
int64_t share_settle_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                         enum origin from, const uint8_t *written, int *error)
{
    return settle_finish(d, gfn, n, from, settle_pages(d, gfn, mfn, n, from, written), error);
}

/*
 * Make [gfn, gfn + n) of d map frames [mfn, mfn + n) (domain and share locks
 * held).  The frames are live and hold the bytes the gfns hold.  Returns the
 * number of gfns now shared (some may have been written during the remap and
 * stay private) or a negative errno with nothing changed but the mapping
 * restored.  FROM_RAM: gfns whose own frames could not be freed stay
 * private, with the error in *error (untouched when there was none).
 */
int64_t share_convert_run(struct mv_domain *d, uint64_t gfn, uint64_t mfn, uint64_t n,
                          enum origin from, int *error)
{
    uint8_t written[MV_BLOCK_PAGES];
    long copies = map_run(d, gfn, mfn, n, from, written);

    return copies < 0 ? copies : share_settle_run(d, gfn, mfn, n, from, written, error);
}

uint64_t share_frame_run_end(const uint64_t *mfn, uint64_t i, uint64_t n)
{
    while (++i < n && mfn[i] == mfn[i - 1] + 1)
        ;
    return i;
}

/*
 * share_convert_run for populated gfns (FROM_RAM) side by side whose frames
 * need not be: gfn + i to frame mfn[i], one mapping per run of consecutive
 * frames, but the write protection, the search for writes that raced the
 * remaps, the hole punch of the own frames and the wake-up once for all of
 * [gfn, gfn + n).  Three copies of a page side by side are three mappings
 * of one frame, and cost one of each of those instead of three (on six
 * real guests' RAM, 11,800 runs made 2,100 such stretches).  Returns what
 * share_convert_run returns; on failure every gfn is back on its own frame.
 */
int64_t share_convert_stretch(struct mv_domain *d, uint64_t gfn, const uint64_t *mfn,
                              uint64_t n, int *error)
{
    uint8_t written[MV_BLOCK_PAGES];
    int64_t shared = 0;
    long copies;
    int rc = 0;

    share_check_room(d, 0);
    rc = map_frame_runs(d, gfn, mfn, n);
    if (rc == 0)
        rc = protect_frames(d, gfn, n);
    if (rc < 0) {
        undo_remap(d, gfn, n, FROM_RAM);
        return rc;
    }
    copies = find_racing_writes(d, gfn, n, written);
    if (copies < 0)
        return copies;
    for (uint64_t i = 0, end; i < n && shared >= 0; i = end) {
        int64_t done;

        end = share_frame_run_end(mfn, i, n);
        done = settle_pages(d, gfn + i, mfn[i], end - i, FROM_RAM, written + i);
        shared = done < 0 ? done : shared + done;
    }
    return settle_finish(d, gfn, n, FROM_RAM, shared, error);
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
