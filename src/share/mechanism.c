/*
 * mechanism.c - what copy-on-write sharing plugs into the core: the
 * SHARED p2m type (its faults, release and reads), the host's sharing state
 * and scanner, and the events that make a domain's writes to shared pages
 * trap (paused, dirty log on) or that change its room for copies.
 *
 * Locking: as each hook's contract in internal.h says; the functions called
 * are the other files' of src/share/, with their own locking rules.
 */
#include "share.h"

#include <errno.h>

/* A missing fault on a gfn shared while it waited: the vCPU retries on the
 * new mapping. */
static int shared_fault(struct mv_domain *d, uint64_t gfn)
{
    return mv__fault_wake(d, false, gfn, 1);
}

/* A copy the kernel made is the gfn's bytes: settle it first. */
static int shared_frame(struct mv_domain *d, uint64_t gfn, uint64_t *mfn)
{
    if (mv__share_settle(d, gfn, 1) == -EFAULT)
        return -EFAULT;
    *mfn = d->p2m[gfn] == MV_P2M_SHARED ? mv__share_mfn(d, gfn) : d->base_mfn + gfn;
    return 0;
}

static const struct mv__p2m_ops shared_ops = {
    .present = true,
    .remapped = true,
    .fault = shared_fault,
    .remap_fault = mv__share_cow_fault,
    .release = mv__share_release,
    .frame = shared_frame,
};

static int share_host_init(struct mv_host *h)
{
    int rc = mv__share_init(h);

    return rc < 0 ? rc : mv__scanner_init(h);
}

static int share_pause(struct mv_domain *d)
{
    return mv__share_cow_trap(d, MV__COW_TRAP_PAUSED, true);
}

static void share_unpause(struct mv_domain *d)
{
    if (mv__share_cow_trap(d, MV__COW_TRAP_PAUSED, false) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: %s; its writes to shared pages trap",
                d->domid, mv_last_error());
}

static void share_room_changed(struct mv_domain *d)
{
    if (d->shared)
        mv__share_check_room(d);
}

/* The dirty log protects pages again without the scanner reading them: what
 * the scanner knew of which pages held still is void, either way. */
static int share_writes_watched(struct mv_domain *d, bool on)
{
    mv__share_forget(d, 0, d->maxmem_pages);
    return mv__share_cow_trap(d, MV__COW_TRAP_LOGDIRTY, on);
}

const struct mv__mechanism mv__share_mechanism = {
    .name = "copy-on-write sharing",
    .p2m_ops = { [MV_P2M_SHARED] = &shared_ops },
    .host_init = share_host_init,
    .host_stop = mv__scanner_fini,
    .host_fini = mv__share_fini,
    .host_settle = mv__share_settle_all,
    .host_frames = mv__share_frames,
    .host_metadata = mv__share_host_metadata,
    .host_audit = mv_share_audit,
    .domain_init = mv__share_domain_init,
    .domain_destroy = mv__share_domain_destroy,
    .domain_info = mv__share_domain_info,
    .domain_pause = share_pause,
    .domain_unpause = share_unpause,
    .room_changed = share_room_changed,
    .writes_watched = share_writes_watched,
    .pages_changed = mv__share_forget,
};
