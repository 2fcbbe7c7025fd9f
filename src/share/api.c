/*
 * api.c - the public sharing calls (mv_share_nominate, _pages,
 * _add_to_physmap, _unshare, _make_ro_and_share, _exclude, _stats), the
 * begin/end helpers that look a running domain up and lock it, the
 * per-domain and host statistics and metadata, and the sharing state's
 * life cycle (mv__share_init, mv__share_fini).
 *
 * Invariants:
 *   handles are never reused: 0 < frame.handle <= share.next_handle, so a
 *   stale or forged handle is told apart (-EINVAL, -ESTALE).
 *
 * Locking: begin takes the domain's lock (a paused domain is refused), the
 * calls take the share lock inside it; the source side of share and
 * add_to_physmap is checked under its own lock first (check_source).
 */
#include "share.h"

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
           (sd->hashes ? d->maxmem_pages * sizeof(*sd->hashes) : 0) +
           (sd->known ? (d->maxmem_pages + 63) / 64 * sizeof(uint64_t) : 0);
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
    b = sd->domain->p2m[gfn] == MV_P2M_SHARED ? share_dom_block(sd, gfn, false) : NULL;
    mfn = entry_mfn(b, gfn);
    f = mfn != MV_NO_MFN ? share_frame_of(s, mfn) : NULL;
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
    if (rc == 0 && share_settle_range(d, gfn, 1, false) == -EFAULT)
        rc = mv__fail(-EFAULT, "domain %u crashed: %s", domid, d->crash_reason);
    /* Only a page in memory, its own or shared, has bytes to nominate (a
     * paged-out one is touched back in first). */
    if (rc == 0 && d->p2m[gfn] != MV_P2M_RAM && d->p2m[gfn] != MV_P2M_SHARED)
        rc = mv__fail(-EINVAL, "domain %u gfn %#llx is %s: nothing to nominate", domid,
                      (unsigned long long)gfn,
                      d->p2m[gfn] == MV_P2M_POD         ? "not populated"
                      : d->p2m[gfn] == MV_P2M_BALLOONED ? "ballooned"
                                                        : "not in memory (paged out)");
    if (rc == 0 && d->p2m[gfn] == MV_P2M_RAM) {
        rc = mv__share_apply(d, gfn, 1, &action, &outcome, &res);
        if (rc == 0 && d->p2m[gfn] != MV_P2M_SHARED)
            rc = mv__fail(-EAGAIN, "domain %u gfn %#llx was written while nominated, "
                          "or sharing is stopped", domid, (unsigned long long)gfn);
    }
    if (rc == 0) {
        struct mv__share *s = host->share;

        mv__mutex_lock(&s->lock);
        *handle = share_frame_of(s, share_shared_mfn(d, gfn))->handle;
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
    if (gfn < src->maxmem_pages && share_settle_range(src, gfn, 1, false) == -EFAULT)
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
    a = share_thread_buffer();
    if (!a) {
        end(d);
        return mv__fail(-ENOMEM, "no memory to compare pages");
    }
    b = a + MV_PAGE_SIZE;
    rc = check_shareable(d, client_gfn);
    /* Its copy, if the kernel made one, is settled, and no other can be made
     * until it is remapped: its handle and bytes cannot change meanwhile. */
    if (rc == 0 && share_settle_range(d, client_gfn, 1, true) == -EFAULT)
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
        if (rc == 0 && !share_may_map(host, 2))
            rc = mv__fail(-ENOSPC, "sharing is stopped: %s", s->stop_reason);
        if (rc == 0) {
            int64_t done = share_convert_run(d, client_gfn, src_mfn, 1, FROM_SHARED, NULL);

            if (done < 0)
                rc = (int)done;
            else if (done == 0)
                rc = mv__fail(-EAGAIN, "domain %u gfn %#llx was written while being "
                              "shared", client_domid, (unsigned long long)client_gfn);
        }
    }
    mv__mutex_unlock(&s->lock);
    if (client_gfn < d->maxmem_pages)
        share_rearm_range(d, client_gfn, 1);
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
    if (rc == 0 && !share_may_map(host, 2))
        rc = mv__fail(-ENOSPC, "sharing is stopped: %s", s->stop_reason);
    if (rc == 0) {
        int64_t done = share_convert_run(d, client_gfn, mfn, 1, FROM_POD, NULL);

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
        rc = share_break_share(d, gfn);
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
    if (rc == 0 && share_settle_range(d, gfn, count, false) == -EFAULT)
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
        !(sd->excluded = mv__calloc((d->maxmem_pages + 63) / 64, sizeof(uint64_t))))
        rc = mv__fail(-ENOMEM, "no memory for the exclusion map");
    for (uint64_t g = gfn; rc == 0 && g < gfn + count; g++) {
        if (d->p2m[g] != MV_P2M_SHARED)
            continue;
        rc = share_break_share(d, g);
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

int mv_share_stats(mv_host *host, struct mv_share_stats *out)
{
    struct mv__share *s;
    uint64_t mappings = 0;
    int counted;

    mv__clear_error();
    if (!host || !out)
        return mv__fail(-EINVAL, "host and out must not be NULL");
    s = host->share;
    memset(out, 0, sizeof(*out));
    /* Reading the counters changes nothing and holds no lock a fault needs
     * for long: kernel copies are counted once settled, and the mappings
     * are counted before the share lock is taken. */
    counted = mv__os_count_mappings(&mappings);
    mv__mutex_lock(&s->lock);
    share_take_count(host, counted, mappings);
    /* Stopped stays stopped until sharing would get somewhere again. */
    share_recheck_stopped(host, MV_MAP_HARD_MARGIN);
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
    out->read_fallbacks = __atomic_load_n(&s->read_fallbacks, __ATOMIC_RELAXED);
    out->zero_in_guest = s->zero_in_guest;
    out->guest_read_fallbacks = __atomic_load_n(&s->guest_read_fallbacks, __ATOMIC_RELAXED);
    out->read_mode = s->read_mode;
    out->read_in_place_ns = s->read_in_place_ns;
    out->read_copy_ns = s->read_copy_ns;
    out->vma_count = s->vma_count;
    out->max_map_count = s->max_map_count;
    out->sharing_stopped = s->stopped;
    snprintf(out->stop_reason, sizeof(out->stop_reason), "%s", s->stop_reason);
    mv__mutex_unlock(&s->lock);
    mv__scanner_stats(host, out);
    return 0;
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

/* How this host reads pages: as configured, or for AUTO whichever way the
 * machine measured cheaper (in place on a tie: it also makes later passes
 * over the same pages free of system calls). */
static void share_read_choose(struct mv_host *h, struct mv__share *s)
{
    int rc;

    s->read_mode = h->config.share_read;
    s->guest_reads = s->read_mode == MV_SHARE_READ_AUTO;
    if (s->read_mode != MV_SHARE_READ_AUTO)
        return;
    rc = mv__machine_read_costs(&s->read_in_place_ns, &s->read_copy_ns);
    if (rc < 0) {
        mv__log(h, MV_LOG_WARN, "sharing: cannot measure what reading a page costs "
                "(%s); pages are copied out", mv_strerror(rc));
        s->read_mode = MV_SHARE_READ_COPY;
        return;
    }
    s->read_mode = s->read_in_place_ns <= s->read_copy_ns ? MV_SHARE_READ_IN_PLACE
                                                          : MV_SHARE_READ_COPY;
}

int mv__share_init(struct mv_host *h)
{
    struct mv__share *s = mv__calloc(1, sizeof(*s));

    if (!s)
        return mv__fail(-ENOMEM, "no memory for the sharing state");
    mv__mutex_init(&s->lock, MV_LOCK_SHARE);
    mv__mutex_init(&s->settler_lock, MV_LOCK_SETTLE);
    mv__cond_init(&s->settler_cond);
    s->max_map_count = share_read_sysctl_u64("/proc/sys/vm/max_map_count", 65530);
    share_read_choose(h, s);
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
        share_region_remove(h, s->regions[s->region_count - 1]);
    free(s->regions);
    free(s->buckets);
    free(s->registry);
    mv__mutex_destroy(&s->lock);
    free(s);
    h->share = NULL;
}
