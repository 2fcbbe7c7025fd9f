/*
 * domain.c - domains: the host's table of them, their life cycle, pause,
 * crash, the p2m and the balloon hypercalls, and the domain audit.
 *
 * A domain's RAM is one host virtual range, a MAP_SHARED mapping of its own
 * naturally aligned block of machine frames, so gfn -> mfn is base_mfn + gfn
 * and the whole RAM is a single VMA.  The range is registered with the
 * domain's userfaultfd for MISSING faults (first touch of a PoD entry) and
 * MINOR faults (a page the zero sweep took out of the page table).
 *
 * The p2m is one byte per gfn (enum mv__p2m_type) plus, per 2 MiB block, the
 * number of PoD entries in it, so "is this block all PoD" costs O(1).  A
 * shared gfn maps a frame owned by the host instead of its own; share.c
 * keeps which one.
 *   Invariants: populated + pod + ballooned + shared == maxmem;
 *               0 <= populated <= target <= maxmem;
 *               block_pod[b] == #PoD entries in block b.
 *
 * The host table is sorted by domid (ids are handed out in order, and after
 * they wrap the first free one is inserted in its place), so every call
 * that names a domain finds it by a binary search, not a walk of them all.
 *
 * Life cycle: a domain is reachable through the host table; every user
 * takes a reference (mv__domain_get).  Destroy removes it from the table
 * first, so no new user can find it, then poisons its RAM (SIGBUS for any
 * toucher), stops its vCPUs, and waits for the references in flight to drop
 * before it frees anything.
 *
 * Locking: host->domains_lock (rwlock) guards the table and is never held
 * while taking a domain lock for long; domain->lock guards the rest.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* references                                                               */

/* Where domid is or would go in the table (domains_lock held). */
static size_t table_index(const struct mv_host *host, uint32_t domid)
{
    size_t lo = 0, hi = host->domain_count;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (host->domains[mid]->domid < domid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct mv_domain *domain_find(struct mv_host *host, uint32_t domid,
                                     bool include_dying)
{
    struct mv_domain *found = NULL;
    size_t i;

    pthread_rwlock_rdlock(&host->domains_lock);
    i = table_index(host, domid);
    if (i < host->domain_count && host->domains[i]->domid == domid &&
        (include_dying || !atomic_load(&host->domains[i]->dying))) {
        found = host->domains[i];
        atomic_fetch_add(&found->refs, 1);
    }
    pthread_rwlock_unlock(&host->domains_lock);
    return found;
}

struct mv_domain *mv__domain_get(struct mv_host *host, uint32_t domid)
{
    struct mv_domain *d = domain_find(host, domid, false);

    if (!d)
        mv__fail(-ESRCH, "no domain with id %u", domid);
    return d;
}

struct mv_domain *mv__domain_get_any(struct mv_host *host, uint32_t domid)
{
    return domain_find(host, domid, true);
}

struct mv_domain *mv__domain_get_from(struct mv_host *host, uint32_t domid)
{
    struct mv_domain *found = NULL;

    pthread_rwlock_rdlock(&host->domains_lock);
    for (size_t i = table_index(host, domid); !found && i < host->domain_count; i++) {
        if (atomic_load(&host->domains[i]->dying))
            continue;
        found = host->domains[i];
        atomic_fetch_add(&found->refs, 1);
    }
    pthread_rwlock_unlock(&host->domains_lock);
    return found;
}

void mv__domain_put(struct mv_domain *d)
{
    int refs = atomic_load(&d->refs);

    /* Not the last user but one: nobody can be waiting for this. */
    while (refs > 2)
        if (atomic_compare_exchange_weak(&d->refs, &refs, refs - 1))
            return;
    /*
     * Possibly the last user, with a destroyer waiting.  It checks the
     * count under the lock, so dropping the reference under the lock too
     * keeps it from freeing the domain before this thread is done with it.
     */
    mv__mutex_lock(&d->lock);
    if (atomic_fetch_sub(&d->refs, 1) == 2)
        pthread_cond_broadcast(&d->refs_cond);
    mv__mutex_unlock(&d->lock);
}

/* Wait until the caller's reference to a domain taken out of the table is
 * the only one left. */
static void wait_for_users(struct mv_domain *d)
{
    mv__mutex_lock(&d->lock);
    while (atomic_load(&d->refs) > 1)
        mv__cond_wait(&d->refs_cond, &d->lock, 0);
    mv__mutex_unlock(&d->lock);
}

int mv__domain_table_audit(struct mv_host *host)
{
    int rc = 0;

    pthread_rwlock_rdlock(&host->domains_lock);
    for (size_t i = 0; rc == 0 && i < host->domain_count; i++) {
        uint32_t id = host->domains[i]->domid;

        if (id == 0 || id == UINT32_MAX ||
            (i > 0 && host->domains[i - 1]->domid >= id))
            rc = mv__fail(-EUCLEAN, "the domain table is out of order at %zu (id %u)",
                          i, id);
    }
    pthread_rwlock_unlock(&host->domains_lock);
    return rc;
}

int mv__domain_get_all(struct mv_host *host, struct mv_domain ***out, size_t *count)
{
    struct mv_domain **all;
    size_t n, slots;

    pthread_rwlock_rdlock(&host->domains_lock);
    slots = host->domain_count ? host->domain_count : 1;
    all = mv__os_injected(MV_OS_DOMAIN_LIST) ? NULL : mv__calloc(slots, sizeof(*all));
    if (!all) {
        pthread_rwlock_unlock(&host->domains_lock);
        *out = NULL;
        *count = 0;
        return mv__fail(-ENOMEM, "no memory to list the host's %zu domains", slots);
    }
    n = 0;
    for (size_t i = 0; i < host->domain_count; i++) {
        if (atomic_load(&host->domains[i]->dying))
            continue;
        all[n] = host->domains[i];
        atomic_fetch_add(&all[n++]->refs, 1);
    }
    pthread_rwlock_unlock(&host->domains_lock);
    *out = all;
    *count = n;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* p2m                                                                      */

static uint64_t *type_counter(struct mv_domain *d, enum mv__p2m_type type)
{
    switch (type) {
    case MV_P2M_RAM:
        return &d->populated;
    case MV_P2M_POD:
        return &d->pod;
    case MV_P2M_BALLOONED:
        break;
    case MV_P2M_SHARED:
        return &d->shared;
    case MV_P2M_PAGED:
        return &d->paged;
    }
    return &d->ballooned;
}

void mv__p2m_set(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type)
{
    enum mv__p2m_type old = (enum mv__p2m_type)d->p2m[gfn];

    if (old == type)
        return;
    (*type_counter(d, old))--;
    (*type_counter(d, type))++;
    if (old == MV_P2M_POD)
        d->block_pod[gfn / MV_BLOCK_PAGES]--;
    if (type == MV_P2M_POD)
        d->block_pod[gfn / MV_BLOCK_PAGES]++;
    d->p2m[gfn] = (uint8_t)type;
}

void mv__p2m_set_range(struct mv_domain *d, uint64_t gfn, uint64_t n, enum mv__p2m_type type)
{
    /* A run of one old type within one block at a time: counters once. */
    for (uint64_t g = gfn, end = gfn + n; g < end;) {
        enum mv__p2m_type old = (enum mv__p2m_type)d->p2m[g];
        uint64_t block_end = MV_MIN(end, (g / MV_BLOCK_PAGES + 1) * MV_BLOCK_PAGES), k = 1;

        while (g + k < block_end && d->p2m[g + k] == old)
            k++;
        if (old != type) {
            *type_counter(d, old) -= k;
            *type_counter(d, type) += k;
            if (old == MV_P2M_POD)
                d->block_pod[g / MV_BLOCK_PAGES] -= k;
            if (type == MV_P2M_POD)
                d->block_pod[g / MV_BLOCK_PAGES] += k;
            memset(&d->p2m[g], type, k);
        }
        g += k;
    }
}

/* ------------------------------------------------------------------------ */
/* crash                                                                    */

void mv__domain_crash(struct mv_domain *d, const char *fmt, ...)
{
    va_list ap;

    mv__assert_held(&d->lock);
    if (d->state == MV_DOMAIN_CRASHED || d->dying)
        return;
    va_start(ap, fmt);
    vsnprintf(d->crash_reason, sizeof(d->crash_reason), fmt, ap);
    va_end(ap);
    d->state = MV_DOMAIN_CRASHED;
    mv__log(d->host, MV_LOG_ERROR, "domain %u (%s) crashed: %s", d->domid,
            d->config.name, d->crash_reason);
    /* A call that returns -EFAULT for the crash says why. */
    mv__fail(-EFAULT, "domain %u crashed: %s", d->domid, d->crash_reason);
    mv__ram_poison(d);
}

/* ------------------------------------------------------------------------ */
/* create / destroy                                                         */

void mv_domain_config_init(struct mv_domain_config *config)
{
    memset(config, 0, sizeof(*config));
    config->vcpus = 1;
    config->pod_policy = MV_POD_WAIT;
    config->wait_timeout_ms = MV_WAIT_TIMEOUT_DEFAULT_MS;
    config->pod_block_populate = 1;
}

static int validate_config(const struct mv_domain_config *c)
{
    size_t len = strnlen(c->name, MV_NAME_MAX);

    if (len == 0)
        return mv__fail(-EINVAL, "domain name is empty");
    if (len == MV_NAME_MAX)
        return mv__fail(-EINVAL, "domain name is longer than %d bytes",
                        MV_NAME_MAX - 1);
    for (size_t i = 0; i < len; i++)
        if (c->name[i] <= ' ' || c->name[i] == 0x7f)
            return mv__fail(-EINVAL, "domain name has a space or control "
                            "character at byte %zu", i);
    if (c->maxmem_bytes == 0 || c->maxmem_bytes % MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "maxmem %llu is not a positive multiple of %u",
                        (unsigned long long)c->maxmem_bytes, MV_PAGE_SIZE);
    if (c->target_bytes % MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "target %llu is not a multiple of %u",
                        (unsigned long long)c->target_bytes, MV_PAGE_SIZE);
    if (c->target_bytes > c->maxmem_bytes)
        return mv__fail(-EINVAL, "target %llu MiB exceeds maxmem %llu MiB",
                        (unsigned long long)(c->target_bytes / MV_MIB),
                        (unsigned long long)(c->maxmem_bytes / MV_MIB));
    if (c->vcpus == 0 || c->vcpus > MV_MAX_VCPUS)
        return mv__fail(-EINVAL, "vcpus %u is outside 1..%u", c->vcpus, MV_MAX_VCPUS);
    if (c->pod_policy != MV_POD_WAIT && c->pod_policy != MV_POD_CRASH)
        return mv__fail(-EINVAL, "unknown PoD policy %d", (int)c->pod_policy);
    if (c->pod_fault_around > MV_POD_FAULT_AROUND_MAX)
        return mv__fail(-EINVAL, "pod_fault_around %u is above %u pages",
                        c->pod_fault_around, MV_POD_FAULT_AROUND_MAX);
    if (c->cow_mode != MV_COW_TRAP && c->cow_mode != MV_COW_KERNEL)
        return mv__fail(-EINVAL, "cow_mode %d is not MV_COW_TRAP or MV_COW_KERNEL",
                        (int)c->cow_mode);
    return 0;
}

/* Map the domain's frames -- here at a 2 MiB-aligned address, so that gfn
 * blocks line up with huge page boundaries, or where the VMM reserved them
 * -- and register them with the domain's userfaultfd. */
static int map_ram(struct mv_domain *d)
{
    size_t length = d->maxmem_pages << MV_PAGE_SHIFT;
    size_t align = (size_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT;
    uint64_t ioctls = 0;
    int rc;

    if (!d->vmm) {
        d->ram = mv__os_reserve_aligned(length, align);
        if (!d->ram)
            return mv__fail(-errno, "cannot reserve %zu bytes of address space: %s",
                            length + align, mv_strerror(-errno));
    }
    rc = mv__ram_map(d, 0, d->maxmem_pages, d->base_mfn << MV_PAGE_SHIFT, false);
    if (rc < 0)
        return mv__fail(rc, "cannot map guest RAM: %s", mv_strerror(rc));
    rc = mv__os_uffd_register(d->uffd, d->ram, length, d->register_modes, &ioctls);
    if (rc < 0)
        return mv__fail(rc, "cannot register guest RAM with userfaultfd: %s",
                        mv_strerror(rc));
    if (!(ioctls & (1ull << _UFFDIO_ZEROPAGE)) ||
        !(ioctls & (1ull << _UFFDIO_CONTINUE)) || !(ioctls & (1ull << _UFFDIO_WAKE)))
        return mv__fail(-EOPNOTSUPP, "userfaultfd on shmem lacks ZEROPAGE, "
                        "CONTINUE or WAKE (ioctls 0x%llx; needs Linux 5.14)",
                        (unsigned long long)ioctls);
    return 0;
}

/* Free everything a domain holds (it is out of the table, unreferenced). */
static void domain_free(struct mv_domain *d)
{
    struct mv_host *h = d->host;

    /* No SIGBUS handler may find it from here on. */
    mv__vcpu_domain_release(d);
    /* In reverse: the last set up goes first, all before the RAM goes (a
     * signal handler may still look at it). */
    for (size_t i = mv__mechanism_count; i-- > 0;)
        if (mv__mechanisms[i]->domain_destroy)
            mv__mechanisms[i]->domain_destroy(d);
    mv__ram_fini(d);
    if (d->uffd >= 0)
        close(d->uffd);
    if (d->cow_uffd >= 0)
        close(d->cow_uffd);
    if (d->frame_pages) {
        if (mv__machine_release(&h->machine, d->base_mfn, d->frame_pages, d->populated,
                                MV__RELEASE_SCRUB | MV__RELEASE_GIVE_BACK) < 0)
            mv__log(h, MV_LOG_ERROR, "domain %u destroyed: %s", d->domid,
                    mv_last_error());
        mv__fault_kick(h);
    }
    free(d->held);
    free(d->block_pod);
    free(d->p2m);
    pthread_cond_destroy(&d->refs_cond);
    mv__mutex_destroy(&d->lock);
    free(d);
}

static int domain_init(struct mv_host *h, struct mv_domain *d,
                       const struct mv_domain_config *config, struct mv__vmm *vmm,
                       uint64_t vmm_addr)
{
    uint64_t blocks, uffd_features = 0, register_modes = 0;
    int rc;

    d->host = h;
    d->config = *config;
    if (!d->config.pod_fault_around)
        d->config.pod_fault_around = MV_POD_FAULT_AROUND_DEFAULT;
    d->vmm = vmm;
    if (vmm)
        d->ram = (uint8_t *)(uintptr_t)vmm_addr;
    d->uffd = -1;
    d->cow_uffd = -1;
    d->sigbus_slot = -1;
    atomic_init(&d->refs, 1);
    mv__mutex_init(&d->lock, MV_LOCK_DOMAIN);
    mv__cond_init(&d->refs_cond);
    d->state = MV_DOMAIN_RUNNING;
    d->maxmem_pages = config->maxmem_bytes >> MV_PAGE_SHIFT;
    d->target_pages = config->target_bytes >> MV_PAGE_SHIFT;
    d->pod = d->maxmem_pages;
    blocks = (d->maxmem_pages + MV_BLOCK_PAGES - 1) / MV_BLOCK_PAGES;
    /* Before the p2m: a maxmem the machine cannot hold is E2BIG, not a
     * failed allocation of its tables. */
    rc = mv__machine_fits(&h->machine, blocks * MV_BLOCK_PAGES);
    if (rc < 0)
        return rc;
    d->p2m = mv__malloc(d->maxmem_pages);
    d->block_pod = mv__calloc(blocks, sizeof(*d->block_pod));
    if (!d->p2m || !d->block_pod)
        return mv__fail(-ENOMEM, "no memory for a p2m of %llu entries",
                        (unsigned long long)d->maxmem_pages);
    memset(d->p2m, MV_P2M_POD, d->maxmem_pages);
    for (uint64_t b = 0; b < blocks; b++)
        d->block_pod[b] = (uint16_t)MV_MIN(MV_BLOCK_PAGES,
                                           d->maxmem_pages - b * MV_BLOCK_PAGES);

    d->frame_pages = blocks * MV_BLOCK_PAGES;
    rc = mv__machine_alloc(&h->machine, d->frame_pages, &d->base_mfn);
    if (rc < 0) {
        d->frame_pages = 0;
        return rc;
    }
    mv__each_mechanism(m)
        if (m->domain_traps && (rc = m->domain_traps(d, &uffd_features, &register_modes)) < 0)
            return rc;
    /* Faults resolved in the faulting thread raise SIGBUS there; a write
     * fault of synchronous write protection would too, and could not be
     * told from a missing page: such domains keep the fault threads.  A
     * mechanism may register for write protection later (at its first
     * use), so asking the write-protect feature counts as registering. */
    if (!(((register_modes & UFFDIO_REGISTER_MODE_WP) ||
           (uffd_features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) &&
          !(uffd_features & UFFD_FEATURE_WP_ASYNC)) && mv__vcpu_domain_claim(d)) {
        d->in_thread = true;
        uffd_features |= UFFD_FEATURE_SIGBUS;
    }
    d->uffd_features = uffd_features;
    d->uffd = mv__ram_uffd(d, uffd_features);
    if (d->uffd < 0)
        return d->uffd;
    d->register_modes = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR |
                        register_modes;
    rc = map_ram(d);
    if (rc < 0)
        return rc;
    mv__vcpu_domain_publish(d);
    mv__each_mechanism(m)
        if (m->domain_init && (rc = m->domain_init(d)) < 0)
            return rc;
    return 0;
}

static int table_insert(struct mv_host *h, struct mv_domain *d)
{
    uint32_t id;
    size_t i;
    int rc = 0;

    pthread_rwlock_wrlock(&h->domains_lock);
    for (i = 0; i < h->domain_count; i++) {
        if (strcmp(h->domains[i]->config.name, d->config.name) == 0) {
            rc = mv__fail(-EEXIST, "a domain named '%s' exists (id %u)",
                          d->config.name, h->domains[i]->domid);
            goto out;
        }
    }
    if (h->domain_count == h->domain_capacity) {
        size_t cap = h->domain_capacity ? h->domain_capacity * 2 : 16;
        struct mv_domain **n = mv__realloc(h->domains, cap * sizeof(*n));

        if (!n) {
            rc = mv__fail(-ENOMEM, "no memory for the domain table");
            goto out;
        }
        h->domains = n;
        h->domain_capacity = cap;
    }
    /* The next id, past the ends (0 is no domain's, UINT32_MAX the host's)
     * and past ids still in use once they wrapped. */
    for (id = h->next_domid;; id++) {
        if (id == 0 || id == UINT32_MAX)
            id = 1;
        i = table_index(h, id);
        if (i == h->domain_count || h->domains[i]->domid != id)
            break;
    }
    d->domid = id;
    h->next_domid = id + 1;
    memmove(&h->domains[i + 1], &h->domains[i], (h->domain_count - i) * sizeof(h->domains[0]));
    h->domains[i] = d;
    h->domain_count++;
out:
    pthread_rwlock_unlock(&h->domains_lock);
    return rc;
}

static struct mv_domain *table_remove(struct mv_host *h, uint32_t domid)
{
    struct mv_domain *d = NULL;
    size_t i;

    pthread_rwlock_wrlock(&h->domains_lock);
    i = table_index(h, domid);
    if (i < h->domain_count && h->domains[i]->domid == domid) {
        d = h->domains[i];
        /* Closing the gap keeps the table sorted. */
        memmove(&h->domains[i], &h->domains[i + 1],
                (h->domain_count - i - 1) * sizeof(h->domains[0]));
        h->domain_count--;
    }
    pthread_rwlock_unlock(&h->domains_lock);
    return d;
}

/* Free a domain that failed half-way, keeping the reason: tearing down may
 * overwrite the message. */
static int discard_failed(struct mv_domain *d, int rc)
{
    char why[256];

    snprintf(why, sizeof(why), "%s", mv_last_error());
    domain_free(d);
    return mv__fail(rc, "%s", why);
}

/* Build a domain; its RAM in the VMM `vmm` (owned from now on) when set. */
static int domain_new(struct mv_host *host, const struct mv_domain_config *config,
                      struct mv__vmm *vmm, uint64_t vmm_addr, struct mv_domain **out)
{
    struct mv_domain *d = NULL;
    int rc = validate_config(config);

    if (rc == 0 && !(d = mv__calloc(1, sizeof(*d))))
        rc = mv__fail(-ENOMEM, "no memory for a domain");
    if (rc < 0) {
        mv__ram_vmm_free(vmm);
        return rc;
    }
    rc = domain_init(host, d, config, vmm, vmm_addr);
    if (rc < 0)
        return discard_failed(d, rc);
    *out = d;
    return 0;
}

int mv__domain_new(struct mv_host *host, const struct mv_domain_config *config,
                   struct mv_domain **out)
{
    return domain_new(host, config, NULL, 0, out);
}

int mv__domain_publish(struct mv_host *host, struct mv_domain *d)
{
    int rc = table_insert(host, d);

    if (rc == 0) {
        rc = mv__fault_add_domain(host, d);
        if (rc < 0) {
            /* Others may have found it in the table meanwhile. */
            atomic_store(&d->dying, true);
            table_remove(host, d->domid); /* its reference is ours again */
            wait_for_users(d);
        }
    }
    return rc < 0 ? discard_failed(d, rc) : 0;
}

void mv__domain_discard(struct mv_domain *d)
{
    domain_free(d);
}

int mv__domain_map_own(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    uint8_t *at = mv__gfn_addr(d, gfn);
    int rc = mv__ram_map(d, gfn, n, (d->base_mfn + gfn) << MV_PAGE_SHIFT, false);

    if (rc < 0)
        return mv__fail(rc, "domain %u: cannot map gfn %#llx+%llu to its own "
                        "frames: %s", d->domid, (unsigned long long)gfn,
                        (unsigned long long)n, mv_strerror(rc));
    rc = mv__os_uffd_register(d->uffd, at, n << MV_PAGE_SHIFT, d->register_modes, NULL);
    if (rc < 0)
        return mv__fail(rc, "domain %u: cannot register gfn %#llx+%llu with its "
                        "userfaultfd: %s", d->domid, (unsigned long long)gfn,
                        (unsigned long long)n, mv_strerror(rc));
    return 0;
}

int mv__domain_register_modes(struct mv_domain *d, uint64_t modes)
{
    uint64_t all = d->register_modes | modes;

    mv__assert_held(&d->lock);
    if (d->register_modes == all)
        return 0;
    for (uint64_t g = 0; g < d->maxmem_pages;) {
        uint64_t end = g;
        int rc;

        if (mv__p2m_ops_of(d->p2m[g])->remapped) {
            g++;
            continue;
        }
        while (end < d->maxmem_pages && !mv__p2m_ops_of(d->p2m[end])->remapped)
            end++;
        rc = mv__os_uffd_register(d->uffd, mv__gfn_addr(d, g), (end - g) << MV_PAGE_SHIFT,
                                  all, NULL);
        if (rc < 0)
            return mv__fail(rc, "domain %u: cannot register gfn %#llx+%llu for "
                            "write protection: %s", d->domid, (unsigned long long)g,
                            (unsigned long long)(end - g), mv_strerror(rc));
        g = end;
    }
    d->register_modes = all;
    return 0;
}

static int create_and_publish(mv_host *host, const struct mv_domain_config *config,
                              struct mv__vmm *vmm, uint64_t vmm_addr, uint32_t *domid)
{
    struct mv_domain *d;
    int rc = domain_new(host, config, vmm, vmm_addr, &d);

    if (rc < 0)
        return rc;
    rc = mv__domain_publish(host, d);
    if (rc < 0)
        return rc;
    *domid = d->domid;
    mv__log(host, MV_LOG_INFO, "domain %u (%s) created: maxmem %llu MiB, "
            "target %llu MiB, %u vCPUs%s", d->domid, d->config.name,
            (unsigned long long)(config->maxmem_bytes / MV_MIB),
            (unsigned long long)(config->target_bytes / MV_MIB), config->vcpus,
            vmm ? ", RAM in a VMM" : "");
    return 0;
}

int mv_domain_create(mv_host *host, const struct mv_domain_config *config,
                     uint32_t *domid)
{
    mv__clear_error();
    if (!host || !config || !domid)
        return mv__fail(-EINVAL, "host, config and domid must not be NULL");
    return create_and_publish(host, config, NULL, 0, domid);
}

static void close_handed_over(const struct mv_vmm_ram *vmm)
{
    int fds[] = { vmm->uffd, vmm->wp_uffd, vmm->pagemap_fd };

    for (size_t i = 0; i < MV_ARRAY_SIZE(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static int check_vmm(const struct mv_domain_config *config, const struct mv_vmm_ram *vmm)
{
    if (vmm->uffd < 0 || vmm->wp_uffd < 0 || vmm->pagemap_fd < 0 ||
        vmm->uffd == vmm->wp_uffd)
        return mv__fail(-EINVAL, "a VMM hands over two userfaultfds and its "
                        "pagemap (got fds %d, %d, %d)", vmm->uffd, vmm->wp_uffd,
                        vmm->pagemap_fd);
    if (!vmm->ops.map || !vmm->ops.zap || !vmm->ops.crash)
        return mv__fail(-EINVAL, "the VMM's map, zap and crash operations are "
                        "required");
    if (vmm->pid <= 0)
        return mv__fail(-EINVAL, "VMM pid %d is not a process", vmm->pid);
    /* Any page will do; 2 MiB alignment only lets the kernel use huge
     * pages, which the machine file does not have. */
    if (!vmm->addr || vmm->addr % MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "the VMM's RAM address %#llx is not page-aligned",
                        (unsigned long long)vmm->addr);
    if (config->logdirty_mode == MV_LOGDIRTY_MPROTECT)
        return mv__fail(-EOPNOTSUPP, "mprotect dirty logging needs the RAM in "
                        "this process; a VMM's RAM logs with wp-async or wp-sync");
    if (config->cow_mode == MV_COW_KERNEL)
        return mv__fail(-EOPNOTSUPP, "kernel-copy sharing needs the RAM in this "
                        "process; a VMM's RAM shares in trap mode");
    return 0;
}

int mv_domain_create_vmm(mv_host *host, const struct mv_domain_config *config,
                         const struct mv_vmm_ram *vmm, uint32_t *domid)
{
    return mv__domain_create_vmm(host, config, vmm, NULL, domid);
}

int mv__domain_create_vmm(mv_host *host, const struct mv_domain_config *config,
                          const struct mv_vmm_ram *vmm, mv__vmm_batch_fn batch,
                          uint32_t *domid)
{
    struct mv__vmm *v = NULL;
    uint64_t d_ram_addr;
    int rc;

    mv__clear_error();
    if (!vmm)
        return mv__fail(-EINVAL, "vmm must not be NULL");
    rc = !host || !config || !domid
             ? mv__fail(-EINVAL, "host, config and domid must not be NULL")
             : check_vmm(config, vmm);
    if (rc == 0 && !(v = mv__calloc(1, sizeof(*v))))
        rc = mv__fail(-ENOMEM, "no memory for a VMM's record");
    if (rc < 0) {
        close_handed_over(vmm);
        if (vmm->ops.release)
            vmm->ops.release(vmm->ctx);
        return rc;
    }
    v->pid = vmm->pid;
    v->ops = vmm->ops;
    v->batch = batch;
    v->ctx = vmm->ctx;
    v->pagemap_fd = vmm->pagemap_fd;
    v->uffds[0] = vmm->uffd;
    v->uffds[1] = vmm->wp_uffd;
    d_ram_addr = vmm->addr;
    rc = create_and_publish(host, config, v, d_ram_addr, domid);
    return rc;
}

/*
 * Destroy in an order that never leaves a thread stuck or a pointer dangling:
 * mark it dying (lookups fail from here on, the fault service only wakes its
 * faults), poison its RAM so every toucher takes SIGBUS, stop the vCPUs,
 * take its userfaultfd out of the fault service, drop it from the table, and
 * wait for the references still in flight.
 */
int mv_domain_destroy(mv_host *host, uint32_t domid)
{
    struct mv_domain *d;
    bool already;

    mv__clear_error();
    d = mv__domain_get(host, domid);
    if (!d)
        return -ESRCH;
    mv__mutex_lock(&d->lock);
    already = atomic_exchange(&d->dying, true);
    if (!already && d->state != MV_DOMAIN_CRASHED) {
        snprintf(d->crash_reason, sizeof(d->crash_reason), "destroyed");
        mv__ram_poison(d);
    }
    mv__mutex_unlock(&d->lock);
    if (already) {
        mv__domain_put(d);
        return mv__fail(-ESRCH, "domain %u is being destroyed", domid);
    }
    mv__each_mechanism(m)
        if (m->domain_stop)
            m->domain_stop(d);
    mv__fault_remove_domain(host, d);
    atomic_fetch_add(&host->domains_dying, 1); /* audits: not a quiet view */
    table_remove(host, domid);
    atomic_fetch_sub(&d->refs, 1); /* the table's reference; ours remains */
    wait_for_users(d);
    mv__log(host, MV_LOG_INFO, "domain %u (%s) destroyed", domid, d->config.name);
    domain_free(d);
    atomic_fetch_sub(&host->domains_dying, 1);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* queries                                                                  */

int mv_domain_lookup(mv_host *host, const char *name, uint32_t *domid)
{
    int rc = -ESRCH;

    mv__clear_error();
    pthread_rwlock_rdlock(&host->domains_lock);
    for (size_t i = 0; i < host->domain_count; i++) {
        if (strcmp(host->domains[i]->config.name, name) == 0) {
            *domid = host->domains[i]->domid;
            rc = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&host->domains_lock);
    if (rc < 0)
        return mv__fail(rc, "no domain named '%s'", name);
    return 0;
}

static int compare_domid(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

int mv_domain_list(mv_host *host, uint32_t *ids, size_t capacity)
{
    size_t n;

    mv__clear_error();
    pthread_rwlock_rdlock(&host->domains_lock);
    n = host->domain_count;
    for (size_t i = 0; ids && i < n && i < capacity; i++)
        ids[i] = host->domains[i]->domid;
    pthread_rwlock_unlock(&host->domains_lock);
    if (ids && capacity)
        qsort(ids, MV_MIN(n, capacity), sizeof(*ids), compare_domid);
    return (int)n;
}

int mv_domain_ram(mv_host *host, uint32_t domid, void **ram, uint64_t *size)
{
    struct mv_domain *d = mv__domain_get(host, domid);

    if (!d)
        return -ESRCH;
    if (d->vmm) {
        int pid = d->vmm->pid;

        mv__domain_put(d);
        return mv__fail(-EREMOTE, "domain %u's RAM is mapped in VMM process %d, "
                        "not here", domid, pid);
    }
    *ram = d->ram;
    *size = d->maxmem_pages << MV_PAGE_SHIFT;
    mv__domain_put(d);
    return 0;
}

int mv_domain_info(mv_host *host, uint32_t domid, struct mv_domain_info *out)
{
    struct mv_domain *d = mv__domain_get(host, domid);

    if (!d)
        return -ESRCH;
    memset(out, 0, sizeof(*out));
    mv__mutex_lock(&d->lock);
    out->domid = d->domid;
    snprintf(out->name, sizeof(out->name), "%s", d->config.name);
    out->state = d->state;
    out->pod_policy = d->config.pod_policy;
    out->vcpus = d->config.vcpus;
    out->maxmem_pages = d->maxmem_pages;
    out->target_pages = d->target_pages;
    out->populated_pages = d->populated;
    out->pod_pages = d->pod;
    out->ballooned_pages = d->ballooned;
    out->faults = d->faults;
    out->faults_in_thread = d->faults_in_thread;
    out->fault_in_thread = d->in_thread;
    out->populated_4k = d->populated_4k;
    out->populated_2m = d->populated_2m;
    out->sweeps = d->sweeps;
    out->sweep_scanned = d->sweep_scanned;
    out->reclaimed_zero = d->reclaimed_zero;
    out->pod_waits = d->pod_waits;
    out->pod_wait_ns = d->pod_wait_ns;
    out->held_faults = d->held_count;
    out->shared_pages = d->shared;
    out->paged_pages = d->paged;
    out->metadata_bytes = sizeof(*d) + d->maxmem_pages * sizeof(*d->p2m) +
        (d->maxmem_pages + MV_BLOCK_PAGES - 1) / MV_BLOCK_PAGES * sizeof(*d->block_pod) +
        d->held_capacity * sizeof(*d->held);
    mv__each_mechanism(m)
        if (m->domain_info)
            m->domain_info(d, out);
    snprintf(out->crash_reason, sizeof(out->crash_reason), "%s", d->crash_reason);
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return 0;
}

int mv__domain_check_gfn(struct mv_domain *d, uint64_t gfn)
{
    if (gfn >= d->maxmem_pages)
        return mv__fail(-EINVAL, "gfn %#llx is past maxmem (%llu pages)",
                        (unsigned long long)gfn, (unsigned long long)d->maxmem_pages);
    return 0;
}

/* The frame holding gfn's bytes now, from the owner of its p2m type (lock
 * held). */
static int page_frame(struct mv_domain *d, uint64_t gfn, uint64_t *mfn)
{
    return mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn])->frame(d, gfn, mfn);
}

int mv_domain_page_type(mv_host *host, uint32_t domid, uint64_t gfn,
                        enum mv_page_type *type)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    uint64_t mfn;
    int rc;

    if (!d)
        return -ESRCH;
    mv__mutex_lock(&d->lock);
    rc = mv__domain_check_gfn(d, gfn);
    /* Its owner brings the gfn up to date first (a remapped page the kernel
     * copied on a write is the domain's own now). */
    if (rc == 0 && page_frame(d, gfn, &mfn) == -EFAULT)
        rc = mv__fail(-EPERM, "domain %u crashed: %s", domid, d->crash_reason);
    if (rc == 0)
        *type = (enum mv_page_type)d->p2m[gfn];
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return rc;
}

int mv_domain_read_page(mv_host *host, uint32_t domid, uint64_t gfn, void *buf)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    const struct mv__p2m_ops *ops;
    uint64_t mfn;
    int rc;

    if (!d)
        return -ESRCH;
    mv__mutex_lock(&d->lock);
    rc = mv__domain_check_gfn(d, gfn);
    ops = rc == 0 ? mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn]) : NULL;
    if (ops && ops->read && d->state != MV_DOMAIN_CRASHED) {
        rc = ops->read(d, gfn, buf);
        goto out;
    }
    if (rc == 0)
        rc = page_frame(d, gfn, &mfn);
    if (rc == -ENODATA)
        rc = mv__fail(-ENODATA, "gfn %#llx is ballooned out", (unsigned long long)gfn);
    else if (rc == -EFAULT)
        rc = mv__fail(-EPERM, "domain %u crashed: %s", domid, d->crash_reason);
    else if (rc == 0 && mfn == MV_NO_FRAME)
        memset(buf, 0, MV_PAGE_SIZE);
    else if (rc == 0)
        rc = mv__machine_read(&host->machine, mfn, 1, buf);
out:
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* pause                                                                    */

#define MV_PAUSE_TIMEOUT_MS 5000u

int mv_domain_pause(mv_host *host, uint32_t domid)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    int rc = 0;

    if (!d)
        return -ESRCH;
    mv__clear_error();
    mv__mutex_lock(&d->lock);
    if (d->state == MV_DOMAIN_CRASHED)
        rc = mv__fail(-EPERM, "domain %u has crashed: %s", domid, d->crash_reason);
    else if (d->state == MV_DOMAIN_PAUSED)
        rc = mv__fail(-EALREADY, "domain %u is already paused", domid);
    else
        d->state = MV_DOMAIN_PAUSED; /* from now on faults are held */
    /* Mechanisms whose writes bypass the fault service stop them now. */
    mv__each_mechanism(m)
        if (rc == 0 && m->domain_pause && m->domain_pause(d) < 0)
            rc = mv__fail(-EPERM, "domain %u crashed while pausing: %s", domid,
                          d->crash_reason);
    mv__mutex_unlock(&d->lock);
    mv__each_mechanism(m)
        if (rc == 0 && m->domain_park)
            rc = m->domain_park(d, MV_PAUSE_TIMEOUT_MS);
    mv__domain_put(d);
    return rc;
}

int mv_domain_unpause(mv_host *host, uint32_t domid)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    int rc = 0;

    if (!d)
        return -ESRCH;
    mv__clear_error();
    mv__mutex_lock(&d->lock);
    if (d->state != MV_DOMAIN_PAUSED)
        rc = mv__fail(-EINVAL, "domain %u is not paused", domid);
    else
        d->state = MV_DOMAIN_RUNNING;
    mv__each_mechanism(m)
        if (rc == 0 && m->domain_unpause)
            m->domain_unpause(d);
    mv__mutex_unlock(&d->lock);
    if (rc == 0) {
        mv__each_mechanism(m)
            if (m->domain_unpark)
                m->domain_unpark(d);
        mv__fault_kick(host);
    }
    mv__domain_put(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* live-domain locking                                                      */

int mv__domain_lock_live(struct mv_host *host, uint32_t domid, struct mv_domain **out)
{
    struct mv_domain *d = mv__domain_get(host, domid);

    if (!d)
        return -ESRCH;
    mv__mutex_lock(&d->lock);
    if (d->state == MV_DOMAIN_CRASHED) {
        mv__domain_unlock_put(d);
        return mv__fail(-EPERM, "domain %u has crashed", domid);
    }
    *out = d;
    return 0;
}

void mv__domain_unlock_put(struct mv_domain *d)
{
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
}

/* ------------------------------------------------------------------------ */
/* audit                                                                    */

static int audit_locked(struct mv_domain *d)
{
    uint64_t count[MV_P2M_TYPES] = { 0 };
    uint8_t *resident;
    int rc;

    if (!(d->populated <= d->target_pages && d->target_pages <= d->maxmem_pages))
        return mv__fail(-EUCLEAN, "domain %u: 0 <= populated %llu <= target %llu "
                        "<= maxmem %llu does not hold", d->domid,
                        (unsigned long long)d->populated,
                        (unsigned long long)d->target_pages,
                        (unsigned long long)d->maxmem_pages);
    resident = mv__malloc(d->frame_pages);
    if (!resident)
        return mv__fail(-ENOMEM, "audit: no memory");
    rc = d->state == MV_DOMAIN_CRASHED ? 0 :
         mv__machine_resident(&d->host->machine, d->base_mfn, d->frame_pages, resident);
    for (uint64_t g = 0; g < d->maxmem_pages && rc == 0; g++) {
        uint8_t t = d->p2m[g];

        if (t >= MV_P2M_TYPES) {
            rc = mv__fail(-EUCLEAN, "domain %u: gfn %#llx has unknown type %u",
                          d->domid, (unsigned long long)g, t);
            break;
        }
        count[t]++;
        if (d->state != MV_DOMAIN_CRASHED &&
            (t == MV_P2M_RAM) != (resident[g] & 1))
            rc = mv__fail(-EUCLEAN, "domain %u: gfn %#llx is %s but its frame %s "
                          "memory", d->domid, (unsigned long long)g,
                          t == MV_P2M_RAM ? "RAM" : t == MV_P2M_POD ? "PoD" :
                          t == MV_P2M_SHARED ? "shared" : t == MV_P2M_PAGED ? "paged" :
                          "ballooned",
                          resident[g] & 1 ? "holds" : "holds no");
    }
    for (uint64_t g = d->maxmem_pages; g < d->frame_pages && rc == 0; g++)
        if (d->state != MV_DOMAIN_CRASHED && (resident[g] & 1))
            rc = mv__fail(-EUCLEAN, "domain %u: frame past maxmem (gfn %#llx) "
                          "holds memory", d->domid, (unsigned long long)g);
    free(resident);
    if (rc < 0)
        return rc;
    if (count[MV_P2M_RAM] != d->populated || count[MV_P2M_POD] != d->pod ||
        count[MV_P2M_BALLOONED] != d->ballooned || count[MV_P2M_SHARED] != d->shared ||
        count[MV_P2M_PAGED] != d->paged)
        return mv__fail(-EUCLEAN, "domain %u: p2m holds %llu RAM, %llu PoD, %llu "
                        "ballooned, %llu shared, %llu paged; counters say %llu, %llu, "
                        "%llu, %llu, %llu", d->domid,
                        (unsigned long long)count[0], (unsigned long long)count[1],
                        (unsigned long long)count[2], (unsigned long long)count[3],
                        (unsigned long long)count[4],
                        (unsigned long long)d->populated, (unsigned long long)d->pod,
                        (unsigned long long)d->ballooned, (unsigned long long)d->shared,
                        (unsigned long long)d->paged);
    for (uint64_t b = 0; b * MV_BLOCK_PAGES < d->maxmem_pages; b++) {
        uint64_t pod = 0;

        for (uint64_t g = b * MV_BLOCK_PAGES;
             g < MV_MIN((b + 1) * MV_BLOCK_PAGES, d->maxmem_pages); g++)
            pod += d->p2m[g] == MV_P2M_POD;
        if (pod != d->block_pod[b])
            return mv__fail(-EUCLEAN, "domain %u: block %llu has %llu PoD entries, "
                            "its counter says %u", d->domid, (unsigned long long)b,
                            (unsigned long long)pod, d->block_pod[b]);
    }
    return 0;
}

int mv_domain_audit(mv_host *host, uint32_t domid)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    int rc;

    if (!d)
        return -ESRCH;
    mv__clear_error();
    mv__mutex_lock(&d->lock);
    rc = audit_locked(d);
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return rc;
}
