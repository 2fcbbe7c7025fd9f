/*
 * clone.c - clones of a paused domain: the source's frame block becomes an
 * adopted region of shared frames, both domains map it with one remap per
 * run, and the frames are left pending (frames.c) rather than recorded one
 * by one; and the rollback of a clone that fails half-way (below).
 *
 * The source's populated runs are shared in place: their mappings, and the
 * page-table entries the guest built, stay where they are (MAP_SHARED on
 * the former frames), move from the domain's own userfaultfd to its
 * copy-on-write one and are write-protected there, which costs the kernel
 * one pass over the entries, as fork() write-protects a parent's.  Remapping
 * them (MAP_PRIVATE, as other sharing does) made the kernel tear every entry
 * down instead, twice the cost, and the guest fault each page back in
 * (docs/performance.md, "Clones share the source's pages in place").  A
 * write between the two ioctls can only land in the former frame, which is
 * the snapshot both then share: there is no private copy to look for.  A
 * source whose kernel copies on write (MV_COW_KERNEL) needs MAP_PRIVATE
 * mappings, where an unprotected store makes a copy rather than reach the
 * frame, and is remapped as before.
 *
 * Invariants:
 *   a clone either completes or changes nothing (or crashes the source,
 *   saying so, when a system call of the undo fails);
 *   while the clone works its adopted region is held once:
 *   region.live == frames mapped + 1, so that it cannot be freed under it.
 *
 * Locking: the source's lock and the share lock throughout the steps; the
 * clone is unreachable until published.  A helper thread that protects half
 * of a large run (clone_writeprotect) takes no lock and touches no record:
 * it makes system calls on ranges the caller gave it, and is joined before
 * the caller looks at what it did.
 */
#include "share.h"

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
 * target is not looked at (share_check_room would do nothing). */
static long clone_remap_source(struct mv_domain *src, uint64_t gfn, uint64_t mfn,
                               uint64_t n, uint8_t *written)
{
    int rc = share_map_frames(src, gfn, mfn, n);
    long copies;

    if (rc < 0)
        return rc;
    copies = share_find_private_copies(src, gfn, n, written);
    if (copies < 0)
        return mv__fail((int)copies, "domain %u: cannot check gfn %#llx+%llu for "
                        "writes during the clone's remap: %s", src->domid,
                        (unsigned long long)gfn, (unsigned long long)n,
                        mv_strerror((int)copies));
    return copies;
}

/*
 * Write-protecting the source's populated pages, the kernel's pass over
 * their page-table entries, is most of a clone.  The pass takes the
 * address space's lock only to read and each page table's own lock, so on
 * a host with more than one CPU a helper thread protects the upper half of
 * a large run while the caller protects the lower half and the clone's
 * mapping (what it saves: docs/performance.md, "Clones share the source's
 * pages in place").  The helper makes one system call, on the range it was
 * given; the caller joins it before looking at what it did, and reports
 * what failed.
 */
#define CLONE_SPLIT_MIN_PAGES (16u * MV_BLOCK_PAGES)    /* 32 MiB */

struct clone_helper {
    pthread_t thread;
    bool running;
    int uffd;
    uint8_t *at;
    size_t len;
    int rc;
};

static void *clone_helper_main(void *arg)
{
    struct clone_helper *h = arg;

    h->rc = mv__os_uffd_writeprotect(h->uffd, h->at, h->len, true);
    return NULL;
}

/* Hand the upper half of [at, at + n pages) to a helper thread when it is
 * worth one; returns how many pages from `at` the caller protects itself
 * (all of them when there is no helper). */
static uint64_t clone_helper_start(struct clone_helper *h, int uffd, uint8_t *at, uint64_t n)
{
    uint64_t lower = n / 2 / MV_BLOCK_PAGES * MV_BLOCK_PAGES;

    *h = (struct clone_helper){
        .uffd = uffd, .at = at + (lower << MV_PAGE_SHIFT),
        .len = (n - lower) << MV_PAGE_SHIFT,
    };
    if (n < CLONE_SPLIT_MIN_PAGES || sysconf(_SC_NPROCESSORS_ONLN) < 2 ||
        mv__os_thread_start(&h->thread, NULL, clone_helper_main, h) < 0)
        return n;
    h->running = true;
    return lower;
}

/* Wait for the helper, if one was started: 0 or its failure. */
static int clone_helper_join(struct clone_helper *h)
{
    if (!h->running)
        return 0;
    pthread_join(h->thread, NULL);
    h->running = false;
    return h->rc;
}

/* The clone maps live frames [mfn, mfn + n) at [gfn, gfn + n), with a
 * record each.  It is not reachable yet: no write can race the remap.  On
 * failure the gfns done so far are shared and the rest not: the undo lets
 * go of both alike. */
static int clone_map_frames(struct mv_domain *c, uint64_t gfn, uint64_t mfn, uint64_t n)
{
    struct mv__share *s = c->host->share;
    int rc;

    share_check_room(c, n);
    rc = share_map_frames(c, gfn, mfn, n);
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        rc = share_rmap_add(s, mfn + i, c, gfn + i);
        if (rc < 0)
            return mv__fail(rc, "no memory for the reverse map of the clone's gfn %#llx",
                            (unsigned long long)(gfn + i));
        mv__p2m_set(c, gfn + i, MV_P2M_SHARED);
    }
    return rc;
}

/*
 * Both domains map the source's populated run [gfn, gfn + n), shared in
 * place (source locked, clone unreachable; share lock held): the source's
 * mappings stay on its former frames, move from its own userfaultfd to the
 * copy-on-write one and are write-protected there; the clone maps the
 * frames, write-protected.  The calls that change mappings (and take the
 * address space's lock to write) come first; then the caller and a helper
 * protect, with the lock taken only to read.  On failure the run may be
 * registered with either userfaultfd or none, and protected in part: the
 * undo maps the source whole again and lets go of the clone.
 */
static int clone_share_in_place(struct mv_domain *src, struct mv_domain *c,
                                uint64_t old_base, struct mv__share_region *r,
                                uint64_t gfn, uint64_t n)
{
    uint8_t *at = mv__gfn_addr(src, gfn), *clone_at = mv__gfn_addr(c, gfn);
    size_t len = n << MV_PAGE_SHIFT;
    struct clone_helper helper = { .running = false };
    uint64_t own = n;
    int rc = mv__os_uffd_unregister(src->uffd, at, len), hrc;

    if (rc == 0)
        rc = mv__os_uffd_register(src->cow_uffd, at, len, UFFDIO_REGISTER_MODE_WP, NULL);
    if (rc < 0)
        return mv__fail(rc, "domain %u: cannot move gfn %#llx+%llu to its copy-on-write "
                        "userfaultfd: %s", src->domid, (unsigned long long)gfn,
                        (unsigned long long)n, mv_strerror(rc));
    /* The clone is not reachable yet: no write can race its remap. */
    rc = mv__ram_map(c, gfn, n, (old_base + gfn) << MV_PAGE_SHIFT, true);
    if (rc == 0)
        rc = mv__os_uffd_register(c->cow_uffd, clone_at, len, UFFDIO_REGISTER_MODE_WP, NULL);
    if (rc < 0)
        return mv__fail(rc, "domain %u: cannot map gfn %#llx+%llu to shared frames: %s",
                        c->domid, (unsigned long long)gfn, (unsigned long long)n,
                        mv_strerror(rc));
    own = clone_helper_start(&helper, src->cow_uffd, at, n);
    rc = mv__os_uffd_writeprotect(src->cow_uffd, at, own << MV_PAGE_SHIFT, true);
    if (rc < 0)
        rc = mv__fail(rc, "domain %u: cannot write-protect gfn %#llx+%llu in place for "
                      "the clone: %s", src->domid, (unsigned long long)gfn,
                      (unsigned long long)own, mv_strerror(rc));
    if (rc == 0 && (rc = mv__os_uffd_writeprotect(c->cow_uffd, clone_at, len, true)) < 0)
        rc = mv__fail(rc, "domain %u: cannot write-protect shared gfn %#llx+%llu: %s",
                      c->domid, (unsigned long long)gfn, (unsigned long long)n,
                      mv_strerror(rc));
    hrc = clone_helper_join(&helper);
    if (rc == 0 && hrc < 0)
        rc = mv__fail(hrc, "domain %u: cannot write-protect gfn %#llx+%llu in place "
                      "for the clone: %s", src->domid, (unsigned long long)(gfn + own),
                      (unsigned long long)(n - own), mv_strerror(hrc));
    if (rc < 0)
        return rc;
    share_pending_add(src->host->share, r, src, c, gfn, n);
    mv__p2m_set_range(src, gfn, n, MV_P2M_SHARED);
    mv__p2m_set_range(c, gfn, n, MV_P2M_SHARED);
    return mv__fault_wake(src, false, gfn, n);
}

/* A run of the source's p2m: map it in both domains (source locked, clone
 * unreachable; share lock held).  `in_place`: the source kept its mappings
 * (populated runs are shared in place, the others still map the former
 * block); otherwise it was mapped whole onto its new block.  0, or a
 * negative errno with a message: the caller undoes the clone. */
static int clone_run(struct mv_domain *src, struct mv_domain *c, uint64_t old_base,
                     struct mv__share_region *r, uint64_t gfn, uint64_t n,
                     enum mv__p2m_type type, bool in_place)
{
    struct mv__share *s = src->host->share;
    int64_t done;
    int rc;

    switch (type) {
    case MV_P2M_POD:
        /* Its own frames are in the new block now. */
        return in_place ? mv__domain_map_own(src, gfn, n) : 0;
    case MV_P2M_PAGED:
        /* Paged back in before the clone began, under the same lock. */
        return mv__fail(-EUCLEAN, "domain %u: gfn %#llx is still paged out",
                        src->domid, (unsigned long long)gfn);
    case MV_P2M_BALLOONED:
        if (in_place && (rc = mv__domain_map_own(src, gfn, n)) < 0)
            return rc;
        mv__p2m_set_range(c, gfn, n, MV_P2M_BALLOONED);
        return 0;
    case MV_P2M_RAM: {
        uint8_t written[MV_BLOCK_PAGES];
        long copies;

        if (in_place)
            return clone_share_in_place(src, c, old_base, r, gfn, n);
        copies = clone_remap_source(src, gfn, old_base + gfn, n, written);

        if (copies < 0)
            return (int)copies;
        if (copies == 0) {
            /* The clone is not reachable yet: no write can race its remap. */
            rc = share_map_frames(c, gfn, old_base + gfn, n);
            if (rc < 0)
                return rc;
            share_pending_add(s, r, src, c, gfn, n);
            for (uint64_t i = 0; i < n; i++) {
                mv__p2m_set(src, gfn + i, MV_P2M_SHARED);
                mv__p2m_set(c, gfn + i, MV_P2M_SHARED);
            }
            return mv__fault_wake(src, false, gfn, n);
        }
        /* A thread ignored the pause: a record per frame, and the clone maps
         * what the source still shares. */
        share_frames_init(s, r, old_base + gfn, n);
        done = share_settle_run(src, gfn, old_base + gfn, n, FROM_CLONE, written, NULL);
        if (done < 0)
            return (int)done;
        break;
    }
    case MV_P2M_SHARED:
        /* Already shared: the clone maps the same frames, in runs of
         * consecutive ones. */
        for (uint64_t i = 0; i < n;) {
            uint64_t m = share_shared_mfn(src, gfn + i), k;

            share_run_side(src, gfn + i, +1, n - i - 1, &k);
            k++;
            /* Mapped whole onto its new block, the source maps its
             * frames again; in place, it never stopped. */
            rc = in_place ? 0 : share_map_frames(src, gfn + i, m, k);
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
            if (share_frame_of(s, old_base + gfn + i)->refs == 0)
                share_frame_free(src->host, old_base + gfn + i, true);
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
        share_pending_let_go(c->host->share, c);
    for (uint64_t g = 0; c->shared && g < c->maxmem_pages; g++) {
        if (c->p2m[g] == MV_P2M_SHARED) {
            share_rmap_del(c->host, c, g, true);
            mv__p2m_set(c, g, MV_P2M_POD);
        }
    }
}

/* The frame of a gfn of src the clone made shared: in r at the gfn's index
 * (pending, or with a record), else MV_NO_MFN (share lock held). */
static uint64_t clone_adopted_mfn(struct mv_domain *src, struct mv__share_region *r,
                                  uint64_t gfn)
{
    uint64_t mfn = share_shared_mfn(src, gfn);

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
                share_index_remove(s, mfn);
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
        share_region_unlink(s, r);
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
        share_run_side(src, g, +1, src->maxmem_pages - g - 1, &k);
        rc = share_map_frames(src, g, share_shared_mfn(src, g), k + 1);
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
        share_region_remove(h, r);
    else if (!r)
        mv__machine_free(&h->machine, old_base, src->frame_pages);
    return mv__fail(err, "domain %u could not be cloned and crashed: %s", src->domid, why);
}

int mv_domain_clone(mv_host *host, uint32_t src_domid, const char *name,
                    uint32_t *clone_domid)
{
    struct mv_domain_config config;
    struct mv_domain *src, *c = NULL;
    struct mv__share_region *r = NULL;
    struct mv__share *s;
    uint64_t old_base, new_base, populated_before, runs;
    bool in_place;
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
    rc = src->vmm ? mv__fail(-EOPNOTSUPP, "domain %u's RAM is in VMM process %d: "
                             "clones need the RAM in this process", src_domid,
                             src->vmm->pid) :
         src->state == MV_DOMAIN_PAUSED ? 0 :
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
    /* Pages the host paged out come back first: a clone maps frames. */
    for (uint64_t g = 0; rc == 0 && src->paged && g < src->maxmem_pages; g++)
        if (src->p2m[g] == MV_P2M_PAGED && mv__p2m_ops_of(MV_P2M_PAGED)->fault(src, g) < 0)
            rc = mv__fail(-ENOMEM, "domain %u: no memory to page gfn %#llx back in "
                          "for the clone", src_domid, (unsigned long long)g);
    if (rc < 0)
        goto out;
    c->target_pages = src->target_pages;
    rc = mv__machine_alloc(&host->machine, src->frame_pages, &new_base);
    if (rc < 0)
        goto out;
    mv__mutex_lock(&s->lock);
    /* The source is about to map pending frames of a new region. */
    if (src->share->pending_region)
        share_materialize_region(s, src->share->pending_region);
    old_base = src->base_mfn;
    populated_before = src->populated;
    runs = 0;
    for (uint64_t g = 0; g < src->maxmem_pages; g++)
        runs += (src->p2m[g] == MV_P2M_RAM || src->p2m[g] == MV_P2M_SHARED) &&
                (g == 0 || src->p2m[g - 1] != src->p2m[g]);
    /* Each run may split a mapping in two, in both domains. */
    if (!share_may_map(host, 4 * runs + 4) ||
        (populated_before && share_region_add(host, old_base, src->frame_pages, true, &r) < 0)) {
        mv__mutex_unlock(&s->lock);
        mv__machine_free(&host->machine, new_base, src->frame_pages);
        rc = s->stopped ? mv__fail(-ENOSPC, "sharing is stopped: %s", s->stop_reason)
                        : mv__fail(-ENOMEM, "no memory for the clone's frames");
        goto out;
    }
    if (r)
        r->live++; /* held while the clone works: see clone_fail */
    in_place = !kernel_copies(src);
    /*
     * The source's frames become the shared ones where they are; the source
     * moves to a fresh block, all holes.  In place, its populated runs keep
     * their mappings and the rest is mapped onto the new block; otherwise
     * it is mapped whole onto the new block and maps its former frames back
     * run by run, 2 MiB at a time (the most clone_run checks for raced
     * writes at once).  It is paused, so no vCPU sees the moment between.
     */
    src->base_mfn = new_base;
    rc = in_place ? 0 : mv__domain_map_own(src, 0, src->maxmem_pages);
    for (uint64_t g = 0; rc == 0 && g < src->maxmem_pages;) {
        enum mv__p2m_type t = (enum mv__p2m_type)src->p2m[g];
        uint64_t n = 1;

        while (g + n < src->maxmem_pages && src->p2m[g + n] == t &&
               (in_place || ((g + n) % MV_BLOCK_PAGES) != 0))
            n++;
        rc = clone_run(src, c, old_base, r, g, n, t, in_place);
        g += n;
    }
    if (rc < 0) {
        rc = clone_fail(src, c, r, old_base, new_base, rc);
        mv__mutex_unlock(&s->lock);
        goto out;
    }
    if (r && --r->live == 0)
        share_region_remove(host, r);
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
